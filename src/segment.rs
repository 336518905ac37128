//! The request-log segment format: the one module that knows how a
//! segment's lines look. The server's log writer (`serve::log`) writes
//! them with the functions here, the request index (`lineage::requests`)
//! and `audit`, `rebuild`, `pull`, `monitor` read them with
//! [`parse_segment`], and the keep-set (`workspace::roots`) asks
//! [`served_in_segment`] what a segment names.
//!
//! A segment is JSON lines:
//! - a header `{"recsys_log_segment":<format>,"name":..,"host":..,"opened":..}`
//!   (always first: [`SEGMENT_MAGIC`] tells a segment object from any other);
//! - format 2: `{"recsys_served":n,<ServedBy fields>}` defines what answered
//!   the request lines that follow with `"served":n`, once per segment;
//! - request lines `{"id":..,"time":..,"user":..,"served":n,"route":..,
//!   "status":..,"latency_us":..,"items":[..]}` (format 1 carried the
//!   served-by fields inline on every line; still read);
//! - `{"recsys_log_dropped":n,"time":..}` notes for answers the queue dropped.
//!
//! A leaf module: it depends on nothing else in the crate.

use std::collections::HashMap;
use std::io::Write as _;

use serde::{Deserialize, Serialize};

/// Request-log segments start with this (their header line).
pub(crate) const SEGMENT_MAGIC: &[u8] = b"{\"recsys_log_segment\":";

/// A format-2 line that defines a served-by number starts with this.
const SERVED_PREFIX: &[u8] = b"{\"recsys_served\"";

/// A note of dropped answers starts with this.
const DROPPED_PREFIX: &[u8] = b"{\"recsys_log_dropped\"";

/// Bumped when the segment layout changes incompatibly. Format 1 repeated
/// the served-by fields (model, dataset, code, config: ~400 bytes) on every
/// request line; format 2 defines each once per segment in a
/// `{"recsys_served":n,...}` line and request lines say `"served":n`.
/// Both are read.
pub(crate) const SEGMENT_FORMAT: u32 = 2;

/// A format-2 definition line: what answered the lines with `"served":n`.
#[derive(Debug, Deserialize)]
struct ServedLine {
    recsys_served: u64,
    #[serde(flatten)]
    by: ServedBy,
}

/// A format-2 request line.
#[derive(Debug, Deserialize)]
struct RequestLine {
    id: String,
    time: i64,
    user: i64,
    served: u64,
    route: String,
    status: String,
    latency_us: i64,
    items: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("request log segment {label}: {reason}")]
    Bad { label: String, reason: String },
}

/// What answered a request. Empty strings mean unknown (a model registered
/// without a dataset input, a project without git).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServedBy {
    pub model: String,
    pub model_digest: String,
    pub dataset: String,
    pub dataset_digest: String,
    pub train_run: String,
    pub code_commit: String,
    pub config_digest: String,
}

/// One logged request, as written to the log and the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// UUID, hyphenated lower case.
    pub id: String,
    /// Unix milliseconds when the answer was produced.
    pub time: i64,
    pub user: i64,
    #[serde(flatten)]
    pub served: ServedBy,
    /// The config rule (and split arm) that routed the user.
    pub route: String,
    /// `ok`, `fallback_unknown_user`, `fallback_error`.
    pub status: String,
    pub latency_us: i64,
    pub items: Vec<String>,
}

/// First line of every segment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SegmentHeader {
    /// Always first: see [`SEGMENT_MAGIC`].
    pub recsys_log_segment: u32,
    pub name: String,
    pub host: String,
    pub opened: i64,
}

/// The header line (with its newline) of a new segment.
pub(crate) fn header_line(header: &SegmentHeader) -> Vec<u8> {
    // Serialising plain strings and numbers cannot fail.
    let mut line = serde_json::to_vec(header).unwrap_or_default();
    line.push(b'\n');
    debug_assert!(line.starts_with(SEGMENT_MAGIC));
    line
}

/// `{"recsys_log_dropped":n,"time":t}` and its newline.
pub(crate) fn dropped_line(n: u64, time_ms: i64) -> String {
    format!("{{\"recsys_log_dropped\":{n},\"time\":{time_ms}}}\n")
}

/// Does this line define a served-by number (format 2)?
pub(crate) fn is_served_line(line: &[u8]) -> bool {
    line.starts_with(SERVED_PREFIX)
}

/// `{"recsys_served":n,<fields>}`: what answered the lines that follow
/// with `"served":n`, defined once per segment.
pub(crate) fn write_served_line(buf: &mut Vec<u8>, n: u32, fields: &str) {
    let _ = write!(buf, "{{\"recsys_served\":{n},");
    buf.extend_from_slice(fields.as_bytes());
    buf.extend_from_slice(b"}\n");
}

