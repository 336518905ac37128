//! `recsys simulate` against a real `recsys serve` on MovieLens 100K: a
//! better model gets more conversions than a worse one by the monitor's
//! join on the simulated stream; the same seed makes the same choices; bad
//! input is a clear error; and, end to end, an experiment served to
//! simulated users with the monitor running reports arms and numbers that
//! a recomputation from the raw stream matches.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Stdio};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use recsys::serve::config::{self, Router};
use recsys::stream::{Event, parse_line};

use crate::common::{Env, ml100k, serve};

/// Simulated time per wall time in these tests: 10 simulated minutes of
/// requests take 5 s, an hour of watching 30 s of stream.
pub(crate) const SPEED: &str = "120";
/// The monitor's window, lateness and lookback at that speed (1 h, 5 min,
/// 30 min of simulated time).
const WINDOW_MS: i64 = 30_000;
const LOOKBACK_MS: i64 = 15_000;
pub(crate) const MONITOR_TIMES: [&str; 6] = [
    "--window",
    "30s",
    "--allowed-lateness",
    "2500ms",
    "--lookback",
    "15s",
];

/// A project with MovieLens 100K as dataset_1, ALS model_v1 and
/// popularity model_v2, config.json serving model_v1.
pub(crate) fn ml_project() -> Env {
    let env = Env::new();
    env.ok(&["import", "movielens", &ml100k()]);
    env.ok(&["train", "--dataset", "dataset_1", "--algo", "als"]);
    env.ok(&["train", "--dataset", "dataset_1", "--algo", "popularity"]);
    env.write("config.json", r#"{"salt": "sim", "default": "model_v1"}"#);
    env
}

pub(crate) fn cluster(topic: &str) -> (MockCluster<'static, DefaultProducerContext>, String) {
    let c = MockCluster::new(1).expect("mock cluster");
    c.create_topic(topic, 1, 1).expect("create topic");
    let b = c.bootstrap_servers();
    (c, b)
}

/// `recsys simulate` with the test speed; returns its JSON summary.
pub(crate) fn simulate(
    env: &Env,
    port: u16,
    users: u32,
    seed: u64,
    sink: &[&str],
) -> serde_json::Value {
    let server = format!("http://127.0.0.1:{port}");
    let (users, seed) = (users.to_string(), seed.to_string());
    let ml = ml100k();
    let mut args = vec![
        "simulate",
        "--server",
        &server,
        "--users",
        &users,
        "--minutes",
        "10",
        "--seed",
        &seed,
        "--speed",
        SPEED,
        "--movielens",
        &ml,
        "--json",
    ];
    args.extend_from_slice(sink);
    env.json(&args)
}

/// `recsys monitor` arguments: the stream topic and the project's request
/// log, at the tests' speed.
fn monitor_args(env: &Env, brokers: &str, topic: &str) -> Vec<String> {
    let root = env.root.to_str().expect("utf-8");
    let mut args: Vec<String> = [
        "monitor",
        "--brokers",
        brokers,
        "--topic",
        topic,
        "--requests-from",
        root,
        "--idle",
        "1s",
        "--batch-every",
        "100ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(MONITOR_TIMES.iter().map(|s| s.to_string()));
    args
}

/// Run the monitor over the stream topic and the project's request log
/// until both are idle.
pub(crate) fn monitor_until_idle(env: &Env, brokers: &str, topic: &str) {
    let mut args = monitor_args(env, brokers, topic);
    args.push("--stop-when-idle".into());
    env.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// Produce stream lines (keyed by user) to `topic`.
fn produce(brokers: &str, topic: &str, lines: &[String]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer");
    for l in lines {
        let user = l.split(',').nth(1).unwrap_or("0").to_string();
        let rec: BaseRecord<'_, str, str> =
            BaseRecord::to(topic).key(user.as_str()).payload(l.as_str());
        let mut rec = rec;
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    p.poll(Duration::from_millis(10));
                    rec = r;
                }
            }
        }
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(60)).expect("flush");
}

fn conversion(group: &serde_json::Value) -> (f64, f64) {
    let answers =
        group["answers"].as_f64().expect("answers") - group["provisional"].as_f64().unwrap_or(0.0);
    (
        group["converted_10"].as_f64().expect("converted_10"),
        answers,
    )
}

