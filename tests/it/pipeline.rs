//! The pipeline through the binary: import (both MovieLens layouts), train
//! each algorithm, evaluate, reproduce, lineage, refusals of bad input and
//! of tampered models — and the quality targets on the real MovieLens 100K.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde_json::Value;

use crate::common::{Env, bin};

const GENRE_FLAGS: usize = recsys::movielens::GENRES.len();

/// Item id, classic title (Latin-1 bytes), RecBole title, year, genre flags.
type Item = (u32, &'static [u8], &'static str, u32, &'static [usize]);

const ITEMS: [Item; 4] = [
    (1, b"Toy Story (1995)", "Toy Story", 1995, &[3, 4, 5]),
    (
        2,
        b"Good, The Bad and The Ugly, The (1966)",
        "Good, The Bad and The Ugly, The",
        1966,
        &[18],
    ),
    // Latin-1 é in the classic file, UTF-8 in RecBole's.
    (
        3,
        b"Mis\xe9rables, Les (1995)",
        "Misérables, Les",
        1995,
        &[8, 12],
    ),
    (
        4,
        b"Lion King, The (1994)",
        "Lion King, The",
        1994,
        &[3, 4, 12],
    ),
];
/// (user, item, rating, unix seconds).
const RATINGS: [(u32, u32, u32, i64); 6] = [
    (1, 1, 5, 881_250_949),
    (1, 3, 3, 881_250_950),
    (2, 2, 4, 881_251_000),
    (2, 4, 1, 881_251_100),
    (3, 1, 2, 881_252_000),
    (3, 4, 5, 881_250_000),
];
const USERS: [(u32, u32, &str, &str); 3] = [
    (1, 24, "M", "technician"),
    (2, 53, "F", "other"),
    (3, 23, "M", "writer"),
];

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("mkdir");
    fs::write(dir.join(name), bytes).expect("write fixture");
}

pub(crate) fn classic_fixture(dir: &Path) {
    let mut data = String::new();
    for (u, i, r, t) in RATINGS {
        writeln!(data, "{u}\t{i}\t{r}\t{t}").expect("fmt");
    }
    write(dir, "u.data", data.as_bytes());
    let mut users = String::new();
    for (id, age, g, occ) in USERS {
        writeln!(users, "{id}|{age}|{g}|{occ}|85711").expect("fmt");
    }
    write(dir, "u.user", users.as_bytes());
    let mut items = Vec::new();
    for (id, title, _, year, genres) in ITEMS {
        items.extend_from_slice(format!("{id}|").as_bytes());
        items.extend_from_slice(title);
        items.extend_from_slice(format!("|01-Jan-{year}||http://x|").as_bytes());
        let flags: Vec<&str> = (0..GENRE_FLAGS)
            .map(|g| if genres.contains(&g) { "1" } else { "0" })
            .collect();
        items.extend_from_slice(flags.join("|").as_bytes());
        items.push(b'\n');
    }
    write(dir, "u.item", &items);
}

fn recbole_fixture(dir: &Path) {
    let mut inter = String::from("user_id:token\titem_id:token\trating:float\ttimestamp:float\n");
    for (u, i, r, t) in RATINGS {
        writeln!(inter, "{u}\t{i}\t{r}\t{t}").expect("fmt");
    }
    write(dir, "ml-100k.inter", inter.as_bytes());
    let mut users =
        String::from("user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token\n");
    for (id, age, g, occ) in USERS {
        writeln!(users, "{id}\t{age}\t{g}\t{occ}\t85711").expect("fmt");
    }
    write(dir, "ml-100k.user", users.as_bytes());
    let mut items =
        String::from("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n");
    for (id, _, title, year, genres) in ITEMS {
        let names: Vec<&str> = genres
            .iter()
            .map(|&g| recsys::movielens::GENRES[g])
            .collect();
        writeln!(items, "{id}\t{title}\t{year}\t{}", names.join(" ")).expect("fmt");
    }
    write(dir, "ml-100k.item", items.as_bytes());
}

fn b3(path: &Path) -> String {
    blake3::hash(&fs::read(path).expect("read"))
        .to_hex()
        .to_string()
}

fn text(env: &Env, rel: &str) -> String {
    String::from_utf8(env.read(rel)).expect("utf8")
}

