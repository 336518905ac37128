//! The embedded default sink: one SQLite file (`monitor.db` in the
//! project), WAL, one `BEGIN IMMEDIATE` transaction per batch.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use super::MonitorError;
use super::erase::{USER_TABLES, UserRows, bad_line_user};
use super::sink::{
    Batch, Checkpoint, Offset, REPLAY_SQL, Replayed, SMALL_TABLES, Sink, TABLE_COLUMNS, Value,
    checkpoint_json, minute_upsert, replayed, sqlite_placeholders,
};

pub struct SqliteSink {
    path: PathBuf,
    conn: Connection,
    /// The database file, share-locked (`flock`) while this is the running
    /// monitor job: `forget` tries an exclusive lock to tell.
    running: Option<std::fs::File>,
}

impl SqliteSink {
    pub fn open(path: &Path) -> Result<SqliteSink, MonitorError> {
        let err = |e| MonitorError::Sqlite {
            path: path.to_path_buf(),
            source: e,
        };
        let conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(err)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")
            .map_err(err)?;
        let mut ddl = String::from("BEGIN;\n");
        for (table, cols) in TABLE_COLUMNS {
            ddl.push_str(&format!("CREATE TABLE IF NOT EXISTS {table}({cols});\n"));
            ddl.push_str(&format!(
                "CREATE INDEX IF NOT EXISTS {table}_time ON {table}(time_ms);\n"
            ));
        }
        ddl.push_str("CREATE INDEX IF NOT EXISTS mon_answer_items_id ON mon_answer_items(id);\n");
        ddl.push_str(SMALL_TABLES);
        ddl.push_str("COMMIT;");
        conn.execute_batch(&ddl).map_err(err)?;
        Ok(SqliteSink {
            path: path.to_path_buf(),
            conn,
            running: None,
        })
    }

    fn err(&self, e: rusqlite::Error) -> MonitorError {
        MonitorError::Sqlite {
            path: self.path.clone(),
            source: e,
        }
    }

    /// The connection, for tests and benchmarks that query directly.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

fn b(x: bool) -> i64 {
    i64::from(x)
}

impl Sink for SqliteSink {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn load(&mut self) -> Result<(Checkpoint, Vec<Offset>), MonitorError> {
        let state: Option<String> = self
            .conn
            .query_row("SELECT state FROM mon_checkpoint WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.err(e))?;
        let cp = match state {
            Some(s) => serde_json::from_str(&s).map_err(|e| MonitorError::BadCheckpoint {
                sink: self.describe(),
                reason: e.to_string(),
            })?,
            None => Checkpoint::default(),
        };
        let mut st = self
            .conn
            .prepare("SELECT source, part, next_offset FROM mon_offsets ORDER BY source, part")
            .map_err(|e| self.err(e))?;
        let offsets = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?;
        Ok((cp, offsets))
    }

    fn replay(&mut self, from_ms: i64, f: &mut dyn FnMut(Replayed)) -> Result<(), MonitorError> {
        let sql = sqlite_placeholders(REPLAY_SQL);
        let mut st = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let mut rows = st.query([from_ms]).map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let v = row_values(r, 15).map_err(|e| self.err(e))?;
            if let Some(x) = replayed(&v) {
                f(x);
            }
        }
        Ok(())
    }

    fn write(&mut self, batch: &Batch) -> Result<bool, MonitorError> {
        let path = self.path.clone();
        let err = |e| MonitorError::Sqlite {
            path: path.clone(),
            source: e,
        };
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let done: Option<i64> = tx
            .query_row(
                "SELECT batch_no FROM mon_checkpoint WHERE id = 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(err)?;
        if done.is_some_and(|n| n >= batch.checkpoint.batch_no) {
            return Ok(false);
        }
        write_rows(&tx, batch).map_err(err)?;
        tx.execute(
            "INSERT INTO mon_checkpoint(id, batch_no, state, updated_ms) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET batch_no = excluded.batch_no,
                 state = excluded.state, updated_ms = excluded.updated_ms",
            params![
                batch.checkpoint.batch_no,
                checkpoint_json(&batch.checkpoint),
                batch.checkpoint.marks.watermark
            ],
        )
        .map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(true)
    }

    fn rows(&mut self, sql: &str, args: &[i64]) -> Result<Vec<Vec<Value>>, MonitorError> {
        let sql = sqlite_placeholders(sql);
        let mut st = self.conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let n = st.column_count();
        let mut rows = st
            .query(rusqlite::params_from_iter(args.iter()))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            out.push(row_values(r, n).map_err(|e| self.err(e))?);
        }
        Ok(out)
    }

