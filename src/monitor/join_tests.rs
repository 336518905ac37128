use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

const MIN: i64 = 60_000;

fn cfg() -> JoinConfig {
    JoinConfig {
        window_ms: 60 * MIN,
        lateness_ms: 5 * MIN,
        lookback_ms: 30 * MIN,
        match_slack_ms: 10_000,
    }
}

fn answer(id: u128, t: i64, user: u64, items: &[&str], model: &str) -> Answer {
    Answer {
        id,
        time_ms: t,
        user,
        items: items.iter().map(|s| s.to_string()).collect(),
        model: model.into(),
        dataset: "dataset_1".into(),
        arm: "ab".into(),
        fallback: false,
    }
}

fn closed(out: Vec<Output>) -> Vec<Outcome> {
    out.into_iter()
        .filter_map(|o| match o {
            Output::Closed(c) => Some(c),
            Output::Matched(_) => None,
        })
        .collect()
}

/// Move both sources' event time to `t` (the watermark to t - lateness).
fn tick(j: &mut Join, t: i64) {
    j.rate(t);
    j.answer(&answer(u128::MAX - t as u128, t, 999_999, &[], "tick"));
}

#[test]
fn a_watch_inside_the_window_converts_once_and_closes_with_the_watermark() {
    let mut j = Join::new(cfg());
    let items: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = items.iter().map(String::as_str).collect();
    j.answer(&answer(1, 0, 7, &refs, "model_v1"));
    // Rank 14 first (top-20 only), then rank 3 (top-10 too), then rank 3 again.
    assert!(!j.watch(10 * MIN, 7, "m14").late);
    j.watch(20 * MIN, 7, "m3");
    j.watch(21 * MIN, 7, "m3");
    // Another user's watch and a watch after the window do nothing.
    j.watch(5 * MIN, 8, "m1");
    tick(&mut j, 64 * MIN);
    assert!(
        closed(j.drain()).is_empty(),
        "window still open (watermark 59 min)"
    );
    tick(&mut j, 65 * MIN);
    let out = closed(j.drain());
    assert_eq!(out.len(), 1, "{out:?}");
    let o = &out[0];
    assert!(o.converted_10 && o.converted_20 && !o.continued_20);
    assert_eq!(
        o.first_conversion,
        Some((10 * MIN, 14)),
        "the first conversion wins"
    );
    let c = j.counters();
    assert_eq!((c.closed, c.converted_10, c.converted_20), (1, 1, 1));
}

#[test]
fn top_10_and_top_20_are_counted_apart_and_window_edges_are_half_open() {
    let mut j = Join::new(cfg());
    let items: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = items.iter().map(String::as_str).collect();
    j.answer(&answer(1, 0, 7, &refs, "v1"));
    j.answer(&answer(2, 0, 8, &refs, "v1"));
    j.watch(MIN, 7, "m12");
    // Exactly at the end of the window: outside.
    j.watch(60 * MIN, 8, "m0");
    tick(&mut j, 70 * MIN);
    let out = closed(j.drain());
    let by: BTreeMap<u128, &Outcome> = out.iter().map(|o| (o.id, o)).collect();
    assert!(!by[&1].converted_10 && by[&1].converted_20);
    assert!(!by[&2].converted_10 && !by[&2].converted_20);
}

#[test]
fn a_movie_already_being_watched_is_continued_not_converted() {
    let mut j = Join::new(cfg());
    j.watch(-2 * MIN, 7, "a");
    j.answer(&answer(1, 0, 7, &["a", "b"], "v1"));
    j.watch(MIN, 7, "a");
    // A pre-answer watch arriving after the in-window one still counts.
    j.answer(&answer(2, 0, 8, &["a", "b"], "v1"));
    j.watch(2 * MIN, 8, "a");
    j.watch(-MIN, 8, "a");
    // Watched long before (beyond the lookback): a conversion.
    j.answer(&answer(3, 0, 9, &["a"], "v1"));
    j.watch(-31 * MIN, 9, "a");
    j.watch(3 * MIN, 9, "a");
    tick(&mut j, 70 * MIN);
    let out = closed(j.drain());
    let by: BTreeMap<u128, &Outcome> = out.iter().map(|o| (o.id, o)).collect();
    for id in [1, 2] {
        assert!(!by[&id].converted_20 && by[&id].continued_20, "{id}");
    }
    assert!(by[&3].converted_20 && !by[&3].continued_20);
    assert_eq!(j.counters().continued_20, 2);
}

