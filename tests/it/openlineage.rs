//! `--openlineage-url`: OpenLineage 2-0-2 run events from import, train,
//! evaluate, ingest and pipeline, sent to a local HTTP receiver (as
//! Marquez takes them) or appended to a file, every one validated against
//! the vendored OpenLineage JSON schema and recsys's own facet schemas.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use crate::common::Env;
use crate::pipeline::classic_fixture;

fn fixture(rel: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const CORE: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json";
const FACETS: [(&str, &str); 3] = [
    ("recsys_run", "RecsysRunFacet"),
    ("recsys_artifact", "RecsysArtifactDatasetFacet"),
    ("recsys_source", "RecsysSourceDatasetFacet"),
];

/// Validates events: the core schema for the whole event, the vendored
/// facet schemas for the facets recsys sets, and the required fields of
/// the other standard facets.
struct Checker {
    core: jsonschema::Validator,
    job_type: jsonschema::Validator,
    own: BTreeMap<&'static str, jsonschema::Validator>,
}

impl Checker {
    fn new() -> Checker {
        let core_text = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/openlineage/OpenLineage-2-0-2.json"),
        )
        .expect("read core schema");
        assert_eq!(
            core_text.len(),
            9155,
            "the upstream 2-0-2 schema, unchanged"
        );
        let core_doc = fixture("tests/fixtures/openlineage/OpenLineage-2-0-2.json");
        assert_eq!(core_doc["$id"], CORE);
        let mut reg = jsonschema::Registry::new()
            .add(CORE, core_doc.clone())
            .expect("add core")
            .add(
                "https://openlineage.io/spec/facets/2-0-4/JobTypeJobFacet.json",
                fixture("tests/fixtures/openlineage/JobTypeJobFacet-2-0-4.json"),
            )
            .expect("add jobType");
        for (_, name) in FACETS {
            let doc = fixture(&format!("spec/openlineage/{name}.json"));
            let id = doc["$id"].as_str().expect("$id").to_string();
            reg = reg.add(id, doc).expect("add facet");
        }
        let reg = reg.prepare().expect("registry");
        let build = |schema: Value| {
            jsonschema::options()
                .with_registry(&reg)
                .should_validate_formats(true)
                .build(&schema)
                .unwrap_or_else(|e| panic!("schema {schema}: {e}"))
        };
        let core = build(core_doc);
        let job_type = build(json!({
            "$ref": "https://openlineage.io/spec/facets/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet"
        }));
        let mut own = BTreeMap::new();
        for (key, name) in FACETS {
            own.insert(
                key,
                build(json!({
                    "$ref": format!("urn:recsys:openlineage:facets:1-0-0:{name}.json#/$defs/{name}")
                })),
            );
        }
        Checker {
            core,
            job_type,
            own,
        }
    }

    fn facet_ok(&self, key: &str, f: &Value) {
        let errors = |v: &jsonschema::Validator| -> Vec<String> {
            v.iter_errors(f)
                .map(|e| format!("{e} at {}", e.instance_path()))
                .collect()
        };
        if let Some(v) = self.own.get(key) {
            let e = errors(v);
            assert!(e.is_empty(), "facet {key} {f}: {e:?}");
            assert!(
                f["_schemaURL"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("urn:recsys:openlineage:facets:1-0-0:")),
                "{f}"
            );
            return;
        }
        let required: &[&str] = match key {
            "jobType" => {
                let e = errors(&self.job_type);
                assert!(e.is_empty(), "jobType {f}: {e:?}");
                &["processingType", "integration"]
            }
            "sourceCodeLocation" => &["type", "url"],
            "processing_engine" => &["version"],
            "errorMessage" => &["message", "programmingLanguage"],
            "parent" => &["run", "job"],
            "schema" => &["fields"],
            "version" => &["datasetVersion"],
            other => panic!("unexpected facet {other}: {f}"),
        };
        for r in required {
            assert!(!f[r].is_null(), "facet {key} lacks {r}: {f}");
        }
        let url = f["_schemaURL"].as_str().expect("_schemaURL");
        assert!(
            url.starts_with("https://openlineage.io/spec/facets/"),
            "{url}"
        );
    }

    /// Panics unless `e` is a valid RunEvent whose facets are valid too.
    fn check(&self, e: &Value) {
        let errs: Vec<String> = self
            .core
            .iter_errors(e)
            .map(|x| format!("{x} at {}", x.instance_path()))
            .collect();
        assert!(errs.is_empty(), "invalid OpenLineage event {e}:\n{errs:#?}");
        assert_eq!(e["schemaURL"], format!("{CORE}#/$defs/RunEvent"));
        assert!(
            e["producer"]
                .as_str()
                .is_some_and(|p| p.starts_with("urn:recsys:")),
            "{e}"
        );
        let mut facets: Vec<(&str, &Value)> = Vec::new();
        for part in [&e["run"]["facets"], &e["job"]["facets"]] {
            for (k, v) in part.as_object().into_iter().flatten() {
                facets.push((k, v));
            }
        }
        for side in ["inputs", "outputs"] {
            for d in e[side].as_array().into_iter().flatten() {
                for (k, v) in d["facets"].as_object().into_iter().flatten() {
                    facets.push((k, v));
                }
            }
        }
        for (k, v) in facets {
            assert_eq!(v["_producer"], e["producer"], "{k}");
            self.facet_ok(k, v);
        }
    }
}

