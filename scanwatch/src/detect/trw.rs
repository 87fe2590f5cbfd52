//! Threshold random walk (Jung, Paxson, Berger, Balakrishnan, "Fast Portscan Detection Using
//! Sequential Hypothesis Testing", IEEE S&P 2004).
//!
//! Each connection attempt outcome multiplies the likelihood ratio
//! `P(outcome | scanner) / P(outcome | benign)`: a success by `theta1 / theta0`, a failure by
//! `(1 - theta1) / (1 - theta0)`. The walk decides "scanner" at `eta1 = (1 - beta) / alpha` and
//! "benign" at `eta0 = beta / (1 - alpha)`. With the defaults (alpha = beta = 0.01,
//! theta0 = 0.8, theta1 = 0.2) four consecutive failures decide "scanner".
//!
//! The walk works in log space and is clamped to `[ln eta0, ln eta1]`, so a source that looked
//! benign for days still needs only a handful of failures (about `2 ln(99) / ln(4)`, i.e. 7) to be
//! flagged. A "scanner" decision latches until the walk falls back to the benign bound.

use crate::config::TrwConfig;

/// Precomputed log-space steps and bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrwParams {
    pub ln_upper: f64,
    pub ln_lower: f64,
    pub step_failure: f64,
    pub step_success: f64,
}

impl TrwParams {
    pub fn new(c: &TrwConfig) -> TrwParams {
        TrwParams {
            ln_upper: ((1.0 - c.beta) / c.alpha).ln(),
            ln_lower: (c.beta / (1.0 - c.alpha)).ln(),
            step_failure: ((1.0 - c.theta1) / (1.0 - c.theta0)).ln(),
            step_success: (c.theta1 / c.theta0).ln(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrwDecision {
    Pending,
    Benign,
    Scanner,
}

/// Per-entity walk state.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Trw {
    llr: f64,
    scanner: bool,
    benign: bool,
}

impl Trw {
    /// Apply a batch of outcomes (order within a sweep is unknown; the batch is applied as a sum).
    pub fn observe(&mut self, p: &TrwParams, failures: u64, successes: u64) {
        if failures == 0 && successes == 0 {
            return;
        }
        let step = failures as f64 * p.step_failure + successes as f64 * p.step_success;
        self.llr = (self.llr + step).clamp(p.ln_lower, p.ln_upper);
        if self.llr >= p.ln_upper {
            self.scanner = true;
            self.benign = false;
        } else if self.llr <= p.ln_lower {
            self.scanner = false;
            self.benign = true;
        } else if !self.scanner {
            self.benign = false;
        }
    }

    pub fn decision(&self) -> TrwDecision {
        if self.scanner {
            TrwDecision::Scanner
        } else if self.benign {
            TrwDecision::Benign
        } else {
            TrwDecision::Pending
        }
    }

    pub fn is_scanner(&self) -> bool {
        self.scanner
    }

    pub fn llr(&self) -> f64 {
        self.llr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> TrwParams {
        TrwParams::new(&TrwConfig { alpha: 0.01, beta: 0.01, theta0: 0.8, theta1: 0.2 })
    }

    #[test]
    fn decides_scanner_in_a_handful_of_failures() {
        let p = params();
        let mut t = Trw::default();
        let mut n = 0;
        while t.decision() != TrwDecision::Scanner {
            t.observe(&p, 1, 0);
            n += 1;
            assert!(n < 20);
        }
        assert!((3..=5).contains(&n), "decided after {n}");
    }

    #[test]
    fn benign_history_still_flags_within_ten_failures() {
        let p = params();
        let mut t = Trw::default();
        t.observe(&p, 0, 10_000);
        assert_eq!(t.decision(), TrwDecision::Benign);
        let mut n = 0;
        while !t.is_scanner() {
            t.observe(&p, 1, 0);
            n += 1;
        }
        assert!(n <= 10, "needed {n}");
    }

    #[test]
    fn successful_client_is_benign_and_scanner_latches() {
        let p = params();
        let mut t = Trw::default();
        for _ in 0..10 {
            t.observe(&p, 0, 1);
        }
        assert_eq!(t.decision(), TrwDecision::Benign);
        let mut s = Trw::default();
        s.observe(&p, 990, 10);
        assert!(s.is_scanner());
        s.observe(&p, 0, 3);
        assert!(s.is_scanner(), "a few open ports do not clear a scanner");
        // Mixed outcomes at benign rates stay undecided or benign.
        let mut m = Trw::default();
        for _ in 0..50 {
            m.observe(&p, 1, 4);
        }
        assert_ne!(m.decision(), TrwDecision::Scanner);
    }
}