#[test]
fn import_movielens_both_layouts_give_the_same_tables() {
    let env = Env::new();
    let classic = env.tmp.path().join("classic");
    let recbole = env.tmp.path().join("recbole");
    classic_fixture(&classic);
    recbole_fixture(&recbole);

    let a = env.json(&[
        "import",
        "movielens",
        classic.to_str().expect("utf8"),
        "--json",
    ]);
    assert_eq!(a["dataset"], "dataset_1");
    assert_eq!(a["layout"], "classic");
    assert_eq!(a["path"], "data/dataset_1");
    assert_eq!(a["counts"]["rate"], 6);
    assert_eq!(a["counts"]["watch"], 0);
    assert_eq!(a["counts"]["users"], 3);
    assert_eq!(a["counts"]["movies"], 4);
    let b = env.json(&[
        "import",
        "movielens",
        recbole.to_str().expect("utf8"),
        "--json",
    ]);
    assert_eq!(b["dataset"], "dataset_2");
    assert_eq!(b["layout"], "recbole");

    for f in ["events.csv", "users.csv", "movies.csv", "requests.csv"] {
        assert_eq!(
            text(&env, &format!("data/dataset_1/{f}")),
            text(&env, &format!("data/dataset_2/{f}")),
            "{f} differs between the layouts"
        );
    }
    let movies = text(&env, "data/dataset_1/movies.csv");
    assert_eq!(
        movies,
        "movie,title,year,genres\n\
         les+misrables+1995,\"Misérables, Les\",1995,Drama|Musical\n\
         the+good_+the+bad+and+the+ugly+1966,\"Good, The Bad and The Ugly, The\",1966,Western\n\
         the+lion+king+1994,\"Lion King, The\",1994,Animation|Children's|Musical\n\
         toy+story+1995,Toy Story,1995,Animation|Children's|Comedy\n"
    );
    let events = text(&env, "data/dataset_1/events.csv");
    assert_eq!(
        events.lines().take(3).collect::<Vec<_>>(),
        [
            "time_ms,user,movie,kind,value",
            "881250000000,3,the+lion+king+1994,rate,5",
            "881250949000,1,toy+story+1995,rate,5",
        ]
    );
    assert_eq!(
        text(&env, "data/dataset_1/users.csv"),
        "user,age,gender,occupation\n1,24,M,technician\n2,53,F,other\n3,23,M,writer\n"
    );
    assert!(env.path("data/dataset_1.recsys").is_file());
    assert!(text(&env, "data/.gitignore").contains("/dataset_1"));

    // The import run records where the data came from.
    let l = env.json(&["lineage", "dataset_1", "--json"]);
    let run = &l["run"];
    assert_eq!(run["kind"], "import");
    let src = &run["source"];
    assert_eq!(src["type"], "movielens");
    assert_eq!(src["layout"], "classic");
    let dir = fs::canonicalize(&classic).expect("canon");
    assert_eq!(src["dir"], dir.to_str().expect("utf8"));
    for f in ["u.data", "u.user", "u.item"] {
        assert_eq!(src["files"][f], b3(&classic.join(f)), "{f}");
    }
    let src2 = &env.json(&["lineage", "dataset_2", "--json"])["run"]["source"];
    assert_eq!(
        src2["files"]["ml-100k.inter"],
        b3(&recbole.join("ml-100k.inter"))
    );
    // The dataset's own source leaves the directory out: same files, same digest.
    let meta: Value =
        serde_json::from_str(&text(&env, "data/dataset_1/dataset.json")).expect("json");
    assert_eq!(meta["format"], 1);
    assert_eq!(meta["source"]["layout"], "classic");
    assert!(meta["source"].get("dir").is_none());

    // Importing the same files again finds the version they already are.
    let c = env.json(&[
        "import",
        "movielens",
        classic.to_str().expect("utf8"),
        "--json",
    ]);
    assert_eq!(c["dataset"], a["dataset"]);
    assert_eq!(c["unchanged"], true);
    assert_eq!(c["digest"], a["digest"]);
}

