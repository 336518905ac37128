//! Recommendation models: training (biased SVD by SGD, implicit-feedback ALS,
//! popularity, time-decayed popularity, EASE), offline evaluation, and the
//! versioned model file format.
//!
//! This module owns the numeric core only. It never opens paths, reads the
//! environment or prints: callers pass interaction slices, readers/writers and
//! provenance strings (dataset digest, code commit, creation time).
//!
//! Determinism: every algorithm is a pure function of (data order, `n_items`,
//! algorithm, parameters). SVD is single-threaded SGD whose visiting order comes
//! from a seeded xoshiro256** generator; ALS solves each user/item row
//! independently (rayon), so its result is bit-identical for any thread count.
//! EASE's item-item solve computes every matrix entry with one fixed-order
//! dot product, so it too is bit-identical for any thread count; the recency
//! decay uses its own `exp2` (`train::exp2_neg`), not libm's.
//! Floating-point reductions use a fixed association order and no
//! transcendental functions, so results do not depend on libm either.
//!
//! Ids: users are arbitrary `u32` ids; items are dense indices `0..n_items`
//! into the item-name list the caller keeps (and stores in the model file).

mod cohort;
mod ease;
mod eval;
mod format;
mod train;

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub(crate) use cohort::CohortList;
pub use cohort::{CohortAttr, cohort_attrs_text, cohort_key, parse_cohort_attrs};
pub use ease::MAX_EASE_ITEMS;
pub use eval::{
    Metrics, SegmentedMetrics, Segments, SplitKind, evaluate, evaluate_baseline, evaluate_segments,
    evaluate_segments_in, split,
};
pub use format::{FORMAT_VERSION, Header, MAGIC, content_digest, load, save};
pub(crate) use train::Rng;
pub use train::{DEFAULT_HALF_LIFE_MS, train, train_with_cohorts};

/// Cold-user cohorts of the default hybrid: age bands.
pub const DEFAULT_COHORTS: &str = "age";
/// Weight of the global list in a cohort's (see the `cohort` module).
pub const DEFAULT_COHORT_PRIOR: f32 = 3.0;

/// One event: a watch (`rating: None`) or an explicit rating.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interaction {
    pub user: u32,
    /// Dense item index, `< n_items`.
    pub item: u32,
    /// `None` = implicit watch.
    pub rating: Option<f32>,
    /// Seconds (or any monotone unit) since an arbitrary epoch.
    pub time: i64,
}

/// Errors of the model module: training input, evaluation input and the
/// model file format. Loading a file never panics; every defect maps here.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("reading or writing the model file failed")]
    Io(#[from] std::io::Error),
    #[error("not a recsys model file (magic {found:?} instead of {MAGIC:?})")]
    BadMagic { found: String },
    #[error("unsupported model format version {found} (this build reads 1 to {FORMAT_VERSION})")]
    UnsupportedVersion { found: String },
    #[error("model file truncated in the {part}")]
    Truncated { part: &'static str },
    #[error("model file has bytes after the end of the body")]
    TrailingBytes,
    #[error("invalid model file header: {reason}")]
    InvalidHeader { reason: String },
    #[error("model body checksum mismatch: header says {expected}, body hashes to {found}")]
    ChecksumMismatch { expected: String, found: String },
    #[error("model dimension mismatch in {what}: expected {expected}, found {found}")]
    DimsMismatch {
        what: String,
        expected: u64,
        found: u64,
    },
    #[error("model section {section} holds a non-finite value at index {index}")]
    NonFinite { section: &'static str, index: usize },
    #[error("model section {section} is inconsistent: {reason}")]
    InvalidSection {
        section: &'static str,
        reason: String,
    },
    #[error("interaction {index}: item index {item} is out of range (n_items = {n_items})")]
    ItemOutOfRange {
        index: usize,
        item: u32,
        n_items: usize,
    },
    #[error("interaction {index}: rating {rating} is not finite")]
    NonFiniteRating { index: usize, rating: f32 },
    #[error("invalid parameter {name}: {reason}")]
    InvalidParam { name: &'static str, reason: String },
    #[error("{algo} needs at least one {what} in the training data")]
    EmptyTraining { algo: Algo, what: &'static str },
    #[error("ALS normal equations for {side} row {row} are not positive definite")]
    NotPositiveDefinite { side: &'static str, row: usize },
    #[error(
        "EASE's Gram matrix is not positive definite at item {item} \
         (lambda must be > 0 and finite; numerically it should never happen)"
    )]
    GramNotPositiveDefinite { item: usize },
    #[error(
        "{algo} refuses {n_items} items (limit {limit}): its dense item-item matrix needs \
         {gib:.1} GiB and its solve grows with items^3; use als, recent or popularity"
    )]
    TooManyItems {
        algo: Algo,
        n_items: usize,
        limit: usize,
        gib: f64,
    },
}

/// Training algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algo {
    /// Biased matrix factorisation of explicit ratings, trained by SGD.
    Svd,
    /// Implicit-feedback ALS (Hu, Koren, Volinsky 2008).
    Als,
    /// Items ranked by the number of distinct users who interacted with them.
    Popularity,
    /// Time-decayed popularity: each (user, item) pair counts 2^(-age / half_life),
    /// age measured from the last training event.
    Recent,
    /// EASE (Steck 2019): closed-form item-item regression; cold users get
    /// the time-decayed popularity list.
    Ease,
    /// EASE for warm users blended with the recency prior (each scaled to a
    /// maximum of 1; weight `blend` on the prior); cold users get the
    /// time-decayed popularity list.
    Hybrid,
}

