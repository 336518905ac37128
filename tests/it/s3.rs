//! S3-compatible remotes against two real, independent servers started here
//! on loopback ports: `s3s-fs` (Rust, files on disk, checks SigV4) and
//! `moto_server` (Python). A fault-injecting TCP proxy sits between recsys
//! and the server for the fault tests. `./scripts/setup.sh` installs both
//! servers; a test that cannot find one fails saying so.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{Env, git_cmd};

const KEY: &str = "recsys-test-key";
const SECRET: &str = "recsys-test-secret-0123456789";
const BUCKET: &str = "recs";

/// A free loopback port (bound then released: the server binds it next).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited at start ({st}); run ./scripts/setup.sh");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on 127.0.0.1:{port} within 30 s");
}

/// A running S3 server; killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    /// s3s-fs: the directory holding the buckets (objects are files).
    pub root: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The file behind `key` in `bucket` (s3s-fs only).
    pub fn file(&self, bucket: &str, key: &str) -> PathBuf {
        self.root
            .as_ref()
            .expect("an s3s-fs server")
            .join(bucket)
            .join(key)
    }
}

/// A server binary: in the target directory's tools/bin (where
/// scripts/setup.sh installs it), else on PATH.
fn tool(name: &str) -> PathBuf {
    let bin = crate::common::bin();
    let tools = bin
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("tools/bin").join(name));
    if let Some(t) = tools.filter(|t| t.exists()) {
        return t;
    }
    let on_path = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|c| c.exists())
    });
    on_path.unwrap_or_else(|| {
        panic!("{name} not found (in $CARGO_TARGET_DIR/tools/bin or PATH): run ./scripts/setup.sh")
    })
}

/// `s3s-fs` with access key [`KEY`] and bucket [`BUCKET`].
pub fn s3s_fs() -> Server {
    let bin = tool("s3s-fs");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("data");
    fs::create_dir_all(root.join(BUCKET)).expect("bucket dir");
    let port = free_port();
    let mut child = Command::new(&bin)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", KEY, "--secret-key", SECRET])
        .arg(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}; run ./scripts/setup.sh", bin.display()));
    wait_for_port(port, &mut child, "s3s-fs");
    Server {
        child,
        port,
        root: Some(root),
        _dir: dir,
    }
}

