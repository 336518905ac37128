//! Train/test splits and offline evaluation.
//!
//! Ranking metrics are computed per user on the top-20 list with the user's
//! training items excluded, and averaged over the evaluated users. A test
//! interaction of any kind (watch or rating, whatever its value) makes the
//! item relevant: the served list predicts what a user will watch next, and
//! in the production stream most signal is watching, not rating. Items the
//! user already had in training are not relevant (they can never be shown).
//! A user is evaluated when at least one relevant item remains; cold-start
//! users (absent from training) are included and get the popularity list,
//! as they would when served. [`evaluate_segments`] also reports the warm
//! users (with training events) and the cold ones (without) apart.

use std::collections::{BTreeMap, HashMap};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::train::Rng;
use super::{Algo, Interaction, Model, ModelError, Params, train};

/// How to choose the test part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SplitKind {
    /// A seeded shuffle of the interactions.
    Random,
    /// The latest `test_fraction` of events by timestamp (a global cutoff;
    /// events with equal time keep input order).
    Time,
}

/// Splits `data` into (train, test) with `round(test_fraction · len)` test
/// events. Both parts keep the input order. Deterministic for a given seed
/// (the seed is unused by `Time`).
pub fn split(
    data: &[Interaction],
    kind: SplitKind,
    test_fraction: f64,
    seed: u64,
) -> Result<(Vec<Interaction>, Vec<Interaction>), ModelError> {
    if !(0.0..=1.0).contains(&test_fraction) {
        return Err(ModelError::InvalidParam {
            name: "test_fraction",
            reason: format!("{test_fraction} is not within [0, 1]"),
        });
    }
    let n_test = ((data.len() as f64) * test_fraction).round() as usize;
    let n_test = n_test.min(data.len());
    let mut order: Vec<usize> = (0..data.len()).collect();
    match kind {
        SplitKind::Random => Rng::new(seed).shuffle(&mut order),
        // Stable: ties stay in input order, so the latest-by-time are last.
        SplitKind::Time => order.sort_by_key(|&e| data[e].time),
    }
    let mut is_test = vec![false; data.len()];
    let test_positions = match kind {
        SplitKind::Random => &order[..n_test],
        SplitKind::Time => &order[data.len() - n_test..],
    };
    for &e in test_positions {
        is_test[e] = true;
    }
    let (test, train): (Vec<_>, Vec<_>) = data.iter().zip(&is_test).partition(|(_, t)| **t);
    Ok((
        train.into_iter().map(|(e, _)| *e).collect(),
        test.into_iter().map(|(e, _)| *e).collect(),
    ))
}

/// Offline metrics of one model on one split.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Root mean squared error of `predict` over the test ratings (svd only).
    pub rmse: Option<f64>,
    pub precision_at_10: f64,
    pub recall_at_20: f64,
    /// Binary-relevance NDCG over the top 20.
    pub ndcg_at_20: f64,
    /// Fraction of evaluated users with at least one relevant item in the top 20.
    pub hit_rate_at_20: f64,
    pub users_evaluated: usize,
}

/// The figures of the two user segments; their `users_evaluated` add up to
/// the overall count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Segments {
    /// Evaluated users with at least one training event.
    pub warm: Metrics,
    /// Evaluated users without training events (the model's cold-user list).
    pub cold: Metrics,
}

/// Metrics over all evaluated users and by segment.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SegmentedMetrics {
    pub overall: Metrics,
    pub by_segment: Segments,
}

/// Evaluates `model` (trained on `train`) against `test`. See the module
/// documentation for what counts as relevant.
pub fn evaluate(
    model: &Model,
    train: &[Interaction],
    test: &[Interaction],
) -> Result<Metrics, ModelError> {
    Ok(evaluate_segments(model, train, test)?.overall)
}

/// [`evaluate`], overall and for warm and cold users apart.
pub fn evaluate_segments(
    model: &Model,
    train: &[Interaction],
    test: &[Interaction],
) -> Result<SegmentedMetrics, ModelError> {
    evaluate_segments_in(model, train, test, &HashMap::new())
}

