//! A server that cannot be knocked over: connection limits and timeouts,
//! file-descriptor exhaustion, a config watcher that is never stale and
//! never stuck (unreadable files, FIFOs, devices, oversized files), `config
//! check` against what would misroute, and an `X-Request-Id` on every
//! answer, the framework's rejections included.
//!
//! Each test reproduces one way issue 11 knocked the server over.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use recsys::serve::{AppState, Limits, Server, app};
use recsys::workspace::Settings;
use tower::ServiceExt;

use crate::common::{self, NOW};
use crate::serve::{
    Client, ONLY_V2, Project, Running, SPLIT_CONFIG, get, metric, signal, spawn_server, wait_for,
};

/// A server run in this process on an ephemeral port, with `limits`.
struct Live {
    rt: tokio::runtime::Runtime,
    port: u16,
    st: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Live {
    fn start(p: &Project, limits: Limits) -> Live {
        let mut o = p.options();
        o.limits = limits;
        let server = Server::start(o, Settings::default()).expect("server starts");
        let st = server.state();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serving = rt.spawn(server.run(listener, async {
            let _ = rx.await;
        }));
        Live {
            rt,
            port,
            st,
            stop: Some(tx),
            serving: Some(serving),
        }
    }

    fn metrics(&self) -> String {
        self.st.metrics.encode()
    }

    fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(s) = self.serving.take() {
            self.rt.block_on(s).expect("join").expect("serve");
        }
    }
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

/// One answer read off `s` (status, lower-cased headers, body).
fn read_answer(s: &TcpStream) -> std::io::Result<(u16, HashMap<String, String>, String)> {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = HashMap::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
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
    r.read_exact(&mut body)?;
    Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
}

/// Wait up to `limit` for the server to close `s`, reading (and counting)
/// whatever it still sends; how long it took, or `None`.
fn wait_closed(s: &TcpStream, limit: Duration) -> (Option<Duration>, Vec<u8>) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match (&*s).read(&mut buf) {
            Ok(0) => return (Some(start.elapsed()), got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if start.elapsed() > limit {
                    return (None, got);
                }
            }
            Err(_) => return (Some(start.elapsed()), got),
        }
    }
}

