//! `lineage.db`: the queryable index over run records, pointer files and
//! the request log. Everything in it can be rebuilt: artifacts, runs and
//! edges from run records, requests from closed log segments in the store.
//!
//! SQLite in WAL mode with a busy timeout: a scheduled pipeline and a
//! running server write it at once. Transactions never span I/O that could
//! block on another process for long.

pub mod erasure;
pub mod git;
pub mod requests;
pub mod run;
mod served;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

pub use run::{ArtifactRef, CodeVersion, RunRecord};

use crate::store::Digest;

const SCHEMA_VERSION: i64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum LineageError {
    #[error("lineage database {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "lineage database {path} is damaged (SQLite: {detail}); `recsys lineage --rebuild` \
         sets it aside and rebuilds it from the run records and request-log segments in the store"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error("lineage database {path} has schema {found}; this recsys knows up to {SCHEMA_VERSION}")]
    Schema { path: PathBuf, found: i64 },
    #[error("set aside the damaged lineage database {path}: {source}")]
    SetAside {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("git: {0}")]
    Git(String),
    #[error(transparent)]
    Segment(#[from] crate::segment::SegmentError),
    #[error("unknown git revision {0:?}: {1}")]
    BadRev(String, String),
    #[error(
        "name conflict: {name} is {existing} here but {incoming} in {origin}; \
         a version name is never reused for different bytes"
    )]
    NameConflict {
        name: String,
        existing: Digest,
        incoming: Digest,
        origin: String,
    },
}

pub type Result<T, E = LineageError> = std::result::Result<T, E>;

/// An artifact version as registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactRow {
    pub name: String,
    pub kind: String,
    pub digest: Digest,
    pub size: u64,
    pub files: Option<u64>,
    pub path: Option<String>,
    pub created: i64,
    pub git_commit: Option<String>,
    pub dirty: bool,
    pub recsys_version: String,
    pub build_commit: String,
    pub run: Digest,
}

pub struct LineageDb {
    path: PathBuf,
    conn: Connection,
}

impl LineageDb {
    /// Open (creating if needed). A file SQLite finds damaged — not a
    /// database, or malformed, e.g. cut short — is [`LineageError::Corrupt`]
    /// and left as it is: [`LineageDb::set_aside`] keeps it for inspection.
    pub fn open(path: &Path) -> Result<LineageDb> {
        let conn = Connection::open(path).map_err(|source| db_err(path, source))?;
        let db = LineageDb {
            path: path.into(),
            conn,
        };
        db.migrate()?;
        // The schema's pages are read here; a file cut short fails now,
        // not in the middle of some later command.
        db.conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(|e| db.err(e))?;
        Ok(db)
    }

