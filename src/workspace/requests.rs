//! Provenance of served recommendations: from a request id (or a user and
//! a time) to the model, the code and algorithm that trained it, the data
//! it was trained on, where that data came from, and how to restore it.

use serde::Serialize;

use super::{ArtifactLineage, Result, Workspace};
use crate::segment::RequestRecord;
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

/// How far from `--at` a logged request may be to match (the stream's time
/// is stamped after the answer).
pub const NEAR_WINDOW_MS: i64 = 60_000;

impl Workspace {
    /// The requests logged under `id` (normally one), explained.
    pub(crate) fn request_lineage(&self, id: &str) -> Result<Vec<RequestLineage>> {
        let mut out = Vec::new();
        for r in self.lineage.requests_by_id(id)? {
            out.push(self.explain_request(r)?);
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
        let mut notes = Vec::new();
        let mut restore = Vec::new();
        let s = &request.served;
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
        Ok(RequestLineage {
            request,
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
