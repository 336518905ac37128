//! Run records: the content-addressed source of truth for lineage.
//!
//! Every run (add, import, ingest, train, evaluate) writes one JSON object to
//! the store. Output pointer files name it, push and pull move it with the
//! data, and `lineage.db` is rebuilt from these records.

use serde::{Deserialize, Serialize};

use crate::store::Digest;

/// Bumped when the record layout changes incompatibly.
pub(crate) const RUN_FORMAT: u32 = 1;
/// Every run record starts with these bytes: `gc` and `lineage --rebuild`
/// recognise run records in the store by them.
pub(crate) const RUN_MAGIC: &[u8] = b"{\"recsys_run\":";

/// The code that produced a run: the project's git state and recsys itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeVersion {
    /// The project's HEAD commit, `None` outside git or before the first commit.
    pub git_commit: Option<String>,
    /// Tracked files differed from HEAD.
    pub dirty: bool,
    pub recsys_version: String,
    /// The git commit recsys was built from.
    pub build_commit: String,
}

/// One artifact a run read or wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    pub digest: Digest,
    pub kind: String,
    pub name: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// Work-tree path (relative to the project root) when it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Always first: see [`RUN_MAGIC`].
    pub recsys_run: u32,
    /// `add`, `import`, `ingest`, `train`, `evaluate`.
    pub kind: String,
    /// Unix milliseconds.
    pub started: i64,
    pub ended: i64,
    pub code: CodeVersion,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
    #[serde(default)]
    pub params: serde_json::Value,
    #[serde(default)]
    pub metrics: serde_json::Value,
    /// Where the input came from: a path, an import source, Kafka offsets.
    #[serde(default)]
    pub source: serde_json::Value,
    #[serde(default)]
    pub inputs: Vec<ArtifactRef>,
    #[serde(default)]
    pub outputs: Vec<ArtifactRef>,
}

/// A run record that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("run record {digest} is unreadable: {reason}")]
pub struct BadRunRecord {
    pub digest: Digest,
    pub reason: String,
}

impl RunRecord {
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain data cannot fail; fall back to an empty object
        // rather than panicking if it ever did.
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    pub fn parse(digest: &Digest, bytes: &[u8]) -> Result<RunRecord, BadRunRecord> {
        let bad = |reason: String| BadRunRecord {
            digest: *digest,
            reason,
        };
        if !bytes.starts_with(RUN_MAGIC) {
            return Err(bad("not a run record".into()));
        }
        let r: RunRecord = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if r.recsys_run != RUN_FORMAT {
            return Err(bad(format!(
                "format {} is not supported (this recsys reads {RUN_FORMAT})",
                r.recsys_run
            )));
        }
        Ok(r)
    }
}