#[test]
fn late_events_are_counted_and_left_out() {
    let mut j = Join::new(cfg());
    j.answer(&answer(1, 0, 7, &["a"], "v1"));
    tick(&mut j, 20 * MIN);
    assert_eq!(j.watermark(), 15 * MIN);
    // In the window, but below the watermark: late.
    assert!(j.watch(10 * MIN, 7, "a").late);
    assert!(j.answer(&answer(2, 14 * MIN, 8, &["a"], "v1")).late);
    assert!(!j.watch(15 * MIN, 9, "a").late);
    tick(&mut j, 70 * MIN);
    let out = closed(j.drain());
    let one = out.iter().find(|o| o.id == 1).expect("answer 1 closed");
    assert!(!one.converted_20);
    assert!(out.iter().all(|o| o.id != 2), "a late answer is not joined");
    let c = j.counters();
    assert_eq!((c.late_events, c.late_answers), (1, 1));
}

#[test]
fn the_watermark_waits_for_the_slower_source_unless_it_is_idle() {
    let mut j = Join::new(cfg());
    j.answer(&answer(1, 0, 7, &["a"], "v1"));
    j.rate(200 * MIN);
    // The request log is at 0: nothing may close yet.
    assert_eq!(j.watermark(), -5 * MIN);
    assert!(closed(j.drain()).is_empty());
    j.set_idle(Source::Requests, true);
    assert_eq!(j.watermark(), 195 * MIN);
    assert_eq!(closed(j.drain()).len(), 1);
    // The watermark never goes back when the source speaks again.
    j.answer(&answer(2, 300 * MIN, 7, &["a"], "v1"));
    assert_eq!(j.watermark(), 195 * MIN);
}

#[test]
fn stream_lines_are_matched_to_answers_or_counted_unlogged() {
    let mut j = Join::new(cfg());
    j.answer(&answer(1, 1_000, 7, &["a", "b"], "v1"));
    // The stream line arrives before a second, later answer.
    j.stream_request(1_200, 7, 200, 120, &["a", "b"]);
    j.stream_request(5_000, 8, 200, 90, &["a"]);
    j.stream_request(5_000, 9, 504, 0, &[]);
    tick(&mut j, 10 * MIN);
    let matched: Vec<StreamMatch> = j
        .drain()
        .into_iter()
        .filter_map(|o| match o {
            Output::Matched(m) => Some(m),
            Output::Closed(_) => None,
        })
        .collect();
    assert_eq!(matched.len(), 3, "{matched:?}");
    assert_eq!(matched[0].served, Some(("v1".into(), "ab".into())));
    assert_eq!(matched[1].served, None);
    assert_eq!(matched[2].served, None);
    let c = j.counters();
    assert_eq!((c.matched, c.unlogged, c.stream_requests), (1, 1, 3));
}

#[test]
fn state_is_evicted_as_windows_close_so_memory_stays_flat() {
    let mut j = Join::new(cfg());
    let mut peak = (0, 0);
    // 20 simulated hours: an answer and ten watches a minute.
    for minute in 0..(20 * 60) {
        let t = minute * MIN;
        let user = (minute % 50) as u64;
        j.answer(&answer(minute as u128, t, user, &["a", "b", "c"], "v1"));
        for k in 0..10 {
            j.watch(
                t + k * 1000,
                user + k as u64,
                &format!("movie{}", minute % 97),
            );
        }
        j.drain();
        if minute > 3 * 60 {
            peak = (peak.0.max(j.open_answers()), peak.1.max(j.history_len()));
        }
    }
    // Open answers: one window plus the lateness of answers.
    assert!(peak.0 <= 66, "open answers {}", peak.0);
    // History: watches of the last lookback + lateness, per (user, movie).
    assert!(peak.1 <= 10 * 36 + 10, "history {}", peak.1);
}