impl Algo {
    pub(crate) const ALL: [Algo; 6] = [
        Algo::Svd,
        Algo::Als,
        Algo::Popularity,
        Algo::Recent,
        Algo::Ease,
        Algo::Hybrid,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algo::Svd => "svd",
            Algo::Als => "als",
            Algo::Popularity => "popularity",
            Algo::Recent => "recent",
            Algo::Ease => "ease",
            Algo::Hybrid => "hybrid",
        }
    }

    /// Whether the model carries a recency prior (`item_scores`) that
    /// orders its cold-user list.
    pub(crate) fn has_recency_prior(self) -> bool {
        matches!(self, Algo::Recent | Algo::Ease | Algo::Hybrid)
    }

    /// Whether the model carries EASE's item-item weights.
    pub(crate) fn has_item_item(self) -> bool {
        matches!(self, Algo::Ease | Algo::Hybrid)
    }
}

impl fmt::Display for Algo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Algo {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algo::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| ModelError::InvalidParam {
                name: "algorithm",
                reason: format!(
                    "unknown algorithm {s:?} \
                     (expected svd, als, popularity, recent, ease or hybrid)"
                ),
            })
    }
}

/// Hyper-parameters. Fields an algorithm does not use are kept as given (they
/// are part of the recorded parameters and the content digest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Latent dimension (svd, als).
    pub factors: u32,
    /// SGD epochs (svd) or ALS sweeps (als).
    pub epochs: u32,
    /// SGD learning rate (svd).
    pub lr: f32,
    /// L2 regularisation of the factors (svd, als). Absolute, not scaled by a
    /// row's activity: for als it must grow with the data's density.
    pub reg: f32,
    /// L2 regularisation of the user/item biases (svd).
    pub reg_bias: f32,
    /// Confidence scale: c = 1 + alpha * r (als).
    pub alpha: f32,
    /// Standard deviation of the (uniform) initial factors.
    pub init_std: f32,
    /// Seed of the initialisation and of the SGD visiting order.
    pub seed: u64,
    /// Half-life of the recency decay, in the unit of [`Interaction::time`]
    /// (milliseconds for datasets) (recent, ease). Absent for the others, so
    /// their recorded parameters and digests are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_life_ms: Option<u64>,
    /// Weight of the recency prior against EASE's scores, in [0, 1]
    /// (hybrid). Absent for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blend: Option<f32>,
    /// The user attributes cold users are grouped by (`age`, `gender`,
    /// `occupation`, comma-separated, canonical order) (recent, ease,
    /// hybrid). Absent: every cold user gets the global list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohorts: Option<String>,
    /// Weight of the global list in each cohort's list (with `cohorts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cohort_prior: Option<f32>,
}

