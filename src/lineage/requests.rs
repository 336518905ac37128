//! The request log's index: one row per answered recommendation, the model,
//! dataset and config that answered it, and the log segment it lives in.
//!
//! Rows are written in batches by the server's log writer (one transaction
//! per batch) and, on another machine, by `pull` from closed segments. The
//! segment file is the source of truth: a segment's rows can always be
//! replaced by re-reading it ([`LineageDb::replace_segment_requests`]).
//!
//! What a request was served by (model, dataset, code, config) repeats for
//! millions of rows, so it lives once in `served` and requests point at it.

use std::collections::HashMap;

use rusqlite::params;
use serde::Serialize;

use super::{LineageDb, Result};
use crate::segment::{ParsedSegment, RequestRecord, ServedBy};

/// Migration 1 -> 2: the request tables.
pub(crate) const SCHEMA_V2: &str = "BEGIN;
    CREATE TABLE IF NOT EXISTS segments(
        id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, host TEXT NOT NULL,
        opened INTEGER NOT NULL, closed INTEGER, digest TEXT);
    CREATE INDEX IF NOT EXISTS segments_digest ON segments(digest);
    CREATE TABLE IF NOT EXISTS served(
        id INTEGER PRIMARY KEY,
        model TEXT NOT NULL, model_digest TEXT NOT NULL,
        dataset TEXT NOT NULL, dataset_digest TEXT NOT NULL,
        train_run TEXT NOT NULL, code_commit TEXT NOT NULL, config_digest TEXT NOT NULL,
        UNIQUE(model, model_digest, dataset, dataset_digest, train_run, code_commit, config_digest));
    CREATE TABLE IF NOT EXISTS requests(
        id TEXT NOT NULL, time INTEGER NOT NULL, user INTEGER NOT NULL,
        served INTEGER NOT NULL, route TEXT NOT NULL, status TEXT NOT NULL,
        latency_us INTEGER NOT NULL, items TEXT NOT NULL, segment INTEGER NOT NULL);
    CREATE INDEX IF NOT EXISTS requests_id ON requests(id);
    CREATE INDEX IF NOT EXISTS requests_user_time ON requests(user, time);
    PRAGMA user_version = 2;
    COMMIT;";

/// Migration 2 -> 3: requests are found by user and time through an index
/// on (second, user) instead of (user, time). Inserts into the old index
/// landed all over it (one hot page per user, rewritten by every batch,
/// slower as the table grew); the new one only grows at the current second.
/// A lookup seeks once per second of its window.
pub(crate) const SCHEMA_V3: &str = "BEGIN IMMEDIATE;
    DROP INDEX IF EXISTS requests_user_time;
    CREATE INDEX IF NOT EXISTS requests_second_user ON requests(time / 1000, user);
    PRAGMA user_version = 3;
    COMMIT;";

/// A request as written to the index: borrowed, so the log writer does not
/// copy what it already holds. `items` is the answer (ids joined by `,`).
#[derive(Debug, Clone, Copy)]
pub struct RequestRow<'a> {
    pub id: &'a str,
    pub time: i64,
    pub user: i64,
    pub served: &'a ServedBy,
    pub route: &'a str,
    pub status: &'a str,
    pub latency_us: i64,
    pub items: &'a str,
}

impl RequestRecord {
    /// As a row; `items` is `self.items` joined by `,` (kept by the caller).
    pub fn row<'a>(&'a self, items: &'a str) -> RequestRow<'a> {
        RequestRow {
            id: &self.id,
            time: self.time,
            user: self.user,
            served: &self.served,
            route: &self.route,
            status: &self.status,
            latency_us: self.latency_us,
            items,
        }
    }
}

/// A request log segment as indexed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SegmentRow {
    pub name: String,
    pub host: String,
    pub opened: i64,
    pub closed: Option<i64>,
    pub digest: Option<String>,
}

/// The segment a batch belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentRef<'a> {
    pub name: &'a str,
    pub host: &'a str,
    pub opened: i64,
}

