//! `--promote`: point the serving config at a new model only when it beats
//! the model currently served, on the same fresh data.
//!
//! The comparison metric is precision@10: the service answers top-20
//! lists, so ranking quality is what it is judged on. The candidate is
//! scored on the part of the new dataset its training held out; the served
//! model is scored on the whole new dataset (a forward test: data it never
//! saw). Ties keep the served model.

use std::path::Path;

use serde::Serialize;

use super::{EvalReport, EvaluateOptions, PipelineError, Result, evaluate};
use crate::progress::Progress;
use crate::serve::config;
use crate::workspace::Workspace;

#[derive(Debug, Clone, Serialize)]
pub struct Promotion {
    pub config: String,
    pub metric: &'static str,
    pub candidate: String,
    pub candidate_score: f64,
    /// The config's default model before, if any.
    pub served: Option<String>,
    pub served_score: Option<f64>,
    pub promoted: bool,
    pub reason: String,
}

/// Refuse early when `--promote` could not rewrite the config.
pub fn check_promotable(config_path: &Path) -> Result<config::RouterConfig> {
    let shown = config_path.display();
    let bytes = std::fs::read(config_path)
        .map_err(|e| PipelineError::Invalid(format!("--promote: cannot read {shown}: {e}")))?;
    config::parse(&bytes).map_err(|e| {
        PipelineError::Invalid(format!(
            "--promote: {shown} is invalid, not touching it: {e}"
        ))
    })
}

/// Compare `candidate` with the config's default model on `dataset`, and
/// rewrite the config (atomically) to serve the candidate where it served
/// the old default, if the candidate is better.
pub fn promote_if_better(
    ws: &Workspace,
    config_path: &Path,
    candidate: &EvalReport,
    dataset: &str,
    progress: &dyn Progress,
) -> Result<Promotion> {
    let shown = config_path.display().to_string();
    let bytes = std::fs::read(config_path)
        .map_err(|e| PipelineError::Invalid(format!("--promote: cannot read {shown}: {e}")))?;
    let cfg = config::parse(&bytes).map_err(|e| {
        PipelineError::Invalid(format!(
            "--promote: {shown} is invalid, not touching it: {e}"
        ))
    })?;
    let mut p = Promotion {
        config: shown.clone(),
        metric: "precision_at_10",
        candidate: candidate.model.clone(),
        candidate_score: candidate.precision_at_10,
        served: cfg.default.clone(),
        served_score: None,
        promoted: false,
        reason: String::new(),
    };
    let mut value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| PipelineError::Invalid(format!("{shown}: {e}")))?;
    match &cfg.default {
        Some(served) if *served == candidate.model => {
            p.reason = "the candidate is already the default".into();
            return Ok(p);
        }
        Some(served) => {
            let old = evaluate(
                ws,
                &EvaluateOptions {
                    model: served.clone(),
                    dataset: Some(dataset.to_string()),
                },
                progress,
            )?;
            p.served_score = Some(old.precision_at_10);
            if candidate.precision_at_10 <= old.precision_at_10 {
                p.reason = format!(
                    "{} does not beat {served} on {dataset} ({:.4} <= {:.4})",
                    candidate.model, candidate.precision_at_10, old.precision_at_10
                );
                return Ok(p);
            }
            replace_model(&mut value, served, &candidate.model);
            p.reason = format!(
                "{} beats {served} on {dataset} ({:.4} > {:.4})",
                candidate.model, candidate.precision_at_10, old.precision_at_10
            );
        }
        None => {
            if let Some(obj) = value.as_object_mut() {
                obj.insert("default".into(), candidate.model.clone().into());
            }
            p.reason = "the config had no default model".into();
        }
    }
    let mut out =
        serde_json::to_string_pretty(&value).map_err(|e| PipelineError::Invalid(e.to_string()))?;
    out.push('\n');
    // Never write a config the server would refuse.
    config::parse(out.as_bytes()).map_err(|e| {
        PipelineError::Invalid(format!(
            "--promote: the rewritten config would be invalid: {e}"
        ))
    })?;
    crate::workspace::write_atomic(config_path, out.as_bytes())?;
    p.promoted = true;
    Ok(p)
}

/// Every string naming `old` (default, rule targets, split arms) now names `new`.
fn replace_model(v: &mut serde_json::Value, old: &str, new: &str) {
    match v {
        serde_json::Value::String(s) if s == old => *s = new.to_string(),
        serde_json::Value::Array(a) => a.iter_mut().for_each(|x| replace_model(x, old, new)),
        serde_json::Value::Object(o) => o.values_mut().for_each(|x| replace_model(x, old, new)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_every_reference_and_nothing_else() {
        let mut v = serde_json::json!({
            "salt": "model_v1x",
            "default": "model_v1",
            "rules": [{"split": [{"model": "model_v1", "weight": 1}, {"model": "model_v2", "weight": 1}]}]
        });
        replace_model(&mut v, "model_v1", "model_v3");
        assert_eq!(v["default"], "model_v3");
        assert_eq!(v["rules"][0]["split"][0]["model"], "model_v3");
        assert_eq!(v["rules"][0]["split"][1]["model"], "model_v2");
        assert_eq!(v["salt"], "model_v1x");
    }
}
