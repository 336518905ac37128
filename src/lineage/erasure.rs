//! Erasure in the index: the objects a `forget` or `retention` run record
//! superseded, and the deletes that take a user's requests (or whole
//! segments) out of lineage.db without leaving their bytes in its free
//! pages or WAL.
//!
//! The run record is the source of truth: it lists every object it
//! superseded in `source.erased` ([`Erased`]), and indexing it fills the
//! `erased` table, so `lineage --rebuild` and a `pull` on another clone
//! learn the same erasures. The keep-set drops what this table names
//! (unless a work-tree pointer names it again), `audit` and `--rebuild`
//! skip erased segments, and `push` deletes erased objects from a remote.

use std::collections::HashSet;

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::{LineageDb, Result, RunRecord, Txn};
use crate::store::Digest;

/// Run kinds whose records supersede objects.
pub(crate) const ERASURE_KINDS: [&str; 2] = ["forget", "retention"];

/// Created on open (idempotent; no schema bump: an older recsys ignores it).
pub(crate) const SCHEMA_ERASED: &str = "CREATE TABLE IF NOT EXISTS erased(
    digest TEXT PRIMARY KEY, what TEXT NOT NULL, name TEXT NOT NULL,
    replaced_by TEXT, run TEXT NOT NULL);";

/// One object an erasure run superseded, as its run record lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Erased {
    pub digest: Digest,
    /// `segment`, `dataset` (a directory's manifest) or `file` (one of its
    /// files).
    pub what: String,
    /// The segment's or dataset's name (a file: `<dataset>/<path>`).
    pub name: String,
    /// The object written in its place without the erased rows; `None`
    /// when dropped outright (retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_by: Option<Digest>,
}

