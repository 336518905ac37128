//! `recsys train`: fit a model on a dataset's training part and register it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{PipelineError, Result, artifact_ref, code_string, find, rfc3339};
use crate::dataset::Dataset;
use crate::model::{self, Algo, Header, Interaction, Model, Params, SplitKind};
use crate::progress::Progress;
use crate::store::Digest;
use crate::user_filter::{FilterError, UserFilter};
use crate::workspace::{Kind, Output, RunSpec, Workspace, write_atomic_new};

/// What the user asks for; unset values take the algorithm's defaults.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub dataset: String,
    pub algo: Algo,
    pub factors: Option<u32>,
    pub epochs: Option<u32>,
    /// L2 regularisation (svd, als) or λ (ease).
    pub reg: Option<f32>,
    /// Half-life of the recency prior (recent, ease), a duration such as
    /// `14d` (see [`parse_duration_ms`]).
    pub half_life: Option<String>,
    /// Weight of the recency prior (hybrid), in [0, 1].
    pub blend: Option<f32>,
    /// The attributes cold users are grouped by (`age`, `gender,age`, ...,
    /// or `none`) (recent, ease, hybrid; hybrid's default is `age`).
    pub cohorts: Option<String>,
    /// Weight of the global list in each cohort's list (with cohorts).
    pub cohort_prior: Option<f32>,
    /// Seeds the model and the random split. Default 42.
    pub seed: Option<u64>,
    pub split: SplitKind,
    pub test_fraction: f64,
    /// Train on this group's events only (`--users-where`).
    pub users_where: Option<UserFilter>,
}

pub const DEFAULT_SEED: u64 = 42;
pub const DEFAULT_TEST_FRACTION: f64 = 0.2;

/// Everything that determines a trained model given its dataset: recorded
/// as the train run's parameters, read back by `evaluate` and `reproduce`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    pub algorithm: Algo,
    pub params: Params,
    pub split: SplitKind,
    pub test_fraction: f64,
    pub split_seed: u64,
    /// rayon threads used (results do not depend on it; recorded so a
    /// reproduction uses the same).
    pub threads: usize,
    /// Only the events of the users this selects (by the dataset's users
    /// table) are split and trained on. Absent in runs without a filter,
    /// so their recorded parameters are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_where: Option<UserFilter>,
}

impl TrainSettings {
    pub(crate) fn from_options(o: &TrainOptions, threads: usize) -> Result<TrainSettings> {
        if !(o.test_fraction > 0.0 && o.test_fraction < 1.0) {
            return Err(PipelineError::Invalid(format!(
                "--test-fraction {} must be greater than 0 and less than 1 \
                 (a test part is always held out)",
                o.test_fraction
            )));
        }
        let seed = o.seed.unwrap_or(DEFAULT_SEED);
        let mut params = Params::default_for(o.algo);
        if let Some(f) = o.factors {
            params.factors = f;
        }
        if let Some(e) = o.epochs {
            params.epochs = e;
        }
        if let Some(r) = o.reg {
            params.reg = r;
        }
        if let Some(h) = &o.half_life {
            if !o.algo.has_recency_prior() {
                return Err(PipelineError::Invalid(format!(
                    "--half-life applies to recent, ease and hybrid, not {}",
                    o.algo
                )));
            }
            let ms = parse_duration_ms(h)?;
            params.half_life_ms = Some(ms);
        }
        if let Some(b) = o.blend {
            if o.algo != Algo::Hybrid {
                return Err(PipelineError::Invalid(format!(
                    "--blend applies to hybrid, not {}",
                    o.algo
                )));
            }
            if !(0.0..=1.0).contains(&b) {
                return Err(PipelineError::Invalid(format!(
                    "--blend {b} must be within 0 and 1 (the recency prior's weight)"
                )));
            }
            params.blend = Some(b);
        }
        match o.cohorts.as_deref() {
            _ if o.cohorts.is_some() && !o.algo.has_recency_prior() => {
                return Err(PipelineError::Invalid(format!(
                    "--cohorts applies to recent, ease and hybrid, not {}",
                    o.algo
                )));
            }
            Some("none") => {
                params.cohorts = None;
                params.cohort_prior = None;
            }
            Some(c) => {
                let attrs = model::parse_cohort_attrs(c).map_err(|e| {
                    PipelineError::Invalid(format!("--cohorts {c}: {}", model_reason(&e)))
                })?;
                params.cohorts = Some(model::cohort_attrs_text(&attrs));
                params
                    .cohort_prior
                    .get_or_insert(model::DEFAULT_COHORT_PRIOR);
            }
            None => {}
        }
        if let Some(b) = o.cohort_prior {
            if params.cohorts.is_none() {
                return Err(PipelineError::Invalid(
                    "--cohort-prior applies with --cohorts (hybrid has cohorts by default)".into(),
                ));
            }
            if !(b.is_finite() && b >= 0.0) {
                return Err(PipelineError::Invalid(format!(
                    "--cohort-prior {b} must be a finite number >= 0"
                )));
            }
            params.cohort_prior = Some(b);
        }
        params.seed = seed;
        Ok(TrainSettings {
            algorithm: o.algo,
            params,
            split: o.split,
            test_fraction: o.test_fraction,
            split_seed: seed,
            threads: threads.max(1),
            users_where: o.users_where.clone(),
        })
    }

