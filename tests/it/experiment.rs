//! `recsys experiment`: definitions (create/start/stop/list/show, refusals
//! that leave config.json unchanged) and the report, end to end from a
//! constructed request log and event stream fed through the monitor's
//! feedback join, checked against a recomputation from the raw input.

use std::collections::BTreeMap;

use recsys::monitor::sink::Position;
use recsys::monitor::{JoinConfig, Monitor};
use recsys::segment::{RequestRecord, ServedBy};
use recsys::serve::config::{self, Router};
use recsys::stream::Event;

use crate::common::Env;

/// 2026-01-02T00:00:00Z: answers start here.
const T0: i64 = 1_767_312_000_000;
const MIN: i64 = 60_000;
/// The experiments in these tests are created an hour before T0.
const CREATED: &str = "2026-01-01T23:00:00Z";

fn project() -> Env {
    let env = Env::new();
    for v in 1..=3 {
        env.write(&format!("models/model_v{v}.bin"), format!("model {v}"));
        env.ok(&["add", &format!("models/model_v{v}.bin"), "--kind", "model"]);
    }
    env.write(
        "config.json",
        "{\n  \"salt\": \"exp-test\",\n  \"default\": \"model_v1\",\n  \"rules\": [\n    {\"name\": \"students\", \"when\": {\"occupation\": \"student\"}, \"model\": \"model_v3\"}\n  ]\n}\n",
    );
    env
}

fn at(env: &Env, now: &str, args: &[&str]) -> std::process::Output {
    env.cmd(args)
        .env("RECSYS_NOW", now)
        .output()
        .expect("spawn recsys")
}

