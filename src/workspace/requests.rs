//! Provenance of served recommendations: from a request id (or a user and
//! a time) to the model, the code and algorithm that trained it, the data
//! it was trained on, where that data came from, and how to restore it.

use serde::Serialize;

use super::{ArtifactLineage, LOG_DIR, Result, Workspace};
use crate::segment::{RequestRecord, ServedBy, parse_segment};
use crate::store::ObjectStore;

/// Everything known about one served answer.
#[derive(Debug, Clone, Serialize)]
pub struct RequestLineage {
    pub request: RequestRecord,
    /// The model version that answered, with its train run.
    pub model: Option<ArtifactLineage>,
    /// The dataset that trained it, with the run that made it (its source).
    pub dataset: Option<ArtifactLineage>,
    /// Commands that restore the exact model and dataset bytes.
    pub restore: Vec<String>,
    /// What could not be resolved here, and why.
    pub notes: Vec<String>,
}

/// What answered, explained (see [`Workspace::explain_served`]).
#[derive(Debug, Clone, Serialize)]
pub struct ServedLineage {
    pub model: Option<ArtifactLineage>,
    pub dataset: Option<ArtifactLineage>,
    pub restore: Vec<String>,
    pub notes: Vec<String>,
}

/// How far from `--at` a logged request may be to match (the stream's time
/// is stamped after the answer).
pub const NEAR_WINDOW_MS: i64 = 60_000;

impl Workspace {
    /// The requests logged under `id` (normally one), explained: from the
    /// index, else from the open segments in `log/requests/` (written, not
    /// indexed yet: a running server indexes within a second, a crashed
    /// one at its next start).
    pub fn request_lineage(&self, id: &str) -> Result<Vec<RequestLineage>> {
        let mut out = Vec::new();
        for r in self.lineage.requests_by_id(id)? {
            out.push(self.explain_request(r)?);
        }
        if out.is_empty() {
            for (file, r) in self.open_segment_requests(id)? {
                let mut l = self.explain_request(r)?;
                l.notes.push(format!(
                    "read from the open request-log segment {file}: written, not indexed yet"
                ));
                out.push(l);
            }
        }
        Ok(out)
    }

    /// Requests under `id` in the open segments (each cut after its last
    /// whole line), with the file they are in.
    fn open_segment_requests(&self, id: &str) -> Result<Vec<(String, RequestRecord)>> {
        let dir = self.root.join(LOG_DIR);
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut files: Vec<std::path::PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy())
                    .is_some_and(|n| n.starts_with("open-") && n.ends_with(".jsonl"))
            })
            .collect();
        files.sort();
        let needle = id.as_bytes();
        let mut out = Vec::new();
        for p in files {
            // Closed into the store meanwhile: then it is indexed.
            let Ok(mut bytes) = std::fs::read(&p) else {
                continue;
            };
            let whole = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            bytes.truncate(whole);
            // Only the header, the served-by definitions and the lines
            // naming the id are parsed: a segment holds up to 64 MiB.
            let mut lines = bytes.split(|b| *b == b'\n');
            let mut some = lines.next().unwrap_or_default().to_vec();
            some.push(b'\n');
            let mut hit = false;
            for l in lines {
                let mine = l.windows(needle.len()).any(|w| w == needle);
                if mine || l.starts_with(b"{\"recsys_served\"") {
                    hit |= mine;
                    some.extend_from_slice(l);
                    some.push(b'\n');
                }
            }
            if !hit {
                continue;
            }
            let label = p.display().to_string();
            if let Ok(seg) = parse_segment(&label, &some) {
                for r in seg.records.into_iter().filter(|r| r.id == id) {
                    out.push((label.clone(), r));
                }
            }
        }
        Ok(out)
    }

    /// The request of `user` closest to `at_ms` (within a minute), explained.
    pub(crate) fn request_lineage_near(
        &self,
        user: i64,
        at_ms: i64,
    ) -> Result<Option<RequestLineage>> {
        match self.lineage.request_near(user, at_ms, NEAR_WINDOW_MS)? {
            Some(r) => Ok(Some(self.explain_request(r)?)),
            None => Ok(None),
        }
    }

    fn explain_request(&self, request: RequestRecord) -> Result<RequestLineage> {
        let e = self.explain_served(&request.served)?;
        Ok(RequestLineage {
            request,
            model: e.model,
            dataset: e.dataset,
            restore: e.restore,
            notes: e.notes,
        })
    }

    /// What answered (model, dataset, config) explained: their lineage,
    /// the commands that restore them, and what is missing here.
    pub(crate) fn explain_served(&self, s: &ServedBy) -> Result<ServedLineage> {
        let mut notes = Vec::new();
        let mut restore = Vec::new();
        let model = self.exact_version(&s.model, &s.model_digest, &mut notes)?;
        let dataset = if s.dataset.is_empty() {
            notes.push(format!(
                "{} was registered without a dataset input",
                s.model
            ));
            None
        } else {
            self.exact_version(&s.dataset, &s.dataset_digest, &mut notes)?
        };
        for l in [&model, &dataset].into_iter().flatten() {
            restore.push(l.restore.clone());
        }
        if !self.store.contains(&request_digest(&s.config_digest))? {
            notes.push(format!(
                "config {} is not in the local store (`recsys pull` fetches it)",
                s.config_digest
            ));
        }
        Ok(ServedLineage {
            model,
            dataset,
            restore,
            notes,
        })
    }

    /// The lineage of version `name`, provided it still has `digest`.
    fn exact_version(
        &self,
        name: &str,
        digest: &str,
        notes: &mut Vec<String>,
    ) -> Result<Option<ArtifactLineage>> {
        match self.lineage.artifact_by_name(name)? {
            Some(a) if a.digest.hex() == digest => Ok(Some(self.artifact_lineage(name)?)),
            Some(a)
                if let Ok(d) = digest.parse::<crate::store::Digest>()
                    && let Some((now, run)) = self.lineage.superseded(&d)? =>
            {
                notes.push(format!(
                    "{name} was {digest} when it answered; `recsys forget` run {} rewrote it                      without a user's rows{} (the model was trained on the old bytes, which are                      erased and cannot be restored)",
                    run.short(),
                    match now {
                        Some(n) if n == a.digest => format!(" as {n}, the {name} here"),
                        Some(n) => format!(" as {n}"),
                        None => String::new(),
                    }
                ));
                Ok(None)
            }
            Some(a) => {
                notes.push(format!(
                    "{name} is {} here, but the request was served by {digest}",
                    a.digest
                ));
                Ok(None)
            }
            None => {
                notes.push(format!(
                    "{name} ({digest}) is not in this lineage.db (`recsys pull` brings its run record)"
                ));
                Ok(None)
            }
        }
    }
}

fn request_digest(hex: &str) -> crate::store::Digest {
    hex.parse().unwrap_or(crate::store::Digest([0; 32]))
}
