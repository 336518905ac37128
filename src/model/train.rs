//! Training: biased SVD by SGD, implicit-feedback ALS, popularity,
//! time-decayed popularity (the recency prior), EASE (in `ease`).

use std::collections::HashMap;

use rayon::prelude::*;

use super::{Algo, Interaction, Model, ModelError, Params, dot, popularity_order};

/// Largest latent dimension accepted (keeps ALS's k×k solves and the file sane).
pub(crate) const MAX_FACTORS: u32 = 1024;

/// Default half-life of the recency prior: 14 days in milliseconds. Two
/// weeks is the window whose popularity issue 16 measured ahead of all-time
/// popularity on MovieLens 100K's time split, for cold and warm users alike.
pub const DEFAULT_HALF_LIFE_MS: u64 = 14 * 24 * 3600 * 1000;

/// Trains `algo` on `data`. Item indices must be `< n_items`; ratings finite.
/// Deterministic for fixed inputs, parameters and seed, whatever the number
/// of rayon threads.
pub fn train(
    data: &[Interaction],
    n_items: usize,
    algo: Algo,
    params: &Params,
) -> Result<Model, ModelError> {
    train_with_cohorts(data, n_items, algo, params, &HashMap::new())
}

/// [`train`], with the cohort (see [`super::cohort_key`]) of the users
/// whose attributes are known: with `params.cohorts` set, each cohort with
/// training users gets its own cold-user list. Users missing from `keys`
/// are in no cohort; with no cohort at all the model has none (every cold
/// user gets the global list).
pub fn train_with_cohorts(
    data: &[Interaction],
    n_items: usize,
    algo: Algo,
    params: &Params,
    keys: &HashMap<u32, String>,
) -> Result<Model, ModelError> {
    check_params(algo, params)?;
    if algo.has_item_item() {
        super::ease::check_size(n_items)?;
    }
    for (index, ev) in data.iter().enumerate() {
        if ev.item as usize >= n_items {
            return Err(ModelError::ItemOutOfRange {
                index,
                item: ev.item,
                n_items,
            });
        }
        if let Some(rating) = ev.rating
            && !rating.is_finite()
        {
            return Err(ModelError::NonFiniteRating { index, rating });
        }
    }

    let mut user_ids: Vec<u32> = data.iter().map(|e| e.user).collect();
    user_ids.sort_unstable();
    user_ids.dedup();
    let n_users = user_ids.len();
    // Dense user index of every event (all users are present by construction).
    let uidx: Vec<usize> = data
        .iter()
        .map(|e| user_ids.binary_search(&e.user).unwrap_or(0))
        .collect();

    let csr = UserItemCsr::build(data, &uidx, n_users);
    let mut item_counts = vec![0u32; n_items];
    for &i in &csr.items {
        item_counts[i as usize] += 1;
    }

    let mut model = Model {
        algo,
        params: params.clone(),
        n_items,
        k: 0,
        user_ids,
        scalars: Vec::new(),
        user_bias: Vec::new(),
        item_bias: Vec::new(),
        user_factors: Vec::new(),
        item_factors: Vec::new(),
        popular: Vec::new(),
        cohorts: Vec::new(),
        item_counts,
        item_scores: Vec::new(),
        item_item: Vec::new(),
        seen_offsets: csr.offsets.iter().map(|&o| o as u64).collect(),
        seen_items: csr.items.clone(),
    };
    if algo.has_recency_prior() {
        let pairs = decayed_pairs(data, &uidx, params.half_life_ms.unwrap_or(1));
        let mut prior = vec![0.0f64; n_items];
        for &(_, item, w) in &pairs {
            prior[item as usize] += w;
        }
        model.item_scores = prior.iter().map(|&s| s as f32).collect();
        model.popular = popularity_order(&model.item_counts, &model.item_scores);
        if params.cohorts.is_some() && !keys.is_empty() {
            model.cohorts = super::cohort::fit(
                &pairs,
                &model.user_ids,
                keys,
                &prior,
                &model.popular,
                f64::from(params.cohort_prior.unwrap_or(0.0)),
            );
        }
    } else {
        model.popular = popularity_order(&model.item_counts, &model.item_scores);
    }
    match algo {
        Algo::Popularity | Algo::Recent => {}
        Algo::Svd => fit_svd(&mut model, data, &uidx)?,
        Algo::Als => fit_als(&mut model, &csr)?,
        Algo::Ease | Algo::Hybrid => {
            model.item_item = super::ease::fit(&csr.offsets, &csr.items, n_items, params.reg)?
        }
    }
    Ok(model)
}

