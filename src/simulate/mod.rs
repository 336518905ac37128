//! `recsys simulate`: seeded users that ask a real server for
//! recommendations, react to what they are shown, and write what they do
//! as course-format stream lines.
//!
//! - [`taste`]: the population and its hidden tastes (a reference model
//!   fitted on all of MovieLens 100K, never shown to served models).
//! - [`behaviour`]: what a user does with a list (pure, seeded).
//! - this module: the clock, the HTTP clients and the line sinks.
//!
//! # How time maps
//!
//! A run covers `minutes` of *simulated* time during which users ask for
//! lists; what they started watching goes on after that until they stop
//! (the stream ends with the last session). Simulated time runs `speed`
//! times faster than the wall clock, and so do the stream's timestamps:
//! an event `s` simulated ms after the start is stamped `start_ms + s /
//! speed` and a request due then is sent when the wall clock reaches that
//! instant (so one simulated minute of watching is `60 / speed` seconds
//! apart in the stream). That keeps the stream on the server's clock: the
//! recommendation line carries the server's own answer time (from its
//! `X-Request-Id`), every later line of that user comes after it, and the
//! monitor's join sees the same order the users lived. With `speed` 1 the
//! stream is real time; with `speed` 60 an hour of simulated behaviour
//! takes one minute, and "watched within an hour" is the monitor's
//! `--window 1m`.
//!
//! # Determinism
//!
//! Every user has their own random stream (the seed and the user id), and
//! reacts only to the lists they get: the same seed against a server giving
//! the same answers (at the same times) writes the same lines, however the
//! concurrent clients interleave. Lines leave in time order: a line is
//! written once no request still due or in flight can produce an earlier
//! one.
//!
//! The core reads no environment and prints nothing; the caller gives the
//! start time and the sink.

mod behaviour;
mod taste;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::fs_error::FsError;
use crate::ingest::replay::StreamProducer;
use crate::model::Rng;
use crate::movielens::MovieLens;
use crate::stream::Event;
use behaviour::Act;
use taste::Population;

/// Longest wait for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests in a row that got no answer at all before the run gives up.
const MAX_CONSECUTIVE_FAILURES: u32 = 50;
/// Simulated sessions end at most this long after the request period.
const TAIL_MS: i64 = 4 * 3_600_000;
/// Largest `speed`.
pub const MAX_SPEED: f64 = 3600.0;

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(
        "bad server URL {0:?}: expected http://HOST:PORT (plain HTTP, no path), e.g. http://127.0.0.1:8082"
    )]
    BadUrl(String),
    #[error(
        "cannot reach the recommendation server at {url}: {cause} (is `recsys serve` running there?)"
    )]
    Unreachable { url: String, cause: String },
    #[error(
        "the server at {url} stopped answering: {failures} requests in a row failed (last: {last})"
    )]
    ServerLost {
        url: String,
        failures: u32,
        last: String,
    },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] FsError),
    #[error(transparent)]
    Kafka(#[from] crate::ingest::IngestError),
}

pub type Result<T, E = SimulateError> = std::result::Result<T, E>;

/// Where the stream lines go.
pub trait LineSink {
    /// One line (no newline) of `user`.
    fn line(&mut self, user: u64, line: &str) -> Result<()>;
    /// Everything written is durable / delivered.
    fn finish(&mut self) -> Result<()>;
}

/// Lines into a file, one per line.
pub struct FileSink {
    path: PathBuf,
    w: BufWriter<std::fs::File>,
}

impl FileSink {
    pub fn create(path: &Path) -> Result<FileSink> {
        let f = std::fs::File::create(path).map_err(|e| FsError::new("create", path, e))?;
        Ok(FileSink {
            path: path.to_path_buf(),
            w: BufWriter::new(f),
        })
    }
}

impl LineSink for FileSink {
    fn line(&mut self, _user: u64, line: &str) -> Result<()> {
        let p = &self.path;
        self.w
            .write_all(line.as_bytes())
            .and_then(|()| self.w.write_all(b"\n"))
            .map_err(|e| FsError::new("write", p, e))?;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        let p = &self.path;
        self.w.flush().map_err(|e| FsError::new("write", p, e))?;
        self.w
            .get_ref()
            .sync_data()
            .map_err(|e| FsError::new("sync", p, e))?;
        Ok(())
    }
}

/// Lines to a Kafka topic, keyed by user (the replay producer).
pub struct KafkaSink(StreamProducer);

impl KafkaSink {
    pub fn connect(brokers: &str, topic: &str) -> Result<KafkaSink> {
        Ok(KafkaSink(StreamProducer::connect(
            brokers,
            topic,
            "recsys-simulate",
        )?))
    }
}