fn ok_at(env: &Env, now: &str, args: &[&str]) -> String {
    let o = at(env, now, args);
    assert!(
        o.status.success(),
        "recsys {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The command fails with exit 2, says `want`, and config.json is unchanged.
fn refused(env: &Env, args: &[&str], want: &str) {
    let before = env.read("config.json");
    let err = env.fails(2, args);
    assert!(err.contains(want), "{args:?}: {err}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "one-line error for {args:?}: {err}"
    );
    assert_eq!(
        env.read("config.json"),
        before,
        "{args:?} changed config.json"
    );
}

fn router(env: &Env) -> (Router, Vec<String>) {
    let cfg = config::parse(&env.read("config.json")).expect("config.json stays valid");
    let models = cfg.models();
    let r = Router::compile(&cfg, |m| models.iter().position(|x| x == m)).expect("compiles");
    (r, models)
}

#[test]
fn experiments_are_versioned_run_records_that_own_a_checked_rule() {
    let env = project();
    let original = config::parse(&env.read("config.json")).expect("valid");
    let out: serde_json::Value = serde_json::from_str(&ok_at(
        &env,
        CREATED,
        &[
            "experiment",
            "create",
            "ab1",
            "--control",
            "model_v1",
            "--treatment",
            "model_v2",
            "--split",
            "30",
            "--guardrail",
            "p95_latency<400ms",
            "--guardrail",
            "error_rate",
            "--planned-users",
            "5000",
            "--json",
        ],
    ))
    .expect("json");
    assert_eq!(out["state"], "running");
    assert_eq!(out["run"].as_str().map(str::len), Some(64), "{out}");
    // The rule is first, a 70/30 split, and the old rules follow unchanged.
    let cfg = config::parse(&env.read("config.json")).expect("valid");
    assert_eq!(cfg.rules.len(), 2);
    assert_eq!(cfg.rules[0].name, "exp-ab1");
    let arms = cfg.rules[0].split.as_ref().expect("split");
    assert_eq!(
        arms.iter()
            .map(|a| (a.model.as_str(), a.weight))
            .collect::<Vec<_>>(),
        vec![("model_v1", 70.0), ("model_v2", 30.0)]
    );
    assert_eq!(cfg.rules[1], original.rules[0]);
    assert_eq!(cfg.salt, "exp-test");

    // Which arm a user is in, and why, agrees with the server's router.
    let (r, models) = router(&env);
    for user in [1u64, 2, 3, 42, 999] {
        let (m, label) = r.route(user, None).expect("routed");
        let show = env.json(&[
            "experiment",
            "show",
            "ab1",
            "--user",
            &user.to_string(),
            "--at",
            "2026-01-02T10:05:00Z",
            "--json",
        ]);
        assert_eq!(
            show["user"]["model"],
            models[m].as_str(),
            "user {user}: {show}"
        );
        let arm = if label.ends_with("split[0]") {
            "control"
        } else {
            "treatment"
        };
        assert_eq!(show["user"]["arm"], arm);
        assert_eq!(show["user"]["running_at"], true);
        assert!(
            show["user"]["why"]
                .as_str()
                .is_some_and(|w| w.contains("salt \"exp-test\"")),
            "{show}"
        );
    }
    let before = env.json(&[
        "experiment",
        "show",
        "ab1",
        "--user",
        "1",
        "--at",
        "2026-01-01T22:00:00Z",
        "--json",
    ]);
    assert_eq!(
        before["user"]["running_at"], false,
        "not running before its creation"
    );

    // Refusals: config.json unchanged, one clear line each.
    refused(
        &env,
        &[
            "experiment",
            "create",
            "ab2",
            "--control",
            "model_v1",
            "--treatment",
            "model_v9",
        ],
        "model model_v9 does not exist",
    );
    refused(
        &env,
        &[
            "experiment",
            "create",
            "ab1",
            "--control",
            "model_v1",
            "--treatment",
            "model_v3",
        ],
        "experiment ab1 already exists",
    );
    refused(
        &env,
        &[
            "experiment",
            "create",
            "ab2",
            "--control",
            "model_v1",
            "--treatment",
            "model_v3",
            "--buckets",
            "50-100",
        ],
        "overlap running experiment ab1",
    );
    refused(
        &env,
        &[
            "experiment",
            "create",
            "ab2",
            "--control",
            "model_v1",
            "--treatment",
            "model_v3",
            "--by",
            "gender=F",
        ],
        "overlap running experiment ab1",
    );
    refused(
        &env,
        &[
            "experiment",
            "create",
            "ab2",
            "--control",
            "model_v1",
            "--treatment",
            "model_v3",
            "--guardrail",
            "latency<3",
        ],
        "bad guardrail",
    );
    refused(
        &env,
        &["experiment", "start", "ab1"],
        "experiment ab1 is already running",
    );
    refused(
        &env,
        &["experiment", "stop", "nope"],
        "no experiment named nope",
    );
    refused(&env, &["experiment", "report", "ab1"], "has no exposures");

    // Stop: the rule leaves, the other rules stay.
    ok_at(&env, "2026-01-03T00:00:00Z", &["experiment", "stop", "ab1"]);
    let cfg = config::parse(&env.read("config.json")).expect("valid");
    assert_eq!(cfg, original, "stop puts the config back as it was");
    // Now buckets 50-100 are free: a second experiment runs there.
    ok_at(
        &env,
        "2026-01-03T01:00:00Z",
        &[
            "experiment",
            "create",
            "ab2",
            "--control",
            "model_v1",
            "--treatment",
            "model_v3",
            "--buckets",
            "50-100",
            "--split",
            "50",
        ],
    );
    // ab1 would take the same users again: refused while ab2 runs.
    refused(
        &env,
        &["experiment", "start", "ab1"],
        "overlap running experiment ab2",
    );
    ok_at(&env, "2026-01-04T00:00:00Z", &["experiment", "stop", "ab2"]);
    ok_at(
        &env,
        "2026-01-05T00:00:00Z",
        &["experiment", "start", "ab1"],
    );
    let show = env.json(&["experiment", "show", "ab1", "--json"]);
    let periods = show["experiment"]["periods"].as_array().expect("periods");
    assert_eq!(periods.len(), 2, "{show}");
    assert!(periods[1].get("stop_ms").is_none());
    let (r2, _) = router(&env);
    for user in 1..200u64 {
        assert_eq!(
            r2.route(user, None).map(|(m, l)| (m, l.to_string())),
            r.route(user, None).map(|(m, l)| (m, l.to_string())),
            "restarting keeps user {user} in the same arm"
        );
    }

    // `recsys lineage` of an answer the experiment's rule routed names the
    // experiment, the arm and why (user 42 at 10:05, in the first period).
    let (m42, label42) = r.route(42, None).expect("routed");
    // The served-by line must start with its key (the reader looks for it).
    let served = format!(
        "{{\"recsys_served\":0,{}",
        &serde_json::json!({
            "model": models[m42], "model_digest": "m".repeat(64), "dataset": "dataset_1",
            "dataset_digest": "d".repeat(64), "train_run": "r".repeat(64),
            "code_commit": "c".repeat(40), "config_digest": "f".repeat(64),
        })
        .to_string()[1..]
    );
    let request = serde_json::json!({
        "id": "01900000-0000-8000-8000-000000000042", "time": T0 + 10 * 3_600_000 + 5 * MIN,
        "user": 42, "served": 0, "route": label42.to_string(), "status": "ok",
        "latency_us": 1_000, "items": ["a+1999"],
    });
    env.write(
        "log/requests/open-seg-test.jsonl",
        format!(
            "{}\n{served}\n{request}\n",
            r#"{"recsys_log_segment":2,"name":"seg-test","host":"h","opened":1767312000000}"#
        ),
    );
    let l = env.json(&["lineage", "01900000-0000-8000-8000-000000000042", "--json"]);
    assert_eq!(l["experiment"]["experiment"], "ab1", "{l}");
    assert_eq!(l["experiment"]["model"], models[m42].as_str());
    assert!(
        l["experiment"]["why"]
            .as_str()
            .is_some_and(|w| w.contains("hash position")),
        "{l}"
    );
    let text = env.ok(&["lineage", "01900000-0000-8000-8000-000000000042"]);
    assert!(text.contains("experiment: ab1, arm "), "{text}");
    std::fs::remove_file(env.path("log/requests/open-seg-test.jsonl")).expect("rm segment");

    // The definitions are run records in the store: a lost lineage.db
    // loses none of them.
    std::fs::remove_file(env.path("lineage.db")).expect("rm lineage.db");
    env.ok(&["lineage", "--rebuild"]);
    let list = env.json(&["experiment", "list", "--json"]);
    let states: Vec<(String, String)> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or("").into(),
                e["state"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            ("ab1".into(), "running".into()),
            ("ab2".into(), "stopped".into())
        ]
    );
}

/// What the test feeds in and keeps for the recomputation.
struct AnswerIn {
    user: u64,
    arm: usize,
    converted: bool,
}

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn unit(&mut self) -> f64 {
        self.next() as f64 / (1u64 << 31) as f64
    }
}