    /// The dataset's interactions this training reads: all of them, or
    /// those of the `users_where` group (an empty group, or one without
    /// events, is an error naming `dataset`). Item names are always the
    /// whole dataset's, so a group's model scores the same catalogue.
    /// Also returns the group's size.
    pub(crate) fn interactions(
        &self,
        ds: &Dataset,
        dataset: &str,
    ) -> Result<(Vec<Interaction>, Vec<String>, Option<usize>)> {
        let (mut data, names) = ds.interactions()?;
        let Some(f) = &self.users_where else {
            return Ok((data, names, None));
        };
        let group = f.select(&ds.users, dataset)?;
        data.retain(|i| group.contains(&u64::from(i.user)));
        if data.is_empty() {
            return Err(FilterError::NoEvents {
                filter: f.to_string(),
                dataset: dataset.to_string(),
                users: group.len(),
            }
            .into());
        }
        Ok((data, names, Some(group.len())))
    }

    /// The (train, test) parts of a dataset's interactions.
    pub fn split(&self, data: &[Interaction]) -> Result<(Vec<Interaction>, Vec<Interaction>)> {
        model::split(data, self.split, self.test_fraction, self.split_seed).map_err(|source| {
            PipelineError::Model {
                name: "split".into(),
                error: source,
            }
        })
    }
}

/// Parses a positive duration `<integer><unit>`, unit `ms`, `s`, `m`, `h`,
/// `d` or `w` (e.g. `14d`, `36h`), into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64> {
    let t = text.trim();
    let bad = |why: &str| {
        PipelineError::Invalid(format!(
            "half-life {:?} {why} (expected a positive duration such as 14d, 36h or 90m)",
            crate::text::clip(text)
        ))
    };
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '-' && c != '+');
    let (num, unit) = t.split_at(split.unwrap_or(t.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| bad("is not a number with a unit"))?;
    if n <= 0 {
        return Err(bad("must be greater than zero"));
    }
    let scale: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 604_800_000,
        "" => return Err(bad("has no unit")),
        _ => return Err(bad("has an unknown unit")),
    };
    (n as u64)
        .checked_mul(scale)
        .ok_or_else(|| bad("is too long"))
}

/// A fitted model and the split it was fitted on.
pub(crate) struct Fitted {
    pub model: Model,
    pub item_names: Vec<String>,
    pub train: Vec<Interaction>,
    pub test: Vec<Interaction>,
    pub fit_seconds: f64,
    /// Users in the `--users-where` group.
    pub group_users: Option<usize>,
}

