//! `store/state.db`: caches that make the store fast and can always be
//! thrown away — object stat stamps (verified objects) and the work-tree
//! stat cache (unchanged files are never re-hashed).

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Digest, Result, StoreError};

/// What a file looked like when its digest was last computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
}

impl Stamp {
    pub fn of(m: &Metadata) -> Stamp {
        Stamp {
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ino: m.ino(),
        }
    }
}

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
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS object_stamps(
                digest BLOB PRIMARY KEY, size INTEGER NOT NULL,
                mtime_ns INTEGER NOT NULL, ino INTEGER NOT NULL) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS worktree_cache(
                path TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;",
        )
        .map_err(err)?;
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

    pub fn object_stamp(&self, d: &Digest) -> Result<Option<Stamp>> {
        self.with(|c| {
            c.prepare_cached("SELECT size, mtime_ns, ino FROM object_stamps WHERE digest = ?1")?
                .query_row([&d.0[..]], |r| {
                    Ok(Stamp {
                        size: r.get::<_, i64>(0)? as u64,
                        mtime_ns: r.get(1)?,
                        ino: r.get::<_, i64>(2)? as u64,
                    })
                })
                .optional()
        })
    }

    /// Stamps of many objects in one read transaction (checkout of big
    /// directories): outside one, every SELECT takes and drops SQLite's
    /// file locks, two `fcntl`s per object.
    pub fn object_stamps(&self, ds: &[Digest]) -> Result<Vec<Option<Stamp>>> {
        self.with(|c| {
            let tx = c.transaction()?;
            let mut out = Vec::with_capacity(ds.len());
            {
                let mut st = tx.prepare_cached(
                    "SELECT size, mtime_ns, ino FROM object_stamps WHERE digest = ?1",
                )?;
                for d in ds {
                    out.push(
                        st.query_row([&d.0[..]], |r| {
                            Ok(Stamp {
                                size: r.get::<_, i64>(0)? as u64,
                                mtime_ns: r.get(1)?,
                                ino: r.get::<_, i64>(2)? as u64,
                            })
                        })
                        .optional()?,
                    );
                }
            }
            tx.commit()?;
            Ok(out)
        })
    }

    pub fn set_object_stamps(&self, stamps: &[(Digest, Stamp)]) -> Result<()> {
        if stamps.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT OR REPLACE INTO object_stamps(digest, size, mtime_ns, ino)
                     VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (d, s) in stamps {
                    st.execute(params![&d.0[..], s.size as i64, s.mtime_ns, s.ino as i64])?;
                }
            }
            tx.commit()
        })
    }

    pub fn forget_object(&self, d: &Digest) -> Result<()> {
        self.with(|c| {
            c.execute("DELETE FROM object_stamps WHERE digest = ?1", [&d.0[..]])
                .map(|_| ())
        })
    }

    /// The cached stat blob for a work-tree artifact path.
    pub fn worktree_get(&self, path: &str) -> Result<Option<Vec<u8>>> {
        self.with(|c| {
            c.prepare_cached("SELECT data FROM worktree_cache WHERE path = ?1")?
                .query_row([path], |r| r.get(0))
                .optional()
        })
    }

    pub fn worktree_set(&self, path: &str, data: &[u8]) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT OR REPLACE INTO worktree_cache(path, data) VALUES (?1, ?2)",
                params![path, data],
            )
            .map(|_| ())
        })
    }
}