impl Params {
    /// Defaults tuned on MovieLens 100K (random 80/20 split); see `benches/train.rs`.
    pub fn default_for(algo: Algo) -> Params {
        match algo {
            Algo::Svd => Params {
                factors: 100,
                epochs: 40,
                lr: 0.007,
                reg: 0.1,
                reg_bias: 0.02,
                alpha: 0.0,
                init_std: 0.1,
                seed: 42,
                half_life_ms: None,
                blend: None,
                cohorts: None,
                cohort_prior: None,
            },
            Algo::Als => Params {
                factors: 32,
                epochs: 10,
                lr: 0.0,
                reg: 50.0,
                reg_bias: 0.0,
                alpha: 2.0,
                init_std: 0.01,
                seed: 42,
                half_life_ms: None,
                blend: None,
                cohorts: None,
                cohort_prior: None,
            },
            Algo::Popularity => Params {
                factors: 0,
                epochs: 0,
                lr: 0.0,
                reg: 0.0,
                reg_bias: 0.0,
                alpha: 0.0,
                init_std: 0.0,
                seed: 0,
                half_life_ms: None,
                blend: None,
                cohorts: None,
                cohort_prior: None,
            },
            Algo::Recent => Params {
                half_life_ms: Some(DEFAULT_HALF_LIFE_MS),
                ..Params::default_for(Algo::Popularity)
            },
            // λ = 300: Steck's MovieLens setting, and the measurement.
            Algo::Ease => Params {
                reg: 300.0,
                half_life_ms: Some(DEFAULT_HALF_LIFE_MS),
                ..Params::default_for(Algo::Popularity)
            },
            // Equal weight: neither part is preferred a priori. Age-band
            // cohorts: the one grouping that helps cold users on ML-100K.
            Algo::Hybrid => Params {
                blend: Some(0.5),
                cohorts: Some(DEFAULT_COHORTS.to_string()),
                cohort_prior: Some(DEFAULT_COHORT_PRIOR),
                ..Params::default_for(Algo::Ease)
            },
        }
    }
}

/// A trained model: factors, biases, popularity counts and per-user seen sets
/// (CSR), everything serving needs without the dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub(crate) algo: Algo,
    pub(crate) params: Params,
    pub(crate) n_items: usize,
    /// Latent dimension actually stored (0 for popularity).
    pub(crate) k: usize,
    /// Sorted, unique; position = dense user index.
    pub(crate) user_ids: Vec<u32>,
    /// svd: [global mean, min rating, max rating]; empty otherwise.
    pub(crate) scalars: Vec<f32>,
    pub(crate) user_bias: Vec<f32>,
    pub(crate) item_bias: Vec<f32>,
    pub(crate) user_factors: Vec<f32>,
    pub(crate) item_factors: Vec<f32>,
    /// Distinct users per item in the training data.
    pub(crate) item_counts: Vec<u32>,
    /// CSR row offsets into `seen_items`, `n_users + 1` entries.
    pub(crate) seen_offsets: Vec<u64>,
    /// Per user, strictly increasing item indices.
    pub(crate) seen_items: Vec<u32>,
    /// Recency prior per item (recent, ease): sum of decayed pair weights;
    /// empty otherwise.
    pub(crate) item_scores: Vec<f32>,
    /// EASE weights B, row-major n_items × n_items (zero diagonal); empty
    /// otherwise.
    pub(crate) item_item: Vec<f32>,
    /// The cold-user list: derived from `item_scores` when present (score
    /// descending), else from `item_counts`; ties by count descending, then
    /// item index ascending.
    pub(crate) popular: Vec<u32>,
    /// Cold users' lists per cohort (see `params.cohorts`), sorted by key;
    /// empty when the model has none.
    pub(crate) cohorts: Vec<CohortList>,
}