// ---------------------------------------------------------------------------
// The join against a batch recomputation, and a restart anywhere.

#[derive(Debug, Clone)]
enum In {
    Answer(Answer),
    Watch(i64, u64, String),
    Rec(i64, u64, u16, Vec<String>),
}

impl In {
    fn time(&self) -> i64 {
        match self {
            In::Answer(a) => a.time_ms,
            In::Watch(t, ..) | In::Rec(t, ..) => *t,
        }
    }
}

fn feed(j: &mut Join, i: &In) -> bool {
    match i {
        In::Answer(a) => j.answer(a).late,
        In::Watch(t, u, m) => j.watch(*t, *u, m).late,
        In::Rec(t, u, s, items) => {
            let refs: Vec<&str> = items.iter().map(String::as_str).collect();
            j.stream_request(*t, *u, *s, 50, &refs).late
        }
    }
}

/// The semantics of the module docs, computed over the whole set of
/// non-late inputs at once.
fn batch(cfg: JoinConfig, inputs: &[(In, bool)]) -> BTreeMap<u128, (bool, bool, bool)> {
    let watches: Vec<(i64, u64, &str)> = inputs
        .iter()
        .filter(|(_, late)| !late)
        .filter_map(|(i, _)| match i {
            In::Watch(t, u, m) => Some((*t, *u, m.as_str())),
            _ => None,
        })
        .collect();
    let mut out = BTreeMap::new();
    for (i, late) in inputs {
        let In::Answer(a) = i else { continue };
        if *late || a.model == "tick" {
            continue;
        }
        let mut conv = [false; 2];
        let mut cont = false;
        let mut seen = Vec::new();
        for (r, item) in a.items.iter().take(MAX_ITEMS).enumerate() {
            if seen.contains(item) {
                continue;
            }
            seen.push(item.clone());
            let mine = |lo: i64, hi: i64| {
                watches
                    .iter()
                    .any(|&(t, u, m)| u == a.user && m == item && t >= lo && t < hi)
            };
            let before = mine(a.time_ms - cfg.lookback_ms, a.time_ms);
            let inside = mine(a.time_ms, a.time_ms + cfg.window_ms);
            if inside && before {
                cont = true;
            }
            if inside && !before {
                conv[1] = true;
                if r < 10 {
                    conv[0] = true;
                }
            }
        }
        out.insert(a.id, (conv[0], conv[1], cont));
    }
    out
}

fn outcomes(outs: &[Output]) -> BTreeMap<u128, (bool, bool, bool)> {
    outs.iter()
        .filter_map(|o| match o {
            Output::Closed(c) if c.model != "tick" => {
                Some((c.id, (c.converted_10, c.converted_20, c.continued_20)))
            }
            _ => None,
        })
        .collect()
}

