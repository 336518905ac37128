//! `recsys rollout` end to end: a real server answering simulated users,
//! the monitor following its request log, a local webhook receiver. A
//! model that answers most users with the popularity fallback (trained on
//! the users aged 50 and over only) is rolled
//! back at its first step (config.json serves the control again, the
//! webhook gets a Slack-format message); a sound one goes through every
//! step and becomes the default; every step is a run record.

use std::process::{Child, Stdio};

use recsys::serve::config;

use crate::common::{Env, ml100k, serve};
use crate::monitor::webhook_receiver;
use crate::simulate::{SPEED, cluster, ml_project, spawn_monitor};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run records of kind rollout, from the store, by digest.
fn run_record(env: &Env, digest: &str) -> serde_json::Value {
    let p = env.path(&format!("store/{}/{}", &digest[..2], &digest[2..]));
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("run record {digest}: {e}"));
    let v: serde_json::Value = serde_json::from_slice(&bytes).expect("run record JSON");
    assert_eq!(v["kind"], "rollout", "{v}");
    v
}

fn rollout(env: &Env, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["rollout"];
    all.extend_from_slice(args);
    all.push("--json");
    let o = env.run(&all);
    let out = String::from_utf8_lossy(&o.stdout);
    let v = serde_json::from_str(&out).unwrap_or_else(|e| {
        panic!(
            "rollout {args:?}: bad JSON {e}: {out}\nstderr: {}",
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code().unwrap_or(-1), v)
}

#[test]
fn a_rollout_rolls_back_a_model_that_falls_back_and_completes_a_sound_one() {
    let env = ml_project();
    // model_v3 knows only the users aged 50 and over: everyone else gets
    // the popularity fallback.
    env.ok(&[
        "train",
        "--dataset",
        "dataset_1",
        "--algo",
        "als",
        "--users-where",
        "age=50+",
    ]);
    // model_v4: a sound retrain (ALS, other factors and seed).
    env.ok(&[
        "train",
        "--dataset",
        "dataset_1",
        "--algo",
        "als",
        "--factors",
        "16",
        "--seed",
        "3",
    ]);
    let server = serve(&env);
    let (_cluster, brokers) = cluster("movielog1");
    let _monitor = Killed(spawn_monitor(&env, &brokers, "movielog1"));
    let (hook_port, hooks) = webhook_receiver();
    let hook = format!("http://127.0.0.1:{hook_port}/slack");
    // Simulated users for the whole test (an hour of simulated time).
    let url = format!("http://127.0.0.1:{}", server.port);
    let ml = ml100k();
    let _sim = Killed(
        env.cmd(&[
            "simulate",
            "--server",
            &url,
            "--users",
            "900",
            "--minutes",
            "80",
            "--seed",
            "5",
            "--speed",
            SPEED,
            "--movielens",
            &ml,
            "--brokers",
            &brokers,
            "--topic",
            "movielog1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn simulate"),
    );
    // Start once the monitor is storing the simulated users' answers.
    let start = std::time::Instant::now();
    loop {
        let o = env.run(&["monitor", "report", "--json"]);
        let answers = serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .ok()
            .and_then(|r| r["by_model"][0]["answers"].as_u64())
            .unwrap_or(0);
        if answers >= 50 {
            break;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "the monitor stored no answers of the simulated users within 60 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let guards = [
        "--guard",
        "fallback_share",
        "--guard",
        "p95_latency<400ms",
        "--guard",
        "error_rate",
        "--min-answers",
        "5",
        "--webhook",
        &hook,
    ];

    // The degraded model: rolled back at its first step.
    let mut args = vec!["model_v3", "--steps", "20,100", "--every", "3s"];
    args.extend_from_slice(&guards);
    let (code, bad) = rollout(&env, &args);
    assert_eq!(code, 1, "rolled back: exit 1: {bad}");
    assert_eq!(bad["outcome"], "rolled_back", "{bad}");
    assert_eq!(bad["control"], "model_v1");
    let steps = bad["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "stopped at the first step: {bad}");
    assert!(
        steps[0]["canary"]["fallback_share"]
            .as_f64()
            .is_some_and(|f| f > 0.5),
        "{bad}"
    );
    assert!(
        bad["reason"]
            .as_str()
            .is_some_and(|r| r.contains("fallback_share")),
        "{bad}"
    );
    let cfg = config::parse(&env.read("config.json")).expect("valid config");
    assert_eq!(cfg.default.as_deref(), Some("model_v1"));
    assert!(cfg.rules.is_empty(), "rollout rules gone: {cfg:?}");
    let texts: Vec<serde_json::Value> = hooks
        .lock()
        .expect("lock")
        .iter()
        .map(|b| serde_json::from_str(b).expect("webhook JSON"))
        .collect();
    assert_eq!(texts.len(), 1, "{texts:?}");
    let text = texts[0]["text"].as_str().expect("Slack text");
    assert!(
        text.contains("model_v3") && text.contains("rolled back to model_v1"),
        "{text}"
    );
    assert_eq!(bad["webhook"], "posted");
    let rec = run_record(&env, steps[0]["run"].as_str().expect("run"));
    assert_eq!(rec["params"]["action"], "step");
    assert_eq!(rec["params"]["percent"], 20.0);
    let fin = run_record(&env, bad["final_run"].as_str().expect("final run"));
    assert_eq!(fin["params"]["action"], "rollback");
    assert_eq!(fin["metrics"]["passed"], false);

    // A sound model: every step holds, then it serves everyone.
    let mut args = vec!["model_v4", "--steps", "20,60,100", "--every", "3s"];
    args.extend_from_slice(&guards);
    let (code, good) = rollout(&env, &args);
    assert_eq!(code, 0, "completed: {good}");
    assert_eq!(good["outcome"], "completed", "{good}");
    let steps = good["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 3, "{good}");
    for (s, pct) in steps.iter().zip([20.0, 60.0, 100.0]) {
        assert_eq!(s["percent"], pct);
        assert_eq!(s["passed"], true, "{s}");
        assert!(
            s["canary"]["answers"].as_u64().is_some_and(|n| n >= 5),
            "{s}"
        );
        assert_eq!(
            run_record(&env, s["run"].as_str().expect("run"))["params"]["percent"],
            pct
        );
    }
    let cfg = config::parse(&env.read("config.json")).expect("valid config");
    assert_eq!(cfg.default.as_deref(), Some("model_v4"));
    assert!(cfg.rules.is_empty(), "{cfg:?}");
    assert_eq!(
        run_record(&env, good["final_run"].as_str().expect("run"))["params"]["action"],
        "complete"
    );
    assert_eq!(hooks.lock().expect("lock").len(), 2);

    // Bad input changes nothing.
    let before = env.read("config.json");
    for (args, want) in [
        (
            vec!["model_v9", "--guard", "error_rate"],
            "model model_v9 does not exist",
        ),
        (
            vec!["model_v1", "--steps", "50,20,100", "--guard", "error_rate"],
            "--steps must increase",
        ),
        (vec!["model_v1", "--guard", "latency<3"], "bad guardrail"),
        (
            vec!["model_v4", "--guard", "error_rate"],
            "already the control",
        ),
    ] {
        let mut all = vec!["rollout"];
        all.extend_from_slice(&args);
        let err = env.fails(2, &all);
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(
            env.read("config.json"),
            before,
            "{args:?} changed config.json"
        );
    }
    server.stop();
}
