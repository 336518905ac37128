//! Training benchmark on MovieLens 100K: fit time and quality of svd and als
//! against the popularity baseline on a seeded random 80/20 split.
//!
//! `RECSYS_ML100K` (required) names the directory holding `ml-100k.inter`
//! (RecBole's layout, from the `recbole==1.2.1` wheel); optional
//! `RECSYS_SPLIT_SEED`.
//! Run: `export RECSYS_ML100K="$(scripts/fetch-movielens.sh)"; cargo bench --bench train`.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use recsys::model::{
    Algo, Header, Interaction, Metrics, Params, SplitKind, content_digest, evaluate,
    evaluate_baseline, load, save, split, train,
};

const SVD_RMSE_TARGET: f64 = 0.925;
const ALS_P10_RATIO_TARGET: f64 = 1.2;
const FIT_SECONDS_TARGET: f64 = 2.0;

/// Reads `ml-100k.inter`: user id, item token, rating, timestamp; items are
/// numbered in order of first appearance.
fn read_inter(path: &Path) -> Result<(Vec<Interaction>, Vec<String>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut items: HashMap<String, u32> = HashMap::new();
    let mut names = Vec::new();
    let mut data = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let bad = || format!("{}:{}: bad line {line:?}", path.display(), n + 1);
        let f: Vec<&str> = line.split('\t').collect();
        let [user, item, rating, time] = f[..] else {
            return Err(bad());
        };
        let next = names.len() as u32;
        let item = *items.entry(item.to_owned()).or_insert_with(|| {
            names.push(item.to_owned());
            next
        });
        data.push(Interaction {
            user: user.parse().map_err(|_| bad())?,
            item,
            rating: Some(rating.parse().map_err(|_| bad())?),
            time: time.parse::<f64>().map_err(|_| bad())? as i64,
        });
    }
    Ok((data, names))
}

fn row(name: &str, m: &Metrics) {
    let rmse = m.rmse.map_or("-".to_owned(), |r| format!("{r:.4}"));
    println!(
        "  {name:<11} rmse {rmse:>6}  p@10 {:.4}  recall@20 {:.4}  ndcg@20 {:.4}  hit@20 {:.4}  users {}",
        m.precision_at_10, m.recall_at_20, m.ndcg_at_20, m.hit_rate_at_20, m.users_evaluated
    );
}

fn main() -> ExitCode {
    let Some(dir) = std::env::var_os("RECSYS_ML100K").map(PathBuf::from) else {
        eprintln!(
            "error: RECSYS_ML100K is not set: run `scripts/fetch-movielens.sh` and \
             export RECSYS_ML100K=<the directory it prints>"
        );
        return ExitCode::FAILURE;
    };
    let seed: u64 = std::env::var("RECSYS_SPLIT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(42);
    let (data, names) = match read_inter(&dir.join("ml-100k.inter")) {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "error: {e}\nset RECSYS_ML100K to the ml-100k directory of the recbole==1.2.1 wheel"
            );
            return ExitCode::FAILURE;
        }
    };
    let n_items = names.len();
    let Ok((tr, te)) = split(&data, SplitKind::Random, 0.2, seed) else {
        return ExitCode::FAILURE;
    };
    println!(
        "ml-100k: {} interactions, {n_items} items; random split seed {seed}: train {}, test {}; rayon threads {}",
        data.len(),
        tr.len(),
        te.len(),
        rayon::current_num_threads()
    );
    let baseline = match evaluate_baseline(&tr, &te, n_items) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: baseline: {e}");
            return ExitCode::FAILURE;
        }
    };
    let header = Header {
        dataset_digest: "bench".to_owned(),
        code_commit: "bench".to_owned(),
        created: "bench".to_owned(),
        item_names: names,
    };
    let mut ok = true;
    for algo in [Algo::Svd, Algo::Als] {
        let params = Params::default_for(algo);
        let start = Instant::now();
        let model = match train(&tr, n_items, algo, &params) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("error: {algo}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let fit = start.elapsed().as_secs_f64();
        let Ok(m) = evaluate(&model, &tr, &te) else {
            return ExitCode::FAILURE;
        };

        // Serving cost: recommend 20 for every known user, repeatedly.
        let users = model.user_ids().to_vec();
        let rounds = 20;
        let start = Instant::now();
        for _ in 0..rounds {
            for &u in &users {
                black_box(model.recommend(black_box(u), 20, true));
            }
        }
        let per_call_us = start.elapsed().as_secs_f64() * 1e6 / (rounds * users.len()) as f64;

        let mut file = Vec::new();
        let start = Instant::now();
        let saved = save(&model, &header, &mut file).is_ok();
        let reloaded = saved && load(&file[..]).is_ok_and(|(h, m2)| m2 == model && h == header);
        let io_ms = start.elapsed().as_secs_f64() * 1e3;

        println!(
            "\n{algo}: factors {} epochs {} lr {} reg {} reg_bias {} alpha {} seed {}",
            params.factors,
            params.epochs,
            params.lr,
            params.reg,
            params.reg_bias,
            params.alpha,
            params.seed
        );
        println!(
            "  fit {fit:.3} s (target < {FIT_SECONDS_TARGET} s)   recommend(20) {per_call_us:.1} us/call   file {} KiB, save+load {io_ms:.1} ms, round trip {}",
            file.len() / 1024,
            if reloaded { "ok" } else { "FAILED" }
        );
        println!("  content digest {}", content_digest(&model, &header));
        row(algo.name(), &m);
        row("popularity", &baseline);
        ok &= fit < FIT_SECONDS_TARGET && reloaded;
        match algo {
            Algo::Svd => {
                let rmse = m.rmse.unwrap_or(f64::INFINITY);
                println!(
                    "  rmse / target = {:.4} (target rmse <= {SVD_RMSE_TARGET}; Surprise SVD 0.934)",
                    rmse / SVD_RMSE_TARGET
                );
                ok &= rmse <= SVD_RMSE_TARGET;
            }
            _ => {
                let ratio = m.precision_at_10 / baseline.precision_at_10;
                println!("  p@10 als / popularity = {ratio:.3} (target >= {ALS_P10_RATIO_TARGET})");
                ok &= ratio >= ALS_P10_RATIO_TARGET;
            }
        }
    }
    println!("\ntargets {}", if ok { "met" } else { "NOT met" });
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
