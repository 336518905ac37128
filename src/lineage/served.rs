//! The `served` table read by config: what answered under a config, for
//! request ids whose own log line is not indexed (`serve::unlogged`).

use super::{LineageDb, Result};
use crate::segment::ServedBy;

impl LineageDb {
    /// Every distinct "what answered" whose config digest starts with
    /// `prefix` (lower-case hex), without counting requests: one look at
    /// the small `served` table, whatever the size of the request index.
    pub(crate) fn served_with_config_prefix(&self, prefix: &str) -> Result<Vec<ServedBy>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT model, model_digest, dataset, dataset_digest, train_run, code_commit,
                        config_digest
                 FROM served WHERE substr(config_digest, 1, length(?1)) = ?1 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([prefix], |r| {
                Ok(ServedBy {
                    model: r.get(0)?,
                    model_digest: r.get(1)?,
                    dataset: r.get(2)?,
                    dataset_digest: r.get(3)?,
                    train_run: r.get(4)?,
                    code_commit: r.get(5)?,
                    config_digest: r.get(6)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }
}