/// The reason of a parameter error, without the parameter's name.
fn model_reason(e: &model::ModelError) -> String {
    match e {
        model::ModelError::InvalidParam { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// Each user's cohort for `params.cohorts` from `ds`'s users table; empty
/// without cohorts.
pub(crate) fn cohort_keys(ds: &Dataset, params: &Params) -> std::collections::HashMap<u32, String> {
    let Some(attrs) = params
        .cohorts
        .as_deref()
        .and_then(|c| model::parse_cohort_attrs(c).ok())
    else {
        return Default::default();
    };
    ds.users
        .iter()
        .filter_map(|u| {
            let id = u32::try_from(u.user).ok()?;
            let key =
                model::cohort_key(&attrs, u.age, u.gender.as_deref(), u.occupation.as_deref())?;
            Some((id, key))
        })
        .collect()
}

/// Split `ds` (called `dataset` in messages) and fit on the training part
/// with `s.threads` threads; `label` names the model in messages.
pub(crate) fn fit(ds: &Dataset, dataset: &str, s: &TrainSettings, label: &str) -> Result<Fitted> {
    let (data, item_names, group_users) = s.interactions(ds, dataset)?;
    let (train, test) = s.split(&data)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(s.threads)
        .build()
        .map_err(|e| PipelineError::Invalid(format!("cannot start {} threads: {e}", s.threads)))?;
    let start = Instant::now();
    let model = pool
        .install(|| {
            model::train_with_cohorts(
                &train,
                item_names.len(),
                s.algorithm,
                &s.params,
                &cohort_keys(ds, &s.params),
            )
        })
        .map_err(|source| PipelineError::Model {
            name: label.to_string(),
            error: source,
        })?;
    Ok(Fitted {
        model,
        item_names,
        train,
        test,
        fit_seconds: start.elapsed().as_secs_f64(),
        group_users,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub model: String,
    pub digest: Digest,
    pub path: String,
    pub run: Option<Digest>,
    pub dataset: String,
    pub dataset_digest: Digest,
    pub settings: TrainSettings,
    pub train_interactions: usize,
    pub test_interactions: usize,
    pub users: usize,
    pub items: usize,
    pub fit_seconds: f64,
    /// Users of the `--users-where` group (the filter is in `settings`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_users: Option<usize>,
    /// Digest of the model's weights and parameters (see
    /// [`model::content_digest`]); what `reproduce` compares.
    pub content_digest: String,
}

/// Publish the model file as the next free `models/model_vN.bin`. The file
/// is the claim on the name: two `train`s finishing at once compute the
/// same next name, one links its file there first, the other moves on to
/// the number after it. A file already at a name (a crashed run's, or a
/// user's) is never replaced.
fn claim_model_file(ws: &Workspace, models: &Path, bytes: &[u8]) -> Result<(String, PathBuf)> {
    let first = ws.next_name(Kind::Model)?;
    let prefix = Kind::Model.prefix();
    let n0 = crate::text::number_after(&first, prefix).unwrap_or(1);
    for n in n0..n0 + 1000 {
        let name = format!("{prefix}{n}");
        let path = models.join(format!("{name}.bin"));
        if write_atomic_new(&path, bytes)? {
            return Ok((name, path));
        }
    }
    Err(PipelineError::Occupied {
        path: format!("models/{first}.bin and the 999 names after it"),
    })
}

/// Train on a registered dataset and register the model as the next
/// `models/model_vN.bin` with a `train` run.
pub fn train(ws: &Workspace, o: &TrainOptions, progress: &dyn Progress) -> Result<TrainReport> {
    let started = ws.now_ms();
    let settings = TrainSettings::from_options(o, rayon::current_num_threads())?;
    let ds_art = find(ws, &o.dataset, Kind::Dataset)?;
    let ds = ws.load_dataset(&ds_art)?;
    let f = fit(&ds, &ds_art.name, &settings, &o.dataset)?;

    let header = Header {
        dataset_digest: ds_art.digest.hex(),
        code_commit: code_string(ws)?,
        created: rfc3339(started),
        item_names: f.item_names.clone(),
    };
    let mut bytes = Vec::new();
    model::save(&f.model, &header, &mut bytes).map_err(|source| PipelineError::Model {
        name: format!("the model trained on {}", o.dataset),
        error: source,
    })?;
    let models = ws.root().join("models");
    fs::create_dir_all(&models).map_err(super::io_err("create", &models))?;
    let (name, path) = claim_model_file(ws, &models, &bytes)?;

    let mut spec = RunSpec::new("train", started);
    spec.algorithm = Some(settings.algorithm.name().to_string());
    // Through text so f32 parameters are recorded as written (0.01, not
    // 0.009999999776482582).
    spec.params = serde_json::to_string(&settings)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default();
    spec.metrics = serde_json::json!({
        "fit_seconds": f.fit_seconds,
        "train_interactions": f.train.len(),
        "test_interactions": f.test.len(),
    });
    if let (Some(n), Some(m)) = (f.group_users, spec.metrics.as_object_mut()) {
        m.insert("group_users".into(), n.into());
    }
    spec.inputs = vec![artifact_ref(&ds_art)];
    let out = Output {
        path: path.clone(),
        kind: Some(Kind::Model),
        name: Some(name),
    };
    let added = match ws.record_run(spec, &[out], progress) {
        Ok((_, mut added)) => added.pop().ok_or_else(|| {
            PipelineError::Invalid("recording the model returned no artifact".into())
        })?,
        Err(e) => {
            let _ = fs::remove_file(&path);
            return Err(e.into());
        }
    };
    Ok(TrainReport {
        model: added.name,
        digest: added.digest,
        path: added.path,
        run: added.run,
        dataset: ds_art.name,
        dataset_digest: ds_art.digest,
        content_digest: model::content_digest(&f.model, &header),
        train_interactions: f.train.len(),
        test_interactions: f.test.len(),
        users: f.model.n_users(),
        items: f.model.n_items(),
        fit_seconds: f.fit_seconds,
        group_users: f.group_users,
        settings,
    })
}