/// The terms of the time-decayed popularity: per distinct (user, item)
/// pair, in first-seen order, 2^(-(t_last - t) / half_life), t = the
/// pair's latest event and t_last the latest event of the whole training
/// part. The recency prior sums them per item in this (fixed) order in f64,
/// stored as f32; cohorts sum them per cohort.
fn decayed_pairs(data: &[Interaction], uidx: &[usize], half_life: u64) -> Vec<(usize, u32, f64)> {
    let Some(t_last) = data.iter().map(|e| e.time).max() else {
        return Vec::new();
    };
    // Latest event per pair, in first-seen order of the pairs.
    let mut latest: HashMap<(usize, u32), usize> = HashMap::new();
    let mut pairs: Vec<(usize, u32, i64)> = Vec::new();
    for (e, &u) in data.iter().zip(uidx) {
        match latest.entry((u, e.item)) {
            std::collections::hash_map::Entry::Occupied(o) => {
                let t = &mut pairs[*o.get()].2;
                *t = (*t).max(e.time);
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(pairs.len());
                pairs.push((u, e.item, e.time));
            }
        }
    }
    let h = half_life as f64;
    pairs
        .into_iter()
        .map(|(u, item, t)| (u, item, exp2_neg(t_last.saturating_sub(t) as f64 / h)))
        .collect()
}

/// 2^(-x) for x >= 0 from + and × only (no libm), so the recency prior is
/// the same on every platform: 2^(-n) built from its bits, 2^(-f) for the
/// fraction f in [0, 1) by a fixed 24-term Taylor series of e^(-f·ln 2)
/// (error below 1e-16 relative). Below 2^-1022 the weight is 0.
pub(crate) fn exp2_neg(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return 1.0;
    }
    let n = x.floor();
    if n >= 1022.0 {
        return 0.0;
    }
    let y = -(x - n) * std::f64::consts::LN_2;
    let mut term = 1.0f64;
    let mut sum = 1.0f64;
    for k in 1..=24 {
        term *= y / f64::from(k);
        sum += term;
    }
    sum * f64::from_bits((1023 - n as u64) << 52)
}

fn check_params(algo: Algo, p: &Params) -> Result<(), ModelError> {
    let bad = |name, reason: &str| {
        Err(ModelError::InvalidParam {
            name,
            reason: reason.to_owned(),
        })
    };
    let finite_nonneg = [
        ("lr", p.lr),
        ("reg", p.reg),
        ("reg_bias", p.reg_bias),
        ("alpha", p.alpha),
        ("init_std", p.init_std),
    ];
    for (name, v) in finite_nonneg {
        if !v.is_finite() || v < 0.0 {
            return bad(name, "must be finite and >= 0");
        }
    }
    if algo.has_recency_prior() {
        match p.half_life_ms {
            Some(h) if h > 0 => {}
            _ => {
                return bad(
                    "half_life_ms",
                    "must be set and > 0 for recent, ease and hybrid",
                );
            }
        }
    }
    if let Some(c) = &p.cohorts {
        if !algo.has_recency_prior() {
            return bad("cohorts", "applies to recent, ease and hybrid");
        }
        let attrs = super::parse_cohort_attrs(c)?;
        if super::cohort_attrs_text(&attrs) != *c {
            return bad(
                "cohorts",
                "must be age, gender, occupation (in this order, comma-separated)",
            );
        }
        if !p.cohort_prior.is_some_and(|b| b.is_finite() && b >= 0.0) {
            return bad("cohort_prior", "must be set, finite and >= 0 with cohorts");
        }
    } else if p.cohort_prior.is_some() {
        return bad("cohort_prior", "applies only with cohorts");
    }
    if algo == Algo::Hybrid && !p.blend.is_some_and(|b| (0.0..=1.0).contains(&b)) {
        return bad("blend", "must be set and within [0, 1] for hybrid");
    }
    if algo.has_item_item() && p.reg <= 0.0 {
        return bad(
            "reg",
            "must be > 0 for ease (lambda; keeps the Gram matrix invertible)",
        );
    }
    if matches!(
        algo,
        Algo::Popularity | Algo::Recent | Algo::Ease | Algo::Hybrid
    ) {
        return Ok(());
    }
    if p.factors == 0 || p.factors > MAX_FACTORS {
        return bad("factors", "must be between 1 and 1024");
    }
    if algo == Algo::Svd && p.lr <= 0.0 {
        return bad("lr", "must be > 0 for svd");
    }
    if algo == Algo::Als && p.reg <= 0.0 {
        return bad(
            "reg",
            "must be > 0 for als (keeps the normal equations solvable)",
        );
    }
    Ok(())
}

