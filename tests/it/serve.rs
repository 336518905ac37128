//! Serving: handlers through `oneshot`, a real server on an ephemeral port
//! for reload under load, and the `recsys serve` binary for graceful
//! shutdown, kill -9 and provenance of logged answers.
//!
//! Models are trained with `recsys::model` on small synthetic data and
//! registered through `Workspace::record_run` exactly as `recsys train`
//! registers them (a `train` run whose input is the dataset artifact).

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use recsys::lineage::{ArtifactRef, LineageDb};
use recsys::model::{self, Algo, Header, Interaction, Params};
use recsys::progress::NoProgress;
use recsys::serve::{AppState, ServeOptions, Server, app};
use recsys::workspace::{Kind, Output, RunSpec, Settings, Workspace};
use tower::ServiceExt;

use crate::common::Env;

const USERS: u32 = 60;
const ITEMS: u32 = 40;

fn item_name(i: u32) -> String {
    format!("movie+number+{i}+{}", 1990 + i % 20)
}

/// A project with `dataset_1` (users.csv with attributes), `model_v1` and
/// `model_v2` trained on it, and a config splitting users 1:1.
pub(crate) struct Project {
    pub(crate) env: Env,
}

impl Project {
    pub(crate) fn new() -> Project {
        let env = Env::new();
        let mut users = String::from("user,age,gender,occupation\n");
        let mut events = String::from("time_ms,user,movie,kind,value\n");
        for u in 1..=USERS {
            let gender = if u % 2 == 0 { "F" } else { "M" };
            let occ = if u % 3 == 0 { "student" } else { "engineer" };
            users.push_str(&format!("{u},{},{gender},{occ}\n", 15 + u));
        }
        for (u, i) in interactions() {
            events.push_str(&format!("{},{u},{},rate,4\n", 1000 + u, item_name(i)));
        }
        env.write("data/dataset_1/users.csv", users);
        env.write("data/dataset_1/events.csv", events);
        env.write("data/dataset_1/movies.csv", "movie,title,year,genres\n");
        env.write(
            "data/dataset_1/requests.csv",
            "time_ms,user,status,latency_ms,items\n",
        );
        env.write(
            "data/dataset_1/dataset.json",
            r#"{"format":1,"source":{"import":"synthetic test data"}}"#,
        );
        env.ok(&["add", "data/dataset_1", "--kind", "dataset"]);
        env.commit("dataset");
        let p = Project { env };
        p.train("model_v1", 16, 7);
        p.train("model_v2", 4, 9);
        p.env.commit("models");
        p.write_config(SPLIT_CONFIG);
        p
    }

    pub(crate) fn root(&self) -> &Path {
        &self.env.root
    }

    pub(crate) fn ws(&self) -> Workspace {
        Workspace::discover(self.root(), Settings::default()).expect("open workspace")
    }

    /// Train and register a model version as `recsys train` does.
    pub(crate) fn train(&self, name: &str, factors: u32, seed: u64) {
        let ws = self.ws();
        let ds = ws.find_artifact("dataset_1").expect("dataset_1");
        let data: Vec<Interaction> = interactions()
            .into_iter()
            .map(|(u, i)| Interaction {
                user: u,
                item: i,
                rating: Some(4.0),
                time: 1000 + i64::from(u),
            })
            .collect();
        let mut params = Params::default_for(Algo::Als);
        params.factors = factors;
        params.seed = seed;
        params.reg = 0.5;
        let m = model::train(&data, ITEMS as usize, Algo::Als, &params).expect("train");
        let header = Header {
            dataset_digest: ds.digest.hex(),
            code_commit: "test".into(),
            created: "2026-01-01T00:00:00Z".into(),
            item_names: (0..ITEMS).map(item_name).collect(),
        };
        let mut bytes = Vec::new();
        model::save(&m, &header, &mut bytes).expect("save");
        self.env.write(&format!("models/{name}.bin"), &bytes);
        let mut spec = RunSpec::new("train", 0);
        spec.algorithm = Some("als".into());
        spec.params = serde_json::to_value(&params).expect("params");
        spec.inputs = vec![ArtifactRef {
            digest: ds.digest,
            kind: ds.kind.clone(),
            name: ds.name.clone(),
            size: ds.size,
            files: ds.files,
            path: ds.path.clone(),
        }];
        ws.record_run(
            spec,
            &[Output {
                path: self.root().join(format!("models/{name}.bin")),
                kind: Some(Kind::Model),
                name: Some(name.into()),
            }],
            &NoProgress,
        )
        .expect("record train run");
    }