/// [`evaluate_segments`], cold users answered as serving answers them:
/// from their cohort's list when `cohorts` knows their cohort (keys as
/// [`super::cohort_key`] makes them for the model's attributes).
pub fn evaluate_segments_in(
    model: &Model,
    train: &[Interaction],
    test: &[Interaction],
    cohorts: &HashMap<u32, String>,
) -> Result<SegmentedMetrics, ModelError> {
    for (index, ev) in test.iter().enumerate() {
        if ev.item as usize >= model.n_items() {
            return Err(ModelError::ItemOutOfRange {
                index,
                item: ev.item,
                n_items: model.n_items(),
            });
        }
    }
    let train_items = items_by_user(train);
    let is_warm = |user: &u32| train_items.contains_key(user);
    // Squared errors (svd): [all, warm, cold] as (sum, count).
    let mut sq = [(0.0f64, 0usize); 3];
    if model.algo() == Algo::Svd {
        for e in test {
            if let Some(r) = e.rating {
                let d = f64::from(model.predict(e.user, e.item)) - f64::from(r);
                let seg = if is_warm(&e.user) { 1 } else { 2 };
                for k in [0, seg] {
                    sq[k].0 += d * d;
                    sq[k].1 += 1;
                }
            }
        }
    }
    let rmse = |k: usize| {
        (model.algo() == Algo::Svd && sq[k].1 > 0).then(|| (sq[k].0 / sq[k].1 as f64).sqrt())
    };

    let relevant: Vec<(u32, Vec<u32>)> = items_by_user(test)
        .into_iter()
        .filter_map(|(user, items)| {
            let seen = train_items.get(&user).map_or(&[][..], Vec::as_slice);
            let rel: Vec<u32> = items
                .into_iter()
                .filter(|i| seen.binary_search(i).is_err())
                .collect();
            (!rel.is_empty()).then_some((user, rel))
        })
        .collect();

    // Per-user figures in parallel; summed serially in user order.
    let per_user: Vec<[f64; 4]> = relevant
        .par_iter()
        .map(|(user, rel)| {
            let recs = model.recommend_in(*user, cohorts.get(user).map(String::as_str), 20, true);
            let is_rel = |i: &u32| rel.binary_search(i).is_ok();
            let hits10 = recs.iter().take(10).filter(|i| is_rel(i)).count();
            let hits20 = recs.iter().filter(|i| is_rel(i)).count();
            let dcg: f64 = recs
                .iter()
                .enumerate()
                .filter(|(_, i)| is_rel(i))
                .map(|(rank, _)| discount(rank))
                .sum();
            let idcg: f64 = (0..rel.len().min(20)).map(discount).sum();
            [
                hits10 as f64 / 10.0,
                hits20 as f64 / rel.len() as f64,
                dcg / idcg,
                if hits20 > 0 { 1.0 } else { 0.0 },
            ]
        })
        .collect();
    let mean_of = |keep: &dyn Fn(&u32) -> bool, rmse: Option<f64>| {
        let mut sums = [0.0f64; 4];
        let mut n = 0usize;
        for ((user, _), row) in relevant.iter().zip(&per_user) {
            if keep(user) {
                n += 1;
                for (s, v) in sums.iter_mut().zip(row) {
                    *s += v;
                }
            }
        }
        let mean = |s: f64| if n == 0 { 0.0 } else { s / n as f64 };
        Metrics {
            rmse,
            precision_at_10: mean(sums[0]),
            recall_at_20: mean(sums[1]),
            ndcg_at_20: mean(sums[2]),
            hit_rate_at_20: mean(sums[3]),
            users_evaluated: n,
        }
    };
    Ok(SegmentedMetrics {
        overall: mean_of(&|_| true, rmse(0)),
        by_segment: Segments {
            warm: mean_of(&|u| is_warm(u), rmse(1)),
            cold: mean_of(&|u| !is_warm(u), rmse(2)),
        },
    })
}

/// Trains the popularity baseline on `train` and evaluates it on `test`, so
/// callers can report it next to any model on the same split.
pub fn evaluate_baseline(
    train_part: &[Interaction],
    test: &[Interaction],
    n_items: usize,
) -> Result<Metrics, ModelError> {
    let model = train(
        train_part,
        n_items,
        Algo::Popularity,
        &Params::default_for(Algo::Popularity),
    )?;
    evaluate(&model, train_part, test)
}

/// 1 / log2(rank + 2) for a 0-based rank.
fn discount(rank: usize) -> f64 {
    1.0 / ((rank + 2) as f64).log2()
}