#[test]
fn a_better_model_gets_more_conversions_from_simulated_users() {
    let env = ml_project();
    // Half the users get ALS, half popularity (salted hash split).
    env.write(
        "config.json",
        r#"{"salt": "sim", "default": "model_v1", "rules": [{"name": "ab", "split": [{"model": "model_v1", "weight": 1}, {"model": "model_v2", "weight": 1}]}]}"#,
    );
    let server = serve(&env);
    let (_cluster, brokers) = cluster("movielog1");
    let sum = simulate(
        &env,
        server.port,
        900,
        7,
        &["--brokers", &brokers, "--topic", "movielog1"],
    );
    assert_eq!(sum["users"], 900);
    assert_eq!(sum["failed"], 0, "{sum}");
    assert!(sum["answered"].as_u64().is_some_and(|a| a >= 900), "{sum}");
    assert!(
        sum["watch_lines"].as_u64().is_some_and(|w| w > 1000),
        "{sum}"
    );
    assert!(sum["ratings"].as_u64().is_some_and(|r| r > 50), "{sum}");
    assert!(
        sum["watched_off_list"].as_u64().is_some_and(|r| r > 0),
        "{sum}"
    );
    server.stop();
    monitor_until_idle(&env, &brokers, "movielog1");
    let rep = env.json(&["monitor", "report", "--since", "24h", "--json"]);
    let by = rep["by_model"].as_array().expect("by_model");
    let get = |m: &str| {
        by.iter()
            .find(|g| g["model"] == m)
            .unwrap_or_else(|| panic!("no {m} in {rep}"))
    };
    let (als, pop) = (get("model_v1"), get("model_v2"));
    assert_eq!(als["provisional"], 0, "every window closed: {als}");
    let (ca, na) = conversion(als);
    let (cp, np) = (conversion(pop).0, conversion(pop).1);
    let (ra, rp) = (ca / na, cp / np);
    // Two-proportion z on answers, one-sided at 1 %: ALS beats popularity
    // by 9-13 points here (z 2.8-3.6 at 600 users; 3.1-3.3 at 900), while
    // two equal models give z around 0.
    let p = (ca + cp) / (na + np);
    let z = (ra - rp) / (p * (1.0 - p) * (1.0 / na + 1.0 / np)).sqrt();
    assert!(
        z > 2.33,
        "ALS {ca}/{na} = {ra:.3} vs popularity {cp}/{np} = {rp:.3}: z = {z:.2}"
    );
    eprintln!("conversion@10: ALS {ra:.3} ({ca}/{na}), popularity {rp:.3} ({cp}/{np}), z {z:.1}");
}

/// (user, what they did) in order, without times and latencies.
fn choices(text: &str) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for l in text.lines() {
        let e = parse_line(l).unwrap_or_else(|e| panic!("unparsable line {l:?}: {e:?}"));
        let what = match &e {
            Event::Watch { movie, minute, .. } => format!("w {movie} {minute}"),
            Event::Rate { movie, rating, .. } => format!("r {movie} {rating}"),
            Event::Recommendation { status, items, .. } => format!("q {status} {}", items.len()),
        };
        out.entry(e.user()).or_default().push(what);
    }
    out
}