impl LineSink for KafkaSink {
    fn line(&mut self, user: u64, line: &str) -> Result<()> {
        Ok(self.0.send(user, line)?)
    }

    fn finish(&mut self) -> Result<()> {
        self.0.finish()?;
        Ok(())
    }
}

/// The server to ask: `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
}

impl Server {
    pub fn parse(url: &str) -> Result<Server> {
        let bad = || SimulateError::BadUrl(crate::text::clip(url).to_string());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(bad());
        }
        let (host, port) = match rest.split_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| bad())?),
            None => (rest, 80),
        };
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Server {
            host: host.to_string(),
            port,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub server: Server,
    pub users: u32,
    /// Simulated minutes during which users ask for lists.
    pub minutes: f64,
    pub seed: u64,
    /// Simulated time per wall-clock time (see the module docs).
    pub speed: f64,
    /// Concurrent HTTP clients (each keeps its connection).
    pub clients: usize,
    /// Unix ms of simulated time 0 (the caller's "now").
    pub start_ms: i64,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimReport {
    pub server: String,
    pub users: u64,
    /// MovieLens users among them (the rest are new to every model).
    pub movielens_users: u64,
    pub new_users: u64,
    pub seed: u64,
    pub minutes: f64,
    pub speed: f64,
    pub requests: u64,
    /// Answers with status 200.
    pub answered: u64,
    /// Requests that failed (another status, or no answer at all).
    pub failed: u64,
    /// Answers from which the user watched a listed movie.
    pub watched_from_list: u64,
    /// ... of which the movie was in the first 10.
    pub watched_from_top10: u64,
    /// Times a user watched something that was not on the list.
    pub watched_off_list: u64,
    pub watch_lines: u64,
    pub ratings: u64,
    pub lines: u64,
    pub start_ms: i64,
    /// Time of the last line written.
    pub end_ms: i64,
    pub wall_ms: u64,
}

/// One request to send.
struct Job {
    person: usize,
    due_ms: i64,
}

/// Its answer.
struct Done {
    person: usize,
    due_ms: i64,
    /// Stream time of the answer (the server's, from the request id).
    time_ms: i64,
    status: u16,
    items: Vec<String>,
    error: Option<String>,
    latency_ms: u32,
    /// No answer at all (connection refused, timeout).
    transport: bool,
}

/// A line waiting to be written: (time, user, per-user sequence).
type Pending = Reverse<(i64, u64, u64, String)>;

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(REQUEST_TIMEOUT))
        .http_status_as_error(false)
        .max_idle_connections_per_host(4)
        .build()
        .into()
}

/// The Unix ms an `X-Request-Id` of ours carries (its first 48 bits).
fn id_time(id: &str) -> Option<i64> {
    let u = uuid::Uuid::parse_str(id.trim()).ok()?;
    if u.get_version_num() != 8 {
        return None;
    }
    i64::try_from(u.as_u128() >> 80).ok()
}

fn ask(agent: &ureq::Agent, base: &str, user: u64) -> (u16, Option<String>, String, bool) {
    let url = format!("{base}/recommend/{user}");
    match agent.get(&url).call() {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let id = resp
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let body = resp
                .body_mut()
                .with_config()
                .limit(1 << 20)
                .read_to_string()
                .unwrap_or_default();
            (status, id, body, false)
        }
        Err(e) => (0, None, e.to_string(), true),
    }
}

/// Check that the server answers at all (`GET /health`).
pub fn check_server(server: &Server) -> Result<()> {
    let url = format!("{}/health", server.url());
    match agent().get(&url).call() {
        Ok(_) => Ok(()),
        Err(e) => Err(SimulateError::Unreachable {
            url: server.url(),
            cause: e.to_string(),
        }),
    }
}

/// Course-format error text: one line, no commas (the list separator).
fn error_text(status: u16, body: &str) -> String {
    let first = body.lines().next().unwrap_or("").trim();
    let t: String = first
        .chars()
        .map(|c| if c == ',' { ';' } else { c })
        .take(200)
        .collect();
    if t.is_empty() {
        format!("HTTP {status}")
    } else {
        t
    }
}

