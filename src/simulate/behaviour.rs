//! What a simulated user does with an answer: a pure function of the
//! person, their random stream and the list they were shown.
//!
//! Times here are *simulated* milliseconds since the start of the run.
//!
//! - The user reads the list top-down; an item at rank `r` (of the first
//!   20) catches their eye with probability `ATTENTION^r`, and is then
//!   chosen with a probability rising with its hidden affinity `z`:
//!   `PICK_MAX · σ(PICK_SLOPE · (z − PICK_MIDPOINT))`, a tenth of that for a
//!   movie they have already seen. The first chosen item is watched.
//! - Nothing chosen: with probability `OFF_LIST` they watch one of their
//!   favourites that was not on the list; otherwise they leave and come back
//!   for another list after an exponential pause (mean `RETURN_MEAN_MS`).
//! - Watching starts after a think time of 5–60 s, one stream line per
//!   minute of the movie; each minute they stop with a hazard that falls
//!   with affinity, else they watch to the end (movies last 80–149 min).
//! - Afterwards they rate it with probability 0.3 (0.6 when finished):
//!   `round(3 + 1.1 z + 0.6 ε)` within 1–5, 10–90 s after the last minute,
//!   and ask for a new list 30 s–5 min later.

use super::taste::{Person, gauss};
use crate::model::Rng;

const ATTENTION: f64 = 0.85;
const PICK_MAX: f64 = 0.5;
const PICK_SLOPE: f64 = 2.0;
const PICK_MIDPOINT: f64 = 2.2;
const SEEN_FACTOR: f64 = 0.1;
const OFF_LIST: f64 = 0.3;
const RETURN_MEAN_MS: f64 = 5.0 * 60_000.0;
/// Ranks a user looks at.
const LOOKED_AT: usize = 20;
/// Affinity of a movie the simulation does not know (not in MovieLens).
const UNKNOWN_Z: f32 = -1.0;

/// One thing the user did (simulated ms since the start).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Act {
    Watch { at: i64, item: u32, minute: u32 },
    Rate { at: i64, item: u32, rating: u8 },
}

/// How a user reacted to one list.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Reaction {
    pub(crate) acts: Vec<Act>,
    /// Rank of the watched item when it came from the list.
    pub(crate) picked_rank: Option<usize>,
    pub(crate) off_list: bool,
    pub(crate) rated: bool,
    /// When the user asks for a new list (simulated ms); `None` = gone.
    pub(crate) next_request: Option<i64>,
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn uniform(rng: &mut Rng, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.unit_f64()
}

/// Length of a movie in minutes: fixed per movie (FNV-1a of its index).
pub(crate) fn runtime(item: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in item.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    80 + (h % 70) as u32
}

/// The user's first request: uniform over the request period.
pub(crate) fn arrival(rng: &mut Rng, period_ms: i64) -> i64 {
    (rng.unit_f64() * period_ms as f64) as i64
}

