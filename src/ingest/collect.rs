//! Turning consumed messages into dataset rows: pure, no I/O.
//!
//! One Kafka message is one stream line. Every message counts, whatever
//! its content; a message that does not parse (an empty one included) is
//! set aside in the quarantine with its partition, offset and reason.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::dataset::{DataEvent, EventKind, RequestEvent};
use crate::stream::{Event, ParseError, parse_bytes};

/// Longest stretch of a rejected message kept in the quarantine file.
pub(crate) const MAX_QUARANTINED_BYTES: usize = 4096;

/// A message that did not parse.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quarantined {
    pub partition: i32,
    pub offset: i64,
    /// [`ParseError::kind`].
    pub kind: &'static str,
    pub reason: String,
    /// The message as text (invalid UTF-8 replaced), cut at
    /// [`MAX_QUARANTINED_BYTES`].
    pub line: String,
    /// Size of the whole message in bytes.
    pub bytes: usize,
}

/// The offsets consumed from one partition, both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PartitionRange {
    pub first: i64,
    pub last: i64,
    pub messages: u64,
}

#[derive(Debug, Default)]
pub struct Collector {
    pub messages: u64,
    pub events: Vec<DataEvent>,
    pub requests: Vec<RequestEvent>,
    pub watch: u64,
    pub rate: u64,
    pub recommendation: u64,
    pub quarantine: Vec<Quarantined>,
    /// Malformed messages by [`ParseError::kind`].
    pub violations: BTreeMap<&'static str, u64>,
    pub ranges: BTreeMap<i32, PartitionRange>,
}

impl Collector {
    pub fn new() -> Collector {
        Collector::default()
    }

    /// Take one message. `payload` is `None` for a message without a value.
    pub fn push(&mut self, partition: i32, offset: i64, payload: Option<&[u8]>) {
        self.messages += 1;
        match self.ranges.get_mut(&partition) {
            Some(r) => {
                r.first = r.first.min(offset);
                r.last = r.last.max(offset);
                r.messages += 1;
            }
            None => {
                self.ranges.insert(
                    partition,
                    PartitionRange {
                        first: offset,
                        last: offset,
                        messages: 1,
                    },
                );
            }
        }
        let bytes = payload.unwrap_or(&[]);
        match parse_bytes(bytes) {
            Ok(ev) => self.take(ev),
            Err(e) => self.reject(partition, offset, bytes, &e),
        }
    }

    fn take(&mut self, ev: Event<'_>) {
        match ev {
            Event::Watch {
                time_ms,
                user,
                movie,
                minute,
            } => {
                self.watch += 1;
                self.events.push(DataEvent {
                    time_ms,
                    user,
                    movie: movie.into_owned(),
                    kind: EventKind::Watch,
                    value: minute,
                });
            }
            Event::Rate {
                time_ms,
                user,
                movie,
                rating,
            } => {
                self.rate += 1;
                self.events.push(DataEvent {
                    time_ms,
                    user,
                    movie: movie.into_owned(),
                    kind: EventKind::Rate,
                    value: u32::from(rating),
                });
            }
            Event::Recommendation {
                time_ms,
                user,
                status,
                items,
                latency_ms,
                ..
            } => {
                self.recommendation += 1;
                self.requests.push(RequestEvent {
                    time_ms,
                    user,
                    status,
                    latency_ms,
                    items: items.into_iter().map(|s| s.into_owned()).collect(),
                });
            }
        }
    }

    fn reject(&mut self, partition: i32, offset: i64, bytes: &[u8], e: &ParseError) {
        *self.violations.entry(e.kind()).or_insert(0) += 1;
        let mut cut = bytes.len().min(MAX_QUARANTINED_BYTES);
        // Do not split a UTF-8 sequence at the cut (lossy decoding would
        // otherwise invent a replacement character at the end).
        while cut < bytes.len() && cut > 0 && (bytes[cut] & 0xC0) == 0x80 {
            cut -= 1;
        }
        self.quarantine.push(Quarantined {
            partition,
            offset,
            kind: e.kind(),
            reason: e.to_string(),
            line: String::from_utf8_lossy(&bytes[..cut]).into_owned(),
            bytes: bytes.len(),
        });
    }

    pub fn quarantined(&self) -> u64 {
        self.quarantine.len() as u64
    }

    /// Ratings outside 1-5 (rejected as `rating_out_of_range`).
    pub fn out_of_range_ratings(&self) -> u64 {
        self.violations
            .get("rating_out_of_range")
            .copied()
            .unwrap_or(0)
    }

    /// The quarantine as JSON lines.
    pub(crate) fn quarantine_jsonl(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.quarantine.len() * 128);
        for q in &self.quarantine {
            if serde_json::to_writer(&mut out, q).is_ok() {
                out.push(b'\n');
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_message_and_sets_bad_ones_aside() {
        let mut c = Collector::new();
        c.push(
            0,
            10,
            Some(b"2024-01-01T00:00:00,1,GET /data/m/toy+story+1995/3.mpg"),
        );
        c.push(
            0,
            11,
            Some(b"2024-01-01T00:00:01.5,2,GET /rate/toy+story+1995=4\n"),
        );
        c.push(
            1,
            5,
            Some(b"2024-01-01T00:00:02,3,recommendation request h:8082, status 200, result: a+1, b+2, 12 ms"),
        );
        c.push(1, 6, None);
        c.push(1, 7, Some(b""));
        c.push(1, 8, Some(b"2024-01-01T00:00:00,1,GET /rate/x+1999=9"));
        c.push(0, 12, Some(b"\xff\xfegarbage"));
        assert_eq!(c.messages, 7);
        assert_eq!((c.watch, c.rate, c.recommendation), (1, 1, 1));
        assert_eq!(c.quarantined(), 4);
        assert_eq!(c.violations["empty"], 2);
        assert_eq!(c.violations["not_utf8"], 1);
        assert_eq!(c.out_of_range_ratings(), 1);
        assert_eq!(
            c.ranges[&0],
            PartitionRange {
                first: 10,
                last: 12,
                messages: 3
            }
        );
        assert_eq!(c.ranges[&1].messages, 4);
        assert_eq!(c.events[1].value, 4);
        assert_eq!(c.events[1].time_ms % 1000, 500);
        assert_eq!(c.requests[0].items, vec!["a+1", "b+2"]);
        let q = String::from_utf8(c.quarantine_jsonl()).expect("utf8");
        assert_eq!(q.lines().count(), 4);
        let first: serde_json::Value =
            serde_json::from_str(q.lines().next().expect("line")).expect("json");
        assert_eq!(first["partition"], 1);
        assert_eq!(first["offset"], 6);
        assert_eq!(first["kind"], "empty");
    }

    #[test]
    fn huge_garbage_is_cut() {
        let mut c = Collector::new();
        let big = "é".repeat(5000);
        c.push(0, 0, Some(big.as_bytes()));
        let q = &c.quarantine[0];
        assert_eq!(q.bytes, 10_000);
        assert!(q.line.len() <= MAX_QUARANTINED_BYTES);
        assert!(!q.line.contains('\u{FFFD}'));
    }
}
