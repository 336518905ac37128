//! `recsys import movielens <dir>`: MovieLens 100K as the next dataset.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use serde::Serialize;

use super::{PipelineError, Result};
use crate::dataset::{Counts, DataEvent, Dataset, EventKind, MovieInfo, UserInfo};
use crate::movielens::{self, Layout, MovieLens};
use crate::progress::Progress;
use crate::store::{Digest, hash_file};
use crate::workspace::NewDataset;
use crate::workspace::{RunSpec, Workspace};

#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub dataset: String,
    pub digest: Digest,
    pub path: String,
    pub run: Option<Digest>,
    pub layout: &'static str,
    pub counts: Counts,
    /// These exact bytes were registered already, as `dataset`: nothing
    /// new was recorded.
    pub unchanged: bool,
}

fn layout_name(l: Layout) -> &'static str {
    match l {
        Layout::Classic => "classic",
        Layout::RecBole => "recbole",
    }
}

/// The files a layout is read from, with their BLAKE3 digests.
fn source_files(dir: &Path, layout: Layout) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let rd = fs::read_dir(dir).map_err(super::io_err("list", dir))?;
    for e in rd {
        let e = e.map_err(super::io_err("list", dir))?;
        let name = e.file_name().to_string_lossy().to_string();
        let wanted = match layout {
            Layout::Classic => ["u.data", "u.user", "u.item", "u.genre"].contains(&name.as_str()),
            Layout::RecBole => [".inter", ".user", ".item"]
                .iter()
                .any(|ext| name.ends_with(ext)),
        };
        if wanted && e.path().is_file() {
            out.insert(name, hash_file(&e.path())?.hex());
        }
    }
    Ok(out)
}

/// MovieLens as a dataset: each rating becomes a `rate` event (time in
/// milliseconds), users keep age, gender and occupation, movies their
/// course-style id, title, year and genres.
pub(crate) fn movielens_dataset(ml: &MovieLens, source: serde_json::Value) -> Result<Dataset> {
    let ids: HashMap<u32, &str> = ml
        .movies
        .iter()
        .map(|m| (m.id, m.movie_id.as_str()))
        .collect();
    let mut events = Vec::with_capacity(ml.ratings.len());
    for r in &ml.ratings {
        let movie = ids.get(&r.item).ok_or_else(|| {
            PipelineError::Invalid(format!(
                "user {} rated item {}, which the item file does not list",
                r.user, r.item
            ))
        })?;
        if r.rating.fract() != 0.0 || !(1.0..=5.0).contains(&r.rating) {
            return Err(PipelineError::Invalid(format!(
                "user {} rated item {} with {}: ratings must be whole numbers 1-5",
                r.user, r.item, r.rating
            )));
        }
        events.push(DataEvent {
            time_ms: r.timestamp.saturating_mul(1000),
            user: u64::from(r.user),
            movie: (*movie).to_string(),
            kind: EventKind::Rate,
            value: r.rating as u32,
        });
    }
    Ok(Dataset {
        events,
        requests: Vec::new(),
        users: ml
            .users
            .iter()
            .map(|u| UserInfo {
                user: u64::from(u.id),
                age: Some(u.age),
                gender: Some(u.gender.clone()).filter(|s| !s.is_empty()),
                occupation: Some(u.occupation.clone()).filter(|s| !s.is_empty()),
            })
            .collect(),
        movies: ml
            .movies
            .iter()
            .map(|m| MovieInfo {
                movie: m.movie_id.clone(),
                title: Some(m.title.clone()).filter(|s| !s.is_empty()),
                year: m.year,
                genres: m.genres.clone(),
            })
            .collect(),
        source,
    })
}

/// Read MovieLens 100K from `dir` (either layout) and record it as the next
/// `dataset_N` with an `import` run. The dataset's own `source` names the
/// layout and the input files' digests (not the directory, so the same
/// files give the same dataset digest wherever they lie); the run record's
/// source adds the directory.
pub fn import_movielens(
    ws: &Workspace,
    dir: &Path,
    progress: &dyn Progress,
) -> Result<ImportReport> {
    let started = ws.now_ms();
    let ml = movielens::read_dir(dir)?;
    let layout = layout_name(ml.layout);
    let files = source_files(dir, ml.layout)?;
    let ds_source = serde_json::json!({
        "type": "movielens",
        "layout": layout,
        "files": files,
    });
    let ds = movielens_dataset(&ml, ds_source)?;
    let abs = fs::canonicalize(dir).map_err(super::io_err("open", dir))?;
    let mut spec = RunSpec::new("import", started);
    spec.source = serde_json::json!({
        "type": "movielens",
        "layout": layout,
        "dir": abs.to_string_lossy(),
        "files": files,
    });
    let counts = ds.counts();
    spec.metrics = serde_json::to_value(counts).unwrap_or_default();
    let (_, added) = ws.record_dataset(
        NewDataset {
            dataset: &ds,
            extra: Vec::new(),
            replaceable: None,
            failpoint: None,
        },
        spec,
        progress,
    )?;
    Ok(ImportReport {
        dataset: added.name,
        digest: added.digest,
        path: added.path,
        run: added.run,
        layout,
        counts,
        unchanged: added.unchanged,
    })
}
