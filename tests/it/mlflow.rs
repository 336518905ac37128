//! `recsys registry sync --mlflow` against a real `mlflow server` (PyPI
//! `mlflow`, SQLite backend) started by the test on a loopback port.
//! `scripts/setup.sh` installs it in a venv; without it the test fails
//! saying so.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::Env;
use crate::pipeline::classic_fixture;

fn mlflow_bin() -> PathBuf {
    let venv = std::env::var_os("RECSYS_MLFLOW_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME"))
                .join(".cache/recsys-tools/mlflow-venv")
        });
    let bin = venv.join("bin/mlflow");
    assert!(
        bin.is_file(),
        "{} not found: run ./scripts/setup.sh (it installs mlflow into that venv)",
        bin.display()
    );
    bin
}

/// A running `mlflow server`, stopped (its whole process group) on drop.
struct Mlflow {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Mlflow {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.wait();
    }
}

fn get(url: &str) -> Option<(u16, String)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent.get(url).call().ok()?;
    let status = r.status().as_u16();
    Some((status, r.body_mut().read_to_string().ok()?))
}

fn post(url: &str, body: &Value) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string().as_bytes())
        .expect("post")
        .status()
        .as_u16()
}

fn start_mlflow() -> Mlflow {
    let bin = mlflow_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let db = format!("sqlite:///{}", dir.path().join("mlflow.db").display());
    let child = Command::new(&bin)
        .args([
            "server",
            "--backend-store-uri",
            &db,
            "--host",
            "127.0.0.1",
            "--port",
        ])
        .arg(port.to_string())
        .args(["--workers", "1", "--default-artifact-root"])
        .arg(dir.path().join("artifacts"))
        .current_dir(dir.path())
        // No background job runner: the registry needs none.
        .env("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("server.log")).expect("log"))
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let url = format!("http://127.0.0.1:{port}");
    let mut m = Mlflow {
        child,
        url,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some((200, _)) = get(&format!("{}/health", m.url)) {
            return m;
        }
        if let Ok(Some(st)) = m.child.try_wait() {
            let log = std::fs::read_to_string(m._dir.path().join("server.log")).unwrap_or_default();
            panic!("mlflow server exited ({st}):\n{log}");
        }
        assert!(
            Instant::now() < deadline,
            "mlflow server did not answer /health in 120 s"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn api(m: &Mlflow, path: &str) -> Value {
    let (status, body) = get(&format!("{}/api/2.0/mlflow/{path}", m.url)).expect("GET");
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("json")
}

/// MLflow's versions of `name`: recsys model -> (version, tags).
fn versions(m: &Mlflow, name: &str) -> std::collections::BTreeMap<String, (String, Value)> {
    let v = api(
        m,
        &format!("model-versions/search?filter=name%3D%27{name}%27"),
    );
    let mut out = std::collections::BTreeMap::new();
    for mv in v["model_versions"].as_array().into_iter().flatten() {
        let mut tags = serde_json::Map::new();
        for t in mv["tags"].as_array().into_iter().flatten() {
            tags.insert(t["key"].as_str().expect("k").into(), t["value"].clone());
        }
        let model = tags["recsys.model"]
            .as_str()
            .expect("recsys.model")
            .to_string();
        out.insert(
            model,
            (
                mv["version"].as_str().expect("v").to_string(),
                Value::Object(tags),
            ),
        );
    }
    out
}

fn aliases(m: &Mlflow, name: &str) -> Vec<(String, String)> {
    let v = api(m, &format!("registered-models/get?name={name}"));
    let mut out: Vec<(String, String)> = v["registered_model"]["aliases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["alias"].as_str().expect("a").into(),
                a["version"].as_str().expect("v").into(),
            )
        })
        .collect();
    out.sort();
    out
}

fn pointer_field(env: &Env, rel: &str, key: &str) -> String {
    let text = String::from_utf8(env.read(rel)).expect("utf8");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("{rel}: no {key}"))
        .to_string()
}

#[test]
fn registry_sync_mirrors_models_metrics_and_served_arms_idempotently() {
    let m = start_mlflow();
    let env = Env::new();
    let dir = env.tmp.path().join("ml");
    classic_fixture(&dir);
    env.ok(&["import", "movielens", dir.to_str().expect("utf8")]);
    let commit = env.commit("data");
    // Two different models (equal bytes would be one model under two names).
    for fraction in ["0.3", "0.2"] {
        env.ok(&[
            "train",
            "--dataset",
            "dataset_1",
            "--algo",
            "popularity",
            "--test-fraction",
            fraction,
        ]);
    }
    assert_ne!(
        pointer_field(&env, "models/model_v1.bin.recsys", "digest"),
        pointer_field(&env, "models/model_v2.bin.recsys", "digest")
    );
    let eval = env.json(&["evaluate", "--model", "model_v1", "--json"]);
    env.write(
        "config.json",
        r#"{"default":"model_v1","rules":[{"name":"canary","canary":{"model":"model_v2","percent":10}}]}"#,
    );

    let r = env.json(&["registry", "sync", "--mlflow", &m.url, "--json"]);
    assert_eq!(r["registered_model"], "proj");
    assert_eq!(r["created_registered_model"], true);
    assert_eq!(
        r["versions_created"],
        serde_json::json!(["model_v1", "model_v2"])
    );
    assert_eq!(r["unchanged"], false);

    let vs = versions(&m, "proj");
    assert_eq!(vs.len(), 2);
    let (v1, t1) = &vs["model_v1"];
    let (v2, t2) = &vs["model_v2"];
    assert_eq!((v1.as_str(), v2.as_str()), ("1", "2"), "oldest first");
    assert_eq!(
        t1["recsys.digest"],
        pointer_field(&env, "models/model_v1.bin.recsys", "digest").as_str()
    );
    assert_eq!(
        t1["recsys.train_run"],
        pointer_field(&env, "models/model_v1.bin.recsys", "run").as_str()
    );
    assert_eq!(t1["recsys.dataset"], "dataset_1");
    assert_eq!(
        t1["recsys.dataset_digest"],
        pointer_field(&env, "data/dataset_1.recsys", "digest").as_str()
    );
    assert_eq!(t1["recsys.code_commit"], commit.as_str());
    assert_eq!(t1["recsys.algorithm"], "popularity");
    let p10: f64 = t1["metric.precision_at_10"]
        .as_str()
        .expect("metric tag")
        .parse()
        .expect("number");
    assert!((p10 - eval["precision_at_10"].as_f64().expect("p10")).abs() < 1e-6);
    assert!(
        t2.get("metric.precision_at_10").is_none(),
        "model_v2 was never evaluated"
    );
    assert_eq!(
        aliases(&m, "proj"),
        [
            ("canary-canary".to_string(), "2".to_string()),
            ("default".to_string(), "1".to_string())
        ]
    );

    // A second sync changes nothing, and says so.
    let again = env.json(&["registry", "sync", "--mlflow", &m.url, "--json"]);
    assert_eq!(again["unchanged"], true, "{again}");
    let text = env.ok(&["registry", "sync", "--mlflow", &m.url]);
    assert!(
        text.contains("in sync") && text.contains("nothing changed"),
        "{text}"
    );
    assert_eq!(versions(&m, "proj").len(), 2);

    // Someone's own alias stays; a promotion moves `default`, the canary's goes.
    let status = post(
        &format!("{}/api/2.0/mlflow/registered-models/alias", m.url),
        &serde_json::json!({"name": "proj", "alias": "champion", "version": "1"}),
    );
    assert_eq!(status, 200);
    env.write("config.json", r#"{"default":"model_v2"}"#);
    env.ok(&["evaluate", "--model", "model_v2"]);
    let r = env.json(&["registry", "sync", "--mlflow", &m.url, "--json"]);
    assert_eq!(r["aliases_set"], serde_json::json!(["default"]));
    assert_eq!(r["aliases_removed"], serde_json::json!(["canary-canary"]));
    assert!(
        r["tags_set"].as_u64().expect("n") >= 1,
        "model_v2's metrics: {r}"
    );
    assert_eq!(r["versions_created"], serde_json::json!([]));
    assert_eq!(
        aliases(&m, "proj"),
        [
            ("champion".to_string(), "1".to_string()),
            ("default".to_string(), "2".to_string())
        ]
    );
    assert!(
        versions(&m, "proj")["model_v2"]
            .1
            .get("metric.ndcg_at_20")
            .is_some()
    );

    // --name picks the registered model.
    let r = env.json(&[
        "registry",
        "sync",
        "--mlflow",
        &m.url,
        "--name",
        "movie-recs",
        "--json",
    ]);
    assert_eq!(r["created_registered_model"], true);
    assert_eq!(versions(&m, "movie-recs").len(), 2);
    // Without a config.json: versions, no aliases, and idempotent all the same.
    std::fs::remove_file(env.path("config.json")).expect("rm config");
    let r = env.json(&[
        "registry",
        "sync",
        "--mlflow",
        &m.url,
        "--name",
        "no-config",
        "--json",
    ]);
    assert_eq!(r["versions_created"].as_array().map(Vec::len), Some(2));
    assert!(aliases(&m, "no-config").is_empty());
    let r = env.json(&[
        "registry",
        "sync",
        "--mlflow",
        &m.url,
        "--name",
        "no-config",
        "--json",
    ]);
    assert_eq!(r["unchanged"], true, "{r}");

    // Bad input: a clear one-line error, nothing written to the registry.
    env.write("config.json", r#"{"default":"model_v9"}"#);
    let err = env.fails(2, &["registry", "sync", "--mlflow", &m.url]);
    assert!(err.contains("model_v9"), "{err}");
    assert_eq!(
        aliases(&m, "proj")[1],
        ("default".to_string(), "2".to_string())
    );
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    env.write("config.json", r#"{"default":"model_v2"}"#);
    let err = env.fails(2, &["registry", "sync", "--mlflow", &dead]);
    assert!(err.contains("MLflow at"), "{err}");
    let err = env.fails(
        2,
        &["registry", "sync", "--mlflow", "https://mlflow.example"],
    );
    assert!(err.contains("http://host:port"), "{err}");
}
