//! The recency-aware algorithms (recent, ease) through the binary: training,
//! the warm/cold segments and the baselines of `evaluate --json`, bit-for-bit
//! reproduction, and refusals of bad input.

use serde_json::Value;

use crate::common::Env;
use crate::pipeline::synthetic;

const KEYS: [&str; 5] = [
    "precision_at_10",
    "recall_at_20",
    "ndcg_at_20",
    "hit_rate_at_20",
    "users_evaluated",
];

fn users(v: &Value) -> u64 {
    v["users_evaluated"]
        .as_u64()
        .unwrap_or_else(|| panic!("no users_evaluated in {v}"))
}

/// Segments add up, every baseline is scored on the same users, and
/// `baseline` is `baselines.popularity` without its segments.
fn check_segments(e: &Value) {
    let total = users(e);
    assert!(total > 0, "{e}");
    let seg = &e["by_segment"];
    assert_eq!(users(&seg["warm"]) + users(&seg["cold"]), total, "{e}");
    for name in ["popularity", "recent_popularity"] {
        let b = &e["baselines"][name];
        assert_eq!(users(b), total, "{name}: {e}");
        for s in ["warm", "cold"] {
            assert_eq!(users(&b["by_segment"][s]), users(&seg[s]), "{name} {s}");
            for k in KEYS {
                assert!(b["by_segment"][s][k].is_number(), "{name} {s} {k}");
                assert!(seg[s][k].is_number(), "{s} {k}");
            }
        }
    }
    for k in KEYS {
        assert_eq!(e["baseline"][k], e["baselines"]["popularity"][k], "{k}");
    }
    assert_eq!(e["baselines"]["popularity"]["half_life_ms"], Value::Null);
    assert_eq!(
        e["baselines"]["recent_popularity"]["half_life_ms"],
        14 * 24 * 3600 * 1000
    );
}

#[test]
fn recent_and_ease_train_evaluate_and_reproduce_bit_for_bit() {
    let env = Env::new();
    // Events 1 s apart, user after user: the time split's test part is the
    // last users (cold) plus the tail of one user who also trained (warm).
    synthetic(&env, "data/synth", 90, 1_700_000_000_000, 3);
    env.ok(&["add", "data/synth", "--kind", "dataset"]);
    env.commit("dataset");

    let runs: [(&str, &[&str]); 4] = [
        ("recent", &["--half-life", "10m"]),
        ("ease", &["--lambda", "5"]),
        ("popularity", &[]),
        ("hybrid", &["--lambda", "5", "--blend", "0.25"]),
    ];
    let mut evals = Vec::new();
    for (n, (algo, extra)) in runs.iter().enumerate() {
        let name = format!("model_v{}", n + 1);
        let mut args = vec!["train", "--dataset", "dataset_1", "--algo", algo, "--json"];
        args.extend(extra.iter());
        let t = env.json(&args);
        assert_eq!(t["model"], name.as_str());
        let params = &t["settings"]["params"];
        let head = env.read(&format!("models/{name}.bin"));
        match *algo {
            "recent" => {
                assert_eq!(params["half_life_ms"], 600_000);
                assert!(head.starts_with(b"RECSYS-MODEL 2 "));
            }
            "hybrid" => {
                assert_eq!(params["blend"], 0.25);
                assert!(head.starts_with(b"RECSYS-MODEL 2 "));
            }
            "ease" => {
                assert_eq!(params["reg"], 5.0);
                assert_eq!(params["half_life_ms"], 14 * 24 * 3600 * 1000);
                assert!(head.starts_with(b"RECSYS-MODEL 2 "));
            }
            _ => {
                // Older algorithms keep format 1 and their parameter set.
                assert!(params.get("half_life_ms").is_none(), "{params}");
                assert!(head.starts_with(b"RECSYS-MODEL 1 "));
            }
        }
        let run = env.json(&["lineage", &name, "--json"]);
        assert_eq!(run["run"]["params"]["params"], *params);

        let e = env.json(&["evaluate", "--model", &name, "--json"]);
        check_segments(&e);
        assert!(users(&e["by_segment"]["cold"]) > 0, "{e}");

        let r = env.json(&["reproduce", &name, "--json"]);
        assert_eq!(r["match"], true, "{algo}: {r}");
        assert_eq!(r["recorded"], r["retrained"]);
        evals.push(e);
    }
    // ease answers cold users with recent popularity (default half-life):
    // exactly the recent baseline there; popularity is its own baseline.
    let (ease, pop, hybrid) = (&evals[1], &evals[2], &evals[3]);
    for e in [ease, hybrid] {
        assert_eq!(
            e["by_segment"]["cold"],
            e["baselines"]["recent_popularity"]["by_segment"]["cold"]
        );
    }
    for k in KEYS {
        assert_eq!(pop[k], pop["baselines"]["popularity"][k], "{k}");
    }
    // The human table names both segments.
    let out = env.ok(&["evaluate", "--model", "model_v2"]);
    assert!(out.contains("warm") && out.contains("cold"), "{out}");
    assert!(out.contains("recent pop."), "{out}");
}

