//! Experiment definitions: `create`, `start`, `stop`, `list`, `show`.
//!
//! An experiment owns one routing rule at the front of `config.json`
//! (`exp-<name>`; an attribute split also owns `exp-<name>-control`), so it
//! takes its users before any older rule. Every change is a run record of
//! kind `experiment` whose `params` hold the action, a revision number and
//! the whole definition; the record with the highest revision is the
//! experiment's state. Records are content-addressed and kept by lineage
//! (every run record is a root), so who was in which arm, under which salt
//! and rule, from when to when, survives a lost lineage.db.
//!
//! A command that fails changes nothing: the config is rewritten (checked
//! by the server's own checker, written atomically) only after every check
//! passed, and put back as it was if the run record cannot be written.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{ExperimentError, Result};
use crate::lineage::ArtifactRef;
use crate::progress::Progress;
use crate::serve::config::{self, UserAttrs};
use crate::workspace::{RunSpec, Workspace, write_atomic};

/// Bumped when the definition layout changes incompatibly.
pub const FORMAT: u32 = 1;

/// The run-record kind of experiment changes.
pub const RUN_KIND: &str = "experiment";

/// The default success metric: answers with ≥ 1 of their first 10 items
/// watched within 1 h (the monitor's `converted_10`).
pub const METRIC: &str = "ctr10_1h";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    pub recsys_experiment: u32,
    pub name: String,
    pub control: String,
    pub treatment: String,
    pub split: Split,
    /// config.json's salt when the rule was written: with the rule name it
    /// decides every hash assignment.
    pub salt: String,
    /// The routing rule's name (`exp-<name>`).
    pub rule: String,
    pub metric: String,
    pub guardrails: Vec<Guardrail>,
    /// Users (both arms) the experiment is planned to run for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_users: Option<u64>,
    /// The relative lift the power calculation plans for.
    pub planned_lift: f64,
    pub alpha: f64,
    pub power: f64,
    pub created_ms: i64,
    /// When it was running: `[start, stop)`, the last one open while running.
    pub periods: Vec<Period>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Period {
    pub start_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_ms: Option<i64>,
}

/// How users are assigned to the arms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case", deny_unknown_fields)]
pub enum Split {
    /// Salted hash of the user id: randomised. `treatment_percent` of the
    /// users in hash buckets `[from, to)` (of 100) get the treatment.
    Hash {
        treatment_percent: f64,
        buckets: [u32; 2],
    },
    /// Users whose attribute matches get the treatment, everyone else the
    /// control: **not** randomised (the groups differ in more than the model).
    Attribute { attribute: String, value: String },
}

impl Split {
    pub fn randomised(&self) -> bool {
        matches!(self, Split::Hash { .. })
    }

    /// Expected share of (control, treatment) users, for the SRM test.
    pub fn weights(&self) -> Option<[f64; 2]> {
        match self {
            Split::Hash {
                treatment_percent, ..
            } => Some([100.0 - treatment_percent, *treatment_percent]),
            Split::Attribute { .. } => None,
        }
    }
}

/// A guardrail metric and its limit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Guardrail {
    pub metric: GuardMetric,
    /// p95 latency: the bound in ms the treatment's p95 must stay under.
    /// Rates: the non-inferiority margin (absolute, treatment − control).
    pub limit: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardMetric {
    P95Latency,
    ErrorRate,
    FallbackShare,
}

impl GuardMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardMetric::P95Latency => "p95_latency",
            GuardMetric::ErrorRate => "error_rate",
            GuardMetric::FallbackShare => "fallback_share",
        }
    }
}