    pub(crate) fn write_config(&self, text: &str) {
        // A new inode and mtime every time, as an editor's save would give.
        let tmp = self.root().join("config.json.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, self.root().join("config.json")).expect("rename config");
    }

    pub(crate) fn options(&self) -> ServeOptions {
        let mut o = ServeOptions::new(self.root().to_path_buf(), "test-host".into());
        o.poll = Duration::from_millis(100);
        o
    }

    pub(crate) fn start(&self) -> Server {
        Server::start(self.options(), Settings::default()).expect("server starts")
    }

    fn lineage(&self) -> LineageDb {
        LineageDb::open(&self.root().join("lineage.db")).expect("lineage.db")
    }

    /// The model version that answered each logged request id.
    fn logged(&self) -> HashMap<String, String> {
        let db = self.lineage();
        let conn = rusqlite::Connection::open(self.root().join("lineage.db")).expect("open");
        drop(db);
        let mut st = conn
            .prepare("SELECT r.id, s.model FROM requests r JOIN served s ON s.id = r.served")
            .expect("query");
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .map(|r| r.expect("row"))
            .collect()
    }
}

/// Every user rates a deterministic ~quarter of the items; users above
/// `USERS` do not exist.
fn interactions() -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    for u in 1..=USERS {
        for i in 0..ITEMS {
            if (u * 7 + i * 3) % 4 == 0 || (i < 5 && u % 2 == 0) {
                out.push((u, i));
            }
        }
    }
    out
}

pub(crate) const SPLIT_CONFIG: &str = r#"{"salt": "test", "rules": [{"name": "ab", "split": [
    {"model": "model_v1", "weight": 1}, {"model": "model_v2", "weight": 1}]}]}"#;
pub(crate) const ONLY_V2: &str = r#"{"default": "model_v2"}"#;