    /// Move a damaged database (and its WAL and shared-memory files) aside
    /// as `<name>.corrupt-<ms>` so a new one can be built; returns the new
    /// name of the database file.
    pub(crate) fn set_aside(path: &Path, now_ms: i64) -> Result<PathBuf> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        // Never over an earlier set-aside copy.
        let mut stem = format!("{name}.corrupt-{now_ms}");
        let mut n = 1;
        while path.with_file_name(&stem).exists() {
            stem = format!("{name}.corrupt-{now_ms}-{n}");
            n += 1;
        }
        let aside = path.with_file_name(&stem);
        let io = |source: std::io::Error| LineageError::SetAside {
            path: path.to_path_buf(),
            source,
        };
        for suffix in ["-wal", "-shm"] {
            let from = path.with_file_name(format!("{name}{suffix}"));
            let to = path.with_file_name(format!("{stem}{suffix}"));
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
        }
        std::fs::rename(path, &aside).map_err(io)?;
        Ok(aside)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An empty index in memory (a placeholder while the file is replaced).
    pub(crate) fn in_memory() -> Result<LineageDb> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|e| db_err(&path, e))?;
        let db = LineageDb { path, conn };
        db.migrate()?;
        Ok(db)
    }

    fn err(&self, source: rusqlite::Error) -> LineageError {
        db_err(&self.path, source)
    }

    fn migrate(&self) -> Result<()> {
        self.conn
            .busy_timeout(std::time::Duration::from_secs(30))
            .map_err(|e| self.err(e))?;
        self.conn
            .execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(|e| self.err(e))?;
        let v: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if v > SCHEMA_VERSION {
            return Err(LineageError::Schema {
                path: self.path.clone(),
                found: v,
            });
        }
        if v < 1 {
            self.conn
                .execute_batch(
                    "BEGIN;
                     CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
                     CREATE TABLE IF NOT EXISTS runs(
                        id TEXT PRIMARY KEY, kind TEXT NOT NULL,
                        started INTEGER NOT NULL, ended INTEGER NOT NULL,
                        git_commit TEXT, dirty INTEGER NOT NULL,
                        recsys_version TEXT NOT NULL, build_commit TEXT NOT NULL,
                        algorithm TEXT, params TEXT NOT NULL, metrics TEXT NOT NULL,
                        source TEXT NOT NULL);
                     CREATE TABLE IF NOT EXISTS artifacts(
                        name TEXT PRIMARY KEY, kind TEXT NOT NULL, digest TEXT NOT NULL,
                        size INTEGER NOT NULL, files INTEGER, path TEXT,
                        created INTEGER NOT NULL, git_commit TEXT, dirty INTEGER NOT NULL,
                        recsys_version TEXT NOT NULL, build_commit TEXT NOT NULL,
                        run TEXT NOT NULL);
                     CREATE INDEX IF NOT EXISTS artifacts_digest ON artifacts(digest);
                     CREATE TABLE IF NOT EXISTS edges(
                        run TEXT NOT NULL, direction TEXT NOT NULL CHECK(direction IN ('in','out')),
                        digest TEXT NOT NULL, name TEXT NOT NULL,
                        PRIMARY KEY(run, direction, digest, name));
                     CREATE INDEX IF NOT EXISTS edges_digest ON edges(digest);
                     PRAGMA user_version = 1;
                     COMMIT;",
                )
                .map_err(|e| self.err(e))?;
        }
        if v < 2 {
            self.conn
                .execute_batch(requests::SCHEMA_V2)
                .map_err(|e| self.err(e))?;
        }
        if v < 3 {
            self.conn
                .execute_batch(requests::SCHEMA_V3)
                .map_err(|e| self.err(e))?;
        }
        self.conn
            .execute_batch(erasure::SCHEMA_ERASED)
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub(crate) fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)",
                params![key, value],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Run `f` inside an IMMEDIATE transaction: writers are serialised, so
    /// two processes never hand out the same version name. Rolled back when
    /// `f` fails.
    pub(crate) fn write_txn<T, E: From<LineageError>>(
        &self,
        f: impl FnOnce(&Txn<'_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(|e| self.err(e))?;
        let out = f(&Txn {
            tx: &self.conn,
            path: &self.path,
        });
        match out {
            Ok(v) => {
                if let Err(e) = self.conn.execute_batch("COMMIT") {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    return Err(self.err(e).into());
                }
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    pub fn artifacts(&self, kind: Option<&str>) -> Result<Vec<ArtifactRow>> {
        query_artifacts(
            &self.conn,
            "WHERE (?1 IS NULL OR kind = ?1) ORDER BY kind, created, name",
            params![kind],
        )
        .map_err(|e| self.err(e))
    }

    pub(crate) fn artifact_by_name(&self, name: &str) -> Result<Option<ArtifactRow>> {
        Ok(
            query_artifacts(&self.conn, "WHERE name = ?1", params![name])
                .map_err(|e| self.err(e))?
                .into_iter()
                .next(),
        )
    }

    /// Artifacts whose digest starts with `prefix` (hex).
    pub(crate) fn artifacts_by_digest_prefix(&self, prefix: &str) -> Result<Vec<ArtifactRow>> {
        let hi = format!("{prefix}g");
        query_artifacts(
            &self.conn,
            "WHERE digest >= ?1 AND digest < ?2 ORDER BY created",
            params![prefix, hi],
        )
        .map_err(|e| self.err(e))
    }

    pub fn run(&self, id: &Digest) -> Result<Option<RunRow>> {
        self.conn
            .query_row(
                "SELECT id, kind, started, ended, git_commit, dirty, recsys_version,
                        build_commit, algorithm, params, metrics, source
                 FROM runs WHERE id = ?1",
                [id.hex()],
                |r| {
                    Ok(RunRow {
                        id: *id,
                        kind: r.get(1)?,
                        started: r.get(2)?,
                        ended: r.get(3)?,
                        git_commit: r.get(4)?,
                        dirty: r.get(5)?,
                        recsys_version: r.get(6)?,
                        build_commit: r.get(7)?,
                        algorithm: r.get(8)?,
                        params: json(r.get::<_, String>(9)?),
                        metrics: json(r.get::<_, String>(10)?),
                        source: json(r.get::<_, String>(11)?),
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// (direction, artifact) edges of a run.
    pub(crate) fn run_edges(&self, id: &Digest) -> Result<Vec<(String, String, Digest)>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT direction, name, digest FROM edges WHERE run = ?1 ORDER BY direction, name",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([id.hex()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (dir, name, d) = row.map_err(|e| self.err(e))?;
            if let Ok(d) = d.parse() {
                out.push((dir, name, d));
            }
        }
        Ok(out)
    }

    /// Runs that read an artifact.
    pub(crate) fn consumers(&self, digest: &Digest) -> Result<Vec<Digest>> {
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT DISTINCT e.run FROM edges e JOIN runs r ON r.id = e.run
                 WHERE e.digest = ?1 AND e.direction = 'in' ORDER BY r.started",
            )
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([digest.hex()], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            if let Ok(d) = row.map_err(|e| self.err(e))?.parse() {
                out.push(d);
            }
        }
        Ok(out)
    }

    pub(crate) fn run_ids(&self) -> Result<Vec<Digest>> {
        self.run_ids_where(None)
    }

    /// The runs of one kind (`ingest`, ...), oldest first.
    pub(crate) fn run_ids_of_kind(&self, kind: &str) -> Result<Vec<Digest>> {
        self.run_ids_where(Some(kind))
    }

    fn run_ids_where(&self, kind: Option<&str>) -> Result<Vec<Digest>> {
        let mut st = self
            .conn
            .prepare("SELECT id FROM runs WHERE ?1 IS NULL OR kind = ?1 ORDER BY started")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([kind], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            if let Ok(d) = row.map_err(|e| self.err(e))?.parse() {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Every git commit named by a run.
    pub fn commits(&self) -> Result<Vec<(Digest, String)>> {
        let mut st = self
            .conn
            .prepare("SELECT id, git_commit FROM runs WHERE git_commit IS NOT NULL")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, c) = row.map_err(|e| self.err(e))?;
            if let Ok(id) = id.parse() {
                out.push((id, c));
            }
        }
        Ok(out)
    }

    /// Drop every row that can be rebuilt from run records.
    pub(crate) fn clear_index(&mut self) -> Result<()> {
        self.write_txn(|tx| {
            tx.tx
                .execute_batch(
                    "DELETE FROM edges; DELETE FROM artifacts; DELETE FROM runs; DELETE FROM erased;",
                )
                .map_err(|e| tx.err(e))
        })
    }
}

/// A database error, told apart when it means the file is damaged.
fn db_err(path: &Path, source: rusqlite::Error) -> LineageError {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match source.sqlite_error_code() {
        Some(DatabaseCorrupt | NotADatabase) => LineageError::Corrupt {
            path: path.into(),
            detail: source.to_string(),
        },
        _ => LineageError::Db {
            path: path.into(),
            source,
        },
    }
}

fn json(s: String) -> serde_json::Value {
    serde_json::from_str(&s).unwrap_or(serde_json::Value::Null)
}

/// A run as indexed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    pub id: Digest,
    pub kind: String,
    pub started: i64,
    pub ended: i64,
    pub git_commit: Option<String>,
    pub dirty: bool,
    pub recsys_version: String,
    pub build_commit: String,
    pub algorithm: Option<String>,
    pub params: serde_json::Value,
    pub metrics: serde_json::Value,
    pub source: serde_json::Value,
}

fn query_artifacts(
    conn: &Connection,
    tail: &str,
    p: &[&dyn rusqlite::ToSql],
) -> rusqlite::Result<Vec<ArtifactRow>> {
    let sql = format!(
        "SELECT name, kind, digest, size, files, path, created, git_commit, dirty,
                recsys_version, build_commit, run FROM artifacts {tail}"
    );
    let mut st = conn.prepare_cached(&sql)?;
    let rows = st.query_map(p, |r| {
        let digest: String = r.get(2)?;
        let run: String = r.get(11)?;
        Ok((
            ArtifactRow {
                name: r.get(0)?,
                kind: r.get(1)?,
                digest: Digest([0; 32]),
                size: r.get::<_, i64>(3)? as u64,
                files: r.get::<_, Option<i64>>(4)?.map(|f| f as u64),
                path: r.get(5)?,
                created: r.get(6)?,
                git_commit: r.get(7)?,
                dirty: r.get(8)?,
                recsys_version: r.get(9)?,
                build_commit: r.get(10)?,
                run: Digest([0; 32]),
            },
            digest,
            run,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (mut a, d, run) = row?;
        // Rows are written only by this module from parsed digests; a row
        // that does not parse is skipped rather than trusted.
        let (Ok(d), Ok(run)) = (d.parse(), run.parse()) else {
            continue;
        };
        a.digest = d;
        a.run = run;
        out.push(a);
    }
    Ok(out)
}

/// A write transaction on the lineage index.
pub struct Txn<'a> {
    tx: &'a Connection,
    path: &'a Path,
}

impl Txn<'_> {
    fn err(&self, source: rusqlite::Error) -> LineageError {
        db_err(self.path, source)
    }

    /// Highest number used in `<prefix><n>` names in the index.
    pub(crate) fn max_number(&self, prefix: &str) -> Result<u64> {
        let mut st = self
            .tx
            .prepare_cached("SELECT name FROM artifacts WHERE name LIKE ?1 || '%'")
            .map_err(|e| self.err(e))?;
        let rows = st
            .query_map([prefix], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        let mut max = 0;
        for row in rows {
            let name = row.map_err(|e| self.err(e))?;
            if let Some(n) = crate::text::number_after(&name, prefix) {
                max = max.max(n);
            }
        }
        Ok(max)
    }

    /// The version already registered for these bytes at this path (a
    /// rerun after a crash between indexing and writing the pointer).
    pub(crate) fn artifact_at(
        &self,
        digest: &Digest,
        path: &str,
        kind: &str,
    ) -> Result<Option<ArtifactRow>> {
        Ok(query_artifacts(
            self.tx,
            "WHERE digest = ?1 AND path = ?2 AND kind = ?3 ORDER BY created DESC",
            params![digest.hex(), path, kind],
        )
        .map_err(|e| self.err(e))?
        .into_iter()
        .next())
    }

    pub(crate) fn artifact_by_name(&self, name: &str) -> Result<Option<ArtifactRow>> {
        Ok(query_artifacts(self.tx, "WHERE name = ?1", params![name])
            .map_err(|e| self.err(e))?
            .into_iter()
            .next())
    }

    /// Index one run record (idempotent). Outputs become artifacts; an output
    /// that reuses a name for other bytes is a [`LineageError::NameConflict`]
    /// and nothing of this run is indexed.
    pub(crate) fn index_run(&self, id: &Digest, r: &RunRecord, origin: &str) -> Result<()> {
        for o in &r.outputs {
            if let Some(existing) = self.artifact_by_name(&o.name)?
                && existing.digest != o.digest
            {
                // The one exception to "a name is never reused": an
                // erasure (`forget`) rewrote these bytes under their name.
                match self.erasure_allows(r, &existing.digest, &o.digest)? {
                    Some(true) => {
                        self.drop_artifact_name(&o.name)?;
                        continue;
                    }
                    Some(false) => continue,
                    None => {}
                }
                return Err(LineageError::NameConflict {
                    name: o.name.clone(),
                    existing: existing.digest,
                    incoming: o.digest,
                    origin: origin.to_string(),
                });
            }
        }
        self.index_erasures(id, r)?;
        let s = |v: &serde_json::Value| v.to_string();
        self.tx
            .execute(
                "INSERT OR IGNORE INTO runs(id, kind, started, ended, git_commit, dirty,
                    recsys_version, build_commit, algorithm, params, metrics, source)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    id.hex(),
                    r.kind,
                    r.started,
                    r.ended,
                    r.code.git_commit,
                    r.code.dirty,
                    r.code.recsys_version,
                    r.code.build_commit,
                    r.algorithm,
                    s(&r.params),
                    s(&r.metrics),
                    s(&r.source)
                ],
            )
            .map_err(|e| self.err(e))?;
        for (dir, list) in [("in", &r.inputs), ("out", &r.outputs)] {
            for a in list {
                self.tx
                    .execute(
                        "INSERT OR IGNORE INTO edges(run, direction, digest, name) VALUES (?1, ?2, ?3, ?4)",
                        params![id.hex(), dir, a.digest.hex(), a.name],
                    )
                    .map_err(|e| self.err(e))?;
            }
        }
        for o in &r.outputs {
            self.tx
                .execute(
                    "INSERT OR IGNORE INTO artifacts(name, kind, digest, size, files, path, created,
                        git_commit, dirty, recsys_version, build_commit, run)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    params![
                        o.name,
                        o.kind,
                        o.digest.hex(),
                        o.size as i64,
                        o.files.map(|f| f as i64),
                        o.path,
                        r.ended,
                        r.code.git_commit,
                        r.code.dirty,
                        r.code.recsys_version,
                        r.code.build_commit,
                        id.hex()
                    ],
                )
                .map_err(|e| self.err(e))?;
        }
        Ok(())
    }
}