impl Guardrail {
    /// `p95_latency<400ms`, `error_rate`, `error_rate<0.02`, `fallback_share<5%`.
    pub fn parse(s: &str) -> Result<Guardrail> {
        let bad = |why: &str| {
            ExperimentError::Invalid(format!(
                "bad guardrail {s:?}: {why} (p95_latency<400ms, error_rate[<0.01], \
                 fallback_share[<0.02])"
            ))
        };
        let (name, limit) = match s.split_once('<') {
            Some((n, l)) => (n.trim(), Some(l.trim())),
            None => (s.trim(), None),
        };
        let metric = match name {
            "p95_latency" => GuardMetric::P95Latency,
            "error_rate" => GuardMetric::ErrorRate,
            "fallback_share" => GuardMetric::FallbackShare,
            _ => return Err(bad("unknown metric")),
        };
        let limit = match (metric, limit) {
            (GuardMetric::P95Latency, None) => 400.0,
            (GuardMetric::P95Latency, Some(l)) => l
                .strip_suffix("ms")
                .unwrap_or(l)
                .trim()
                .parse::<f64>()
                .map_err(|_| bad("the bound is milliseconds"))?,
            (GuardMetric::ErrorRate, None) => 0.01,
            (GuardMetric::FallbackShare, None) => 0.02,
            (_, Some(l)) => match l.strip_suffix('%') {
                Some(p) => p.trim().parse::<f64>().map_err(|_| bad("bad percent"))? / 100.0,
                None => l.parse::<f64>().map_err(|_| bad("bad margin"))?,
            },
        };
        if !(limit.is_finite() && limit > 0.0) {
            return Err(bad("the limit must be positive"));
        }
        Ok(Guardrail { metric, limit })
    }
}

impl std::fmt::Display for Guardrail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.metric {
            GuardMetric::P95Latency => write!(f, "p95_latency<{}ms", self.limit),
            m => write!(f, "{} non-inferior within +{}", m.as_str(), self.limit),
        }
    }
}

/// Running or stopped, from the periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExperimentState {
    Running,
    Stopped,
}

impl ExperimentState {
    pub fn as_str(self) -> &'static str {
        match self {
            ExperimentState::Running => "running",
            ExperimentState::Stopped => "stopped",
        }
    }
}

/// Which arm a user is in, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assignment {
    /// `control`, `treatment`, or `none` (the experiment does not take the user).
    pub arm: &'static str,
    pub model: Option<String>,
    pub why: String,
}

impl Experiment {
    pub fn state(&self) -> ExperimentState {
        match self.periods.last() {
            Some(p) if p.stop_ms.is_none() => ExperimentState::Running,
            _ => ExperimentState::Stopped,
        }
    }

    /// Whether it was running at `t`.
    pub fn running_at(&self, t: i64) -> bool {
        self.periods
            .iter()
            .any(|p| p.start_ms <= t && p.stop_ms.is_none_or(|s| t < s))
    }

    /// The control rule's name of an attribute split.
    pub fn control_rule(&self) -> String {
        format!("{}-control", self.rule)
    }