fn occurrences(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// `recsys serve` started through `wrapper` (a command that execs its
/// arguments), with the URL it printed.
fn spawn_wrapped(p: &Project, wrapper: &[&str], extra: &[&str]) -> Running {
    let bin = common::bin();
    let mut c = Command::new(wrapper[0]);
    c.args(&wrapper[1..])
        .arg(&bin)
        .args(["serve", "--port", "0", "--poll-ms", "200"])
        .args(extra)
        .current_dir(p.root())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", p.env.tmp.path())
        .env("RECSYS_NOW", NOW)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = c.spawn().expect("spawn recsys serve");
    let (port, out) = common::served_port(&mut child, &format!(" (is {wrapper:?} installed?)"));
    Running {
        child,
        port,
        _out: out,
    }
}

/// GET `path` on a new connection to a server on `port`.
fn fetch(port: u16, path: &str) -> (u16, HashMap<String, String>, String) {
    Client::connect(port)
        .get(path)
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

/// Wait (bounded) for a child to exit; its status, or a panic naming it.
fn exits_within(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("wait") {
            return st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("{what}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Replace config.json by whatever `make` creates at a temp path (a FIFO,
/// a symlink, a file), atomically, as an editor or a deploy tool would.
fn replace_config(p: &Project, make: impl FnOnce(&std::path::Path)) {
    let tmp = p.root().join("config.json.new");
    let _ = std::fs::remove_file(&tmp);
    make(&tmp);
    std::fs::rename(&tmp, p.root().join("config.json")).expect("rename config");
}

fn mkfifo(path: &std::path::Path) {
    let st = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(st.success(), "mkfifo {}", path.display());
}

fn wait_health(port: u16, what: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (_, _, body) = fetch(port, "/health");
        if ok(&body) {
            return body;
        }
        if start.elapsed() > limit {
            panic!("timed out waiting for {what}; /health says:\n{body}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------
// X-Request-Id on every answer

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_rejections_get_a_request_id_and_our_own_message() {
    let p = Project::new();
    let server = p.start();
    let st = server.state();
    // A path that is not UTF-8 once percent-decoded: axum's "Invalid URL".
    let (status, h, body) = get(&st, "/recommend/%FF", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(uuid::Uuid::parse_str(&h["x-request-id"]).is_ok(), "{h:?}");
    assert!(body.starts_with("bad user id: not UTF-8"), "{body}");
    assert!(!body.contains("Invalid URL"), "{body}");
    assert!(h["content-type"].starts_with("text/plain"), "{h:?}");
    // A rejection's id is ours too (no model answered it); the caller's
    // comes back beside it.
    let mine = "0190f8b5-5d2e-7cc0-9a1b-8f3c2d4e5f60";
    let (_, h, _) = get(&st, "/recommend/%C3%28", Some(mine)).await;
    assert_eq!(h["x-client-request-id"], mine);
    let d =
        recsys::serve::request_id::decode(&h["x-request-id"].parse().expect("uuid")).expect("ours");
    assert_eq!(d.slot, recsys::serve::request_id::Slot::None);
    // Method not allowed: the router's own answer, replaced by ours.
    let res = app(st.clone())
        .oneshot(
            Request::builder()
                .method("POST")
                .uri("/recommend/3")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(res.headers().contains_key("x-request-id"));
    assert!(
        res.headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("GET")),
        "{:?}",
        res.headers()
    );
    let body = res.into_body().collect().await.expect("body").to_bytes();
    assert!(
        String::from_utf8_lossy(&body).starts_with("method not allowed"),
        "{body:?}"
    );
    for path in [
        "/nope",
        "/health",
        "/metrics",
        "/recommend/abc",
        "/recommend/3",
    ] {
        let (_, h, _) = get(&st, path, None).await;
        assert!(
            uuid::Uuid::parse_str(h.get("x-request-id").map_or("", |s| s)).is_ok(),
            "{path}: {h:?}"
        );
    }
    tokio::task::spawn_blocking(move || server.stop())
        .await
        .expect("stop");
}

#[test]
fn a_non_utf8_path_over_the_wire_gets_a_request_id() {
    let p = Project::new();
    let live = Live::start(&p, Limits::default());
    let s = connect(live.port);
    (&s).write_all(b"GET /recommend/%FF HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let (status, h, body) = read_answer(&s).expect("answer");
    assert_eq!(status, 400, "{body}");
    assert!(uuid::Uuid::parse_str(&h["x-request-id"]).is_ok(), "{h:?}");
    assert!(body.starts_with("bad user id"), "{body}");
    live.shutdown();
}

#[test]
fn requests_hyper_cannot_parse_get_a_request_id_and_our_message() {
    let p = Project::new();
    let live = Live::start(&p, Limits::default());
    let huge = format!(
        "GET /recommend/1 HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    for (what, req, want_status, want_body) in [
        (
            "a header without a colon",
            "GET /recommend/1 HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".to_string(),
            400,
            "bad request: malformed",
        ),
        ("a head over 64 KiB", huge, 431, "request head too large"),
    ] {
        let s = connect(live.port);
        let _ = (&s).write_all(req.as_bytes());
        let (status, h, body) = read_answer(&s).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(status, want_status, "{what}: {body}");
        assert!(
            uuid::Uuid::parse_str(h.get("x-request-id").map_or("", |s| s)).is_ok(),
            "{what}: {h:?}"
        );
        assert!(body.starts_with(want_body), "{what}: {body}");
    }
    // The connection it happened on is closed; others are unaffected.
    let (status, _, _) = fetch(live.port, "/recommend/3");
    assert_eq!(status, 200);
    live.shutdown();
}

// ---------------------------------------------------------------------------
// Connection limits

#[test]
fn twice_the_connection_cap_held_idle_and_half_sent_locks_no_client_out() {
    let p = Project::new();
    let cap = 8;
    let live = Live::start(
        &p,
        Limits {
            max_connections: cap,
            // Long: it is the cap's eviction, not a timeout, that keeps
            // the server answering here.
            header_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(5),
        },
    );
    let port = live.port;
    // Clients that were talking before the attack keep talking.
    let stop = Arc::new(AtomicBool::new(false));
    let mut talkers = Vec::new();
    for c in 0..3u32 {
        let stop = stop.clone();
        talkers.push(std::thread::spawn(move || {
            let mut cl = Client::connect(port);
            let (mut ok, mut bad) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match cl.get(&format!("/recommend/{}", 1 + c)) {
                    Ok((200, _, _)) => ok += 1,
                    other => bad.push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, bad)
        }));
    }
    std::thread::sleep(Duration::from_millis(200));
    // The attack: 2x the cap, half sending nothing, half half a header,
    // each reopened a second after the server closes it (Retry-After).
    let refused_503 = Arc::new(AtomicU64::new(0));
    let mut attackers = Vec::new();
    for a in 0..2 * cap {
        let stop = stop.clone();
        let refused_503 = refused_503.clone();
        attackers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let s = connect(port);
                if a % 2 == 1 {
                    let _ = (&s).write_all(b"GET /recommend/1 HTTP/1.1\r\nHost: x\r\nX-Slow: ");
                }
                s.set_read_timeout(Some(Duration::from_millis(50)))
                    .expect("timeout");
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while !stop.load(Ordering::Relaxed) {
                    match (&s).read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => break,
                    }
                }
                let text = String::from_utf8_lossy(&got);
                if text.starts_with("HTTP/1.1 503") {
                    assert!(text.contains("retry-after: 1\r\n"), "{text}");
                    assert!(text.contains("x-request-id: "), "{text}");
                    refused_503.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    // Newcomers: a fresh connection per request, for three seconds. One
    // refused (503, only while every held connection is younger than
    // 250 ms) retries after a pause; every request is answered.
    let start = Instant::now();
    let (mut answered, mut retries, mut max_open) = (0u32, 0u32, 0f64);
    while start.elapsed() < Duration::from_secs(3) {
        let mut tries = 0;
        loop {
            let (status, h, body) = fetch(port, "/recommend/7");
            assert!(h.contains_key("x-request-id"), "{h:?}");
            if status == 200 {
                assert!(!body.is_empty());
                break;
            }
            assert_eq!(status, 503, "{body}");
            assert_eq!(h.get("retry-after").map(String::as_str), Some("1"), "{h:?}");
            tries += 1;
            retries += 1;
            assert!(tries < 10, "refused {tries} times in a row");
            std::thread::sleep(Duration::from_millis(100));
        }
        answered += 1;
        max_open = max_open.max(metric(&live.metrics(), "recsys_connections_open", &[]));
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for t in talkers {
        let (ok, bad) = t.join().expect("talker");
        assert!(
            bad.is_empty(),
            "a client talking before the attack failed: {bad:?}"
        );
        assert!(ok > 20, "only {ok} answers");
    }
    for a in attackers {
        a.join().expect("attacker");
    }
    let m = live.metrics();
    assert!(answered > 20, "only {answered} newcomers answered");
    assert!(
        retries < answered,
        "{retries} retries for {answered} answers"
    );
    assert!(
        max_open <= cap as f64,
        "{max_open} connections open, cap {cap}"
    );
    assert!(
        metric(
            &m,
            "recsys_connections_closed_total",
            &["reason=\"evicted\""]
        ) >= cap as f64,
        "{m}"
    );
    assert!(
        refused_503.load(Ordering::Relaxed) >= 1,
        "no attacker was refused"
    );
    assert!(
        metric(
            &m,
            "recsys_connections_rejected_total",
            &["reason=\"over_limit\""]
        ) >= 1.0,
        "{m}"
    );
    live.shutdown();
}

#[test]
fn header_idle_and_request_timeouts_close_what_would_hang() {
    let p = Project::new();
    let live = Live::start(
        &p,
        Limits {
            max_connections: 64,
            header_read_timeout: Duration::from_millis(500),
            idle_timeout: Duration::from_millis(1500),
            request_timeout: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(5),
        },
    );
    let port = live.port;
    // Nothing sent, and half a header: closed at the header timeout.
    let silent = connect(port);
    let half = connect(port);
    (&half)
        .write_all(b"GET /recommend/1 HTTP/1.1\r\nHost: x\r\n")
        .expect("send");
    // One request, then idle: closed at the idle timeout, not before.
    let idle = connect(port);
    (&idle)
        .write_all(b"GET /recommend/2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let (status, _, _) = read_answer(&idle).expect("answer");
    assert_eq!(status, 200);
    let idle_since = Instant::now();
    // A client that sends many requests and reads no answer: closed at
    // the request timeout, long before it has all its answers.
    let stalled = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let writer = {
        let s = stalled.try_clone().expect("clone");
        std::thread::spawn(move || {
            s.set_write_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000);
            let _ = (&s).write_all(&req);
        })
    };
    let (t_silent, _) = wait_closed(&silent, Duration::from_secs(5));
    let (t_half, _) = wait_closed(&half, Duration::from_secs(5));
    assert!(
        t_silent.is_some(),
        "an idle new connection was never closed"
    );
    assert!(t_half.is_some(), "a half-sent header was never closed");
    let (t_idle, _) = wait_closed(&idle, Duration::from_secs(5));
    let t_idle = t_idle.expect("an idle keep-alive connection was never closed");
    let idle_for = idle_since.elapsed();
    assert!(
        idle_for >= Duration::from_millis(1400),
        "closed after {idle_for:?} idle: the header timeout, not the idle one"
    );
    assert!(t_idle < Duration::from_secs(5));
    std::thread::sleep(Duration::from_secs(2));
    let (closed, got) = wait_closed(&stalled, Duration::from_secs(10));
    assert!(closed.is_some(), "the stalled connection stayed open");
    let answers = occurrences(&got, b"HTTP/1.1 200");
    assert!(answers < 2000, "all {answers} answers were written");
    let _ = writer.join();
    let m = live.metrics();
    assert!(
        metric(
            &m,
            "recsys_connections_closed_total",
            &["reason=\"header_timeout\""]
        ) >= 2.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "recsys_connections_closed_total",
            &["reason=\"idle_timeout\""]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(
            &m,
            "recsys_connections_closed_total",
            &["reason=\"request_timeout\""]
        ) >= 1.0,
        "{m}"
    );
    // And the server still answers.
    let (status, _, _) = fetch(port, "/recommend/3");
    assert_eq!(status, 200);
    live.shutdown();
}

#[test]
fn running_out_of_file_descriptors_leaves_the_listener_and_the_watcher_alive() {
    let p = Project::new();
    // 96 files: the server itself needs a few dozen, the rest go to the
    // connections below, long before the connection cap of 1000.
    let mut s = spawn_wrapped(
        &p,
        &["sh", "-c", "ulimit -n 96 && exec \"$0\" \"$@\""],
        &["--max-connections", "1000", "--header-read-timeout", "120s"],
    );
    let port = s.port;
    let held: Vec<TcpStream> = (0..150).map(|_| connect(port)).collect();
    std::thread::sleep(Duration::from_millis(500));
    // A config change while no descriptor is free: the reload fails.
    p.write_config(ONLY_V2);
    std::thread::sleep(Duration::from_millis(1500));
    // New clients are still answered: an idle held connection makes room.
    let (status, _, m) = fetch(port, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metric(&m, "recsys_accept_errors_total", &["kind=\"fd_exhausted\""]) >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "recsys_config_reloads_total", &["result=\"failure\""]) >= 1.0,
        "the reload did not meet the exhausted descriptors: {m}"
    );
    let (status, _, _) = fetch(port, "/recommend/3");
    assert_eq!(status, 200);
    // Descriptors come back: the failed reload is retried, no other change.
    drop(held);
    let health = wait_health(port, "model_v2 alone", Duration::from_secs(5), |b| {
        b.starts_with("ok: ") && b.contains("serving model_v2\n")
    });
    assert!(health.contains("last_reload: ok\n"), "{health}");
    assert!(s.child.try_wait().expect("wait").is_none(), "server exited");
    signal(&s.child, "-TERM");
    let st = exits_within(
        &mut s.child,
        Duration::from_secs(20),
        "recsys serve after SIGTERM",
    );
    assert!(st.success(), "{st:?}");
}

#[test]
fn sigterm_with_held_and_stalled_connections_finishes_within_the_grace() {
    let p = Project::new();
    let mut s = spawn_server(&p, &["--shutdown-grace", "2s", "--request-timeout", "60s"]);
    let port = s.port;
    let idle = connect(port);
    let half = connect(port);
    (&half)
        .write_all(b"GET /recommend/1 HTTP/1.1\r\nHost: x\r\n")
        .expect("send");
    let stalled = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let s2 = stalled.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        s2.set_write_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let _ = (&s2).write_all(&b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(2000));
    });
    std::thread::sleep(Duration::from_millis(700));
    let t = Instant::now();
    signal(&s.child, "-TERM");
    let st = exits_within(
        &mut s.child,
        Duration::from_secs(20),
        "recsys serve after SIGTERM",
    );
    assert!(st.success(), "{st:?}");
    let took = t.elapsed();
    assert!(took < Duration::from_secs(15), "shutdown took {took:?}");
    drop((idle, half, stalled));
    let _ = writer.join();
}

// ---------------------------------------------------------------------------
// The config watcher

/// A command prefix that takes away root's permission to read any file
/// (as a non-root user has none): only then does `chmod 000` deny a read.
fn without_dac_override() -> Vec<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        == Some("0");
    if root {
        vec![
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
        ]
    } else {
        vec!["env"]
    }
}

#[test]
fn an_unreadable_config_is_retried_until_readable_then_served() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::new();
    let mut s = spawn_wrapped(&p, &without_dac_override(), &[]);
    let port = s.port;
    replace_config(&p, |tmp| {
        std::fs::write(tmp, ONLY_V2).expect("write");
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    });
    let health = wait_health(port, "a failed reload", Duration::from_secs(5), |b| {
        b.starts_with("stale")
    });
    assert!(health.contains("Permission denied"), "{health}");
    assert!(health.contains("last_reload: failed\n"), "{health}");
    assert!(health.contains("serving model_v1, model_v2\n"), "{health}");
    let (_, _, m) = fetch(port, "/metrics");
    assert_eq!(metric(&m, "recsys_config_reload_ok", &[]), 0.0, "{m}");
    assert_eq!(
        metric(&m, "recsys_config_reload_error", &["kind=\"read\""]),
        1.0,
        "{m}"
    );
    // `config check` agrees it cannot be read (here as root it could:
    // the server's reader is what matters, and it said so above).
    std::fs::set_permissions(
        p.root().join("config.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod 644");
    let health = wait_health(port, "the new config", Duration::from_secs(5), |b| {
        b.starts_with("ok: ")
    });
    assert!(health.contains("serving model_v2\n"), "{health}");
    assert!(health.contains("failed_attempts: 0\n"), "{health}");
    let (_, _, m) = fetch(port, "/metrics");
    assert_eq!(metric(&m, "recsys_config_reload_ok", &[]), 1.0, "{m}");
    assert_eq!(
        metric(&m, "recsys_config_reload_error", &["kind=\"read\""]),
        0.0,
        "{m}"
    );
    signal(&s.child, "-TERM");
    assert!(exits_within(&mut s.child, Duration::from_secs(20), "serve").success());
}

#[test]
fn a_fifo_as_config_blocks_neither_reload_nor_sigterm() {
    let p = Project::new();
    let mut s = spawn_server(&p, &[]);
    let port = s.port;
    replace_config(&p, mkfifo);
    let health = wait_health(port, "the FIFO refused", Duration::from_secs(5), |b| {
        b.starts_with("stale")
    });
    assert!(
        health.contains("is a FIFO (named pipe), not a regular file"),
        "{health}"
    );
    // A good file replacing it is loaded.
    replace_config(&p, |tmp| std::fs::write(tmp, ONLY_V2).expect("write"));
    let health = wait_health(port, "the good file", Duration::from_secs(5), |b| {
        b.starts_with("ok: ")
    });
    assert!(health.contains("serving model_v2\n"), "{health}");
    // A FIFO again, then SIGTERM: the server stops, promptly.
    replace_config(&p, mkfifo);
    wait_health(
        port,
        "the FIFO refused again",
        Duration::from_secs(5),
        |b| b.starts_with("stale"),
    );
    let t = Instant::now();
    signal(&s.child, "-TERM");
    let st = exits_within(&mut s.child, Duration::from_secs(20), "serve after SIGTERM");
    assert!(st.success(), "{st:?}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}

#[test]
fn a_device_or_an_oversized_config_is_refused_fast_with_flat_memory() {
    let p = Project::new();
    let mut s = spawn_server(&p, &[]);
    let port = s.port;
    let pid = s.child.id();
    let before = rss_kib(pid);
    replace_config(&p, |tmp| {
        std::os::unix::fs::symlink("/dev/zero", tmp).expect("symlink");
    });
    let health = wait_health(port, "/dev/zero refused", Duration::from_secs(5), |b| {
        b.starts_with("stale")
    });
    assert!(
        health.contains("is a character device, not a regular file"),
        "{health}"
    );
    // Several more polls (every 200 ms) retrying it.
    std::thread::sleep(Duration::from_secs(2));
    let after = rss_kib(pid);
    assert!(
        after < before + 50 * 1024,
        "memory grew from {before} KiB to {after} KiB"
    );
    // A regular file over the 1 MiB cap is refused without being read.
    replace_config(&p, |tmp| {
        let big = format!(
            "{{\"salt\": \"{}\", \"default\": \"model_v2\"}}",
            "s".repeat(2 << 20)
        );
        std::fs::write(tmp, big).expect("write");
    });
    let health = wait_health(
        port,
        "the large file refused",
        Duration::from_secs(5),
        |b| b.contains("larger than 1048576 bytes"),
    );
    assert!(health.starts_with("stale"), "{health}");
    let (_, _, m) = fetch(port, "/metrics");
    assert_eq!(
        metric(&m, "recsys_config_reload_error", &["kind=\"too_large\""]),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "recsys_config_reload_error", &["kind=\"not_a_file\""]),
        0.0,
        "{m}"
    );
    replace_config(&p, |tmp| std::fs::write(tmp, SPLIT_CONFIG).expect("write"));
    wait_health(port, "the good file", Duration::from_secs(5), |b| {
        b.starts_with("ok: ")
    });
    signal(&s.child, "-TERM");
    assert!(exits_within(&mut s.child, Duration::from_secs(20), "serve").success());
}

#[test]
fn an_unchanged_config_is_not_read_again() {
    let p = Project::new();
    let server = p.start(); // polls every 100 ms
    let st = server.state();
    let reads = |st: &AppState| metric(&st.metrics.encode(), "recsys_config_reads_total", &[]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(reads(&st), 1.0, "read again while unchanged");
    p.write_config(ONLY_V2);
    wait_for("the reload", Duration::from_secs(5), || {
        st.deployment
            .load_full()
            .is_some_and(|d| d.model_names() == ["model_v2"])
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(reads(&st), 2.0, "read again while unchanged");
    server.stop();
}

#[test]
fn a_config_naming_an_unregistered_model_loads_once_it_is_registered() {
    let p = Project::new();
    let server = p.start();
    let st = server.state();
    p.write_config(r#"{"default": "model_v3"}"#);
    wait_for("the failed reload", Duration::from_secs(5), || {
        st.reload
            .load()
            .error
            .as_deref()
            .is_some_and(|e| e.contains("model_v3 is not registered"))
    });
    // Registering it touches lineage.db, not config.json.
    p.train("model_v3", 8, 3);
    wait_for("model_v3 served", Duration::from_secs(5), || {
        st.deployment
            .load_full()
            .is_some_and(|d| d.model_names() == ["model_v3"])
    });
    let r = st.reload.load();
    assert!(r.ok && r.error.is_none() && r.failures == 0, "{r:?}");
    server.stop();
}

// ---------------------------------------------------------------------------
// config check

#[test]
fn config_check_rejects_what_would_misroute_each_saying_so() {
    let p = Project::new();
    let cases: [(&str, String, &[&str]); 5] = [
        (
            "overflowing weights",
            r#"{"rules": [{"name": "ab", "split": [{"model": "model_v1", "weight": 1e308},
                {"model": "model_v2", "weight": 1e308}]}]}"#
                .into(),
            &["$.rules[0].split: the weights sum to more than the largest number (overflow)"],
        ),
        (
            "duplicate keys",
            r#"{"default": "model_v1", "default": "model_v2"}"#.into(),
            &["$.default: duplicate key"],
        ),
        (
            "deep nesting",
            format!(
                "{{\"default\": \"model_v1\", \"x\": {}{}}}",
                "[".repeat(100_000),
                "]".repeat(100_000)
            ),
            &["nested deeper than 32 levels"],
        ),
        (
            "number out of range",
            r#"{"rules": [{"name": "c", "canary": {"model": "model_v2", "percent": 1e999}}],
                "default": "model_v1"}"#
                .into(),
            &["$.rules[0].canary.percent: not valid JSON: number out of range"],
        ),
        (
            "non-finite weight",
            r#"{"rules": [{"name": "ab", "split": [{"model": "model_v1", "weight": -1e999}]}]}"#
                .into(),
            &["number out of range"],
        ),
    ];
    for (what, text, wants) in cases {
        p.env.write("candidate.json", &text);
        let o = p.env.run(&["config", "check", "candidate.json"]);
        assert_eq!(o.status.code(), Some(1), "{what}");
        let out = String::from_utf8_lossy(&o.stdout);
        for want in wants {
            assert!(out.contains(want), "{what}: {want:?} not in:\n{out}");
        }
        assert!(!out.contains("syntax error"), "{what}: {out}");
        assert!(
            out.lines().all(|l| l.len() < 400),
            "{what}: a long line: {out}"
        );
        // The server's loader says the same.
        let served = recsys::serve::parse_config(text.as_bytes());
        let problems = served.expect_err(what).to_string();
        for want in wants {
            assert!(problems.contains(want), "{what}: {problems}");
        }
    }
}

#[test]
fn config_check_refuses_a_fifo_or_a_device_without_blocking() {
    let p = Project::new();
    mkfifo(&p.root().join("pipe.json"));
    std::os::unix::fs::symlink("/dev/zero", p.root().join("zero.json")).expect("symlink");
    for (file, want) in [
        ("pipe.json", "is a FIFO (named pipe), not a regular file"),
        ("zero.json", "is a character device, not a regular file"),
    ] {
        let mut child = p
            .env
            .cmd(&["config", "check", file])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let st = exits_within(&mut child, Duration::from_secs(10), "config check");
        assert!(!st.success(), "{file}");
        let mut err = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut err)
            .expect("read");
        assert!(err.contains(want), "{file}: {err}");
    }
}
