//! `recsys rollout`: a canary that advances step by step while its
//! guardrails hold and rolls back to the control the moment one fails.
//!
//! The rollout owns two rules at the front of `config.json`:
//! `rollout-<model>` (a canary taking the step's percentage of users, by
//! salted hash of the rule name, so every step keeps the users of the step
//! before) and `rollout-<model>-control` (everyone else, on the control).
//! Each rewrite is checked by the server's own checker and written
//! atomically under the experiments lock, like `experiment create`, and is
//! recorded as a run record of kind `rollout` (params: action `step`,
//! `rollback` or `complete`, the step and percentage, model, control,
//! guards; metrics: the guard figures that led to it).
//!
//! After each step has run for `every`, the guards are read from the
//! monitor's database over the answers of that step (per route:
//! [`crate::monitor::report::arm_health`]): `p95_latency<X` holds when the
//! canary's p95 is under X ms; `error_rate` and `fallback_share` fail when
//! the canary's rate is shown to exceed the control's by more than the
//! margin (the one-sided 95 % lower bound of the difference, answers as
//! Bernoulli trials, is above it; the control's answers of every step so
//! far are the baseline, so a 100 % step still has one). A step with fewer than `min_answers` canary answers fails:
//! no evidence is not a pass. On the first failure the rules go, the
//! control becomes the default (nobody is on the canary any more), a
//! `rollback` record is written and a Slack-format message (`{"text":
//! ...}`) is posted to the webhook. After the last step (100 %) holds, the
//! model becomes the default and the rules go (`complete`).

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::define::{
    GuardMetric, Guardrail, checked, config_error, lock, model_ref, read_config, rules_mut,
};
use super::{ExperimentError, Result};
use crate::monitor::Sink;
use crate::monitor::report::{ArmHealth, arm_health};
use crate::progress::Progress;
use crate::workspace::{RunSpec, Workspace, write_atomic};

/// The run-record kind of rollout changes.
pub const RUN_KIND: &str = "rollout";

/// The standard normal quantile at 0.95.
const Z_ONE_SIDED_95: f64 = 1.644_853_626_951_472_2;

#[derive(Debug, Clone)]
pub struct RolloutOptions {
    pub model: String,
    /// Default: config.json's `default` model.
    pub control: Option<String>,
    /// Canary percentages, increasing, the last 100.
    pub steps: Vec<f64>,
    pub every: Duration,
    pub guards: Vec<Guardrail>,
    /// Fewest canary answers a step needs to be judged.
    pub min_answers: u64,
    pub webhook: Option<String>,
}

/// One guard at the end of one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardCheck {
    pub metric: &'static str,
    pub limit: f64,
    pub canary: Option<f64>,
    pub control: Option<f64>,
    pub ok: bool,
    pub explain: String,
}

/// One step: its percentage, its run record and what it measured.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub step: usize,
    pub percent: f64,
    pub run: String,
    pub started_ms: i64,
    pub ended_ms: Option<i64>,
    pub canary: Option<ArmHealth>,
    pub control: Option<ArmHealth>,
    pub checks: Vec<GuardCheck>,
    pub passed: Option<bool>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutReport {
    pub model: String,
    pub control: String,
    /// `completed` or `rolled_back`.
    pub outcome: &'static str,
    pub steps: Vec<StepRecord>,
    /// The record of the rollback or the completion.
    pub final_run: String,
    /// Why it rolled back.
    pub reason: Option<String>,
    /// What the webhook said, when one was given.
    pub webhook: Option<String>,
}

/// What the caller sees while a rollout runs.
pub trait Observer {
    /// A step's config is in place.
    fn started(&self, _s: &StepRecord) {}
    /// A step was judged.
    fn judged(&self, _s: &StepRecord) {}
}

fn rule_name(model: &str) -> String {
    format!("rollout-{model}")
}

fn check_options(o: &RolloutOptions) -> Result<()> {
    let bad = |s: &str| Err(ExperimentError::Invalid(s.to_string()));
    if o.steps.is_empty() {
        return bad("--steps needs at least one percentage (e.g. 5,25,50,100)");
    }
    if o.steps
        .iter()
        .any(|p| !(p.is_finite() && *p > 0.0 && *p <= 100.0))
    {
        return bad("--steps: every percentage must be above 0 and at most 100");
    }
    if o.steps.windows(2).any(|w| w[1] <= w[0]) {
        return bad("--steps must increase (e.g. 5,25,50,100)");
    }
    if o.steps.last() != Some(&100.0) {
        return bad("--steps must end at 100 (the rollout completes by serving everyone)");
    }
    if o.every.is_zero() {
        return bad("--every must be longer than 0");
    }
    if o.guards.is_empty() {
        return bad("give at least one --guard (p95_latency<400ms, error_rate, fallback_share)");
    }
    if o.min_answers == 0 {
        return bad("--min-answers must be at least 1");
    }
    Ok(())
}

