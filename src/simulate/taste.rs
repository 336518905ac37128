//! The simulated population: who the users are and what they secretly like.
//!
//! Hidden tastes come from a *reference model*: implicit ALS (the project's
//! own trainer) fitted on every MovieLens 100K rating, with its own factor
//! count, regularisation and seed (the run's `--seed`). Served models never
//! see it; they only ever see what the simulated users do. A user's affinity
//! for a movie is the reference score standardised over the catalogue for
//! that user (a z-score: 0 is an average movie for them, 2 one of their
//! favourites), so one behaviour model fits light and heavy raters alike.
//!
//! Users `1..=943` are MovieLens's own (the served models may know them:
//! they were trained on the same users' ratings); with `--users` above 943
//! the rest are new users (ids from 944 on, cold for every served model)
//! whose tastes are a seeded MovieLens user's factors plus noise.

use std::collections::HashMap;

use super::{Result, SimulateError};
use crate::model::Rng;
use crate::model::{Algo, Interaction, Params};
use crate::movielens::MovieLens;

/// Movies a user picks from when nothing on the list appeals: their best
/// unseen ones by hidden affinity.
const OFF_LIST_POOL: usize = 100;

/// One simulated user.
pub(crate) struct Person {
    pub(crate) id: u64,
    /// Affinity z-score per catalogue item.
    pub(crate) taste: Vec<f32>,
    /// Items the user rated in MovieLens (already seen), sorted.
    pub(crate) seen: Vec<u32>,
    /// Best unseen items by affinity, for off-list watching.
    pub(crate) favourites: Vec<u32>,
}

impl Person {
    pub(crate) fn has_seen(&self, item: u32) -> bool {
        self.seen.binary_search(&item).is_ok()
    }
}

/// The catalogue and the people.
pub(crate) struct Population {
    /// Course-format movie ids, by item index.
    pub(crate) movies: Vec<String>,
    pub(crate) index: HashMap<String, u32>,
    pub(crate) people: Vec<Person>,
    /// How many of `people` are MovieLens users (the rest are new).
    pub(crate) known: usize,
}

/// Standardise `scores` (mean 0, standard deviation 1).
fn z_scores(scores: &mut [f32]) {
    let n = scores.len().max(1) as f64;
    let mean = scores.iter().map(|&s| f64::from(s)).sum::<f64>() / n;
    let var = scores
        .iter()
        .map(|&s| (f64::from(s) - mean).powi(2))
        .sum::<f64>()
        / n;
    let sd = var.sqrt().max(1e-9);
    for s in scores.iter_mut() {
        *s = ((f64::from(*s) - mean) / sd) as f32;
    }
}

/// A standard normal draw (Box–Muller).
pub(crate) fn gauss(rng: &mut Rng) -> f64 {
    let u1 = rng.unit_f64().max(1e-12);
    let u2 = rng.unit_f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

impl Population {
    /// Fit the reference model on all of `ml` and draw `users` people.
    pub(crate) fn build(ml: &MovieLens, users: u32, seed: u64) -> Result<Population> {
        if ml.ratings.is_empty() || ml.movies.is_empty() {
            return Err(SimulateError::Invalid(
                "the MovieLens data has no ratings or no movies".into(),
            ));
        }
        let movies: Vec<String> = ml.movies.iter().map(|m| m.movie_id.clone()).collect();
        let by_ml_id: HashMap<u32, u32> = ml
            .movies
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id, i as u32))
            .collect();
        let index: HashMap<String, u32> = movies
            .iter()
            .enumerate()
            .map(|(i, m)| (m.clone(), i as u32))
            .collect();
        let data: Vec<Interaction> = ml
            .ratings
            .iter()
            .filter_map(|r| {
                Some(Interaction {
                    user: r.user,
                    item: *by_ml_id.get(&r.item)?,
                    rating: Some(r.rating),
                    time: r.timestamp,
                })
            })
            .collect();
        let params = Params {
            factors: 48,
            epochs: 12,
            reg: 30.0,
            seed: seed ^ 0x5eed_7a57_e000_0000,
            ..Params::default_for(Algo::Als)
        };
        let reference = crate::model::train(&data, movies.len(), Algo::Als, &params)
            .map_err(|e| SimulateError::Invalid(format!("reference model: {e}")))?;
        let k = reference.k;
        let n_items = movies.len();
        let score = |factors: &[f32]| -> Vec<f32> {
            let mut s: Vec<f32> = reference
                .item_factors
                .chunks_exact(k)
                .map(|q| crate::model::dot(factors, q))
                .collect();
            z_scores(&mut s);
            s
        };
        let ml_users: Vec<u32> = reference.user_ids.clone();
        let mut rng = Rng::new(seed);
        // Which MovieLens users take part: all of them when there are
        // more simulated users than that, else a seeded sample.
        let mut order: Vec<usize> = (0..ml_users.len()).collect();
        rng.shuffle(&mut order);
        let known = (users as usize).min(ml_users.len());
        let mut chosen: Vec<usize> = order[..known].to_vec();
        chosen.sort_unstable();
        let mut people = Vec::with_capacity(users as usize);
        for &u in &chosen {
            let f = &reference.user_factors[u * k..(u + 1) * k];
            let taste = score(f);
            let seen = reference.seen_row(u).to_vec();
            people.push(Person {
                id: u64::from(ml_users[u]),
                favourites: favourites(&taste, &seen),
                taste,
                seen,
            });
        }
        let first_new = u64::from(ml_users.last().copied().unwrap_or(0)) + 1;
        for j in 0..(users as usize - known) {
            let src = order[rng.below(order.len() as u64) as usize];
            let f = &reference.user_factors[src * k..(src + 1) * k];
            let norm = (f.iter().map(|x| x * x).sum::<f32>() / k.max(1) as f32).sqrt();
            let noisy: Vec<f32> = f
                .iter()
                .map(|x| x + (0.6 * f64::from(norm) * gauss(&mut rng)) as f32)
                .collect();
            let taste = score(&noisy);
            people.push(Person {
                id: first_new + j as u64,
                favourites: favourites(&taste, &[]),
                taste,
                seen: Vec::new(),
            });
        }
        debug_assert!(people.iter().all(|p| p.taste.len() == n_items));
        Ok(Population {
            movies,
            index,
            people,
            known,
        })
    }
}

fn favourites(taste: &[f32], seen: &[u32]) -> Vec<u32> {
    let mut v: Vec<u32> = (0..taste.len() as u32)
        .filter(|i| seen.binary_search(i).is_err())
        .collect();
    v.sort_by(|a, b| {
        taste[*b as usize]
            .total_cmp(&taste[*a as usize])
            .then(a.cmp(b))
    });
    v.truncate(OFF_LIST_POOL);
    v
}