/// Per user, the distinct items with the strongest signal seen for the pair:
/// a rating's value, or 1 for a watch; the max over the pair's events (so
/// many per-minute watch lines do not inflate confidence).
struct UserItemCsr {
    offsets: Vec<usize>,
    items: Vec<u32>,
    strength: Vec<f32>,
}

impl UserItemCsr {
    fn build(data: &[Interaction], uidx: &[usize], n_users: usize) -> UserItemCsr {
        let mut order: Vec<usize> = (0..data.len()).collect();
        order.sort_unstable_by_key(|&e| (uidx[e], data[e].item, e));
        let mut offsets = vec![0usize; n_users + 1];
        let mut items = Vec::new();
        let mut strength: Vec<f32> = Vec::new();
        let mut last: Option<(usize, u32)> = None;
        for &e in &order {
            let (u, i) = (uidx[e], data[e].item);
            let s = data[e].rating.unwrap_or(1.0);
            if last == Some((u, i)) {
                if let Some(prev) = strength.last_mut() {
                    *prev = prev.max(s);
                }
            } else {
                items.push(i);
                strength.push(s);
                offsets[u + 1] += 1;
                last = Some((u, i));
            }
        }
        for u in 0..n_users {
            offsets[u + 1] += offsets[u];
        }
        UserItemCsr {
            offsets,
            items,
            strength,
        }
    }
}

fn fit_svd(model: &mut Model, data: &[Interaction], uidx: &[usize]) -> Result<(), ModelError> {
    let p = model.params.clone();
    let k = p.factors as usize;
    let ratings: Vec<(usize, usize, f32)> = data
        .iter()
        .zip(uidx)
        .filter_map(|(e, &u)| e.rating.map(|r| (u, e.item as usize, r)))
        .collect();
    if ratings.is_empty() {
        return Err(ModelError::EmptyTraining {
            algo: Algo::Svd,
            what: "explicit rating",
        });
    }
    let sum: f64 = ratings.iter().map(|r| f64::from(r.2)).sum();
    let mean = (sum / ratings.len() as f64) as f32;
    let lo = ratings.iter().map(|r| r.2).fold(f32::INFINITY, f32::min);
    let hi = ratings
        .iter()
        .map(|r| r.2)
        .fold(f32::NEG_INFINITY, f32::max);

    let n_users = model.user_ids.len();
    let mut rng = Rng::new(p.seed);
    let mut pf = rng.init_factors(n_users * k, p.init_std);
    let mut qf = rng.init_factors(model.n_items * k, p.init_std);
    let mut bu = vec![0.0f32; n_users];
    let mut bi = vec![0.0f32; model.n_items];
    let mut order: Vec<u32> = (0..ratings.len() as u32).collect();
    let (lr, reg, reg_b) = (p.lr, p.reg, p.reg_bias);

    for _ in 0..p.epochs {
        rng.shuffle(&mut order);
        for &r in &order {
            let (u, i, rating) = ratings[r as usize];
            let pu = &mut pf[u * k..(u + 1) * k];
            let qi = &mut qf[i * k..(i + 1) * k];
            let err = rating - (mean + bu[u] + bi[i] + dot(pu, qi));
            bu[u] += lr * (err - reg_b * bu[u]);
            bi[i] += lr * (err - reg_b * bi[i]);
            for (x, y) in pu.iter_mut().zip(qi.iter_mut()) {
                let (px, qy) = (*x, *y);
                *x += lr * (err * qy - reg * px);
                *y += lr * (err * px - reg * qy);
            }
        }
    }
    if let Some(index) = pf
        .iter()
        .chain(&qf)
        .chain(&bu)
        .chain(&bi)
        .position(|v| !v.is_finite())
    {
        return Err(ModelError::InvalidParam {
            name: "lr",
            reason: format!("SGD diverged (non-finite weight at {index}); lower lr"),
        });
    }
    model.k = k;
    model.scalars = vec![mean, lo, hi];
    model.user_factors = pf;
    model.item_factors = qf;
    model.user_bias = bu;
    model.item_bias = bi;
    Ok(())
}