/// The config with the rollout's rules replaced by `rules` (none: taken
/// out) and, when given, a new default.
fn rewrite(
    ws: &Workspace,
    config_path: &Path,
    name: &str,
    rules: Vec<serde_json::Value>,
    default: Option<&str>,
) -> Result<(Vec<u8>, Vec<u8>)> {
    let _lock = lock(ws)?;
    let (old, mut value, _) = read_config(config_path)?;
    let names = [name.to_string(), format!("{name}-control")];
    let list = rules_mut(&mut value).ok_or_else(|| config_error(config_path, "no rules list"))?;
    list.retain(|r| {
        r.get("name")
            .and_then(|n| n.as_str())
            .is_none_or(|n| !names.iter().any(|x| x == n))
    });
    for (i, r) in rules.into_iter().enumerate() {
        list.insert(i, r);
    }
    if list.is_empty()
        && let Some(o) = value.as_object_mut()
    {
        o.remove("rules");
    }
    if let Some(d) = default
        && let Some(o) = value.as_object_mut()
    {
        o.insert("default".into(), d.into());
    }
    let new = checked(config_path, &value)?;
    write_atomic(config_path, &new)?;
    Ok((old, new))
}

#[allow(clippy::too_many_arguments)]
fn record(
    ws: &Workspace,
    config_path: &Path,
    old: &[u8],
    new: &[u8],
    o: &RolloutOptions,
    control: &str,
    params: serde_json::Value,
    metrics: serde_json::Value,
    progress: &dyn Progress,
) -> Result<String> {
    let mut spec = RunSpec::new(RUN_KIND, ws.now_ms());
    let mut p = serde_json::json!({
        "model": o.model,
        "control": control,
        "steps": o.steps,
        "every_ms": o.every.as_millis() as u64,
        "guards": o.guards.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
        "rule": rule_name(&o.model),
    });
    if let (Some(p), Some(extra)) = (p.as_object_mut(), params.as_object()) {
        for (k, v) in extra {
            p.insert(k.clone(), v.clone());
        }
    }
    spec.params = p;
    spec.metrics = metrics;
    spec.source = serde_json::json!({
        "config": config_path.display().to_string(),
        "config_digest": blake3::hash(new).to_hex().to_string(),
    });
    spec.inputs = vec![model_ref(ws, &o.model)?, model_ref(ws, control)?];
    match ws.record_run(spec, &[], progress) {
        Ok((run, _)) => Ok(run.map(|d| d.hex()).unwrap_or_default()),
        Err(e) => {
            // Nothing recorded: the config goes back to what it was.
            write_atomic(config_path, old)?;
            Err(e.into())
        }
    }
}

/// Judge the guards on one step's figures.
fn judge(
    o: &RolloutOptions,
    canary: Option<&ArmHealth>,
    baseline: Option<&ArmHealth>,
) -> Vec<GuardCheck> {
    let answers = canary.map_or(0, |c| c.answers);
    let mut out = Vec::new();
    if answers < o.min_answers {
        out.push(GuardCheck {
            metric: "answers",
            limit: o.min_answers as f64,
            canary: Some(answers as f64),
            control: baseline.map(|b| b.answers as f64),
            ok: false,
            explain: format!(
                "only {answers} canary answers in the step (at least {} are needed to judge it)",
                o.min_answers
            ),
        });
        return out;
    }
    for g in &o.guards {
        let check = match g.metric {
            GuardMetric::P95Latency => {
                let c = canary.and_then(|c| c.latency_p95_ms);
                let ok = c.is_some_and(|c| c < g.limit);
                GuardCheck {
                    metric: g.metric.as_str(),
                    limit: g.limit,
                    canary: c,
                    control: baseline.and_then(|b| b.latency_p95_ms),
                    ok,
                    explain: format!(
                        "canary p95 latency {:.1} ms {} {} ms",
                        c.unwrap_or(f64::NAN),
                        if ok { "<" } else { ">=" },
                        g.limit
                    ),
                }
            }
            GuardMetric::ErrorRate | GuardMetric::FallbackShare => {
                let pick = |h: &ArmHealth| match g.metric {
                    GuardMetric::ErrorRate => h.error_rate,
                    _ => h.fallback_share,
                };
                let c = canary.and_then(pick);
                let b = baseline.and_then(pick).unwrap_or(0.0);
                let nc = canary.map_or(0, |h| h.answers) as f64;
                let nb = baseline.map_or(0, |h| h.answers) as f64;
                // One-sided 95 % lower bound of canary − control (answers
                // as Bernoulli trials): a step fails when the excess is
                // shown to be above the margin, not on noise.
                let var = |p: f64, n: f64| if n > 0.0 { p * (1.0 - p) / n } else { 0.0 };
                let diff = c.map(|c| c - b);
                let lower = c.map(|c| c - b - Z_ONE_SIDED_95 * (var(c, nc) + var(b, nb)).sqrt());
                let ok = lower.is_some_and(|l| l <= g.limit);
                GuardCheck {
                    metric: g.metric.as_str(),
                    limit: g.limit,
                    canary: c,
                    control: baseline.and_then(pick),
                    ok,
                    explain: format!(
                        "{}: canary {:.4} − control {b:.4} = {:+.4}, lower 95 % bound {:+.4} {} margin {}",
                        g.metric.as_str(),
                        c.unwrap_or(f64::NAN),
                        diff.unwrap_or(f64::NAN),
                        lower.unwrap_or(f64::NAN),
                        if ok { "<=" } else { ">" },
                        g.limit
                    ),
                }
            }
        };
        out.push(check);
    }
    out
}