    /// The arm (`control`/`treatment`) of a route label the server logged
    /// (`rules[0] exp-x split[1]`), if it is one of this experiment's.
    pub fn arm_of_label(&self, label: &str) -> Option<&'static str> {
        let rest = label.strip_prefix("rules[")?;
        let (_, rest) = rest.split_once("] ")?;
        match &self.split {
            Split::Hash { .. } => {
                let (rule, arm) = rest.rsplit_once(' ')?;
                if rule != self.rule {
                    return None;
                }
                match arm {
                    "split[0]" => Some("control"),
                    "split[1]" => Some("treatment"),
                    _ => None,
                }
            }
            Split::Attribute { .. } => {
                if rest == self.rule {
                    Some("treatment")
                } else if rest == self.control_rule() {
                    Some("control")
                } else {
                    None
                }
            }
        }
    }

    /// The arm `user` gets from this experiment's rule (ignoring whether
    /// it is running), with the reason in terms of the config.
    pub fn assign(&self, user: u64, attrs: Option<&UserAttrs>) -> Assignment {
        match &self.split {
            Split::Hash {
                treatment_percent,
                buckets,
            } => {
                let bucket = config::position(&self.salt, "buckets", user) / 100;
                let whole = buckets[0] == 0 && buckets[1] == 100;
                if !whole && (bucket < u64::from(buckets[0]) || bucket >= u64::from(buckets[1])) {
                    return Assignment {
                        arm: "none",
                        model: None,
                        why: format!(
                            "hash bucket {bucket} (salt {:?}) is outside the experiment's buckets {}..{}",
                            self.salt, buckets[0], buckets[1]
                        ),
                    };
                }
                let pos = config::position(&self.salt, &self.rule, user);
                // The router's bound for the first arm (control).
                let bound = (((100.0 - treatment_percent) / 100.0) * 10_000.0).round() as u64;
                let (arm, model) = if pos < bound {
                    ("control", &self.control)
                } else {
                    ("treatment", &self.treatment)
                };
                Assignment {
                    arm,
                    model: Some(model.clone()),
                    why: format!(
                        "hash position {pos} of 10000 (BLAKE3 of salt {:?}, rule {}, user {user}) is {} the control's bound {bound}{}",
                        self.salt,
                        self.rule,
                        if pos < bound { "below" } else { "at or above" },
                        if whole {
                            String::new()
                        } else {
                            format!("; bucket {bucket} is inside {}..{}", buckets[0], buckets[1])
                        }
                    ),
                }
            }
            Split::Attribute { attribute, value } => {
                let matched = attrs.map(|a| attr_matches(a, attribute, value));
                let (arm, model, why) = match matched {
                    Some(true) => (
                        "treatment",
                        &self.treatment,
                        format!("the user's {attribute} matches {value}"),
                    ),
                    Some(false) => (
                        "control",
                        &self.control,
                        format!("the user's {attribute} does not match {value}"),
                    ),
                    None => (
                        "control",
                        &self.control,
                        format!(
                            "the user's {attribute} is unknown, so rule {} does not match",
                            self.rule
                        ),
                    ),
                };
                Assignment {
                    arm,
                    model: Some(model.clone()),
                    why,
                }
            }
        }
    }

    /// The rules this experiment puts at the front of the config.
    fn rules_json(&self) -> Vec<serde_json::Value> {
        match &self.split {
            Split::Hash {
                treatment_percent,
                buckets,
            } => {
                let mut rule = serde_json::json!({
                    "name": self.rule,
                    "split": [
                        {"model": self.control, "weight": 100.0 - treatment_percent},
                        {"model": self.treatment, "weight": treatment_percent},
                    ],
                });
                if !(buckets[0] == 0 && buckets[1] == 100) {
                    rule["when"] =
                        serde_json::json!({"buckets": {"from": buckets[0], "to": buckets[1]}});
                }
                vec![rule]
            }
            Split::Attribute { attribute, value } => {
                let when = match attribute.as_str() {
                    "age" => {
                        let (lo, hi) = parse_age(value).unwrap_or((None, None));
                        let mut r = serde_json::Map::new();
                        if let Some(lo) = lo {
                            r.insert("min".into(), lo.into());
                        }
                        if let Some(hi) = hi {
                            r.insert("max".into(), hi.into());
                        }
                        serde_json::json!({"age": r})
                    }
                    a => serde_json::json!({ a: value }),
                };
                vec![
                    serde_json::json!({"name": self.rule, "when": when, "model": self.treatment}),
                    serde_json::json!({"name": self.control_rule(), "model": self.control}),
                ]
            }
        }
    }

    fn rule_names(&self) -> Vec<String> {
        match self.split {
            Split::Hash { .. } => vec![self.rule.clone()],
            Split::Attribute { .. } => vec![self.rule.clone(), self.control_rule()],
        }
    }

    /// Why two experiments would share users, if they would.
    fn overlaps(&self, other: &Experiment) -> Option<String> {
        match (&self.split, &other.split) {
            (Split::Hash { buckets: a, .. }, Split::Hash { buckets: b, .. }) => {
                (a[0] < b[1] && b[0] < a[1]).then(|| {
                    format!(
                        "hash buckets {}..{} and {}..{} intersect",
                        a[0], a[1], b[0], b[1]
                    )
                })
            }
            _ => Some("an attribute split takes every user".into()),
        }
    }
}

fn attr_matches(a: &UserAttrs, attribute: &str, value: &str) -> bool {
    match attribute {
        "gender" => a.gender.as_deref() == Some(value),
        "occupation" => a
            .occupation
            .as_deref()
            .is_some_and(|o| o.eq_ignore_ascii_case(value)),
        "age" => match (a.age, parse_age(value)) {
            (Some(age), Some((lo, hi))) => {
                lo.is_none_or(|l| age >= l) && hi.is_none_or(|h| age <= h)
            }
            _ => false,
        },
        _ => false,
    }
}