/// Refuse options no run can use.
pub fn validate(o: &SimOptions) -> Result<()> {
    if o.users == 0 {
        return Err(SimulateError::Invalid("--users must be at least 1".into()));
    }
    if !(o.minutes.is_finite() && o.minutes > 0.0) {
        return Err(SimulateError::Invalid(
            "--minutes must be a positive number of simulated minutes".into(),
        ));
    }
    if !(o.speed.is_finite() && o.speed > 0.0 && o.speed <= MAX_SPEED) {
        return Err(SimulateError::Invalid(format!(
            "--speed must be above 0 and at most {MAX_SPEED}"
        )));
    }
    if o.clients == 0 {
        return Err(SimulateError::Invalid(
            "--clients must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Run the simulation against the server, writing lines to `sink`.
pub fn run(ml: &MovieLens, o: &SimOptions, sink: &mut dyn LineSink) -> Result<SimReport> {
    validate(o)?;
    check_server(&o.server)?;
    let pop = Population::build(ml, o.users, o.seed)?;
    let wall0 = Instant::now();
    let period_ms = (o.minutes * 60_000.0) as i64;
    // Simulated ms -> stream ms and back.
    let to_stream = |s: i64| o.start_ms + (s as f64 / o.speed) as i64;
    let to_sim = |t: i64| ((t - o.start_ms) as f64 * o.speed) as i64;
    let n = pop.people.len();
    let mut rngs: Vec<Rng> = pop
        .people
        .iter()
        .map(|p| Rng::new(o.seed ^ p.id.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
        .collect();
    let mut seq = vec![0u64; n];
    let mut due: BinaryHeap<Reverse<(i64, usize)>> = BinaryHeap::new();
    for (i, r) in rngs.iter_mut().enumerate() {
        due.push(Reverse((to_stream(behaviour::arrival(r, period_ms)), i)));
    }
    let mut report = SimReport {
        server: o.server.url(),
        users: n as u64,
        movielens_users: pop.known as u64,
        new_users: (n - pop.known) as u64,
        seed: o.seed,
        minutes: o.minutes,
        speed: o.speed,
        start_ms: o.start_ms,
        end_ms: o.start_ms,
        ..SimReport::default()
    };
    let base = o.server.url();
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    // Moved into the scope: dropped when the dispatcher returns, which
    // ends the clients (the scope waits for them).
    let mut job_tx = Some(job_tx);
    let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
    let (done_tx, done_rx) = mpsc::channel::<Done>();
    let ids: Vec<u64> = pop.people.iter().map(|p| p.id).collect();
    let result = std::thread::scope(|s| -> Result<()> {
        let Some(job_tx) = job_tx.take() else {
            return Ok(());
        };
        for _ in 0..o.clients {
            let (rx, tx, base, ids) = (job_rx.clone(), done_tx.clone(), &base, &ids);
            s.spawn(move || {
                let agent = agent();
                loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let sent = Instant::now();
                    let (status, id, body, transport) = ask(&agent, base, ids[job.person]);
                    let latency_ms = u32::try_from(sent.elapsed().as_millis()).unwrap_or(u32::MAX);
                    let now_ms = o.start_ms + wall0.elapsed().as_millis() as i64;
                    let time_ms = id
                        .as_deref()
                        .and_then(id_time)
                        .unwrap_or(now_ms)
                        .max(job.due_ms);
                    let (items, error) = if status == 200 {
                        (
                            body.trim()
                                .split(',')
                                .map(|x| x.trim().to_string())
                                .filter(|x| !x.is_empty())
                                .collect(),
                            None,
                        )
                    } else {
                        (Vec::new(), Some(error_text(status, &body)))
                    };
                    if tx
                        .send(Done {
                            person: job.person,
                            due_ms: job.due_ms,
                            time_ms,
                            status,
                            items,
                            error,
                            latency_ms,
                            transport,
                        })
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let mut pending: BinaryHeap<Pending> = BinaryHeap::new();
        // Due times of the requests in flight (a multiset).
        let mut in_flight: BTreeMap<i64, usize> = BTreeMap::new();
        let mut in_flight_n = 0usize;
        let mut failures = 0u32;
        let max_in_flight = o.clients * 2;
        let emit = |pending: &mut BinaryHeap<Pending>,
                    upto: i64,
                    report: &mut SimReport,
                    sink: &mut dyn LineSink|
         -> Result<()> {
            while let Some(Reverse((t, _, _, _))) = pending.peek() {
                if *t >= upto {
                    break;
                }
                let Some(Reverse((t, user, _, line))) = pending.pop() else {
                    break;
                };
                sink.line(user, &line)?;
                report.lines += 1;
                report.end_ms = report.end_ms.max(t);
            }
            Ok(())
        };
        loop {
            // Send what is due (paced by the wall clock).
            let now_stream = o.start_ms + wall0.elapsed().as_millis() as i64;
            while in_flight_n < max_in_flight {
                match due.peek() {
                    Some(Reverse((t, _))) if *t <= now_stream => {
                        let Some(Reverse((t, person))) = due.pop() else {
                            break;
                        };
                        *in_flight.entry(t).or_default() += 1;
                        in_flight_n += 1;
                        report.requests += 1;
                        if job_tx.send(Job { person, due_ms: t }).is_err() {
                            return Err(SimulateError::Invalid("the HTTP clients stopped".into()));
                        }
                    }
                    _ => break,
                }
            }
            if in_flight_n == 0 && due.is_empty() {
                break;
            }
            let wait = match due.peek() {
                Some(Reverse((t, _))) if in_flight_n < max_in_flight => {
                    Duration::from_millis((*t - now_stream).clamp(0, 50) as u64)
                }
                _ => Duration::from_millis(50),
            };
            let d = match done_rx.recv_timeout(wait) {
                Ok(d) => d,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(SimulateError::Invalid("the HTTP clients stopped".into()));
                }
            };
            in_flight_n -= 1;
            if let Some(c) = in_flight.get_mut(&d.due_ms) {
                *c -= 1;
                if *c == 0 {
                    in_flight.remove(&d.due_ms);
                }
            }
            let person = &pop.people[d.person];
            let user = person.id;
            let mut push = |t: i64, ev: Event<'_>| {
                let k = seq[d.person];
                seq[d.person] += 1;
                pending.push(Reverse((t, user, k, ev.to_line())));
            };
            push(
                d.time_ms,
                Event::Recommendation {
                    time_ms: d.time_ms,
                    user,
                    host: o.server.host.as_str().into(),
                    port: o.server.port,
                    status: d.status,
                    items: d.items.iter().map(|s| s.as_str().into()).collect(),
                    error: d.error.as_deref().map(Into::into),
                    latency_ms: d.latency_ms,
                },
            );
            if d.transport {
                failures += 1;
                report.failed += 1;
                if failures >= MAX_CONSECUTIVE_FAILURES {
                    return Err(SimulateError::ServerLost {
                        url: base.clone(),
                        failures,
                        last: d.error.unwrap_or_default(),
                    });
                }
                continue;
            }
            failures = 0;
            if d.status != 200 {
                // The user gives up on this service for the run.
                report.failed += 1;
                continue;
            }
            report.answered += 1;
            let items: Vec<Option<u32>> =
                d.items.iter().map(|m| pop.index.get(m).copied()).collect();
            let now_sim = to_sim(d.time_ms);
            let r = behaviour::react(person, &items, &mut rngs[d.person], now_sim, period_ms);
            if let Some(rank) = r.picked_rank {
                report.watched_from_list += 1;
                report.watched_from_top10 += u64::from(rank < 10);
            }
            report.watched_off_list += u64::from(r.off_list);
            for a in &r.acts {
                match *a {
                    Act::Watch { at, item, minute } => {
                        if at > period_ms + TAIL_MS {
                            break;
                        }
                        report.watch_lines += 1;
                        let t = to_stream(at);
                        push(
                            t,
                            Event::Watch {
                                time_ms: t,
                                user,
                                movie: pop.movies[item as usize].as_str().into(),
                                minute,
                            },
                        );
                    }
                    Act::Rate { at, item, rating } => {
                        if at > period_ms + TAIL_MS {
                            break;
                        }
                        report.ratings += 1;
                        let t = to_stream(at);
                        push(
                            t,
                            Event::Rate {
                                time_ms: t,
                                user,
                                movie: pop.movies[item as usize].as_str().into(),
                                rating,
                            },
                        );
                    }
                }
            }
            if let Some(next) = r.next_request {
                due.push(Reverse((to_stream(next).max(d.time_ms + 1), d.person)));
            }
            // Nothing still due or in flight can write before this.
            let safe = due
                .peek()
                .map(|Reverse((t, _))| *t)
                .into_iter()
                .chain(in_flight.keys().next().copied())
                .min()
                .unwrap_or(i64::MAX);
            emit(&mut pending, safe, &mut report, sink)?;
        }
        emit(&mut pending, i64::MAX, &mut report, sink)?;
        Ok(())
    });
    result?;
    sink.finish()?;
    report.wall_ms = wall0.elapsed().as_millis() as u64;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_checked() {
        assert_eq!(
            Server::parse("http://127.0.0.1:8082").expect("ok"),
            Server {
                host: "127.0.0.1".into(),
                port: 8082
            }
        );
        assert_eq!(Server::parse("http://localhost:9/").expect("ok").port, 9);
        assert_eq!(Server::parse("http://example.org").expect("ok").port, 80);
        for bad in [
            "127.0.0.1:8082",
            "https://127.0.0.1:8082",
            "http://",
            "http://h:notaport",
            "http://h:0",
            "http://h:8082/recommend",
            "http://user@h:1",
        ] {
            assert!(
                matches!(Server::parse(bad), Err(SimulateError::BadUrl(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn request_ids_carry_the_answer_time() {
        let t: u128 = 1_767_312_000_123;
        let id = uuid::Uuid::from_u128((t << 80) | (8u128 << 76) | (2u128 << 62) | 5);
        assert_eq!(id_time(&id.hyphenated().to_string()), Some(t as i64));
        assert_eq!(id_time("not-an-id"), None);
    }
}