/// A local OpenLineage receiver: every POST's path and JSON body.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<(String, Value)>>>,
}

fn receiver() -> Receiver {
    receiver_answering("201 Created")
}

/// A receiver that answers every POST with `status`.
fn receiver_answering(status: &'static str) -> Receiver {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut len = 0usize;
            let mut json_type = false;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                let lower = h.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("content-type:") && lower.contains("application/json") {
                    json_type = true;
                }
            }
            let mut body = vec![0u8; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            assert!(json_type, "events are sent as application/json");
            let v: Value = serde_json::from_slice(&body).expect("event is JSON");
            sink.lock().expect("lock").push((path, v));
            let _ = s.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    Receiver { url, got }
}

impl Receiver {
    fn events(&self) -> Vec<Value> {
        let got = self.got.lock().expect("lock");
        for (path, _) in got.iter() {
            assert_eq!(path, "/api/v1/lineage");
        }
        got.iter().map(|(_, v)| v.clone()).collect()
    }
}

/// The events of one run, by run id, in arrival order.
fn runs(events: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut m: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in events {
        let id = e["run"]["runId"].as_str().expect("runId").to_string();
        m.entry(id).or_default().push(e.clone());
    }
    m
}

fn pointer_field(env: &Env, rel: &str, key: &str) -> String {
    let text = String::from_utf8(env.read(rel)).expect("utf8");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("{rel} has no {key}"))
        .split_whitespace()
        .next()
        .expect("value")
        .to_string()
}

fn ml_dir(env: &Env) -> PathBuf {
    let dir = env.tmp.path().join("ml");
    classic_fixture(&dir);
    dir
}