impl Model {
    pub fn algo(&self) -> Algo {
        self.algo
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    pub fn n_items(&self) -> usize {
        self.n_items
    }

    pub(crate) fn n_users(&self) -> usize {
        self.user_ids.len()
    }

    /// Known user ids, sorted.
    pub fn user_ids(&self) -> &[u32] {
        &self.user_ids
    }

    /// Whether `user` was in the training data (otherwise it is cold-start).
    pub(crate) fn knows_user(&self, user: u32) -> bool {
        self.user_index(user).is_some()
    }

    /// Items `user` watched or rated in training, sorted; empty if unknown.
    pub fn seen(&self, user: u32) -> &[u32] {
        self.user_index(user).map_or(&[], |u| self.seen_row(u))
    }

    /// The `n` most popular items of the training data, most popular first
    /// (time-decayed for models with a recency prior): what unknown users get.
    pub(crate) fn popular(&self, n: usize) -> &[u32] {
        &self.popular[..n.min(self.popular.len())]
    }

    /// The attributes cold users are grouped by; empty without cohorts.
    pub fn cohort_attrs(&self) -> Vec<CohortAttr> {
        if self.cohorts.is_empty() {
            return Vec::new();
        }
        self.params
            .cohorts
            .as_deref()
            .and_then(|c| parse_cohort_attrs(c).ok())
            .unwrap_or_default()
    }

    /// The `n` items a cold user of cohort `key` gets: the cohort's list,
    /// then the global one; the global list for an unknown cohort.
    pub fn cohort_popular(&self, key: &str, n: usize) -> Vec<u32> {
        let n = n.min(self.n_items);
        let Ok(at) = self.cohorts.binary_search_by(|c| c.key.as_str().cmp(key)) else {
            return self.popular(n).to_vec();
        };
        let mut out: Vec<u32> = self.cohorts[at].items.iter().copied().take(n).collect();
        if out.len() < n {
            let mut have: Vec<u32> = out.clone();
            have.sort_unstable();
            out.extend(
                self.popular
                    .iter()
                    .copied()
                    .filter(|i| have.binary_search(i).is_err())
                    .take(n - have.len()),
            );
        }
        out
    }

    /// Cohort keys with their training-user counts.
    pub fn cohort_sizes(&self) -> Vec<(&str, u32)> {
        self.cohorts
            .iter()
            .map(|c| (c.key.as_str(), c.users))
            .collect()
    }

    /// [`Model::recommend`], with the cohort of a cold user when known.
    pub fn recommend_in(
        &self,
        user: u32,
        cohort: Option<&str>,
        n: usize,
        exclude_seen: bool,
    ) -> Vec<u32> {
        match cohort {
            Some(key) if !self.knows_user(user) => self.cohort_popular(key, n),
            _ => self.recommend(user, n, exclude_seen),
        }
    }

    /// Predicted score of `item` for `user`. For svd this is a rating clipped
    /// to the training rating range (unknown users/items fall back to the
    /// biases that exist); for als an unscaled preference; for popularity the
    /// item's training count.
    pub(crate) fn predict(&self, user: u32, item: u32) -> f32 {
        let u = self.user_index(user);
        let i = (item as usize) < self.n_items;
        let i = i.then_some(item as usize);
        match self.algo {
            Algo::Svd => {
                let [mean, lo, hi] = match self.scalars[..] {
                    [m, lo, hi] => [m, lo, hi],
                    _ => return 0.0,
                };
                let mut r = mean;
                if let Some(u) = u {
                    r += self.user_bias[u];
                }
                if let Some(i) = i {
                    r += self.item_bias[i];
                }
                if let (Some(u), Some(i)) = (u, i) {
                    r += dot(self.user_row(u), self.item_row(i));
                }
                r.clamp(lo, hi)
            }
            Algo::Als => match (u, i) {
                (Some(u), Some(i)) => dot(self.user_row(u), self.item_row(i)),
                _ => 0.0,
            },
            Algo::Popularity => i.map_or(0.0, |i| self.item_counts[i] as f32),
            Algo::Recent => i.map_or(0.0, |i| self.item_scores[i]),
            Algo::Ease | Algo::Hybrid => match (u, i) {
                (Some(u), Some(i)) => self.item_item_scores(u)[i],
                _ => i.map_or(0.0, |i| self.item_scores[i]),
            },
        }
    }

    /// Top-`n` item indices for `user`, best first. With `exclude_seen`, items
    /// the user watched or rated in training are left out. Unknown users get
    /// the popularity list. Ties break towards the lower item index.
    pub fn recommend(&self, user: u32, n: usize, exclude_seen: bool) -> Vec<u32> {
        let n = n.min(self.n_items);
        let Some(u) = self.user_index(user) else {
            return self.popular(n).to_vec();
        };
        let seen = if exclude_seen { self.seen_row(u) } else { &[] };
        match self.algo {
            Algo::Popularity | Algo::Recent => self
                .popular
                .iter()
                .copied()
                .filter(|i| seen.binary_search(i).is_err())
                .take(n)
                .collect(),
            Algo::Svd | Algo::Als => {
                let pu = self.user_row(u);
                let scores = self.item_factors.chunks_exact(self.k).enumerate();
                let scores = scores
                    .map(|(i, qi)| dot(pu, qi) + self.item_bias.get(i).copied().unwrap_or(0.0));
                top_n(scores, n, seen)
            }
            Algo::Ease | Algo::Hybrid => top_n(self.item_item_scores(u).into_iter(), n, seen),
        }
    }

    /// Scores of every item for known user `u`: EASE's (the sum of the B
    /// rows of the user's training items, in row order), for hybrid blended
    /// with the recency prior, each divided by its maximum.
    fn item_item_scores(&self, u: usize) -> Vec<f32> {
        let mut acc = vec![0.0f32; self.n_items];
        for &s in self.seen_row(u) {
            let row = &self.item_item[s as usize * self.n_items..][..self.n_items];
            for (a, b) in acc.iter_mut().zip(row) {
                *a += b;
            }
        }
        if self.algo == Algo::Hybrid {
            let w = self.params.blend.unwrap_or(0.0);
            let max = |v: &[f32]| v.iter().copied().fold(0.0f32, f32::max);
            let (em, pm) = (max(&acc), max(&self.item_scores));
            let e_scale = if em > 0.0 { (1.0 - w) / em } else { 0.0 };
            let p_scale = if pm > 0.0 { w / pm } else { 0.0 };
            for (a, p) in acc.iter_mut().zip(&self.item_scores) {
                *a = *a * e_scale + p * p_scale;
            }
        }
        acc
    }
}

/// The `n` best (score, item) of `scores` (item = position), skipping the
/// sorted `seen` items; best first, ties towards the lower item index.
fn top_n(scores: impl Iterator<Item = f32>, n: usize, seen: &[u32]) -> Vec<u32> {
    if n == 0 {
        return Vec::new();
    }
    // Min-heap of the best n so far: its top is the worst kept candidate.
    let mut heap: BinaryHeap<Reverse<Scored>> = BinaryHeap::with_capacity(n + 1);
    let mut seen = seen.iter().copied().peekable();
    for (i, score) in scores.enumerate() {
        let item = i as u32;
        if seen.next_if_eq(&item).is_some() {
            continue;
        }
        let cand = Scored { score, item };
        if heap.len() < n {
            heap.push(Reverse(cand));
        } else if let Some(mut worst) = heap.peek_mut()
            && cand > worst.0
        {
            *worst = Reverse(cand);
        }
    }
    let mut best: Vec<Scored> = heap.into_iter().map(|Reverse(s)| s).collect();
    best.sort_unstable_by(|a, b| b.cmp(a));
    best.into_iter().map(|s| s.item).collect()
}

impl Model {
    pub(crate) fn user_index(&self, user: u32) -> Option<usize> {
        self.user_ids.binary_search(&user).ok()
    }