    fn announce_running(&mut self) -> Result<(), MonitorError> {
        // flock, not SQLite's own (fcntl) locks: the two never interact.
        let f = std::fs::File::open(&self.path)
            .map_err(|e| MonitorError::Io(crate::fs_error::FsError::new("open", &self.path, e)))?;
        let _ = f.try_lock_shared();
        self.running = Some(f);
        Ok(())
    }

    fn erase_user(&mut self, user: i64, dry_run: bool) -> Result<UserRows, MonitorError> {
        let mut out = UserRows {
            db: self.describe(),
            monitor_running: self.running.is_none() && self.held_by_a_monitor(),
            ..UserRows::default()
        };
        let conn = &mut self.conn;
        let res = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            for t in USER_TABLES {
                let n = if dry_run {
                    tx.query_row(
                        &format!("SELECT count(*) FROM {t} WHERE user_id = ?1"),
                        [user],
                        |r| r.get::<_, i64>(0),
                    )? as u64
                } else {
                    tx.execute(&format!("DELETE FROM {t} WHERE user_id = ?1"), [user])? as u64
                };
                out.tables.insert(t.to_string(), n);
            }
            let bad: Vec<i64> = tx
                .prepare("SELECT rowid, text FROM mon_bad")?
                .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
                .filter_map(|row| match row {
                    Ok((id, text)) if bad_line_user(&text) == Some(user) => Some(Ok(id)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<rusqlite::Result<_>>()?;
            out.bad_lines = bad.len() as u64;
            if !dry_run {
                for id in &bad {
                    tx.execute("DELETE FROM mon_bad WHERE rowid = ?1", [id])?;
                }
            }
            tx.commit()?;
            if !dry_run && out.total() > 0 {
                // The deleted rows' bytes stay in free pages and the WAL
                // until the file is rebuilt and the WAL emptied.
                conn.execute_batch("VACUUM")?;
                let busy: i64 =
                    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
                out.scrubbed = busy == 0;
            }
            Ok(())
        })();
        res.map_err(|e| self.err(e))?;
        Ok(out)
    }
}

impl SqliteSink {
    /// Whether a monitor job holds the database file (see `running`).
    fn held_by_a_monitor(&self) -> bool {
        std::fs::File::open(&self.path)
            .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)))
    }
}

fn row_values(r: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Vec<Value>> {
    use rusqlite::types::ValueRef;
    (0..n)
        .map(|i| {
            Ok(match r.get_ref(i)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(x) => Value::Int(x),
                ValueRef::Real(x) => Value::Float(x),
                ValueRef::Text(t) | ValueRef::Blob(t) => {
                    Value::Text(String::from_utf8_lossy(t).into_owned())
                }
            })
        })
        .collect()
}

