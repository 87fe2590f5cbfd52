//! Userspace side of the HyperLogLog sketches (kernel per-source sketches and the engine's own).
use scanwatch_common::{hll_slot, HLL_REGS};

/// Estimate the number of distinct items from HyperLogLog registers (any register count):
/// bias-corrected raw estimate, with linear counting for small cardinalities.
pub fn hll_estimate(regs: &[u8]) -> f64 {
    if regs.is_empty() {
        return 0.0;
    }
    let m = regs.len() as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let mut sum = 0.0;
    let mut zeros = 0usize;
    for &r in regs {
        sum += pow2_neg(r);
        if r == 0 {
            zeros += 1;
        }
    }
    let raw = alpha * m * m / sum;
    if raw <= 2.5 * m && zeros > 0 {
        m * (m / zeros as f64).ln()
    } else {
        raw
    }
}

/// Distinct ports of a kernel source entry: exact while the first-ports sample is not full,
/// the HyperLogLog estimate (never below the sample size) beyond.
pub fn distinct_ports(port_hll: &[u8], n_sample: u32) -> f64 {
    if (n_sample as usize) < scanwatch_common::SAMPLE_PORTS {
        f64::from(n_sample)
    } else {
        hll_estimate(port_hll).max(scanwatch_common::SAMPLE_PORTS as f64)
    }
}

/// HyperLogLog registers with the kernel's hashing, keeping the estimator's sum incrementally
/// (the estimate is O(1), as the engine asks for it at every sweep).
#[derive(Debug, Clone)]
pub struct IncHll<const M: usize> {
    regs: [u8; M],
    sum: f64,
    zeros: u32,
}

impl<const M: usize> Default for IncHll<M> {
    fn default() -> Self {
        IncHll { regs: [0; M], sum: M as f64, zeros: M as u32 }
    }
}

fn pow2_neg(r: u8) -> f64 {
    f64::from_bits((1023u64.saturating_sub(u64::from(r))) << 52)
}

impl<const M: usize> IncHll<M> {
    /// Returns true when a register rose.
    pub fn set(&mut self, (i, rank): (usize, u8)) -> bool {
        let Some(r) = self.regs.get_mut(i) else { return false };
        if rank <= *r {
            return false;
        }
        self.sum += pow2_neg(rank) - pow2_neg(*r);
        if *r == 0 {
            self.zeros -= 1;
        }
        *r = rank;
        true
    }

    /// The same estimate as [`hll_estimate`] of these registers.
    pub fn estimate(&self) -> f64 {
        let m = M as f64;
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / self.sum;
        if raw <= 2.5 * m && self.zeros > 0 {
            m * (m / f64::from(self.zeros)).ln()
        } else {
            raw
        }
    }

    pub fn regs(&self) -> &[u8; M] {
        &self.regs
    }
}

/// A 256-register HyperLogLog with the kernel's hashing (engine-side distinct counts); the
/// estimate is O(1) (a raw-socket sender's every probe asks for three of them).
#[derive(Debug, Clone, Default)]
pub struct Hll(IncHll<HLL_REGS>);

impl Hll {
    pub fn insert(&mut self, item: u32) {
        self.0.set(hll_slot(item));
    }

    pub fn estimate(&self) -> f64 {
        self.0.estimate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scanwatch_common::{port_hll_slot, PORT_HLL_REGS};

    fn fill_ports(items: impl Iterator<Item = u32>) -> [u8; PORT_HLL_REGS] {
        let mut regs = [0u8; PORT_HLL_REGS];
        for i in items {
            let (idx, rank) = port_hll_slot(i);
            regs[idx] = regs[idx].max(rank);
        }
        regs
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(hll_estimate(&[0; PORT_HLL_REGS]), 0.0);
    }

    #[test]
    fn port_sketch_within_ten_percent_up_to_all_ports() {
        // Several port sets (sequential ranges, strided sets, a high range) of each size.
        for n in [20u32, 100, 1000, 5000, 20_000, 65_535] {
            for (start, stride) in [(1u32, 1u32), (1, 3), (10_000, 1), (7, 2)] {
                let items: Vec<u32> = (0..n).map(|k| (start + k * stride) & 0xffff).collect();
                let distinct = items.iter().collect::<std::collections::HashSet<_>>().len() as u32;
                let est = hll_estimate(&fill_ports(items.into_iter()));
                let err = (est - f64::from(distinct)).abs() / f64::from(distinct);
                assert!(err <= 0.10, "n={n} start={start} stride={stride} est={est:.1} err={err:.3}");
            }
        }
    }

    #[test]
    fn small_sets_are_exact_from_the_sample() {
        for n in 0u32..16 {
            assert_eq!(distinct_ports(&fill_ports(1000..1000 + n), n), f64::from(n));
        }
        assert!(distinct_ports(&fill_ports(1..=16), 16) >= 16.0);
    }

    #[test]
    fn engine_hll_counts() {
        let mut h = Hll::default();
        for i in 0..5000 {
            h.insert(i);
        }
        assert!((h.estimate() - 5000.0).abs() / 5000.0 < 0.2);
    }
}