fn watch(t: i64, user: u64, movie: &str) -> String {
    Event::Watch {
        time_ms: t,
        user,
        movie: movie.to_string().into(),
        minute: 1,
    }
    .to_line()
}

/// A message for the monitor: (time, is a request record, payload).
type Msg = (i64, bool, String);

/// `users` users' answers (routed by the project's config) and watches, in
/// time order. Treatment answers convert with probability about `p[1]`,
/// control ones `p[0]`. Returns the messages and the raw answers.
fn generate(env: &Env, users: u64, p: [f64; 2], seed: u64) -> (Vec<Msg>, Vec<AnswerIn>) {
    generate_with(env, users, p, seed, |_| None)
}

/// [`generate`], routing each user with the attributes `attrs` gives.
fn generate_with(
    env: &Env,
    users: u64,
    p: [f64; 2],
    seed: u64,
    attrs: impl Fn(u64) -> Option<config::UserAttrs>,
) -> (Vec<Msg>, Vec<AnswerIn>) {
    let (router, models) = router(env);
    let mut r = Lcg(seed);
    let mut msgs: Vec<Msg> = Vec::new();
    let mut raw = Vec::new();
    let mut id = 1u128;
    let mut movie = 0u64;
    let mut next_movie = || {
        movie += 1;
        format!("movie+{movie}+2001")
    };
    for user in 1..=users {
        let a = attrs(user);
        let (m, label) = router.route(user, a.as_ref()).expect("routed");
        let arm = usize::from(!(label.ends_with("split[0]") || label.ends_with("-control")));
        // Pre-experiment activity, correlated with how often the user converts.
        let taste = r.unit();
        let before = (taste * 24.0) as i64;
        for k in 0..before {
            msgs.push((
                T0 - 3 * 3_600_000 + k * MIN,
                false,
                watch(T0 - 3 * 3_600_000 + k * MIN, user, "old+movie+1990"),
            ));
        }
        // Active users were active before, too.
        let n = 1 + (taste * 3.0) as u64 + r.next() % 2;
        for _ in 0..n {
            let t = T0 + (r.next() % (240 * MIN as u64)) as i64;
            let items: Vec<String> = (0..20).map(|_| next_movie()).collect();
            let prob = (p[arm] * (0.5 + taste)).min(1.0);
            let converted = r.unit() < prob;
            if converted {
                // A top-10 item watched within the hour.
                let rank = (r.next() % 10) as usize;
                let wt = t + 1 + (r.next() % (59 * MIN as u64)) as i64;
                msgs.push((wt, false, watch(wt, user, &items[rank])));
            } else {
                // Near misses: a rank-10+ item within the hour, or a top-10
                // one after it.
                let wt = t + 5 * MIN;
                msgs.push((
                    wt,
                    false,
                    watch(wt, user, &items[10 + (r.next() % 10) as usize]),
                ));
                let late = t + 61 * MIN;
                msgs.push((late, false, watch(late, user, &items[0])));
            }
            let rec = RequestRecord {
                id: uuid::Uuid::from_u128(id).hyphenated().to_string(),
                time: t,
                user: user as i64,
                served: ServedBy {
                    model: models[m].clone(),
                    model_digest: "m".repeat(64),
                    dataset: "dataset_1".into(),
                    dataset_digest: "d".repeat(64),
                    train_run: "r".repeat(64),
                    code_commit: "c".repeat(40),
                    config_digest: "f".repeat(64),
                },
                route: label.to_string(),
                status: "ok".into(),
                latency_us: if arm == 0 { 20_000 } else { 30_000 } + (id % 7) as i64 * 1000,
                items,
            };
            id += 1;
            msgs.push((t, true, serde_json::to_string(&rec).expect("json")));
            raw.push(AnswerIn {
                user,
                arm,
                converted,
            });
        }
    }
    // Far-future events on both sources close every window.
    let end = T0 + 24 * 3_600_000;
    msgs.push((end, false, watch(end, 999_999, "end+1999")));
    let tick = RequestRecord {
        id: uuid::Uuid::from_u128(u128::MAX).hyphenated().to_string(),
        time: end,
        user: 999_999,
        served: ServedBy {
            model: "tick".into(),
            model_digest: "m".repeat(64),
            dataset: "dataset_1".into(),
            dataset_digest: "d".repeat(64),
            train_run: "r".repeat(64),
            code_commit: "c".repeat(40),
            config_digest: "f".repeat(64),
        },
        route: "tick".into(),
        status: "ok".into(),
        latency_us: 1,
        items: vec![],
    };
    msgs.push((end, true, serde_json::to_string(&tick).expect("json")));
    msgs.sort_by_key(|m| (m.0, m.1));
    (msgs, raw)
}