fn write_rows(tx: &rusqlite::Transaction<'_>, batch: &Batch) -> rusqlite::Result<()> {
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO mon_events(seq, time_ms, user_id, kind, movie, value, latency_ms, items,
                late, source, part, off) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        )?;
        for e in &batch.events {
            st.execute(params![
                e.seq,
                e.time_ms,
                e.user,
                e.kind,
                e.movie,
                e.value,
                e.latency_ms,
                e.items,
                b(e.late),
                e.pos.source,
                e.pos.part,
                e.pos.off
            ])?;
        }
    }
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO mon_answers(seq, id, time_ms, user_id, model, dataset, arm, status,
                latency_us, items, late, source, part, off)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
        )?;
        let mut items = tx.prepare_cached(
            "INSERT INTO mon_answer_items(time_ms, id, user_id, model, rank, movie)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for a in &batch.answers {
            st.execute(params![
                a.seq,
                a.id,
                a.time_ms,
                a.user,
                a.model,
                a.dataset,
                a.arm,
                a.status,
                a.latency_us,
                a.items.join(","),
                b(a.late),
                a.pos.source,
                a.pos.part,
                a.pos.off
            ])?;
            if !a.late {
                for (rank, movie) in super::sink_items(&a.items) {
                    items.execute(params![a.time_ms, a.id, a.user, a.model, rank, movie])?;
                }
            }
        }
    }
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO mon_outcomes(time_ms, id, user_id, model, dataset, arm, fallback,
                converted_10, converted_20, continued_20, first_conversion_ms, first_rank,
                seen_in_stream) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        for o in &batch.outcomes {
            st.execute(params![
                o.time_ms,
                super::uuid_text(o.id),
                o.user as i64,
                o.model,
                o.dataset,
                o.arm,
                b(o.fallback),
                b(o.converted_10),
                b(o.converted_20),
                b(o.continued_20),
                o.first_conversion.map(|f| f.0),
                o.first_conversion.map(|f| f.1),
                b(o.seen_in_stream)
            ])?;
        }
    }
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO mon_stream_requests(time_ms, user_id, status, latency_ms, model, arm)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        for m in &batch.matches {
            st.execute(params![
                m.time_ms,
                m.user as i64,
                m.status,
                m.latency_ms,
                m.served.as_ref().map(|s| &s.0),
                m.served.as_ref().map(|s| &s.1)
            ])?;
        }
    }
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO mon_bad(source, part, off, reason, text) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for x in &batch.bad {
            st.execute(params![
                x.pos.source,
                x.pos.part,
                x.pos.off,
                x.reason,
                x.text
            ])?;
        }
    }
    let r = &batch.rollups;
    {
        let sql = minute_upsert(|i| format!("?{i}"));
        let mut st = tx.prepare_cached(&sql)?;
        for ((minute, model, arm), c) in &r.minute {
            let v = c.values();
            let mut p: Vec<&dyn rusqlite::ToSql> = vec![minute, model, arm];
            for x in &v {
                p.push(x);
            }
            st.execute(p.as_slice())?;
        }
    }
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO mon_latency_minute(minute_ms, model, arm, source, le_ms, n)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (minute_ms, model, arm, source, le_ms)
             DO UPDATE SET n = mon_latency_minute.n + excluded.n",
        )?;
        for ((minute, model, arm, source, le), n) in &r.latency {
            st.execute(params![minute, model, arm, source, le, n])?;
        }
    }
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO mon_item_minute(minute_ms, model, movie, n) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (minute_ms, model, movie) DO UPDATE SET n = mon_item_minute.n + excluded.n",
        )?;
        for ((minute, model, movie), n) in &r.items {
            st.execute(params![minute, model, movie, n])?;
        }
    }
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO mon_watch_minute(minute_ms, movie, n) VALUES (?1, ?2, ?3)
             ON CONFLICT (minute_ms, movie) DO UPDATE SET n = mon_watch_minute.n + excluded.n",
        )?;
        for ((minute, movie), n) in &r.watched {
            st.execute(params![minute, movie, n])?;
        }
    }
    tx.execute("DELETE FROM mon_provisional", [])?;
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO mon_provisional(model, dataset, arm, open, converted_10, converted_20,
                watermark_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for p in &batch.provisional {
            st.execute(params![
                p.model,
                p.dataset,
                p.arm,
                p.open as i64,
                p.converted_10 as i64,
                p.converted_20 as i64,
                batch.checkpoint.marks.watermark
            ])?;
        }
    }
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO mon_offsets(source, part, next_offset) VALUES (?1, ?2, ?3)
             ON CONFLICT (source, part) DO UPDATE SET next_offset = excluded.next_offset",
        )?;
        for (source, part, off) in &batch.offsets {
            st.execute(params![source, part, off])?;
        }
    }
    Ok(())
}
