//! The statistics the engines decide with: sample summaries, Welch's t-test, a bootstrap
//! test of a difference in means, and normal quantiles.
//!
//! The t and normal distributions come from [`statrs`]. Every test here compares a
//! *baseline* sample with a *treatment* sample and answers two one-sided questions: how
//! likely a difference at least this large in favour of the treatment would be if the
//! means were equal (`p_greater`), and the same against it (`p_less`).

use rand::{Rng, SeedableRng};
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// Count, mean and sample variance of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of values.
    pub n: usize,
    /// Arithmetic mean (0 for an empty sample).
    pub mean: f64,
    /// Unbiased sample variance (0 with fewer than two values).
    pub variance: f64,
}

impl Summary {
    /// Summarises `xs` (Welford's algorithm: stable for large, close values).
    pub fn of(xs: &[f64]) -> Summary {
        let (mut n, mut mean, mut m2) = (0usize, 0.0f64, 0.0f64);
        for &x in xs {
            n += 1;
            let d = x - mean;
            mean += d / n as f64;
            m2 += d * (x - mean);
        }
        Summary {
            n,
            mean,
            variance: if n > 1 { m2 / (n - 1) as f64 } else { 0.0 },
        }
    }

    /// Standard deviation.
    pub fn std_dev(&self) -> f64 {
        self.variance.sqrt()
    }
}

/// The result of a two-sample test of `treatment` against `baseline`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TwoSample {
    /// `mean(treatment) - mean(baseline)`.
    pub difference: f64,
    /// One-sided p-value for "the treatment mean is greater".
    pub p_greater: f64,
    /// One-sided p-value for "the treatment mean is smaller".
    pub p_less: f64,
}

/// Welch's unequal-variance t-test of `treatment` against `baseline`.
///
/// Needs at least two values in each sample; with fewer, or when both samples have zero
/// variance and equal means, both p-values are 1 (no evidence either way). Two constant
/// samples with different means give p = 0 in the direction of the difference.
pub fn welch(baseline: &[f64], treatment: &[f64]) -> TwoSample {
    let (b, t) = (Summary::of(baseline), Summary::of(treatment));
    let difference = t.mean - b.mean;
    if b.n < 2 || t.n < 2 {
        return TwoSample {
            difference,
            p_greater: 1.0,
            p_less: 1.0,
        };
    }
    let (vb, vt) = (b.variance / b.n as f64, t.variance / t.n as f64);
    let se2 = vb + vt;
    if se2 <= 0.0 || !se2.is_finite() {
        let (p_greater, p_less) = match difference.partial_cmp(&0.0) {
            Some(std::cmp::Ordering::Greater) => (0.0, 1.0),
            Some(std::cmp::Ordering::Less) => (1.0, 0.0),
            _ => (1.0, 1.0),
        };
        return TwoSample {
            difference,
            p_greater,
            p_less,
        };
    }
    let t_stat = difference / se2.sqrt();
    // Welch–Satterthwaite degrees of freedom.
    let df = se2 * se2
        / (vb * vb / (b.n as f64 - 1.0) + vt * vt / (t.n as f64 - 1.0)).max(f64::MIN_POSITIVE);
    let dist = StudentsT::new(0.0, 1.0, df.max(1.0)).expect("df >= 1 is a valid t distribution");
    let cdf = dist.cdf(t_stat);
    TwoSample {
        difference,
        p_greater: 1.0 - cdf,
        p_less: cdf,
    }
}

