//! The command line's edges: closed pipes, full disks, the umask, long
//! offending values, repeated imports and concurrent trains.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;

use crate::common::Env;
use crate::pipeline::{classic_fixture, synthetic};

/// A project with a few registered versions, so `ls` has lines to print.
fn with_versions() -> Env {
    let env = Env::new();
    for i in 0..5 {
        env.write(&format!("data/f{i}.csv"), format!("a,b\n{i},2\n"));
        env.ok(&["add", &format!("data/f{i}.csv"), "--kind", "dataset"]);
    }
    env.commit("versions");
    env.write("data/f0.csv", "changed\n");
    env.ok(&["add", "data/f0.csv"]);
    env
}

/// Run recsys with its stdout already closed by the reader (as `| head`
/// does once it has its line): every write meets EPIPE.
fn closed_stdout(env: &Env, args: &[&str]) -> std::process::Output {
    let mut child = env
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    child.wait_with_output().expect("wait")
}

#[test]
fn a_reader_that_goes_away_is_a_quiet_success() {
    let env = with_versions();
    for args in [
        &["ls"][..],
        &["ls", "--json"],
        &["ls", "--kind", "dataset"],
        &["diff", "HEAD"],
        &["remote", "list"],
    ] {
        let o = closed_stdout(&env, args);
        assert_eq!(o.status.code(), Some(0), "recsys {args:?}");
        assert!(
            o.stderr.is_empty(),
            "recsys {args:?} said: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn a_full_disk_on_stdout_is_one_error_said_once() {
    let env = with_versions();
    for args in [&["ls"][..], &["ls", "--json"], &["ls", "--kind", "dataset"]] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let o = env.cmd(args).stdout(full).output().expect("spawn");
        assert_eq!(o.status.code(), Some(2), "recsys {args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            err.matches("No space left on device").count(),
            1,
            "recsys {args:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // A status line (`say`) that cannot be written fails the command too.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    env.write("data/new.csv", "x\n");
    let o = env
        .cmd(&["add", "data/new.csv", "--kind", "dataset"])
        .stdout(full)
        .output()
        .expect("spawn");
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("standard output"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn mode(env: &Env, rel: &str) -> u32 {
    std::fs::metadata(env.path(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .permissions()
        .mode()
        & 0o777
}

/// `sh -c 'umask U; exec recsys ...'`: the child gets exactly that umask.
fn with_umask(env: &Env, umask: &str, args: &[&str]) {
    let mut c = env.cmd(&[]);
    let script = format!("umask {umask}; exec \"$0\" \"$@\"");
    let mut sh = std::process::Command::new("sh");
    sh.arg("-c").arg(script).arg(c.get_program()).args(args);
    sh.env_clear().current_dir(&env.root);
    for (k, v) in c.get_envs() {
        if let Some(v) = v {
            sh.env(k, v);
        }
    }
    let _ = &mut c;
    let o = sh.output().expect("spawn sh");
    assert!(
        o.status.success(),
        "recsys {args:?} under umask {umask}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn files_recsys_creates_honour_the_umask() {
    for (umask, file, dir) in [("022", 0o644, 0o755), ("027", 0o640, 0o750)] {
        let env = Env::new();
        env.write("data/ratings.csv", "a,b\n1,2\n");
        with_umask(
            &env,
            umask,
            &["add", "data/ratings.csv", "--kind", "dataset"],
        );
        assert_eq!(mode(&env, "data/ratings.csv.recsys"), file, "umask {umask}");
        assert_eq!(mode(&env, "data/.gitignore"), file, "umask {umask}");
        synthetic(&env, "data/synth", 30, 1_700_000_000_000, 1);
        with_umask(&env, umask, &["add", "data/synth", "--kind", "dataset"]);
        with_umask(
            &env,
            umask,
            &["train", "--dataset", "dataset_2", "--algo", "popularity"],
        );
        assert_eq!(mode(&env, "models/model_v1.bin"), file, "umask {umask}");
        assert_eq!(mode(&env, "models/model_v1.bin.recsys"), file);
        let ml = env.tmp.path().join("ml");
        classic_fixture(&ml);
        with_umask(
            &env,
            umask,
            &["import", "movielens", ml.to_str().expect("utf8")],
        );
        assert_eq!(mode(&env, "data/dataset_3"), dir, "umask {umask}");
        assert_eq!(
            mode(&env, "data/dataset_3/events.csv"),
            file,
            "umask {umask}"
        );
        assert_eq!(mode(&env, "data/dataset_3.recsys"), file, "umask {umask}");
    }
}

#[test]
fn importing_the_same_files_twice_is_unchanged_not_a_new_version() {
    let env = Env::new();
    let ml = env.tmp.path().join("ml");
    classic_fixture(&ml);
    let dir = ml.to_str().expect("utf8");
    let first = env.json(&["import", "movielens", dir, "--json"]);
    assert_eq!(first["dataset"], "dataset_1");
    assert_eq!(first["unchanged"], false);
    let again = env.json(&["import", "movielens", dir, "--json"]);
    assert_eq!(again["dataset"], "dataset_1");
    assert_eq!(again["unchanged"], true);
    assert_eq!(again["digest"], first["digest"]);
    let out = env.ok(&["import", "movielens", dir]);
    assert!(out.starts_with("unchanged: dataset_1"), "{out}");
    assert!(!env.path("data/dataset_2").exists());
    let ls = env.json(&["ls", "--json"]);
    assert_eq!(ls.as_array().map(Vec::len), Some(1), "{ls}");
    // A missing work-tree copy is pointed out.
    std::fs::remove_dir_all(env.path("data/dataset_1")).expect("rm");
    let out = env.ok(&["import", "movielens", dir]);
    assert!(out.contains("recsys checkout dataset_1"), "{out}");
    // A registration cut short after the index and before the pointer (a
    // kill, or a deleted pointer) is finished by importing the bytes again.
    let pointer = std::fs::read_to_string(env.path("data/dataset_1.recsys")).expect("pointer");
    std::fs::remove_file(env.path("data/dataset_1.recsys")).expect("rm");
    let again = env.json(&["import", "movielens", dir, "--json"]);
    assert_eq!(again["dataset"], "dataset_1");
    assert_eq!(again["unchanged"], true);
    assert_eq!(
        std::fs::read_to_string(env.path("data/dataset_1.recsys")).expect("restored"),
        pointer
    );
    assert!(
        env.path("data/dataset_1/events.csv").is_file(),
        "work-tree copy restored"
    );
    env.ok(&["audit"]);
    // Other bytes are a new version.
    let data = std::fs::read_to_string(ml.join("u.data")).expect("read");
    std::fs::write(
        ml.join("u.data"),
        data.lines().skip(1).collect::<Vec<_>>().join("\n") + "\n",
    )
    .expect("write");
    let other = env.json(&["import", "movielens", dir, "--json"]);
    assert_eq!(other["dataset"], "dataset_2");
    assert_eq!(other["unchanged"], false);
}

#[test]
fn a_huge_bad_field_is_quoted_in_a_short_error() {
    let env = Env::new();
    let ml = env.tmp.path().join("ml");
    classic_fixture(&ml);
    let huge = "9".repeat(5 << 20) + "x";
    std::fs::write(ml.join("u.data"), format!("1\t{huge}\t5\t881250949\n")).expect("write");
    let err = env.fails(2, &["import", "movielens", ml.to_str().expect("utf8")]);
    assert!(err.len() < 2000, "{} bytes of error", err.len());
    assert!(err.contains("u.data:1: bad item id \"999"), "{err}");
    assert!(err.contains('…'), "{err}");
}

#[test]
fn concurrent_trains_both_get_a_version() {
    let env = Env::new();
    synthetic(&env, "data/synth", 60, 1_700_000_000_000, 2);
    env.ok(&["add", "data/synth", "--kind", "dataset"]);
    for round in 0..3 {
        let kids: Vec<_> = (0..2)
            .map(|_| {
                env.cmd(&[
                    "train",
                    "--dataset",
                    "dataset_1",
                    "--algo",
                    "popularity",
                    "--json",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
            })
            .collect();
        let mut names = Vec::new();
        for k in kids {
            let o = k.wait_with_output().expect("wait");
            assert!(
                o.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
            names.push(v["model"].as_str().expect("model").to_string());
        }
        names.sort();
        assert_eq!(
            names,
            [
                format!("model_v{}", 2 * round + 1),
                format!("model_v{}", 2 * round + 2)
            ]
        );
    }
    env.ok(&["audit"]);
}

/// Log lines on stderr carry no colour codes when stderr is a file (and
/// the server's own lines are there: the file is not just empty).
#[test]
fn log_lines_in_a_file_have_no_colour_codes() {
    use crate::serve::{Project, signal, spawn_server_with};
    let p = Project::new();
    let log = p.env.tmp.path().join("serve.log");
    let file = std::fs::File::create(&log).expect("log file");
    let mut s = spawn_server_with(&p, &[], Stdio::from(file));
    signal(&s.child, "-TERM");
    let status = s.child.wait().expect("wait");
    assert!(status.success());
    let text = std::fs::read(&log).expect("read log");
    assert!(
        String::from_utf8_lossy(&text).contains("serving config"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    assert!(
        !text.contains(&0x1b),
        "escape codes in {}",
        String::from_utf8_lossy(&text)
    );
}