#[test]
fn import_refuses_bad_input() {
    let env = Env::new();
    let missing = env.tmp.path().join("nope");
    let err = env.fails(2, &["import", "movielens", missing.to_str().expect("utf8")]);
    assert!(err.contains("nope"), "{err}");
    let dir = env.tmp.path().join("broken");
    classic_fixture(&dir);
    write(&dir, "u.data", b"1\t1\t5\t881250949\n1\tx\t3\t881250950\n");
    let err = env.fails(2, &["import", "movielens", dir.to_str().expect("utf8")]);
    assert!(err.contains("u.data:2: bad item id"), "{err}");
    // A rating of an item the item file does not list.
    write(&dir, "u.data", b"1\t99\t5\t881250949\n");
    let err = env.fails(2, &["import", "movielens", dir.to_str().expect("utf8")]);
    assert!(err.contains("item 99"), "{err}");
    // Nothing half-written is left behind, and no name was used up.
    assert!(!env.path("data/dataset_1").exists());
    assert_eq!(env.json(&["ls", "--json"]), Value::Array(vec![]));
}

/// A synthetic dataset with planted taste groups: group g likes the movies
/// whose index is g modulo 3 (watches them, rates them 4-5) and mostly
/// ignores or dislikes the rest. Written in the dataset format directly.
pub(crate) fn synthetic(env: &Env, rel: &str, users: u64, t0: i64, seed: u64) {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let n_movies = 45;
    let movie = |i: u64| format!("movie+{i}+2000");
    let mut events = Vec::new();
    let mut t = t0;
    let (mut watch, mut rate) = (0, 0);
    for u in 1..=users {
        for i in 0..n_movies {
            let liked = i % 3 == u % 3;
            t += 1000;
            if next() < if liked { 0.55 } else { 0.06 } {
                for minute in 0..3 {
                    events.push(format!("{},{u},{},watch,{minute}", t + minute, movie(i)));
                    watch += 1;
                }
            }
            if next() < if liked { 0.4 } else { 0.12 } {
                let r = if liked {
                    4 + (next() < 0.5) as u32
                } else {
                    1 + (next() < 0.5) as u32
                };
                events.push(format!("{},{u},{},rate,{r}", t + 10, movie(i)));
                rate += 1;
            }
        }
    }
    let mut csv = String::from("time_ms,user,movie,kind,value\n");
    for e in &events {
        csv.push_str(e);
        csv.push('\n');
    }
    env.write(&format!("{rel}/events.csv"), csv);
    env.write(
        &format!("{rel}/requests.csv"),
        format!(
            "time_ms,user,status,latency_ms,items\n{t0},1,200,14,{};{}\n{},2,500,3,\n",
            movie(1),
            movie(2),
            t0 + 5
        ),
    );
    let mut u = String::from("user,age,gender,occupation\n");
    for id in 1..=users {
        writeln!(
            u,
            "{id},{},{},student",
            18 + id % 40,
            if id % 2 == 0 { "F" } else { "M" }
        )
        .expect("fmt");
    }
    env.write(&format!("{rel}/users.csv"), u);
    let mut m = String::from("movie,title,year,genres\n");
    let mut ids: Vec<String> = (0..n_movies).map(movie).collect();
    ids.sort();
    for id in &ids {
        writeln!(m, "{id},\"Movie, {id}\",2000,Drama").expect("fmt");
    }
    env.write(&format!("{rel}/movies.csv"), m);
    env.write(
        &format!("{rel}/dataset.json"),
        serde_json::json!({
            "format": 1,
            "source": {"type": "synthetic"},
            "counts": {
                "events": events.len(), "watch": watch, "rate": rate,
                "requests": 2, "users": users, "movies": n_movies
            }
        })
        .to_string(),
    );
}

const METRIC_KEYS: [&str; 5] = [
    "precision_at_10",
    "recall_at_20",
    "ndcg_at_20",
    "hit_rate_at_20",
    "rmse",
];

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