/// `18-25`, `30-` or `-17` (inclusive).
fn parse_age(v: &str) -> Option<(Option<u32>, Option<u32>)> {
    let (lo, hi) = v.split_once('-')?;
    let p = |s: &str| -> Option<Option<u32>> {
        let s = s.trim();
        if s.is_empty() {
            Some(None)
        } else {
            s.parse().ok().map(Some)
        }
    };
    let (lo, hi) = (p(lo)?, p(hi)?);
    if lo.is_none() && hi.is_none() {
        return None;
    }
    if let (Some(l), Some(h)) = (lo, hi)
        && l > h
    {
        return None;
    }
    Some((lo, hi))
}

/// `hash`, `gender=F`, `age=18-25`, `occupation=student`.
pub fn parse_split(by: &str, treatment_percent: f64, buckets: [u32; 2]) -> Result<Split> {
    if !(treatment_percent > 0.0 && treatment_percent < 100.0) {
        return Err(ExperimentError::Invalid(format!(
            "--split {treatment_percent}: the treatment's share must be between 0 and 100 (exclusive)"
        )));
    }
    if buckets[0] >= buckets[1] || buckets[1] > 100 {
        return Err(ExperimentError::Invalid(format!(
            "--buckets {}-{}: need 0 <= from < to <= 100",
            buckets[0], buckets[1]
        )));
    }
    if by == "hash" {
        return Ok(Split::Hash {
            treatment_percent,
            buckets,
        });
    }
    let bad = |why: &str| {
        ExperimentError::Invalid(format!(
            "--by {by:?}: {why} (hash, gender=F, age=18-25, occupation=student)"
        ))
    };
    let (attribute, value) = by
        .split_once('=')
        .ok_or_else(|| bad("an attribute split names the treatment's value"))?;
    let value = value.trim();
    match attribute.trim() {
        "gender" if value == "M" || value == "F" => {}
        "gender" => return Err(bad("gender is M or F")),
        "age" if parse_age(value).is_some() => {}
        "age" => return Err(bad("age is an inclusive range like 18-25, 30- or -17")),
        "occupation" if !value.is_empty() => {}
        _ => return Err(bad("unknown attribute")),
    }
    if buckets != [0, 100] {
        return Err(bad("--buckets applies to hash splits only"));
    }
    Ok(Split::Attribute {
        attribute: attribute.trim().to_string(),
        value: value.to_string(),
    })
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// What `create` needs besides the workspace.
#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub name: String,
    pub control: String,
    pub treatment: String,
    pub split: Split,
    pub metric: String,
    pub guardrails: Vec<Guardrail>,
    pub planned_users: Option<u64>,
    pub planned_lift: f64,
}

/// What a change did.
#[derive(Debug, Clone, Serialize)]
pub struct Changed {
    pub experiment: Experiment,
    pub state: ExperimentState,
    /// The run record of this change.
    pub run: String,
    pub config: String,
}

/// Every experiment, at its latest revision, oldest first.
pub fn list(ws: &Workspace) -> Result<Vec<(Experiment, String)>> {
    let mut latest: std::collections::BTreeMap<String, (u64, i64, Experiment, String)> =
        std::collections::BTreeMap::new();
    for id in ws.lineage.run_ids_of_kind(RUN_KIND)? {
        let Some(run) = ws.lineage.run(&id)? else {
            continue;
        };
        let rev = run.params.get("revision").and_then(|v| v.as_u64());
        let exp = run
            .params
            .get("experiment")
            .cloned()
            .and_then(|v| serde_json::from_value::<Experiment>(v).ok());
        let (Some(rev), Some(exp)) = (rev, exp) else {
            continue;
        };
        let newer = latest.get(&exp.name).is_none_or(|(r, ..)| rev > *r);
        if newer {
            latest.insert(exp.name.clone(), (rev, exp.created_ms, exp, id.hex()));
        }
    }
    let mut out: Vec<(i64, Experiment, String)> = latest
        .into_values()
        .map(|(_, created, e, id)| (created, e, id))
        .collect();
    out.sort_by(|a, b| (a.0, &a.1.name).cmp(&(b.0, &b.1.name)));
    Ok(out.into_iter().map(|(_, e, id)| (e, id)).collect())
}