fn fit_als(model: &mut Model, csr: &UserItemCsr) -> Result<(), ModelError> {
    let p = model.params.clone();
    let k = p.factors as usize;
    let n_users = model.user_ids.len();
    let n_items = model.n_items;
    if csr.items.is_empty() {
        return Err(ModelError::EmptyTraining {
            algo: Algo::Als,
            what: "interaction",
        });
    }
    // Transpose: per item, (user, strength).
    let mut item_off = vec![0usize; n_items + 1];
    for &i in &csr.items {
        item_off[i as usize + 1] += 1;
    }
    for i in 0..n_items {
        item_off[i + 1] += item_off[i];
    }
    let mut fill = item_off.clone();
    let mut item_users = vec![0u32; csr.items.len()];
    let mut item_strength = vec![0.0f32; csr.items.len()];
    for u in 0..n_users {
        for e in csr.offsets[u]..csr.offsets[u + 1] {
            let i = csr.items[e] as usize;
            item_users[fill[i]] = u as u32;
            item_strength[fill[i]] = csr.strength[e];
            fill[i] += 1;
        }
    }
    let user_side = Side {
        name: "user",
        offsets: &csr.offsets,
        other: &csr.items,
        strength: &csr.strength,
    };
    let item_side = Side {
        name: "item",
        offsets: &item_off,
        other: &item_users,
        strength: &item_strength,
    };

    let mut rng = Rng::new(p.seed);
    let mut x = vec![0.0f32; n_users * k];
    let mut y = rng.init_factors(n_items * k, p.init_std);
    for _ in 0..p.epochs.max(1) {
        als_half_step(&user_side, &y, &mut x, k, p.reg, p.alpha)?;
        als_half_step(&item_side, &x, &mut y, k, p.reg, p.alpha)?;
    }
    model.k = k;
    model.user_factors = x;
    model.item_factors = y;
    Ok(())
}

struct Side<'a> {
    name: &'static str,
    offsets: &'a [usize],
    other: &'a [u32],
    strength: &'a [f32],
}

/// Solves every row of `out` given the fixed factors `fixed`:
/// (FᵀF + Fᵀ(Cᵤ − I)F + λI) xᵤ = FᵀCᵤpᵤ, with cᵤᵢ = 1 + α·rᵤᵢ, pᵤᵢ = 1.
/// Rows are independent, so the parallel result equals the serial one.
fn als_half_step(
    side: &Side<'_>,
    fixed: &[f32],
    out: &mut [f32],
    k: usize,
    reg: f32,
    alpha: f32,
) -> Result<(), ModelError> {
    // Gram matrix FᵀF (upper triangle), serial for a fixed summation order.
    let mut gram = vec![0.0f64; k * k];
    for f in fixed.chunks_exact(k) {
        add_outer(&mut gram, f, 1.0, k);
    }
    for d in 0..k {
        gram[d * k + d] += f64::from(reg);
    }
    let alpha = f64::from(alpha);
    out.par_chunks_mut(k).enumerate().try_for_each_init(
        || (vec![0.0f64; k * k], vec![0.0f64; k]),
        |(a, b), (row, x)| {
            let (lo, hi) = (side.offsets[row], side.offsets[row + 1]);
            if lo == hi {
                x.fill(0.0);
                return Ok(());
            }
            a.copy_from_slice(&gram);
            b.fill(0.0);
            for e in lo..hi {
                let j = side.other[e] as usize;
                let f = &fixed[j * k..(j + 1) * k];
                let extra = alpha * f64::from(side.strength[e]);
                add_outer(a, f, extra, k);
                for (bv, &fv) in b.iter_mut().zip(f) {
                    *bv += (1.0 + extra) * f64::from(fv);
                }
            }
            cholesky_solve(a, b, k).ok_or(ModelError::NotPositiveDefinite {
                side: side.name,
                row,
            })?;
            for (xv, &bv) in x.iter_mut().zip(b.iter()) {
                *xv = bv as f32;
            }
            Ok(())
        },
    )
}

/// a += w · f fᵀ on the upper triangle (row r, columns r..k).
#[inline]
fn add_outer(a: &mut [f64], f: &[f32], w: f64, k: usize) {
    for r in 0..k {
        let s = w * f64::from(f[r]);
        let row = &mut a[r * k + r..(r + 1) * k];
        for (av, &fv) in row.iter_mut().zip(&f[r..]) {
            *av += s * f64::from(fv);
        }
    }
}