/// `moto_server` with bucket [`BUCKET`] (moto accepts any credentials).
pub fn moto() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut child = Command::new(tool("moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start moto_server: {e}; run ./scripts/setup.sh"));
    wait_for_port(port, &mut child, "moto_server");
    let st = raw_http(
        port,
        &format!(
            "PUT /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    );
    assert!(
        st.starts_with("HTTP/1.1 200"),
        "create bucket on moto: {st}"
    );
    Server {
        child,
        port,
        root: None,
        _dir: dir,
    }
}

fn raw_http(port: u16, req: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(req.as_bytes()).expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// A project whose default remote `origin` is `s3://recs/<prefix>` on
/// `endpoint`, with the credentials in .recsys/config.local.json.
fn project(endpoint: &str, prefix: &str) -> Env {
    let env = Env::new();
    env.ok(&[
        "remote",
        "add",
        "origin",
        &format!("s3://{BUCKET}/{prefix}"),
        "--endpoint",
        endpoint,
        "--default",
    ]);
    write_creds(&env.root, KEY, SECRET);
    env
}

fn write_creds(root: &Path, key: &str, secret: &str) {
    fs::write(
        root.join(".recsys/config.local.json"),
        format!(
            r#"{{"remotes": {{"origin": {{"access_key_id": "{key}", "secret_access_key": "{secret}"}}}}}}"#
        ),
    )
    .expect("write config.local.json");
}

/// Deterministic bytes that do not compress away.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A dataset file, a directory of 40 small files and (with `big`) a 17 MiB
/// model (multipart), added and committed.
fn fill(env: &Env, big: bool) {
    env.write("data/ratings.csv", noise(1, 5000));
    for i in 0..40 {
        env.write(
            &format!("data/d/f{i:02}"),
            noise(100 + i, 1000 + 97 * i as usize),
        );
    }
    env.ok(&["add", "data/ratings.csv", "data/d", "--kind", "dataset"]);
    if big {
        env.write("models/m.bin", noise(7, 17 << 20));
        env.ok(&["add", "models/m.bin", "--kind", "model"]);
    }
    env.commit("data");
}

fn clone_of(env: &Env, name: &str) -> PathBuf {
    let clone = env.tmp.path().join(name);
    let o = git_cmd(env.tmp.path())
        .args([
            "clone",
            "-q",
            env.root.to_str().unwrap(),
            clone.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    clone
}

fn run_in(env: &Env, dir: &Path, args: &[&str]) -> std::process::Output {
    env.cmd_in(dir, args).output().expect("spawn recsys")
}

fn ok_in(env: &Env, dir: &Path, args: &[&str]) -> serde_json::Value {
    let o = run_in(env, dir, args);
    assert!(
        o.status.success(),
        "recsys {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
}

/// Every tracked file of `a` has the same bytes in `b`.
fn same_files(a: &Path, b: &Path, big: bool) {
    let mut rels = vec!["data/ratings.csv".to_string()];
    rels.extend((0..40).map(|i| format!("data/d/f{i:02}")));
    if big {
        rels.push("models/m.bin".into());
    }
    for r in rels {
        assert!(
            fs::read(a.join(&r)).unwrap() == fs::read(b.join(&r)).unwrap(),
            "{r} differs after the round trip"
        );
    }
}

/// Push, no-op push, status, pull into a fresh clone, lineage: the whole
/// round trip on one server.
fn round_trip(server: &Server, prefix: &str) {
    let env = project(&server.endpoint(), prefix);
    fill(&env, true);
    let p = env.json(&["push", "--json"]);
    // 1 + 40 files + manifest + model + 3 run records.
    assert_eq!(p["objects"], 46, "{p}");
    let again = env.json(&["push", "--json"]);
    assert_eq!(again["objects"], 0, "{again}");
    // Only the top objects (3 artifacts, 3 run records) are looked at.
    assert_eq!(again["already_there"], 6, "{again}");
    let st = env.json(&["status", "--json"]);
    for a in st.as_array().unwrap() {
        assert_eq!(a["remote"], "pushed", "{a}");
    }
    // Without the local cache of what the remote holds, the same answer
    // comes from the server.
    fs::remove_dir_all(env.path("store/remotes")).unwrap();
    let cold = env.json(&["push", "--json"]);
    assert_eq!(cold["objects"], 0, "{cold}");

    let before = env.json(&["lineage", "dataset_2", "--json"]);
    let clone = clone_of(&env, "clone");
    write_creds(&clone, KEY, SECRET);
    let pulled = ok_in(&env, &clone, &["pull", "--json", "--jobs", "4"]);
    assert_eq!(pulled["objects"], 46, "{pulled}");
    assert!(pulled["runs_indexed"].as_u64().unwrap() >= 3, "{pulled}");
    same_files(&env.root, &clone, true);
    let after = ok_in(&env, &clone, &["lineage", "dataset_2", "--json"]);
    assert_eq!(
        before, after,
        "a clone plus pull answers lineage as the original"
    );
    let check = env.ok(&["remote", "check"]);
    assert!(check.contains("ok   conditional put: honoured"), "{check}");
}

#[test]
fn s3_round_trip_on_s3s_fs() {
    let server = s3s_fs();
    round_trip(&server, "team/proj");
    // The layout: objects by digest, the index as one object per entry.
    let index = server.file(BUCKET, "team/proj/index/run");
    assert_eq!(
        fs::read_dir(&index).unwrap().count(),
        3,
        "three run records indexed"
    );
}

#[test]
fn s3_round_trip_on_moto() {
    let server = moto();
    round_trip(&server, "p");
}

#[test]
fn s3_credentials_never_land_in_committed_config_or_output() {
    let server = s3s_fs();
    let env = project(&server.endpoint(), "x");
    let gi = fs::read_to_string(env.path(".gitignore")).unwrap();
    assert!(gi.contains("/.recsys/config.local.json"), "{gi}");
    let cfg = fs::read_to_string(env.path(".recsys/config.json")).unwrap();
    assert!(!cfg.contains(SECRET) && !cfg.contains(KEY), "{cfg}");
    // Credentials from the environment work as well as the local file.
    fs::remove_file(env.path(".recsys/config.local.json")).unwrap();
    env.write("a.csv", "a,b\n1,2\n");
    env.ok(&["add", "a.csv"]);
    let mut c = env.cmd(&["push", "--json"]);
    c.env("AWS_ACCESS_KEY_ID", KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET);
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // And from a profile.
    let aws = env.tmp.path().join(".aws");
    fs::create_dir_all(&aws).unwrap();
    fs::write(
        aws.join("credentials"),
        format!("[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n[team]\naws_access_key_id = {KEY}\naws_secret_access_key = {SECRET}\n"),
    )
    .unwrap();
    let mut c = env.cmd(&["remote", "check"]);
    c.env("AWS_PROFILE", "team");
    let o = c.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{out}");
    assert!(!out.contains(SECRET), "{out}");
    // The default profile's (wrong) keys are refused.
    let e = env.fails(2, &["push"]);
    assert!(e.contains("refused the credentials"), "{e}");
    assert!(!e.contains("wrong"), "{e}");
    // No credentials at all: one line saying where they come from.
    fs::remove_file(aws.join("credentials")).unwrap();
    let e = env.fails(2, &["push"]);
    assert!(
        e.contains("no credentials") && e.contains("config.local.json"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

#[test]
fn s3_bad_input_gets_one_line_errors_and_changes_nothing() {
    let server = s3s_fs();
    let env = project(&server.endpoint(), "bad");
    fill(&env, false);

    for (url, why) in [
        ("s3://", "not a bucket name"),
        ("s3://Bad_Bucket/x", "not a bucket name"),
        ("s3://recs/a//b", "not a key prefix"),
        ("s3://KEY:topsecret@recs/x", "credentials do not belong"),
    ] {
        let e = env.fails(2, &["remote", "add", "other", url]);
        assert!(e.contains(why), "{url}: {e}");
        assert!(!e.contains("topsecret"), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    }
    let e = env.fails(
        2,
        &[
            "remote",
            "add",
            "other",
            "s3://recs/x",
            "--endpoint",
            "ftp://h",
        ],
    );
    assert!(e.contains("--endpoint"), "{e}");

    // Wrong credentials, a missing bucket, an unreachable endpoint: the
    // push says which remote and what, in one line.
    let one_line = |e: &str, want: &str| {
        assert!(e.contains("remote origin"), "{e}");
        assert!(e.contains(want), "{e}");
        assert_eq!(e.trim().lines().count(), 1, "{e}");
    };
    write_creds(&env.root, KEY, "wrong-secret");
    one_line(&env.fails(2, &["push"]), "refused the credentials");
    let check = env.run(&["remote", "check"]);
    assert_eq!(check.status.code(), Some(1));
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(out.contains("FAIL credentials"), "{out}");
    write_creds(&env.root, KEY, SECRET);

    let cfg_path = env.path(".recsys/config.json");
    let cfg = fs::read_to_string(&cfg_path).unwrap();
    fs::write(
        &cfg_path,
        cfg.replace("s3://recs/bad", "s3://no-such-bucket/bad"),
    )
    .unwrap();
    one_line(
        &env.fails(2, &["push"]),
        "bucket `no-such-bucket` does not exist",
    );
    let out = env.run(&["remote", "check"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL bucket"));

    let dead = free_port();
    fs::write(
        &cfg_path,
        cfg.replace(&server.endpoint(), &format!("http://127.0.0.1:{dead}")),
    )
    .unwrap();
    let t = Instant::now();
    one_line(&env.fails(2, &["push"]), "cannot reach http://127.0.0.1");
    assert!(t.elapsed() < Duration::from_secs(20), "gives up in seconds");
    let out = env.run(&["remote", "check"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL endpoint"));
    fs::write(&cfg_path, &cfg).unwrap();

    // An object on the remote whose bytes do not match its name: the pull
    // names remote and object, and the clone's store and work tree stay
    // as they were.
    env.ok(&["push"]);
    let ptr = fs::read_to_string(env.path("data/ratings.csv.recsys")).unwrap();
    let digest = ptr
        .lines()
        .find_map(|l| l.strip_prefix("digest: "))
        .expect("digest in the pointer")
        .trim()
        .to_string();
    let f = server.file(
        BUCKET,
        &format!("bad/objects/{}/{}", &digest[..2], &digest[2..]),
    );
    fs::write(&f, noise(99, 5000)).unwrap();
    let clone = clone_of(&env, "clone");
    write_creds(&clone, KEY, SECRET);
    let o = run_in(&env, &clone, &["pull", "data/ratings.csv"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    one_line(&e, &digest);
    assert!(e.contains("hash to"), "{e}");
    assert!(
        !clone.join("data/ratings.csv").exists(),
        "nothing checked out"
    );
    let objects = walk_files(&clone.join("store"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(&digest[2..]))
        .count();
    assert_eq!(objects, 0, "the bad bytes never entered the store");
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk_files(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn s3_an_interrupted_push_continues_where_it_stopped() {
    let server = s3s_fs();
    let env = project(&server.endpoint(), "resume");
    fill(&env, false);
    // Part of the project went up (the directory, as a push killed after
    // it would leave it), and this clone's cache of the remote is gone.
    let part = env.json(&["push", "data/d", "--json"]);
    assert!(part["objects"].as_u64().unwrap() >= 41, "{part}");
    fs::remove_dir_all(env.path("store/remotes")).unwrap();
    let rest = env.json(&["push", "--json"]);
    // Run records (all lineage) went with the first push; the file is
    // what is left, and the directory is found there.
    assert_eq!(rest["objects"], 1, "the file: {rest}");
    assert_eq!(rest["bytes"], 5000, "{rest}");
    assert!(rest["already_there"].as_u64().unwrap() >= 3, "{rest}");
}

// ----- the fault-injecting proxy -----

/// What the proxy does to connection number `n`.
#[derive(Clone, Copy, Debug)]
enum Fault {
    Pass,
    /// Answer the first request with a 503 and close.
    Unavailable,
    /// Cut the connection after this many bytes from the server.
    CutResponse(usize),
    /// Cut the connection after this many bytes from the client.
    CutRequest(usize),
}

struct Proxy {
    port: u16,
    faults: Arc<AtomicUsize>,
}

/// Forward 127.0.0.1:<port> to `upstream`, injecting faults on the first
/// `faulty` connections by a fixed pattern, then passing everything.
fn proxy(upstream: u16, faulty: usize) -> Proxy {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let port = l.local_addr().unwrap().port();
    let faults = Arc::new(AtomicUsize::new(0));
    let f2 = Arc::clone(&faults);
    std::thread::spawn(move || {
        for (n, conn) in l.incoming().enumerate() {
            let Ok(client) = conn else { continue };
            let fault = if n >= faulty {
                Fault::Pass
            } else {
                match n % 4 {
                    0 => Fault::Unavailable,
                    1 => Fault::CutResponse(3000 + 7919 * n % 40_000),
                    2 => Fault::CutRequest(2000 + 6007 * n % 30_000),
                    _ => Fault::Pass,
                }
            };
            let f3 = Arc::clone(&f2);
            std::thread::spawn(move || serve_conn(client, upstream, fault, &f3));
        }
    });
    Proxy { port, faults }
}

fn serve_conn(mut client: TcpStream, upstream: u16, fault: Fault, faults: &AtomicUsize) {
    if let Fault::Unavailable = fault {
        // Read the request head, answer 503, close.
        let mut buf = [0u8; 4096];
        let mut head = Vec::new();
        client.set_read_timeout(Some(Duration::from_secs(5))).ok();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        faults.fetch_add(1, Ordering::SeqCst);
        let _ = client.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    let (up_limit, down_limit) = match fault {
        Fault::CutRequest(n) => (Some(n), None),
        Fault::CutResponse(n) => (None, Some(n)),
        _ => (None, None),
    };
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let cut_up = std::thread::spawn(move || pipe(client, server, up_limit));
    let cut_down = pipe(s2, c2, down_limit);
    let cut_up = cut_up.join().unwrap_or(false);
    if cut_up || cut_down {
        faults.fetch_add(1, Ordering::SeqCst);
    }
}

/// Copy `from` to `to`; with a limit, cut both after that many bytes.
/// Whether it cut.
fn pipe(mut from: TcpStream, mut to: TcpStream, limit: Option<usize>) -> bool {
    let mut buf = [0u8; 16 * 1024];
    let mut sent = 0usize;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(l) = limit
            && sent + n > l
        {
            let _ = to.write_all(&buf[..l - sent]);
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            return true;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n;
    }
    let _ = to.shutdown(Shutdown::Write);
    false
}

#[test]
fn s3_push_and_pull_complete_through_503s_and_cut_connections() {
    let server = s3s_fs();
    let px = proxy(server.port, 24);
    let endpoint = format!("http://127.0.0.1:{}", px.port);
    let env = project(&endpoint, "faults");
    fill(&env, true);
    let p = env.json(&["push", "--json"]);
    assert_eq!(p["objects"], 46, "{p}");
    let during_push = px.faults.load(Ordering::SeqCst);
    assert!(
        during_push >= 3,
        "faults injected during the push: {during_push}"
    );

    // A fresh proxy with new faults for the pull.
    let px2 = proxy(server.port, 24);
    let clone = clone_of(&env, "clone");
    let cfg = fs::read_to_string(clone.join(".recsys/config.json")).unwrap();
    fs::write(
        clone.join(".recsys/config.json"),
        cfg.replace(&endpoint, &format!("http://127.0.0.1:{}", px2.port)),
    )
    .unwrap();
    write_creds(&clone, KEY, SECRET);
    let pulled = ok_in(&env, &clone, &["pull", "--json"]);
    assert_eq!(pulled["objects"], 46, "{pulled}");
    assert!(
        px2.faults.load(Ordering::SeqCst) >= 3,
        "faults injected during the pull"
    );
    same_files(&env.root, &clone, true);
    let audit = run_in(&env, &clone, &["audit"]);
    assert!(
        audit.status.success(),
        "{}",
        String::from_utf8_lossy(&audit.stdout)
    );
}

// ----- gc --remote on a bucket shared by two projects -----

fn digest_of(env: &Env, ptr: &str) -> String {
    fs::read_to_string(env.path(ptr))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("digest: "))
        .expect("digest in the pointer")
        .trim()
        .to_string()
}

#[test]
fn s3_gc_remote_never_removes_what_another_clone_or_project_needs() {
    let server = s3s_fs();
    let a = project(&server.endpoint(), "shared");
    let obj =
        |p: &str, d: &str| server.file(BUCKET, &format!("{p}/objects/{}/{}", &d[..2], &d[2..]));
    let ok = |dir: &Path, args: &[&str]| ok_in(&a, dir, args);

    // Clone a: three versions of one file, each pushed; only v3 is named
    // by a's work tree. Clone b (same project, another machine) stays at
    // v1 and adds a model of its own.
    let mut versions = Vec::new();
    let add_version = |v: u64| {
        a.write("data/x.csv", noise(v, 3000));
        a.ok(&["add", "data/x.csv", "--kind", "dataset"]);
        a.commit(&format!("v{v}"));
        a.ok(&["push"]);
        digest_of(&a, "data/x.csv.recsys")
    };
    versions.push(add_version(1));
    let b = clone_of(&a, "b");
    write_creds(&b, KEY, SECRET);
    ok(&b, &["pull", "--json"]);
    fs::create_dir_all(b.join("models")).unwrap();
    fs::write(b.join("models/y.bin"), noise(50, 4000)).unwrap();
    ok(&b, &["add", "models/y.bin", "--kind", "model"]);
    for args in [&["add", "-A"][..], &["commit", "-q", "-m", "model"]] {
        let o = git_cmd(a.tmp.path())
            .args(args)
            .current_dir(&b)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    ok(&b, &["push", "--json"]);
    let y = fs::read_to_string(b.join("models/y.bin.recsys"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("digest: ").map(str::to_string))
        .unwrap();
    versions.push(add_version(2));
    versions.push(add_version(3));
    // Another project in the same bucket, under its own prefix.
    let c = project(&server.endpoint(), "elsewhere");
    c.write("c.csv", noise(77, 2000));
    c.ok(&["add", "c.csv"]);
    c.ok(&["push"]);
    let c_obj = digest_of(&c, "c.csv.recsys");

    // Default grace (24 h): nothing is old enough.
    let dry = a.json(&["gc", "--remote", "--json"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["removed_objects"], 0, "{dry}");
    assert!(dry["young_objects"].as_u64().unwrap() >= 1, "{dry}");
    assert_eq!(dry["roots_objects"], 2, "both clones' roots: {dry}");

    // Grace 0: only v2 is named by no clone; a dry run deletes nothing.
    let dry = a.json(&["gc", "--remote", "origin", "--grace", "0s", "--json"]);
    assert_eq!(dry["removed"], serde_json::json!([versions[1]]), "{dry}");
    assert!(
        obj("shared", &versions[1]).exists(),
        "a dry run deletes nothing"
    );
    let done = a.json(&["gc", "--remote", "--grace", "0s", "--force", "--json"]);
    assert_eq!(done["dry_run"], false);
    assert_eq!(done["removed"], serde_json::json!([versions[1]]), "{done}");
    assert!(!obj("shared", &versions[1]).exists());
    for keep in [&versions[0], &versions[2], &y] {
        assert!(obj("shared", keep).exists(), "{keep} is still named");
    }
    assert!(
        obj("elsewhere", &c_obj).exists(),
        "another project's prefix is never swept"
    );
    // The lock is gone and a second run (from the other clone) finds
    // nothing more.
    assert!(!server.file(BUCKET, "shared/locks/gc").exists());
    let again = ok(
        &b,
        &["gc", "--remote", "--grace", "0s", "--force", "--json"],
    );
    assert_eq!(again["removed_objects"], 0, "{again}");
    // A push after a gc: the cache was dropped, nothing is missing.
    assert_eq!(a.json(&["push", "--json"])["objects"], 0);

    // Both clones' work trees still pull into fresh clones.
    for (src, files) in [
        (a.root.clone(), vec!["data/x.csv"]),
        (b.clone(), vec!["data/x.csv", "models/y.bin"]),
    ] {
        let name = format!("fresh-{}", files.len());
        let dst = a.tmp.path().join(&name);
        let o = git_cmd(a.tmp.path())
            .args(["clone", "-q", src.to_str().unwrap(), dst.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        write_creds(&dst, KEY, SECRET);
        ok(&dst, &["pull", "--json"]);
        for f in files {
            assert_eq!(
                fs::read(dst.join(f)).unwrap(),
                fs::read(src.join(f)).unwrap(),
                "{f}"
            );
        }
    }
}

/// A proxy that drops `If-None-Match: *` from every request, as a server
/// that ignores conditional puts would.
fn ignoring_proxy(upstream: u16) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(client) = conn else { continue };
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pipe(s2, c2, None));
                let (mut from, mut to) = (client, server);
                let mut buf = [0u8; 64 * 1024];
                loop {
                    let n = match from.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let pat = b"if-none-match: *\r\n";
                    let mut out = Vec::with_capacity(n);
                    let mut i = 0;
                    while i < n {
                        if buf[i..n].len() >= pat.len()
                            && buf[i..i + pat.len()].eq_ignore_ascii_case(pat)
                        {
                            i += pat.len();
                        } else {
                            out.push(buf[i]);
                            i += 1;
                        }
                    }
                    if to.write_all(&out).is_err() {
                        break;
                    }
                }
                let _ = to.shutdown(Shutdown::Write);
            });
        }
    });
    port
}

#[test]
fn s3_a_server_that_ignores_conditional_puts_is_named_and_gc_force_refused() {
    let server = moto();
    let port = ignoring_proxy(server.port);
    let env = project(&format!("http://127.0.0.1:{port}"), "nocas");
    fill(&env, false);
    let check = env.run(&["remote", "check"]);
    assert_eq!(check.status.code(), Some(1));
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(out.contains("FAIL conditional put: IGNORED"), "{out}");
    // Pushing content-addressed objects stays safe (same name, same bytes).
    env.ok(&["push"]);
    let e = env.fails(2, &["gc", "--remote", "--force", "--grace", "0s"]);
    assert!(e.contains("ignores create-only puts"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
    // The dry run still reports.
    env.ok(&["gc", "--remote"]);

    // The same server without the proxy honours them.
    let direct = project(&server.endpoint(), "cas");
    let out = direct.ok(&["remote", "check"]);
    assert!(out.contains("ok   conditional put: honoured"), "{out}");
}

#[test]
fn s3_audit_remote_finds_missing_short_and_corrupt_objects() {
    let server = s3s_fs();
    let env = project(&server.endpoint(), "audit");
    fill(&env, false);
    env.ok(&["push"]);
    let clean = env.json(&["audit", "--remote", "--deep", "--json"]);
    assert_eq!(clean["problems"], serde_json::json!([]), "{clean}");
    assert_eq!(clean["rehashed"], clean["checked"], "{clean}");
    assert!(clean["checked"].as_u64().unwrap() >= 44, "{clean}");

    let f = |i: usize| {
        let d = {
            let p = env.path(&format!("data/d/f{i:02}"));
            blake3::hash(&fs::read(p).unwrap()).to_hex().to_string()
        };
        (
            server.file(BUCKET, &format!("audit/objects/{}/{}", &d[..2], &d[2..])),
            d,
        )
    };
    let (gone, gone_d) = f(3);
    fs::remove_file(&gone).unwrap();
    let (short, short_d) = f(5);
    let bytes = fs::read(&short).unwrap();
    fs::write(&short, &bytes[..bytes.len() - 1]).unwrap();
    let (flipped, flipped_d) = f(7);
    let mut bytes = fs::read(&flipped).unwrap();
    bytes[0] ^= 1;
    fs::write(&flipped, &bytes).unwrap();

    let kinds = |v: &serde_json::Value| -> Vec<(String, String)> {
        v["problems"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["kind"].as_str().unwrap().to_string(),
                    p["subject"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let o = env.run(&["audit", "--remote", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let shallow: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut want = vec![
        ("missing-on-remote".to_string(), gone_d.clone()),
        ("wrong-size-on-remote".to_string(), short_d.clone()),
    ];
    want.sort();
    assert_eq!(
        kinds(&shallow),
        want,
        "same size and listed: only --deep sees the flip"
    );
    let o = env.run(&["audit", "--remote", "origin", "--deep", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let deep: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let got = kinds(&deep);
    assert!(
        got.contains(&("corrupt-on-remote".into(), flipped_d.clone())),
        "{got:?}"
    );
    assert!(
        got.contains(&("corrupt-on-remote".into(), short_d)),
        "{got:?}"
    );
    let text = env.run(&["audit", "--remote"]);
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(
        out.contains(&format!(
            "missing-on-remote: {gone_d}: not on remote origin"
        )),
        "{out}"
    );
}