/// The answer's item ids (joined by `,`) as a JSON array of strings, in
/// one pass when no id needs escaping (the usual case).
pub(crate) fn push_items(buf: &mut Vec<u8>, body: &[u8]) {
    if body.is_empty() {
        buf.extend_from_slice(b"[]");
        return;
    }
    if body
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        buf.reserve(body.len() * 3 + 4);
        buf.extend_from_slice(b"[\"");
        for (j, item) in body.split(|b| *b == b',').enumerate() {
            if j > 0 {
                buf.extend_from_slice(b"\",\"");
            }
            buf.extend_from_slice(item);
        }
        buf.extend_from_slice(b"\"]");
        return;
    }
    buf.push(b'[');
    for (j, item) in String::from_utf8_lossy(body).split(',').enumerate() {
        if j > 0 {
            buf.push(b',');
        }
        push_json_str(buf, item);
    }
    buf.push(b']');
}

/// A request line (format 2, with its newline), written by hand: this runs
/// for every answer. Returns where the `"served":n` field starts and ends,
/// so a self-contained copy (the Kafka line) can put the served-by fields
/// there instead.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_request_line(
    buf: &mut Vec<u8>,
    id: &str,
    time_ms: i64,
    user: u64,
    served: u32,
    route: &str,
    status: &str,
    latency_us: u64,
    items: &[u8],
) -> (usize, usize) {
    buf.extend_from_slice(b"{\"id\":\"");
    buf.extend_from_slice(id.as_bytes());
    let _ = write!(buf, "\",\"time\":{time_ms},\"user\":{user},");
    let head_end = buf.len();
    let _ = write!(buf, "\"served\":{served}");
    let tail_start = buf.len();
    buf.extend_from_slice(b",\"route\":");
    push_json_str(buf, route);
    buf.extend_from_slice(b",\"status\":");
    push_json_str(buf, status);
    let _ = write!(buf, ",\"latency_us\":{latency_us},\"items\":");
    push_items(buf, items);
    buf.extend_from_slice(b"}\n");
    (head_end, tail_start)
}

/// Append a JSON string (quoted, escaped).
pub(crate) fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    // Item ids and routes are nearly always plain: no escaping to do.
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
    {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
        return;
    }
    // Serialising a &str cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// Check the header of a segment's bytes; the header and the bytes after
/// its line.
fn read_header<'a>(
    label: &str,
    bytes: &'a [u8],
) -> Result<(SegmentHeader, &'a [u8]), SegmentError> {
    let bad = |reason: String| SegmentError::Bad {
        label: label.to_string(),
        reason,
    };
    if !bytes.starts_with(SEGMENT_MAGIC) {
        return Err(bad("does not start with a segment header".into()));
    }
    let (first, rest) = match bytes.iter().position(|b| *b == b'\n') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[][..]),
    };
    let header: SegmentHeader =
        serde_json::from_slice(first).map_err(|e| bad(format!("header: {e}")))?;
    let format = header.recsys_log_segment;
    if !(1..=SEGMENT_FORMAT).contains(&format) {
        return Err(bad(format!(
            "format {format} is not supported (this recsys reads 1 to {SEGMENT_FORMAT})"
        )));
    }
    Ok((header, rest))
}

/// A parsed segment: its header and request records (lines that are not
/// request records, like drop notes, are skipped).
pub struct ParsedSegment {
    pub header: SegmentHeader,
    pub records: Vec<RequestRecord>,
    pub bad_lines: usize,
}

/// Parse a segment's bytes (a closed object, or an open file cut after its
/// last whole line).
pub fn parse_segment(label: &str, bytes: &[u8]) -> Result<ParsedSegment, SegmentError> {
    let (header, rest) = read_header(label, bytes)?;
    let lines = rest.split(|b| *b == b'\n');
    let format = header.recsys_log_segment;
    let mut records = Vec::new();
    let mut bad_lines = 0;
    let mut served: HashMap<u64, ServedBy> = HashMap::new();
    for line in lines {
        if line.is_empty() || line.starts_with(DROPPED_PREFIX) {
            continue;
        }
        if format == 1 {
            match serde_json::from_slice::<RequestRecord>(line) {
                Ok(r) => records.push(r),
                Err(_) => bad_lines += 1,
            }
            continue;
        }
        if is_served_line(line) {
            match serde_json::from_slice::<ServedLine>(line) {
                Ok(d) => {
                    served.insert(d.recsys_served, d.by);
                }
                Err(_) => bad_lines += 1,
            }
            continue;
        }
        // A request naming an undefined served-by cannot be explained.
        match serde_json::from_slice::<RequestLine>(line) {
            Ok(r) => match served.get(&r.served) {
                Some(by) => records.push(RequestRecord {
                    id: r.id,
                    time: r.time,
                    user: r.user,
                    served: by.clone(),
                    route: r.route,
                    status: r.status,
                    latency_us: r.latency_us,
                    items: r.items,
                }),
                None => bad_lines += 1,
            },
            Err(_) => bad_lines += 1,
        }
    }
    Ok(ParsedSegment {
        header,
        records,
        bad_lines,
    })
}

