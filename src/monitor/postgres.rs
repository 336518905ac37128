//! The shared sink: PostgreSQL through `tokio-postgres`.
//!
//! Raw tables are partitioned by day on `time_ms` (a partition per UTC day,
//! `<table>_pYYYYMMDD`, created when a batch first has rows for that day)
//! with a BRIN index on `time_ms` created `WITH (autosummarize = on)`; when
//! the server has the TimescaleDB extension they are hypertables with
//! one-day chunks instead (that path is not exercised here: the machines
//! this is tested on have no TimescaleDB package). Rows go in by binary
//! `COPY`, rollups by `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO
//! UPDATE`, all in one transaction with the offsets and the checkpoint.
//!
//! The client is async; this type owns a current-thread runtime and blocks
//! on it, so the monitor's loop stays synchronous. A lost connection is
//! re-established on the next call (the failed batch is retried whole by
//! the caller).

use std::collections::HashSet;
use std::pin::pin;

use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, NoTls};

use super::MonitorError;
use super::erase::{PG_RUNNING_APP, USER_TABLES, UserRows, bad_line_user};
use super::sink::{
    Batch, Checkpoint, MinuteCounts, Offset, REPLAY_SQL, Replayed, SMALL_TABLES, Sink,
    TABLE_COLUMNS, Value, checkpoint_json, replayed,
};

const DAY_MS: i64 = 86_400_000;

pub struct PgSink {
    url: String,
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    timescale: bool,
    /// (table, day) partitions known to exist.
    days: HashSet<(&'static str, i64)>,
    /// This is the running monitor job: every session it opens carries
    /// [`PG_RUNNING_APP`] and its schema as `application_name`.
    running: bool,
}

/// The URL without its password, for messages.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &cred[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl PgSink {
    /// Connect and create the tables (idempotent).
    pub fn connect(url: &str) -> Result<PgSink, MonitorError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| MonitorError::Runtime(e.to_string()))?;
        let mut s = PgSink {
            url: url.to_string(),
            rt,
            client: None,
            timescale: false,
            days: HashSet::new(),
            running: false,
        };
        s.client()?;
        s.create()?;
        Ok(s)
    }

    fn err(&self, e: tokio_postgres::Error) -> MonitorError {
        MonitorError::Postgres {
            url: redact(&self.url),
            source: Box::new(e),
        }
    }

    fn client(&mut self) -> Result<&Client, MonitorError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let (client, conn) = self
                .rt
                .block_on(tokio_postgres::connect(&self.url, NoTls))
                .map_err(|e| self.err(e))?;
            self.rt.spawn(async move {
                // The error shows up on the client's next call.
                let _ = conn.await;
            });
            if self.running {
                self.rt
                    .block_on(client.execute(SET_RUNNING_APP, &[]))
                    .map_err(|e| self.err(e))?;
            }
            self.client = Some(client);
        }
        self.client
            .as_ref()
            .ok_or(MonitorError::Runtime("no client".into()))
    }

    fn run<T>(
        &mut self,
        f: impl AsyncFnOnce(&mut Client) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, MonitorError> {
        self.client()?;
        let PgSink { rt, client, .. } = self;
        let c = client
            .as_mut()
            .ok_or(MonitorError::Runtime("no client".into()))?;
        let r = rt.block_on(f(c));
        match r {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_closed() || e.as_db_error().is_none() {
                    self.client = None;
                }
                Err(self.err(e))
            }
        }
    }

    fn create(&mut self) -> Result<(), MonitorError> {
        let timescale = self.run(async |c| {
            let row = c
                .query_one(
                    "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'",
                    &[],
                )
                .await?;
            Ok(row.get::<_, i64>(0) > 0)
        })?;
        self.timescale = timescale;
        let mut ddl = String::new();
        if timescale {
            ddl.push_str("CREATE EXTENSION IF NOT EXISTS timescaledb;\n");
        }
        for (table, cols) in TABLE_COLUMNS {
            if timescale {
                ddl.push_str(&format!(
                    "CREATE TABLE IF NOT EXISTS {table}({cols});\n\
                     SELECT create_hypertable('{table}', 'time_ms', \
                     chunk_time_interval => {DAY_MS}::bigint, if_not_exists => TRUE);\n"
                ));
            } else {
                ddl.push_str(&format!(
                    "CREATE TABLE IF NOT EXISTS {table}({cols}) PARTITION BY RANGE (time_ms);\n\
                     CREATE INDEX IF NOT EXISTS {table}_time_brin ON {table} \
                     USING brin (time_ms) WITH (autosummarize = on);\n"
                ));
            }
        }
        ddl.push_str("CREATE INDEX IF NOT EXISTS mon_answer_items_id ON mon_answer_items (id);\n");
        ddl.push_str(SMALL_TABLES);
        self.run(async |c| c.batch_execute(&ddl).await)
    }
}