/// Feed the messages through the monitor's join into `sink`.
fn feed(sink: Box<dyn recsys::monitor::Sink>, msgs: &[Msg]) {
    let mut mon = Monitor::open(sink, JoinConfig::default()).expect("monitor");
    let (mut s_off, mut r_off) = (0, 0);
    for (_, is_req, payload) in msgs {
        if *is_req {
            let pos = Position {
                source: "requests:recsys-requests".into(),
                part: 0,
                off: r_off,
            };
            r_off += 1;
            mon.request_message(pos, payload.as_bytes());
        } else {
            let pos = Position {
                source: "stream:movielog1".into(),
                part: 0,
                off: s_off,
            };
            s_off += 1;
            mon.stream_message(pos, payload.as_bytes());
        }
    }
    mon.flush().expect("flush");
}

/// Per arm (users, answers, converted, rate, ci) recomputed plainly from
/// the raw answers: the per-user ratio with a delta-method variance.
fn recompute(raw: &[AnswerIn]) -> Vec<(u64, u64, u64, f64, [f64; 2])> {
    let mut out = Vec::new();
    for arm in 0..2 {
        let mut per: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for a in raw.iter().filter(|a| a.arm == arm) {
            let e = per.entry(a.user).or_default();
            e.0 += if a.converted { 1.0 } else { 0.0 };
            e.1 += 1.0;
        }
        let n = per.len() as f64;
        let (x, y): (Vec<f64>, Vec<f64>) = per.values().copied().unzip();
        let mx = x.iter().sum::<f64>() / n;
        let my = y.iter().sum::<f64>() / n;
        let cov = |a: &[f64], ma: f64, b: &[f64], mb: f64| {
            a.iter()
                .zip(b)
                .map(|(p, q)| (p - ma) * (q - mb))
                .sum::<f64>()
                / (n - 1.0)
        };
        let (vx, vy, cxy) = (
            cov(&x, mx, &x, mx),
            cov(&y, my, &y, my),
            cov(&x, mx, &y, my),
        );
        let rate = mx / my;
        let var = (vx - 2.0 * rate * cxy + rate * rate * vy) / (my * my) / n;
        let half = 1.959_963_984_540_054 * var.sqrt();
        out.push((
            per.len() as u64,
            y.iter().sum::<f64>() as u64,
            x.iter().sum::<f64>() as u64,
            rate,
            [rate - half, rate + half],
        ));
    }
    out
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn report_matches_a_recomputation_from_the_raw_stream_and_detects_the_effect() {
    let env = project();
    ok_at(
        &env,
        CREATED,
        &[
            "experiment",
            "create",
            "ab",
            "--control",
            "model_v1",
            "--treatment",
            "model_v2",
            "--guardrail",
            "p95_latency<400ms",
            "--guardrail",
            "error_rate",
            "--guardrail",
            "fallback_share",
        ],
    );
    let err = env.fails(2, &["experiment", "report", "ab"]);
    assert!(err.contains("experiment ab has no exposures"), "{err}");
    let (msgs, raw) = generate(&env, 3000, [0.25, 0.33], 11);
    let sqlite = recsys::monitor::sqlite::SqliteSink::open(&env.path("monitor.db")).expect("db");
    feed(Box::new(sqlite), &msgs);
    let rep = env.json(&[
        "experiment",
        "report",
        "ab",
        "--json",
        "--cuped",
        "--plot",
        "report.svg",
    ]);
    let want = recompute(&raw);
    let arms = rep["arms"].as_array().expect("arms");
    assert_eq!(arms.len(), 2);
    for (i, name) in ["control", "treatment"].iter().enumerate() {
        let a = &arms[i];
        let (users, answers, converted, rate, ci) = want[i];
        assert_eq!(a["arm"], *name);
        assert_eq!(a["model"], ["model_v1", "model_v2"][i]);
        assert_eq!(a["users"], users, "{name}: {a}");
        assert_eq!(a["answers"], answers, "{name}: {a}");
        assert_eq!(a["converted"], converted, "{name}: {a}");
        assert_eq!(a["pending"], 0);
        assert!((f(&a["rate"]) - rate).abs() < 1e-12, "{name}: {a}");
        assert!(
            (f(&a["ci"][0]) - ci[0]).abs() < 1e-9,
            "{name}: {a} vs {ci:?}"
        );
        assert!(
            (f(&a["ci"][1]) - ci[1]).abs() < 1e-9,
            "{name}: {a} vs {ci:?}"
        );
    }
    let e = &rep["effect"];
    let (rc, rt) = (want[0].3, want[1].3);
    assert!((f(&e["absolute"]) - (rt - rc)).abs() < 1e-12, "{e}");
    assert!((f(&e["relative"]) - (rt - rc) / rc).abs() < 1e-12, "{e}");
    assert!(
        f(&e["p_value"]) < 0.05,
        "a 32 % lift over 3000 users is detected: {e}"
    );
    assert!(f(&e["ci"][0]) > 0.0 && f(&e["ci"][0]) < rt - rc && rt - rc < f(&e["ci"][1]));
    // SRM: the χ² of the exposed users against 50/50, recomputed.
    let (u0, u1) = (want[0].0 as f64, want[1].0 as f64);
    let half = (u0 + u1) / 2.0;
    let chi2 = ((u0 - half).powi(2) + (u1 - half).powi(2)) / half;
    assert!(
        (f(&rep["srm"]["chi2"]) - chi2).abs() < 1e-9,
        "{}",
        rep["srm"]
    );
    assert_eq!(
        rep["srm"]["flag"],
        if chi2 > 10.83 {
            "alert"
        } else if chi2 > 6.63 {
            "warn"
        } else {
            "ok"
        }
    );
    // Guardrails: latency 20-26 ms vs 30-36 ms, no errors or fallbacks.
    let g = rep["guardrails"].as_array().expect("guardrails");
    assert_eq!(g.len(), 3);
    assert_eq!(g[0]["metric"], "p95_latency");
    assert!((30.0..=36.0).contains(&f(&g[0]["treatment"])), "{}", g[0]);
    assert!(g.iter().all(|x| x["non_inferior"] == true), "{g:?}");
    assert_eq!(
        rep["decision"]
            .as_str()
            .map(|d| d.starts_with("ship model_v2")),
        Some(true),
        "{}",
        rep["decision"]
    );
    assert_eq!(rep["verdict"], "ship");
    // Power: the MDE at this size is below the effect that was detected.
    assert!(
        f(&rep["power"]["mde_absolute"]) < rt - rc,
        "{}",
        rep["power"]
    );
    // CUPED: pre-experiment watches predict conversions, so it narrows the interval.
    let c = &rep["cuped"];
    assert!(f(&c["variance_reduction"]) > 0.05, "{c}");
    assert!(f(&c["theta"]) > 0.0, "{c}");
    // The plot: two bands and two lines.
    let svg = String::from_utf8(env.read("report.svg")).expect("utf-8");
    assert!(svg.starts_with("<svg"), "{svg}");
    assert_eq!(svg.matches("class=\"band\"").count(), 2);
    assert_eq!(svg.matches("class=\"rate\"").count(), 2);
    // Sequential intervals are always wider than the fixed-horizon ones.
    let seq = env.json(&["experiment", "report", "ab", "--json", "--sequential"]);
    let w = |r: &serde_json::Value| f(&r["effect"]["ci"][1]) - f(&r["effect"]["ci"][0]);
    assert!(w(&seq) > w(&rep));
    assert_eq!(seq["effect"]["sequential"], true);
    // --since as a duration counts back from the newest data (the tick at
    // T0 + 24 h): 30 h covers everything, 1 h nothing of the experiment.
    let all = env.json(&["experiment", "report", "ab", "--json", "--since", "30h"]);
    assert_eq!(all["arms"], rep["arms"]);
    let err = env.fails(2, &["experiment", "report", "ab", "--since", "1h"]);
    assert!(err.contains("no exposures"), "{err}");
    // --since after every answer: nothing left to report.
    let err = env.fails(
        2,
        &[
            "experiment",
            "report",
            "ab",
            "--since",
            "2026-01-03T00:00:00Z",
        ],
    );
    assert!(err.contains("no exposures"), "{err}");
    // The same input in PostgreSQL gives the same report.
    let conn = crate::monitor::pg_schema("experiment");
    let pg = recsys::monitor::postgres::PgSink::connect(&conn).expect("postgres sink");
    feed(Box::new(pg), &msgs);
    let on_pg = env.json(&[
        "experiment",
        "report",
        "ab",
        "--json",
        "--cuped",
        "--db",
        &conn,
    ]);
    crate::monitor::drop_schema(&conn);
    for key in [
        "arms",
        "effect",
        "srm",
        "power",
        "guardrails",
        "cuped",
        "decision",
        "timeline",
    ] {
        assert_eq!(on_pg[key], rep[key], "{key}: PostgreSQL vs SQLite");
    }
    // Text output has the decision line.
    let text = env.ok(&["experiment", "report", "ab"]);
    assert!(
        text.lines()
            .any(|l| l.starts_with("decision:  ship model_v2")),
        "{text}"
    );
}

#[test]
fn concurrent_creates_on_the_same_users_let_exactly_one_through() {
    let env = project();
    let children: Vec<std::process::Child> = (0..4)
        .map(|i| {
            env.cmd(&[
                "experiment",
                "create",
                &format!("race{i}"),
                "--control",
                "model_v1",
                "--treatment",
                "model_v2",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn recsys")
        })
        .collect();
    let mut won = 0;
    for c in children {
        let o = c.wait_with_output().expect("wait");
        if o.status.success() {
            won += 1;
        } else {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.contains("would overlap running experiment race"),
                "{err}"
            );
        }
    }
    assert_eq!(won, 1);
    let cfg = config::parse(&env.read("config.json")).expect("valid");
    let exp_rules = cfg
        .rules
        .iter()
        .filter(|r| r.name.starts_with("exp-race"))
        .count();
    assert_eq!(exp_rules, 1, "{cfg:?}");
    let list = env.json(&["experiment", "list", "--json"]);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    // The lock is machine-local: git does not see it.
    let status = env.git(&["status", "--porcelain", "--untracked-files=all"]);
    assert!(!status.contains("experiments.lock"), "{status}");

    // An invalid config.json is refused and left exactly as it was.
    env.write(
        "config.json",
        "{\"default\": \"model_v1\", \"colour\": 1}\n",
    );
    refused(
        &env,
        &[
            "experiment",
            "create",
            "other",
            "--control",
            "model_v1",
            "--treatment",
            "model_v3",
            "--buckets",
            "0-1",
        ],
        "is invalid",
    );
}

#[test]
fn an_attribute_split_is_reported_as_not_randomised() {
    let env = project();
    ok_at(
        &env,
        CREATED,
        &[
            "experiment",
            "create",
            "women",
            "--control",
            "model_v1",
            "--treatment",
            "model_v2",
            "--by",
            "gender=F",
        ],
    );
    let cfg = config::parse(&env.read("config.json")).expect("valid");
    assert_eq!(cfg.rules[0].name, "exp-women");
    assert_eq!(cfg.rules[1].name, "exp-women-control");
    let gender = |u: u64| {
        Some(config::UserAttrs {
            gender: Some(if u.is_multiple_of(3) { "F" } else { "M" }.into()),
            ..config::UserAttrs::default()
        })
    };
    let (msgs, raw) = generate_with(&env, 900, [0.3, 0.3], 5, gender);
    let sqlite = recsys::monitor::sqlite::SqliteSink::open(&env.path("monitor.db")).expect("db");
    feed(Box::new(sqlite), &msgs);
    let rep = env.json(&["experiment", "report", "women", "--json"]);
    let want = recompute(&raw);
    assert_eq!(rep["randomised"], false);
    assert_eq!(rep["arms"][0]["users"], want[0].0, "{}", rep["arms"]);
    assert_eq!(rep["arms"][1]["users"], want[1].0);
    assert_eq!(want[1].0, 300, "every third user is F");
    assert_eq!(rep["arms"][1]["converted"], want[1].2);
    assert_eq!(rep["srm"]["flag"], "not_randomised");
    assert!(rep["srm"]["p_value"].is_null());
}

#[test]
fn a_clone_that_pulls_knows_the_experiments_and_their_arms() {
    let env = project();
    env.add_origin();
    ok_at(
        &env,
        CREATED,
        &[
            "experiment",
            "create",
            "ab",
            "--control",
            "model_v1",
            "--treatment",
            "model_v2",
            "--split",
            "20",
        ],
    );
    env.commit("experiment ab");
    env.ok(&["push"]);
    let clone = env.tmp.path().join("clone");
    let o = crate::common::git_cmd(env.tmp.path())
        .args([
            "clone",
            "-q",
            env.root.to_str().expect("utf-8"),
            clone.to_str().expect("utf-8"),
        ])
        .output()
        .expect("git clone");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = |args: &[&str]| {
        let o = env.cmd_in(&clone, args).output().expect("spawn");
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap_or(serde_json::Value::Null)
    };
    run(&["init"]);
    run(&["pull", "--json"]);
    let mine = env.json(&["experiment", "show", "ab", "--user", "7", "--json"]);
    let theirs = run(&["experiment", "show", "ab", "--user", "7", "--json"]);
    assert_eq!(theirs["experiment"], mine["experiment"], "{theirs}");
    assert_eq!(theirs["user"], mine["user"]);
    assert_eq!(theirs["state"], "running");
}
