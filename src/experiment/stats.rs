//! The statistics of an A/B report: pure functions on per-user sums, no I/O.
//!
//! The unit of randomisation is the user, so every per-answer rate is a
//! **ratio metric** (Σ converted / Σ answers over the arm's users) whose
//! variance comes from the delta method over users, never from treating
//! answers as independent. The formulas are GrowthBook's (`gbstats` 0.8:
//! `RatioStatistic`, `TwoSidedTTest` with Welch's degrees of freedom,
//! `SequentialTwoSidedTTest`, `RegressionAdjustedStatistic`, `check_srm`)
//! and statsmodels' (`NormalIndPower`), and `scripts/stats-fixtures.py`
//! computes them with those libraries on fixed inputs; the tests below match
//! its committed output (`tests/fixtures/stats.json`) to 1e-6.

use serde::Serialize;
use statrs::distribution::{ChiSquared, ContinuousCDF, Normal, StudentsT};

/// Sums over users of a numerator `m` and a denominator `d` (per user:
/// converted answers and answers).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RatioSums {
    pub n: f64,
    pub m: f64,
    pub m2: f64,
    pub d: f64,
    pub d2: f64,
    pub md: f64,
}

impl RatioSums {
    pub fn add(&mut self, m: f64, d: f64) {
        self.n += 1.0;
        self.m += m;
        self.m2 += m * m;
        self.d += d;
        self.d2 += d * d;
        self.md += m * d;
    }

    pub fn from_users(users: impl IntoIterator<Item = (f64, f64)>) -> RatioSums {
        let mut s = RatioSums::default();
        for (m, d) in users {
            s.add(m, d);
        }
        s
    }

    /// Σm / Σd (0 without a denominator).
    pub fn mean(&self) -> f64 {
        if self.d == 0.0 { 0.0 } else { self.m / self.d }
    }

    /// The per-user variance of the ratio by the delta method (divide by
    /// `n` for the variance of [`RatioSums::mean`]).
    pub fn variance(&self) -> f64 {
        let n = self.n;
        if n <= 1.0 || self.d == 0.0 {
            return 0.0;
        }
        let (mm, dm) = (self.m / n, self.d / n);
        let vm = sample_var(n, self.m, self.m2);
        let vd = sample_var(n, self.d, self.d2);
        let cov = (self.md - self.m * self.d / n) / (n - 1.0);
        vm / dm.powi(2) - 2.0 * cov * mm / dm.powi(3) + mm.powi(2) * vd / dm.powi(4)
    }

    pub fn moments(&self) -> Moments {
        Moments {
            n: self.n,
            mean: self.mean(),
            unadjusted_mean: self.mean(),
            variance: self.variance(),
        }
    }
}

fn sample_var(n: f64, sum: f64, sum2: f64) -> f64 {
    if n <= 1.0 {
        0.0
    } else {
        (sum2 - sum * sum / n) / (n - 1.0)
    }
}

/// Sums of one per-user value (a count, or a pre-experiment covariate).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MeanSums {
    pub n: f64,
    pub sum: f64,
    pub sum2: f64,
}

impl MeanSums {
    pub fn mean(&self) -> f64 {
        if self.n == 0.0 {
            0.0
        } else {
            self.sum / self.n
        }
    }

    pub fn variance(&self) -> f64 {
        sample_var(self.n, self.sum, self.sum2)
    }
}

/// What a test needs of an arm: users, the estimate, the estimate before
/// any regression adjustment (the base of a relative lift) and the
/// per-user variance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    pub n: f64,
    pub mean: f64,
    pub unadjusted_mean: f64,
    pub variance: f64,
}

impl Moments {
    /// Standard error of the arm's estimate.
    pub fn se(&self) -> f64 {
        if self.n <= 0.0 {
            0.0
        } else {
            (self.variance.max(0.0) / self.n).sqrt()
        }
    }

    /// Normal-approximation interval of the arm's estimate.
    pub fn ci(&self, alpha: f64) -> [f64; 2] {
        let w = z(1.0 - alpha / 2.0) * self.se();
        [self.mean - w, self.mean + w]
    }
}

/// Treatment − control, or (treatment − control) / control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Difference {
    Absolute,
    Relative,
}

/// An estimated difference with its interval and p-value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub point: f64,
    pub se: f64,
    pub ci: [f64; 2],
    pub p_value: f64,
    /// Welch–Satterthwaite degrees of freedom.
    pub dof: f64,
}