/// One experiment at its latest revision, with its revision number.
pub fn get(ws: &Workspace, name: &str) -> Result<Experiment> {
    list(ws)?
        .into_iter()
        .find(|(e, _)| e.name == name)
        .map(|(e, _)| e)
        .ok_or_else(|| ExperimentError::Unknown(name.to_string()))
}

fn revision(ws: &Workspace, name: &str) -> Result<u64> {
    let mut rev = 0;
    for id in ws.lineage.run_ids_of_kind(RUN_KIND)? {
        if let Some(run) = ws.lineage.run(&id)?
            && run.params.get("experiment").and_then(|e| e.get("name")) == Some(&name.into())
        {
            rev = rev.max(
                run.params
                    .get("revision")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0),
            );
        }
    }
    Ok(rev)
}

pub(super) fn model_ref(ws: &Workspace, name: &str) -> Result<ArtifactRef> {
    match ws.lineage.artifact_by_name(name)? {
        Some(a) if a.kind == "model" => Ok(ArtifactRef {
            digest: a.digest,
            kind: a.kind,
            name: a.name,
            size: a.size,
            files: a.files,
            path: a.path,
        }),
        _ => Err(ExperimentError::NoModel(name.to_string())),
    }
}

pub(super) fn read_config(
    path: &Path,
) -> Result<(Vec<u8>, serde_json::Value, config::RouterConfig)> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| ExperimentError::Config {
        path: shown.clone(),
        reason: format!("cannot read it: {e}"),
    })?;
    let cfg = config::parse(&bytes).map_err(|e| ExperimentError::Config {
        path: shown.clone(),
        reason: format!("it is invalid ({e})"),
    })?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| ExperimentError::Config {
            path: shown,
            reason: e.to_string(),
        })?;
    Ok((bytes, value, cfg))
}

/// Check a rewritten config with the server's checker and serialise it.
pub(super) fn checked(path: &Path, value: &serde_json::Value) -> Result<Vec<u8>> {
    let mut out = serde_json::to_string_pretty(value).map_err(|e| ExperimentError::Config {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    out.push('\n');
    config::parse(out.as_bytes()).map_err(|e| ExperimentError::Config {
        path: path.display().to_string(),
        reason: format!("the rewritten config would be invalid ({e})"),
    })?;
    Ok(out.into_bytes())
}

/// `value` (the config `cfg` was parsed from) with the experiment's rules
/// in front, checked and serialised; refused when a rule of that name is
/// already there.
fn with_rules(
    config_path: &Path,
    cfg: &config::RouterConfig,
    value: &mut serde_json::Value,
    exp: &Experiment,
) -> Result<Vec<u8>> {
    let names = exp.rule_names();
    if let Some(r) = cfg.rules.iter().find(|r| names.contains(&r.name)) {
        return Err(config_error(
            config_path,
            &format!("it already has a rule named {}", r.name),
        ));
    }
    let rules = rules_mut(value).ok_or_else(|| config_error(config_path, "no rules list"))?;
    for (i, r) in exp.rules_json().into_iter().enumerate() {
        rules.insert(i, r);
    }
    checked(config_path, value)
}

pub(super) fn rules_mut(value: &mut serde_json::Value) -> Option<&mut Vec<serde_json::Value>> {
    let obj = value.as_object_mut()?;
    obj.entry("rules")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()))
        .as_array_mut()
}