/// `YYYYMMDD` of a day number (days since 1970-01-01).
fn ymd(day: i64) -> String {
    // H. Hinnant's civil_from_days.
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}{m:02}{d:02}")
}

fn days_needed(batch: &Batch) -> HashSet<(&'static str, i64)> {
    let mut need = HashSet::new();
    let mut add = |t: &'static str, ms: i64| {
        need.insert((t, ms.div_euclid(DAY_MS)));
    };
    for e in &batch.events {
        add("mon_events", e.time_ms);
    }
    for a in &batch.answers {
        add("mon_answers", a.time_ms);
        if !a.late {
            add("mon_answer_items", a.time_ms);
        }
    }
    for o in &batch.outcomes {
        add("mon_outcomes", o.time_ms);
    }
    for m in &batch.matches {
        add("mon_stream_requests", m.time_ms);
    }
    need
}

fn b(x: bool) -> i16 {
    i16::from(x)
}

async fn copy_rows(
    c: &tokio_postgres::Transaction<'_>,
    table: &str,
    cols: &str,
    types: &[Type],
    rows: impl Iterator<Item = Vec<Box<dyn ToSql + Sync + Send>>>,
) -> Result<u64, tokio_postgres::Error> {
    let sink = c
        .copy_in(&format!("COPY {table} ({cols}) FROM STDIN (FORMAT binary)"))
        .await?;
    let mut w = pin!(BinaryCopyInWriter::new(sink, types));
    for row in rows {
        let refs: Vec<&(dyn ToSql + Sync)> = row
            .iter()
            .map(|v| v.as_ref() as &(dyn ToSql + Sync))
            .collect();
        w.as_mut().write(&refs).await?;
    }
    w.finish().await
}

type Row = Vec<Box<dyn ToSql + Sync + Send>>;

