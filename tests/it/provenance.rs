//! Provenance that nothing can lose (issue 10): the reproductions, each
//! through the binary. `gc --grace 0s` is used wherever a test means "an old
//! object": everything these tests write is younger than the default hour.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{Env, serve};

fn pointer_field(env: &Env, ptr: &str, key: &str) -> String {
    let text = String::from_utf8(env.read(ptr)).expect("utf8");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("{ptr} has no {key}:\n{text}"))
        .to_string()
}

fn object_path(env: &Env, digest: &str) -> std::path::PathBuf {
    env.path("store").join(&digest[..2]).join(&digest[2..])
}

/// A project with `dataset_1` (a small synthetic dataset) and `model_v1`
/// (popularity) trained on it by `recsys train`, served by `config.json`.
fn served_project() -> Env {
    let env = Env::new();
    add_served_model(&env, "data/dataset_1");
    env.commit("dataset, model, config");
    env
}

/// A small synthetic dataset at `dir`, a popularity model trained on it by
/// `recsys train`, and `config.json` serving it; returns the dataset's and
/// the model's version names.
pub(crate) fn add_served_model(env: &Env, dir: &str) -> (String, String) {
    let mut events = String::from("time_ms,user,movie,kind,value\n");
    let mut n = 0;
    for u in 1..=12 {
        for m in 0..8 {
            if (u + m) % 3 != 0 {
                events.push_str(&format!(
                    "{},{u},movie+{m}+1990,rate,4\n",
                    1000 + u * 10 + m
                ));
                n += 1;
            }
        }
    }
    env.write(&format!("{dir}/events.csv"), events);
    env.write(
        &format!("{dir}/users.csv"),
        "user,age,gender,occupation\n1,20,M,x\n",
    );
    env.write(&format!("{dir}/movies.csv"), "movie,title,year,genres\n");
    env.write(
        &format!("{dir}/requests.csv"),
        "time_ms,user,status,latency_ms,items\n",
    );
    env.write(
        &format!("{dir}/dataset.json"),
        format!(
            r#"{{"format":1,"source":{{"import":"synthetic"}},"counts":{{"events":{n},"watch":0,"rate":{n},"requests":0,"users":1,"movies":0}}}}"#
        ),
    );
    env.ok(&["add", dir, "--kind", "dataset"]);
    let ds = pointer_field(env, &format!("{dir}.recsys"), "name");
    env.ok(&["train", "--dataset", &ds, "--algo", "popularity"]);
    let model = env
        .json(&["ls", "--json"])
        .as_array()
        .expect("ls list")
        .iter()
        .filter(|a| a["kind"] == "model")
        .filter_map(|a| a["name"].as_str().map(String::from))
        .next_back()
        .expect("a model");
    env.write("config.json", format!(r#"{{"default": "{model}"}}"#));
    (ds, model)
}

fn digest_of(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Why `gc --dry-run --json` keeps `digest` (panics when it does not).
fn kept_by(env: &Env, digest: &str) -> serde_json::Value {
    let dry = env.json(&["gc", "--dry-run", "--json", "--grace", "0s"]);
    dry["kept"]
        .as_array()
        .expect("kept list")
        .iter()
        .find(|k| k["digest"] == digest)
        .cloned()
        .unwrap_or_else(|| panic!("{digest} would be removed: {dry}"))
}

/// Reproduction 1: every config version that served traffic survives gc,
/// the live one included (while the server runs, its segment still open).
#[test]
fn configs_that_served_traffic_survive_gc() {
    let env = served_project();
    let first = digest_of(&env.read("config.json"));
    let s = serve(&env);
    let ids: Vec<String> = (1..=5).map(|u| s.recommend(u)).collect();
    s.stop();

    // A second version (same meaning, other bytes), served while gc runs.
    env.write("config.json", r#"{ "default": "model_v1" }"#);
    let second = digest_of(&env.read("config.json"));
    assert_ne!(first, second);
    let s = serve(&env);
    let live_id = s.recommend(7);
    std::thread::sleep(Duration::from_millis(300)); // past a log batch
    let why = kept_by(&env, &second);
    assert_eq!(why["role"], "config", "{why}");
    env.ok(&["gc", "--grace", "0s"]);
    assert!(object_path(&env, &second).exists(), "the live config");
    s.stop();
    // The config.json of a server that has not answered yet is kept too.
    env.write("config.json", r#"{"default":  "model_v1"}"#);
    let third = digest_of(&env.read("config.json"));
    let s = serve(&env);
    env.ok(&["gc", "--grace", "0s"]);
    assert!(object_path(&env, &third).exists(), "the serving config");
    s.stop();

    env.ok(&["gc", "--grace", "0s"]);
    for d in [&first, &second, &third] {
        assert!(object_path(&env, d).exists(), "config {d} was collected");
    }
    let why = kept_by(&env, &first);
    assert_eq!(
        (why["root"].as_str(), why["role"].as_str()),
        (Some("segment"), Some("config"))
    );
    let out = env.run(&["audit"]);
    assert!(
        out.status.success(),
        "audit: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for id in ids.iter().chain([&live_id]) {
        let l = env.json(&["lineage", id, "--json"]);
        assert_eq!(l["notes"], serde_json::json!([]), "{id}: {l}");
    }
}

/// Reproduction 2: a retired model that answered requests is kept by gc,
/// said so by `gc --dry-run`, travels with `push`, and explains its answers
/// in a fresh clone.
#[test]
fn a_retired_model_that_answered_requests_is_kept_and_pushed() {
    let env = served_project();
    let v1 = pointer_field(&env, "models/model_v1.bin.recsys", "digest");
    let v1_bytes = env.read("models/model_v1.bin");
    let s = serve(&env);
    let id = s.recommend(3);
    s.stop();

    // Promote a new model and retire the old one, as a user does.
    env.ok(&[
        "train",
        "--dataset",
        "dataset_1",
        "--algo",
        "popularity",
        "--test-fraction",
        "0.3",
    ]);
    env.write("config.json", r#"{"default": "model_v2"}"#);
    fs::remove_file(env.path("models/model_v1.bin.recsys")).expect("retire pointer");
    fs::remove_file(env.path("models/model_v1.bin")).expect("retire file");
    env.commit("promote model_v2");

    let why = kept_by(&env, &v1);
    assert_eq!(why["root"], "segment", "{why}");
    assert_eq!(why["role"], "model", "{why}");
    env.ok(&["gc", "--grace", "0s"]);
    assert!(object_path(&env, &v1).exists(), "the model that answered");
    env.ok(&["audit"]);
    let l = env.json(&["lineage", &id, "--json"]);
    assert_eq!(l["request"]["model"], "model_v1");
    assert_eq!(l["model"]["run"]["kind"], "train");
    env.ok(&["checkout", "model_v1"]);
    assert_eq!(env.read("models/model_v1.bin"), v1_bytes);
    fs::remove_file(env.path("models/model_v1.bin")).expect("rm again");

    // Pushed although no pointer names it; a clone pulls and explains it.
    let remote = env.add_origin();
    env.commit("remote");
    env.ok(&["push"]);
    assert!(remote.join(&v1[..2]).join(&v1[2..]).exists(), "pushed");
    let other = env.tmp.path().join("other");
    let o = std::process::Command::new("git")
        .args(["clone", "-q"])
        .arg(&env.root)
        .arg(&other)
        .output()
        .expect("git clone");
    assert!(o.status.success());
    let clone = Env {
        tmp: tempfile::tempdir().expect("tmp"),
        root: fs::canonicalize(&other).expect("canon"),
    };
    clone.ok(&["init"]);
    clone.ok(&["pull"]);
    assert!(
        object_path(&clone, &v1).exists(),
        "fetched with its requests"
    );
    clone.ok(&["audit"]);
    let there = clone.json(&["lineage", &id, "--json"]);
    assert_eq!(there["request"], l["request"]);
    assert_eq!(there["restore"], l["restore"]);
}

/// Reproduction 3: `add` and `gc` at once never lose what add stored.
#[test]
fn add_and_gc_at_once_never_lose_the_added_object() {
    let env = Env::new();
    for i in 0..30 {
        let rel = format!("data/f{i}.csv");
        env.write(&rel, format!("version {i} of the data\n").repeat(2000));
        let spawn = |args: &[&str]| {
            env.cmd(args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        };
        let add = spawn(&["add", &rel]);
        let gc = spawn(&["gc", "--grace", "0s"]);
        for (what, c) in [("add", add), ("gc", gc)] {
            let o = c.wait_with_output().expect("wait");
            assert!(
                o.status.success(),
                "{what} #{i}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let d = pointer_field(&env, &format!("{rel}.recsys"), "digest");
        assert!(
            object_path(&env, &d).exists(),
            "try {i}: gc took the object add stored"
        );
    }
    let st = env.json(&["status", "--json"]);
    assert_eq!(st.as_array().expect("list").len(), 30);
    for a in st.as_array().expect("list") {
        assert_eq!(a["store"], "present", "{a}");
    }
    env.ok(&["audit"]);
}

/// Reproduction 4: `data/` moved to a bigger disk behind a symlink is still
/// found by status, audit and gc (and checkout and add work through it); a
/// pointer file that cannot be read stops gc.
#[test]
fn a_data_directory_moved_behind_a_symlink_is_still_tracked() {
    let env = Env::new();
    env.write("data/ratings.csv", "u,i,r\n1,2,5\n");
    env.write("data/d/part-0", "part zero");
    env.ok(&["add", "data/ratings.csv", "data/d"]);
    env.commit("data");
    let file = pointer_field(&env, "data/ratings.csv.recsys", "digest");
    let dir = pointer_field(&env, "data/d.recsys", "digest");
    let part = digest_of(b"part zero");

    let big = env.tmp.path().join("bigdisk");
    fs::create_dir_all(&big).expect("mkdir");
    fs::rename(env.path("data"), big.join("data")).expect("move data");
    std::os::unix::fs::symlink(big.join("data"), env.path("data")).expect("symlink");

    let st = env.json(&["status", "--json"]);
    let names: Vec<&str> = st
        .as_array()
        .expect("list")
        .iter()
        .map(|a| a["path"].as_str().expect("path"))
        .collect();
    assert_eq!(names, ["data/d", "data/ratings.csv"], "{st}");
    assert!(
        st.as_array()
            .expect("list")
            .iter()
            .all(|a| a["workspace"] == "unchanged")
    );
    env.ok(&["audit"]);
    assert_eq!(kept_by(&env, &part)["pointer"], "data/d.recsys");
    env.ok(&["gc", "--grace", "0s"]);
    for d in [&file, &dir, &part] {
        assert!(object_path(&env, d).exists(), "gc took {d}");
    }
    // Through the link, made on this machine (git does not track it).
    fs::remove_file(env.path("data/ratings.csv")).expect("rm");
    env.ok(&["checkout", "data/ratings.csv"]);
    assert_eq!(
        fs::read(big.join("data/ratings.csv")).expect("restored"),
        b"u,i,r\n1,2,5\n"
    );
    env.write("data/new.csv", "new");
    env.ok(&["add", "data/new.csv"]);
    assert!(big.join("data/new.csv.recsys").exists());

    // A pointer that cannot be read: gc removes nothing and names it.
    env.write("unneeded.bin", "nobody names me");
    env.ok(&["add", "unneeded.bin"]);
    let unneeded = pointer_field(&env, "unneeded.bin.recsys", "digest");
    fs::remove_file(env.path("unneeded.bin.recsys")).expect("rm pointer");
    env.write("data/broken.recsys", "recsys-pointer: 1\nnot a pointer\n");
    let err = env.fails(2, &["gc", "--grace", "0s"]);
    assert!(err.contains("data/broken.recsys:2"), "{err}");
    assert!(err.contains("removed nothing"), "{err}");
    assert!(object_path(&env, &unneeded).exists());
    fs::remove_file(env.path("data/broken.recsys")).expect("rm broken");
    env.ok(&["gc", "--grace", "0s"]);
    assert!(!object_path(&env, &unneeded).exists());
}

/// Reproduction 5: pointer paths (and manifest entries) naming git's or
/// recsys's own files are refused, with the line, by every command.
#[test]
fn pointers_naming_git_or_recsys_files_are_refused_by_every_command() {
    let env = Env::new();
    env.write("x.bin", "12345678");
    env.ok(&["add", "x.bin"]);
    env.commit("x");
    let good = String::from_utf8(env.read("x.bin.recsys")).expect("utf8");
    let git_head = env.read(".git/HEAD");
    for name in [
        ".git",
        "store",
        "lineage.db",
        "lineage.db-wal",
        ".recsys",
        "log",
        ".gitignore",
        "x.bin.recsys",
    ] {
        let text = good.replace("path: x.bin", &format!("path: {name}"));
        env.write("evil.recsys", &text);
        for args in [
            &["checkout", "--force", "evil.recsys"][..],
            &["checkout", "--force"],
            &["status"],
            &["push"],
        ] {
            let out = env.run(args);
            assert_eq!(out.status.code(), Some(2), "{name}: {args:?}: {out:?}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("evil.recsys:4"), "{name}: {args:?}: {err}");
            assert!(err.contains("belongs to"), "{name}: {args:?}: {err}");
        }
        let err = env.fails(2, &["gc", "--grace", "0s"]);
        assert!(err.contains("evil.recsys:4"), "{name}: {err}");
        let out = env.run(&["audit"]);
        assert_eq!(out.status.code(), Some(1), "{name}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("bad-pointer: evil.recsys"),
            "{name}: {out:?}"
        );
    }
    fs::remove_file(env.path("evil.recsys")).expect("rm");
    assert!(env.path(".git").is_dir() && env.read(".git/HEAD") == git_head);
    assert!(env.path("store").is_dir() && env.path(".recsys").is_dir());
    assert!(env.path("x.bin.recsys").is_file());
    env.ok(&["audit"]);

    // Below the root, `.git` and `.gitignore` are still git's; `store` is
    // just a name.
    env.write("data/keep.txt", "mine");
    for name in [".git", ".gitignore"] {
        env.write(
            "data/evil.recsys",
            good.replace("path: x.bin", &format!("path: {name}")),
        );
        let err = env.fails(2, &["checkout", "--force", "data/evil.recsys"]);
        assert!(err.contains("data/evil.recsys:4"), "{err}");
        assert!(
            !env.path(&format!("data/{name}")).exists(),
            "{name} written"
        );
    }
    env.write(
        "data/evil.recsys",
        good.replace("path: x.bin", "path: store"),
    );
    env.ok(&["checkout", "data/evil.recsys"]);
    assert_eq!(env.read("data/store"), b"12345678");
    fs::remove_file(env.path("data/evil.recsys")).expect("rm");

    // What a user types is checked the same way.
    for p in [
        ".git/config",
        "lineage.db",
        "store/tmp",
        "data/.gitignore",
        "x.bin.recsys",
    ] {
        let err = env.fails(2, &["add", p]);
        assert!(
            err.contains("belongs to") || err.contains("pointer file"),
            "{p}: {err}"
        );
    }

    // A manifest from a remote with an entry inside `.git`.
    let inner = digest_of(b"[core]\n");
    let manifest = format!("recsys-manifest 1\n{inner} 7 644 .git/config\n");
    let mdigest = digest_of(manifest.as_bytes());
    let remote = env.add_origin();
    for (d, bytes) in [
        (&mdigest, manifest.as_bytes()),
        (&inner, b"[core]\n".as_slice()),
    ] {
        fs::create_dir_all(remote.join(&d[..2])).expect("mkdir");
        fs::write(remote.join(&d[..2]).join(&d[2..]), bytes).expect("write");
    }
    env.write(
        "sub.recsys",
        format!("recsys-pointer: 1\npath: sub\ntype: dir\nkind: dataset\nname: dataset_9\ndigest: {mdigest}\nsize: 7\nfiles: 1\n"),
    );
    let err = env.fails(2, &["pull", "sub"]);
    assert!(err.contains("belongs to git"), "{err}");
    assert!(!env.path("sub").exists());
}

/// Reproduction 6: an object or a work-tree file edited in place with its
/// size, inode and mtime restored (`touch -r`) is caught by its change time:
/// checkout never writes the corrupt object out, status says modified.
#[test]
fn edits_in_place_with_the_mtime_restored_are_caught() {
    let env = Env::new();
    env.write("m.bin", "original bytes");
    env.write("w.bin", "work-tree bytes");
    env.ok(&["add", "m.bin", "w.bin"]);
    let digest = pointer_field(&env, "m.bin.recsys", "digest");
    let obj = object_path(&env, &digest);
    // Proven once (stamps recorded), then removed from the work tree.
    fs::remove_file(env.path("m.bin")).expect("rm");
    env.ok(&["checkout", "m.bin"]);
    env.ok(&["status", "--exit-code"]);
    fs::remove_file(env.path("m.bin")).expect("rm");

    let edit_in_place = |p: &Path, bytes: &[u8]| {
        use std::os::unix::fs::MetadataExt;
        let before = fs::metadata(p).expect("stat");
        let mode = before.permissions().mode();
        fs::set_permissions(p, fs::Permissions::from_mode(0o644)).expect("chmod");
        std::thread::sleep(Duration::from_millis(20));
        let f = fs::OpenOptions::new().write(true).open(p).expect("open");
        (&f).write_all(bytes).expect("write");
        f.set_modified(before.modified().expect("mtime"))
            .expect("touch -r");
        drop(f);
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).expect("chmod back");
        let after = fs::metadata(p).expect("stat");
        assert_eq!(
            (after.len(), after.ino(), after.mtime(), after.mtime_nsec()),
            (
                before.len(),
                before.ino(),
                before.mtime(),
                before.mtime_nsec()
            ),
            "size, inode and mtime as they were"
        );
    };
    edit_in_place(&obj, b"tampered bytes");
    let err = env.fails(2, &["checkout", "m.bin"]);
    assert!(err.contains("corrupt"), "{err}");
    assert!(
        !env.path("m.bin").exists(),
        "the corrupt object was written out"
    );
    let out = env.run(&["audit"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("corrupt-object: {digest}")));

    edit_in_place(&env.path("w.bin"), b"work-tree BYTES");
    let st = env.json(&["status", "--json", "w.bin"]);
    assert_eq!(st[0]["workspace"], "modified", "{st}");
}

/// Reproduction 7: the request index comes back from the segments, a
/// damaged lineage.db is set aside and rebuilt, and audit compares the
/// index with the segments.
#[test]
fn the_request_index_always_comes_back() {
    let env = served_project();
    let s = serve(&env);
    let ids: Vec<String> = (1..=12).map(|u| s.recommend(u)).collect();
    s.stop();
    env.ok(&["audit"]);

    // The index lost: audit notices, rebuild restores every request.
    for f in ["lineage.db", "lineage.db-wal", "lineage.db-shm"] {
        let _ = fs::remove_file(env.path(f));
    }
    let out = env.run(&["audit"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("requests-missing-from-index"), "{text}");
    assert!(text.contains("of its 12 request(s)"), "{text}");
    let r = env.json(&["lineage", "--rebuild", "--json"]);
    assert_eq!(r["requests_indexed"], 12, "{r}");
    for id in &ids {
        let l = env.json(&["lineage", id, "--json"]);
        assert_eq!(l["request"]["model"], "model_v1", "{id}");
        assert_eq!(l["dataset"]["artifact"]["name"], "dataset_1", "{id}");
    }
    env.ok(&["audit"]);

    // A row missing from the index, then one the segments never held.
    let conn = rusqlite::Connection::open(env.path("lineage.db")).expect("open");
    conn.execute("DELETE FROM requests WHERE id = ?1", [&ids[4]])
        .expect("delete");
    drop(conn);
    let out = env.run(&["audit"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("requests-missing-from-index"), "{text}");
    assert!(text.contains(&ids[4]), "names the request: {text}");
    let conn = rusqlite::Connection::open(env.path("lineage.db")).expect("open");
    conn.execute(
        "UPDATE requests SET id = 'not-logged-anywhere' WHERE id = ?1",
        [&ids[5]],
    )
    .expect("update");
    drop(conn);
    let out = env.run(&["audit"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("requests-missing-from-log"), "{text}");
    assert!(text.contains("not-logged-anywhere"), "{text}");
    env.ok(&["lineage", "--rebuild"]);
    env.ok(&["audit"]);

    // Cut in half: every command says so and how to recover.
    env.ok(&["ls"]); // the last connection checkpoints the WAL
    let db = env.path("lineage.db");
    let len = fs::metadata(&db).expect("stat").len();
    let f = fs::OpenOptions::new().write(true).open(&db).expect("open");
    f.set_len(len / 2).expect("truncate");
    drop(f);
    for args in [&["status"][..], &["audit"], &["lineage", &ids[0]], &["gc"]] {
        let err = env.fails(2, args);
        assert!(err.contains("is damaged"), "{args:?}: {err}");
        assert!(err.contains("recsys lineage --rebuild"), "{args:?}: {err}");
    }
    let out = env.run(&["lineage", "--rebuild"]);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    let aside = err
        .lines()
        .find_map(|l| l.strip_prefix("lineage.db was damaged: set aside as "))
        .unwrap_or_else(|| panic!("names the set-aside copy: {err}"));
    assert!(Path::new(aside).exists(), "{aside}");
    assert!(aside.contains("lineage.db.corrupt-"), "{aside}");
    assert_eq!(fs::metadata(aside).expect("aside").len(), len / 2);
    let git = env.git(&["status", "--porcelain"]);
    assert!(
        !git.contains("corrupt"),
        "the copy is ignored by git: {git}"
    );
    for id in &ids {
        env.ok(&["lineage", id]);
    }
    env.ok(&["audit"]);
}

/// Clients on keep-alive connections asking for recommendations until told
/// to stop or the server goes away; each keeps every request id it
/// received a whole answer under.
pub(crate) struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    pub(crate) fn start(port: u16, clients: usize) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients = (0..clients)
            .map(|n| {
                let stop = stop.clone();
                std::thread::spawn(move || client(port, n as u32, &stop))
            })
            .collect();
        Load { stop, clients }
    }

    /// Every id received, by any client.
    pub(crate) fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.clients
            .into_iter()
            .flat_map(|c| c.join().expect("client thread"))
            .collect()
    }
}

/// One answer on a keep-alive connection: (status, request id), once the
/// whole body is read.
fn one_answer(
    s: &mut TcpStream,
    r: &mut BufReader<TcpStream>,
    user: u32,
) -> std::io::Result<(u16, Option<String>)> {
    // One write: pieces would wait out Nagle and a delayed ACK.
    s.write_all(format!("GET /recommend/{user} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let (mut len, mut id) = (0usize, None);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v
                    .trim()
                    .parse()
                    .map_err(|_| std::io::ErrorKind::InvalidData)?;
            } else if k.eq_ignore_ascii_case("x-request-id") {
                id = Some(v.trim().to_string());
            }
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((status, id))
}

fn client(port: u16, n: u32, stop: &std::sync::atomic::AtomicBool) -> Vec<String> {
    let mut ids = Vec::new();
    let mut user = n;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // Refused: the server is gone.
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
            break;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_nodelay(true);
        let Ok(rs) = s.try_clone() else { break };
        let mut r = BufReader::new(rs);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            user = user % 12 + 1;
            match one_answer(&mut s, &mut r, user) {
                Ok((200, Some(id))) => ids.push(id),
                Ok((status, id)) => panic!("answer {status} ({id:?}) under load"),
                Err(_) => break, // killed mid-answer: not received
            }
        }
    }
    ids
}

/// What every received id resolves to, checked through the library
/// (`Workspace::request_lineage`, `serve::unlogged::explain`: what
/// `recsys lineage <id>` calls); returns the ids that were logged.
pub(crate) fn check_ids_resolve(
    env: &Env,
    ids: &[String],
    model: &str,
    dataset: &str,
    config: &str,
) -> Result<std::collections::BTreeSet<String>, String> {
    let ws = recsys::workspace::Workspace::discover(&env.root, Default::default())
        .map_err(|e| e.to_string())?;
    let mut logged = std::collections::BTreeSet::new();
    for id in ids {
        let found = ws.request_lineage(id).map_err(|e| format!("{id}: {e}"))?;
        if let Some(l) = found.first() {
            let r = &l.request;
            if r.served.model != model || r.served.dataset != dataset || r.items.is_empty() {
                return Err(format!("{id}: logged as {r:?}"));
            }
            if r.served.config_digest != config {
                return Err(format!(
                    "{id}: logged with config {}",
                    r.served.config_digest
                ));
            }
            logged.insert(id.clone());
            continue;
        }
        let uuid: uuid::Uuid = id.parse().map_err(|e| format!("{id}: {e}"))?;
        let u = recsys::serve::unlogged::explain(&ws, &uuid)
            .map_err(|e| format!("{id}: {e}"))?
            .ok_or_else(|| format!("{id}: neither logged nor one of our ids"))?;
        let s = u
            .served
            .as_ref()
            .ok_or_else(|| format!("{id}: unlogged and unresolved: {:?}", u.notes))?;
        if !u.resolved()
            || u.logged
            || s.model != model
            || s.dataset != dataset
            || u.config_digest.as_deref() != Some(config)
            || u.model.is_none()
            || u.dataset.is_none()
            || !u.unknown.contains(&"items")
        {
            return Err(format!("{id}: unlogged, resolved as {u:?}"));
        }
    }
    Ok(logged)
}

/// Reproduction 8: `kill -9` of `recsys serve` under load. Every request
/// id a client received resolves: a logged answer fully, one whose log
/// line never reached the disk to its config, model and dataset with user
/// and items said to be unknown; before the server restarts, after its
/// crash recovery, and after `lineage --rebuild`.
#[test]
fn every_request_id_a_client_received_resolves_after_kill_9() {
    let env = served_project();
    let config = digest_of(&env.read("config.json"));
    let mut s = serve(&env);
    let load = Load::start(s.port, 3);
    std::thread::sleep(Duration::from_millis(400));
    s.child.kill().expect("kill -9");
    s.child.wait().expect("wait");
    let ids = load.finish();
    assert!(ids.len() > 100, "only {} answers under load", ids.len());
    let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an id was given twice");

    let logged = check_ids_resolve(&env, &ids, "model_v1", "dataset_1", &config)
        .unwrap_or_else(|e| panic!("before restart: {e}"));
    let unlogged: Vec<&String> = ids.iter().filter(|i| !logged.contains(*i)).collect();
    eprintln!(
        "kill -9 under load: {} ids received, {} logged, {} not",
        ids.len(),
        logged.len(),
        unlogged.len()
    );
    // The kill lands while answers are out and their batch is not synced.
    assert!(
        !unlogged.is_empty(),
        "the kill lost no log line: nothing tested"
    );
    // Through the binary, with --json and without.
    for id in unlogged.iter().take(20) {
        let l = env.json(&["lineage", id, "--json"]);
        assert_eq!(l["logged"], false, "{l}");
        assert_eq!(l["served"]["model"], "model_v1", "{l}");
        assert_eq!(l["served"]["dataset"], "dataset_1", "{l}");
        assert_eq!(l["config_digest"], config.as_str(), "{l}");
        assert_eq!(l["dataset"]["artifact"]["name"], "dataset_1", "{l}");
        assert!(
            l["unknown"]
                .as_array()
                .expect("unknown")
                .contains(&"items".into())
        );
    }
    let text = env.ok(&["lineage", unlogged[0]]);
    for want in [
        "(not logged)",
        "model:      model_v1",
        "dataset:    dataset_1",
        "items:      unknown",
        "never reached the disk",
        &config,
    ] {
        assert!(text.contains(want), "{want:?} in {text}");
    }
    assert!(!text.contains("recsys pull"), "no remote: {text}");
    let logged_one = logged.iter().next_back().expect("a logged answer");
    let l = env.json(&["lineage", logged_one, "--json"]);
    assert_eq!(l["request"]["model"], "model_v1", "{l}");

    // Not ours and not logged: said so, with no `recsys pull` to try
    // (no remote is configured).
    let err = env.fails(2, &["lineage", "0190f8b5-5d2e-4cc0-9a1b-8f3c2d4e5f60"]);
    assert!(err.contains("not a recsys request id"), "{err}");
    assert!(!err.contains("recsys pull"), "{err}");

    // Crash recovery indexes what was written; the rest still resolves.
    let s = serve(&env);
    let after = check_ids_resolve(&env, &ids, "model_v1", "dataset_1", &config)
        .unwrap_or_else(|e| panic!("after restart: {e}"));
    assert_eq!(after, logged, "recovery indexed exactly what was written");
    s.stop();
    env.ok(&["lineage", "--rebuild"]);
    let rebuilt = check_ids_resolve(&env, &ids, "model_v1", "dataset_1", &config)
        .unwrap_or_else(|e| panic!("after lineage --rebuild: {e}"));
    assert_eq!(rebuilt, logged);
    env.ok(&["audit"]);
    // What the unlogged ids name is kept by gc: the segments name it.
    env.ok(&["gc", "--grace", "0s"]);
    check_ids_resolve(&env, &ids, "model_v1", "dataset_1", &config)
        .unwrap_or_else(|e| panic!("after gc: {e}"));
}