#[test]
fn import_train_evaluate_and_a_failing_train_emit_valid_paired_events() {
    let checker = Checker::new();
    let env = Env::new();
    let rx = receiver();
    let url = rx.url.as_str();
    let dir = ml_dir(&env);
    env.ok(&[
        "--openlineage-url",
        url,
        "import",
        "movielens",
        dir.to_str().expect("utf8"),
    ]);
    let commit = env.commit("import");
    env.ok(&[
        "train",
        "--dataset",
        "dataset_1",
        "--algo",
        "popularity",
        "--test-fraction",
        "0.3",
        "--openlineage-url",
        url,
    ]);
    env.ok(&["evaluate", "--model", "model_v1", "--openlineage-url", url]);
    let err = env.fails(
        2,
        &[
            "train",
            "--dataset",
            "dataset_1",
            "--test-fraction",
            "2",
            "--openlineage-url",
            url,
        ],
    );
    assert!(err.contains("--test-fraction"), "{err}");

    let events = rx.events();
    assert_eq!(events.len(), 8, "four runs, two events each: {events:#?}");
    for e in &events {
        checker.check(e);
    }
    let by_run = runs(&events);
    assert_eq!(by_run.len(), 4);
    let mut jobs = Vec::new();
    for evs in by_run.values() {
        assert_eq!(evs.len(), 2, "{evs:#?}");
        assert_eq!(evs[0]["eventType"], "START");
        assert!(["COMPLETE", "FAIL"].contains(&evs[1]["eventType"].as_str().expect("type")));
        assert_eq!(evs[0]["job"], evs[1]["job"]);
        assert_eq!(
            evs[0]["job"]["namespace"], "proj",
            "the project directory's name"
        );
        let id = evs[0]["run"]["runId"].as_str().expect("id");
        assert_eq!(uuid_version(id), 7, "a live run's id is a UUIDv7");
        jobs.push((
            evs[0]["eventTime"].as_str().expect("t").to_string(),
            evs[0]["job"]["name"].as_str().expect("name").to_string(),
            evs[1].clone(),
        ));
    }
    jobs.sort_by(|a, b| a.1.cmp(&b.1));
    let find = |job: &str, kind: &str| -> Value {
        jobs.iter()
            .find(|(_, j, e)| j == job && e["eventType"] == kind)
            .map(|(_, _, e)| e.clone())
            .unwrap_or_else(|| panic!("no {kind} of {job}"))
    };

    // import: the MovieLens directory (with its files' digests) -> dataset_1.
    let imp = find("import.movielens", "COMPLETE");
    let src = &imp["inputs"][0];
    assert_eq!(src["namespace"], "file");
    assert_eq!(
        src["name"],
        std::fs::canonicalize(&dir)
            .expect("canon")
            .to_str()
            .expect("utf8")
    );
    let files = src["facets"]["recsys_source"]["files"]
        .as_object()
        .expect("files");
    assert_eq!(
        files["u.data"].as_str(),
        Some(
            blake3::hash(&std::fs::read(dir.join("u.data")).expect("read"))
                .to_hex()
                .as_str()
        )
    );
    let ds = &imp["outputs"][0];
    assert_eq!(ds["namespace"], "recsys://proj");
    assert_eq!(ds["name"], "dataset_1");
    let ds_digest = pointer_field(&env, "data/dataset_1.recsys", "digest");
    assert_eq!(
        ds["facets"]["recsys_artifact"]["digest"],
        ds_digest.as_str()
    );
    assert_eq!(
        ds["facets"]["version"]["datasetVersion"],
        ds_digest.as_str()
    );
    let tables: Vec<&str> = ds["facets"]["schema"]["fields"]
        .as_array()
        .expect("schema")
        .iter()
        .map(|f| f["name"].as_str().expect("name"))
        .collect();
    assert_eq!(
        tables,
        ["events.csv", "requests.csv", "users.csv", "movies.csv"]
    );
    assert_eq!(
        imp["run"]["facets"]["recsys_run"]["run_record"],
        pointer_field(&env, "data/dataset_1.recsys", "run").as_str()
    );
    assert!(
        imp["job"]["facets"]["sourceCodeLocation"]["version"].is_null(),
        "imported before any commit"
    );

    // train: dataset_1 -> model_v1, with the commit and the run record.
    let tr = find("train", "COMPLETE");
    assert_eq!(tr["inputs"][0]["name"], "dataset_1");
    assert_eq!(
        tr["inputs"][0]["facets"]["recsys_artifact"]["digest"],
        ds_digest.as_str()
    );
    assert_eq!(tr["outputs"][0]["name"], "model_v1");
    assert_eq!(tr["outputs"][0]["namespace"], "recsys://proj");
    assert_eq!(
        tr["outputs"][0]["facets"]["recsys_artifact"]["digest"],
        pointer_field(&env, "models/model_v1.bin.recsys", "digest").as_str()
    );
    assert!(
        tr["outputs"][0]["facets"]["schema"].is_null(),
        "a model has no columns"
    );
    assert_eq!(
        tr["run"]["facets"]["recsys_run"]["run_record"],
        pointer_field(&env, "models/model_v1.bin.recsys", "run").as_str()
    );
    assert_eq!(tr["run"]["facets"]["recsys_run"]["algorithm"], "popularity");
    assert_eq!(
        tr["job"]["facets"]["sourceCodeLocation"]["version"],
        commit.as_str()
    );
    assert_eq!(tr["job"]["facets"]["sourceCodeLocation"]["type"], "git");

    // evaluate: model_v1 and dataset_1 in, metrics in the run facet.
    let ev = find("evaluate", "COMPLETE");
    let names: Vec<&str> = ev["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|d| d["name"].as_str().expect("name"))
        .collect();
    assert!(
        names.contains(&"model_v1") && names.contains(&"dataset_1"),
        "{names:?}"
    );
    assert!(
        ev["run"]["facets"]["recsys_run"]["metrics"]["precision_at_10"].is_number(),
        "{ev}"
    );

    // the failing train: FAIL with the error, no datasets, nothing recorded.
    let fail = find("train", "FAIL");
    let msg = fail["run"]["facets"]["errorMessage"]["message"]
        .as_str()
        .expect("message");
    assert!(msg.contains("--test-fraction 2"), "{msg}");
    assert_eq!(
        fail["run"]["facets"]["errorMessage"]["programmingLanguage"],
        "Rust"
    );
    assert!(fail["run"]["facets"]["recsys_run"].is_null());
    assert!(!env.path("models/model_v2.bin").exists());
}

fn uuid_version(id: &str) -> u32 {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    assert_eq!(hex.len(), 32, "{id}");
    hex[12..13].parse::<u32>().unwrap_or(99)
}

#[test]
fn a_file_sink_an_env_url_and_an_unreachable_receiver_never_fail_the_command() {
    let checker = Checker::new();
    let env = Env::new();
    let dir = ml_dir(&env);
    let file = env.tmp.path().join("events.jsonl");
    let file_url = format!("file://{}", file.display());
    // A URL that cannot work is refused before anything is done.
    let err = env.fails(
        2,
        &[
            "import",
            "movielens",
            dir.to_str().expect("utf8"),
            "--openlineage-url",
            "ftp://x",
        ],
    );
    assert!(err.contains("--openlineage-url ftp://x"), "{err}");
    assert!(!env.path("data/dataset_1").exists(), "nothing imported");
    let err = env.fails(
        2,
        &[
            "import",
            "movielens",
            dir.to_str().expect("utf8"),
            "--openlineage-url",
            "file://relative.jsonl",
        ],
    );
    assert!(err.contains("absolute path"), "{err}");

    // RECSYS_OPENLINEAGE_URL works like the flag, for the CLI.
    let o = env
        .cmd(&["import", "movielens", dir.to_str().expect("utf8")])
        .env("RECSYS_OPENLINEAGE_URL", &file_url)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // An import of the same bytes records nothing: START and COMPLETE all the same.
    env.ok(&[
        "import",
        "movielens",
        dir.to_str().expect("utf8"),
        "--openlineage-url",
        &file_url,
    ]);
    let text = std::fs::read_to_string(&file).expect("events file");
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(events.len(), 4, "{text}");
    for e in &events {
        checker.check(e);
    }
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["eventType"].as_str().expect("t"))
        .collect();
    assert_eq!(types, ["START", "COMPLETE", "START", "COMPLETE"]);
    assert_eq!(events[1]["outputs"][0]["name"], "dataset_1");
    assert_eq!(
        events[3]["outputs"].as_array().map(Vec::len),
        Some(0),
        "unchanged: nothing new"
    );
    assert!(events[3]["run"]["facets"]["recsys_run"].is_null());

    // A receiver that is down: warnings, the command succeeds and records.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let o = env.run(&[
        "train",
        "--dataset",
        "dataset_1",
        "--algo",
        "popularity",
        "--openlineage-url",
        &dead,
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: OpenLineage START event not delivered"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: OpenLineage COMPLETE event not delivered"),
        "{stderr}"
    );
    assert!(env.path("models/model_v1.bin.recsys").exists());

    // A receiver that refuses the events: warnings too, the work stays.
    let refusing = receiver_answering("500 Internal Server Error");
    let o = env.run(&[
        "evaluate",
        "--model",
        "model_v1",
        "--openlineage-url",
        &refusing.url,
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert_eq!(stderr.matches("not delivered").count(), 2, "{stderr}");
    assert!(stderr.contains("500"), "{stderr}");
    assert_eq!(refusing.events().len(), 2, "both were offered");
}

#[test]
fn openlineage_is_in_the_help() {
    let env = Env::new();
    let help = env.ok(&["train", "--help"]);
    assert!(help.contains("--openlineage-url"), "{help}");
    assert!(help.contains("never fail the command"), "{help}");
    assert!(help.contains("RECSYS_OPENLINEAGE_URL"), "{help}");
}

#[test]
fn the_checker_refuses_what_the_spec_refuses() {
    let c = Checker::new();
    let good = json!({
        "eventType": "START",
        "eventTime": "2026-01-02T03:04:05.000Z",
        "run": { "runId": "01890a5d-ac96-774b-bcce-b302099a8057" },
        "job": { "namespace": "proj", "name": "train" },
        "producer": "urn:recsys:0.1.0:x",
        "schemaURL": format!("{CORE}#/$defs/RunEvent"),
    });
    assert!(c.core.is_valid(&good));
    let bad = |path: &str, v: Value| {
        let mut e = good.clone();
        let mut cur = &mut e;
        let parts: Vec<&str> = path.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            cur = &mut cur[*p];
        }
        cur[parts[parts.len() - 1]] = v;
        assert!(!c.core.is_valid(&e), "{path} accepted: {e}");
    };
    bad("run.runId", json!("not-a-uuid"));
    bad("eventType", json!("DONE"));
    bad("eventTime", json!("yesterday"));
    bad(
        "job.facets",
        json!({ "jobType": { "processingType": "BATCH" } }),
    );
    let mut no_producer = good.clone();
    no_producer.as_object_mut().expect("obj").remove("producer");
    assert!(!c.core.is_valid(&no_producer));
    let artifact = c.own.get("recsys_artifact").expect("facet");
    assert!(!artifact.is_valid(&json!({
        "_producer": "urn:recsys:x", "_schemaURL": "urn:x", "digest": "abc", "kind": "model", "size": 1
    })), "a digest is 64 hex digits");
}