async fn write_batch(
    c: &mut Client,
    batch: &Batch,
    new_days: &[(&'static str, i64)],
) -> Result<bool, tokio_postgres::Error> {
    let tx = c.transaction().await?;
    let done = tx
        .query_opt(
            "SELECT batch_no FROM mon_checkpoint WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await?
        .map(|r| r.get::<_, i64>(0));
    if done.is_some_and(|n| n >= batch.checkpoint.batch_no) {
        return Ok(false);
    }
    for (table, day) in new_days {
        let (from, to) = (day * DAY_MS, (day + 1) * DAY_MS);
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {table}_p{} PARTITION OF {table} \
             FOR VALUES FROM ({from}) TO ({to})",
            ymd(*day)
        ))
        .await?;
    }
    use Type as T;
    if !batch.events.is_empty() {
        let rows = batch.events.iter().map(|e| -> Row {
            vec![
                Box::new(e.seq),
                Box::new(e.time_ms),
                Box::new(e.user),
                Box::new(e.kind.to_string()),
                Box::new(e.movie.clone()),
                Box::new(e.value),
                Box::new(e.latency_ms),
                Box::new(e.items.clone()),
                Box::new(b(e.late)),
                Box::new(e.pos.source.clone()),
                Box::new(e.pos.part),
                Box::new(e.pos.off),
            ]
        });
        copy_rows(
            &tx,
            "mon_events",
            "seq, time_ms, user_id, kind, movie, value, latency_ms, items, late, source, part, off",
            &[
                T::INT8,
                T::INT8,
                T::INT8,
                T::TEXT,
                T::TEXT,
                T::INT4,
                T::INT4,
                T::TEXT,
                T::INT2,
                T::TEXT,
                T::INT4,
                T::INT8,
            ],
            rows,
        )
        .await?;
    }
    if !batch.answers.is_empty() {
        let rows = batch.answers.iter().map(|a| -> Row {
            vec![
                Box::new(a.seq),
                Box::new(a.id.clone()),
                Box::new(a.time_ms),
                Box::new(a.user),
                Box::new(a.model.clone()),
                Box::new(a.dataset.clone()),
                Box::new(a.arm.clone()),
                Box::new(a.status.clone()),
                Box::new(a.latency_us),
                Box::new(a.items.join(",")),
                Box::new(b(a.late)),
                Box::new(a.pos.source.clone()),
                Box::new(a.pos.part),
                Box::new(a.pos.off),
            ]
        });
        copy_rows(
            &tx,
            "mon_answers",
            "seq, id, time_ms, user_id, model, dataset, arm, status, latency_us, items, late, source, part, off",
            &[
                T::INT8,
                T::TEXT,
                T::INT8,
                T::INT8,
                T::TEXT,
                T::TEXT,
                T::TEXT,
                T::TEXT,
                T::INT8,
                T::TEXT,
                T::INT2,
                T::TEXT,
                T::INT4,
                T::INT8,
            ],
            rows,
        )
        .await?;
        let rows = batch.answers.iter().filter(|a| !a.late).flat_map(|a| {
            super::sink_items(&a.items)
                .into_iter()
                .map(|(rank, movie)| -> Row {
                    vec![
                        Box::new(a.time_ms),
                        Box::new(a.id.clone()),
                        Box::new(a.user),
                        Box::new(a.model.clone()),
                        Box::new(rank),
                        Box::new(movie.to_string()),
                    ]
                })
                .collect::<Vec<_>>()
        });
        copy_rows(
            &tx,
            "mon_answer_items",
            "time_ms, id, user_id, model, rank, movie",
            &[T::INT8, T::TEXT, T::INT8, T::TEXT, T::INT2, T::TEXT],
            rows,
        )
        .await?;
    }
    if !batch.outcomes.is_empty() {
        let rows = batch.outcomes.iter().map(|o| -> Row {
            vec![
                Box::new(o.time_ms),
                Box::new(super::uuid_text(o.id)),
                Box::new(o.user as i64),
                Box::new(o.model.clone()),
                Box::new(o.dataset.clone()),
                Box::new(o.arm.clone()),
                Box::new(b(o.fallback)),
                Box::new(b(o.converted_10)),
                Box::new(b(o.converted_20)),
                Box::new(b(o.continued_20)),
                Box::new(o.first_conversion.map(|f| f.0)),
                Box::new(o.first_conversion.map(|f| i16::from(f.1))),
                Box::new(b(o.seen_in_stream)),
            ]
        });
        copy_rows(
            &tx,
            "mon_outcomes",
            "time_ms, id, user_id, model, dataset, arm, fallback, converted_10, converted_20, \
             continued_20, first_conversion_ms, first_rank, seen_in_stream",
            &[
                T::INT8,
                T::TEXT,
                T::INT8,
                T::TEXT,
                T::TEXT,
                T::TEXT,
                T::INT2,
                T::INT2,
                T::INT2,
                T::INT2,
                T::INT8,
                T::INT2,
                T::INT2,
            ],
            rows,
        )
        .await?;
    }
    if !batch.matches.is_empty() {
        let rows = batch.matches.iter().map(|m| -> Row {
            vec![
                Box::new(m.time_ms),
                Box::new(m.user as i64),
                Box::new(i32::from(m.status)),
                Box::new(m.latency_ms as i32),
                Box::new(m.served.as_ref().map(|s| s.0.clone())),
                Box::new(m.served.as_ref().map(|s| s.1.clone())),
            ]
        });
        copy_rows(
            &tx,
            "mon_stream_requests",
            "time_ms, user_id, status, latency_ms, model, arm",
            &[T::INT8, T::INT8, T::INT4, T::INT4, T::TEXT, T::TEXT],
            rows,
        )
        .await?;
    }
    for x in &batch.bad {
        tx.execute(
            "INSERT INTO mon_bad(source, part, off, reason, text) VALUES ($1, $2, $3, $4, $5)",
            &[&x.pos.source, &x.pos.part, &x.pos.off, &x.reason, &x.text],
        )
        .await?;
    }
    let r = &batch.rollups;
    if !r.minute.is_empty() {
        let mut minute = Vec::new();
        let mut model = Vec::new();
        let mut arm = Vec::new();
        let mut cols: Vec<Vec<i64>> = vec![Vec::new(); MinuteCounts::COLUMNS.len()];
        for ((m, mo, a), c) in &r.minute {
            minute.push(*m);
            model.push(mo.clone());
            arm.push(a.clone());
            for (i, v) in c.values().iter().enumerate() {
                cols[i].push(*v);
            }
        }
        let names = MinuteCounts::COLUMNS.join(", ");
        let arrays: Vec<String> = (0..MinuteCounts::COLUMNS.len())
            .map(|i| format!("${}::int8[]", i + 4))
            .collect();
        let set: Vec<String> = MinuteCounts::COLUMNS
            .iter()
            .map(|c| format!("{c} = mon_minute.{c} + excluded.{c}"))
            .collect();
        let sql = format!(
            "INSERT INTO mon_minute (minute_ms, model, arm, {names}) \
             SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], {}) \
             ON CONFLICT (minute_ms, model, arm) DO UPDATE SET {}",
            arrays.join(", "),
            set.join(", ")
        );
        let mut p: Vec<&(dyn ToSql + Sync)> = vec![&minute, &model, &arm];
        for c in &cols {
            p.push(c);
        }
        tx.execute(&sql, &p).await?;
    }
    if !r.latency.is_empty() {
        let (mut mi, mut mo, mut ar, mut so, mut le, mut n) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for ((m, model, arm, source, l), k) in &r.latency {
            mi.push(*m);
            mo.push(model.clone());
            ar.push(arm.clone());
            so.push(source.to_string());
            le.push(*l);
            n.push(*k);
        }
        tx.execute(
            "INSERT INTO mon_latency_minute (minute_ms, model, arm, source, le_ms, n)
             SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int8[])
             ON CONFLICT (minute_ms, model, arm, source, le_ms)
             DO UPDATE SET n = mon_latency_minute.n + excluded.n",
            &[&mi, &mo, &ar, &so, &le, &n],
        )
        .await?;
    }
    if !r.items.is_empty() {
        let (mut mi, mut mo, mut mv, mut n) = (vec![], vec![], vec![], vec![]);
        for ((m, model, movie), k) in &r.items {
            mi.push(*m);
            mo.push(model.clone());
            mv.push(movie.clone());
            n.push(*k);
        }
        tx.execute(
            "INSERT INTO mon_item_minute (minute_ms, model, movie, n)
             SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::int8[])
             ON CONFLICT (minute_ms, model, movie) DO UPDATE SET n = mon_item_minute.n + excluded.n",
            &[&mi, &mo, &mv, &n],
        )
        .await?;
    }
    if !r.watched.is_empty() {
        let (mut mi, mut mv, mut n) = (vec![], vec![], vec![]);
        for ((m, movie), k) in &r.watched {
            mi.push(*m);
            mv.push(movie.clone());
            n.push(*k);
        }
        tx.execute(
            "INSERT INTO mon_watch_minute (minute_ms, movie, n)
             SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[])
             ON CONFLICT (minute_ms, movie) DO UPDATE SET n = mon_watch_minute.n + excluded.n",
            &[&mi, &mv, &n],
        )
        .await?;
    }
    tx.execute("DELETE FROM mon_provisional", &[]).await?;
    for p in &batch.provisional {
        tx.execute(
            "INSERT INTO mon_provisional(model, dataset, arm, open, converted_10, converted_20,
                watermark_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &p.model,
                &p.dataset,
                &p.arm,
                &(p.open as i64),
                &(p.converted_10 as i64),
                &(p.converted_20 as i64),
                &batch.checkpoint.marks.watermark,
            ],
        )
        .await?;
    }
    if !batch.offsets.is_empty() {
        let (mut s, mut p, mut o) = (vec![], vec![], vec![]);
        for (source, part, off) in &batch.offsets {
            s.push(source.clone());
            p.push(*part);
            o.push(*off);
        }
        tx.execute(
            "INSERT INTO mon_offsets (source, part, next_offset)
             SELECT * FROM unnest($1::text[], $2::int4[], $3::int8[])
             ON CONFLICT (source, part) DO UPDATE SET next_offset = excluded.next_offset",
            &[&s, &p, &o],
        )
        .await?;
    }
    tx.execute(
        "INSERT INTO mon_checkpoint(id, batch_no, state, updated_ms) VALUES (1, $1, $2, $3)
         ON CONFLICT (id) DO UPDATE SET batch_no = excluded.batch_no,
             state = excluded.state, updated_ms = excluded.updated_ms",
        &[
            &batch.checkpoint.batch_no,
            &checkpoint_json(&batch.checkpoint),
            &batch.checkpoint.marks.watermark,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

fn pg_values(row: &tokio_postgres::Row) -> Vec<Value> {
    (0..row.len())
        .map(|i| {
            let t = row.columns()[i].type_().clone();
            let v = match t {
                Type::INT8 => row.get::<_, Option<i64>>(i).map(Value::Int),
                Type::INT4 => row.get::<_, Option<i32>>(i).map(|x| Value::Int(x.into())),
                Type::INT2 => row.get::<_, Option<i16>>(i).map(|x| Value::Int(x.into())),
                Type::FLOAT8 => row.get::<_, Option<f64>>(i).map(Value::Float),
                Type::FLOAT4 => row.get::<_, Option<f32>>(i).map(|x| Value::Float(x.into())),
                Type::BOOL => row.get::<_, Option<bool>>(i).map(|x| Value::Int(x.into())),
                _ => row
                    .try_get::<_, Option<String>>(i)
                    .ok()
                    .flatten()
                    .map(Value::Text),
            };
            v.unwrap_or(Value::Null)
        })
        .collect()
}

impl Sink for PgSink {
    fn describe(&self) -> String {
        redact(&self.url)
    }

    fn load(&mut self) -> Result<(Checkpoint, Vec<Offset>), MonitorError> {
        let (state, offsets) = self.run(async |c| {
            let state = c
                .query_opt("SELECT state FROM mon_checkpoint WHERE id = 1", &[])
                .await?
                .map(|r| r.get::<_, String>(0));
            let offsets = c
                .query(
                    "SELECT source, part, next_offset FROM mon_offsets ORDER BY source, part",
                    &[],
                )
                .await?
                .iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        r.get::<_, i32>(1),
                        r.get::<_, i64>(2),
                    )
                })
                .collect::<Vec<_>>();
            Ok((state, offsets))
        })?;
        let cp = match state {
            Some(s) => serde_json::from_str(&s).map_err(|e| MonitorError::BadCheckpoint {
                sink: self.describe(),
                reason: e.to_string(),
            })?,
            None => Checkpoint::default(),
        };
        Ok((cp, offsets))
    }

    fn replay(&mut self, from_ms: i64, f: &mut dyn FnMut(Replayed)) -> Result<(), MonitorError> {
        // A cursor, so a long replay never holds all rows in memory.
        self.client()?;
        let PgSink {
            rt, client, url, ..
        } = self;
        let c = client
            .as_mut()
            .ok_or(MonitorError::Runtime("no client".into()))?;
        let res: Result<(), tokio_postgres::Error> = rt.block_on(async {
            let tx = c.transaction().await?;
            tx.execute(
                &format!("DECLARE replay NO SCROLL CURSOR FOR {REPLAY_SQL}"),
                &[&from_ms],
            )
            .await?;
            loop {
                let rows = tx.query("FETCH 20000 FROM replay", &[]).await?;
                if rows.is_empty() {
                    break;
                }
                for r in &rows {
                    if let Some(x) = replayed(&pg_values(r)) {
                        f(x);
                    }
                }
            }
            tx.commit().await
        });
        res.map_err(|e| MonitorError::Postgres {
            url: redact(url),
            source: Box::new(e),
        })
    }

    fn write(&mut self, batch: &Batch) -> Result<bool, MonitorError> {
        let need: Vec<(&'static str, i64)> = if self.timescale {
            Vec::new()
        } else {
            days_needed(batch)
                .into_iter()
                .filter(|d| !self.days.contains(d))
                .collect()
        };
        self.client()?;
        let PgSink { rt, client, .. } = self;
        let c = client
            .as_mut()
            .ok_or(MonitorError::Runtime("no client".into()))?;
        match rt.block_on(write_batch(c, batch, &need)) {
            Ok(done) => {
                self.days.extend(need);
                Ok(done)
            }
            Err(e) => {
                if e.is_closed() || e.as_db_error().is_none() {
                    self.client = None;
                }
                Err(self.err(e))
            }
        }
    }

    fn rows(&mut self, sql: &str, args: &[i64]) -> Result<Vec<Vec<Value>>, MonitorError> {
        let sql = sql.to_string();
        let args = args.to_vec();
        self.run(async move |c| {
            let p: Vec<&(dyn ToSql + Sync)> =
                args.iter().map(|a| a as &(dyn ToSql + Sync)).collect();
            let rows = c.query(&sql, &p).await?;
            Ok(rows.iter().map(pg_values).collect())
        })
    }

    fn announce_running(&mut self) -> Result<(), MonitorError> {
        self.running = true;
        self.run(async |c| c.execute(SET_RUNNING_APP, &[]).await.map(|_| ()))
    }

    fn erase_user(&mut self, user: i64, dry_run: bool) -> Result<UserRows, MonitorError> {
        let db = self.describe();
        let me = self.running;
        let mut out = self.run(async move |c| {
            let tx = c.transaction().await?;
            let others: i64 = tx
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND pid <> pg_backend_pid()
                       AND application_name = $1 || ':' || current_schema()",
                    &[&PG_RUNNING_APP],
                )
                .await?
                .get(0);
            let mut out = UserRows {
                db,
                monitor_running: !me && others > 0,
                ..UserRows::default()
            };
            for t in USER_TABLES {
                let n = if dry_run {
                    let n: i64 = tx
                        .query_one(
                            &format!("SELECT count(*) FROM {t} WHERE user_id = $1"),
                            &[&user],
                        )
                        .await?
                        .get(0);
                    n as u64
                } else {
                    tx.execute(&format!("DELETE FROM {t} WHERE user_id = $1"), &[&user])
                        .await?
                };
                out.tables.insert(t.to_string(), n);
            }
            let bad: Vec<tokio_postgres::Row> = tx
                .query("SELECT ctid::text, text FROM mon_bad", &[])
                .await?;
            let ctids: Vec<String> = bad
                .iter()
                .filter(|r| bad_line_user(r.get::<_, &str>(1)) == Some(user))
                .map(|r| r.get::<_, String>(0))
                .collect();
            out.bad_lines = ctids.len() as u64;
            if !dry_run {
                tx.execute("DELETE FROM mon_bad WHERE ctid::text = ANY($1)", &[&ctids])
                    .await?;
            }
            tx.commit().await?;
            Ok(out)
        })?;
        if !dry_run && out.total() > 0 {
            // Dead tuples keep the bytes until vacuumed (outside a
            // transaction); partitions are vacuumed through their parent.
            let tables = USER_TABLES.join(", ");
            out.scrubbed = self
                .run(async move |c| c.batch_execute(&format!("VACUUM {tables}, mon_bad")).await)
                .is_ok();
        }
        Ok(out)
    }
}

/// Tags this session as the running monitor of its schema.
const SET_RUNNING_APP: &str =
    "SELECT set_config('application_name', 'recsys-monitor:' || current_schema(), false)";

#[cfg(test)]
mod tests {
    #[test]
    fn partition_names_are_utc_days_and_urls_hide_passwords() {
        assert_eq!(super::ymd(0), "19700101");
        assert_eq!(super::ymd(20_455), "20260102");
        assert_eq!(
            super::redact("postgres://me:secret@db:5432/x"),
            "postgres://me:***@db:5432/x"
        );
        assert_eq!(super::redact("postgres://db/x"), "postgres://db/x");
    }
}