/// Post `text` as a Slack-format message.
fn post(url: &str, text: &str) -> std::result::Result<(), String> {
    crate::monitor::http::post_json(url, &serde_json::json!({ "text": text }))
}

/// Run the rollout to completion or rollback. `now_ms` is the wall clock
/// (the server's clock: answers are stamped with it); `sink` the monitor's
/// database.
pub fn run(
    ws: &Workspace,
    config_path: &Path,
    o: &RolloutOptions,
    sink: &mut dyn Sink,
    now_ms: &dyn Fn() -> i64,
    observer: &dyn Observer,
    progress: &dyn Progress,
) -> Result<RolloutReport> {
    check_options(o)?;
    model_ref(ws, &o.model)?;
    let name = rule_name(&o.model);
    let control = {
        let (_, _, cfg) = read_config(config_path)?;
        if cfg.rules.iter().any(|r| r.name == name) {
            return Err(config_error(
                config_path,
                &format!(
                    "it already has a rule named {name} (a rollout of {} is under way)",
                    o.model
                ),
            ));
        }
        match (&o.control, &cfg.default) {
            (Some(c), _) => c.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => {
                return Err(config_error(
                    config_path,
                    "it has no default model to roll back to; give --control",
                ));
            }
        }
    };
    model_ref(ws, &control)?;
    if control == o.model {
        return Err(ExperimentError::Invalid(format!(
            "{} is already the control; name another model to roll out",
            o.model
        )));
    }
    let mut steps: Vec<StepRecord> = Vec::new();
    let mut baseline: Option<ArmHealth> = None;
    let mut last_metrics = serde_json::json!({});
    for (i, &percent) in o.steps.iter().enumerate() {
        let rules = vec![
            serde_json::json!({"name": name, "canary": {"model": o.model, "percent": percent}}),
            serde_json::json!({"name": format!("{name}-control"), "model": control}),
        ];
        let (old, new) = rewrite(ws, config_path, &name, rules, None)?;
        let started_ms = now_ms();
        let run = record(
            ws,
            config_path,
            &old,
            &new,
            o,
            &control,
            serde_json::json!({"action": "step", "step": i + 1, "percent": percent}),
            last_metrics.clone(),
            progress,
        )?;
        let mut s = StepRecord {
            step: i + 1,
            percent,
            run,
            started_ms,
            ended_ms: None,
            canary: None,
            control: None,
            checks: Vec::new(),
            passed: None,
        };
        observer.started(&s);
        std::thread::sleep(o.every);
        let ended = now_ms();
        let health = arm_health(sink, started_ms, ended + 1)?;
        let canary_label = format!("rules[0] {name} canary");
        let control_label = format!("rules[1] {name}-control");
        s.canary = health.iter().find(|h| h.arm == canary_label).cloned();
        s.control = health.iter().find(|h| h.arm == control_label).cloned();
        // The control is one model throughout: its answers of every step
        // so far are the baseline (a 100 % step has only stragglers).
        if let Some(c) = s.control.as_ref().filter(|c| c.answers > 0) {
            let b = baseline.get_or_insert_with(|| ArmHealth {
                arm: c.arm.clone(),
                ..ArmHealth::default()
            });
            b.answers += c.answers;
            b.errors += c.errors;
            b.fallbacks += c.fallbacks;
            let n = b.answers as f64;
            b.error_rate = Some(b.errors as f64 / n);
            b.fallback_share = Some(b.fallbacks as f64 / n);
            b.latency_p95_ms = c.latency_p95_ms;
        }
        s.checks = judge(o, s.canary.as_ref(), baseline.as_ref());
        let passed = s.checks.iter().all(|c| c.ok);
        s.passed = Some(passed);
        s.ended_ms = Some(ended);
        observer.judged(&s);
        last_metrics = serde_json::json!({
            "judged_step": s.step,
            "percent": s.percent,
            "passed": passed,
            "canary": s.canary,
            "control": s.control,
            "checks": s.checks,
        });
        steps.push(s);
        if !passed {
            let failed: Vec<String> = steps[i]
                .checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| c.explain.clone())
                .collect();
            let reason = failed.join("; ");
            let (old, new) = rewrite(ws, config_path, &name, Vec::new(), Some(&control))?;
            let final_run = record(
                ws,
                config_path,
                &old,
                &new,
                o,
                &control,
                serde_json::json!({"action": "rollback", "step": i + 1, "percent": percent, "reason": reason}),
                last_metrics,
                progress,
            )?;
            let text = format!(
                ":rotating_light: recsys rollout of {} rolled back to {control} at step {} ({percent} % of users): {reason}. config.json serves {control} again (run {}).",
                o.model,
                i + 1,
                &final_run[..final_run.len().min(12)]
            );
            let webhook = o.webhook.as_ref().map(|u| match post(u, &text) {
                Ok(()) => "posted".to_string(),
                Err(e) => e,
            });
            return Ok(RolloutReport {
                model: o.model.clone(),
                control,
                outcome: "rolled_back",
                steps,
                final_run,
                reason: Some(reason),
                webhook,
            });
        }
    }
    let (old, new) = rewrite(ws, config_path, &name, Vec::new(), Some(&o.model))?;
    let final_run = record(
        ws,
        config_path,
        &old,
        &new,
        o,
        &control,
        serde_json::json!({"action": "complete", "step": o.steps.len(), "percent": 100.0}),
        last_metrics,
        progress,
    )?;
    let text = format!(
        ":white_check_mark: recsys rollout of {} completed: every step's guards held; config.json serves {} to everyone (was {control}).",
        o.model, o.model
    );
    let webhook = o.webhook.as_ref().map(|u| match post(u, &text) {
        Ok(()) => "posted".to_string(),
        Err(e) => e,
    });
    Ok(RolloutReport {
        model: o.model.clone(),
        control,
        outcome: "completed",
        steps,
        final_run,
        reason: None,
        webhook,
    })
}