pub(crate) async fn get(
    state: &Arc<AppState>,
    path: &str,
    id: Option<&str>,
) -> (StatusCode, HashMap<String, String>, String) {
    let mut req = Request::builder().uri(path);
    if let Some(id) = id {
        req = req.header("x-request-id", id);
    }
    let res = app(state.clone())
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = res.status();
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = res.into_body().collect().await.expect("body").to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

pub(crate) fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub(crate) fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recommend_answers_ids_with_a_request_id() {
    let p = Project::new();
    let server = p.start();
    let st = server.state();
    let names: BTreeSet<String> = (0..ITEMS).map(item_name).collect();
    let (status, headers, body) = get(&st, "/recommend/3", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(headers["content-type"].starts_with("text/plain"));
    let id = uuid::Uuid::parse_str(&headers["x-request-id"]).expect("uuid");
    assert_eq!(id.get_version_num(), 8, "a self-describing id");
    let d = recsys::serve::request_id::decode(&id).expect("ours");
    let dep = st.deployment.load_full().expect("deployed");
    assert_eq!(d.config_hex(), dep.config_digest.hex()[..8]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    assert!(
        d.time_ms <= now && now - d.time_ms < 60_000,
        "time-ordered id"
    );
    // Which model answered: the one the split routes user 3 to.
    let (mi, _) = dep.router.route(3, dep.users.get(&3)).expect("routed");
    assert_eq!(d.slot, recsys::serve::request_id::Slot::Model(mi));
    let ids: Vec<&str> = body.trim_end().split(',').collect();
    assert!(!ids.is_empty() && ids.len() <= 20, "{body}");
    assert!(ids.iter().all(|i| names.contains(*i)), "{body}");
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "no repeats"
    );

    // A caller's id is never the answer's (it would not say what
    // answered, and could name two answers): it comes back beside ours.
    let mine = "0190f8b5-5d2e-7cc0-9a1b-8f3c2d4e5f60";
    let (_, h, _) = get(&st, "/recommend/3", Some(mine)).await;
    assert_ne!(h["x-request-id"], mine);
    assert!(recsys::serve::request_id::decode(&h["x-request-id"].parse().expect("uuid")).is_some());
    assert_eq!(h["x-client-request-id"], mine);
    let (_, h, _) = get(&st, "/recommend/3", Some("not-a-uuid;drop-table")).await;
    assert_eq!(h["x-client-request-id"], "not-a-uuid;drop-table");
    let (_, h, _) = get(&st, "/recommend/3", Some(&"x".repeat(129))).await;
    assert!(
        !h.contains_key("x-client-request-id"),
        "too long: not echoed"
    );
    assert!(uuid::Uuid::parse_str(&h["x-request-id"]).is_ok());

    let (status, _, body) = get(&st, "/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("model_v1") && body.contains("model_v2"),
        "{body}"
    );
    let (status, _, _) = get(&st, "/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_user_ids_get_a_one_line_400() {
    let p = Project::new();
    let server = p.start();
    let st = server.state();
    for (raw, why) in [
        ("abc", "not a number"),
        ("-5", "negative"),
        ("1.5", "not a number"),
        ("%20", "not a number"),
        ("99999999999999999999", "out of range"),
    ] {
        let (status, h, body) = get(&st, &format!("/recommend/{raw}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{raw}: {body}");
        assert!(body.contains(why), "{raw}: {body}");
        assert_eq!(body.trim_end().lines().count(), 1, "one line: {body}");
        assert!(h.contains_key("x-request-id"));
    }
    let (_, _, m) = get(&st, "/metrics", None).await;
    assert_eq!(
        metric(&m, "recsys_requests_total", &["status=\"400\""]),
        5.0,
        "{m}"
    );
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_users_get_the_routed_models_popularity_list_counted() {
    let p = Project::new();
    let server = p.start();
    let st = server.state();
    let dep = st.deployment.load_full().expect("loaded");
    let mut fallbacks = 0;
    for user in [100_000u64, 4_294_967_296, 9_223_372_036_854_775_807] {
        let (status, _, body) = get(&st, &format!("/recommend/{user}"), None).await;
        assert_eq!(status, StatusCode::OK);
        let (m, _) = dep.router.route(user, None).expect("routed");
        let want = String::from_utf8_lossy(&dep.models[m].popular_body).into_owned();
        assert_eq!(body, want, "user {user}");
        fallbacks += 1;
    }
    let (_, _, m) = get(&st, "/metrics", None).await;
    assert_eq!(
        metric(&m, "recsys_fallbacks_total", &["reason=\"unknown_user\""]),
        f64::from(fallbacks),
        "{m}"
    );
    assert!(m.contains("recsys_request_duration_seconds_bucket"), "{m}");
    assert!(m.contains("recsys_request_log_dropped_total 0"), "{m}");
    assert_eq!(
        metric(&m, "recsys_requests_total", &["status=\"200\""]),
        3.0
    );
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_routes_each_user_to_one_model_stably() {
    let p = Project::new();
    let server = p.start();
    let st = server.state();
    let mut first: HashMap<u32, String> = HashMap::new();
    for round in 0..2 {
        for u in 1..=USERS {
            let (status, _, body) = get(&st, &format!("/recommend/{u}"), None).await;
            assert_eq!(status, StatusCode::OK);
            if round == 0 {
                first.insert(u, body);
            } else {
                assert_eq!(first[&u], body, "user {u} answered differently");
            }
        }
    }
    let st2 = st.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(l) = &st2.log {
            l.flush()
        }
    })
    .await
    .expect("flush");
    let logged = p.logged();
    assert_eq!(logged.len(), 2 * USERS as usize);
    let v1 = logged.values().filter(|m| *m == "model_v1").count();
    assert!(
        (30..=90).contains(&v1),
        "model_v1 served {v1} of {}",
        logged.len()
    );
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_missing_model_and_digest_mismatch_keep_the_last_good() {
    let p = Project::new();
    let server = p.start();
    let st = server.state();
    let failures = |m: &str| metric(m, "recsys_config_reloads_total", &["result=\"failure\""]);
    let good = st.deployment.load_full().expect("loaded").config_digest;

    type Breaker = Box<dyn Fn(&Project)>;
    // (what, a phrase of the error /health must show, how to break it)
    let cases: [(&str, &str, Breaker); 4] = [
        (
            "invalid JSON",
            "not valid JSON",
            Box::new(|p| p.write_config("{\"default\": ")),
        ),
        (
            "unknown field",
            "$.colour: unknown field",
            Box::new(|p| p.write_config(r#"{"default": "model_v1", "colour": "red"}"#)),
        ),
        (
            "missing model",
            "model model_v9 is not registered",
            Box::new(|p| p.write_config(r#"{"default": "model_v9"}"#)),
        ),
        (
            "digest mismatch",
            "but model_v2 is registered as",
            Box::new(|p| {
                p.write_config(SPLIT_CONFIG);
                let v1 = p.env.read("models/model_v1.bin");
                std::fs::write(p.root().join("models/model_v2.bin"), v1).expect("overwrite");
            }),
        ),
    ];
    for (n, (what, phrase, break_it)) in cases.iter().enumerate() {
        break_it(&p);
        let st2 = st.clone();
        let want = (n + 1) as f64;
        let label = format!("a failed reload after: {what}");
        let owned = phrase.to_string();
        // The server polls every 100 ms; 10 s leaves room for a loaded CI.
        tokio::task::spawn_blocking(move || {
            wait_for(&label, Duration::from_secs(10), || {
                failures(&st2.metrics.encode()) >= want
                    && st2
                        .reload
                        .load()
                        .error
                        .as_deref()
                        .is_some_and(|e| e.contains(&owned))
            })
        })
        .await
        .expect("wait");
        let (_, _, health) = get(&st, "/health", None).await;
        assert!(health.starts_with("stale"), "{what}: {health}");
        assert!(health.contains("last_reload: failed\n"), "{what}: {health}");
        assert!(health.contains(*phrase), "{what}: {health}");
        let (status, _, body) = get(&st, "/recommend/5", None).await;
        assert_eq!(status, StatusCode::OK, "{what}: {body}");
        let d = st.deployment.load_full().expect("still loaded");
        assert_eq!(d.config_digest, good, "{what}: still the last good config");
        let (status, _, _) = get(&st, "/health", None).await;
        assert_eq!(status, StatusCode::OK, "{what}");
    }
    // Repair the model file and switch to model_v2 only: picked up.
    let v2 = p.ws().find_artifact("model_v2").expect("v2");
    let obj = p.ws().store.object_path(&v2.digest);
    let tmp = p.root().join("models/model_v2.bin.tmp");
    std::fs::copy(obj, &tmp).expect("restore");
    std::fs::rename(&tmp, p.root().join("models/model_v2.bin")).expect("restore");
    p.write_config(ONLY_V2);
    let st2 = st.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("the good config", Duration::from_secs(5), || {
            // Swapped, then recorded: wait for both.
            st2.deployment
                .load_full()
                .is_some_and(|d| d.model_names() == ["model_v2"])
                && st2.reload.load_full().ok
        })
    })
    .await
    .expect("wait");
    let (_, _, m) = get(&st, "/metrics", None).await;
    // A failed load is retried every poll until it succeeds.
    assert!(failures(&m) >= 4.0, "{m}");
    assert_eq!(metric(&m, "recsys_config_reload_ok", &[]), 1.0, "{m}");
    let (_, _, health) = get(&st, "/health", None).await;
    assert!(health.starts_with("ok: "), "{health}");
    assert!(health.contains("last_reload: ok\n"), "{health}");
    assert!(metric(&m, "recsys_config_reloads_total", &["result=\"success\""]) >= 1.0);
    // The config that now serves traffic is a store object.
    let d = st.deployment.load_full().expect("loaded");
    assert!(p.ws().store.object_path(&d.config_digest).is_file());
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_queue_drops_counted_and_never_blocks_an_answer() {
    let p = Project::new();
    let mut o = p.options();
    if let Some(l) = &mut o.log {
        l.queue = 2;
        l.batch_wait = Duration::ZERO;
        l.batch_max = 1;
        l.index_wait = Duration::ZERO;
    }
    let server = Server::start(o, Settings::default()).expect("start");
    let st = server.state();
    // Another writer holds lineage.db: the log writer stalls on its first
    // batch and the queue fills.
    let blocker = rusqlite::Connection::open(p.root().join("lineage.db")).expect("open");
    blocker.execute_batch("BEGIN IMMEDIATE").expect("lock");
    let start = Instant::now();
    for u in 0..200 {
        let (status, _, _) = get(&st, &format!("/recommend/{}", u % 70), None).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "answers did not wait for the log"
    );
    let (_, _, m) = get(&st, "/metrics", None).await;
    let dropped = metric(&m, "recsys_request_log_dropped_total", &[]);
    assert!(dropped >= 150.0, "dropped {dropped}: {m}");
    blocker.execute_batch("COMMIT").expect("unlock");
    drop(blocker);
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .expect("stop");
    // The drop is noted in the durable log too.
    let bytes = the_closed_segment(&p);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("{\"recsys_log_segment\":"), "{text}");
    assert!(text.contains("{\"recsys_log_dropped\":"), "{text}");
}

/// A minimal HTTP/1.1 keep-alive client, so timings include nothing else.
pub(crate) struct Client {
    pub(crate) r: BufReader<TcpStream>,
}

impl Client {
    pub(crate) fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Client {
            r: BufReader::new(s),
        }
    }

    pub(crate) fn get(
        &mut self,
        path: &str,
    ) -> std::io::Result<(u16, HashMap<String, String>, String)> {
        write!(
            self.r.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n"
        )?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = HashMap::new();
        loop {
            line.clear();
            self.r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.r.read_exact(&mut body)?;
        Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
    }
}

#[test]
fn reload_under_load_fails_and_slows_no_request() {
    let p = Project::new();
    let server = p.start();
    let st = server.state();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = rt.spawn(server.run(listener, async {
        let _ = stop_rx.await;
    }));

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4u32 {
        let stop = stop.clone();
        clients.push(std::thread::spawn(move || {
            let mut cl = Client::connect(port);
            let (mut ok, mut bad, mut worst) = (0u32, Vec::new(), Duration::ZERO);
            let mut n = c;
            while !stop.load(Ordering::Relaxed) {
                n = (n + 7) % 80;
                let t = Instant::now();
                match cl.get(&format!("/recommend/{n}")) {
                    Ok((200, _, body)) if !body.is_empty() => ok += 1,
                    other => bad.push(format!("{other:?}")),
                }
                worst = worst.max(t.elapsed());
            }
            (ok, bad, worst)
        }));
    }
    let reloads = |s: &AppState| {
        metric(
            &s.metrics.encode(),
            "recsys_config_reloads_total",
            &["result=\"success\""],
        )
    };
    for (i, cfg) in [ONLY_V2, SPLIT_CONFIG, ONLY_V2, SPLIT_CONFIG]
        .iter()
        .enumerate()
    {
        std::thread::sleep(Duration::from_millis(300));
        p.write_config(cfg);
        wait_for("a reload", Duration::from_secs(5), || {
            reloads(&st) >= (i + 1) as f64
        });
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        let (ok, bad, worst) = c.join().expect("client");
        assert!(bad.is_empty(), "failed requests during reload: {bad:?}");
        assert!(
            worst < Duration::from_millis(600),
            "slowest answer {worst:?}"
        );
        total += ok;
    }
    assert!(total > 100, "only {total} requests");
    let _ = stop_tx.send(());
    rt.block_on(serving).expect("join").expect("serve");
    assert_eq!(
        metric(
            &st.metrics.encode(),
            "recsys_config_reloads_total",
            &["result=\"failure\""]
        ),
        0.0
    );
}

/// `recsys serve --port 0` as a child process, with the URL it printed.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) port: u16,
    /// Kept open: the server prints again when it stops.
    pub(crate) _out: BufReader<std::process::ChildStdout>,
}

pub(crate) fn spawn_server(p: &Project, extra: &[&str]) -> Running {
    spawn_server_with(p, extra, Stdio::null())
}

pub(crate) fn spawn_server_with(p: &Project, extra: &[&str], stderr: Stdio) -> Running {
    let mut args = vec!["serve", "--port", "0", "--poll-ms", "200"];
    args.extend_from_slice(extra);
    let mut child = p
        .env
        .cmd(&args)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn recsys serve");
    let (port, out) = crate::common::served_port(&mut child, "");
    Running {
        child,
        port,
        _out: out,
    }
}

pub(crate) fn signal(child: &Child, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
}

/// The bytes of the project's one request-log segment, closed into the store.
fn the_closed_segment(p: &Project) -> Vec<u8> {
    let segs = p.lineage().segments().expect("segments");
    assert_eq!(segs.len(), 1, "{segs:?}");
    let d: recsys::store::Digest = segs[0]
        .digest
        .as_deref()
        .expect("closed")
        .parse()
        .expect("digest");
    std::fs::read(p.ws().store.object_path(&d)).expect("segment object")
}

fn open_segments(root: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(root.join("log/requests")) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".jsonl"))
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn sigterm_finishes_requests_and_flushes_the_log_then_lineage_explains_them() {
    let p = Project::new();
    let mut s = spawn_server(&p, &[]);
    let mut c = Client::connect(s.port);
    let mut ids = Vec::new();
    for u in 1..=30 {
        let (status, h, _) = c.get(&format!("/recommend/{u}")).expect("get");
        assert_eq!(status, 200);
        ids.push(h["x-request-id"].clone());
    }
    signal(&s.child, "-TERM");
    let st = s.child.wait().expect("wait");
    assert!(st.success(), "exit {st:?}");
    assert!(open_segments(p.root()).is_empty(), "segment left open");
    let db = p.lineage();
    for id in &ids {
        assert_eq!(db.requests_by_id(id).expect("query").len(), 1, "{id}");
    }
    let segs = db.segments().expect("segments");
    assert_eq!(segs.len(), 1);
    assert!(segs[0].digest.is_some(), "closed into the store");

    // Provenance of one answer.
    let v = p.env.json(&["lineage", &ids[0], "--json"]);
    let model = v["request"]["model"].as_str().expect("model").to_string();
    assert!(model == "model_v1" || model == "model_v2");
    assert_eq!(v["request"]["dataset"], "dataset_1");
    assert_eq!(v["model"]["run"]["kind"], "train");
    assert_eq!(v["model"]["run"]["algorithm"], "als");
    assert!(v["model"]["run"]["params"]["factors"].is_number());
    assert_eq!(v["dataset"]["run"]["source"]["path"], "data/dataset_1");
    let restore: Vec<&str> = v["restore"]
        .as_array()
        .expect("restore")
        .iter()
        .filter_map(|x| x.as_str())
        .collect();
    assert!(
        restore
            .iter()
            .any(|c| *c == format!("recsys checkout {model}")),
        "{restore:?}"
    );
    assert!(
        restore.contains(&"recsys checkout dataset_1"),
        "{restore:?}"
    );
    let text = p.env.ok(&["lineage", &ids[0]]);
    assert!(text.contains("algorithm:  als"), "{text}");

    // By user and time, as seen in the event stream (ISO-8601, no zone).
    let t = v["request"]["time"].as_i64().expect("time");
    let at = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(t as u64 + 40),
    )
    .to_string();
    let at = at.trim_end_matches('Z');
    let user = v["request"]["user"].to_string();
    let near = p
        .env
        .json(&["lineage", "--user", &user, "--at", at, "--json"]);
    assert_eq!(near["request"]["user"], v["request"]["user"]);
    p.env.fails(1, &["lineage", "--user", "999", "--at", at]);

    // The audit is clean, and notices a logged model going missing.
    p.env.ok(&["audit"]);
    let art = p.ws().find_artifact(&model).expect("model");
    std::fs::remove_file(p.ws().store.object_path(&art.digest)).expect("rm");
    let out = p.env.run(&["audit"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("request-missing-model"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn kill_9_mid_batch_loses_at_most_the_last_batch() {
    let p = Project::new();
    let mut s = spawn_server(&p, &[]);
    let port = s.port;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let load = std::thread::spawn(move || {
        let mut c = Client::connect(port);
        let mut answered: Vec<(String, Instant)> = Vec::new();
        let mut u = 0;
        while !stop2.load(Ordering::Relaxed) {
            u = (u + 1) % 70;
            match c.get(&format!("/recommend/{u}")) {
                Ok((200, h, _)) => answered.push((h["x-request-id"].clone(), Instant::now())),
                _ => break,
            }
            // Steady traffic, not an overload: under overload the bounded
            // queue, not the batch, limits what a crash can lose (and a
            // full queue drops, counted — tested above).
            std::thread::sleep(Duration::from_micros(300));
        }
        answered
    });
    std::thread::sleep(Duration::from_millis(2500));
    signal(&s.child, "-KILL");
    let killed = Instant::now();
    let _ = s.child.wait();
    stop.store(true, Ordering::Relaxed);
    let answered = load.join().expect("load");
    assert!(answered.len() > 100, "only {} answers", answered.len());
    assert_eq!(
        open_segments(p.root()).len(),
        1,
        "the open segment survives"
    );

    // The next start recovers it: cut, re-indexed, stored.
    let mut s2 = spawn_server(&p, &[]);
    assert!(open_segments(p.root()).len() <= 1);
    signal(&s2.child, "-TERM");
    assert!(s2.child.wait().expect("wait").success());
    assert!(open_segments(p.root()).is_empty());
    let logged = p.logged();
    // Everything answered a flush interval (and an fsync) before the kill
    // is durable; only the batch in flight may be lost.
    let old_enough = killed - Duration::from_millis(1000);
    let lost: Vec<&String> = answered
        .iter()
        .filter(|(id, at)| *at < old_enough && !logged.contains_key(id))
        .map(|(id, _)| id)
        .collect();
    assert!(
        lost.is_empty(),
        "{} durable answers lost of {} (logged {}, segments {:?})",
        lost.len(),
        answered.len(),
        logged.len(),
        p.lineage().segments()
    );
    let recent_lost = answered
        .iter()
        .filter(|(id, _)| !logged.contains_key(id))
        .count();
    assert!(recent_lost < answered.len() / 2, "lost {recent_lost}");
    p.env.ok(&["audit"]);
}

#[test]
fn segments_travel_by_push_and_pull_and_explain_answers_elsewhere() {
    let p = Project::new();
    let mut s = spawn_server(&p, &[]);
    let mut c = Client::connect(s.port);
    let (_, h, _) = c.get("/recommend/7").expect("get");
    let id = h["x-request-id"].clone();
    signal(&s.child, "-TERM");
    assert!(s.child.wait().expect("wait").success());
    let here = p.env.json(&["lineage", &id, "--json"]);

    let remote = p.env.tmp.path().join("remote");
    p.env.ok(&[
        "remote",
        "add",
        "origin",
        remote.to_str().expect("utf-8"),
        "--default",
    ]);
    p.env.commit("remote");
    p.env.ok(&["push"]);

    // Another machine: a clone of the repository, then pull.
    let other = p.env.tmp.path().join("other");
    let o = crate::common::git_cmd(p.env.tmp.path())
        .args(["clone", "-q"])
        .arg(p.root())
        .arg(&other)
        .output()
        .expect("git clone");
    assert!(o.status.success());
    let other_env = Env {
        tmp: tempfile::tempdir().expect("tmp"),
        root: std::fs::canonicalize(&other).expect("canon"),
    };
    other_env.ok(&["init"]);
    other_env.ok(&["pull"]);
    let there = other_env.json(&["lineage", &id, "--json"]);
    assert_eq!(here["request"], there["request"]);
    assert_eq!(here["model"]["run"]["id"], there["model"]["run"]["id"]);
    assert_eq!(here["dataset"]["artifact"], there["dataset"]["artifact"]);
    other_env.ok(&["audit"]);
}

#[test]
fn config_check_reports_every_problem_with_its_path() {
    let p = Project::new();
    let out = p.env.ok(&["config", "check"]);
    assert!(out.contains("ok"), "{out}");
    p.env.write(
        "bad.json",
        r#"{"salt": 1, "rules": [
            {"name": "r", "when": {"age": {"min": 50, "max": 10}}, "model": "model_v1"},
            {"name": "r", "split": [{"model": "model_v7", "weight": 0}]}]}"#,
    );
    let o = p.env.run(&["config", "check", "bad.json"]);
    assert_eq!(o.status.code(), Some(1));
    let text = String::from_utf8_lossy(&o.stdout);
    for path in [
        "$.salt:",
        "$.rules[0].when.age:",
        "$.rules[1].name:",
        "$.rules[1].split[0].weight:",
    ] {
        assert!(text.contains(path), "{path} missing:\n{text}");
    }
    p.env.write("unknown.json", r#"{"default": "model_v7"}"#);
    let o = p.env.run(&["config", "check", "unknown.json", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["problems"][0]["path"], "$.default");
    assert!(
        v["problems"][0]["message"]
            .as_str()
            .unwrap_or("")
            .contains("not registered")
    );
}

#[test]
fn the_shipped_config_splits_model_v1_and_model_v2() {
    // Read at run time: a compile-time path would point into whichever
    // clone first built this test in a shared target directory.
    let root = std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR");
    let shipped = std::fs::read(std::path::Path::new(&root).join("config.json"))
        .expect("config.json at the repository root");
    let cfg = recsys::serve::parse_config(&shipped).expect("valid");
    assert_eq!(cfg.models(), vec!["model_v1", "model_v2"]);
    let router = recsys::serve::config::Router::compile(&cfg, |m| match m {
        "model_v1" => Some(0),
        "model_v2" => Some(1),
        _ => None,
    })
    .expect("compiles");
    let v1 = (1..=10_000u64)
        .filter(|u| router.route(*u, None).map(|r| r.0) == Some(0))
        .count();
    assert!((4_800..=5_200).contains(&v1), "model_v1 gets {v1} of 10000");
}

/// Every message of `topic` (all partitions, from the start) as
/// (key, payload), until `n` arrived or `limit` passed.
fn consume_all(brokers: &str, topic: &str, n: usize, limit: Duration) -> Vec<(String, String)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    let c: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "serve-test")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = rdkafka::TopicPartitionList::new();
    for part in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, part.id(), rdkafka::Offset::Beginning)
            .expect("partition");
    }
    c.assign(&tpl).expect("assign");
    let start = Instant::now();
    let mut out = Vec::new();
    while out.len() < n && start.elapsed() < limit {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("message");
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let payload = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            out.push((key, payload));
        }
    }
    out
}

#[test]
fn the_request_log_is_copied_to_a_kafka_topic_keyed_by_user() {
    let cluster = rdkafka::mocking::MockCluster::new(1).expect("mock cluster");
    cluster.create_topic("requests", 2, 1).expect("topic");
    let brokers = cluster.bootstrap_servers();
    let p = Project::new();
    let mut s = spawn_server(
        &p,
        &["--log-kafka", &brokers, "--log-kafka-topic", "requests"],
    );
    let mut c = Client::connect(s.port);
    let mut sent: HashMap<String, u64> = HashMap::new();
    for u in 1..=25u64 {
        let (status, h, _) = c.get(&format!("/recommend/{u}")).expect("get");
        assert_eq!(status, 200);
        sent.insert(h["x-request-id"].clone(), u);
    }
    // Delivery is counted in /metrics.
    wait_for("25 deliveries", Duration::from_secs(20), || {
        let (_, _, m) = c.get("/metrics").expect("metrics");
        metric(&m, "recsys_request_log_kafka_delivered_total", &[]) == 25.0
    });
    signal(&s.child, "-TERM");
    assert!(s.child.wait().expect("wait").success());

    let got = consume_all(&brokers, "requests", 25, Duration::from_secs(30));
    assert_eq!(got.len(), 25, "{got:?}");
    // Each message is the request the segment logged, keyed by user.
    let segment = the_closed_segment(&p);
    let logged = recsys::segment::parse_segment("segment", &segment).expect("parse");
    assert_eq!(logged.bad_lines, 0);
    for (key, payload) in &got {
        let v: serde_json::Value = serde_json::from_str(payload).expect("JSON line");
        let id = v["id"].as_str().expect("id");
        assert_eq!(key, &sent[id].to_string(), "key is the user id");
        assert_eq!(v["user"], sent[id]);
        // Self-contained (served-by inline), and the same request as the
        // local log's line.
        let record: recsys::segment::RequestRecord =
            serde_json::from_str(payload).expect("a request record");
        assert!(
            logged.records.contains(&record),
            "the local log has the same request: {payload}"
        );
        assert!(v["model_digest"].as_str().is_some_and(|s| s.len() == 64));
    }
    let ids: BTreeSet<String> = got
        .iter()
        .map(|(_, p)| {
            serde_json::from_str::<serde_json::Value>(p).expect("json")["id"]
                .as_str()
                .expect("id")
                .to_string()
        })
        .collect();
    assert_eq!(ids, sent.keys().cloned().collect::<BTreeSet<_>>());
}

#[test]
fn an_unreachable_kafka_loses_nothing_locally_and_is_reported() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let p = Project::new();
    let err = p.root().join("serve.err");
    let broker = format!("127.0.0.1:{port}");
    let mut s = spawn_server_with(
        &p,
        &["--log-kafka", &broker],
        std::fs::File::create(&err).expect("stderr file").into(),
    );
    let mut c = Client::connect(s.port);
    let mut ids = Vec::new();
    let start = Instant::now();
    for u in 1..=20 {
        let (status, h, _) = c.get(&format!("/recommend/{u}")).expect("get");
        assert_eq!(status, 200);
        ids.push(h["x-request-id"].clone());
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "answers waited for Kafka"
    );
    signal(&s.child, "-TERM");
    assert!(s.child.wait().expect("wait").success());
    let db = p.lineage();
    for id in &ids {
        assert_eq!(
            db.requests_by_id(id).expect("query").len(),
            1,
            "{id} kept locally"
        );
    }
    let text = std::fs::read_to_string(&err).expect("stderr");
    assert!(
        text.contains("not copied to Kafka") && text.contains("the local log has them"),
        "{text}"
    );
}

#[test]
fn log_kafka_flags_are_checked() {
    let p = Project::new();
    let out = p.env.run(&["serve", "--log-kafka-topic", "t"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-kafka"));
    let out = p
        .env
        .run(&["serve", "--no-log", "--log-kafka", "localhost:9092"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
}
