//! Hermetic test environment: a temp git repo and a `recsys` runner.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

pub const NOW: &str = "2026-01-02T03:04:05Z";

pub struct Env {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
}

/// The compiled `recsys` binary.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_recsys"))
}

impl Env {
    /// An empty git repository with `recsys init` already run.
    pub fn new() -> Env {
        let e = Env::bare();
        e.git(&["init", "-q", "-b", "main", "."]);
        e.ok(&["init"]);
        e
    }

    /// An empty directory, no git, no recsys.
    pub fn bare() -> Env {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("proj");
        std::fs::create_dir_all(&root).expect("mkdir");
        let root = std::fs::canonicalize(&root).expect("canonicalize");
        Env { tmp, root }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn write(&self, rel: &str, bytes: impl AsRef<[u8]>) {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(p, bytes).expect("write");
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_in(&self.root, args)
    }

    pub fn cmd_in(&self, dir: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.args(args).current_dir(dir).env_clear();
        c.env("PATH", std::env::var_os("PATH").unwrap_or_default());
        c.env("HOME", self.tmp.path());
        c.env("RECSYS_NOW", NOW);
        c.env("GIT_CONFIG_NOSYSTEM", "1");
        c
    }

    /// Run recsys; return the output whatever the exit code.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("spawn recsys")
    }

    /// Run recsys and insist it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "recsys {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Run recsys and insist it fails with `code`; returns stderr.
    pub fn fails(&self, code: i32, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(
            o.status.code(),
            Some(code),
            "recsys {args:?} should exit {code}:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: bad JSON {e}: {out}"))
    }

    /// `recsys remote add origin <tmp>/remote --default`; returns the path.
    pub fn add_origin(&self) -> PathBuf {
        let remote = self.tmp.path().join("remote");
        let url = remote.to_str().expect("utf-8 temp path");
        self.ok(&["remote", "add", "origin", url, "--default"]);
        remote
    }

    /// Run git with a fixed identity and dates.
    pub fn git(&self, args: &[&str]) -> String {
        let o = git_cmd(self.tmp.path())
            .args(args)
            .current_dir(&self.root)
            .output()
            .expect("spawn git");
        assert!(
            o.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `git add -A && git commit -m msg`; returns the commit id.
    pub fn commit(&self, msg: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", msg]);
        self.git(&["rev-parse", "HEAD"]).trim().to_string()
    }
}

/// `git` with a cleared environment: a fixed identity and dates, no system
/// or user config, and none of the caller's `GIT_*` variables (a test run
/// from a git hook has `GIT_DIR` and `GIT_INDEX_FILE` set, which would point
/// every command at the outer repository).
pub fn git_cmd(home: &Path) -> Command {
    let mut c = Command::new("git");
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z")
        .env("GIT_CONFIG_NOSYSTEM", "1");
    c
}

/// The MovieLens 100K directory: `RECSYS_ML100K` when set, else what
/// `scripts/fetch-movielens.sh` fetches (once per test run; the script is
/// idempotent and caches under `~/.cache/recsys`). Fails, never skips, when
/// the data cannot be had.
pub fn ml100k() -> String {
    static DIR: OnceLock<String> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("RECSYS_ML100K") {
            return d.into_string().expect("RECSYS_ML100K is UTF-8");
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-movielens.sh");
        let o = Command::new("bash")
            .arg(&script)
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(
            o.status.success(),
            "{} failed (it downloads the recbole==1.2.1 wheel from PyPI; or set \
             RECSYS_ML100K to a directory holding ml-100k.inter/.user/.item):\n{}",
            script.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout)
            .expect("fetch-movielens.sh prints a UTF-8 path")
            .trim()
            .to_string()
    })
    .clone()
}

/// A running `recsys serve` on a free port (`serve`).
pub(crate) struct Serving {
    pub(crate) child: Child,
    pub(crate) port: u16,
    _out: BufReader<std::process::ChildStdout>,
}

/// The port of a starting `recsys serve` (piped stdout), from the URL line
/// it prints first; and the rest of its stdout, to keep the pipe open.
/// `hint` is added to the panic when no URL comes.
pub(crate) fn served_port(
    child: &mut Child,
    hint: &str,
) -> (u16, BufReader<std::process::ChildStdout>) {
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read url");
    let port = line
        .trim_end()
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}{hint}"));
    (port, out)
}

/// Start `recsys serve` in `env` (port 0, config polled every 200 ms) and
/// wait for its URL line.
pub(crate) fn serve(env: &Env) -> Serving {
    let mut child = env
        .cmd(&["serve", "--port", "0", "--poll-ms", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn recsys serve");
    let (port, out) = served_port(&mut child, "");
    Serving {
        child,
        port,
        _out: out,
    }
}

impl Serving {
    /// `GET /recommend/<user>` on a fresh connection; the request id.
    pub(crate) fn recommend(&self, user: u32) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(
            s,
            "GET /recommend/{user} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .expect("send");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("answer");
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-request-id")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no request id in {text}"))
    }

    /// SIGTERM: finish, flush and close the log into the store.
    pub(crate) fn stop(mut self) {
        let st = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
        assert!(self.child.wait().expect("wait").success());
    }
}
