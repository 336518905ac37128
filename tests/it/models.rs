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
                // The users table has ages: cold users get age-band lists,
                // which format 3 stores.
                assert_eq!(params["cohorts"], "age");
                assert_eq!(params["cohort_prior"], 3.0);
                assert!(head.starts_with(b"RECSYS-MODEL 3 "));
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
    assert_eq!(
        ease["by_segment"]["cold"],
        ease["baselines"]["recent_popularity"]["by_segment"]["cold"]
    );
    // hybrid answers them from their age band's list: not the baseline's.
    assert_eq!(
        hybrid["by_segment"]["cold"]["users_evaluated"],
        hybrid["baselines"]["recent_popularity"]["by_segment"]["cold"]["users_evaluated"]
    );
    assert_ne!(
        hybrid["by_segment"]["cold"]["ndcg_at_20"],
        hybrid["baselines"]["recent_popularity"]["by_segment"]["cold"]["ndcg_at_20"]
    );
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

/// `GET /recommend/<user>`'s body.
fn answer(port: u16, user: u32) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        s,
        "GET /recommend/{user} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("answer");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

/// Hybrid's cold users on MovieLens 100K's time split: answered from their
/// age band's recent favourites, offline (above recent popularity on cold
/// users) and by the server (the same list for the same band, another for
/// another band), so what `evaluate` measures is what users get.
#[test]
fn hybrid_answers_cold_users_by_age_band_offline_and_when_served() {
    let env = Env::new();
    env.ok(&["import", "movielens", &crate::common::ml100k()]);
    let t = env.json(&[
        "train",
        "--dataset",
        "dataset_1",
        "--algo",
        "hybrid",
        "--json",
    ]);
    let model = t["model"].as_str().expect("model").to_string();
    let e = env.json(&["evaluate", "--model", &model, "--json"]);
    check_segments(&e);
    let cold = e["by_segment"]["cold"]["ndcg_at_20"]
        .as_f64()
        .expect("cold");
    let recent = e["baselines"]["recent_popularity"]["by_segment"]["cold"]["ndcg_at_20"]
        .as_f64()
        .expect("recent cold");
    assert!(
        cold > recent,
        "cold users: hybrid {cold} <= recent popularity {recent}"
    );
    // Without cohorts, cold users get the recent list: the baseline exactly.
    let t2 = env.json(&[
        "train",
        "--dataset",
        "dataset_1",
        "--algo",
        "hybrid",
        "--cohorts",
        "none",
        "--json",
    ]);
    let plain = t2["model"].as_str().expect("model").to_string();
    let e2 = env.json(&["evaluate", "--model", &plain, "--json"]);
    assert_eq!(
        e2["by_segment"]["cold"]["ndcg_at_20"].as_f64(),
        Some(recent)
    );

    // Served. Cold users are those with no event in the training part:
    // every rating after the 80 % time quantile.
    let inter = std::fs::read_to_string(format!("{}/ml-100k.inter", crate::common::ml100k()))
        .expect("ratings");
    let mut first: std::collections::HashMap<u32, i64> = Default::default();
    let mut times = Vec::new();
    for l in inter.lines().skip(1) {
        let f: Vec<&str> = l.split('\t').collect();
        let (u, t): (u32, i64) = (f[0].parse().expect("user"), f[3].parse().expect("time"));
        times.push(t);
        let e = first.entry(u).or_insert(t);
        *e = (*e).min(t);
    }
    times.sort_unstable();
    let cutoff = times[times.len() * 8 / 10];
    let users = String::from_utf8(env.read("data/dataset_1/users.csv")).expect("utf8");
    let band = |age: u32| match age {
        0..=17 => 0,
        18..=24 => 1,
        25..=34 => 2,
        35..=44 => 3,
        45..=49 => 4,
        50..=55 => 5,
        _ => 6,
    };
    let cold_users: Vec<(u32, u32)> = users
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split(',');
            Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
        })
        .filter(|(u, _)| first.get(u).is_some_and(|t| *t > cutoff))
        .collect();
    assert!(cold_users.len() > 100, "{} cold users", cold_users.len());
    env.write("config.json", format!(r#"{{"default": "{model}"}}"#));
    let srv = crate::common::serve(&env);
    let global = answer(srv.port, 4_000_000); // no attributes: the global list
    let mut by_band: std::collections::BTreeMap<u32, std::collections::BTreeSet<String>> =
        Default::default();
    for (user, age) in &cold_users {
        by_band
            .entry(band(*age))
            .or_default()
            .insert(answer(srv.port, *user));
    }
    srv.stop();
    for (b, answers) in &by_band {
        assert_eq!(
            answers.len(),
            1,
            "band {b}: cold users answered differently"
        );
    }
    let lists: std::collections::BTreeSet<&String> =
        by_band.values().flat_map(|a| a.iter()).collect();
    assert!(
        lists.len() >= 3,
        "{} distinct lists over {} bands",
        lists.len(),
        by_band.len()
    );
    assert!(
        by_band.values().any(|a| !a.contains(&global)),
        "every band got the global list"
    );
}