#[test]
fn train_evaluate_reproduce_each_algorithm() {
    let env = Env::new();
    synthetic(&env, "data/synth", 90, 1_700_000_000_000, 1);
    env.ok(&["add", "data/synth", "--kind", "dataset"]);
    env.commit("dataset");

    for (n, algo) in ["als", "svd", "popularity"].iter().enumerate() {
        let name = format!("model_v{}", n + 1);
        let mut args = vec![
            "train",
            "--dataset",
            "dataset_1",
            "--algo",
            algo,
            "--split",
            "random",
            "--json",
        ];
        if *algo == "svd" {
            // The defaults are tuned for MovieLens 100K; this data is tiny.
            args.extend(["--factors", "2", "--epochs", "1000", "--reg", "0.001"]);
        }
        let t = env.json(&args);
        assert_eq!(t["model"], name.as_str());
        assert_eq!(t["path"], format!("models/{name}.bin").as_str());
        assert_eq!(t["settings"]["algorithm"], *algo);
        assert_eq!(t["settings"]["split"], "random");
        assert_eq!(t["settings"]["split_seed"], 42);
        assert_eq!(t["settings"]["test_fraction"], 0.2);
        assert!(t["settings"]["threads"].as_u64().is_some_and(|n| n >= 1));
        assert!(env.path(&format!("models/{name}.bin.recsys")).is_file());
        let head = env.read(&format!("models/{name}.bin"));
        assert!(head.starts_with(b"RECSYS-MODEL 1 "));
        let header = String::from_utf8_lossy(&head[..head.len().min(4096)]).to_string();
        assert!(
            header.contains(&format!(
                "\"dataset_digest\":\"{}\"",
                t["dataset_digest"].as_str().expect("digest")
            )),
            "{header}"
        );
        let commit = env.git(&["rev-parse", "HEAD"]);
        assert!(
            header.contains(commit.trim()),
            "header lacks the code commit"
        );

        let run = env.json(&["lineage", &name, "--json"]);
        assert_eq!(run["run"]["kind"], "train");
        assert_eq!(run["run"]["algorithm"], *algo);
        assert_eq!(run["run"]["params"]["split"], "random");
        assert!(run["run"]["metrics"]["fit_seconds"].as_f64().is_some());
        assert_eq!(run["inputs"][0]["name"], "dataset_1");

        let e = env.json(&["evaluate", "--model", &name, "--json"]);
        assert_eq!(e["mode"], "holdout");
        assert_eq!(e["dataset"], "dataset_1");
        for k in METRIC_KEYS {
            assert!(e.get(k).is_some(), "evaluate --json lacks {k}: {e}");
            assert!(e["baseline"].get(k).is_some(), "baseline lacks {k}: {e}");
        }
        for k in &METRIC_KEYS[..4] {
            let v = num(&e, k);
            assert!((0.0..=1.0).contains(&v), "{k} = {v}");
        }
        match *algo {
            "svd" => {
                let rmse = num(&e, "rmse");
                // Ratings are 4-5 for liked, 1-2 for other movies:
                // predicting the mean scores about 1.5, the planted
                // structure about 0.9 (on this seed and split).
                assert!(rmse < 1.2, "svd rmse {rmse}");
                assert_eq!(t["settings"]["params"]["factors"], 2);
                assert_eq!(t["settings"]["params"]["epochs"], 1000);
                assert_eq!(t["settings"]["params"]["reg"], 0.001);
            }
            "als" => {
                assert!(e["rmse"].is_null());
                let (p, base) = (
                    num(&e, "precision_at_10"),
                    num(&e["baseline"], "precision_at_10"),
                );
                assert!(p > base * 1.2, "als p@10 {p} vs popularity {base}");
            }
            _ => {
                // The popularity model is the baseline itself.
                assert_eq!(e["precision_at_10"], e["baseline"]["precision_at_10"]);
            }
        }

        let r = env.json(&["reproduce", &name, "--json"]);
        assert_eq!(r["match"], true, "{r}");
        assert_eq!(r["recorded"], r["retrained"]);
        assert_eq!(r["dataset"], "dataset_1");
    }

    // ls --kind model: the latest metrics side by side.
    let ls = env.json(&["ls", "--kind", "model", "--json"]);
    let rows = ls.as_array().expect("array");
    assert_eq!(rows.len(), 3);
    for row in rows {
        assert!(
            row["metrics"]["precision_at_10"].as_f64().is_some(),
            "{row}"
        );
        assert!(
            row["metrics"]["baseline"]["precision_at_10"]
                .as_f64()
                .is_some()
        );
    }
    let table = env.ok(&["ls", "--kind", "model"]);
    assert!(table.contains("P@10") && table.contains("RMSE"), "{table}");
    let svd_line = table
        .lines()
        .find(|l| l.starts_with("model_v2"))
        .expect("model_v2 row");
    assert!(
        !svd_line.contains(" - "),
        "svd row lacks a metric: {svd_line}"
    );
    let evaluate_runs = env.json(&["lineage", "model_v1", "--json"])["used_by"]
        .as_array()
        .expect("used_by")
        .iter()
        .filter(|r| r["kind"] == "evaluate")
        .count();
    assert_eq!(evaluate_runs, 1);
}