#[test]
fn a_pipeline_is_a_parent_run_with_its_steps_as_children() {
    use crate::ingest::{TOPIC, cluster, produce, taste_batch};
    let checker = Checker::new();
    let env = Env::new();
    let rx = receiver();
    let (_c, brokers) = cluster(1);
    let msgs = taste_batch(1..31, 1);
    produce(&brokers, TOPIC, &msgs);
    let n = msgs.len().to_string();
    env.ok(&[
        "pipeline",
        "--brokers",
        &brokers,
        "--topic",
        TOPIC,
        "--max-messages",
        &n,
        "--algo",
        "popularity",
        "--openlineage-url",
        &rx.url,
        "--openlineage-namespace",
        "recs-prod",
    ]);
    let events = rx.events();
    for e in &events {
        checker.check(e);
        assert_eq!(e["job"]["namespace"], "recs-prod");
    }
    let names: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["job"]["name"].as_str().expect("name").to_string(),
                e["eventType"].as_str().expect("type").to_string(),
            )
        })
        .collect();
    let want = [
        ("pipeline", "START"),
        ("ingest", "START"),
        ("ingest", "COMPLETE"),
        ("train", "START"),
        ("train", "COMPLETE"),
        ("evaluate", "START"),
        ("evaluate", "COMPLETE"),
        ("pipeline", "COMPLETE"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert_eq!(names, want);
    assert_eq!(events[0]["job"]["facets"]["jobType"]["jobType"], "DAG");
    let parent = events[0]["run"]["runId"].as_str().expect("id");
    assert_eq!(events[7]["run"]["runId"], parent);
    for e in &events[1..7] {
        assert_eq!(e["run"]["facets"]["parent"]["run"]["runId"], parent);
        assert_eq!(e["run"]["facets"]["parent"]["job"]["name"], "pipeline");
        assert_eq!(e["job"]["facets"]["jobType"]["jobType"], "JOB");
    }
    // The ingest step read the topic (Kafka naming: kafka://host:port + topic).
    let ingest = &events[2];
    let first = brokers.split(',').next().expect("broker");
    let kafka = ingest["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .find(|d| d["name"] == TOPIC)
        .expect("the topic is an input");
    assert_eq!(kafka["namespace"], format!("kafka://{first}"));
    assert_eq!(ingest["outputs"][0]["name"], "dataset_1");
    // A step's run id is the one `lineage export` gives its record.
    assert_eq!(events[4]["outputs"][0]["name"], "model_v1");
    let exported = env.ok(&[
        "lineage",
        "export",
        "--openlineage",
        "--openlineage-namespace",
        "recs-prod",
    ]);
    let exported: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).expect("one event per line"))
        .collect();
    for e in &exported {
        checker.check(e);
    }
    assert_eq!(
        exported.len(),
        6,
        "three run records, START and COMPLETE each"
    );
    let train_id = events[4]["run"]["runId"].as_str().expect("id");
    let same = exported
        .iter()
        .find(|e| e["run"]["runId"] == train_id && e["eventType"] == "COMPLETE")
        .expect("export gives the train record the pipeline step's run id");
    assert_eq!(same["job"], events[4]["job"], "and the same job");
    assert_eq!(same["outputs"], events[4]["outputs"]);
    // --out writes the same lines to a file.
    let out = env.tmp.path().join("export.jsonl");
    env.ok(&[
        "lineage",
        "export",
        "--openlineage",
        "--openlineage-namespace",
        "recs-prod",
        "--out",
        out.to_str().expect("utf8"),
    ]);
    let text = std::fs::read_to_string(&out).expect("export file");
    assert_eq!(text.lines().count(), 6);
}

