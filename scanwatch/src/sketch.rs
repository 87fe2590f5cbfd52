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
        sum += 2f64.powi(-i32::from(r));
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

/// A 256-register HyperLogLog with the kernel's hashing (engine-side distinct counts).
#[derive(Debug, Clone)]
pub struct Hll {
    regs: [u8; HLL_REGS],
}

impl Default for Hll {
    fn default() -> Self {
        Hll { regs: [0; HLL_REGS] }
    }
}

impl Hll {
    pub fn insert(&mut self, item: u32) {
        let (i, rank) = hll_slot(item);
        if let Some(r) = self.regs.get_mut(i) {
            *r = (*r).max(rank);
        }
    }

    pub fn estimate(&self) -> f64 {
        hll_estimate(&self.regs)
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