#[test]
fn time_split_default_and_forward_test_on_a_later_dataset() {
    let env = Env::new();
    synthetic(&env, "data/early", 60, 1_700_000_000_000, 1);
    env.ok(&["add", "data/early", "--kind", "dataset"]);
    synthetic(&env, "data/late", 75, 1_800_000_000_000, 2);
    env.ok(&["add", "data/late", "--kind", "dataset"]);
    let t = env.json(&["train", "--dataset", "data/early", "--json"]);
    assert_eq!(t["settings"]["split"], "time");
    assert_eq!(t["settings"]["algorithm"], "als");
    let e = env.json(&[
        "evaluate",
        "--model",
        "model_v1",
        "--dataset",
        "dataset_2",
        "--json",
    ]);
    assert_eq!(e["mode"], "forward");
    assert_eq!(e["dataset"], "dataset_2");
    assert_eq!(e["unknown_movies_skipped"], 0);
    // Users 61-75 are new: cold-start users are scored on the popularity list.
    assert!(e["users_evaluated"].as_u64().is_some_and(|n| n > 60), "{e}");
    assert!(
        num(&e, "precision_at_10") > num(&e["baseline"], "precision_at_10"),
        "{e}"
    );
    let out = env.ok(&["evaluate", "--model", "model_v1"]);
    assert!(out.contains("held-out part of dataset_1"), "{out}");
    assert!(out.contains("popularity"), "{out}");
}

