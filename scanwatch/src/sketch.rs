//! Userspace side of the kernel's sketches: HyperLogLog estimation.
use scanwatch_common::HLL_REGS;

/// Estimate the number of distinct items from HyperLogLog registers (bias-corrected, with the
/// linear-counting correction for small sets so small counts are near-exact).
pub fn hll_estimate(regs: &[u8; HLL_REGS]) -> f64 {
    let m = HLL_REGS as f64;
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

#[cfg(test)]
mod tests {
    use super::*;
    use scanwatch_common::hll_slot;

    fn fill(items: impl Iterator<Item = u32>) -> [u8; HLL_REGS] {
        let mut regs = [0u8; HLL_REGS];
        for i in items {
            let (idx, rank) = hll_slot(i);
            regs[idx] = regs[idx].max(rank);
        }
        regs
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(hll_estimate(&[0; HLL_REGS]), 0.0);
    }

    #[test]
    fn error_within_ten_percent_up_to_all_ports() {
        for n in [1u32, 5, 20, 100, 1000, 5000, 20_000, 65_535] {
            let est = hll_estimate(&fill(1..=n));
            let err = (est - f64::from(n)).abs() / f64::from(n);
            assert!(err <= 0.10, "n={n} est={est:.1} err={:.3}", err);
        }
    }

    #[test]
    fn small_sets_are_near_exact() {
        for n in 1u32..=16 {
            let est = hll_estimate(&fill(1000..1000 + n)).round() as u32;
            assert!(est.abs_diff(n) <= 1, "n={n} est={est}");
        }
    }
}
