//! `recsys experiment report`: the A/B analysis of one experiment, read
//! from the monitor's tables.
//!
//! Exposure is the server's own record: an answer whose route label is
//! one of the experiment's arms (`rules[i] exp-<name> split[j]`), logged
//! while the experiment was running. Conversions are the feedback join's
//! `mon_outcomes.converted_10` (≥ 1 of the first 10 items watched within
//! 1 h), so an answer counts once its window has closed; answers whose
//! windows are still open are reported as `pending`. The user is the unit:
//! every rate is Σ converted / Σ answers over the arm's users with a
//! delta-method variance ([`super::stats`]).

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::define::{Experiment, GuardMetric};
use super::stats::{self, CupedArm, Difference, RatioSums, Srm, SrmFlag};
use super::{ExperimentError, Result};
use crate::monitor::sink::Sink;

/// How far before the start CUPED looks for each user's watch activity.
pub const CUPED_LOOKBACK_MS: i64 = 7 * 24 * 3_600_000;

/// Points of the cumulative timeline (the plot).
const TIMELINE_POINTS: usize = 48;

#[derive(Debug, Clone, Copy, Default)]
pub struct ReportOptions {
    /// Only answers at or after this time (Unix ms).
    pub since_ms: Option<i64>,
    /// Always-valid intervals and p-values (safe to peek).
    pub sequential: bool,
    /// Add the CUPED-adjusted effect.
    pub cuped: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArmFigures {
    /// `control` or `treatment`.
    pub arm: &'static str,
    pub model: String,
    /// Users with at least one closed answer (the metric's unit).
    pub users: u64,
    /// Closed answers (windows passed).
    pub answers: u64,
    /// Of those, answers with ≥ 1 of their first 10 items watched within 1 h.
    pub converted: u64,
    pub rate: f64,
    /// 95 % interval of `rate` (delta method over users).
    pub ci: [f64; 2],
    /// Answers whose windows are still open (not counted yet).
    pub pending: u64,
    /// Users with any answer (the SRM counts these).
    pub exposed_users: u64,
    /// The route labels counted for this arm.
    pub routes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Effect {
    /// Treatment − control rate.
    pub absolute: f64,
    /// (treatment − control) / control.
    pub relative: f64,
    /// Interval of `absolute`.
    pub ci: [f64; 2],
    /// Interval of `relative` (delta method).
    pub relative_ci: [f64; 2],
    /// Two-sided p-value of `absolute` (Welch t on users).
    pub p_value: f64,
    pub relative_p_value: f64,
    /// The intervals and p-values are always-valid (sequential).
    pub sequential: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SrmFigures {
    /// `null` for a split that is not randomised.
    pub p_value: Option<f64>,
    /// `ok`, `warn` (p < 0.01), `alert` (p < 0.001) or `not_randomised`.
    pub flag: &'static str,
    pub chi2: Option<f64>,
    /// Exposed users (control, treatment).
    pub observed: [u64; 2],
    /// Planned shares (control, treatment), percent.
    pub expected: Option<[f64; 2]>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Power {
    pub alpha: f64,
    pub power: f64,
    /// The smallest absolute lift detectable now (two-sided, `power`).
    pub mde_absolute: Option<f64>,
    pub mde_relative: Option<f64>,
    /// The lift the experiment was planned for (relative).
    pub planned_lift: f64,
    /// Users (both arms) needed to detect `planned_lift` with `power`.
    pub users_needed: Option<u64>,
    /// `--planned-users` if given, else `users_needed`.
    pub planned_users: Option<u64>,
    pub users: u64,
    pub users_remaining: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardrailFigures {
    pub metric: &'static str,
    /// p95 latency: the bound (ms); rates: the non-inferiority margin.
    pub limit: f64,
    pub control: Option<f64>,
    pub treatment: Option<f64>,
    /// Rates: treatment − control.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub difference: Option<f64>,
    /// Upper 95 % bound: of the difference (rates), of the treatment's p95 (latency).
    pub upper: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    pub non_inferior: bool,
    pub explain: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cuped {
    pub metric: &'static str,
    pub covariate: &'static str,
    pub theta: f64,
    pub absolute: f64,
    pub relative: f64,
    pub ci: [f64; 2],
    pub p_value: f64,
    /// 1 − adjusted / unadjusted variance of the difference.
    pub variance_reduction: f64,
    pub users_with_history: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TimelinePoint {
    pub time_ms: i64,
    pub control: Option<[f64; 3]>,
    pub treatment: Option<[f64; 3]>,
}

/// `ship`, `roll_back`, `keep_running`, `no_effect`, `check_split`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Ship,
    RollBack,
    KeepRunning,
    NoEffect,
    CheckSplit,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub experiment: String,
    pub metric: String,
    pub randomised: bool,
    pub state: &'static str,
    pub since_ms: Option<i64>,
    pub arms: Vec<ArmFigures>,
    /// `null` when the control converted nobody or an arm has < 2 users.
    pub effect: Option<Effect>,
    pub srm: SrmFigures,
    pub power: Power,
    pub guardrails: Vec<GuardrailFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuped: Option<Cuped>,
    /// Users answered by both arms (counted in both).
    pub crossover_users: u64,
    pub verdict: Verdict,
    pub decision: String,
    pub timeline: Vec<TimelinePoint>,
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// One closed answer: (time, user, arm index, converted).
type Closed = (i64, i64, usize, bool);

/// Per arm: the per-user (converted, answers) of the closed answers.
fn per_user(rows: &[Closed], until: i64) -> [BTreeMap<i64, (f64, f64)>; 2] {
    let mut out: [BTreeMap<i64, (f64, f64)>; 2] = [BTreeMap::new(), BTreeMap::new()];
    for &(t, user, arm, conv) in rows {
        if t >= until {
            break;
        }
        let e = out[arm].entry(user).or_default();
        e.0 += f64::from(u8::from(conv));
        e.1 += 1.0;
    }
    out
}

fn sums(users: &BTreeMap<i64, (f64, f64)>) -> RatioSums {
    RatioSums::from_users(users.values().copied())
}

pub fn report(sink: &mut dyn Sink, exp: &Experiment, o: &ReportOptions) -> Result<Report> {
    let alpha = exp.alpha;
    // The route labels of the experiment's arms.
    let mut routes: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for r in sink.rows("SELECT DISTINCT arm FROM mon_answers", &[])? {
        let label = r[0].text();
        match exp.arm_of_label(&label) {
            Some("control") => routes[0].push(label),
            Some("treatment") => routes[1].push(label),
            _ => {}
        }
    }
    let all: Vec<String> = routes.iter().flatten().map(|l| quote(l)).collect();
    if all.is_empty() {
        return Err(ExperimentError::NoExposures(exp.name.clone()));
    }
    let arm_of: HashMap<String, usize> = routes
        .iter()
        .enumerate()
        .flat_map(|(i, ls)| ls.iter().map(move |l| (l.clone(), i)))
        .collect();
    let since = o.since_ms.unwrap_or(i64::MIN / 2);
    let in_list = all.join(", ");

    // Closed answers and their conversions (the join's outcome rows).
    let sql = format!(
        "SELECT time_ms, user_id, arm, converted_10 FROM mon_outcomes
         WHERE arm IN ({in_list}) AND time_ms >= $1 ORDER BY time_ms, user_id"
    );
    let mut closed: Vec<Closed> = Vec::new();
    for r in sink.rows(&sql, &[since])? {
        let t = r[0].int();
        if !exp.running_at(t) {
            continue;
        }
        if let Some(&arm) = arm_of.get(&r[2].text()) {
            closed.push((t, r[1].int(), arm, r[3].int() != 0));
        }
    }
    if closed.is_empty() {
        return Err(ExperimentError::NoExposures(exp.name.clone()));
    }

    // Every exposure (open windows too): SRM, guardrails, pending.
    let sql = format!(
        "SELECT time_ms, user_id, arm, status, latency_us FROM mon_answers
         WHERE late = 0 AND arm IN ({in_list}) AND time_ms >= $1"
    );
    let mut exposed: [BTreeMap<i64, (f64, f64, f64)>; 2] = [BTreeMap::new(), BTreeMap::new()];
    let mut latencies: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut answered = [0u64; 2];
    for r in sink.rows(&sql, &[since])? {
        let t = r[0].int();
        if !exp.running_at(t) {
            continue;
        }
        let Some(&arm) = arm_of.get(&r[2].text()) else {
            continue;
        };
        let status = r[3].text();
        answered[arm] += 1;
        let e = exposed[arm].entry(r[1].int()).or_default();
        e.0 += f64::from(u8::from(status == "fallback_error"));
        e.1 += f64::from(u8::from(status != "ok"));
        e.2 += 1.0;
        latencies[arm].push(r[4].int() as f64 / 1000.0);
    }

    let users = per_user(&closed, i64::MAX);
    let s = [sums(&users[0]), sums(&users[1])];
    let m = [s[0].moments(), s[1].moments()];
    let models = [&exp.control, &exp.treatment];
    let names = ["control", "treatment"];
    let mut arms = Vec::new();
    for i in 0..2 {
        let answers = s[i].d as u64;
        arms.push(ArmFigures {
            arm: names[i],
            model: models[i].clone(),
            users: s[i].n as u64,
            answers,
            converted: s[i].m as u64,
            rate: s[i].mean(),
            ci: m[i].ci(alpha),
            pending: answered[i].saturating_sub(answers),
            exposed_users: exposed[i].len() as u64,
            routes: routes[i].clone(),
        });
    }

    let test = |diff| {
        if o.sequential {
            stats::sequential(&m[0], &m[1], diff, alpha, stats::SEQUENTIAL_TUNING)
        } else {
            stats::two_sided(&m[0], &m[1], diff, alpha)
        }
    };
    let effect = match (test(Difference::Absolute), test(Difference::Relative)) {
        (Some(a), Some(r)) => Some(Effect {
            absolute: a.point,
            relative: r.point,
            ci: a.ci,
            relative_ci: r.ci,
            p_value: a.p_value,
            relative_p_value: r.p_value,
            sequential: o.sequential,
        }),
        _ => None,
    };

    let observed = [exposed[0].len() as u64, exposed[1].len() as u64];
    let srm = match exp.split.weights() {
        Some(w) => {
            let Srm {
                chi2,
                p_value,
                flag,
            } = stats::srm(&observed, &w);
            SrmFigures {
                p_value: Some(p_value),
                flag: flag.as_str(),
                chi2: Some(chi2),
                observed,
                expected: Some(w),
            }
        }
        None => SrmFigures {
            p_value: None,
            flag: "not_randomised",
            chi2: None,
            observed,
            expected: None,
        },
    };

    let power = power_figures(exp, &m, observed);
    let guardrails = guardrail_figures(exp, &exposed, &mut latencies, alpha);
    let cuped = if o.cuped {
        cuped_figures(sink, exp, &users)?
    } else {
        None
    };
    let crossover_users = users[0].keys().filter(|u| users[1].contains_key(u)).count() as u64;
    let (verdict, decision) = decide(exp, &effect, &srm, &guardrails, &power);
    let timeline = timeline(&closed, alpha);
    Ok(Report {
        experiment: exp.name.clone(),
        metric: exp.metric.clone(),
        randomised: exp.split.randomised(),
        state: exp.state().as_str(),
        since_ms: o.since_ms,
        arms,
        effect,
        srm,
        power,
        guardrails,
        cuped,
        crossover_users,
        verdict,
        decision,
        timeline,
    })
}

fn power_figures(exp: &Experiment, m: &[stats::Moments; 2], observed: [u64; 2]) -> Power {
    let (a, b) = (&m[0], &m[1]);
    let sigma = a.variance.max(0.0).sqrt();
    let ratio = match exp.split.weights() {
        Some(w) => w[1] / w[0],
        None if a.n > 0.0 => b.n / a.n,
        None => 1.0,
    };
    let (mde_absolute, mde_relative) = if a.n > 1.0 && b.n > 1.0 && sigma > 0.0 {
        let d = stats::mde_standardised(a.n, b.n / a.n, exp.alpha, exp.power);
        let abs = d * sigma;
        (Some(abs), (a.mean > 0.0).then(|| abs / a.mean))
    } else {
        (None, None)
    };
    let users_needed = stats::users_needed(a, exp.planned_lift, ratio, exp.alpha, exp.power);
    let users = observed[0] + observed[1];
    let planned_users = exp.planned_users.or(users_needed);
    Power {
        alpha: exp.alpha,
        power: exp.power,
        mde_absolute,
        mde_relative,
        planned_lift: exp.planned_lift,
        users_needed,
        planned_users,
        users,
        users_remaining: planned_users.map(|p| p.saturating_sub(users)),
    }
}

fn guardrail_figures(
    exp: &Experiment,
    exposed: &[BTreeMap<i64, (f64, f64, f64)>; 2],
    latencies: &mut [Vec<f64>; 2],
    alpha: f64,
) -> Vec<GuardrailFigures> {
    for l in latencies.iter_mut() {
        l.sort_by(f64::total_cmp);
    }
    let mut out = Vec::new();
    for g in &exp.guardrails {
        match g.metric {
            GuardMetric::P95Latency => {
                let q = |i: usize| stats::quantile_ci(&latencies[i], 0.95, alpha);
                let (c, t) = (q(0), q(1));
                let upper = t.map(|(_, ci)| ci[1]);
                let ok = upper.is_some_and(|u| u < g.limit);
                out.push(GuardrailFigures {
                    metric: g.metric.as_str(),
                    limit: g.limit,
                    control: c.map(|x| x.0),
                    treatment: t.map(|x| x.0),
                    difference: None,
                    upper,
                    p_value: None,
                    non_inferior: ok,
                    explain: match upper {
                        Some(u) => format!(
                            "treatment p95 {:.1} ms, upper 95 % bound {u:.1} ms {} {} ms",
                            t.map_or(0.0, |x| x.0),
                            if ok { "<" } else { ">=" },
                            g.limit
                        ),
                        None => "no treatment answers".into(),
                    },
                });
            }
            GuardMetric::ErrorRate | GuardMetric::FallbackShare => {
                let pick = |u: &(f64, f64, f64)| match g.metric {
                    GuardMetric::ErrorRate => (u.0, u.2),
                    _ => (u.1, u.2),
                };
                let s: Vec<RatioSums> = exposed
                    .iter()
                    .map(|arm| RatioSums::from_users(arm.values().map(pick)))
                    .collect();
                let ni = stats::non_inferiority(&s[0].moments(), &s[1].moments(), g.limit, alpha);
                out.push(GuardrailFigures {
                    metric: g.metric.as_str(),
                    limit: g.limit,
                    control: Some(s[0].mean()),
                    treatment: Some(s[1].mean()),
                    difference: Some(ni.difference),
                    upper: Some(ni.upper),
                    p_value: Some(ni.p_value),
                    non_inferior: ni.non_inferior,
                    explain: format!(
                        "treatment − control {:+.4}, upper 95 % bound {:+.4} {} margin {}",
                        ni.difference,
                        ni.upper,
                        if ni.non_inferior { "<" } else { ">=" },
                        g.limit
                    ),
                });
            }
        }
    }
    out
}

fn cuped_figures(
    sink: &mut dyn Sink,
    exp: &Experiment,
    users: &[BTreeMap<i64, (f64, f64)>; 2],
) -> Result<Option<Cuped>> {
    let start = exp.periods.first().map_or(exp.created_ms, |p| p.start_ms);
    let sql = "SELECT user_id, count(*) FROM mon_events WHERE kind = 'watch' AND late = 0
               AND time_ms >= $1 AND time_ms < $2 GROUP BY user_id";
    let pre: HashMap<i64, f64> = sink
        .rows(sql, &[start - CUPED_LOOKBACK_MS, start])?
        .iter()
        .map(|r| (r[0].int(), r[1].int() as f64))
        .collect();
    let mut arms = [CupedArm::default(), CupedArm::default()];
    let mut with_history = 0;
    for (i, arm) in users.iter().enumerate() {
        for (u, (conv, _)) in arm {
            let x = pre.get(u).copied().unwrap_or(0.0);
            with_history += u64::from(x > 0.0);
            arms[i].add(*conv, x);
        }
    }
    let theta = stats::cuped_theta(&arms[0], &arms[1]);
    let (a, b) = (arms[0].moments(theta), arms[1].moments(theta));
    let abs = stats::two_sided(&a, &b, Difference::Absolute, exp.alpha);
    let rel = stats::two_sided(&a, &b, Difference::Relative, exp.alpha);
    let raw = stats::two_sided(
        &arms[0].raw(),
        &arms[1].raw(),
        Difference::Absolute,
        exp.alpha,
    );
    Ok(match (abs, rel, raw) {
        (Some(abs), Some(rel), Some(raw)) => Some(Cuped {
            metric: "converted answers per user",
            covariate: "watch events in the 7 days before the start",
            theta,
            absolute: abs.point,
            relative: rel.point,
            ci: abs.ci,
            p_value: abs.p_value,
            variance_reduction: 1.0 - abs.se.powi(2) / raw.se.powi(2),
            users_with_history: with_history,
        }),
        _ => None,
    })
}

/// `p = 0.0123`, or `p < 0.0001`.
pub fn p_text(p: f64) -> String {
    if p < 1e-4 {
        "p < 0.0001".into()
    } else {
        format!("p = {p:.4}")
    }
}

fn pct(x: f64) -> String {
    format!("{:+.2} %", 100.0 * x)
}

fn decide(
    exp: &Experiment,
    effect: &Option<Effect>,
    srm: &SrmFigures,
    guardrails: &[GuardrailFigures],
    power: &Power,
) -> (Verdict, String) {
    if srm.flag == SrmFlag::Alert.as_str() {
        return (
            Verdict::CheckSplit,
            format!(
                "do not decide: sample-ratio mismatch (p = {:.2e}, users {} / {}): the split is \
                 broken, no effect can be trusted",
                srm.p_value.unwrap_or(0.0),
                srm.observed[0],
                srm.observed[1]
            ),
        );
    }
    let failing: Vec<&str> = guardrails
        .iter()
        .filter(|g| !g.non_inferior)
        .map(|g| g.metric)
        .collect();
    let Some(e) = effect else {
        return (
            Verdict::KeepRunning,
            "keep running: no effect can be estimated yet (too few users or no conversions)".into(),
        );
    };
    let significant = e.p_value < exp.alpha;
    let caveat = if exp.split.randomised() {
        ""
    } else {
        " (not randomised: the groups differ in more than the model)"
    };
    if significant && e.absolute < 0.0 {
        return (
            Verdict::RollBack,
            format!(
                "roll back to {}: {} is worse on {} by {} ({}){caveat}",
                exp.control,
                exp.treatment,
                exp.metric,
                pct(e.relative),
                p_text(e.p_value)
            ),
        );
    }
    if significant && failing.is_empty() {
        return (
            Verdict::Ship,
            format!(
                "ship {}: {} {} ({}) and every guardrail is non-inferior{caveat}",
                exp.treatment,
                exp.metric,
                pct(e.relative),
                p_text(e.p_value)
            ),
        );
    }
    if significant {
        return (
            Verdict::KeepRunning,
            format!(
                "do not ship yet: {} improves {} by {} ({}) but guardrail(s) {} are not \
                 shown non-inferior",
                exp.treatment,
                exp.metric,
                pct(e.relative),
                p_text(e.p_value),
                failing.join(", ")
            ),
        );
    }
    match power.users_remaining {
        Some(0) => (
            Verdict::NoEffect,
            format!(
                "no significant effect at the planned size ({} users; {}): keep {}",
                power.users,
                p_text(e.p_value),
                exp.control
            ),
        ),
        Some(r) => (
            Verdict::KeepRunning,
            format!(
                "keep running: not significant yet ({}); {r} more users for the planned size",
                p_text(e.p_value)
            ),
        ),
        None => (
            Verdict::KeepRunning,
            format!("keep running: not significant yet ({})", p_text(e.p_value)),
        ),
    }
}

/// Cumulative rate and interval per arm at evenly spaced times.
fn timeline(closed: &[Closed], alpha: f64) -> Vec<TimelinePoint> {
    let (Some(first), Some(last)) = (closed.first(), closed.last()) else {
        return Vec::new();
    };
    let (t0, t1) = (first.0, last.0 + 1);
    let steps = TIMELINE_POINTS.min(closed.len()).max(1);
    let mut out = Vec::new();
    for k in 1..=steps {
        let until = t0 + ((t1 - t0) as f64 * k as f64 / steps as f64).ceil() as i64;
        let users = per_user(closed, until);
        let arm = |i: usize| -> Option<[f64; 3]> {
            let s = sums(&users[i]);
            (s.n > 0.0).then(|| {
                let ci = s.moments().ci(alpha);
                [s.mean(), ci[0], ci[1]]
            })
        };
        out.push(TimelinePoint {
            time_ms: until,
            control: arm(0),
            treatment: arm(1),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exp() -> Experiment {
        Experiment {
            recsys_experiment: 1,
            name: "x".into(),
            control: "model_v1".into(),
            treatment: "model_v2".into(),
            split: super::super::define::Split::Hash {
                treatment_percent: 50.0,
                buckets: [0, 100],
            },
            salt: "s".into(),
            rule: "exp-x".into(),
            metric: "ctr10_1h".into(),
            guardrails: vec![],
            planned_users: None,
            planned_lift: 0.05,
            alpha: 0.05,
            power: 0.8,
            created_ms: 0,
            periods: vec![],
        }
    }

    fn effect(absolute: f64, p_value: f64) -> Option<Effect> {
        Some(Effect {
            absolute,
            relative: absolute / 0.3,
            ci: [absolute - 0.01, absolute + 0.01],
            relative_ci: [0.0, 0.0],
            p_value,
            relative_p_value: p_value,
            sequential: false,
        })
    }

    fn srm(flag: &'static str) -> SrmFigures {
        SrmFigures {
            p_value: Some(0.5),
            flag,
            chi2: Some(0.0),
            observed: [100, 100],
            expected: Some([50.0, 50.0]),
        }
    }

    fn power(remaining: Option<u64>) -> Power {
        Power {
            alpha: 0.05,
            power: 0.8,
            mde_absolute: None,
            mde_relative: None,
            planned_lift: 0.05,
            users_needed: None,
            planned_users: None,
            users: 200,
            users_remaining: remaining,
        }
    }

    fn guard(ok: bool) -> GuardrailFigures {
        GuardrailFigures {
            metric: "error_rate",
            limit: 0.01,
            control: Some(0.0),
            treatment: Some(0.0),
            difference: Some(0.0),
            upper: Some(0.0),
            p_value: Some(0.0),
            non_inferior: ok,
            explain: String::new(),
        }
    }

    #[test]
    fn ship_only_on_a_significant_gain_with_every_guardrail_non_inferior() {
        let e = exp();
        let v = |eff, s, g: &[GuardrailFigures], p| decide(&e, &eff, &s, g, &p).0;
        assert_eq!(
            v(
                effect(0.02, 0.001),
                srm("ok"),
                &[guard(true)],
                power(Some(0))
            ),
            Verdict::Ship
        );
        // A guardrail not shown non-inferior blocks the ship.
        assert_eq!(
            v(
                effect(0.02, 0.001),
                srm("ok"),
                &[guard(true), guard(false)],
                power(Some(0))
            ),
            Verdict::KeepRunning
        );
        // Significantly worse: roll back, guardrails or not.
        assert_eq!(
            v(effect(-0.02, 0.001), srm("ok"), &[], power(Some(5))),
            Verdict::RollBack
        );
        // A broken split: no decision at all.
        assert_eq!(
            v(effect(0.02, 0.001), srm("alert"), &[], power(Some(0))),
            Verdict::CheckSplit
        );
        // A warning does not stop the decision.
        assert_eq!(
            v(effect(0.02, 0.001), srm("warn"), &[], power(Some(0))),
            Verdict::Ship
        );
        // Not significant: keep running until the planned size, then no effect.
        assert_eq!(
            v(effect(0.02, 0.2), srm("ok"), &[], power(Some(50))),
            Verdict::KeepRunning
        );
        assert_eq!(
            v(effect(0.02, 0.2), srm("ok"), &[], power(Some(0))),
            Verdict::NoEffect
        );
        assert_eq!(
            v(None, srm("ok"), &[], power(Some(0))),
            Verdict::KeepRunning
        );
        let (_, line) = decide(&e, &effect(0.02, 0.00001), &srm("ok"), &[], &power(Some(0)));
        assert!(
            line.starts_with("ship model_v2: ctr10_1h +6.67 % (p < 0.0001)"),
            "{line}"
        );
    }

    #[test]
    fn labels_are_quoted_for_sql() {
        assert_eq!(
            quote("rules[0] exp-a'b split[0]"),
            "'rules[0] exp-a''b split[0]'"
        );
    }

    #[test]
    fn timeline_ends_with_the_totals() {
        let rows: Vec<Closed> = (0..100)
            .map(|i| (i * 1000, i % 10, (i % 2) as usize, i % 3 == 0))
            .collect();
        let t = timeline(&rows, 0.05);
        assert_eq!(t.len(), TIMELINE_POINTS);
        let users = per_user(&rows, i64::MAX);
        let last = t.last().and_then(|p| p.control).expect("control");
        assert!((last[0] - sums(&users[0]).mean()).abs() < 1e-12);
        assert!(last[1] < last[0] && last[0] < last[2]);
    }
}
