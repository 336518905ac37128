//! Retention and erasure (issue 10): `recsys forget --user` and
//! `recsys gc --requests-older-than`, through the binary, with a real
//! server writing the request log and a local-directory remote.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use recsys::monitor::sink::{Position, Sink};
use recsys::monitor::{JoinConfig, Monitor};
use recsys::segment::{RequestRecord, ServedBy};
use recsys::stream::Event;

use crate::common::{Env, serve};

/// The user to forget, and byte patterns only their rows carry.
const X: u32 = 4242;
const X_USER_ROW: &str = "4242,77,F,zookeeper";
const X_EVENT: &str = ",4242,movie+";
/// In a malformed stream line of X's that the monitor keeps in `mon_bad`.
const X_MON_BAD: &str = "bogus-monitored-4242";
const X_QUARANTINE: &str = "bogus-canary-4242";

/// A project whose `dataset_1` holds user X (events, a stream request,
/// attributes, a quarantined line) and others; `model_v1` trained on it;
/// served by `config.json`.
fn project() -> Env {
    let env = Env::new();
    let mut events = String::from("time_ms,user,movie,kind,value\n");
    let mut n = 0;
    for u in [1u32, 2, 3, 5, 8, X] {
        for m in 0..6 {
            if (u + m) % 3 != 0 {
                events.push_str(&format!(
                    "{},{u},movie+{m}+1990,rate,4\n",
                    1000 + u * 10 + m
                ));
                n += 1;
            }
        }
    }
    env.write("data/dataset_1/events.csv", &events);
    env.write(
        "data/dataset_1/users.csv",
        format!("user,age,gender,occupation\n1,20,M,writer\n2,30,F,artist\n{X_USER_ROW}\n"),
    );
    env.write("data/dataset_1/movies.csv", "movie,title,year,genres\n");
    env.write(
        "data/dataset_1/requests.csv",
        format!("time_ms,user,status,latency_ms,items\n5,1,200,3,movie+1+1990\n6,{X},200,4,movie+2+1990\n"),
    );
    env.write(
        "data/dataset_1/quarantine.jsonl",
        format!(
            "{{\"partition\":0,\"offset\":3,\"kind\":\"bad_request\",\"reason\":\"r\",\"line\":\"2026-01-01T00:00:00,{X},GET /{X_QUARANTINE}\",\"bytes\":40}}\n\
             {{\"partition\":0,\"offset\":4,\"kind\":\"bad_request\",\"reason\":\"r\",\"line\":\"2026-01-01T00:00:00,1,GET /other\",\"bytes\":30}}\n"
        ),
    );
    env.write(
        "data/dataset_1/dataset.json",
        format!(
            r#"{{"format":1,"source":{{"import":"synthetic"}},"counts":{{"events":{n},"watch":0,"rate":{n},"requests":2,"users":3,"movies":0}}}}"#
        ),
    );
    env.ok(&["add", "data/dataset_1", "--kind", "dataset"]);
    env.ok(&["train", "--dataset", "dataset_1", "--algo", "popularity"]);
    env.write("config.json", r#"{"default": "model_v1"}"#);
    env.commit("dataset, model, config");
    env
}

/// Every regular file under `dir`, recursively (symlinks not followed).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("list {}: {e}", d.display())) {
            let e = e.expect("entry");
            let t = e.file_type().expect("type");
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// The files under `dirs` holding any of `needles`, with the needle.
fn holders(dirs: &[&Path], needles: &[String]) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for dir in dirs {
        for f in files_under(dir) {
            let bytes = fs::read(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
            for n in needles {
                if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                    found.push((f.clone(), n.clone()));
                }
            }
        }
    }
    found
}