/// The standard normal quantile.
pub fn z(p: f64) -> f64 {
    std_normal().inverse_cdf(p)
}

/// The standard normal CDF.
pub fn phi(x: f64) -> f64 {
    std_normal().cdf(x)
}

fn std_normal() -> Normal {
    Normal::standard()
}

fn t_cdf(x: f64, dof: f64) -> f64 {
    match StudentsT::new(0.0, 1.0, dof) {
        Ok(t) => t.cdf(x),
        Err(_) => phi(x),
    }
}

fn t_quantile(p: f64, dof: f64) -> f64 {
    match StudentsT::new(0.0, 1.0, dof) {
        Ok(t) => t.inverse_cdf(p),
        Err(_) => z(p),
    }
}

fn variance_of(a: &Moments, b: &Moments, diff: Difference) -> f64 {
    match diff {
        Difference::Absolute => b.variance / b.n + a.variance / a.n,
        Difference::Relative => {
            let base = a.unadjusted_mean;
            // As gbstats: the unadjusted means (CUPED leaves them as they were).
            b.variance / (base.powi(2) * b.n)
                + a.variance * b.unadjusted_mean.powi(2) / (base.powi(4) * a.n)
        }
    }
}

fn point_of(a: &Moments, b: &Moments, diff: Difference) -> f64 {
    match diff {
        Difference::Absolute => b.mean - a.mean,
        Difference::Relative => (b.mean - a.mean) / a.unadjusted_mean,
    }
}

fn welch_dof(a: &Moments, b: &Moments) -> f64 {
    (b.variance / b.n + a.variance / a.n).powi(2)
        / (b.variance.powi(2) / (b.n.powi(2) * (b.n - 1.0))
            + a.variance.powi(2) / (a.n.powi(2) * (a.n - 1.0)))
}

/// Why a test has no answer.
fn testable(a: &Moments, b: &Moments) -> bool {
    a.n > 1.0
        && b.n > 1.0
        && a.mean != 0.0
        && a.unadjusted_mean != 0.0
        && a.variance > 0.0
        && b.variance > 0.0
}

/// Welch's two-sided t-test of `b` against `a`; `None` when the control's
/// estimate is 0 or an arm has no variance (no lift can be stated).
pub fn two_sided(a: &Moments, b: &Moments, diff: Difference, alpha: f64) -> Option<Estimate> {
    if !testable(a, b) {
        return None;
    }
    let var = variance_of(a, b, diff);
    let point = point_of(a, b, diff);
    let se = var.sqrt();
    let dof = welch_dof(a, b);
    let p_value = 2.0 * (1.0 - t_cdf((point / se).abs(), dof));
    let w = t_quantile(1.0 - alpha / 2.0, dof) * se;
    Some(Estimate {
        point,
        se,
        ci: [point - w, point + w],
        p_value,
        dof,
    })
}

/// GrowthBook's default tuning parameter of the sequential interval: the
/// total sample size at which it is tightest.
pub const SEQUENTIAL_TUNING: f64 = 5000.0;

/// An always-valid (anytime) interval and p-value: the asymptotic
/// confidence sequence of Waudby-Smith et al. (2023, eq. 9 and 155) as
/// `gbstats`' `SequentialTwoSidedTTest` computes it. Peeking after every
/// batch keeps the false-positive rate at or below `alpha`.
pub fn sequential(
    a: &Moments,
    b: &Moments,
    diff: Difference,
    alpha: f64,
    tuning: f64,
) -> Option<Estimate> {
    if !testable(a, b) {
        return None;
    }
    let var = variance_of(a, b, diff);
    let point = point_of(a, b, diff);
    let n = a.n + b.n;
    let rho = ((-2.0 * alpha.ln() + (-2.0 * alpha.ln() + 1.0).ln()) / tuning).sqrt();
    let s2 = var * n;
    let nr = n * rho.powi(2) + 1.0;
    let w = s2.sqrt() * ((2.0 * nr) * (nr.sqrt() / alpha).ln() / (n * rho).powi(2)).sqrt();
    let st2 = point.powi(2) * n / var;
    let evalue = (rho.powi(2) * st2 / (2.0 * nr)).exp() / nr.sqrt();
    Some(Estimate {
        point,
        se: var.sqrt(),
        ci: [point - w, point + w],
        p_value: (1.0 / evalue).min(1.0),
        dof: welch_dof(a, b),
    })
}

