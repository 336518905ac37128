//! The artifact store through the binary: init, add, status, checkout,
//! remotes, push/fetch/pull, gc, audit, ls, diff, lineage — and the hostile
//! and crash paths.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::common::{Env, bin};

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

/// Every object under a store directory hashes to its name.
fn assert_store_consistent(dir: &Path) {
    if !dir.exists() {
        return; // killed before it was created
    }
    for d in fs::read_dir(dir).expect("store dir") {
        let d = d.expect("entry");
        let name = d.file_name().to_string_lossy().to_string();
        if name.len() != 2 || !d.path().is_dir() {
            continue;
        }
        for f in fs::read_dir(d.path()).expect("subdir") {
            let f = f.expect("entry");
            let want = format!("{name}{}", f.file_name().to_string_lossy());
            let got = blake3::hash(&fs::read(f.path()).expect("read object")).to_hex();
            assert_eq!(
                want,
                got.as_str(),
                "torn or corrupt object {}",
                f.path().display()
            );
        }
    }
}

fn big_file(env: &Env, rel: &str, mib: usize) {
    let mut v = vec![0u8; mib << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for chunk in v.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    env.write(rel, v);
}

#[test]
fn init_is_idempotent_and_ignores_store_and_db() {
    let env = Env::new();
    assert!(env.path("store").is_dir());
    assert!(env.path("lineage.db").is_file());
    let gi = String::from_utf8(env.read(".gitignore")).unwrap();
    assert!(gi.contains("/store/") && gi.contains("/lineage.db"), "{gi}");
    let out = env.ok(&["init"]);
    assert!(out.contains("already initialised"), "{out}");
    let gi2 = String::from_utf8(env.read(".gitignore")).unwrap();
    assert_eq!(gi, gi2, "init twice must not duplicate entries");
    let j = env.json(&["init", "--json"]);
    assert_eq!(j["git"], true);
}

#[test]
fn init_outside_git_records_no_git_and_add_still_works() {
    let env = Env::bare();
    let j = env.json(&["init", "--json"]);
    assert_eq!(j["git"], false);
    env.write("data/a.csv", "x\n");
    let out = env.json(&["add", "data/a.csv", "--json"]);
    assert_eq!(out[0]["name"], "dataset_1");
    let l = env.json(&["lineage", "dataset_1", "--json"]);
    assert!(l["artifact"]["git_commit"].is_null());
}

#[test]
fn dash_c_runs_as_if_started_in_that_directory() {
    let env = Env::new();
    env.write("data/a.csv", "a");
    let parent = env.root.parent().unwrap();
    let o = env
        .cmd_in(parent, &["-C", "proj", "add", "data/a.csv", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(env.path("data/a.csv.recsys").exists());
}

#[test]
fn commands_outside_a_project_fail_with_a_hint() {
    let env = Env::bare();
    let err = env.fails(2, &["status"]);
    assert!(err.contains("not inside a recsys project"), "{err}");
    assert!(err.contains("recsys init"), "{err}");
}

#[test]
fn add_tracks_files_and_directories_with_monotonic_names() {
    let env = Env::new();
    env.write("data/ratings.csv", "u,m,r\n1,2,3\n");
    env.write("data/images/a.txt", "a");
    env.write("data/images/sub/b.txt", "bb");
    env.write("models/m.bin", "weights");
    let added = env.json(&[
        "add",
        "data/ratings.csv",
        "data/images",
        "--kind",
        "dataset",
        "--json",
    ]);
    assert_eq!(added[0]["name"], "dataset_1");
    assert_eq!(added[1]["name"], "dataset_2");
    assert_eq!(added[1]["files"], 2);
    let m = env.json(&["add", "models/m.bin", "--json"]);
    assert_eq!(m[0]["kind"], "model");
    assert_eq!(m[0]["name"], "model_v1");

    // Pointer beside the artifact, artifact ignored by git.
    let digest = pointer_field(&env, "data/ratings.csv.recsys", "digest");
    assert_eq!(digest, blake3::hash(b"u,m,r\n1,2,3\n").to_hex().as_str());
    assert_eq!(pointer_field(&env, "data/ratings.csv.recsys", "size"), "12");
    assert_eq!(pointer_field(&env, "data/images.recsys", "files"), "2");
    let gi = String::from_utf8(env.read("data/.gitignore")).unwrap();
    assert!(
        gi.contains("/ratings.csv") && gi.contains("/images"),
        "{gi}"
    );
    let obj = object_path(&env, &digest);
    assert_eq!(fs::read(&obj).unwrap(), b"u,m,r\n1,2,3\n");
    assert_eq!(
        fs::metadata(&obj).unwrap().permissions().mode() & 0o222,
        0,
        "objects are read-only"
    );
    env.git(&["add", "-A"]);
    let tracked = env.git(&["ls-files"]);
    assert!(tracked.contains("data/ratings.csv.recsys"), "{tracked}");
    assert!(!tracked.contains("data/ratings.csv\n"), "{tracked}");
    assert!(!tracked.contains("store/"), "{tracked}");

    // Unchanged re-add keeps the name; changed bytes get the next one.
    let again = env.json(&["add", "data/ratings.csv", "--json"]);
    assert_eq!(again[0]["unchanged"], true);
    assert_eq!(again[0]["name"], "dataset_1");
    env.write("data/ratings.csv", "u,m,r\n1,2,4\n");
    let next = env.json(&["add", "data/ratings.csv", "--json"]);
    assert_eq!(next[0]["name"], "dataset_3");
    assert_eq!(next[0]["kind"], "dataset");

    // --name: accepted once, never reused for other bytes.
    env.write("models/m.bin", "weights v2");
    let named = env.json(&["add", "models/m.bin", "--name", "model_v7", "--json"]);
    assert_eq!(named[0]["name"], "model_v7");
    env.write("models/other.bin", "other");
    let err = env.fails(2, &["add", "models/other.bin", "--name", "model_v7"]);
    assert!(err.contains("already used for other bytes"), "{err}");
    // The automatic sequence continues after the highest number.
    env.write("models/m.bin", "weights v3");
    let auto = env.json(&["add", "models/m.bin", "--json"]);
    assert_eq!(auto[0]["name"], "model_v8");
}

#[test]
fn next_name_counts_pointer_files_at_head_not_only_lineage() {
    let env = Env::new();
    env.write("data/a.csv", "a");
    env.ok(&[
        "add",
        "data/a.csv",
        "--kind",
        "dataset",
        "--name",
        "dataset_5",
    ]);
    env.commit("dataset 5");
    // A teammate's lineage.db is empty: only the committed pointer knows.
    fs::remove_file(env.path("lineage.db")).unwrap();
    env.ok(&["init"]);
    env.write("data/b.csv", "b");
    let j = env.json(&["add", "data/b.csv", "--kind", "dataset", "--json"]);
    assert_eq!(j[0]["name"], "dataset_6");
}

#[test]
fn add_rejects_bad_input_clearly() {
    let env = Env::new();
    let err = env.fails(2, &["add", "nope.csv"]);
    assert!(err.contains("nope.csv: no such file"), "{err}");
    let outside = env.tmp.path().join("outside.csv");
    fs::write(&outside, "x").unwrap();
    let err = env.fails(2, &["add", outside.to_str().unwrap()]);
    assert!(err.contains("outside the project"), "{err}");
    let err = env.fails(2, &["add", "store"]);
    assert!(err.contains("belongs to recsys"), "{err}");
    env.write("a.csv", "a");
    let err = env.fails(2, &["add", "a.csv", "--name", "../evil"]);
    assert!(err.contains("bad version name"), "{err}");
    // A symlink inside a tracked directory that leaves the project.
    env.write("d/ok.txt", "ok");
    std::os::unix::fs::symlink(&outside, env.path("d/leak")).unwrap();
    let err = env.fails(2, &["add", "d"]);
    assert!(
        err.contains("outside the project") || err.contains("symlink"),
        "{err}"
    );
}

#[test]
fn status_reports_each_state_and_exit_code() {
    let env = Env::new();
    env.write("data/a.csv", "a");
    env.write("data/b.csv", "b");
    env.write("data/d/x", "x");
    env.ok(&["add", "data/a.csv", "data/b.csv", "data/d"]);
    let st = env.json(&["status", "--json"]);
    assert_eq!(st.as_array().unwrap().len(), 3);
    for s in st.as_array().unwrap() {
        assert_eq!(s["workspace"], "unchanged");
        assert_eq!(s["store"], "present");
        assert_eq!(s["remote"], "no-remote");
    }
    env.ok(&["status", "--exit-code"]);

    env.write("data/a.csv", "changed");
    fs::remove_file(env.path("data/b.csv")).unwrap();
    env.write("data/d/new", "n");
    let st = env.json(&["status", "--json"]);
    let by = |p: &str| {
        st.as_array()
            .unwrap()
            .iter()
            .find(|s| s["path"] == p)
            .unwrap()
            .clone()
    };
    assert_eq!(by("data/a.csv")["workspace"], "modified");
    assert_eq!(by("data/b.csv")["workspace"], "missing");
    assert_eq!(by("data/d")["workspace"], "modified");
    let out = env.ok(&["status"]);
    assert!(out.contains("data/a.csv: modified"), "{out}");
    assert!(out.contains("missing from the work tree"), "{out}");
    env.fails(1, &["status", "--exit-code"]);

    // Touching without changing content is still unchanged (re-hashed once).
    env.write("data/a.csv", "a");
    let st = env.json(&["status", "data/a.csv", "--json"]);
    assert_eq!(st[0]["workspace"], "unchanged");

    // Missing from the store, and not pushed.
    let digest = pointer_field(&env, "data/a.csv.recsys", "digest");
    fs::remove_file(object_path(&env, &digest)).unwrap();
    env.add_origin();
    let st = env.json(&["status", "data/a.csv", "--json"]);
    assert_eq!(st[0]["store"], "missing");
    assert_eq!(st[0]["remote"], "not-pushed");
}

#[test]
fn checkout_restores_files_and_directories_with_each_link_mode() {
    let env = Env::new();
    env.write("data/a.csv", "alpha");
    env.write("data/d/x.txt", "x");
    env.write("data/d/sub/y.txt", "yy");
    env.write("data/d/run.sh", "#!/bin/sh\n");
    fs::set_permissions(env.path("data/d/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    env.ok(&["add", "data/a.csv", "data/d"]);

    for mode in ["copy", "hardlink", "symlink", "reflink"] {
        fs::remove_file(env.path("data/a.csv")).unwrap();
        fs::remove_dir_all(env.path("data/d")).unwrap();
        let o = env.run(&["checkout", "--link", mode]);
        if mode == "reflink" && !o.status.success() {
            // ext4 has no reflink: the explicit mode fails clearly.
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("data/"), "{err}");
            env.ok(&["checkout"]);
        } else {
            assert!(
                o.status.success(),
                "{mode}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        assert_eq!(env.read("data/a.csv"), b"alpha", "{mode}");
        assert_eq!(env.read("data/d/sub/y.txt"), b"yy", "{mode}");
        let st = env.json(&["status", "--json"]);
        for s in st.as_array().unwrap() {
            assert_eq!(s["workspace"], "unchanged", "{mode}: {s}");
        }
        let meta = fs::metadata(env.path("data/a.csv")).unwrap();
        match mode {
            "hardlink" | "symlink" => {
                assert_eq!(
                    meta.permissions().mode() & 0o222,
                    0,
                    "{mode} copies are read-only"
                )
            }
            _ => assert_ne!(
                meta.permissions().mode() & 0o200,
                0,
                "{mode} copies are writable"
            ),
        }
        if mode == "copy" {
            let m = fs::metadata(env.path("data/d/run.sh"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(m & 0o111, 0o111, "executable bit restored");
        }
    }
    let out = env.ok(&["checkout"]);
    assert!(out.contains("2 artifact(s) already up to date"), "{out}");
}

#[test]
fn checkout_never_overwrites_unstored_changes_without_force() {
    let env = Env::new();
    env.write("data/a.csv", "v1");
    env.write("data/d/x", "x");
    env.ok(&["add", "data/a.csv", "data/d"]);
    env.write("data/a.csv", "precious local edit");
    let err = env.fails(2, &["checkout", "data/a.csv"]);
    assert!(err.contains("would overwrite local changes"), "{err}");
    assert_eq!(env.read("data/a.csv"), b"precious local edit");
    env.write("data/d/extra", "precious");
    let err = env.fails(2, &["checkout", "data/d"]);
    assert!(err.contains("data/d/extra"), "{err}");
    env.ok(&["checkout", "data/a.csv", "data/d", "--force"]);
    assert_eq!(env.read("data/a.csv"), b"v1");
    assert!(!env.path("data/d/extra").exists());
}

#[test]
fn checkout_rev_restores_old_bytes_without_touching_git() {
    let env = Env::new();
    env.write("data/a.csv", "v1");
    env.write("data/d/f", "one");
    env.ok(&["add", "data/a.csv", "data/d"]);
    let c1 = env.commit("v1");
    env.write("data/a.csv", "v2");
    env.write("data/d/f", "two");
    env.write("data/d/g", "new");
    env.ok(&["add", "data/a.csv", "data/d"]);
    env.commit("v2");
    env.ok(&["checkout", "--rev", &c1[..8]]);
    assert_eq!(env.read("data/a.csv"), b"v1");
    assert_eq!(env.read("data/d/f"), b"one");
    assert!(!env.path("data/d/g").exists());
    assert_eq!(
        env.git(&["rev-parse", "HEAD"]).trim(),
        env.git(&["rev-parse", "main"]).trim()
    );
    assert!(
        String::from_utf8(env.read("data/a.csv.recsys"))
            .unwrap()
            .contains("dataset_3")
    );
    let diff = env.json(&["diff", &c1, "HEAD", "--json"]);
    assert_eq!(diff.as_array().unwrap().len(), 2);
    assert_eq!(diff[0]["change"], "changed");
    assert_eq!(diff[0]["old"]["name"], "dataset_1");
    assert_eq!(diff[0]["new"]["name"], "dataset_3");
    let err = env.fails(2, &["checkout", "--rev", "no-such-rev"]);
    assert!(err.contains("no-such-rev"), "{err}");
    env.ok(&["checkout", "--rev", "HEAD"]);
    assert_eq!(env.read("data/a.csv"), b"v2");
}

#[test]
fn diff_reports_added_changed_removed() {
    let env = Env::new();
    env.write("a", "1");
    env.write("b", "1");
    env.ok(&["add", "a", "b"]);
    env.commit("one");
    env.write("a", "2");
    env.write("c", "3");
    env.ok(&["add", "a", "c"]);
    fs::remove_file(env.path("b.recsys")).unwrap();
    let d = env.json(&["diff", "--json"]);
    let changes: Vec<(String, String)> = d
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().into(),
                e["change"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            ("a".into(), "changed".into()),
            ("b".into(), "removed".into()),
            ("c".into(), "added".into())
        ]
    );
    let out = env.ok(&["diff"]);
    assert!(
        out.contains("+ c:") && out.contains("- b:") && out.contains("~ a:"),
        "{out}"
    );
}

#[test]
fn remotes_redact_credentials_and_validate() {
    let env = Env::new();
    let remote = env.tmp.path().join("r");
    env.ok(&[
        "remote",
        "add",
        "origin",
        &format!("file://{}", remote.display()),
    ]);
    env.ok(&[
        "remote",
        "add",
        "backup",
        remote.to_str().unwrap(),
        "--default",
    ]);
    let list = env.ok(&["remote", "list"]);
    assert!(
        list.contains("* backup") && list.contains("  origin"),
        "{list}"
    );
    let err = env.fails(
        2,
        &["remote", "add", "s3", "s3://AKIAXX:topsecret@bucket/x"],
    );
    assert!(!err.contains("topsecret"), "{err}");
    assert!(err.contains("credentials do not belong"), "{err}");
    let err = env.fails(2, &["remote", "add", "origin", "/x"]);
    assert!(err.contains("exists already"), "{err}");
    env.ok(&["remote", "remove", "origin"]);
    let j = env.json(&["remote", "list", "--json"]);
    assert_eq!(j.as_array().unwrap().len(), 1);
    let err = env.fails(2, &["push", "-r", "origin"]);
    assert!(err.contains("no remote named origin"), "{err}");
}

#[test]
fn push_pull_round_trip_into_a_fresh_clone_with_lineage() {
    let env = Env::new();
    let remote = env.add_origin();
    env.write("data/a.csv", "alpha");
    for i in 0..50 {
        env.write(&format!("data/d/f{i}"), format!("file {i}"));
    }
    env.ok(&["add", "data/a.csv", "data/d", "--kind", "dataset"]);
    env.commit("data");
    let p = env.json(&["push", "--json"]);
    assert_eq!(
        p["objects"], 54,
        "50 files + 1 file + manifest + 2 run records: {p}"
    );
    let again = env.json(&["push", "--json"]);
    assert_eq!(again["objects"], 0);
    assert_store_consistent(&remote);

    // An interrupted push: the directory's manifest (committed last) and
    // some of its files never arrived; a rerun moves only those.
    let manifest = pointer_field(&env, "data/d.recsys", "digest");
    let m = String::from_utf8(fs::read(object_path(&env, &manifest)).unwrap()).unwrap();
    let mut lost = vec![manifest.clone()];
    lost.extend(
        m.lines()
            .skip(1)
            .step_by(7)
            .map(|l| l.split(' ').next().unwrap().to_string()),
    );
    for d in &lost {
        fs::remove_file(remote.join(&d[..2]).join(&d[2..])).unwrap();
    }
    let st = env.json(&["status", "data/d", "--json"]);
    assert_eq!(st[0]["remote"], "not-pushed");
    let re = env.json(&["push", "--json"]);
    assert_eq!(re["objects"], lost.len());
    assert_store_consistent(&remote);

    let before = env.json(&["lineage", "dataset_2", "--json"]);
    let clone = env.tmp.path().join("clone");
    let o = crate::common::git_cmd(env.tmp.path())
        .args([
            "clone",
            "-q",
            env.root.to_str().unwrap(),
            clone.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = env.cmd_in(&clone, &["pull", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(fs::read(clone.join("data/a.csv")).unwrap(), b"alpha");
    assert_eq!(fs::read(clone.join("data/d/f7")).unwrap(), b"file 7");
    let after = env
        .cmd_in(&clone, &["lineage", "dataset_2", "--json"])
        .output()
        .unwrap();
    let after: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    assert_eq!(
        before, after,
        "a clone plus pull answers lineage exactly as the original"
    );
}

#[test]
fn pull_reports_name_conflicts_instead_of_merging() {
    let a = Env::new();
    let remote = a.add_origin();
    a.write("data/x.csv", "from A");
    a.ok(&["add", "data/x.csv", "--kind", "dataset"]);
    a.commit("A");
    a.ok(&["push"]);

    let b = Env::new();
    b.write("data/y.csv", "from B");
    b.ok(&["add", "data/y.csv", "--kind", "dataset"]);
    b.ok(&[
        "remote",
        "add",
        "origin",
        remote.to_str().unwrap(),
        "--default",
    ]);
    // B's pointer file for A's dataset_1 arrives through git.
    fs::copy(a.path("data/x.csv.recsys"), b.path("data/x.csv.recsys")).unwrap();
    let err = b.fails(1, &["pull"]);
    assert!(
        err.contains("conflict") && err.contains("dataset_1"),
        "{err}"
    );
    let mine = b.json(&["lineage", "dataset_1", "--json"]);
    assert_eq!(
        mine["artifact"]["path"], "data/y.csv",
        "the local meaning is kept"
    );
}

#[test]
fn corrupt_objects_are_reported_and_never_materialised() {
    let env = Env::new();
    env.write("data/a.csv", "the real bytes");
    env.write("data/d/f", "dir file");
    env.ok(&["add", "data/a.csv", "data/d"]);
    env.ok(&["audit"]);
    let digest = pointer_field(&env, "data/a.csv.recsys", "digest");
    let obj = object_path(&env, &digest);
    // Flip bytes in place (same size), as a failing disk would.
    fs::set_permissions(&obj, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&obj, "the reel bytes").unwrap();
    let out = env.run(&["audit"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("corrupt-object: {digest}")),
        "{stdout}"
    );
    let j: serde_json::Value =
        serde_json::from_slice(&env.run(&["audit", "--json"]).stdout).unwrap();
    assert_eq!(j["problems"][0]["kind"], "corrupt-object");

    fs::remove_file(env.path("data/a.csv")).unwrap();
    let err = env.fails(2, &["checkout", "data/a.csv"]);
    assert!(err.contains("corrupt"), "{err}");
    assert!(!env.path("data/a.csv").exists(), "nothing materialised");

    // A remote with a corrupt object: pull refuses it.
    let remote = env.add_origin();
    let err = env.fails(2, &["push"]);
    assert!(err.contains(&digest[..12]) || err.contains("hash"), "{err}");
    fs::remove_file(&obj).unwrap();
    let rdir = remote.join(&digest[..2]);
    fs::create_dir_all(&rdir).unwrap();
    fs::write(rdir.join(&digest[2..]), "the reel bytes").unwrap();
    let err = env.fails(2, &["pull", "data/a.csv"]);
    assert!(err.contains("hash"), "{err}");
    assert!(!obj.exists() && !env.path("data/a.csv").exists());
}

#[test]
fn add_link_hardlink_shares_the_inode_read_only_and_an_edit_is_caught() {
    use std::os::unix::fs::MetadataExt;
    let env = Env::new();
    big_file(&env, "data/big.bin", 2); // the large-file path
    env.write("data/d/a", "small a");
    env.write("data/d/b", "small b");
    env.write("data/run.sh", "#!/bin/sh\n");
    fs::set_permissions(env.path("data/run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    env.write("data/shared", "two names");
    fs::hard_link(env.path("data/shared"), env.path("shared-elsewhere")).unwrap();
    env.ok(&[
        "add",
        "--link",
        "hardlink",
        "data/big.bin",
        "data/d",
        "data/run.sh",
        "data/shared",
    ]);
    for f in ["data/big.bin", "data/d/a", "data/d/b"] {
        let ptr = if f.starts_with("data/d/") {
            None
        } else {
            Some(pointer_field(&env, &format!("{f}.recsys"), "digest"))
        };
        let digest = ptr.unwrap_or_else(|| blake3::hash(&env.read(f)).to_hex().to_string());
        let m = fs::metadata(env.path(f)).unwrap();
        let o = fs::metadata(object_path(&env, &digest)).unwrap();
        assert_eq!(m.ino(), o.ino(), "{f} is the object");
        assert_eq!(m.mode() & 0o777, 0o444, "{f} is read-only");
    }
    // Copied, not linked: execute bits, and a file with another name.
    for f in ["data/run.sh", "data/shared"] {
        let digest = pointer_field(&env, &format!("{f}.recsys"), "digest");
        let m = fs::metadata(env.path(f)).unwrap();
        assert_ne!(
            m.ino(),
            fs::metadata(object_path(&env, &digest)).unwrap().ino()
        );
        assert_ne!(m.mode() & 0o222, 0, "{f} is still writable");
    }
    env.ok(&["audit"]);
    let out = env.run(&["status", "--exit-code"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    // Bytes already in the store: nothing to link, the file stays the user's.
    env.write("data/again.bin", env.read("data/big.bin"));
    env.ok(&["add", "--link", "hardlink", "data/again.bin"]);
    let m = fs::metadata(env.path("data/again.bin")).unwrap();
    assert_eq!((m.nlink(), m.mode() & 0o777), (1, 0o644));

    // Editing the read-only file in place (here by someone who can) changes
    // the object too: audit reports it, checkout refuses to copy it out.
    let digest = pointer_field(&env, "data/big.bin.recsys", "digest");
    std::thread::sleep(Duration::from_millis(20));
    fs::set_permissions(env.path("data/big.bin"), fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = env.read("data/big.bin");
    bytes[7] ^= 1;
    fs::OpenOptions::new()
        .write(true)
        .open(env.path("data/big.bin"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, &bytes))
        .unwrap();
    let out = env.run(&["audit"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("corrupt-object: {digest}")),
        "{out:?}"
    );
    fs::remove_file(env.path("data/again.bin")).unwrap();
    let err = env.fails(2, &["checkout", "data/again.bin"]);
    assert!(err.contains("corrupt"), "{err}");
    assert!(!env.path("data/again.bin").exists());
}

#[test]
fn a_tampered_object_is_caught_by_its_stat_stamp() {
    let env = Env::new();
    env.write("m.bin", "original");
    env.ok(&["add", "m.bin"]);
    let digest = pointer_field(&env, "m.bin.recsys", "digest");
    let obj = object_path(&env, &digest);
    fs::remove_file(env.path("m.bin")).unwrap();
    env.ok(&["checkout"]);
    fs::remove_file(env.path("m.bin")).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    fs::set_permissions(&obj, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&obj, "tampered").unwrap();
    let err = env.fails(2, &["checkout"]);
    assert!(err.contains("corrupt"), "{err}");
}

#[test]
fn audit_reports_missing_objects_lineage_and_commits() {
    let env = Env::new();
    env.write("data/d/f", "x");
    env.write("data/a", "a");
    env.ok(&["add", "data/d", "data/a"]);
    env.commit("one");
    env.write("data/a", "b");
    env.ok(&["add", "data/a"]);
    // dataset_3 was registered at commit "one"; rewrite history so that
    // commit no longer exists.
    env.git(&["checkout", "-q", "--orphan", "fresh"]);
    env.commit("rewritten");
    env.git(&["branch", "-D", "main"]);
    env.git(&["reflog", "expire", "--expire=now", "--all"]);
    env.git(&["gc", "-q", "--prune=now"]);
    let d_digest = pointer_field(&env, "data/d.recsys", "digest");
    let a_digest = pointer_field(&env, "data/a.recsys", "digest");
    let m = String::from_utf8(fs::read(object_path(&env, &d_digest)).unwrap()).unwrap();
    let file_digest = m
        .lines()
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    fs::remove_file(object_path(&env, &file_digest)).unwrap();
    fs::remove_file(object_path(&env, &a_digest)).unwrap();
    env.write(
        "data/bad.recsys",
        "recsys-pointer: 1\npath: ../../etc/passwd\n",
    );
    let out = env.run(&["audit"]);
    assert_eq!(out.status.code(), Some(1));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains(&format!(
            "missing-object: data/d.recsys: file f ({file_digest})"
        )),
        "{s}"
    );
    assert!(s.contains("missing-object: data/a.recsys"), "{s}");
    assert!(s.contains("bad-pointer: data/bad.recsys"), "{s}");
    assert!(s.contains("unknown-commit:"), "{s}");
    // dataset_3's bytes are missing once, as the pointer's: a lineage row
    // alone does not need its bytes here (gc collects old versions).
    assert!(!s.contains("lineage-missing-object"), "{s}");
    assert_eq!(s.lines().count(), 4, "one line per problem:\n{s}");
}

#[test]
fn hostile_pointer_files_are_rejected_and_nothing_is_written_outside() {
    let env = Env::new();
    env.write("data/ok.csv", "ok");
    env.ok(&["add", "data/ok.csv"]);
    let good = String::from_utf8(env.read("data/ok.csv.recsys")).unwrap();
    let victim = env.tmp.path().join("victim");
    for (name, text) in [
        ("dotdot", good.replace("path: ok.csv", "path: ../../victim")),
        (
            "abs",
            good.replace("path: ok.csv", &format!("path: {}", victim.display())),
        ),
    ] {
        env.write(&format!("data/{name}.recsys"), &text);
        let err = env.fails(2, &["checkout", &format!("data/{name}.recsys")]);
        assert!(
            err.contains(&format!("data/{name}.recsys:4")),
            "names file and line: {err}"
        );
        assert!(err.contains("plain file name"), "{err}");
        fs::remove_file(env.path(&format!("data/{name}.recsys"))).unwrap();
    }
    // A directory symlink that leads out of the project and came with a
    // commit (git tracks it), like a pointer file: untrusted. (A link git
    // does not track was made on this machine and is followed: see
    // provenance::a_data_directory_moved_behind_a_symlink_is_still_tracked.)
    let outside = env.tmp.path().join("outside");
    fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, env.path("escape")).unwrap();
    env.git(&["add", "escape"]);
    fs::write(outside.join("ok.csv.recsys"), &good).unwrap();
    let err = env.fails(2, &["checkout", "escape/ok.csv.recsys"]);
    assert!(err.contains("outside") || err.contains("symlink"), "{err}");
    assert!(!victim.exists());
    assert!(
        !outside.join("ok.csv").exists(),
        "nothing written outside the project"
    );
    // The work-tree walk finds the pointer through the link (so gc keeps
    // what it names), and checkout refuses to write through it, loudly.
    let err = env.fails(2, &["checkout"]);
    assert!(err.contains("escape/ok.csv"), "{err}");
    assert!(!outside.join("ok.csv").exists());
    fs::remove_file(env.path("escape")).unwrap();
    env.git(&["rm", "-q", "--cached", "escape"]);
    env.ok(&["checkout"]);

    // Malformed pointers: an error naming file and line, never a panic.
    env.write(
        "data/broken.recsys",
        "recsys-pointer: 1\nthis is not a pointer\n",
    );
    let err = env.fails(2, &["status"]);
    assert!(err.contains("data/broken.recsys:2"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    env.write("data/broken.recsys", vec![0xff, 0xfe, 0x00]);
    let err = env.fails(2, &["checkout", "data/broken.recsys"]);
    assert!(
        err.contains("data/broken.recsys:1: not valid UTF-8"),
        "{err}"
    );
}

#[test]
fn hostile_manifest_from_a_remote_is_refused() {
    let env = Env::new();
    // A manifest whose digest is right but whose paths escape.
    let inner = blake3::hash(b"pwned").to_hex().to_string();
    let manifest = format!("recsys-manifest 1\n{inner} 5 644 ../../evil\n");
    let mdigest = blake3::hash(manifest.as_bytes()).to_hex().to_string();
    let remote = env.tmp.path().join("remote");
    for (d, bytes) in [
        (&mdigest, manifest.as_bytes()),
        (&inner, b"pwned".as_slice()),
    ] {
        fs::create_dir_all(remote.join(&d[..2])).unwrap();
        fs::write(remote.join(&d[..2]).join(&d[2..]), bytes).unwrap();
    }
    env.ok(&[
        "remote",
        "add",
        "origin",
        remote.to_str().unwrap(),
        "--default",
    ]);
    env.write(
        "data/d.recsys",
        format!("recsys-pointer: 1\npath: d\ntype: dir\nkind: dataset\nname: dataset_9\ndigest: {mdigest}\nsize: 5\nfiles: 1\n"),
    );
    let err = env.fails(2, &["pull"]);
    assert!(err.contains("`..`"), "{err}");
    assert!(!env.tmp.path().join("evil").exists());
    assert!(!env.root.parent().unwrap().join("evil").exists());
}

#[test]
fn gc_removes_only_unreferenced_objects_and_temp_files() {
    let env = Env::new();
    env.write("a", "v1");
    env.ok(&["add", "a"]);
    let v1 = pointer_field(&env, "a.recsys", "digest");
    let run1 = pointer_field(&env, "a.recsys", "run");
    env.commit("v1");
    env.write("a", "v2");
    env.ok(&["add", "a"]);
    let v2 = pointer_field(&env, "a.recsys", "digest");
    env.commit("v2");
    fs::write(env.path("store/tmp/12345-0-leftover"), "half an object").unwrap();

    // Just written: the grace period keeps everything, and says so.
    let young = env.json(&["gc", "--dry-run", "--json"]);
    assert_eq!(young["removed_objects"], 0, "{young}");
    let why = young["kept"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["digest"] == v1.as_str())
        .unwrap_or_else(|| panic!("v1 is listed as kept: {young}"));
    assert_eq!(
        (why["root"].as_str(), why["role"].as_str()),
        (Some("recent"), Some("unnamed"))
    );
    assert_eq!(why["grace_s"], 3600);

    let dry = env.json(&["gc", "--dry-run", "--json", "--grace", "0s"]);
    assert_eq!(dry["removed_objects"], 1);
    assert_eq!(dry["removed"][0], v1.as_str());
    assert!(object_path(&env, &v1).exists(), "dry run removes nothing");
    let kept_by = |j: &serde_json::Value, d: &str| {
        j["kept"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["digest"] == d)
            .cloned()
            .unwrap_or_else(|| panic!("{d} not kept: {j}"))
    };
    let v2_why = kept_by(&dry, &v2);
    assert_eq!(
        (v2_why["root"].as_str(), v2_why["pointer"].as_str()),
        (Some("pointer"), Some("a.recsys"))
    );
    assert_eq!(
        kept_by(&dry, &run1)["root"],
        "lineage",
        "run records are history"
    );
    let kept = env.json(&["gc", "--all-commits", "--json", "--grace", "0s"]);
    assert_eq!(kept["removed_objects"], 0, "v1 is named by an old commit");
    assert!(!env.path("store/tmp/12345-0-leftover").exists());
    let old = env.json(&[
        "gc",
        "--all-commits",
        "--dry-run",
        "--json",
        "--grace",
        "0s",
    ]);
    let commit1 = env.git(&["rev-parse", "HEAD~1"]);
    assert_eq!(
        kept_by(&old, &v1)["pointer"],
        format!("{}:a.recsys", &commit1.trim()[..12]).as_str()
    );
    let r = env.json(&["gc", "--json", "--grace", "0s"]);
    assert_eq!(r["removed_objects"], 1);
    assert!(!object_path(&env, &v1).exists());
    assert!(object_path(&env, &v2).exists());
    assert!(
        object_path(&env, &run1).exists(),
        "lineage is never collected"
    );
    let l = env.json(&["lineage", "dataset_1", "--json"]);
    assert_eq!(
        l["artifact"]["digest"],
        v1.as_str(),
        "history still explains v1"
    );
}

#[test]
fn lineage_answers_by_name_digest_and_path_and_rebuild_answers_the_same() {
    let env = Env::new();
    env.write("data/a.csv", "a");
    env.ok(&["add", "data/a.csv", "--kind", "dataset"]);
    let c = env.commit("a");
    env.write("data/a.csv", "b");
    env.write("models/m.bin", "m");
    env.ok(&["add", "data/a.csv", "models/m.bin"]);
    env.commit("b");
    let digest = pointer_field(&env, "data/a.csv.recsys", "digest");
    let by_name = env.json(&["lineage", "dataset_2", "--json"]);
    let by_digest = env.json(&["lineage", &digest[..10], "--json"]);
    let by_path = env.json(&["lineage", "data/a.csv", "--json"]);
    assert_eq!(by_name, by_digest);
    assert_eq!(by_name, by_path);
    assert_eq!(by_name["artifact"]["git_commit"], c.as_str());
    assert_eq!(by_name["run"]["kind"], "add");
    assert_eq!(by_name["run"]["recsys_version"], env!("CARGO_PKG_VERSION"));
    let text = env.ok(&["lineage", "dataset_2"]);
    assert!(
        text.contains("restore:    recsys checkout dataset_2"),
        "{text}"
    );
    // The restore command works for an older version no pointer names now.
    let old = env.json(&["lineage", "dataset_1", "--json"]);
    assert_eq!(old["restore"], "recsys checkout dataset_1");
    env.ok(&["checkout", "dataset_1"]);
    assert_eq!(env.read("data/a.csv"), b"a");
    env.ok(&["checkout", "data/a.csv"]);
    assert_eq!(env.read("data/a.csv"), b"b");
    let err = env.fails(2, &["lineage", "dataset_99"]);
    assert!(err.contains("no artifact matches"), "{err}");

    let ls_before = env.json(&["ls", "--json"]);
    let all_before: Vec<serde_json::Value> = ["dataset_1", "dataset_2", "model_v1"]
        .iter()
        .map(|n| env.json(&["lineage", n, "--json"]))
        .collect();
    fs::remove_file(env.path("lineage.db")).unwrap();
    env.ok(&["init"]);
    let r = env.json(&["lineage", "--rebuild", "--json"]);
    assert_eq!(r["runs_indexed"], 3);
    assert_eq!(env.json(&["ls", "--json"]), ls_before);
    for (n, before) in ["dataset_1", "dataset_2", "model_v1"]
        .iter()
        .zip(all_before)
    {
        assert_eq!(env.json(&["lineage", n, "--json"]), before, "{n}");
    }
    let ls = env.json(&["ls", "--kind", "model", "--json"]);
    assert_eq!(ls.as_array().unwrap().len(), 1);
    assert_eq!(ls[0]["name"], "model_v1");
}

#[test]
fn two_processes_adding_at_once_both_succeed() {
    let env = Env::new();
    for i in 0..4 {
        big_file(&env, &format!("d{i}.bin"), 8);
    }
    env.write("same.csv", "shared bytes");
    let spawn = |args: &[&str]| {
        env.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let kids = vec![
        spawn(&["add", "d0.bin", "d1.bin", "--kind", "dataset"]),
        spawn(&["add", "d2.bin", "d3.bin", "--kind", "dataset"]),
        spawn(&["add", "same.csv", "--kind", "model"]),
        spawn(&["add", "same.csv", "--kind", "model"]),
    ];
    for k in kids {
        let o = k.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let ls = env.json(&["ls", "--kind", "dataset", "--json"]);
    let mut names: Vec<String> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["dataset_1", "dataset_2", "dataset_3", "dataset_4"]);
    env.ok(&["audit"]);
    assert_store_consistent(&env.path("store"));
}

/// Kill a command at several points; the store never holds a torn object
/// and no pointer names a missing object; a rerun completes.
fn kill_at_intervals(env: &Env, args: &[&str], check: &dyn Fn(&Env)) {
    for delay_ms in [5u64, 30, 80, 200] {
        let mut child = env
            .cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        assert_store_consistent(&env.path("store"));
        check(env);
    }
}

#[test]
fn kill_9_during_add_push_and_checkout_leaves_a_consistent_store() {
    let env = Env::new();
    big_file(&env, "data/big.bin", 96);
    for i in 0..300 {
        env.write(&format!("data/many/f{i}"), format!("small file {i}"));
    }
    let pointers_resolve = |env: &Env| {
        for p in ["data/big.bin.recsys", "data/many.recsys"] {
            if env.path(p).exists() {
                let d = pointer_field(env, p, "digest");
                assert!(object_path(env, &d).exists(), "{p} names a missing object");
            }
        }
    };
    kill_at_intervals(
        &env,
        &["add", "data/big.bin", "data/many"],
        &pointers_resolve,
    );
    env.ok(&["add", "data/big.bin", "data/many"]);
    pointers_resolve(&env);
    env.ok(&["audit"]);

    let remote = env.add_origin();
    kill_at_intervals(&env, &["push"], &|_| assert_store_consistent(&remote));
    env.ok(&["push"]);
    assert_store_consistent(&remote);
    assert_eq!(env.json(&["push", "--json"])["objects"], 0);

    let want = env.read("data/big.bin");
    let restored_or_absent = |env: &Env| {
        if env.path("data/big.bin").exists() {
            assert_eq!(
                env.read("data/big.bin").len(),
                want.len(),
                "never a torn work-tree file"
            );
        }
    };
    fs::remove_file(env.path("data/big.bin")).unwrap();
    fs::remove_dir_all(env.path("data/many")).unwrap();
    kill_at_intervals(&env, &["checkout"], &restored_or_absent);
    env.ok(&["checkout"]);
    assert_eq!(env.read("data/big.bin"), want);
    assert_eq!(env.read("data/many/f7"), b"small file 7");
    env.ok(&["status", "--exit-code"]);
    env.ok(&["gc"]);
    assert_eq!(
        fs::read_dir(env.path("store/tmp")).unwrap().count(),
        0,
        "gc removed leftovers (the grace period is for objects, not temp files)"
    );
    env.ok(&["audit"]);
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        "init", "add", "status", "checkout", "remote", "push", "fetch", "pull", "gc", "audit",
        "ls", "diff", "lineage",
    ] {
        let o = std::process::Command::new(bin())
            .args([cmd, "--help"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{cmd}");
        let h = String::from_utf8_lossy(&o.stdout);
        assert!(
            h.contains("Example"),
            "`recsys {cmd} --help` has no example:\n{h}"
        );
    }
}