/// Solves A x = b in place (x returned in `b`) for symmetric positive-definite
/// A given by its upper triangle (row-major k×k). A is overwritten with Uᵀ
/// where A = UᵀU. `None` if A is not positive definite.
pub(crate) fn cholesky_solve(a: &mut [f64], b: &mut [f64], k: usize) -> Option<()> {
    // Upper Cholesky: U[j][i] for i >= j, stored in place of the upper triangle.
    for j in 0..k {
        let mut d = a[j * k + j];
        for p in 0..j {
            d -= a[p * k + j] * a[p * k + j];
        }
        if d.is_nan() || d <= 0.0 {
            return None;
        }
        let d = d.sqrt();
        a[j * k + j] = d;
        for i in j + 1..k {
            let mut s = a[j * k + i];
            for p in 0..j {
                s -= a[p * k + j] * a[p * k + i];
            }
            a[j * k + i] = s / d;
        }
    }
    // Uᵀ z = b
    for i in 0..k {
        let mut s = b[i];
        for p in 0..i {
            s -= a[p * k + i] * b[p];
        }
        b[i] = s / a[i * k + i];
    }
    // U x = z
    for i in (0..k).rev() {
        let mut s = b[i];
        for p in i + 1..k {
            s -= a[i * k + p] * b[p];
        }
        b[i] = s / a[i * k + i];
    }
    Some(())
}