fn audit_clean(env: &Env) {
    let out = env.run(&["audit"]);
    assert!(
        out.status.success(),
        "audit: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The acceptance test: after `forget --user X`, `gc --grace 0s` and `push`,
/// no file of the project or its remote holds a byte of X's requests or
/// rows (lineage.db, its WAL, state.db, objects and log/ included), every
/// other request still resolves and `audit` is clean.
/// Rows in a monitoring database through the monitor's own join: X's
/// answers `x_ids` (the ids the server gave), a watch that converts the
/// first, a malformed line of X's, and user 1's answer `other`; then an
/// hour later one more line on each source, so every window closes.
fn monitor_rows(sink: Box<dyn Sink>, x_ids: &[String], other: &[String]) -> Monitor {
    const T0: i64 = 1_767_312_000_000;
    let mut m = Monitor::open(sink, JoinConfig::default()).expect("monitor");
    let mut off = 0;
    let mut pos = |source: &str| {
        off += 1;
        Position {
            source: source.into(),
            part: 0,
            off,
        }
    };
    let answer = |id: &str, time: i64, user: i64| RequestRecord {
        id: id.to_string(),
        time,
        user,
        served: ServedBy {
            model: "model_v1".into(),
            model_digest: "m".repeat(64),
            dataset: "dataset_1".into(),
            dataset_digest: "d".repeat(64),
            train_run: "r".repeat(64),
            code_commit: "c".repeat(40),
            config_digest: "f".repeat(64),
        },
        route: "default".into(),
        status: "ok".into(),
        latency_us: 900,
        items: vec!["movie+1+1990".into(), "movie+2+1990".into()],
    };
    for (k, id) in x_ids.iter().enumerate() {
        m.request_record(pos("requests"), answer(id, T0 + k as i64 * 1000, X as i64));
    }
    m.request_record(pos("requests"), answer(&other[0], T0, 1));
    let watch = |t: i64, user: u64| {
        Event::Watch {
            time_ms: t,
            user,
            movie: "movie+1+1990".to_string().into(),
            minute: 0,
        }
        .to_line()
    };
    m.stream_message(pos("stream"), watch(T0 + 5_000, X as u64).as_bytes());
    m.stream_message(pos("stream"), watch(T0 + 6_000, 1).as_bytes());
    m.stream_message(
        pos("stream"),
        format!("2026-01-02T00:00:09,{X},GET /{X_MON_BAD}").as_bytes(),
    );
    let later = T0 + 2 * 3_600_000;
    m.request_record(pos("requests"), answer(&other[1], later, 1));
    m.stream_message(pos("stream"), watch(later, 1).as_bytes());
    m.flush().expect("flush");
    m
}

fn user_rows(sink: &mut dyn Sink, user: u32) -> i64 {
    [
        "mon_events",
        "mon_answers",
        "mon_answer_items",
        "mon_outcomes",
    ]
    .iter()
    .map(|t| {
        sink.rows(
            &format!("SELECT count(*) FROM {t} WHERE user_id = $1"),
            &[user as i64],
        )
        .expect("count")[0][0]
            .int()
    })
    .sum()
}

#[test]
fn forget_leaves_no_byte_of_the_user_in_the_project_or_the_remote() {
    let env = project();
    let remote = env.add_origin();
    let s = serve(&env);
    let mut x_ids = Vec::new();
    let mut other_ids = Vec::new();
    for round in 0..3 {
        x_ids.push(s.recommend(X));
        for u in [1, 2, 5 + round] {
            other_ids.push(s.recommend(u));
        }
    }
    s.stop();
    env.ok(&["push"]);
    let db = recsys::monitor::sqlite::SqliteSink::open(&env.path("monitor.db")).expect("db");
    let mut mon = monitor_rows(Box::new(db), &x_ids, &other_ids);
    let x_rows = user_rows(mon.sink_mut(), X);
    let others_before = user_rows(mon.sink_mut(), 1);
    assert!(
        x_rows >= 3 + 6 + 3,
        "X's answers, items, outcomes: {x_rows}"
    );
    drop(mon);
    let mut needles: Vec<String> = x_ids.clone();
    needles.extend([X_USER_ROW, X_EVENT, X_QUARANTINE, X_MON_BAD].map(String::from));
    // The needles are there to be found: the grep can fail.
    let before = holders(&[&env.root, &remote], &needles);
    for n in &needles {
        assert!(
            before.iter().any(|(_, m)| m == n),
            "{n} is nowhere before forget"
        );
    }
    assert!(
        before
            .iter()
            .any(|(f, m)| f.starts_with(&remote) && *m == x_ids[0]),
        "the remote holds X's requests before forget"
    );
    let old_ptr = env.read("data/dataset_1.recsys");

    let dry = env.json(&["forget", "--user", &X.to_string(), "--dry-run", "--json"]);
    assert_eq!(dry["run"], serde_json::Value::Null);
    assert_eq!(dry["monitor"][0]["tables"]["mon_answers"], 3, "{dry}");
    assert_eq!(env.read("data/dataset_1.recsys"), old_ptr, "dry run wrote");

    let r = env.json(&[
        "forget",
        "--user",
        &X.to_string(),
        "--reason",
        "erasure request 17",
        "--json",
    ]);
    let removed: u64 = r["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| s["requests_removed"].as_u64().expect("count"))
        .sum();
    assert_eq!(removed, 3, "{r}");
    assert_eq!(r["index_rows_removed"], 3, "{r}");
    let ds = &r["datasets"][0];
    assert_eq!(ds["name"], "dataset_1", "{r}");
    assert_eq!(ds["removed"]["users.csv"], 1, "{r}");
    assert_eq!(ds["removed"]["requests.csv"], 1, "{r}");
    assert_eq!(ds["removed"]["quarantine.jsonl"], 1, "{r}");
    assert_eq!(ds["removed"]["events.csv"], 4, "{r}");
    assert_eq!(r["models_trained_on_erased"][0]["model"], "model_v1", "{r}");
    assert_eq!(r["lineage_scrubbed"], true, "{r}");
    let mon = &r["monitor"][0];
    assert_eq!(mon["tables"]["mon_answers"], 3, "{r}");
    assert_eq!(mon["tables"]["mon_outcomes"], 3, "{r}");
    assert_eq!(mon["tables"]["mon_events"], 1, "{r}");
    assert_eq!(mon["bad_lines"], 1, "{r}");
    assert_eq!(mon["monitor_running"], false, "{r}");
    assert_eq!(mon["scrubbed"], true, "{r}");
    let mut db = recsys::monitor::sqlite::SqliteSink::open(&env.path("monitor.db")).expect("db");
    assert_eq!(user_rows(&mut db, X), 0);
    assert_eq!(
        user_rows(&mut db, 1),
        others_before,
        "other users' rows stay"
    );
    drop(db);
    let run = r["run"].as_str().expect("run id").to_string();
    // The pointer keeps its name and names the new bytes and the forget run.
    let ptr = String::from_utf8(env.read("data/dataset_1.recsys")).expect("utf8");
    assert!(ptr.contains("name: dataset_1"), "{ptr}");
    assert!(ptr.contains(&format!("run: {run}")), "{ptr}");
    assert!(
        ptr.contains(ds["new"].as_str().expect("new digest")),
        "{ptr}"
    );
    // The record says what, when, why, and names the user only by a hash.
    let record = env.read(&format!("store/{}/{}", &run[..2], &run[2..]));
    let record: serde_json::Value = serde_json::from_slice(&record).expect("record");
    assert_eq!(record["kind"], "forget");
    assert_eq!(record["params"]["reason"], "erasure request 17");
    assert_eq!(record["metrics"]["requests_removed"], 3);
    assert!(record["source"]["erased"].as_array().expect("erased").len() >= 3);
    assert_eq!(
        record["params"]["user_hash"].as_str().map(str::len),
        Some(64),
        "{record}"
    );

    env.ok(&["gc", "--grace", "0s"]);
    let push = env.json(&["push", "--json"]);
    assert!(
        !push["erased"]["deleted"]
            .as_array()
            .expect("deleted")
            .is_empty(),
        "{push}"
    );
    assert_eq!(
        push["erased"]["still_referenced"],
        serde_json::json!([]),
        "{push}"
    );

    let left = holders(&[&env.root, &remote], &needles);
    assert!(left.is_empty(), "bytes of user {X} remain: {left:#?}");
    let remote_index = fs::read_to_string(remote.join("index.log")).expect("index.log");
    for (e, _) in record["source"]["erased"]
        .as_array()
        .expect("erased")
        .iter()
        .map(|e| (e["digest"].as_str().expect("digest"), ()))
    {
        assert!(!remote_index.contains(e), "index.log still names {e}");
        assert!(
            !remote.join(&e[..2]).join(&e[2..]).exists(),
            "{e} on the remote"
        );
    }

    for id in &other_ids {
        let l = env.json(&["lineage", id, "--json"]);
        assert_eq!(l["request"]["id"], id.as_str(), "{l}");
        assert!(l["model"].is_object(), "{id}: {l}");
    }
    assert_forgotten(&env, &x_ids);
    audit_clean(&env);
    // Forgetting again: nothing left, said so, nothing changed.
    let err = env.fails(2, &["forget", "--user", &X.to_string()]);
    assert!(err.contains("forgotten already by run"), "{err}");
    // A rebuilt index does not bring the user back, and stays clean.
    env.ok(&["lineage", "--rebuild"]);
    assert_forgotten(&env, &x_ids);
    audit_clean(&env);
}

/// A forgotten id is no longer logged anywhere: `lineage` can only say
/// what the id itself names (config and model), that user and items are
/// unknown, and that a forget may have removed it.
fn assert_forgotten(env: &Env, ids: &[String]) {
    for id in ids {
        let out = env.run(&["lineage", id, "--json"]);
        let l: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_eq!(l["logged"], false, "{id} is still logged: {l}");
        assert!(
            l["unknown"]
                .as_array()
                .is_some_and(|u| u.contains(&"user".into()) && u.contains(&"items".into())),
            "{l}"
        );
        assert!(l.to_string().contains("recsys forget"), "{l}");
    }
}

/// `gc --requests-older-than`: segments whose newest request is older than
/// the cutoff go (objects, index rows), younger ones stay, a retention run
/// record says so, and audit is clean.
#[test]
fn retention_drops_old_segments_and_keeps_young_ones() {
    let env = project();
    let s = serve(&env);
    let old_id = s.recommend(1);
    s.stop();
    std::thread::sleep(Duration::from_millis(50));
    let s = serve(&env);
    let young_id = s.recommend(2);
    s.stop();
    let t_old = env.json(&["lineage", &old_id, "--json"])["request"]["time"]
        .as_i64()
        .expect("time");
    let t_young = env.json(&["lineage", &young_id, "--json"])["request"]["time"]
        .as_i64()
        .expect("time");
    assert!(t_old < t_young);
    // "Now" is 90 days after a moment between the two requests.
    let now = (t_old + t_young) / 2 + 90 * 86_400_000;
    let gc = |extra: &[&str]| {
        let mut args = vec![
            "gc",
            "--requests-older-than",
            "90d",
            "--grace",
            "0s",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = env
            .cmd(&args)
            .env("RECSYS_NOW", now.to_string())
            .output()
            .expect("gc");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("json")
    };
    let dry = gc(&["--dry-run"]);
    let dropped = dry["retention"]["dropped"].as_array().expect("dropped");
    assert_eq!(dropped.len(), 1, "{dry}");
    let seg = dropped[0]["digest"].as_str().expect("digest").to_string();
    assert!(
        dry["removed"]
            .as_array()
            .expect("removed")
            .iter()
            .any(|d| d == seg.as_str()),
        "{dry}"
    );
    let seg_path = env.path(&format!("store/{}/{}", &seg[..2], &seg[2..]));
    assert!(seg_path.exists(), "a dry run removed it");
    env.ok(&["lineage", &old_id]);

    let r = gc(&[]);
    assert_eq!(r["retention"]["dropped"][0]["digest"], seg.as_str(), "{r}");
    assert_eq!(r["retention"]["index_rows_removed"], 1, "{r}");
    let run = r["retention"]["run"].as_str().expect("retention run");
    let record: serde_json::Value =
        serde_json::from_slice(&env.read(&format!("store/{}/{}", &run[..2], &run[2..])))
            .expect("record");
    assert_eq!(record["kind"], "retention");
    assert_eq!(record["source"]["erased"][0]["digest"], seg.as_str());
    assert!(!seg_path.exists(), "the old segment is still stored");
    let out = env.run(&["lineage", &old_id, "--json"]);
    let l: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(l["logged"], false, "{old_id} is still logged: {l}");
    assert!(l.to_string().contains("retention"), "{l}");
    let l = env.json(&["lineage", &young_id, "--json"]);
    assert!(l["model"].is_object(), "{l}");
    audit_clean(&env);
    // What only the request log kept is collected with it: the model is
    // still named by its pointer, so it stays.
    assert!(env.path("models/model_v1.bin").exists());
}

#[test]
fn forgetting_an_unknown_user_says_so_and_changes_nothing() {
    let env = project();
    let s = serve(&env);
    s.recommend(1);
    s.stop();
    let list = |env: &Env| -> Vec<(PathBuf, Vec<u8>)> {
        files_under(&env.root)
            .into_iter()
            .filter(|p| !p.starts_with(env.path(".git")))
            .map(|p| {
                let b = fs::read(&p).expect("read");
                (p, b)
            })
            .collect()
    };
    // lineage.db's WAL is checkpointed by whoever opens it: compare what
    // recsys owns as data, not SQLite's files.
    let data = |v: Vec<(PathBuf, Vec<u8>)>| -> Vec<(PathBuf, Vec<u8>)> {
        v.into_iter()
            .filter(|(p, _)| {
                let n = p.file_name().unwrap_or_default().to_string_lossy();
                !n.starts_with("lineage.db") && !n.starts_with("state.db")
            })
            .collect()
    };
    let before = data(list(&env));
    let err = env.fails(2, &["forget", "--user", "999999"]);
    assert!(
        err.contains("user 999999 is in no request-log segment"),
        "{err}"
    );
    assert_eq!(
        data(list(&env)),
        before,
        "forget of an unknown user changed files"
    );
    let err = env.fails(2, &["gc", "--requests-older-than", "90 parsecs"]);
    assert!(err.contains("--requests-older-than"), "{err}");
    let err = env.fails(2, &["forget", "--user", "alice"]);
    assert!(err.contains("--user"), "{err}");
}

#[test]
fn forget_reaches_a_postgres_monitoring_database_and_warns_while_a_monitor_writes() {
    let env = project();
    let conn = crate::monitor::pg_schema("forget");
    let ids: Vec<String> = (1..=4u128)
        .map(|i| uuid::Uuid::from_u128(i).hyphenated().to_string())
        .collect();
    let pg = recsys::monitor::postgres::PgSink::connect(&conn).expect("pg");
    drop(monitor_rows(Box::new(pg), &ids[..2], &ids[2..]));
    // A monitor job writing to each database, as `recsys monitor` does.
    let mut writing = recsys::monitor::postgres::PgSink::connect(&conn).expect("pg");
    writing.announce_running().expect("announce");
    let sqlite = recsys::monitor::sqlite::SqliteSink::open(&env.path("monitor.db")).expect("db");
    let mut local = monitor_rows(Box::new(sqlite), &ids[..2], &ids[2..]);
    local.sink_mut().announce_running().expect("announce");
    let ptr = env.read("data/dataset_1.recsys");

    // An unreachable database fails the command before anything changes.
    let err = env.fails(
        2,
        &[
            "forget",
            "--user",
            &X.to_string(),
            "--monitor-db",
            "postgres://postgres@127.0.0.1:1/test",
        ],
    );
    assert!(err.contains("PostgreSQL monitoring database"), "{err}");
    assert_eq!(
        env.read("data/dataset_1.recsys"),
        ptr,
        "a failed forget wrote"
    );

    // A dry run counts, names each database and warns about the monitors.
    let out = env.run(&[
        "forget",
        "--user",
        &X.to_string(),
        "--monitor-db",
        &conn,
        "--dry-run",
    ]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        said.matches("would remove from the monitoring database")
            .count(),
        2,
        "{said}"
    );
    assert!(said.contains("2 in mon_answers"), "{said}");
    assert_eq!(
        stderr.matches("a `recsys monitor` is writing to").count(),
        2,
        "{stderr}"
    );
    let mut pg = recsys::monitor::postgres::PgSink::connect(&conn).expect("pg");
    assert!(user_rows(&mut pg, X) > 0, "the dry run removed rows");

    let out = env.run(&[
        "forget",
        "--user",
        &X.to_string(),
        "--monitor-db",
        &conn,
        "--json",
    ]);
    assert!(out.status.success(), "{out:?}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mons = r["monitor"].as_array().expect("monitor");
    assert_eq!(mons.len(), 2, "{r}");
    for m in mons {
        assert_eq!(m["tables"]["mon_answers"], 2, "{r}");
        assert_eq!(m["bad_lines"], 1, "{r}");
        assert_eq!(m["monitor_running"], true, "{r}");
    }
    assert_eq!(user_rows(&mut pg, X), 0);
    assert!(user_rows(&mut pg, 1) > 0, "other users' rows stay");
    assert_eq!(user_rows(local.sink_mut(), X), 0);

    // Nothing left anywhere: forget says the user was forgotten.
    drop(local);
    drop(writing);
    let err = env.fails(
        2,
        &["forget", "--user", &X.to_string(), "--monitor-db", &conn],
    );
    assert!(err.contains("forgotten already by run"), "{err}");
    crate::monitor::drop_schema(&conn);
}