#[test]
fn the_same_seed_makes_the_same_choices_and_bad_input_is_a_clear_error() {
    let env = ml_project();
    // Popularity for everyone: the answers do not depend on when they come.
    env.write("config.json", r#"{"default": "model_v2"}"#);
    let server = serve(&env);
    let (a, b, c) = (
        env.tmp.path().join("a.txt"),
        env.tmp.path().join("b.txt"),
        env.tmp.path().join("c.txt"),
    );
    let s = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();
    let first = simulate(&env, server.port, 80, 3, &["--out", &s(&a)]);
    simulate(&env, server.port, 80, 3, &["--out", &s(&b)]);
    simulate(&env, server.port, 80, 4, &["--out", &s(&c)]);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).expect("stream file");
    let (ta, tb, tc) = (read(&a), read(&b), read(&c));
    assert_eq!(
        ta.lines().count() as u64,
        first["lines"].as_u64().expect("lines")
    );
    // Course-format lines in time order, recommendation lines naming the server.
    let times: Vec<i64> = ta
        .lines()
        .map(|l| parse_line(l).expect("parses").time_ms())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "lines in time order"
    );
    let rec = ta
        .lines()
        .find(|l| l.contains("recommendation request"))
        .expect("a recommendation line");
    assert!(
        rec.contains(&format!(
            "recommendation request 127.0.0.1:{}, status 200, result: ",
            server.port
        )),
        "{rec}"
    );
    assert!(
        ta.lines()
            .any(|l| l.contains(",GET /data/m/") && l.ends_with(".mpg"))
    );
    assert!(ta.lines().any(|l| l.contains(",GET /rate/")));
    // Same seed, same answers: the same choices, user by user. Events are
    // timed from the server's answers, so on a loaded machine a user's
    // last request can fall past the end in one run and not the other:
    // each user's choices are a prefix of the other run's, and nearly all
    // are shared.
    let (ca, cb) = (choices(&ta), choices(&tb));
    assert_eq!(
        ca.keys().collect::<Vec<_>>(),
        cb.keys().collect::<Vec<_>>(),
        "same seed, same users"
    );
    let (mut shared, mut total) = (0, 0);
    for (u, x) in &ca {
        let y = &cb[u];
        let n = x.len().min(y.len());
        assert_eq!(x[..n], y[..n], "user {u}: same seed, other choices");
        shared += n;
        total += x.len().max(y.len());
    }
    assert!(
        shared * 10 >= total * 9,
        "{shared} of {total} choices shared"
    );
    assert_ne!(choices(&ta), choices(&tc), "another seed chooses otherwise");
    server.stop();

    // Bad input: one clear line, exit 2, no stream file made.
    let out = env.tmp.path().join("never.txt");
    let ml = ml100k();
    let run = |server: &str, users: &str| {
        env.fails(
            2,
            &[
                "simulate",
                "--server",
                server,
                "--users",
                users,
                "--minutes",
                "1",
                "--movielens",
                &ml,
                "--out",
                &s(&out),
            ],
        )
    };
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    for (server, users, want) in [
        (
            format!("http://127.0.0.1:{dead_port}"),
            "10",
            "cannot reach the recommendation server",
        ),
        (
            "http://127.0.0.1:1".to_string(),
            "0",
            "--users must be at least 1",
        ),
        ("127.0.0.1:8082".to_string(), "10", "bad server URL"),
        (
            "http://127.0.0.1:8082/recommend".to_string(),
            "10",
            "bad server URL",
        ),
    ] {
        let err = run(&server, users);
        assert!(err.contains(want), "{server} {users}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!out.exists(), "{server}: a stream file was made");
    }
}

/// What the report's arms should say, recomputed from the raw stream lines
/// and config.json's router: (users, answers, converted, rate, ci) per arm.
fn recompute(
    stream: &str,
    router: &Router,
    models: &[String],
    arms: [&str; 2],
) -> Vec<(u64, u64, u64, f64, [f64; 2])> {
    let mut watches: HashMap<(u64, String), Vec<i64>> = HashMap::new();
    let mut answers: Vec<(i64, u64, Vec<String>)> = Vec::new();
    for l in stream.lines() {
        match parse_line(l).expect("parses") {
            Event::Watch {
                time_ms,
                user,
                movie,
                ..
            } => watches
                .entry((user, movie.into_owned()))
                .or_default()
                .push(time_ms),
            Event::Recommendation {
                time_ms,
                user,
                status: 200,
                items,
                ..
            } => answers.push((
                time_ms,
                user,
                items.into_iter().map(|i| i.into_owned()).collect(),
            )),
            _ => {}
        }
    }
    let mut per: [BTreeMap<u64, (f64, f64)>; 2] = [BTreeMap::new(), BTreeMap::new()];
    for (t, user, items) in &answers {
        let (m, _) = router.route(*user, None).expect("routed");
        let Some(arm) = arms.iter().position(|a| models[m] == *a) else {
            continue;
        };
        let converted = items.iter().take(10).any(|i| {
            let ws = watches
                .get(&(*user, i.clone()))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let continued = ws.iter().any(|w| *w >= t - LOOKBACK_MS && w < t);
            !continued && ws.iter().any(|w| w >= t && *w < t + WINDOW_MS)
        });
        let e = per[arm].entry(*user).or_default();
        e.0 += f64::from(u8::from(converted));
        e.1 += 1.0;
    }
    per.iter()
        .map(|users| {
            let n = users.len() as f64;
            let (x, y): (Vec<f64>, Vec<f64>) = users.values().copied().unzip();
            let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
            let cov = |a: &[f64], ma: f64, b: &[f64], mb: f64| {
                a.iter()
                    .zip(b)
                    .map(|(p, q)| (p - ma) * (q - mb))
                    .sum::<f64>()
                    / (n - 1.0)
            };
            let rate = mx / my;
            let var = (cov(&x, mx, &x, mx) - 2.0 * rate * cov(&x, mx, &y, my)
                + rate * rate * cov(&y, my, &y, my))
                / (my * my)
                / n;
            let half = 1.959_963_984_540_054 * var.sqrt();
            (
                users.len() as u64,
                y.iter().sum::<f64>() as u64,
                x.iter().sum::<f64>() as u64,
                rate,
                [rate - half, rate + half],
            )
        })
        .collect()
}