/// A guardrail's non-inferiority test: H0 "treatment is worse than control
/// by at least `margin`" (higher is worse, absolute difference), rejected
/// when the one-sided p-value is below `alpha`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NonInferiority {
    pub difference: f64,
    pub margin: f64,
    /// One-sided upper bound of the difference at 1 − alpha.
    pub upper: f64,
    pub p_value: f64,
    pub non_inferior: bool,
}

pub fn non_inferiority(a: &Moments, b: &Moments, margin: f64, alpha: f64) -> NonInferiority {
    let point = b.mean - a.mean;
    let var = variance_of(a, b, Difference::Absolute);
    if !(a.n > 1.0 && b.n > 1.0) {
        return NonInferiority {
            difference: point,
            margin,
            upper: f64::INFINITY,
            p_value: 1.0,
            non_inferior: false,
        };
    }
    if var <= 0.0 || (a.variance <= 0.0 && b.variance <= 0.0) {
        // No spread at all (e.g. no errors in either arm): the difference
        // is exact.
        let ok = point < margin;
        return NonInferiority {
            difference: point,
            margin,
            upper: point,
            p_value: if ok { 0.0 } else { 1.0 },
            non_inferior: ok,
        };
    }
    let se = var.sqrt();
    // Welch's dof is undefined when one arm has no spread: then the other
    // arm's n − 1 is the honest count.
    let dof = if a.variance <= 0.0 {
        b.n - 1.0
    } else if b.variance <= 0.0 {
        a.n - 1.0
    } else {
        welch_dof(a, b)
    };
    let p_value = t_cdf((point - margin) / se, dof);
    NonInferiority {
        difference: point,
        margin,
        upper: point + t_quantile(1.0 - alpha, dof) * se,
        p_value,
        non_inferior: p_value < alpha,
    }
}

/// Sample-ratio mismatch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Srm {
    pub chi2: f64,
    pub p_value: f64,
    pub flag: SrmFlag,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SrmFlag {
    Ok,
    /// p < 0.01.
    Warn,
    /// p < 0.001: the split is broken; no effect should be trusted.
    Alert,
}

impl SrmFlag {
    pub fn as_str(self) -> &'static str {
        match self {
            SrmFlag::Ok => "ok",
            SrmFlag::Warn => "warn",
            SrmFlag::Alert => "alert",
        }
    }
}

/// Pearson's χ² of observed users per arm against the planned weights
/// (`gbstats.utils.check_srm`; arms with weight ≤ 0 are left out of the
/// sum but count in the degrees of freedom).
pub fn srm(observed: &[u64], weights: &[f64]) -> Srm {
    let total: f64 = observed.iter().map(|&o| o as f64).sum();
    let wsum: f64 = weights.iter().sum();
    if total == 0.0 || observed.len() < 2 || wsum <= 0.0 {
        return Srm {
            chi2: 0.0,
            p_value: 1.0,
            flag: SrmFlag::Ok,
        };
    }
    let mut x = 0.0;
    for (&o, &w) in observed.iter().zip(weights) {
        if w <= 0.0 {
            continue;
        }
        let e = w / wsum * total;
        x += (o as f64 - e).powi(2) / e;
    }
    let p_value = ChiSquared::new((observed.len() - 1) as f64)
        .map(|c| c.sf(x))
        .unwrap_or(1.0);
    let flag = if p_value < 0.001 {
        SrmFlag::Alert
    } else if p_value < 0.01 {
        SrmFlag::Warn
    } else {
        SrmFlag::Ok
    };
    Srm {
        chi2: x,
        p_value,
        flag,
    }
}

/// Power of a two-sided z-test of a standardised effect `d` with `n1` users
/// in one arm and `ratio · n1` in the other (statsmodels `NormalIndPower`).
pub fn power(d: f64, n1: f64, ratio: f64, alpha: f64) -> f64 {
    let nobs = 1.0 / (1.0 / n1 + 1.0 / (n1 * ratio));
    let crit = z(1.0 - alpha / 2.0);
    let shift = d * nobs.sqrt();
    (1.0 - phi(crit - shift)) + phi(-crit - shift)
}

/// Bisection of an increasing function to `goal` on `[lo, hi]`.
fn solve_increasing(f: impl Fn(f64) -> f64, goal: f64, mut lo: f64, mut hi: f64) -> f64 {
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if f(mid) < goal {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo <= 1e-14 * hi.abs().max(1e-300) {
            break;
        }
    }
    0.5 * (lo + hi)
}