impl LineageDb {
    /// Index a batch of requests of one open segment in one transaction.
    #[cfg(test)]
    pub(crate) fn insert_requests(
        &self,
        seg: &SegmentRef<'_>,
        rows: &[RequestRow<'_>],
    ) -> Result<()> {
        self.insert_requests_paced(seg, rows, &mut || {})
    }

    /// [`insert_requests`](Self::insert_requests), calling `pace` after
    /// every [`PACE_ROWS`] rows: the server's log writer gives way to
    /// request handlers there instead of holding a core for a whole batch.
    pub(crate) fn insert_requests_paced(
        &self,
        seg: &SegmentRef<'_>,
        rows: &[RequestRow<'_>],
        pace: &mut dyn FnMut(),
    ) -> Result<()> {
        self.write_txn(|tx| {
            let seg_id = ensure_segment(tx.tx, seg).map_err(|e| tx.err(e))?;
            insert_rows(tx.tx, seg_id, rows, pace).map_err(|e| tx.err(e))
        })
    }

    /// Replace every row of a segment by `rows` (recovery after a crash,
    /// indexing a pulled segment), and mark it closed as `digest` when given.
    pub(crate) fn replace_segment_requests(
        &self,
        seg: &SegmentRef<'_>,
        rows: &[RequestRow<'_>],
        closed: Option<(i64, &str)>,
    ) -> Result<()> {
        self.write_txn(|tx| {
            let (seg_id, new) = ensure_segment_new(tx.tx, seg).map_err(|e| tx.err(e))?;
            // Requests are not indexed by segment (it would slow every
            // insert); a segment seen for the first time has no rows to drop.
            if !new {
                tx.tx
                    .execute("DELETE FROM requests WHERE segment = ?1", [seg_id])
                    .map_err(|e| tx.err(e))?;
            }
            insert_rows(tx.tx, seg_id, rows, &mut || {}).map_err(|e| tx.err(e))?;
            if let Some((at, digest)) = closed {
                tx.tx
                    .execute(
                        "UPDATE segments SET closed = ?2, digest = ?3 WHERE id = ?1",
                        params![seg_id, at, digest],
                    )
                    .map_err(|e| tx.err(e))?;
            }
            Ok(())
        })
    }

    /// Record that a segment was closed and stored as `digest`.
    pub fn close_segment(&self, seg: &SegmentRef<'_>, closed: i64, digest: &str) -> Result<()> {
        self.write_txn(|tx| {
            let seg_id = ensure_segment(tx.tx, seg).map_err(|e| tx.err(e))?;
            tx.tx
                .execute(
                    "UPDATE segments SET closed = ?2, digest = ?3 WHERE id = ?1",
                    params![seg_id, closed, digest],
                )
                .map(|_| ())
                .map_err(|e| tx.err(e))
        })
    }

    /// Every segment, oldest first.
    pub fn segments(&self) -> Result<Vec<SegmentRow>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT name, host, opened, closed, digest FROM segments ORDER BY opened, name",
            )
            .map_err(|e| self.err(e))?;
        let rows = st.query_map([], segment_row).map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// Requests logged under `id` (normally one; a client may reuse an id).
    pub fn requests_by_id(&self, id: &str) -> Result<Vec<RequestRecord>> {
        self.query_requests("WHERE r.id = ?1 ORDER BY r.time", params![id])
    }

    /// The request of `user` closest in time to `at_ms`, within `window_ms`.
    pub(crate) fn request_near(
        &self,
        user: i64,
        at_ms: i64,
        window_ms: i64,
    ) -> Result<Option<RequestRecord>> {
        Ok(self
            .query_requests(
                "WHERE r.time / 1000 IN (
                     WITH RECURSIVE s(sec) AS (
                         SELECT (?2 - ?3) / 1000
                         UNION ALL SELECT sec + 1 FROM s WHERE sec < (?2 + ?3) / 1000)
                     SELECT sec FROM s)
                 AND r.user = ?1 AND r.time BETWEEN ?2 - ?3 AND ?2 + ?3
                 ORDER BY abs(r.time - ?2), r.time LIMIT 1",
                params![user, at_ms, window_ms],
            )?
            .into_iter()
            .next())
    }

    fn query_requests(&self, tail: &str, p: &[&dyn rusqlite::ToSql]) -> Result<Vec<RequestRecord>> {
        let sql = format!(
            "SELECT s.model, s.model_digest, s.dataset, s.dataset_digest, s.train_run,
                    s.code_commit, s.config_digest,
                    r.id, r.time, r.user, r.route, r.status, r.latency_us, r.items
             FROM requests r JOIN served s ON s.id = r.served {tail}"
        );
        let mut st = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = st
            .query_map(p, |r| {
                let items: String = r.get(13)?;
                Ok(RequestRecord {
                    served: served_by(r, 0)?,
                    id: r.get(7)?,
                    time: r.get(8)?,
                    user: r.get(9)?,
                    route: r.get(10)?,
                    status: r.get(11)?,
                    latency_us: r.get(12)?,
                    items: if items.is_empty() {
                        Vec::new()
                    } else {
                        items.split(',').map(str::to_string).collect()
                    },
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }
}

fn segment_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SegmentRow> {
    Ok(SegmentRow {
        name: r.get(0)?,
        host: r.get(1)?,
        opened: r.get(2)?,
        closed: r.get(3)?,
        digest: r.get(4)?,
    })
}

fn served_by(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<ServedBy> {
    Ok(ServedBy {
        model: r.get(at)?,
        model_digest: r.get(at + 1)?,
        dataset: r.get(at + 2)?,
        dataset_digest: r.get(at + 3)?,
        train_run: r.get(at + 4)?,
        code_commit: r.get(at + 5)?,
        config_digest: r.get(at + 6)?,
    })
}

/// The segment's row id, and whether this call created the row.
fn ensure_segment_new(
    conn: &rusqlite::Connection,
    seg: &SegmentRef<'_>,
) -> rusqlite::Result<(i64, bool)> {
    let created = conn
        .prepare_cached("INSERT OR IGNORE INTO segments(name, host, opened) VALUES (?1, ?2, ?3)")?
        .execute(params![seg.name, seg.host, seg.opened])?;
    let id = conn
        .prepare_cached("SELECT id FROM segments WHERE name = ?1")?
        .query_row([seg.name], |r| r.get(0))?;
    Ok((id, created == 1))
}

fn ensure_segment(conn: &rusqlite::Connection, seg: &SegmentRef<'_>) -> rusqlite::Result<i64> {
    conn.prepare_cached("INSERT OR IGNORE INTO segments(name, host, opened) VALUES (?1, ?2, ?3)")?
        .execute(params![seg.name, seg.host, seg.opened])?;
    conn.prepare_cached("SELECT id FROM segments WHERE name = ?1")?
        .query_row([seg.name], |r| r.get(0))
}

/// Rows between two calls of an insert's `pace` (well under 0.1 ms).
pub(crate) const PACE_ROWS: usize = 32;

fn insert_rows(
    conn: &rusqlite::Connection,
    seg_id: i64,
    rows: &[RequestRow<'_>],
    pace: &mut dyn FnMut(),
) -> rusqlite::Result<()> {
    // Keyed by address: rows of one batch share a few `ServedBy` values.
    let mut served_ids: HashMap<*const ServedBy, i64> = HashMap::new();
    let mut ins = conn.prepare_cached(
        "INSERT INTO requests(id, time, user, served, route, status, latency_us, items, segment)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for (i, r) in rows.iter().enumerate() {
        if i > 0 && i % PACE_ROWS == 0 {
            pace();
        }
        let key: *const ServedBy = r.served;
        let served = match served_ids.get(&key) {
            Some(id) => *id,
            None => {
                let id = served_id(conn, r.served)?;
                served_ids.insert(key, id);
                id
            }
        };
        ins.execute(params![
            r.id,
            r.time,
            r.user,
            served,
            r.route,
            r.status,
            r.latency_us,
            r.items,
            seg_id
        ])?;
    }
    Ok(())
}

fn served_id(conn: &rusqlite::Connection, s: &ServedBy) -> rusqlite::Result<i64> {
    let p = params![
        s.model,
        s.model_digest,
        s.dataset,
        s.dataset_digest,
        s.train_run,
        s.code_commit,
        s.config_digest
    ];
    conn.prepare_cached(
        "INSERT OR IGNORE INTO served(model, model_digest, dataset, dataset_digest, train_run,
            code_commit, config_digest) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(p)?;
    conn.prepare_cached(
        "SELECT id FROM served WHERE model = ?1 AND model_digest = ?2 AND dataset = ?3
            AND dataset_digest = ?4 AND train_run = ?5 AND code_commit = ?6 AND config_digest = ?7",
    )?
    .query_row(p, |r| r.get(0))
}

impl LineageDb {
    /// Every segment with the number of requests the index holds for it,
    /// and the number of requests whose segment row is gone. One scan of
    /// the requests (they are not indexed by segment).
    pub(crate) fn segment_request_counts(&self) -> Result<(Vec<(SegmentRow, u64)>, u64)> {
        let mut counts: HashMap<i64, u64> = HashMap::new();
        {
            let mut st = self
                .conn
                .prepare("SELECT segment, count(*) FROM requests GROUP BY segment")
                .map_err(|e| self.err(e))?;
            let rows = st
                .query_map([], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)? as u64))
                })
                .map_err(|e| self.err(e))?;
            for row in rows {
                let (seg, n) = row.map_err(|e| self.err(e))?;
                counts.insert(seg, n);
            }
        }
        let mut st = self
            .conn
            .prepare(
                "SELECT id, name, host, opened, closed, digest FROM segments ORDER BY opened, name",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    SegmentRow {
                        name: r.get(1)?,
                        host: r.get(2)?,
                        opened: r.get(3)?,
                        closed: r.get(4)?,
                        digest: r.get(5)?,
                    },
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, seg) = row.map_err(|e| self.err(e))?;
            out.push((seg, counts.remove(&id).unwrap_or(0)));
        }
        Ok((out, counts.values().sum()))
    }

    /// The request ids the index holds for segment `name`.
    pub(crate) fn request_ids_of_segment(&self, name: &str) -> Result<Vec<String>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT r.id FROM requests r JOIN segments s ON s.id = r.segment
                 WHERE s.name = ?1 ORDER BY r.id",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([name], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }

    /// Drop the whole request index (segments, served-by, requests): it is
    /// rebuilt from the segments.
    pub(crate) fn clear_requests(&self) -> Result<()> {
        self.write_txn(|tx| {
            tx.tx
                .execute_batch("DELETE FROM requests; DELETE FROM served; DELETE FROM segments;")
                .map_err(|e| tx.err(e))
        })
    }

    /// Every distinct served-by the request index holds.
    pub(crate) fn served_all(&self) -> Result<Vec<ServedBy>> {
        let mut st = self
            .conn
            .prepare(
                "SELECT model, model_digest, dataset, dataset_digest, train_run,
                        code_commit, config_digest FROM served ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| served_by(r, 0))
            .map_err(|e| self.err(e))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .map_err(|e| self.err(e))
    }
}

/// Index a parsed segment's requests, replacing whatever rows it had, and
/// mark it closed as `digest` when given.
pub(crate) fn index_segment(
    db: &LineageDb,
    seg: &ParsedSegment,
    closed: Option<(i64, &str)>,
) -> Result<()> {
    let joined: Vec<String> = seg.records.iter().map(|r| r.items.join(",")).collect();
    let rows: Vec<RequestRow<'_>> = seg
        .records
        .iter()
        .zip(&joined)
        .map(|(r, items)| r.row(items))
        .collect();
    let sref = SegmentRef {
        name: &seg.header.name,
        host: &seg.header.host,
        opened: seg.header.opened,
    };
    db.replace_segment_requests(&sref, &rows, closed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::tests::served;

    fn insert(db: &LineageDb, rows: &[(&str, i64, i64)]) {
        let by = served();
        let seg = SegmentRef {
            name: "seg-1",
            host: "h",
            opened: 0,
        };
        let rows: Vec<RequestRow<'_>> = rows
            .iter()
            .map(|(id, time, user)| RequestRow {
                id,
                time: *time,
                user: *user,
                served: &by,
                route: "default",
                status: "ok",
                latency_us: 10,
                items: "1,2",
            })
            .collect();
        db.insert_requests(&seg, &rows).expect("insert");
    }

    #[test]
    fn request_near_finds_the_closest_request_of_the_user_across_seconds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = LineageDb::open(&dir.path().join("lineage.db")).expect("open");
        insert(
            &db,
            &[
                ("a", 1_000_999, 7),
                ("b", 1_001_400, 7),
                ("c", 1_001_001, 8),
                ("d", 1_061_500, 7),
            ],
        );
        let near = |user, at, w| db.request_near(user, at, w).expect("query").map(|r| r.id);
        // Closest by milliseconds, even in the previous second.
        assert_eq!(near(7, 1_001_100, 60_000).as_deref(), Some("a"));
        assert_eq!(near(7, 1_001_300, 60_000).as_deref(), Some("b"));
        // Other users never match; nothing outside the window.
        assert_eq!(near(8, 1_001_300, 60_000).as_deref(), Some("c"));
        assert_eq!(near(9, 1_001_300, 60_000), None);
        assert_eq!(near(7, 1_061_000, 400), None);
        assert_eq!(near(7, 1_061_000, 500).as_deref(), Some("d"));
    }

    #[test]
    fn a_schema_2_database_is_migrated_and_keeps_its_requests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("lineage.db");
        {
            let db = LineageDb::open(&path).expect("open");
            insert(&db, &[("x", 5_000, 3)]);
        }
        // Put it back to schema 2 as an older recsys left it.
        let c = rusqlite::Connection::open(&path).expect("raw open");
        c.execute_batch(
            "DROP INDEX requests_second_user;
             CREATE INDEX requests_user_time ON requests(user, time);
             PRAGMA user_version = 2;",
        )
        .expect("downgrade");
        drop(c);
        let db = LineageDb::open(&path).expect("migrate");
        let indexes: Vec<String> = db
            .conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'requests' ORDER BY name")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(indexes, ["requests_id", "requests_second_user"]);
        let v: i64 = db
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("version");
        assert_eq!(v, 3);
        let r = db.request_near(3, 5_100, 1_000).expect("query");
        assert_eq!(r.map(|r| r.id).as_deref(), Some("x"));
    }
}