#[test]
fn an_experiment_on_simulated_users_reports_what_the_raw_stream_says() {
    let env = ml_project();
    env.ok(&[
        "experiment",
        "create",
        "als-vs-pop",
        "--control",
        "model_v2",
        "--treatment",
        "model_v1",
    ]);
    let server = serve(&env);
    let stream = env.tmp.path().join("stream.txt");
    let sum = simulate(
        &env,
        server.port,
        500,
        11,
        &["--out", stream.to_str().expect("utf-8")],
    );
    assert_eq!(sum["failed"], 0, "{sum}");
    server.stop();
    // The monitor reads the simulated stream (from Kafka) and the served
    // answers (the project's request log).
    let text = std::fs::read_to_string(&stream).expect("stream");
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    let (_cluster, brokers) = cluster("movielog1");
    produce(&brokers, "movielog1", &lines);
    monitor_until_idle(&env, &brokers, "movielog1");
    let rep = env.json(&["experiment", "report", "als-vs-pop", "--json"]);

    let cfg = config::parse(&env.read("config.json")).expect("config");
    let models = cfg.models();
    let router = Router::compile(&cfg, |m| models.iter().position(|x| x == m)).expect("router");
    let want = recompute(&text, &router, &models, ["model_v2", "model_v1"]);
    let arms = rep["arms"].as_array().expect("arms");
    assert_eq!(arms.len(), 2, "{rep}");
    for (i, (name, model)) in [("control", "model_v2"), ("treatment", "model_v1")]
        .iter()
        .enumerate()
    {
        let a = &arms[i];
        assert_eq!(a["arm"], *name, "{a}");
        assert_eq!(a["model"], *model, "{a}");
        let (users, answers, converted, rate, ci) = want[i];
        assert_eq!(a["pending"], 0, "every window closed: {a}");
        assert_eq!(a["users"], users, "{name}: {a}");
        assert_eq!(a["answers"], answers, "{name}: {a}");
        assert_eq!(a["converted"], converted, "{name}: {a}");
        let close = |x: &serde_json::Value, y: f64| (x.as_f64().expect("number") - y).abs() < 1e-9;
        assert!(close(&a["rate"], rate), "{name}: {a} vs {rate}");
        assert!(
            close(&a["ci"][0], ci[0]) && close(&a["ci"][1], ci[1]),
            "{name}: {a} vs {ci:?}"
        );
    }
    // ALS beats popularity for these users, and the report says so.
    let abs = rep["effect"]["absolute"].as_f64().expect("effect");
    assert!((abs - (want[1].3 - want[0].3)).abs() < 1e-9, "{rep}");
    assert!(
        abs > 0.0 && rep["effect"]["p_value"].as_f64().is_some_and(|p| p < 0.05),
        "{rep}"
    );
    assert!(rep["srm"]["flag"].is_string());
}

/// `recsys monitor` following the stream and the project's request log.
pub(crate) fn spawn_monitor(env: &Env, brokers: &str, topic: &str) -> Child {
    let args = monitor_args(env, brokers, topic);
    env.cmd(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn recsys monitor")
}