/// What an erasure run record says it superseded (nothing for other kinds).
pub(crate) fn erased_in(r: &RunRecord) -> Vec<Erased> {
    if !ERASURE_KINDS.contains(&r.kind.as_str()) {
        return Vec::new();
    }
    r.source
        .get("erased")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

impl Txn<'_> {
    /// Index the erasures of run `id` (idempotent).
    pub(crate) fn index_erasures(&self, id: &Digest, r: &RunRecord) -> Result<()> {
        for e in erased_in(r) {
            self.tx
                .execute(
                    "INSERT OR IGNORE INTO erased(digest, what, name, replaced_by, run)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![
                        e.digest.hex(),
                        e.what,
                        e.name,
                        e.replaced_by.map(|d| d.hex()),
                        id.hex()
                    ],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }

    /// Whether version name `name` may move from `existing` to `incoming`
    /// although names are never reused: `Some(true)` when the run being
    /// indexed is the erasure that rewrote `existing` as `incoming` (the
    /// row is replaced), `Some(false)` when `incoming` is bytes an erasure
    /// already superseded (indexed later, e.g. by a rebuild: the newer row
    /// stays), `None` when it is a real conflict.
    pub(crate) fn erasure_allows(
        &self,
        r: &RunRecord,
        existing: &Digest,
        incoming: &Digest,
    ) -> Result<Option<bool>> {
        if erased_in(r)
            .iter()
            .any(|e| e.digest == *existing && e.replaced_by == Some(*incoming))
        {
            return Ok(Some(true));
        }
        let superseded: Option<String> = self
            .tx
            .query_row(
                "SELECT digest FROM erased WHERE digest = ?1",
                [incoming.hex()],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(superseded.map(|_| false))
    }

    /// Replace the artifact row of `name` (an erasure's new version).
    pub(crate) fn drop_artifact_name(&self, name: &str) -> Result<()> {
        self.tx
            .execute("DELETE FROM artifacts WHERE name = ?1", [name])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }
}

/// Rows an erasure took out of the request index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct IndexErased {
    pub requests: u64,
    pub segments: u64,
}

impl LineageDb {
    /// Every erased object: (what the run record says, the run).
    pub fn erased(&self) -> Result<Vec<(Erased, Digest)>> {
        let mut st = self
            .conn
            .prepare("SELECT digest, what, name, replaced_by, run FROM erased ORDER BY run, digest")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, String>(4)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (d, what, name, by, run) = row.map_err(|e| self.err(e))?;
            // Written only from parsed run records; skip what does not parse.
            let (Ok(digest), Ok(run)) = (d.parse(), run.parse()) else {
                continue;
            };
            out.push((
                Erased {
                    digest,
                    what,
                    name,
                    replaced_by: by.and_then(|b| b.parse().ok()),
                },
                run,
            ));
        }
        Ok(out)
    }

    pub(crate) fn erased_digests(&self) -> Result<HashSet<Digest>> {
        Ok(self.erased()?.into_iter().map(|(e, _)| e.digest).collect())
    }

    /// The erasure that superseded `d`: (its latest replacement, following
    /// later erasures of the replacement, and the first run).
    pub(crate) fn superseded(&self, d: &Digest) -> Result<Option<(Option<Digest>, Digest)>> {
        let all = self.erased()?;
        let Some((first, run)) = all.iter().find(|(e, _)| e.digest == *d) else {
            return Ok(None);
        };
        let mut now = first.replaced_by;
        let mut hops = 0;
        while let Some(n) = now
            && hops < all.len()
            && let Some((next, _)) = all.iter().find(|(e, _)| e.digest == n)
        {
            now = next.replaced_by;
            hops += 1;
        }
        Ok(Some((now, *run)))
    }

    /// Delete `user`'s requests from the index, and served-by rows no
    /// request names any more. Runs with `secure_delete` on, so the freed
    /// cells are zeroed; [`LineageDb::scrub`] then empties the WAL.
    pub(crate) fn forget_user_requests(&self, user: i64) -> Result<IndexErased> {
        self.secure_delete()?;
        self.write_txn(|tx| {
            let n = tx
                .tx
                .execute("DELETE FROM requests WHERE user = ?1", [user])
                .map_err(|e| tx.err(e))?;
            drop_orphan_served(tx)?;
            Ok(IndexErased {
                requests: n as u64,
                segments: 0,
            })
        })
    }

    /// The number of `user`'s requests in the index.
    pub(crate) fn user_request_count(&self, user: i64) -> Result<u64> {
        self.conn
            .query_row(
                "SELECT count(*) FROM requests WHERE user = ?1",
                [user],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// Point segment `name` at the object that replaced it.
    pub(crate) fn set_segment_digest(&self, name: &str, digest: &Digest) -> Result<()> {
        self.write_txn(|tx| {
            tx.tx
                .execute(
                    "UPDATE segments SET digest = ?2 WHERE name = ?1",
                    params![name, digest.hex()],
                )
                .map(|_| ())
                .map_err(|e| tx.err(e))
        })
    }

    /// Drop segments (retention): their requests, their rows, and
    /// served-by rows no request names any more.
    pub(crate) fn drop_segments(&self, names: &[String]) -> Result<IndexErased> {
        self.secure_delete()?;
        self.write_txn(|tx| {
            let mut out = IndexErased::default();
            for name in names {
                let id: Option<i64> = tx
                    .tx
                    .query_row("SELECT id FROM segments WHERE name = ?1", [name], |r| {
                        r.get(0)
                    })
                    .optional()
                    .map_err(|e| tx.err(e))?;
                let Some(id) = id else { continue };
                out.requests += tx
                    .tx
                    .execute("DELETE FROM requests WHERE segment = ?1", [id])
                    .map_err(|e| tx.err(e))? as u64;
                out.segments += tx
                    .tx
                    .execute("DELETE FROM segments WHERE id = ?1", [id])
                    .map_err(|e| tx.err(e))? as u64;
            }
            drop_orphan_served(tx)?;
            Ok(out)
        })
    }

    fn secure_delete(&self) -> Result<()> {
        self.conn
            .execute_batch("PRAGMA secure_delete = ON;")
            .map_err(|e| self.err(e))
    }

    /// Leave no deleted bytes in the files: copy the WAL into the database
    /// and truncate it, rebuild the database without free pages (VACUUM),
    /// and truncate the WAL VACUUM wrote. `Ok(false)` when another
    /// connection (a running server reading or writing) kept the WAL from
    /// being emptied: run it again when it is idle.
    pub(crate) fn scrub(&self) -> Result<bool> {
        let first = self.checkpoint()?;
        self.conn
            .execute_batch("VACUUM;")
            .map_err(|e| self.err(e))?;
        let second = self.checkpoint()?;
        Ok(first && second)
    }

    /// `wal_checkpoint(TRUNCATE)`; whether it completed.
    fn checkpoint(&self) -> Result<bool> {
        let busy: i64 = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(busy == 0)
    }
}

fn drop_orphan_served(tx: &Txn<'_>) -> Result<()> {
    tx.tx
        .execute(
            "DELETE FROM served WHERE id NOT IN (SELECT DISTINCT served FROM requests)",
            [],
        )
        .map(|_| ())
        .map_err(|e| tx.err(e))
}