/// React to `items` (catalogue indices, `None` for a movie the simulation
/// does not know) answered at `now`; requests stop at `period_ms`.
pub(crate) fn react(
    p: &Person,
    items: &[Option<u32>],
    rng: &mut Rng,
    now: i64,
    period_ms: i64,
) -> Reaction {
    let mut out = Reaction::default();
    let mut pick = None;
    for (r, item) in items.iter().take(LOOKED_AT).enumerate() {
        let z = item.map_or(UNKNOWN_Z, |i| p.taste[i as usize]);
        let mut q = ATTENTION.powi(r as i32)
            * PICK_MAX
            * sigmoid(PICK_SLOPE * (f64::from(z) - PICK_MIDPOINT));
        if item.is_some_and(|i| p.has_seen(i)) {
            q *= SEEN_FACTOR;
        }
        // Draw for every rank looked at, so the random stream does not
        // depend on where the choice fell.
        let u = rng.unit_f64();
        if pick.is_none() && u < q {
            pick = Some((r, *item));
        }
    }
    let chosen = match pick {
        Some((r, Some(i))) => {
            out.picked_rank = Some(r);
            Some(i)
        }
        Some((_, None)) => None,
        None if !p.favourites.is_empty() && rng.unit_f64() < OFF_LIST => {
            let on_list: Vec<u32> = items.iter().flatten().copied().collect();
            let pool: Vec<u32> = p
                .favourites
                .iter()
                .copied()
                .filter(|i| !on_list.contains(i))
                .collect();
            if pool.is_empty() {
                None
            } else {
                out.off_list = true;
                Some(pool[rng.below(pool.len() as u64) as usize])
            }
        }
        None => None,
    };
    let Some(item) = chosen else {
        let back = now + (-RETURN_MEAN_MS * (1.0 - rng.unit_f64()).ln()) as i64 + 1_000;
        out.next_request = (back < period_ms).then_some(back);
        return out;
    };
    let z = f64::from(p.taste[item as usize]);
    let start = now + uniform(rng, 5_000.0, 60_000.0) as i64;
    let length = runtime(item);
    let hazard = 0.003 + 0.04 * (1.0 - sigmoid(1.5 * z));
    let mut last = start;
    let mut finished = true;
    for minute in 0..length {
        last = start + i64::from(minute) * 60_000;
        out.acts.push(Act::Watch {
            at: last,
            item,
            minute,
        });
        if rng.unit_f64() < hazard {
            finished = minute + 1 == length;
            break;
        }
    }
    let p_rate = if finished { 0.6 } else { 0.3 };
    let mut end = last + 60_000;
    if rng.unit_f64() < p_rate {
        let rating = (3.0 + 1.1 * z + 0.6 * gauss(rng)).round().clamp(1.0, 5.0) as u8;
        end = last + uniform(rng, 10_000.0, 90_000.0) as i64;
        out.acts.push(Act::Rate {
            at: end,
            item,
            rating,
        });
        out.rated = true;
    }
    let back = end + uniform(rng, 30_000.0, 300_000.0) as i64;
    out.next_request = (back < period_ms).then_some(back);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(taste: Vec<f32>) -> Person {
        let n = taste.len() as u32;
        Person {
            id: 1,
            favourites: (0..n.min(5)).collect(),
            taste,
            seen: Vec::new(),
        }
    }

    #[test]
    fn liked_lists_are_watched_more_often_and_reactions_are_seeded() {
        let liked = person(vec![3.0; 20]);
        let disliked = person(vec![-1.0; 20]);
        let items: Vec<Option<u32>> = (0..20).map(Some).collect();
        let picks = |p: &Person| {
            (0..2000u64)
                .filter(|s| {
                    let mut rng = Rng::new(*s);
                    react(p, &items, &mut rng, 0, 600_000).picked_rank.is_some()
                })
                .count()
        };
        let (a, b) = (picks(&liked), picks(&disliked));
        assert!(a > 1500 && b < 300, "liked {a}, disliked {b}");
        let r1 = react(&liked, &items, &mut Rng::new(9), 1_000, 600_000);
        let r2 = react(&liked, &items, &mut Rng::new(9), 1_000, 600_000);
        assert_eq!(r1, r2);
        // Watch lines are one simulated minute apart, after the answer.
        let watches: Vec<i64> = r1
            .acts
            .iter()
            .filter_map(|a| match a {
                Act::Watch { at, .. } => Some(*at),
                _ => None,
            })
            .collect();
        assert!(!watches.is_empty() && watches[0] >= 1_000 + 5_000);
        assert!(watches.windows(2).all(|w| w[1] - w[0] == 60_000));
        // No new request after the request period.
        assert!(r1.next_request.is_none_or(|t| t < 600_000));
    }

    #[test]
    fn runtimes_are_feature_length() {
        assert!((0..1682).all(|i| (80..150).contains(&runtime(i))));
    }
}
