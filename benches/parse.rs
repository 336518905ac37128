//! Throughput of the stream parser on one thread.
//!
//! Generates about two million realistic watch and rate lines in memory
//! (nine watch lines to one rate line, as in the real stream), parses each
//! with `recsys::stream::parse_line` and prints lines/s and MB/s.
//! Run with `cargo bench --bench parse`.

use std::hint::black_box;
use std::time::Instant;

use recsys::stream::{Event, parse_line};

const LINES: usize = 2_000_000;
const ROUNDS: usize = 5;

#[path = "common/gen.rs"]
mod generator;
use generator::{Rng, TITLES};

fn generate() -> String {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut text = String::with_capacity(LINES * 80);
    for i in 0..LINES {
        let day = 1 + rng.below(28);
        let (h, m, s) = (rng.below(24), rng.below(60), rng.below(60));
        let time = if i % 2 == 0 {
            format!("2024-02-{day:02}T{h:02}:{m:02}:{s:02}")
        } else {
            format!(
                "2024-02-{day:02}T{h:02}:{m:02}:{s:02}.{:06}",
                rng.below(1_000_000)
            )
        };
        let user = rng.below(1_000_000);
        let title = TITLES[rng.below(TITLES.len() as u64) as usize];
        if rng.below(10) == 0 {
            let rating = 1 + rng.below(5);
            text.push_str(&format!("{time},{user},GET /rate/{title}={rating}\n"));
        } else {
            let minute = rng.below(180);
            text.push_str(&format!("{time},{user},GET /data/m/{title}/{minute}.mpg\n"));
        }
    }
    text
}

fn main() {
    let text = generate();
    let lines: Vec<&str> = text.lines().collect();
    let bytes = text.len();
    println!(
        "{} lines, {:.1} MB, {} rounds",
        lines.len(),
        bytes as f64 / 1e6,
        ROUNDS
    );

    let mut best = f64::INFINITY;
    for round in 1..=ROUNDS {
        let start = Instant::now();
        let (mut watches, mut rates, mut errors) = (0usize, 0usize, 0usize);
        for line in &lines {
            match black_box(parse_line(black_box(line))) {
                Ok(Event::Watch { .. }) => watches += 1,
                Ok(Event::Rate { .. }) => rates += 1,
                Ok(Event::Recommendation { .. }) | Err(_) => errors += 1,
            }
        }
        let secs = start.elapsed().as_secs_f64();
        best = best.min(secs);
        println!(
            "round {round}: {:.2} M lines/s, {:.0} MB/s ({watches} watch, {rates} rate, {errors} other)",
            lines.len() as f64 / secs / 1e6,
            bytes as f64 / secs / 1e6,
        );
        assert_eq!(errors, 0, "generated lines must all parse");
    }
    println!(
        "best: {:.2} M lines/s, {:.0} MB/s",
        lines.len() as f64 / best / 1e6,
        bytes as f64 / best / 1e6
    );
}