/// Inputs in event-time order, then shuffled by bounded arrival jitter
/// (some beyond the allowed lateness) and a skew between the two sources,
/// then a final tick far in the future.
fn stream_strategy() -> impl Strategy<Value = Vec<In>> {
    let event = (
        0u8..10,
        0i64..400,
        0u64..4,
        0usize..12,
        0u8..3,
        any::<u64>(),
    );
    (prop::collection::vec(event, 1..160), 0u64..1000).prop_map(|(raw, seed)| {
        let mut v: Vec<(i64, In)> = Vec::new();
        for (n, (kind, minute, user, movie, model, salt)) in raw.into_iter().enumerate() {
            let t = minute * MIN + (salt % 60_000) as i64;
            let input = if kind < 3 {
                let items: Vec<String> = (0..(1 + salt % 22))
                    .map(|k| format!("m{}", (movie as u64 + k * (1 + salt % 5)) % 14))
                    .collect();
                let mut a = answer(n as u128, t, user, &[], &format!("v{model}"));
                a.items = items;
                In::Answer(a)
            } else if kind < 9 {
                In::Watch(t, user, format!("m{movie}"))
            } else {
                In::Rec(t, user, 200, vec![format!("m{movie}")])
            };
            // Arrival: up to 8 minutes early or late, and the request log
            // running ahead of the stream, in step, or behind it.
            let jitter =
                ((salt ^ seed).wrapping_mul(2_654_435_761) % (16 * 60_000)) as i64 - 8 * 60_000;
            let skew = match (&input, seed % 3) {
                (In::Answer(_), 0) => -40 * MIN,
                (In::Answer(_), 1) => 20 * MIN,
                _ => 0,
            };
            v.push((t + jitter + skew, input));
        }
        v.sort_by_key(|(arrive, _)| *arrive);
        let mut out: Vec<In> = v.into_iter().map(|(_, i)| i).collect();
        let end = 10_000 * MIN;
        out.push(In::Watch(end, 1_000_000, "end".into()));
        out.push(In::Answer(answer(u128::MAX, end, 1_000_000, &[], "tick")));
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn streaming_outcomes_equal_the_batch_recomputation(inputs in stream_strategy()) {
        let mut j = Join::new(cfg());
        let mut tagged = Vec::new();
        let mut outs = Vec::new();
        for i in &inputs {
            let late = feed(&mut j, i);
            tagged.push((i.clone(), late));
            outs.extend(j.drain());
        }
        // Every non-late answer closed exactly once.
        let ids: Vec<u128> = outs.iter().filter_map(|o| match o {
            Output::Closed(c) if c.model != "tick" => Some(c.id),
            _ => None,
        }).collect();
        let mut uniq = ids.clone();
        uniq.sort();
        uniq.dedup();
        prop_assert_eq!(ids.len(), uniq.len());
        prop_assert_eq!(outcomes(&outs), batch(cfg(), &tagged));
        prop_assert_eq!(j.open_answers(), 1, "only the final tick stays open");
        let late = tagged.iter().filter(|(_, l)| *l).count() as u64;
        let c = j.counters();
        prop_assert_eq!(c.late_events + c.late_answers, late);
    }

    #[test]
    fn a_restart_anywhere_replaying_stored_inputs_changes_nothing(
        inputs in stream_strategy(),
        cut in 0.0f64..1.0,
    ) {
        let cut = ((inputs.len() as f64) * cut) as usize;
        let mut whole = Join::new(cfg());
        let mut expect = Vec::new();
        for i in &inputs {
            feed(&mut whole, i);
            expect.extend(whole.drain());
        }
        // First run: stops after `cut` inputs; the sink has stored them
        // with their late flags, the outputs, the marks and the counters.
        let mut first = Join::new(cfg());
        let mut got = Vec::new();
        let mut stored = Vec::new();
        for i in &inputs[..cut] {
            let late = feed(&mut first, i);
            stored.push((i.clone(), late));
            got.extend(first.drain());
        }
        let (marks, counters) = (first.marks(), first.counters());
        drop(first);
        let mut second = Join::recovering(cfg());
        let from = second.replay_from(&marks);
        for (i, late) in &stored {
            if !late && i.time() >= from {
                feed(&mut second, i);
            }
        }
        second.restore(marks, counters);
        prop_assert!(second.drain().is_empty());
        for i in &inputs[cut..] {
            feed(&mut second, i);
            got.extend(second.drain());
        }
        prop_assert_eq!(got, expect);
        prop_assert_eq!(second.counters(), whole.counters());
    }
}
