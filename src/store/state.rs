//! `store/state.db`: caches that make the store fast and can always be
//! thrown away — object stat stamps (verified objects) and the work-tree
//! stat cache (unchanged files are never re-hashed).

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Digest, Result, StoreError};

/// What a file looked like when its digest was last computed. The change
/// time is part of it because nobody can set it back: an edit in place that
/// restores size, inode and modification time (`touch -r`) still moves it,
/// so a stamp that matches proves the bytes were not written since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
}

impl Stamp {
    pub fn of(m: &Metadata) -> Stamp {
        Stamp {
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            ino: m.ino(),
        }
    }
}

/// `PRAGMA user_version` of the state database. Version 2 added the change
/// time to object stamps and work-tree blobs: tables of version 1 (named
/// without the `_2`) are dropped, so nothing stamped without a ctime is
/// ever taken as proven.
const STATE_VERSION: i64 = 2;

pub struct StateDb {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl StateDb {
    pub fn open(path: &Path) -> Result<StateDb> {
        let err = |source| StoreError::State {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(err)?;
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")
            .map_err(err)?;
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(err)?;
        if v < STATE_VERSION {
            // Two processes may both see the old version: the tables are
            // created IF NOT EXISTS, so the second migration is a no-op.
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE;
                 DROP TABLE IF EXISTS object_stamps;
                 DROP TABLE IF EXISTS worktree_cache;
                 CREATE TABLE IF NOT EXISTS object_stamps_2(
                    digest BLOB PRIMARY KEY, size INTEGER NOT NULL,
                    mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
                    ino INTEGER NOT NULL) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS worktree_cache_2(
                    path TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS segment_served(
                    digest BLOB PRIMARY KEY, served TEXT NOT NULL) WITHOUT ROWID;
                 PRAGMA user_version = {STATE_VERSION};
                 COMMIT;"
            ))
            .map_err(err)?;
        }
        Ok(StateDb {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut c = self
            .conn
            .lock()
            .map_err(|_| StoreError::Remote("state database lock poisoned".into()))?;
        f(&mut c).map_err(|source| StoreError::State {
            path: self.path.clone(),
            source,
        })
    }

    pub(crate) fn object_stamp(&self, d: &Digest) -> Result<Option<Stamp>> {
        self.with(|c| {
            c.prepare_cached(SELECT_STAMP)?
                .query_row([&d.0[..]], stamp_row)
                .optional()
        })
    }

    /// Stamps of many objects in one read transaction (checkout of big
    /// directories): outside one, every SELECT takes and drops SQLite's
    /// file locks, two `fcntl`s per object.
    pub(crate) fn object_stamps(&self, ds: &[Digest]) -> Result<Vec<Option<Stamp>>> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut out = Vec::with_capacity(ds.len());
            {
                let mut st = tx.prepare_cached(SELECT_STAMP)?;
                for d in ds {
                    out.push(st.query_row([&d.0[..]], stamp_row).optional()?);
                }
            }
            tx.commit()?;
            Ok(out)
        })
    }

    pub(crate) fn set_object_stamps(&self, stamps: &[(Digest, Stamp)]) -> Result<()> {
        if stamps.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT OR REPLACE INTO object_stamps_2(digest, size, mtime_ns, ctime_ns, ino)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for (d, s) in stamps {
                    st.execute(params![
                        &d.0[..],
                        s.size as i64,
                        s.mtime_ns,
                        s.ctime_ns,
                        s.ino as i64
                    ])?;
                }
            }
            tx.commit()
        })
    }

    pub(crate) fn forget_object(&self, d: &Digest) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM object_stamps_2 WHERE digest = ?1", [&d.0[..]])
                .map(|_| ())
        })
    }

    /// The cached stat blob for a work-tree artifact path.
    pub(crate) fn worktree_get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.with(|c| {
            c.prepare_cached("SELECT data FROM worktree_cache_2 WHERE path = ?1")?
                .query_row([path], |r| r.get(0))
                .optional()
        })
    }

    pub(crate) fn worktree_set(&self, path: &str, data: &[u8]) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO worktree_cache_2(path, data) VALUES (?1, ?2)",
                params![path, data],
            )
            .map(|_| ())
        })
    }

    /// What a closed request-log segment names (its served-by lines, as
    /// JSON), remembered because segments are immutable and reading a big
    /// one to find them again costs its whole size.
    pub(crate) fn segment_served(&self, d: &Digest) -> Result<Option<String>> {
        self.with(|c| {
            c.prepare_cached("SELECT served FROM segment_served WHERE digest = ?1")?
                .query_row([&d.0[..]], |r| r.get(0))
                .optional()
        })
    }

    pub(crate) fn set_segment_served(&self, d: &Digest, served: &str) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO segment_served(digest, served) VALUES (?1, ?2)",
                params![&d.0[..], served],
            )
            .map(|_| ())
        })
    }
}

const SELECT_STAMP: &str =
    "SELECT size, mtime_ns, ctime_ns, ino FROM object_stamps_2 WHERE digest = ?1";

fn stamp_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Stamp> {
    Ok(Stamp {
        size: r.get::<_, i64>(0)? as u64,
        mtime_ns: r.get(1)?,
        ctime_ns: r.get(2)?,
        ino: r.get::<_, i64>(3)? as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_state_database_loses_its_unproven_stamps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.db");
        {
            let c = Connection::open(&path).expect("open");
            c.execute_batch(
                "CREATE TABLE object_stamps(digest BLOB PRIMARY KEY, size INTEGER NOT NULL,
                    mtime_ns INTEGER NOT NULL, ino INTEGER NOT NULL) WITHOUT ROWID;
                 CREATE TABLE worktree_cache(path TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;",
            )
            .expect("old schema");
            c.execute(
                "INSERT INTO object_stamps VALUES (?1, 1, 2, 3)",
                [&Digest::of(b"x").0[..]],
            )
            .expect("old stamp");
        }
        let db = StateDb::open(&path).expect("migrate");
        assert_eq!(db.object_stamp(&Digest::of(b"x")).expect("read"), None);
        let s = Stamp {
            size: 1,
            mtime_ns: 2,
            ctime_ns: 4,
            ino: 3,
        };
        db.set_object_stamps(&[(Digest::of(b"x"), s)])
            .expect("write");
        drop(db);
        let db = StateDb::open(&path).expect("reopen");
        assert_eq!(db.object_stamp(&Digest::of(b"x")).expect("read"), Some(s));
    }
}