#[test]
fn a_standalone_ingest_reads_the_topic_and_writes_a_dataset() {
    use crate::ingest::{TOPIC, cluster, produce, taste_batch};
    let checker = Checker::new();
    let env = Env::new();
    let (_c, brokers) = cluster(1);
    let msgs = taste_batch(1..6, 1);
    produce(&brokers, TOPIC, &msgs);
    let n = msgs.len().to_string();
    let file = env.tmp.path().join("ol.jsonl");
    env.ok(&[
        "ingest",
        "--brokers",
        &brokers,
        "--topic",
        TOPIC,
        "--max-messages",
        &n,
        "--openlineage-url",
        &format!("file://{}", file.display()),
    ]);
    let events: Vec<Value> = std::fs::read_to_string(&file)
        .expect("events")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(events.len(), 2);
    for e in &events {
        checker.check(e);
        assert_eq!(e["job"]["name"], "ingest");
    }
    assert_eq!(events[0]["run"]["runId"], events[1]["run"]["runId"]);
    let done = &events[1];
    assert_eq!(done["eventType"], "COMPLETE");
    assert_eq!(done["inputs"][0]["name"], TOPIC);
    let offsets = &done["inputs"][0]["facets"]["recsys_source"]["offsets"];
    assert!(offsets.is_object(), "the offset ranges read: {done}");
    assert_eq!(done["outputs"][0]["name"], "dataset_1");
    assert_eq!(
        done["run"]["facets"]["recsys_run"]["metrics"]["messages"],
        msgs.len()
    );
}