/// The smallest standardised effect detected with probability `target`
/// (two-sided, `alpha`) at `n1` and `ratio · n1` users.
pub fn mde_standardised(n1: f64, ratio: f64, alpha: f64, target: f64) -> f64 {
    if n1 <= 0.0 || ratio <= 0.0 {
        return f64::INFINITY;
    }
    solve_increasing(|d| power(d, n1, ratio, alpha), target, 0.0, 100.0)
}

/// Users needed in the first arm (the other gets `ratio` times as many) to
/// detect a standardised effect `d` with probability `target`.
pub fn sample_size(d: f64, ratio: f64, alpha: f64, target: f64) -> f64 {
    if d <= 0.0 || ratio <= 0.0 {
        return f64::INFINITY;
    }
    let mut hi = 2.0;
    while power(d, hi, ratio, alpha) < target && hi < 1e15 {
        hi *= 2.0;
    }
    solve_increasing(|n| power(d, n, ratio, alpha), target, 1e-9, hi)
}

/// Users (both arms) a two-sided test at `alpha` needs to detect a
/// relative `lift` of the control's rate with probability `target`, the
/// treatment getting `ratio` users per control user; planned from the
/// control's per-user variance. `None` when the control has no spread or
/// no conversions.
pub fn users_needed(
    control: &Moments,
    lift: f64,
    ratio: f64,
    alpha: f64,
    target: f64,
) -> Option<u64> {
    let sigma = control.variance.max(0.0).sqrt();
    if sigma <= 0.0 || control.mean <= 0.0 || lift <= 0.0 || ratio <= 0.0 {
        return None;
    }
    let n1 = sample_size(lift * control.mean / sigma, ratio, alpha, target);
    n1.is_finite().then(|| (n1 * (1.0 + ratio)).ceil() as u64)
}

/// CUPED (regression adjustment with a pre-experiment covariate) of a
/// per-user metric, as `gbstats`' `RegressionAdjustedStatistic` with the
/// pooled θ of `compute_theta`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CupedArm {
    pub post: MeanSums,
    pub pre: MeanSums,
    /// Σ post·pre over users.
    pub cross: f64,
}

impl CupedArm {
    pub fn add(&mut self, post: f64, pre: f64) {
        self.post.n += 1.0;
        self.post.sum += post;
        self.post.sum2 += post * post;
        self.pre.n += 1.0;
        self.pre.sum += pre;
        self.pre.sum2 += pre * pre;
        self.cross += post * pre;
    }

    fn covariance(&self) -> f64 {
        let n = self.post.n;
        if n <= 1.0 {
            return 0.0;
        }
        (self.cross - self.post.sum * self.pre.sum / n) / (n - 1.0)
    }

    /// The adjusted arm for a given θ.
    pub fn moments(&self, theta: f64) -> Moments {
        let variance = if self.post.n <= 1.0 {
            0.0
        } else {
            self.post.variance() + theta.powi(2) * self.pre.variance()
                - 2.0 * theta * self.covariance()
        };
        Moments {
            n: self.post.n,
            mean: self.post.mean() - theta * self.pre.mean(),
            unadjusted_mean: self.post.mean(),
            variance,
        }
    }

    /// The unadjusted arm.
    pub fn raw(&self) -> Moments {
        self.moments(0.0)
    }
}

/// θ = cov(post, pre) / var(pre) over both arms pooled (0 when either has
/// no spread).
pub fn cuped_theta(a: &CupedArm, b: &CupedArm) -> f64 {
    let joint = CupedArm {
        post: MeanSums {
            n: a.post.n + b.post.n,
            sum: a.post.sum + b.post.sum,
            sum2: a.post.sum2 + b.post.sum2,
        },
        pre: MeanSums {
            n: a.pre.n + b.pre.n,
            sum: a.pre.sum + b.pre.sum,
            sum2: a.pre.sum2 + b.pre.sum2,
        },
        cross: a.cross + b.cross,
    };
    let vpre = joint.pre.variance();
    if vpre == 0.0 || joint.post.variance() == 0.0 {
        return 0.0;
    }
    joint.covariance() / vpre
}