#[test]
fn bad_model_flags_are_refused_clearly() {
    let env = Env::new();
    synthetic(&env, "data/synth", 30, 1_700_000_000_000, 1);
    env.ok(&["add", "data/synth", "--kind", "dataset"]);
    let train = |extra: &[&str]| {
        let mut args = vec!["train", "--dataset", "dataset_1"];
        args.extend(extra);
        env.fails(2, &args)
    };
    for bad in ["0", "0d", "-3d", "14", "14x", "d"] {
        let err = train(&["--algo", "recent", "--half-life", bad]);
        assert!(err.contains("half-life"), "{bad}: {err}");
        assert!(err.contains("14d"), "{bad}: {err}");
    }
    let err = train(&["--algo", "recent", "--half-life", "0"]);
    assert!(err.contains("greater than zero"), "{err}");
    let err = train(&["--algo", "als", "--half-life", "7d"]);
    assert!(err.contains("applies to recent, ease and hybrid"), "{err}");
    let err = train(&["--algo", "ease", "--blend", "0.5"]);
    assert!(err.contains("--blend applies to hybrid"), "{err}");
    for bad in ["1.5", "-0.1", "NaN"] {
        let err = train(&["--algo", "hybrid", &format!("--blend={bad}")]);
        assert!(err.contains("--blend"), "{bad}: {err}");
    }
    let err = train(&["--algo", "ease", "--lambda", "0"]);
    assert!(err.contains("reg") && err.contains("ease"), "{err}");
    let err = train(&["--algo", "itemknn"]);
    assert!(err.contains("invalid value 'itemknn'"), "{err}");
    assert!(err.contains("recent") && err.contains("ease"), "{err}");
    assert!(
        !env.path("models").exists()
            || std::fs::read_dir(env.path("models")).is_ok_and(|d| {
                d.filter_map(Result::ok)
                    .all(|e| !e.file_name().to_string_lossy().ends_with(".bin"))
            }),
        "a refused train left a model behind"
    );
}

#[test]
fn ease_refuses_a_catalogue_over_its_limit_and_says_why() {
    let env = Env::new();
    synthetic(&env, "data/big", 10, 1_700_000_000_000, 1);
    // 20,001 movies in the catalogue (only 45 watched): the dense item-item
    // matrix would be 20,001², so ease refuses before any work.
    let mut movies = String::from_utf8(env.read("data/big/movies.csv")).expect("utf8");
    let extra = 20_001 - 45;
    for i in 0..extra {
        movies.push_str(&format!("zz+{i:05}+2001,\"Z {i}\",2001,Drama\n"));
    }
    env.write("data/big/movies.csv", movies);
    let mut meta: Value = serde_json::from_slice(&env.read("data/big/dataset.json")).expect("json");
    meta["counts"]["movies"] = (45 + extra).into();
    env.write("data/big/dataset.json", meta.to_string());
    env.ok(&["add", "data/big", "--kind", "dataset"]);
    let err = env.fails(2, &["train", "--dataset", "dataset_1", "--algo", "ease"]);
    assert!(err.contains("20001 items (limit 20000)"), "{err}");
    assert!(err.contains("items^3"), "{err}");
    // The same catalogue trains with recent.
    env.ok(&["train", "--dataset", "dataset_1", "--algo", "recent"]);
}