/// What a segment names: its header and every distinct served-by (model,
/// dataset, train run, code, config) its requests were answered by. Format
/// 2 defines each once, so only those lines are parsed; a format-1 segment
/// is read whole. A torn or unreadable request line names nothing new.
pub(crate) fn served_in_segment(
    label: &str,
    bytes: &[u8],
) -> Result<(SegmentHeader, Vec<ServedBy>), SegmentError> {
    let (header, rest) = read_header(label, bytes)?;
    let lines = rest.split(|b| *b == b'\n');
    let format = header.recsys_log_segment;
    let mut out: Vec<ServedBy> = Vec::new();
    for line in lines {
        let by = if format == 1 {
            if line.is_empty() || line.starts_with(DROPPED_PREFIX) {
                continue;
            }
            match serde_json::from_slice::<RequestRecord>(line) {
                Ok(r) => r.served,
                Err(_) => continue,
            }
        } else if is_served_line(line) {
            match serde_json::from_slice::<ServedLine>(line) {
                Ok(d) => d.by,
                Err(_) => continue,
            }
        } else {
            continue;
        };
        if !out.contains(&by) {
            out.push(by);
        }
    }
    Ok((header, out))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A served-by with every field set, for tests here and in the index.
    pub(crate) fn served() -> ServedBy {
        ServedBy {
            model: "model_v1".into(),
            model_digest: "m".repeat(64),
            dataset: "dataset_1".into(),
            dataset_digest: "d".repeat(64),
            train_run: "r".repeat(64),
            code_commit: "c".repeat(40),
            config_digest: "f".repeat(64),
        }
    }

    #[test]
    fn segments_of_format_1_and_2_parse_to_the_same_records() {
        let by = served();
        let fields = serde_json::to_value(&by).expect("json");
        let mut v1 = serde_json::json!({"id": "a", "time": 5, "user": 7, "route": "default",
            "status": "ok", "latency_us": 3, "items": ["1", "2"]});
        for (k, val) in fields.as_object().expect("object") {
            v1[k] = val.clone();
        }
        let one = format!(
            "{{\"recsys_log_segment\":1,\"name\":\"s\",\"host\":\"h\",\"opened\":1}}\n{v1}\n"
        );
        let inner = fields.to_string();
        let def = format!("{{\"recsys_served\":0,{}", &inner[1..]);
        let two = format!(
            "{{\"recsys_log_segment\":2,\"name\":\"s\",\"host\":\"h\",\"opened\":1}}\n{def}\n\
             {{\"recsys_log_dropped\":2,\"time\":4}}\n\
             {{\"id\":\"a\",\"time\":5,\"user\":7,\"served\":0,\"route\":\"default\",\"status\":\"ok\",\"latency_us\":3,\"items\":[\"1\",\"2\"]}}\n\
             {{\"id\":\"b\",\"time\":6,\"user\":8,\"served\":9,\"route\":\"default\",\"status\":\"ok\",\"latency_us\":3,\"items\":[]}}\n\
             {{\"id\":\"c\",\"time\":6,\"us\n"
        );
        let p1 = parse_segment("one", one.as_bytes()).expect("format 1");
        let p2 = parse_segment("two", two.as_bytes()).expect("format 2");
        // What each names, for the keep-set: the one served-by, either way.
        for text in [&one, &two] {
            let (h, named) = served_in_segment("s", text.as_bytes()).expect("served");
            assert_eq!((h.name.as_str(), named), ("s", vec![by.clone()]));
        }
        assert_eq!(p1.records, p2.records);
        assert_eq!(p2.records.len(), 1);
        assert_eq!(p2.records[0].served, by);
        assert_eq!(p2.records[0].items, ["1", "2"]);
        // An undefined served-by and a torn line are counted, not guessed.
        assert_eq!(p2.bad_lines, 2);
        let three = two.replace("\"recsys_log_segment\":2", "\"recsys_log_segment\":3");
        let err = parse_segment("three", three.as_bytes())
            .err()
            .expect("format 3");
        assert!(
            err.to_string().contains("format 3 is not supported"),
            "{err}"
        );
    }

    #[test]
    fn items_become_a_json_array_of_strings() {
        for body in [
            "",
            "1",
            "12,345,6",
            "a\"b,c\\d",
            "x\ny,caf\u{e9}",
            ",",
            "1,,2",
        ] {
            let mut buf = Vec::new();
            push_items(&mut buf, body.as_bytes());
            let back: Vec<String> = serde_json::from_slice(&buf).expect("valid JSON array");
            let want: Vec<&str> = if body.is_empty() {
                Vec::new()
            } else {
                body.split(',').collect()
            };
            assert_eq!(back, want, "{body:?}");
        }
    }

    #[test]
    fn json_strings_round_trip_with_and_without_escaping() {
        for s in [
            "",
            "1234",
            "split:model_v1",
            "a\"quote",
            "back\\slash",
            "tab\tand\nnewline",
            "\u{7f}del",
            "café ☕",
        ] {
            let mut buf = Vec::new();
            push_json_str(&mut buf, s);
            let back: String = serde_json::from_slice(&buf).expect("valid JSON string");
            assert_eq!(back, s);
        }
    }
}