fn items_by_user(data: &[Interaction]) -> BTreeMap<u32, Vec<u32>> {
    let mut map: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for e in data {
        map.entry(e.user).or_default().push(e.item);
    }
    for items in map.values_mut() {
        items.sort_unstable();
        items.dedup();
    }
    map
}

#[cfg(test)]
mod tests {
    use super::super::tests::planted;
    use super::*;

    fn key(e: &Interaction) -> (u32, u32, i64) {
        (e.user, e.item, e.time)
    }

    #[test]
    fn random_split_is_a_partition_of_the_right_size() {
        let data = planted(50, 40, 2);
        let (tr, te) = split(&data, SplitKind::Random, 0.2, 1).expect("split");
        assert_eq!(tr.len() + te.len(), data.len());
        assert_eq!(te.len(), (data.len() as f64 * 0.2).round() as usize);
        // planted() has unique (user, item, time): test never in train.
        let train_keys: std::collections::HashSet<_> = tr.iter().map(key).collect();
        assert!(te.iter().all(|e| !train_keys.contains(&key(e))));
        assert_eq!(
            split(&data, SplitKind::Random, 0.2, 1).expect("again").1,
            te
        );
        assert_ne!(
            split(&data, SplitKind::Random, 0.2, 2).expect("seed 2").1,
            te
        );
        let (all, none) = split(&data, SplitKind::Random, 0.0, 1).expect("0");
        assert_eq!((all.len(), none.len()), (data.len(), 0));
        let (none, all) = split(&data, SplitKind::Random, 1.0, 1).expect("1");
        assert_eq!((all.len(), none.len()), (data.len(), 0));
        for bad in [-0.1, 1.5, f64::NAN] {
            assert!(split(&data, SplitKind::Random, bad, 1).is_err());
        }
    }

    #[test]
    fn time_split_takes_the_latest_events() {
        let mut data = planted(30, 20, 2);
        data.reverse(); // input order must not matter
        let (tr, te) = split(&data, SplitKind::Time, 0.25, 0).expect("split");
        assert_eq!(te.len(), (data.len() as f64 * 0.25).round() as usize);
        assert_eq!(tr.len() + te.len(), data.len());
        let max_train = tr.iter().map(|e| e.time).max().expect("non-empty");
        let min_test = te.iter().map(|e| e.time).min().expect("non-empty");
        assert!(max_train <= min_test);
        let ties = vec![
            Interaction {
                user: 1,
                item: 0,
                rating: None,
                time: 5,
            };
            4
        ];
        let (tr, te) = split(&ties, SplitKind::Time, 0.5, 0).expect("ties");
        assert_eq!((tr.len(), te.len()), (2, 2));
    }

    #[test]
    fn metrics_on_a_hand_computed_case() {
        let ev = |user, item| Interaction {
            user,
            item,
            rating: None,
            time: 0,
        };
        // Popularity: item 0 (3 users) > 1 (2) > 2 (1) > 3.. (0).
        let train_part = vec![ev(1, 0), ev(2, 0), ev(3, 0), ev(2, 1), ev(3, 1), ev(3, 2)];
        // User 1 relevant {1, 5}: recs [1, 2, 3, ...] -> hit at rank 0 and rank 4.
        // User 3 relevant {2 (seen, dropped)} -> not evaluated.
        let test = vec![ev(1, 1), ev(1, 5), ev(3, 2)];
        let m = evaluate_baseline(&train_part, &test, 30).expect("eval");
        assert_eq!(m.users_evaluated, 1);
        assert!((m.precision_at_10 - 0.2).abs() < 1e-12);
        assert!((m.recall_at_20 - 1.0).abs() < 1e-12);
        assert!((m.hit_rate_at_20 - 1.0).abs() < 1e-12);
        let dcg = 1.0 + 1.0 / 6f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2();
        assert!((m.ndcg_at_20 - dcg / idcg).abs() < 1e-12);
        assert_eq!(m.rmse, None);
    }

    #[test]
    fn evaluate_rejects_unknown_items() {
        let data = planted(10, 10, 2);
        let model = train(
            &data,
            10,
            Algo::Popularity,
            &Params::default_for(Algo::Popularity),
        )
        .expect("train");
        let bad = [Interaction {
            user: 1,
            item: 10,
            rating: None,
            time: 0,
        }];
        assert!(matches!(
            evaluate(&model, &data, &bad),
            Err(ModelError::ItemOutOfRange { .. })
        ));
    }
}