/// Parse `--steps 5,25,50,100`.
pub fn parse_steps(s: &str) -> Result<Vec<f64>> {
    s.split(',')
        .map(|p| {
            let p = p.trim().trim_end_matches('%');
            p.parse::<f64>().map_err(|_| {
                ExperimentError::Invalid(format!(
                    "--steps {s:?}: {p:?} is not a percentage (e.g. 5,25,50,100)"
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(steps: Vec<f64>) -> RolloutOptions {
        RolloutOptions {
            model: "m2".into(),
            control: None,
            steps,
            every: Duration::from_secs(1),
            guards: vec![
                Guardrail::parse("p95_latency<400ms").expect("guard"),
                Guardrail::parse("fallback_share").expect("guard"),
            ],
            min_answers: 10,
            webhook: None,
        }
    }

    fn health(answers: u64, fallbacks: u64, p95: f64) -> ArmHealth {
        ArmHealth {
            arm: "x".into(),
            answers,
            errors: 0,
            fallbacks,
            error_rate: Some(0.0),
            fallback_share: Some(fallbacks as f64 / answers as f64),
            latency_p95_ms: Some(p95),
        }
    }

    #[test]
    fn steps_are_checked() {
        assert!(check_options(&opts(vec![5.0, 25.0, 50.0, 100.0])).is_ok());
        for bad in [
            vec![],
            vec![50.0, 25.0, 100.0],
            vec![5.0, 50.0],
            vec![0.0, 100.0],
            vec![5.0, 150.0],
        ] {
            assert!(check_options(&opts(bad.clone())).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_steps("5, 25,50%,100").expect("ok"),
            vec![5.0, 25.0, 50.0, 100.0]
        );
        assert!(parse_steps("5,x").is_err());
    }

    #[test]
    fn guards_compare_the_canary_with_the_control() {
        let o = opts(vec![100.0]);
        let good = judge(&o, Some(&health(100, 1, 20.0)), Some(&health(100, 0, 15.0)));
        assert!(good.iter().all(|c| c.ok), "{good:?}");
        let slow = judge(
            &o,
            Some(&health(100, 0, 450.0)),
            Some(&health(100, 0, 15.0)),
        );
        assert_eq!(
            slow.iter()
                .filter(|c| !c.ok)
                .map(|c| c.metric)
                .collect::<Vec<_>>(),
            ["p95_latency"]
        );
        let falls = judge(
            &o,
            Some(&health(100, 30, 20.0)),
            Some(&health(100, 0, 15.0)),
        );
        assert!(
            falls.iter().any(|c| c.metric == "fallback_share" && !c.ok),
            "{falls:?}"
        );
        let few = judge(&o, Some(&health(3, 0, 20.0)), None);
        assert!(few.len() == 1 && !few[0].ok && few[0].explain.contains("only 3 canary answers"));
    }
}