#[test]
fn reproduce_reads_the_dataset_from_the_store_and_reports_a_mismatch() {
    let env = Env::new();
    synthetic(&env, "data/synth", 60, 1_700_000_000_000, 1);
    env.ok(&["add", "data/synth", "--kind", "dataset"]);
    env.ok(&[
        "train",
        "--dataset",
        "dataset_1",
        "--algo",
        "svd",
        "--seed",
        "7",
        "--factors",
        "8",
    ]);
    // The dataset need not be in the work tree.
    fs::remove_dir_all(env.path("data/synth")).expect("rm");
    let out = env.ok(&["reproduce", "model_v1"]);
    assert!(out.contains("reproduced: the digests match"), "{out}");

    // Change the recorded seed: retraining now gives another model.
    let db = rusqlite::Connection::open(env.path("lineage.db")).expect("db");
    let n = db
        .execute(
            "UPDATE runs SET params = replace(params, '\"seed\":7', '\"seed\":8') WHERE kind = 'train'",
            [],
        )
        .expect("update");
    assert_eq!(n, 1);
    drop(db);
    let o = env.run(&["reproduce", "model_v1", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(r["match"], false);
    assert_ne!(r["recorded"], r["retrained"]);
    let o = env.run(&["reproduce", "model_v1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("NOT reproduced"));
}

#[test]
fn a_modified_model_file_is_refused() {
    let env = Env::new();
    synthetic(&env, "data/synth", 40, 1_700_000_000_000, 1);
    env.ok(&["add", "data/synth", "--kind", "dataset"]);
    env.ok(&["train", "--dataset", "dataset_1", "--algo", "popularity"]);
    let mut bytes = env.read("models/model_v1.bin");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    env.write("models/model_v1.bin", &bytes);
    for args in [
        &["evaluate", "--model", "model_v1"][..],
        &["reproduce", "model_v1"][..],
    ] {
        let err = env.fails(2, args);
        assert!(
            err.contains("models/model_v1.bin does not match model_v1"),
            "{args:?}: {err}"
        );
        assert!(err.contains("refused"), "{err}");
        assert!(err.contains("hint: `recsys checkout"), "{err}");
    }
    // Restored from the store, it is accepted again.
    env.ok(&["checkout", "models/model_v1.bin", "--force"]);
    env.ok(&["evaluate", "--model", "model_v1"]);

    // Without a work-tree copy the store object is used, and verified.
    fs::remove_file(env.path("models/model_v1.bin")).expect("rm");
    let digest = env.json(&["lineage", "model_v1", "--json"])["artifact"]["digest"]
        .as_str()
        .expect("digest")
        .to_string();
    let obj = env.path("store").join(&digest[..2]).join(&digest[2..]);
    let mut perms = fs::metadata(&obj).expect("stat").permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    fs::set_permissions(&obj, perms).expect("chmod");
    fs::write(&obj, &bytes).expect("corrupt the object");
    let err = env.fails(2, &["evaluate", "--model", "model_v1"]);
    assert!(
        err.contains("corrupt") || err.contains("does not match"),
        "{err}"
    );
}

#[test]
fn lineage_shows_the_chain_back_to_the_import_source() {
    let env = Env::new();
    let dir = env.tmp.path().join("ml");
    classic_fixture(&dir);
    env.ok(&["import", "movielens", dir.to_str().expect("utf8")]);
    env.commit("import");
    env.ok(&[
        "train",
        "--dataset",
        "dataset_1",
        "--algo",
        "popularity",
        "--test-fraction",
        "0.3",
    ]);
    let l = env.json(&["lineage", "model_v1", "--json"]);
    assert_eq!(l["run"]["kind"], "train");
    let up = l["upstream"].as_array().expect("upstream");
    assert_eq!(up.len(), 1, "{l}");
    assert_eq!(up[0]["name"], "dataset_1");
    assert_eq!(up[0]["depth"], 1);
    assert_eq!(up[0]["run"]["kind"], "import");
    assert_eq!(up[0]["run"]["source"]["type"], "movielens");
    let commit = env.git(&["rev-parse", "HEAD"]);
    assert_eq!(
        up[0]["run"]["git_commit"],
        Value::Null,
        "imported before the commit"
    );
    assert_eq!(l["run"]["git_commit"], commit.trim());

    let text = env.ok(&["lineage", "model_v1"]);
    assert!(text.contains("run:        train"), "{text}");
    assert!(text.contains("<- dataset dataset_1"), "{text}");
    assert!(text.contains("made by import run"), "{text}");
    assert!(text.contains("\"type\":\"movielens\""), "{text}");
}

#[test]
fn train_and_evaluate_refuse_bad_input() {
    let env = Env::new();
    let err = env.fails(2, &["train", "--dataset", "dataset_9"]);
    assert!(err.contains("no artifact matches \"dataset_9\""), "{err}");

    synthetic(&env, "data/synth", 30, 1_700_000_000_000, 1);
    env.ok(&["add", "data/synth", "--kind", "dataset"]);
    for bad in ["0", "1", "1.5", "-0.2", "NaN"] {
        let err = env.fails(
            2,
            &[
                "train",
                "--dataset",
                "dataset_1",
                &format!("--test-fraction={bad}"),
            ],
        );
        assert!(err.contains("--test-fraction"), "{bad}: {err}");
    }
    let err = env.fails(
        2,
        &["train", "--dataset", "dataset_1", "--test-fraction", "x"],
    );
    assert!(err.contains("invalid value 'x'"), "{err}");
    let err = env.fails(2, &["train", "--dataset", "dataset_1", "--algo", "knn"]);
    assert!(err.contains("invalid value 'knn'"), "{err}");
    let err = env.fails(
        2,
        &[
            "train",
            "--dataset",
            "dataset_1",
            "--algo",
            "als",
            "--reg",
            "0",
        ],
    );
    assert!(err.contains("reg"), "{err}");
    assert!(
        !env.path("models/model_v1.bin").exists(),
        "no model on failure"
    );

    env.ok(&["train", "--dataset", "dataset_1", "--algo", "popularity"]);
    let err = env.fails(2, &["train", "--dataset", "model_v1"]);
    assert!(err.contains("model_v1 is a model, not a dataset"), "{err}");
    let err = env.fails(2, &["evaluate", "--model", "dataset_1"]);
    assert!(err.contains("dataset_1 is a dataset, not a model"), "{err}");
    let err = env.fails(2, &["evaluate", "--model", "model_v7"]);
    assert!(err.contains("no artifact matches"), "{err}");
    let err = env.fails(2, &["reproduce", "dataset_1"]);
    assert!(err.contains("not a model"), "{err}");

    // A malformed dataset: the error names the file and line.
    env.write(
        "data/bad/events.csv",
        "time_ms,user,movie,kind,value\n1,1,a+2000,rate,4\n2,1,b+2000,rate,seven\n",
    );
    for f in ["requests.csv", "users.csv", "movies.csv"] {
        let header = match f {
            "requests.csv" => "time_ms,user,status,latency_ms,items",
            "users.csv" => "user,age,gender,occupation",
            _ => "movie,title,year,genres",
        };
        env.write(&format!("data/bad/{f}"), format!("{header}\n"));
    }
    env.write(
        "data/bad/dataset.json",
        r#"{"format":1,"source":{},"counts":{"events":2,"watch":0,"rate":2,"requests":0,"users":0,"movies":0}}"#,
    );
    env.ok(&["add", "data/bad", "--kind", "dataset"]);
    let err = env.fails(2, &["train", "--dataset", "data/bad"]);
    assert!(
        err.contains("data/bad/events.csv:3: bad value \"seven\""),
        "{err}"
    );
    // A dataset directory that is not in the dataset format at all.
    env.write("data/other/notes.txt", "hello");
    env.ok(&["add", "data/other", "--kind", "dataset"]);
    let err = env.fails(2, &["train", "--dataset", "data/other"]);
    assert!(err.contains("not a dataset directory"), "{err}");
    // An added (not trained) model cannot be reproduced.
    env.write("models/hand.bin", "not a model");
    env.ok(&["add", "models/hand.bin", "--kind", "model"]);
    let err = env.fails(2, &["reproduce", "models/hand.bin"]);
    assert!(err.contains("not made by `recsys train`"), "{err}");
    let err = env.fails(
        2,
        &[
            "evaluate",
            "--model",
            "models/hand.bin",
            "--dataset",
            "dataset_1",
        ],
    );
    assert!(err.contains("not a recsys model file"), "{err}");
}

#[test]
fn pipeline_commands_have_help_with_an_example() {
    for cmd in [
        &["import"][..],
        &["import", "movielens"][..],
        &["train"][..],
        &["evaluate"][..],
        &["reproduce"][..],
    ] {
        let o = std::process::Command::new(bin())
            .args(cmd)
            .arg("--help")
            .output()
            .expect("spawn");
        assert!(o.status.success(), "{cmd:?}");
        let h = String::from_utf8_lossy(&o.stdout);
        assert!(
            h.contains("Example"),
            "`recsys {cmd:?} --help` has no example:\n{h}"
        );
    }
}

/// The quality targets of issue 3 on the real MovieLens 100K (RecBole
/// layout from the recbole==1.2.1 wheel).
#[test]
fn real_movielens_100k_meets_the_quality_targets() {
    let dir = crate::common::ml100k();
    let env = Env::new();
    let i = env.json(&["import", "movielens", &dir, "--json"]);
    assert_eq!(i["layout"], "recbole");
    assert_eq!(i["counts"]["rate"], 100_000);
    assert_eq!(i["counts"]["users"], 943);
    assert_eq!(i["counts"]["movies"], 1682);

    env.ok(&[
        "train",
        "--dataset",
        "dataset_1",
        "--algo",
        "svd",
        "--split",
        "random",
    ]);
    let svd = env.json(&["evaluate", "--model", "model_v1", "--json"]);
    let rmse = num(&svd, "rmse");
    assert!(rmse <= 0.925, "svd RMSE {rmse} > 0.925");

    env.ok(&[
        "train",
        "--dataset",
        "dataset_1",
        "--algo",
        "als",
        "--split",
        "random",
    ]);
    let als = env.json(&["evaluate", "--model", "model_v2", "--json"]);
    let (p, base) = (
        num(&als, "precision_at_10"),
        num(&als["baseline"], "precision_at_10"),
    );
    assert!(
        p >= 1.2 * base,
        "als precision@10 {p} < 1.2 x popularity's {base}"
    );
    let r = env.json(&["reproduce", "model_v2", "--json"]);
    assert_eq!(r["match"], true);
}

/// The user ids a model file knows.
fn model_users(env: &Env, rel: &str) -> Vec<u32> {
    let bytes = env.read(rel);
    let (_, m) = recsys::model::load(&bytes[..]).expect("load model");
    m.user_ids().to_vec()
}

#[test]
fn train_users_where_trains_on_one_group_and_reproduces_it() {
    let env = Env::new();
    // Users: even ids F, odd M; age 18 + id % 40; all students.
    synthetic(&env, "data/synth", 60, 1_700_000_000_000, 3);
    env.ok(&["add", "data/synth", "--kind", "dataset"]);
    env.commit("dataset");

    let t = env.json(&[
        "train",
        "--dataset",
        "dataset_1",
        "--users-where",
        "gender=f",
        "--json",
    ]);
    assert_eq!(t["group_users"], 30);
    assert_eq!(
        t["settings"]["users_where"],
        serde_json::json!({"gender": ["f"]})
    );
    let users = model_users(&env, "models/model_v1.bin");
    assert!(!users.is_empty());
    assert!(
        users.iter().all(|u| u % 2 == 0),
        "only women's events were trained on: {users:?}"
    );
    // Combined conditions, two flags and a comma: ages 20-29 among women.
    let t = env.json(&[
        "train",
        "--dataset",
        "dataset_1",
        "--users-where",
        "gender=F,age=20-29",
        "--users-where",
        "occupation=Student",
        "--json",
    ]);
    let group: Vec<u64> = (1..=60u64)
        .filter(|id| id % 2 == 0 && (20..=29).contains(&(18 + id % 40)))
        .collect();
    assert_eq!(t["group_users"], group.len());
    let users = model_users(&env, "models/model_v2.bin");
    assert!(
        users.iter().all(|u| group.contains(&u64::from(*u))),
        "{users:?} not within {group:?}"
    );
    let text = env.ok(&[
        "train",
        "--dataset",
        "dataset_1",
        "--algo",
        "popularity",
        "--users-where",
        "age=50+",
    ]);
    assert!(
        text.contains("users where age=50+: 8 users in the group"),
        "{text}"
    );

    // The filter is in the run record: reproduce repeats it bit for bit,
    // and evaluate scores the group's own held-out part.
    let run = env.json(&["lineage", "model_v2", "--json"]);
    assert_eq!(
        run["run"]["params"]["users_where"],
        serde_json::json!({"gender": ["F"], "age": [{"min": 20, "max": 29}], "occupation": ["Student"]})
    );
    assert_eq!(run["run"]["metrics"]["group_users"], group.len());
    for m in ["model_v1", "model_v2", "model_v3"] {
        let r = env.json(&["reproduce", m, "--json"]);
        assert_eq!(r["match"], true, "{m}: {r}");
        assert!(r["settings"]["users_where"].is_object(), "{r}");
    }
    let e = env.json(&["evaluate", "--model", "model_v1", "--json"]);
    assert_eq!(e["mode"], "holdout");
    let all = env.json(&["train", "--dataset", "dataset_1", "--json"]);
    assert!(all["settings"].get("users_where").is_none(), "{all}");
    assert!(all["group_users"].is_null());
    let e_all = env.json(&["evaluate", "--model", "model_v4", "--json"]);
    assert!(
        e["test_interactions"].as_u64() < e_all["test_interactions"].as_u64(),
        "the group's test part is smaller: {} vs {}",
        e["test_interactions"],
        e_all["test_interactions"]
    );
    let users = model_users(&env, "models/model_v4.bin");
    assert!(users.iter().any(|u| u % 2 == 1));
}

#[test]
fn train_users_where_refuses_bad_input_and_writes_nothing() {
    let env = Env::new();
    synthetic(&env, "data/synth", 30, 1_700_000_000_000, 1);
    env.ok(&["add", "data/synth", "--kind", "dataset"]);
    let cases: [(&str, &str); 7] = [
        ("zip=01002", "unknown user attribute \"zip\""),
        ("gender", "is not attribute=value"),
        ("gender=F,gender=M", "gender is given twice"),
        ("age=40-20", "bad age \"40-20\""),
        (
            "gender=X",
            "gender \"X\" matches none of dataset_1's users (gender values there: F, M)",
        ),
        (
            "occupation=studnet",
            "occupation \"studnet\" matches none of dataset_1's users",
        ),
        (
            "gender=M,age=90+",
            "--users-where gender=M,age=90+ matches none of dataset_1's 30 users (ages there: 19-48)",
        ),
    ];
    for (arg, want) in cases {
        let err = env.fails(
            2,
            &["train", "--dataset", "dataset_1", "--users-where", arg],
        );
        assert!(err.contains(want), "{arg}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    assert!(!env.path("models").join("model_v1.bin").exists());
    assert!(
        env.json(&["ls", "--kind", "model", "--json"])
            .as_array()
            .is_some_and(|a| a.is_empty())
    );
}