pub(super) fn config_error(path: &Path, reason: &str) -> ExperimentError {
    ExperimentError::Config {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Write `new` in place of the config, record the change, and put the old
/// bytes back if the record cannot be written.
fn commit(
    ws: &Workspace,
    config_path: &Path,
    old: &[u8],
    new: &[u8],
    exp: &Experiment,
    action: &str,
    progress: &dyn Progress,
) -> Result<Changed> {
    let inputs = vec![model_ref(ws, &exp.control)?, model_ref(ws, &exp.treatment)?];
    let rev = revision(ws, &exp.name)? + 1;
    let mut spec = RunSpec::new(RUN_KIND, ws.now_ms());
    spec.params = serde_json::json!({
        "action": action,
        "revision": rev,
        "experiment": exp,
    });
    spec.source = serde_json::json!({
        "config": config_path.display().to_string(),
        "config_digest": blake3::hash(new).to_hex().to_string(),
    });
    spec.inputs = inputs;
    write_atomic(config_path, new)?;
    match ws.record_run(spec, &[], progress) {
        Ok((run, _)) => Ok(Changed {
            experiment: exp.clone(),
            state: exp.state(),
            run: run.map(|d| d.hex()).unwrap_or_default(),
            config: config_path.display().to_string(),
        }),
        Err(e) => {
            // Nothing recorded: the config goes back to what it was.
            write_atomic(config_path, old)?;
            Err(e.into())
        }
    }
}

/// Held while an experiment changes: two `create`s at once must not both
/// pass the name and overlap checks, nor interleave their config rewrites.
pub(super) fn lock(ws: &Workspace) -> Result<std::fs::File> {
    use crate::fs_error::IoContext;
    if ws.git().is_some() {
        // Machine-local, like lineage.db: never committed.
        ws.ensure_ignored(ws.root(), &["/.recsys/experiments.lock"])?;
    }
    let p = ws.root().join(".recsys").join("experiments.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .ctx("open lock", &p)?;
    f.lock().ctx("lock", &p)?;
    Ok(f)
}

fn check_no_overlap(ws: &Workspace, exp: &Experiment) -> Result<()> {
    for (other, _) in list(ws)? {
        if other.name == exp.name || other.state() != ExperimentState::Running {
            continue;
        }
        if let Some(why) = exp.overlaps(&other) {
            return Err(ExperimentError::Overlap {
                name: exp.name.clone(),
                other: other.name,
                why,
            });
        }
    }
    Ok(())
}

/// Define an experiment, put its rule at the front of the config and
/// start it.
pub fn create(
    ws: &Workspace,
    config_path: &Path,
    o: &CreateOptions,
    progress: &dyn Progress,
) -> Result<Changed> {
    if !valid_name(&o.name) {
        return Err(ExperimentError::BadName(o.name.clone()));
    }
    if o.metric != METRIC {
        return Err(ExperimentError::Invalid(format!(
            "--metric {}: the only success metric is {METRIC} (answers with >= 1 of their first \
             10 items watched within 1 h)",
            o.metric
        )));
    }
    if o.control == o.treatment {
        return Err(ExperimentError::Invalid(
            "--control and --treatment name the same model".into(),
        ));
    }
    if !(o.planned_lift.is_finite() && o.planned_lift > 0.0) {
        return Err(ExperimentError::Invalid(
            "--planned-lift must be a positive share (0.05 = +5 %)".into(),
        ));
    }
    let _lock = lock(ws)?;
    if list(ws)?.iter().any(|(e, _)| e.name == o.name) {
        return Err(ExperimentError::Duplicate(o.name.clone()));
    }
    model_ref(ws, &o.control)?;
    model_ref(ws, &o.treatment)?;
    let (old, mut value, cfg) = read_config(config_path)?;
    let now = ws.now_ms();
    let exp = Experiment {
        recsys_experiment: FORMAT,
        name: o.name.clone(),
        control: o.control.clone(),
        treatment: o.treatment.clone(),
        split: o.split.clone(),
        salt: cfg.salt.clone(),
        rule: format!("exp-{}", o.name),
        metric: o.metric.clone(),
        guardrails: o.guardrails.clone(),
        planned_users: o.planned_users,
        planned_lift: o.planned_lift,
        alpha: 0.05,
        power: 0.8,
        created_ms: now,
        periods: vec![Period {
            start_ms: now,
            stop_ms: None,
        }],
    };
    check_no_overlap(ws, &exp)?;
    let new = with_rules(config_path, &cfg, &mut value, &exp)?;
    commit(ws, config_path, &old, &new, &exp, "create", progress)
}

/// Take the experiment's rules out of the config and close its period.
pub fn stop(
    ws: &Workspace,
    config_path: &Path,
    name: &str,
    progress: &dyn Progress,
) -> Result<Changed> {
    let _lock = lock(ws)?;
    let mut exp = get(ws, name)?;
    if exp.state() == ExperimentState::Stopped {
        return Err(ExperimentError::State {
            name: name.to_string(),
            state: "stopped",
        });
    }
    let (old, mut value, _) = read_config(config_path)?;
    let names = exp.rule_names();
    if let Some(rules) = value.get_mut("rules").and_then(|r| r.as_array_mut()) {
        rules.retain(|r| {
            r.get("name")
                .and_then(|n| n.as_str())
                .is_none_or(|n| !names.iter().any(|x| x == n))
        });
        if rules.is_empty()
            && let Some(o) = value.as_object_mut()
        {
            o.remove("rules");
        }
    }
    let new = checked(config_path, &value)?;
    let now = ws.now_ms();
    if let Some(p) = exp.periods.last_mut() {
        p.stop_ms = Some(now.max(p.start_ms));
    }
    commit(ws, config_path, &old, &new, &exp, "stop", progress)
}

/// Put a stopped experiment's rules back (same salt and rule: every user
/// returns to the arm they had) and open a new period.
pub fn start(
    ws: &Workspace,
    config_path: &Path,
    name: &str,
    progress: &dyn Progress,
) -> Result<Changed> {
    let _lock = lock(ws)?;
    let mut exp = get(ws, name)?;
    if exp.state() == ExperimentState::Running {
        return Err(ExperimentError::State {
            name: name.to_string(),
            state: "running",
        });
    }
    model_ref(ws, &exp.control)?;
    model_ref(ws, &exp.treatment)?;
    check_no_overlap(ws, &exp)?;
    let (old, mut value, cfg) = read_config(config_path)?;
    if cfg.salt != exp.salt {
        return Err(config_error(
            config_path,
            &format!(
                "its salt is now {:?}, not the experiment's {:?}: restarting would reshuffle the \
                 arms; create a new experiment instead",
                cfg.salt, exp.salt
            ),
        ));
    }
    let new = with_rules(config_path, &cfg, &mut value, &exp)?;
    let now = ws.now_ms();
    let start = exp
        .periods
        .last()
        .and_then(|p| p.stop_ms)
        .map_or(now, |s| now.max(s));
    exp.periods.push(Period {
        start_ms: start,
        stop_ms: None,
    });
    commit(ws, config_path, &old, &new, &exp, "start", progress)
}

/// A user's attributes as the server reads them: the users table of the
/// dataset the experiment's models were trained on (control first).
pub fn user_attrs(ws: &Workspace, exp: &Experiment, user: u64) -> Option<UserAttrs> {
    for m in [&exp.control, &exp.treatment] {
        let Ok(Some(a)) = ws.lineage.artifact_by_name(m) else {
            continue;
        };
        let Ok(Some((_, dataset))) = crate::serve::deploy::trained_on(ws, &a.run) else {
            continue;
        };
        if let Ok(Some((users, _))) = crate::serve::deploy::read_users(ws, &dataset)
            && let Some(u) = users.get(&user)
        {
            return Some(u.clone());
        }
    }
    None
}

/// The experiment behind a logged answer: which one, which arm, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteExplained {
    pub experiment: String,
    pub arm: &'static str,
    pub model: String,
    pub why: String,
    /// The experiment's run record at its latest revision.
    pub run: String,
}

/// The experiment whose rule routed `route` for `user` at `time_ms`, if any
/// (for `recsys lineage` of a request).
pub fn explain_route(
    ws: &Workspace,
    route: &str,
    user: u64,
    time_ms: i64,
) -> Result<Option<RouteExplained>> {
    for (e, run) in list(ws)? {
        let Some(arm) = e.arm_of_label(route) else {
            continue;
        };
        if !e.running_at(time_ms) {
            continue;
        }
        let attrs = user_attrs(ws, &e, user);
        let a = e.assign(user, attrs.as_ref());
        let model = if arm == "control" {
            &e.control
        } else {
            &e.treatment
        };
        return Ok(Some(RouteExplained {
            experiment: e.name.clone(),
            arm,
            model: model.clone(),
            why: a.why,
            run,
        }));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_exp(pct: f64) -> Experiment {
        Experiment {
            recsys_experiment: FORMAT,
            name: "x".into(),
            control: "model_v1".into(),
            treatment: "model_v2".into(),
            split: Split::Hash {
                treatment_percent: pct,
                buckets: [0, 100],
            },
            salt: "s".into(),
            rule: "exp-x".into(),
            metric: METRIC.into(),
            guardrails: vec![],
            planned_users: None,
            planned_lift: 0.05,
            alpha: 0.05,
            power: 0.8,
            created_ms: 0,
            periods: vec![],
        }
    }

    #[test]
    fn assignment_agrees_with_the_servers_router() {
        let e = hash_exp(30.0);
        let cfg = config::parse(
            serde_json::to_string(&serde_json::json!({"salt": "s", "rules": e.rules_json()}))
                .expect("json")
                .as_bytes(),
        )
        .expect("valid");
        let models = ["model_v1", "model_v2"];
        let router = config::Router::compile(&cfg, |m| models.iter().position(|x| *x == m))
            .expect("compiles");
        let mut treated = 0;
        for user in 1..=2_000u64 {
            let (m, label) = router.route(user, None).expect("routed");
            let a = e.assign(user, None);
            assert_eq!(
                a.model.as_deref(),
                Some(models[m]),
                "user {user}: {}",
                a.why
            );
            assert_eq!(e.arm_of_label(label), Some(a.arm), "{label}");
            treated += usize::from(a.arm == "treatment");
        }
        assert!((500..700).contains(&treated), "{treated} of 2000 at 30 %");
    }

    #[test]
    fn attribute_rules_route_by_the_attribute_and_labels_map_back() {
        let mut e = hash_exp(50.0);
        e.split = parse_split("gender=F", 50.0, [0, 100]).expect("split");
        let cfg = config::parse(
            serde_json::to_string(&serde_json::json!({"rules": e.rules_json()}))
                .expect("json")
                .as_bytes(),
        )
        .expect("valid");
        let models = ["model_v1", "model_v2"];
        let router = config::Router::compile(&cfg, |m| models.iter().position(|x| *x == m))
            .expect("compiles");
        let f = UserAttrs {
            gender: Some("F".into()),
            ..UserAttrs::default()
        };
        let (m, label) = router.route(1, Some(&f)).expect("routed");
        assert_eq!(
            (models[m], e.arm_of_label(label)),
            ("model_v2", Some("treatment"))
        );
        let (m, label) = router.route(1, None).expect("routed");
        assert_eq!(
            (models[m], e.arm_of_label(label)),
            ("model_v1", Some("control"))
        );
        assert_eq!(e.assign(1, Some(&f)).arm, "treatment");
        assert_eq!(e.arm_of_label("rules[0] exp-y split[0]"), None);
    }

    #[test]
    fn bad_splits_and_guardrails_are_refused_with_the_syntax() {
        for (by, pct, b) in [
            ("hash", 0.0, [0, 100]),
            ("hash", 100.0, [0, 100]),
            ("hash", 50.0, [60, 40]),
            ("gender=X", 50.0, [0, 100]),
            ("age=40-20", 50.0, [0, 100]),
            ("colour=red", 50.0, [0, 100]),
            ("gender=F", 50.0, [0, 50]),
        ] {
            assert!(parse_split(by, pct, b).is_err(), "{by} {pct} {b:?}");
        }
        assert_eq!(
            Guardrail::parse("p95_latency<400ms").expect("ok"),
            Guardrail {
                metric: GuardMetric::P95Latency,
                limit: 400.0
            }
        );
        assert_eq!(Guardrail::parse("error_rate").expect("ok").limit, 0.01);
        assert_eq!(
            Guardrail::parse("fallback_share<5%").expect("ok").limit,
            0.05
        );
        for bad in [
            "latency<3",
            "p95_latency<fast",
            "error_rate<-1",
            "error_rate<0",
        ] {
            let e = Guardrail::parse(bad).expect_err(bad).to_string();
            assert!(e.contains("p95_latency<400ms"), "{e}");
        }
    }

    #[test]
    fn overlap_is_by_bucket_range() {
        let mut a = hash_exp(50.0);
        let mut b = hash_exp(50.0);
        a.split = parse_split("hash", 50.0, [0, 50]).expect("ok");
        b.split = parse_split("hash", 50.0, [50, 100]).expect("ok");
        assert_eq!(a.overlaps(&b), None);
        b.split = parse_split("hash", 50.0, [40, 100]).expect("ok");
        assert!(a.overlaps(&b).is_some());
        b.split = parse_split("age=18-25", 50.0, [0, 100]).expect("ok");
        assert!(a.overlaps(&b).is_some());
    }
}