/// A percentile-bootstrap test of the difference in means: `resamples` times, both
/// samples are resampled with replacement (from a generator seeded with `seed`, so the
/// answer is reproducible) and the difference recomputed; the one-sided p-values are the
/// shares of resampled differences on the wrong side of zero (with the usual +1
/// correction, so they are never exactly 0).
pub fn bootstrap(baseline: &[f64], treatment: &[f64], resamples: u32, seed: u64) -> TwoSample {
    let difference = Summary::of(treatment).mean - Summary::of(baseline).mean;
    if baseline.is_empty() || treatment.is_empty() || resamples == 0 {
        return TwoSample {
            difference,
            p_greater: 1.0,
            p_less: 1.0,
        };
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let resample_mean = |xs: &[f64], rng: &mut rand::rngs::StdRng| {
        let mut sum = 0.0;
        for _ in 0..xs.len() {
            sum += xs[rng.random_range(0..xs.len())];
        }
        sum / xs.len() as f64
    };
    let (mut not_greater, mut not_less) = (0u64, 0u64);
    for _ in 0..resamples {
        let d = resample_mean(treatment, &mut rng) - resample_mean(baseline, &mut rng);
        if d <= 0.0 {
            not_greater += 1;
        }
        if d >= 0.0 {
            not_less += 1;
        }
    }
    let total = f64::from(resamples) + 1.0;
    TwoSample {
        difference,
        p_greater: (not_greater as f64 + 1.0) / total,
        p_less: (not_less as f64 + 1.0) / total,
    }
}

/// The standard normal distribution function Φ(x).
pub fn normal_cdf(x: f64) -> f64 {
    Normal::new(0.0, 1.0).expect("standard normal").cdf(x)
}

/// The standard normal quantile Φ⁻¹(p), for `p` in (0, 1).
pub fn normal_quantile(p: f64) -> f64 {
    Normal::new(0.0, 1.0)
        .expect("standard normal")
        .inverse_cdf(p.clamp(1e-12, 1.0 - 1e-12))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_matches_the_textbook() {
        let s = Summary::of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!(s.n, 8);
        assert!((s.mean - 5.0).abs() < 1e-12);
        assert!((s.variance - 32.0 / 7.0).abs() < 1e-12);
    }

    #[test]
    fn welch_agrees_with_a_known_example() {
        // Example 1 of Wikipedia's "Welch's t-test": t = -2.46, df = 24.98, two-sided
        // p = 0.021, so one-sided p(A1 < A2) = 0.0105.
        let a1 = [
            27.5, 21.0, 19.0, 23.6, 17.0, 17.9, 16.9, 20.1, 21.9, 22.6, 23.1, 19.6, 19.0, 21.7,
            21.4,
        ];
        let a2 = [
            27.1, 22.0, 20.8, 23.4, 23.4, 23.5, 25.8, 22.0, 24.8, 20.2, 21.9, 22.1, 22.9, 20.5,
            24.4,
        ];
        let r = welch(&a2, &a1);
        assert!(r.p_less > 0.0095 && r.p_less < 0.0115, "{r:?}");
        assert!((r.p_less + r.p_greater - 1.0).abs() < 1e-12);
    }

    #[test]
    fn constant_samples_are_handled() {
        let r = welch(&[1.0, 1.0, 1.0], &[2.0, 2.0, 2.0]);
        assert_eq!((r.p_greater, r.p_less), (0.0, 1.0));
        let r = welch(&[1.0, 1.0], &[1.0, 1.0]);
        assert_eq!((r.p_greater, r.p_less), (1.0, 1.0));
        let r = welch(&[1.0], &[5.0, 6.0]);
        assert_eq!(r.p_greater, 1.0);
    }

    #[test]
    fn bootstrap_is_reproducible_and_sided() {
        let a: Vec<f64> = (0..30).map(|i| 10.0 + (i % 5) as f64).collect();
        let b: Vec<f64> = (0..30).map(|i| 14.0 + (i % 5) as f64).collect();
        let r1 = bootstrap(&a, &b, 500, 7);
        assert_eq!(r1, bootstrap(&a, &b, 500, 7));
        assert!(r1.p_greater < 0.01 && r1.p_less > 0.99, "{r1:?}");
    }

    #[test]
    fn normal_quantile_inverts_the_cdf() {
        for p in [0.05, 0.5, 0.85, 0.975] {
            assert!((normal_cdf(normal_quantile(p)) - p).abs() < 1e-9);
        }
        assert!((normal_quantile(0.975) - 1.959964).abs() < 1e-5);
    }
}