/// xoshiro256** seeded through SplitMix64: small, fast, and its output is
/// fixed by its definition, so models stay reproducible across dependency
/// upgrades.
pub(crate) struct Rng {
    s: [u64; 4],
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng {
            s: [next(), next(), next(), next()],
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub(crate) fn unit_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in 0..n without modulo bias (Lemire's method); n > 0.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let threshold = n.wrapping_neg() % n;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(n);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    pub(crate) fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }

    /// Uniform values with mean 0 and standard deviation `std`
    /// (half-width std·√3); no transcendental functions, so bit-stable.
    fn init_factors(&mut self, len: usize, std: f32) -> Vec<f32> {
        let half = f64::from(std) * 3f64.sqrt();
        (0..len)
            .map(|_| ((self.unit_f64() * 2.0 - 1.0) * half) as f32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::planted;
    use super::super::{Metrics, SplitKind, evaluate, evaluate_baseline, split};
    use super::*;

    #[test]
    fn cholesky_solves_a_known_system() {
        // A = [[4, 2], [2, 3]], b = [2, 1] -> x = [0.5, 0]
        let mut a = vec![4.0, 2.0, f64::NAN, 3.0];
        let mut b = vec![2.0, 1.0];
        cholesky_solve(&mut a, &mut b, 2).expect("pd");
        assert!((b[0] - 0.5).abs() < 1e-12 && b[1].abs() < 1e-12, "{b:?}");
        let mut singular = vec![1.0, 1.0, 0.0, 1.0];
        assert!(cholesky_solve(&mut singular, &mut [1.0, 1.0], 2).is_none());
    }

    #[test]
    fn rng_is_stable_and_unbiased_enough() {
        let mut r = Rng::new(1);
        let first: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        let mut again = Rng::new(1);
        assert_eq!(first, (0..3).map(|_| again.next_u64()).collect::<Vec<_>>());
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[r.below(3) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
        let mut v: Vec<u32> = (0..100).collect();
        r.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }

    /// Ratings from a planted rank-2 model plus biases: SVD must recover them.
    #[test]
    fn svd_fits_a_planted_low_rank_matrix() {
        let mut rng = Rng::new(3);
        let (n_users, n_items) = (200u32, 120u32);
        let uf: Vec<[f32; 2]> = (0..n_users)
            .map(|_| {
                [
                    rng.unit_f64() as f32 * 2.0 - 1.0,
                    rng.unit_f64() as f32 * 2.0 - 1.0,
                ]
            })
            .collect();
        let vf: Vec<[f32; 2]> = (0..n_items)
            .map(|_| {
                [
                    rng.unit_f64() as f32 * 2.0 - 1.0,
                    rng.unit_f64() as f32 * 2.0 - 1.0,
                ]
            })
            .collect();
        let mut data = Vec::new();
        for u in 0..n_users {
            for i in 0..n_items {
                if rng.unit_f64() < 0.4 {
                    let (a, b) = (uf[u as usize], vf[i as usize]);
                    let r = 3.0 + 0.3 * (i % 3) as f32 + 1.2 * (a[0] * b[0] + a[1] * b[1]);
                    data.push(Interaction {
                        user: u,
                        item: i,
                        rating: Some(r),
                        time: 0,
                    });
                }
            }
        }
        let (tr, te) = split(&data, SplitKind::Random, 0.2, 5).expect("split");
        let params = Params {
            factors: 8,
            epochs: 60,
            lr: 0.01,
            reg: 0.01,
            ..Params::default_for(Algo::Svd)
        };
        let model = train(&tr, n_items as usize, Algo::Svd, &params).expect("train");
        let rmse = evaluate(&model, &tr, &te)
            .expect("eval")
            .rmse
            .expect("rmse");
        let spread = {
            let m: f64 = te
                .iter()
                .filter_map(|e| e.rating)
                .map(f64::from)
                .sum::<f64>()
                / te.len() as f64;
            let v: f64 = te
                .iter()
                .filter_map(|e| e.rating)
                .map(|r| (f64::from(r) - m).powi(2))
                .sum::<f64>()
                / te.len() as f64;
            v.sqrt()
        };
        assert!(rmse < 0.25 * spread, "rmse {rmse} vs std {spread}");
    }

    #[test]
    fn als_beats_popularity_on_planted_groups() {
        // Implicit watches only: each group watches its own block.
        let data: Vec<Interaction> = planted(300, 120, 4)
            .into_iter()
            .map(|e| Interaction { rating: None, ..e })
            .collect();
        let (tr, te) = split(&data, SplitKind::Random, 0.2, 9).expect("split");
        // reg is absolute (not scaled by activity); the ML-100K default would
        // shrink this much sparser matrix to zero.
        let params = Params {
            reg: 1.0,
            ..Params::default_for(Algo::Als)
        };
        let als = train(&tr, 120, Algo::Als, &params).expect("als");
        let m: Metrics = evaluate(&als, &tr, &te).expect("eval");
        let base = evaluate_baseline(&tr, &te, 120).expect("baseline");
        assert!(m.rmse.is_none());
        assert!(
            m.precision_at_10 > 1.5 * base.precision_at_10,
            "als {m:?} vs popularity {base:?}"
        );
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let ev = Interaction {
            user: 1,
            item: 5,
            rating: Some(3.0),
            time: 0,
        };
        let p = Params::default_for(Algo::Svd);
        assert!(matches!(
            train(&[ev], 5, Algo::Svd, &p),
            Err(ModelError::ItemOutOfRange { item: 5, .. })
        ));
        let nan = Interaction {
            item: 0,
            rating: Some(f32::NAN),
            ..ev
        };
        assert!(matches!(
            train(&[nan], 5, Algo::Svd, &p),
            Err(ModelError::NonFiniteRating { .. })
        ));
        let watch = Interaction {
            item: 0,
            rating: None,
            ..ev
        };
        assert!(matches!(
            train(&[watch], 5, Algo::Svd, &p),
            Err(ModelError::EmptyTraining { .. })
        ));
        assert!(matches!(
            train(&[], 5, Algo::Als, &Params::default_for(Algo::Als)),
            Err(ModelError::EmptyTraining { .. })
        ));
        let zero = Params {
            factors: 0,
            ..p.clone()
        };
        assert!(matches!(
            train(&[watch], 5, Algo::Svd, &zero),
            Err(ModelError::InvalidParam {
                name: "factors",
                ..
            })
        ));
        let neg = Params { reg: -1.0, ..p };
        assert!(matches!(
            train(&[watch], 5, Algo::Svd, &neg),
            Err(ModelError::InvalidParam { name: "reg", .. })
        ));
        // Popularity with no data is a valid (empty) model.
        let pop = train(
            &[],
            3,
            Algo::Popularity,
            &Params::default_for(Algo::Popularity),
        );
        assert_eq!(
            pop.expect("empty popularity").recommend(1, 5, true),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn exp2_neg_matches_the_definition() {
        for x in [0.0f64, 0.25, 0.5, 1.0, 1.5, 3.999, 10.0, 52.7, 700.3] {
            let want = (-x).exp2();
            let got = exp2_neg(x);
            assert!(
                (got - want).abs() <= 1e-15 * want,
                "2^-{x}: {got} vs {want}"
            );
        }
        assert_eq!(exp2_neg(2000.0), 0.0);
        assert_eq!(exp2_neg(-1.0), 1.0);
    }

    #[test]
    fn recent_ranks_by_decayed_pairs_and_serves_it_to_cold_users() {
        let day = 86_400_000i64;
        let ev = |user, item, time| Interaction {
            user,
            item,
            rating: None,
            time,
        };
        // Item 0: three users 60 days before the end. Item 1: two users at
        // the end. Item 2: one user, twice (counts once), 14 days before.
        let data = [
            ev(1, 0, 0),
            ev(2, 0, 0),
            ev(3, 0, 0),
            ev(4, 1, 60 * day),
            ev(5, 1, 60 * day),
            ev(6, 2, 46 * day),
            ev(6, 2, 40 * day),
        ];
        let p = Params::default_for(Algo::Recent);
        assert_eq!(p.half_life_ms, Some(DEFAULT_HALF_LIFE_MS));
        let m = train(&data, 4, Algo::Recent, &p).expect("recent");
        assert_eq!(m.recommend(99, 4, true), vec![1, 2, 0, 3]);
        assert!((m.item_scores[1] - 2.0).abs() < 1e-6);
        assert!((m.item_scores[2] - 0.5).abs() < 1e-6, "{:?}", m.item_scores);
        // Popularity orders them by users: 0, 1, 2.
        let pop = train(
            &data,
            4,
            Algo::Popularity,
            &Params::default_for(Algo::Popularity),
        );
        assert_eq!(pop.expect("pop").recommend(99, 3, true), vec![0, 1, 2]);
        // A long half-life approaches popularity.
        let long = Params {
            half_life_ms: Some(1_000_000 * DEFAULT_HALF_LIFE_MS),
            ..p.clone()
        };
        let m = train(&data, 4, Algo::Recent, &long).expect("long");
        assert_eq!(m.recommend(99, 3, true), vec![0, 1, 2]);
        for bad in [None, Some(0)] {
            let q = Params {
                half_life_ms: bad,
                ..p.clone()
            };
            for algo in [Algo::Recent, Algo::Ease] {
                assert!(matches!(
                    train(&data, 4, algo, &q),
                    Err(ModelError::InvalidParam {
                        name: "half_life_ms",
                        ..
                    })
                ));
            }
        }
    }

    #[test]
    fn ease_refuses_big_catalogues_and_bad_lambda_before_working() {
        let ev = Interaction {
            user: 1,
            item: 0,
            rating: None,
            time: 0,
        };
        let p = Params::default_for(Algo::Ease);
        let err = train(&[ev], super::super::MAX_EASE_ITEMS + 1, Algo::Ease, &p)
            .expect_err("too many items");
        assert!(matches!(err, ModelError::TooManyItems { .. }));
        let text = err.to_string();
        assert!(text.contains("20000") && text.contains("items^3"), "{text}");
        let zero = Params { reg: 0.0, ..p };
        assert!(matches!(
            train(&[ev], 3, Algo::Ease, &zero),
            Err(ModelError::InvalidParam { name: "reg", .. })
        ));
    }

    #[test]
    fn ease_beats_popularity_on_planted_groups_and_cold_users_get_recent() {
        let data: Vec<Interaction> = planted(300, 120, 4)
            .into_iter()
            .map(|e| Interaction { rating: None, ..e })
            .collect();
        let (tr, te) = split(&data, SplitKind::Random, 0.2, 9).expect("split");
        let p = Params {
            reg: 10.0,
            ..Params::default_for(Algo::Ease)
        };
        let ease = train(&tr, 120, Algo::Ease, &p).expect("ease");
        let m = evaluate(&ease, &tr, &te).expect("eval");
        let base = evaluate_baseline(&tr, &te, 120).expect("baseline");
        assert!(
            m.precision_at_10 > 1.5 * base.precision_at_10,
            "ease {m:?} vs popularity {base:?}"
        );
        let recent =
            train(&tr, 120, Algo::Recent, &Params::default_for(Algo::Recent)).expect("recent");
        assert_eq!(ease.recommend(1, 20, true), recent.recommend(1, 20, true));
        // Bit-identical for any thread count.
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("pool")
            .install(|| train(&tr, 120, Algo::Ease, &p))
            .expect("ease 1 thread");
        assert_eq!(one, ease);
    }

    #[test]
    fn duplicate_events_collapse_in_seen_sets() {
        let ev = |item, rating| Interaction {
            user: 7,
            item,
            rating,
            time: 0,
        };
        let data = [ev(2, None), ev(2, None), ev(2, Some(4.0)), ev(0, None)];
        let m = train(&data, 3, Algo::Als, &Params::default_for(Algo::Als)).expect("als");
        assert_eq!(m.seen(7), &[0, 2]);
        assert_eq!(m.item_counts, vec![1, 0, 1]);
        assert_eq!(m.recommend(7, 5, true), vec![1]);
    }

    fn cohort_model() -> (Vec<Interaction>, Model) {
        // Group g (u % 3) likes items 10g .. 10g+10; its age band says so.
        let data = planted(150, 30, 3);
        let bands = ["18-24", "25-34", "35-44"];
        let keys: HashMap<u32, String> = (0..150)
            .map(|u| (1000 + u, format!("age={}", bands[(u % 3) as usize])))
            .collect();
        let p = Params {
            cohort_prior: Some(1.0),
            ..Params::default_for(Algo::Hybrid)
        };
        assert_eq!(p.cohorts.as_deref(), Some("age"));
        let m = train_with_cohorts(&data, 30, Algo::Hybrid, &p, &keys).expect("train");
        (data, m)
    }

    #[test]
    fn a_cold_user_gets_their_cohorts_favourites() {
        let (data, m) = cohort_model();
        assert_eq!(
            m.cohort_sizes(),
            [("age=18-24", 50), ("age=25-34", 50), ("age=35-44", 50)]
        );
        for (g, key) in ["age=18-24", "age=25-34", "age=35-44"].iter().enumerate() {
            let top = m.recommend_in(5000, Some(key), 5, true);
            assert!(top.iter().all(|i| *i as usize / 10 == g), "{key}: {top:?}");
            // Past the cohort's list the global one fills in, no repeats.
            let all = m.recommend_in(5000, Some(key), 30, true);
            let mut sorted = all.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..30).collect::<Vec<u32>>(), "{key}");
        }
        // An unknown cohort, or none: the global list.
        assert_eq!(
            m.recommend_in(5000, Some("age=56-plus"), 5, true),
            m.popular(5)
        );
        assert_eq!(m.recommend_in(5000, None, 5, true), m.popular(5));
        // A known user is answered by the model, whatever the cohort.
        assert_eq!(
            m.recommend_in(1000, Some("age=35-44"), 5, true),
            m.recommend(1000, 5, true)
        );
        // No attributes known: no cohorts, and the model is what it was.
        let plain =
            train(&data, 30, Algo::Hybrid, &Params::default_for(Algo::Hybrid)).expect("train");
        assert!(plain.cohorts.is_empty());
        assert_eq!(plain.item_item, m.item_item);
        assert_eq!(plain.item_scores, m.item_scores);
        // Same input, same lists.
        assert_eq!(cohort_model().1, m);
    }

    #[test]
    fn cohort_parameters_are_checked() {
        let data = planted(10, 9, 3);
        let bad = |p: Params, algo: Algo, want: &str| {
            let e = train(&data, 9, algo, &p).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        };
        let h = Params::default_for(Algo::Hybrid);
        bad(
            Params {
                cohorts: Some("gender,age".into()),
                ..h.clone()
            },
            Algo::Hybrid,
            "in this order",
        );
        bad(
            Params {
                cohort_prior: None,
                ..h.clone()
            },
            Algo::Hybrid,
            "cohort_prior",
        );
        bad(
            Params {
                cohort_prior: Some(f32::NAN),
                ..h.clone()
            },
            Algo::Hybrid,
            "cohort_prior",
        );
        bad(
            Params {
                cohorts: Some("age".into()),
                cohort_prior: Some(1.0),
                ..Params::default_for(Algo::Als)
            },
            Algo::Als,
            "applies to recent, ease and hybrid",
        );
    }

    #[test]
    fn a_model_with_cohorts_round_trips_in_format_3_and_bad_lists_are_refused() {
        let (_, m) = cohort_model();
        let header = super::super::Header {
            dataset_digest: "d".into(),
            code_commit: "c".into(),
            created: "t".into(),
            item_names: (0..30).map(|i| format!("m{i}")).collect(),
        };
        let mut buf = Vec::new();
        super::super::save(&m, &header, &mut buf).expect("save");
        assert!(buf.starts_with(b"RECSYS-MODEL 3 "));
        let (_, back) = super::super::load(&buf[..]).expect("load");
        assert_eq!(back, m);
        let mut bad = m.clone();
        bad.cohorts[1].items[0] = 30;
        let mut buf = Vec::new();
        super::super::save(&bad, &header, &mut buf).expect("save");
        let e = super::super::load(&buf[..]).unwrap_err().to_string();
        assert!(e.contains("cohorts") && e.contains("item 30 >= 30"), "{e}");
        let mut bad = m.clone();
        bad.cohorts.swap(0, 1);
        let mut buf = Vec::new();
        super::super::save(&bad, &header, &mut buf).expect("save");
        let e = super::super::load(&buf[..]).unwrap_err().to_string();
        assert!(e.contains("not strictly increasing"), "{e}");
    }
}