/// A quantile of sorted values with a distribution-free interval from
/// order statistics (normal approximation to the binomial ranks).
pub fn quantile_ci(sorted: &[f64], q: f64, alpha: f64) -> Option<(f64, [f64; 2])> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let nf = n as f64;
    // Nearest rank: the smallest value with at least q·n values at or below it.
    let rank = |r: f64| -> usize { (r.ceil().max(1.0) as usize).min(n) - 1 };
    let est = sorted[rank(q * nf)];
    let half = z(1.0 - alpha / 2.0) * (nf * q * (1.0 - q)).sqrt();
    let lo = sorted[rank((q * nf - half).floor())];
    let hi = sorted[rank((q * nf + half).ceil() + 1.0)];
    Some((est, [lo, hi]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Fixture {
        control: Vec<[f64; 3]>,
        treatment: Vec<[f64; 3]>,
        alpha: f64,
        expect: serde_json::Map<String, serde_json::Value>,
    }

    fn fixture() -> Fixture {
        let text = include_str!("../../tests/fixtures/stats.json");
        serde_json::from_str(text).expect("tests/fixtures/stats.json parses")
    }

    fn num(f: &Fixture, key: &str) -> f64 {
        f.expect
            .get(key)
            .and_then(|v| v.as_f64())
            .unwrap_or_else(|| panic!("fixture has no number {key}"))
    }

    fn close(f: &Fixture, key: &str, got: f64) {
        let want = num(f, key);
        let tol = 1e-6 * want.abs().max(1.0);
        assert!(
            (got - want).abs() <= tol,
            "{key}: got {got}, reference {want} (diff {})",
            (got - want).abs()
        );
    }

    fn arms(f: &Fixture) -> (RatioSums, RatioSums) {
        let sums = |v: &[[f64; 3]]| RatioSums::from_users(v.iter().map(|u| (u[0], u[1])));
        (sums(&f.control), sums(&f.treatment))
    }

    #[test]
    fn ratio_metric_matches_gbstats_delta_method() {
        let f = fixture();
        let (a, b) = arms(&f);
        close(&f, "control_mean", a.mean());
        close(&f, "control_variance", a.variance());
        close(&f, "treatment_mean", b.mean());
        close(&f, "treatment_variance", b.variance());
        let ci = a.moments().ci(f.alpha);
        close(&f, "control_ci_lo", ci[0]);
        close(&f, "control_ci_hi", ci[1]);
    }

    #[test]
    fn absolute_and_relative_lift_match_gbstats_welch_test() {
        let f = fixture();
        let (a, b) = arms(&f);
        for (diff, k) in [(Difference::Absolute, "abs"), (Difference::Relative, "rel")] {
            let e = two_sided(&a.moments(), &b.moments(), diff, f.alpha).expect("testable");
            close(&f, &format!("{k}_point"), e.point);
            close(&f, &format!("{k}_ci_lo"), e.ci[0]);
            close(&f, &format!("{k}_ci_hi"), e.ci[1]);
            close(&f, &format!("{k}_p_value"), e.p_value);
        }
    }

    #[test]
    fn sequential_interval_matches_gbstats_and_is_wider() {
        let f = fixture();
        let (a, b) = arms(&f);
        let (ma, mb) = (a.moments(), b.moments());
        let s = sequential(&ma, &mb, Difference::Absolute, f.alpha, SEQUENTIAL_TUNING)
            .expect("testable");
        close(&f, "seq_ci_lo", s.ci[0]);
        close(&f, "seq_ci_hi", s.ci[1]);
        close(&f, "seq_p_value", s.p_value);
        let fixed = two_sided(&ma, &mb, Difference::Absolute, f.alpha).expect("testable");
        assert!(s.ci[1] - s.ci[0] > fixed.ci[1] - fixed.ci[0]);
        assert!(s.p_value >= fixed.p_value);
    }

    #[test]
    fn srm_matches_gbstats_and_flags_by_threshold() {
        let f = fixture();
        let s = srm(&[51_000, 49_000], &[0.5, 0.5]);
        close(&f, "srm_51_49_p_value", s.p_value);
        assert_eq!(s.flag, SrmFlag::Alert);
        let s = srm(&[5_130, 4_870], &[1.0, 1.0]);
        close(&f, "srm_mild_p_value", s.p_value);
        assert_eq!(s.flag, SrmFlag::Warn, "{s:?}");
        let s = srm(&[1_020, 980], &[1.0, 1.0]);
        close(&f, "srm_even_p_value", s.p_value);
        assert_eq!(s.flag, SrmFlag::Ok);
        let s = srm(&[3_000, 1_000, 1_000], &[60.0, 20.0, 20.0]);
        close(&f, "srm_three_p_value", s.p_value);
        assert_eq!(srm(&[0, 0], &[1.0, 1.0]).p_value, 1.0);
    }

    #[test]
    fn power_mde_and_sample_size_match_statsmodels() {
        let f = fixture();
        close(&f, "power_d01_n1000", power(0.1, 1000.0, 1.0, 0.05));
        close(
            &f,
            "mde_d_n1000_r1_5",
            mde_standardised(1000.0, 1.5, 0.05, 0.8),
        );
        close(&f, "n1_d005", sample_size(0.05, 1.0, 0.05, 0.8));
        // Round trip: at the size asked for, the effect has the power.
        let n = sample_size(0.07, 1.0, 0.05, 0.8);
        assert!((power(0.07, n, 1.0, 0.05) - 0.8).abs() < 1e-9);
    }

    #[test]
    fn non_inferiority_matches_gbstats_one_sided_test() {
        let f = fixture();
        let (a, b) = arms(&f);
        let ni = non_inferiority(&a.moments(), &b.moments(), 0.02, f.alpha);
        close(&f, "ni_p_value", ni.p_value);
        assert_eq!(ni.non_inferior, num(&f, "ni_p_value") < f.alpha);
        // A margin far below the observed difference cannot be met.
        let worse = non_inferiority(&a.moments(), &b.moments(), -0.5, f.alpha);
        assert!(!worse.non_inferior && worse.p_value > 0.99);
        // No errors in either arm: exactly non-inferior.
        let zero = Moments {
            n: 100.0,
            mean: 0.0,
            unadjusted_mean: 0.0,
            variance: 0.0,
        };
        assert!(non_inferiority(&zero, &zero, 0.01, 0.05).non_inferior);
    }

    #[test]
    fn cuped_matches_gbstats_regression_adjustment_and_narrows_the_interval() {
        let f = fixture();
        let mut a = CupedArm::default();
        let mut b = CupedArm::default();
        for u in &f.control {
            a.add(u[0], u[2]);
        }
        for u in &f.treatment {
            b.add(u[0], u[2]);
        }
        let theta = cuped_theta(&a, &b);
        close(&f, "cuped_theta", theta);
        let adj = two_sided(
            &a.moments(theta),
            &b.moments(theta),
            Difference::Absolute,
            0.05,
        )
        .expect("testable");
        close(&f, "cuped_abs_point", adj.point);
        close(&f, "cuped_abs_ci_lo", adj.ci[0]);
        close(&f, "cuped_abs_ci_hi", adj.ci[1]);
        close(&f, "cuped_abs_p_value", adj.p_value);
        let rel = two_sided(
            &a.moments(theta),
            &b.moments(theta),
            Difference::Relative,
            0.05,
        )
        .expect("testable");
        close(&f, "cuped_rel_point", rel.point);
        close(&f, "cuped_rel_p_value", rel.p_value);
        let raw = two_sided(&a.raw(), &b.raw(), Difference::Absolute, 0.05).expect("testable");
        assert!(
            adj.se < raw.se,
            "a correlated covariate must reduce variance"
        );
    }

    #[test]
    fn untestable_arms_have_no_lift() {
        let m = Moments {
            n: 10.0,
            mean: 0.0,
            unadjusted_mean: 0.0,
            variance: 0.1,
        };
        assert!(two_sided(&m, &m, Difference::Relative, 0.05).is_none());
        let one = RatioSums::from_users([(1.0, 2.0)]);
        assert_eq!(one.variance(), 0.0);
        assert!(two_sided(&one.moments(), &one.moments(), Difference::Absolute, 0.05).is_none());
    }

    #[test]
    fn quantile_interval_brackets_the_estimate() {
        let v: Vec<f64> = (1..=1000).map(f64::from).collect();
        let (est, [lo, hi]) = quantile_ci(&v, 0.95, 0.05).expect("values");
        assert_eq!(est, 950.0);
        assert!(lo < est && est < hi, "{lo} {est} {hi}");
        // ±1.96·sqrt(1000·0.95·0.05) ≈ ±13.5 ranks.
        assert!(
            (935.0..=937.0).contains(&lo) && (964.0..=966.0).contains(&hi),
            "{lo} {hi}"
        );
        assert_eq!(quantile_ci(&[], 0.5, 0.05), None);
    }
}