    pub(crate) fn seen_row(&self, u: usize) -> &[u32] {
        // Offsets are validated at construction (train or load).
        let lo = self.seen_offsets[u] as usize;
        let hi = self.seen_offsets[u + 1] as usize;
        &self.seen_items[lo..hi]
    }

    fn user_row(&self, u: usize) -> &[f32] {
        &self.user_factors[u * self.k..(u + 1) * self.k]
    }

    fn item_row(&self, i: usize) -> &[f32] {
        &self.item_factors[i * self.k..(i + 1) * self.k]
    }
}

/// Items ordered by prior score descending (when `scores` is not empty),
/// then count descending, then index ascending.
pub(crate) fn popularity_order(counts: &[u32], scores: &[f32]) -> Vec<u32> {
    let mut order: Vec<u32> = (0..counts.len() as u32).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (a as usize, b as usize);
        let by_score = match (scores.get(a), scores.get(b)) {
            (Some(x), Some(y)) => y.total_cmp(x),
            _ => Ordering::Equal,
        };
        by_score
            .then_with(|| counts[b].cmp(&counts[a]))
            .then_with(|| a.cmp(&b))
    });
    order
}

/// A candidate in top-n selection. Greater = better: higher score, then lower
/// item index. `total_cmp` keeps the order total even for NaN.
#[derive(Clone, Copy, Debug)]
struct Scored {
    score: f32,
    item: u32,
}

impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.item.cmp(&self.item))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Scored {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Scored {}

/// Dot product with sixteen independent accumulators (four SSE vectors, so
/// the adds do not wait on each other) in a fixed association order: fast
/// and still bit-reproducible.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let mut acc = [0.0f32; L];
    let ca = a.chunks_exact(L);
    let cb = b.chunks_exact(L);
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    let mut half = [0.0f32; L / 2];
    for (l, h) in half.iter_mut().enumerate() {
        *h = acc[l] + acc[l + L / 2];
    }
    ((half[0] + half[4]) + (half[1] + half[5])) + ((half[2] + half[6]) + (half[3] + half[7])) + tail
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Synthetic data: `n_users` users in `groups` taste groups; each group
    /// likes a disjoint block of items (rating 5) and dislikes the rest it
    /// sees (rating 1). Deterministic.
    pub(crate) fn planted(n_users: u32, n_items: u32, groups: u32) -> Vec<Interaction> {
        let mut rng = train::Rng::new(7);
        let block = n_items / groups;
        let mut out = Vec::new();
        for u in 0..n_users {
            let g = u % groups;
            for i in 0..n_items {
                let liked = i / block == g;
                let p = if liked { 0.5 } else { 0.1 };
                if rng.unit_f64() < p {
                    out.push(Interaction {
                        user: 1000 + u,
                        item: i,
                        rating: Some(if liked { 5.0 } else { 1.0 }),
                        time: i64::from(u * n_items + i),
                    });
                }
            }
        }
        out
    }

    #[test]
    fn dot_matches_naive() {
        let a: Vec<f32> = (0..21).map(|x| x as f32 * 0.5).collect();
        let b: Vec<f32> = (0..21).map(|x| 1.0 - x as f32 * 0.25).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-3);
        assert_eq!(dot(&[], &[]), 0.0);
    }

    #[test]
    fn algo_names_round_trip() {
        for a in Algo::ALL {
            assert_eq!(a.name().parse::<Algo>().ok(), Some(a));
        }
        assert!("nope".parse::<Algo>().is_err());
    }

    fn tiny() -> Vec<Interaction> {
        let ev = |user, item, rating| Interaction {
            user,
            item,
            rating,
            time: 0,
        };
        vec![
            ev(1, 0, Some(5.0)),
            ev(1, 1, Some(4.0)),
            ev(2, 0, Some(3.0)),
            ev(2, 2, None),
            ev(3, 0, None),
            ev(3, 1, Some(2.0)),
            ev(4, 3, Some(1.0)),
        ]
    }

    #[test]
    fn seen_items_are_excluded_and_cold_users_get_popularity() {
        for algo in Algo::ALL {
            let model = train(&tiny(), 6, algo, &Params::default_for(algo)).expect("train");
            assert_eq!(model.seen(1), &[0, 1]);
            assert_eq!(model.seen(2), &[0, 2]);
            for user in [1, 2, 3, 4] {
                let recs = model.recommend(user, 10, true);
                assert_eq!(recs.len(), 6 - model.seen(user).len(), "{algo} user {user}");
                for item in &recs {
                    assert!(!model.seen(user).contains(item), "{algo} user {user}");
                }
                let all = model.recommend(user, 10, false);
                assert_eq!(all.len(), 6);
                let mut sorted = all.clone();
                sorted.sort_unstable();
                assert_eq!(sorted, vec![0, 1, 2, 3, 4, 5]);
            }
            // Item 0 has 3 users, item 1 has 2, items 2 and 3 one, 4 and 5 none.
            assert_eq!(model.recommend(99, 4, true), vec![0, 1, 2, 3], "{algo}");
            assert!(!model.knows_user(99));
            assert_eq!(model.recommend(99, 0, true), Vec::<u32>::new());
            assert_eq!(model.recommend(99, 100, true).len(), 6);
        }
    }

    #[test]
    fn top_n_matches_full_sort() {
        let data = planted(60, 50, 3);
        for algo in [Algo::Svd, Algo::Als] {
            let model = train(&data, 50, algo, &Params::default_for(algo)).expect("train");
            for &user in model.user_ids() {
                let u = model.user_index(user).expect("known");
                let seen = model.seen(user);
                let mut all: Vec<Scored> = (0..50u32)
                    .filter(|i| !seen.contains(i))
                    .map(|i| Scored {
                        score: dot(model.user_row(u), model.item_row(i as usize))
                            + model.item_bias.get(i as usize).copied().unwrap_or(0.0),
                        item: i,
                    })
                    .collect();
                all.sort_by(|a, b| b.cmp(a));
                let want: Vec<u32> = all.iter().take(7).map(|s| s.item).collect();
                assert_eq!(model.recommend(user, 7, true), want);
            }
        }
    }
}
