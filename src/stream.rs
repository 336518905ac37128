//! Parser and writer for the movie event stream (Kafka topic `movielog<N>`).
//!
//! This module owns the line format of the stream — one event per line,
//! comma separated, UTF-8:
//!
//! ```text
//! <time>,<userid>,GET /data/m/<movieid>/<minute>.mpg
//! <time>,<userid>,GET /rate/<movieid>=<rating>
//! <time>,<userid>,recommendation request <host>:<port>, status <code>, result: <id>, <id>, ..., <n> ms
//! ```
//!
//! It turns a line (or a Kafka message's bytes) into an [`Event`] and back
//! ([`Event::to_line`], `Display`), and it decides what a valid movie id is
//! ([`is_valid_movie_id`]). It must never panic, whatever the input: real
//! streams carry malformed lines, and the caller counts and sets those aside
//! using the [`ParseError`] it gets back. It does no I/O.
//!
//! # Borrowing
//!
//! Text fields are [`Cow<'a, str>`]: [`parse_line`] borrows them from the
//! input line, so parsing a watch or rate line allocates nothing (a
//! recommendation line allocates only its item vector). Call
//! [`Event::into_owned`] to keep an event beyond the life of its buffer.
//!
//! # Time
//!
//! `<time>` is `YYYY-MM-DDTHH:MM:SS` with optional fractional seconds, no
//! zone; it is read as UTC and stored as milliseconds since the Unix epoch
//! (sub-millisecond digits are truncated). [`Event::to_line`] writes the
//! fraction as exactly three digits, and only when it is not zero, so
//! `parse_line(&e.to_line()) == Ok(e)` for every event `parse_line` returns.
//!
//! # Movie ids
//!
//! A movie id is non-empty and consists only of ASCII letters and digits,
//! `+`, `-`, `.`, `_` and well-formed percent escapes (`%C3%A9`). Letter case
//! is not checked (escapes use upper-case hex); anything else — space,
//! comma, `/`, `=`, raw non-ASCII — makes the line malformed.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

const MS_PER_DAY: i64 = 86_400_000;
/// Longest piece of offending input quoted in a [`ParseError`].
const MAX_QUOTE: usize = 80;

const WATCH_PREFIX: &str = "GET /data/m/";
const RATE_PREFIX: &str = "GET /rate/";
const RECOMMEND_PREFIX: &str = "recommendation request ";

/// One event of the movie stream.
///
/// Invariants of every event [`parse_line`] returns (and which
/// [`Event::to_line`] needs to round-trip): movie ids and items satisfy
/// [`is_valid_movie_id`]; `rating` is 1..=5; `host` is non-empty without
/// commas, whitespace or control characters; a recommendation with status
/// 200 has `error: None`, any other status has `error: Some(text)` and no
/// items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event<'a> {
    /// A user watched one minute of a movie.
    Watch {
        /// Milliseconds since the Unix epoch (UTC).
        time_ms: i64,
        /// User id.
        user: u64,
        /// Movie id, e.g. `the+lord+of+the+rings+the+two+towers+2002`.
        movie: Cow<'a, str>,
        /// Minute of the movie being streamed.
        minute: u32,
    },
    /// A user rated a movie.
    Rate {
        /// Milliseconds since the Unix epoch (UTC).
        time_ms: i64,
        /// User id.
        user: u64,
        /// Movie id.
        movie: Cow<'a, str>,
        /// Rating, 1..=5.
        rating: u8,
    },
    /// The recommendation service answered (or failed to answer) a user.
    Recommendation {
        /// Milliseconds since the Unix epoch (UTC).
        time_ms: i64,
        /// User id.
        user: u64,
        /// Host of the service that was asked.
        host: Cow<'a, str>,
        /// Port of the service that was asked.
        port: u16,
        /// HTTP status; 0 when no answer came back at all.
        status: u16,
        /// Recommended movie ids, best first; empty when the request failed.
        items: Vec<Cow<'a, str>>,
        /// Error text of a failed request (status other than 200).
        error: Option<Cow<'a, str>>,
        /// Latency the stream reports, in milliseconds.
        latency_ms: u32,
    },
}

/// An [`Event`] that owns its text.
pub type OwnedEvent = Event<'static>;

/// Why a stream line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The line is empty (after removing a trailing newline).
    #[error("empty line")]
    Empty,
    /// The message bytes are not UTF-8.
    #[error("line is not valid UTF-8 (invalid byte at offset {valid_up_to})")]
    NotUtf8 {
        /// Length of the valid UTF-8 prefix.
        valid_up_to: usize,
    },
    /// The line ends before the named field.
    #[error("missing field: {field}")]
    MissingField {
        /// `"user"` or `"request"`.
        field: &'static str,
    },
    /// A watch or rate line has a comma inside its request.
    #[error("too many fields: unexpected ',' in {request:?}")]
    TooManyFields {
        /// The request part of the line.
        request: String,
    },
    /// The time field is not `YYYY-MM-DDTHH:MM:SS[.fraction]` or not a real
    /// date and time.
    #[error("bad time {value:?}: {reason}")]
    BadTime {
        /// The time field.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The user field is not a decimal `u64`.
    #[error("bad user id {value:?}")]
    BadUser {
        /// The user field.
        value: String,
    },
    /// The request is none of watch, rate or recommendation.
    #[error("unknown request kind {value:?}")]
    UnknownRequest {
        /// The request part of the line.
        value: String,
    },
    /// A movie id is empty or contains a character ids may not contain.
    #[error("bad movie id {value:?}")]
    BadMovieId {
        /// The offending id.
        value: String,
    },
    /// A watch request does not end in `/<minute>.mpg` with a `u32` minute.
    #[error("bad minute {value:?}: expected /<minute>.mpg")]
    BadMinute {
        /// What followed the movie id.
        value: String,
    },
    /// A rate request has no `=` or its rating is not a number.
    #[error("bad rating {value:?}")]
    BadRating {
        /// What followed the movie id.
        value: String,
    },
    /// The rating is a number outside 1..=5.
    #[error("rating {rating} out of range 1-5")]
    RatingOutOfRange {
        /// The rating given.
        rating: u32,
    },
    /// The host of a recommendation request is empty or has whitespace,
    /// commas or control characters.
    #[error("bad host {value:?}")]
    BadHost {
        /// The host.
        value: String,
    },
    /// The port of a recommendation request is missing or not a `u16`.
    #[error("bad port {value:?}")]
    BadPort {
        /// The `host:port` text.
        value: String,
    },
    /// The `status <code>` part is missing or the code is not a `u16`.
    #[error("bad status {value:?}")]
    BadStatus {
        /// The text where the status was expected.
        value: String,
    },
    /// The `result:` part of a recommendation line is missing.
    #[error("missing result in {value:?}")]
    MissingResult {
        /// The text after the status.
        value: String,
    },
    /// A recommendation line does not end in `, <n> ms`.
    #[error("missing latency (', <n> ms') in {value:?}")]
    MissingLatency {
        /// The text after `result:`.
        value: String,
    },
    /// The trailing latency is not a `u32` number of milliseconds.
    #[error("bad latency {value:?}")]
    BadLatency {
        /// The latency text.
        value: String,
    },
}

impl ParseError {
    /// A short stable name for the error kind, for counting rejected lines.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::NotUtf8 { .. } => "not_utf8",
            Self::MissingField { .. } => "missing_field",
            Self::TooManyFields { .. } => "too_many_fields",
            Self::BadTime { .. } => "bad_time",
            Self::BadUser { .. } => "bad_user",
            Self::UnknownRequest { .. } => "unknown_request",
            Self::BadMovieId { .. } => "bad_movie_id",
            Self::BadMinute { .. } => "bad_minute",
            Self::BadRating { .. } => "bad_rating",
            Self::RatingOutOfRange { .. } => "rating_out_of_range",
            Self::BadHost { .. } => "bad_host",
            Self::BadPort { .. } => "bad_port",
            Self::BadStatus { .. } => "bad_status",
            Self::MissingResult { .. } => "missing_result",
            Self::MissingLatency { .. } => "missing_latency",
            Self::BadLatency { .. } => "bad_latency",
        }
    }
}

/// Copies at most [`MAX_QUOTE`] bytes of `s` (cut on a char boundary) so a
/// huge garbage line does not make a huge error.
fn quote(s: &str) -> String {
    if s.len() <= MAX_QUOTE {
        return s.to_owned();
    }
    let mut end = MAX_QUOTE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + 3);
    out.push_str(&s[..end]);
    out.push_str("...");
    out
}

impl<'a> Event<'a> {
    /// The user the event is about.
    pub fn user(&self) -> u64 {
        match self {
            Self::Watch { user, .. }
            | Self::Rate { user, .. }
            | Self::Recommendation { user, .. } => *user,
        }
    }

    /// When the event happened, in milliseconds since the Unix epoch (UTC).
    pub fn time_ms(&self) -> i64 {
        match self {
            Self::Watch { time_ms, .. }
            | Self::Rate { time_ms, .. }
            | Self::Recommendation { time_ms, .. } => *time_ms,
        }
    }

    /// The movie of a watch or rate event.
    pub fn movie(&self) -> Option<&str> {
        match self {
            Self::Watch { movie, .. } | Self::Rate { movie, .. } => Some(movie),
            Self::Recommendation { .. } => None,
        }
    }

    /// The event in the stream's line format, without a newline.
    pub fn to_line(&self) -> String {
        self.to_string()
    }

    /// The same event, owning its text.
    pub fn into_owned(self) -> OwnedEvent {
        fn own(s: Cow<'_, str>) -> Cow<'static, str> {
            Cow::Owned(s.into_owned())
        }
        match self {
            Self::Watch {
                time_ms,
                user,
                movie,
                minute,
            } => Event::Watch {
                time_ms,
                user,
                movie: own(movie),
                minute,
            },
            Self::Rate {
                time_ms,
                user,
                movie,
                rating,
            } => Event::Rate {
                time_ms,
                user,
                movie: own(movie),
                rating,
            },
            Self::Recommendation {
                time_ms,
                user,
                host,
                port,
                status,
                items,
                error,
                latency_ms,
            } => Event::Recommendation {
                time_ms,
                user,
                host: own(host),
                port,
                status,
                items: items.into_iter().map(own).collect(),
                error: error.map(own),
                latency_ms,
            },
        }
    }
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_time(f, self.time_ms())?;
        write!(f, ",{},", self.user())?;
        match self {
            Self::Watch { movie, minute, .. } => write!(f, "{WATCH_PREFIX}{movie}/{minute}.mpg"),
            Self::Rate { movie, rating, .. } => write!(f, "{RATE_PREFIX}{movie}={rating}"),
            Self::Recommendation {
                host,
                port,
                status,
                items,
                error,
                latency_ms,
                ..
            } => {
                write!(
                    f,
                    "{RECOMMEND_PREFIX}{host}:{port}, status {status}, result: "
                )?;
                match error {
                    Some(text) => f.write_str(text)?,
                    None => {
                        for (i, item) in items.iter().enumerate() {
                            if i > 0 {
                                f.write_str(", ")?;
                            }
                            f.write_str(item)?;
                        }
                    }
                }
                write!(f, ", {latency_ms} ms")
            }
        }
    }
}

/// Writes `ms` as `YYYY-MM-DDTHH:MM:SS[.mmm]` (UTC).
fn write_time(f: &mut fmt::Formatter<'_>, ms: i64) -> fmt::Result {
    let days = ms.div_euclid(MS_PER_DAY);
    let in_day = ms.rem_euclid(MS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    let secs = in_day / 1000;
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    write!(
        f,
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}"
    )?;
    let frac = in_day % 1000;
    if frac != 0 {
        write!(f, ".{frac:03}")?;
    }
    Ok(())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`). `month` is 1..=12, `day` 1..=31.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`]: `(year, month, day)`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.f+]` (UTC) into milliseconds since the epoch.
pub(crate) fn parse_time(s: &str) -> Result<i64, ParseError> {
    let bad = |reason| ParseError::BadTime {
        value: quote(s),
        reason,
    };
    let b = s.as_bytes();
    if b.len() < 19 {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SS"));
    }
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SS"));
    }
    let num = |from: usize, to: usize| -> Result<i64, ParseError> {
        b[from..to].iter().try_fold(0i64, |acc, &c| {
            if c.is_ascii_digit() {
                Ok(acc * 10 + i64::from(c - b'0'))
            } else {
                Err(bad("expected a digit"))
            }
        })
    };
    let year = num(0, 4)?;
    let month = num(5, 7)?;
    let day = num(8, 10)?;
    let hour = num(11, 13)?;
    let minute = num(14, 16)?;
    let second = num(17, 19)?;
    if !(1..=12).contains(&month) {
        return Err(bad("month out of range"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(bad("day out of range"));
    }
    if hour > 23 || minute > 59 || second > 59 {
        return Err(bad("time of day out of range"));
    }
    let mut millis = 0i64;
    if let Some((&dot, frac)) = b[19..].split_first() {
        if dot != b'.' {
            return Err(bad("unexpected text after seconds"));
        }
        if frac.is_empty() || frac.len() > 9 {
            return Err(bad("fraction must have 1 to 9 digits"));
        }
        if !frac.iter().all(u8::is_ascii_digit) {
            return Err(bad("expected a digit"));
        }
        for i in 0..3 {
            let digit = frac.get(i).map_or(0, |&c| i64::from(c - b'0'));
            millis = millis * 10 + digit;
        }
    }
    let days = days_from_civil(year, month, day);
    Ok(days * MS_PER_DAY + ((hour * 60 + minute) * 60 + second) * 1000 + millis)
}

/// Parses a non-empty run of ASCII digits that fits in `u64`.
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.bytes().try_fold(0u64, |acc, c| {
        if c.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(c - b'0'))
        } else {
            None
        }
    })
}

fn parse_u32(s: &str) -> Option<u32> {
    parse_u64(s).and_then(|n| u32::try_from(n).ok())
}

fn parse_u16(s: &str) -> Option<u16> {
    parse_u64(s).and_then(|n| u16::try_from(n).ok())
}

/// Whether `id` is a well-formed movie id (see the module docs).
pub fn is_valid_movie_id(id: &str) -> bool {
    let b = id.as_bytes();
    if b.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'+' | b'-' | b'.' | b'_' => i += 1,
            b'%' => {
                let hex = |j: usize| b.get(j).is_some_and(u8::is_ascii_hexdigit);
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
            }
            _ => return false,
        }
    }
    true
}

fn movie_id(s: &str) -> Result<Cow<'_, str>, ParseError> {
    if is_valid_movie_id(s) {
        Ok(Cow::Borrowed(s))
    } else {
        Err(ParseError::BadMovieId { value: quote(s) })
    }
}

/// Parses a Kafka message: UTF-8 bytes of one line, optionally ending in
/// `\n` or `\r\n`.
pub(crate) fn parse_bytes(line: &[u8]) -> Result<Event<'_>, ParseError> {
    match std::str::from_utf8(line) {
        Ok(s) => parse_line(s),
        Err(e) => Err(ParseError::NotUtf8 {
            valid_up_to: e.valid_up_to(),
        }),
    }
}

/// Parses one stream line (a trailing `\n` or `\r\n` is ignored).
pub fn parse_line(line: &str) -> Result<Event<'_>, ParseError> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    let (time, rest) = line
        .split_once(',')
        .ok_or(ParseError::MissingField { field: "user" })?;
    let (user, request) = rest
        .split_once(',')
        .ok_or(ParseError::MissingField { field: "request" })?;
    let time_ms = parse_time(time)?;
    let user = parse_u64(user).ok_or_else(|| ParseError::BadUser { value: quote(user) })?;

    if let Some(path) = request.strip_prefix(WATCH_PREFIX) {
        no_comma(request)?;
        let (movie, tail) = path.split_once('/').unwrap_or((path, ""));
        let movie = movie_id(movie)?;
        let minute = tail
            .strip_suffix(".mpg")
            .and_then(parse_u32)
            .ok_or_else(|| ParseError::BadMinute { value: quote(tail) })?;
        Ok(Event::Watch {
            time_ms,
            user,
            movie,
            minute,
        })
    } else if let Some(path) = request.strip_prefix(RATE_PREFIX) {
        no_comma(request)?;
        let (movie, rating) = path.split_once('=').unwrap_or((path, ""));
        let movie = movie_id(movie)?;
        let rating = parse_u64(rating).ok_or_else(|| ParseError::BadRating {
            value: quote(rating),
        })?;
        match u8::try_from(rating) {
            Ok(rating @ 1..=5) => Ok(Event::Rate {
                time_ms,
                user,
                movie,
                rating,
            }),
            _ => Err(ParseError::RatingOutOfRange {
                rating: u32::try_from(rating).unwrap_or(u32::MAX),
            }),
        }
    } else if let Some(body) = request.strip_prefix(RECOMMEND_PREFIX) {
        parse_recommendation(time_ms, user, body)
    } else {
        Err(ParseError::UnknownRequest {
            value: quote(request),
        })
    }
}

fn no_comma(request: &str) -> Result<(), ParseError> {
    if request.contains(',') {
        Err(ParseError::TooManyFields {
            request: quote(request),
        })
    } else {
        Ok(())
    }
}

/// Parses `<host>:<port>, status <code>, result: <...>, <n> ms`.
fn parse_recommendation(time_ms: i64, user: u64, body: &str) -> Result<Event<'_>, ParseError> {
    // The host can hold no comma, so the first comma ends `host:port`.
    let (address, rest) = body.split_once(',').unwrap_or((body, ""));
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| ParseError::BadPort {
            value: quote(address),
        })?;
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ParseError::BadHost { value: quote(host) });
    }
    let port = parse_u16(port).ok_or_else(|| ParseError::BadPort {
        value: quote(address),
    })?;

    let bad_status = || ParseError::BadStatus { value: quote(rest) };
    let after_status = rest.strip_prefix(" status ").ok_or_else(bad_status)?;
    let (status, rest) = after_status.split_once(',').unwrap_or((after_status, ""));
    let status = parse_u16(status).ok_or_else(bad_status)?;

    let result = rest
        .strip_prefix(" result:")
        .ok_or_else(|| ParseError::MissingResult { value: quote(rest) })?;
    let result = result.strip_prefix(' ').unwrap_or(result);
    // The error text may hold commas; the latency is after the last one.
    let (list, latency) = result
        .rsplit_once(',')
        .ok_or_else(|| ParseError::MissingLatency {
            value: quote(result),
        })?;
    let latency_ms = latency
        .trim_start_matches(' ')
        .strip_suffix(" ms")
        .and_then(parse_u32)
        .ok_or_else(|| ParseError::BadLatency {
            value: quote(latency),
        })?;

    let (items, error) = if status == 200 {
        let mut items = Vec::new();
        if !list.trim_matches(' ').is_empty() {
            for item in list.split(',') {
                items.push(movie_id(item.trim_matches(' '))?);
            }
        }
        (items, None)
    } else {
        (Vec::new(), Some(Cow::Borrowed(list)))
    };
    Ok(Event::Recommendation {
        time_ms,
        user,
        host: Cow::Borrowed(host),
        port,
        status,
        items,
        error,
        latency_ms,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// 2024-02-01T10:11:12 UTC.
    const T: i64 = 1_706_782_272_000;

    fn watch(movie: &str, minute: u32) -> OwnedEvent {
        Event::Watch {
            time_ms: T,
            user: 42,
            movie: Cow::Owned(movie.to_owned()),
            minute,
        }
    }

    fn err(line: &str) -> ParseError {
        match parse_line(line) {
            Ok(e) => panic!("{line:?} parsed as {e:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_watch() {
        let e = parse_line(
            "2024-02-01T10:11:12,42,GET /data/m/the+lord+of+the+rings+the+two+towers+2002/17.mpg",
        );
        assert_eq!(
            e,
            Ok(watch("the+lord+of+the+rings+the+two+towers+2002", 17))
        );
        let e = e.unwrap();
        assert_eq!(e.user(), 42);
        assert_eq!(e.time_ms(), T);
        assert_eq!(e.movie(), Some("the+lord+of+the+rings+the+two+towers+2002"));
    }

    #[test]
    fn parses_rate() {
        let e = parse_line("2024-02-01T10:11:12,42,GET /rate/toy+story+1995=4").unwrap();
        assert_eq!(
            e,
            Event::Rate {
                time_ms: T,
                user: 42,
                movie: "toy+story+1995".into(),
                rating: 4
            }
        );
        for r in 1..=5u8 {
            let line = format!("2024-02-01T10:11:12,42,GET /rate/x={r}");
            assert!(matches!(parse_line(&line), Ok(Event::Rate { rating, .. }) if rating == r));
        }
    }

    #[test]
    fn parses_recommendation() {
        let line = "2024-02-01T10:11:12.5,7,recommendation request 17645-team07.isri.cmu.edu:8082, status 200, result: a+1999, the+good_+the+bad+and+the+ugly+1966, c, 275 ms";
        let e = parse_line(line).unwrap();
        assert_eq!(
            e,
            Event::Recommendation {
                time_ms: T + 500,
                user: 7,
                host: "17645-team07.isri.cmu.edu".into(),
                port: 8082,
                status: 200,
                items: vec![
                    "a+1999".into(),
                    "the+good_+the+bad+and+the+ugly+1966".into(),
                    "c".into()
                ],
                error: None,
                latency_ms: 275,
            }
        );
        assert_eq!(e.time_ms(), T + 500);
        assert_eq!(e.movie(), None);
        assert_eq!(
            e.to_line(),
            "2024-02-01T10:11:12.500,7,recommendation request 17645-team07.isri.cmu.edu:8082, status 200, result: a+1999, the+good_+the+bad+and+the+ugly+1966, c, 275 ms"
        );
    }

    #[test]
    fn parses_empty_result_list() {
        let e = parse_line(
            "2024-02-01T10:11:12,7,recommendation request h:1, status 200, result: , 3 ms",
        )
        .unwrap();
        assert!(
            matches!(e, Event::Recommendation { ref items, error: None, latency_ms: 3, .. } if items.is_empty())
        );
        assert_eq!(parse_line(&e.to_line()), Ok(e));
    }

    #[test]
    fn parses_failed_recommendation_with_commas() {
        let line = "2024-02-01T10:11:12,7,recommendation request 10.0.0.1:8082, status 0, result: java.net.SocketTimeoutException: Read timed out, 800 ms";
        let e = parse_line(line).unwrap();
        assert_eq!(
            e,
            Event::Recommendation {
                time_ms: T,
                user: 7,
                host: "10.0.0.1".into(),
                port: 8082,
                status: 0,
                items: vec![],
                error: Some("java.net.SocketTimeoutException: Read timed out".into()),
                latency_ms: 800,
            }
        );
        assert_eq!(e.to_line(), line);

        let line = "2024-02-01T10:11:12,7,recommendation request h:80, status 500, result: oops, bad, worse, 12 ms";
        let e = parse_line(line).unwrap();
        assert!(
            matches!(e, Event::Recommendation { status: 500, error: Some(ref t), latency_ms: 12, .. } if t == "oops, bad, worse")
        );
        assert_eq!(e.to_line(), line);
    }

    #[test]
    fn time_with_and_without_fraction() {
        assert_eq!(parse_time("1970-01-01T00:00:00"), Ok(0));
        assert_eq!(parse_time("2024-02-01T10:11:12"), Ok(T));
        assert_eq!(parse_time("2024-02-01T10:11:12.123456"), Ok(T + 123));
        assert_eq!(parse_time("2024-02-01T10:11:12.1"), Ok(T + 100));
        assert_eq!(parse_time("2024-02-01T10:11:12.000999"), Ok(T));
        assert_eq!(parse_time("2000-02-29T00:00:00"), Ok(951_782_400_000));
        assert_eq!(parse_time("1969-12-31T23:59:59.999"), Ok(-1));
        let e = parse_line("2024-02-01T10:11:12.123456,42,GET /rate/x=1").unwrap();
        assert_eq!(e.to_line(), "2024-02-01T10:11:12.123,42,GET /rate/x=1");
    }

    #[test]
    fn civil_conversion_round_trips() {
        for days in -800_000..800_000 {
            let (y, m, d) = civil_from_days(days);
            assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn movie_id_variants() {
        for id in [
            "the+lord+of+the+rings+the+two+towers+2002",
            "toy+story+1995",
            "spider-man+2002",
            "mr.+hollands+opus+1995",
            "the+good_+the+bad+and+the+ugly+1966",
            "am%C3%A9lie+2001",
            "les+mis%c3%a9rables+1995",
            "2001+a+space+odyssey+1968",
            "the+matrix",
            "Upper+Case",
        ] {
            assert!(is_valid_movie_id(id), "{id}");
            let line = format!("2024-02-01T10:11:12,42,GET /data/m/{id}/0.mpg");
            assert_eq!(parse_line(&line), Ok(watch(id, 0)));
        }
        for id in [
            "", "a b", "a,b", "a/b", "a=b", "café", "a%", "a%C", "a%ZZ", "a\tb", "a'b",
        ] {
            assert!(!is_valid_movie_id(id), "{id:?}");
        }
    }

    #[test]
    fn trailing_newlines_tolerated() {
        let want = Ok(watch("x", 3));
        assert_eq!(
            parse_bytes(b"2024-02-01T10:11:12,42,GET /data/m/x/3.mpg\n"),
            want
        );
        assert_eq!(
            parse_bytes(b"2024-02-01T10:11:12,42,GET /data/m/x/3.mpg\r\n"),
            want
        );
        assert_eq!(
            parse_line("2024-02-01T10:11:12,42,GET /data/m/x/3.mpg\n"),
            want
        );
    }

    #[test]
    fn into_owned_keeps_value() {
        let line = String::from(
            "2024-02-01T10:11:12,7,recommendation request h:1, status 200, result: a, b, 3 ms",
        );
        let e = parse_line(&line).unwrap();
        let owned: OwnedEvent = e.clone().into_owned();
        drop(line);
        assert_eq!(
            owned.to_line(),
            "2024-02-01T10:11:12,7,recommendation request h:1, status 200, result: a, b, 3 ms"
        );
        assert_eq!(owned.user(), 7);
    }

    #[test]
    fn malformed_lines() {
        use ParseError as E;
        let p = "2024-02-01T10:11:12,42,";
        assert_eq!(err(""), E::Empty);
        assert_eq!(err("\r\n"), E::Empty);
        assert_eq!(
            parse_bytes(b"2024-02-01T10:11:12,42,GET /rate/caf\xe9=4"),
            Err(E::NotUtf8 { valid_up_to: 36 })
        );
        assert_eq!(
            err("2024-02-01T10:11:12"),
            E::MissingField { field: "user" }
        );
        assert_eq!(
            err("2024-02-01T10:11:12,42"),
            E::MissingField { field: "request" }
        );
        for time in [
            "2024-02-01 10:11:12",
            "2024-02-01T10:11",
            "2024-13-01T10:11:12",
            "2024-00-01T10:11:12",
            "2023-02-29T10:11:12",
            "2024-04-31T10:11:12",
            "2024-02-01T24:00:00",
            "2024-02-01T10:60:00",
            "2024-02-01T10:11:60",
            "2024-02-01T10:11:12.",
            "2024-02-01T10:11:12.12a",
            "2024-02-01T10:11:12.1234567890",
            "2024-02-01T10:11:12Z",
            "2024-0a-01T10:11:12",
            "2024-02-01T10:11:1é",
            "+024-02-01T10:11:12",
        ] {
            let line = format!("{time},42,GET /rate/x=4");
            assert!(
                matches!(err(&line), E::BadTime { ref value, .. } if value == time),
                "{time}"
            );
        }
        for user in ["", "-1", "abc", "4 2", "18446744073709551616"] {
            let line = format!("2024-02-01T10:11:12,{user},GET /rate/x=4");
            assert_eq!(err(&line), E::BadUser { value: user.into() }, "{user}");
        }
        assert_eq!(
            parse_line("2024-02-01T10:11:12,18446744073709551615,GET /rate/x=4").map(|e| e.user()),
            Ok(u64::MAX)
        );
        for request in [
            "POST /rate/x=4",
            "GET /data/x/1.mpg",
            "",
            "get /rate/x=4",
            "recommendation",
        ] {
            assert!(
                matches!(err(&format!("{p}{request}")), E::UnknownRequest { .. }),
                "{request}"
            );
        }
        assert!(matches!(
            err(&format!("{p}GET /rate/x=4,5")),
            E::TooManyFields { .. }
        ));
        assert!(matches!(
            err(&format!("{p}GET /data/m/x/1.mpg,extra")),
            E::TooManyFields { .. }
        ));
        assert!(matches!(
            err(&format!("{p}GET /rate/a,b=4")),
            E::TooManyFields { .. }
        ));
        for (request, bad) in [
            ("GET /rate/=4", ""),
            ("GET /rate/a b=4", "a b"),
            ("GET /rate/café=4", "café"),
            ("GET /data/m//1.mpg", ""),
            ("GET /data/m/a b/1.mpg", "a b"),
            ("GET /data/m/a%2/1.mpg", "a%2"),
        ] {
            assert_eq!(
                err(&format!("{p}{request}")),
                E::BadMovieId { value: bad.into() },
                "{request}"
            );
        }
        for (request, bad) in [
            ("GET /data/m/x", ""),
            ("GET /data/m/x/", ""),
            ("GET /data/m/x/1", "1"),
            ("GET /data/m/x/.mpg", ".mpg"),
            ("GET /data/m/x/-1.mpg", "-1.mpg"),
            ("GET /data/m/x/1.avi", "1.avi"),
            ("GET /data/m/x/4294967296.mpg", "4294967296.mpg"),
            ("GET /data/m/x/1/2.mpg", "1/2.mpg"),
        ] {
            assert_eq!(
                err(&format!("{p}{request}")),
                E::BadMinute { value: bad.into() },
                "{request}"
            );
        }
        for (request, bad) in [
            ("GET /rate/x", ""),
            ("GET /rate/x=", ""),
            ("GET /rate/x=four", "four"),
            ("GET /rate/x=4.5", "4.5"),
            ("GET /rate/x=-1", "-1"),
        ] {
            assert_eq!(
                err(&format!("{p}{request}")),
                E::BadRating { value: bad.into() },
                "{request}"
            );
        }
        for (request, rating) in [
            ("GET /rate/x=0", 0),
            ("GET /rate/x=6", 6),
            ("GET /rate/x=300", 300),
            ("GET /rate/x=99999999999", u32::MAX),
        ] {
            assert_eq!(
                err(&format!("{p}{request}")),
                E::RatingOutOfRange { rating },
                "{request}"
            );
        }

        let r = "recommendation request ";
        let ok = |tail: &str| format!("{p}{r}{tail}");
        assert!(parse_line(&ok("h:1, status 200, result: a, 1 ms")).is_ok());
        for host_port in ["h", "h:", "h:x", "h:65536", "h:-1"] {
            assert!(
                matches!(
                    err(&ok(&format!("{host_port}, status 200, result: a, 1 ms"))),
                    E::BadPort { .. }
                ),
                "{host_port}"
            );
        }
        for host_port in [":80", "a b:80", "a\tb:80"] {
            assert!(
                matches!(
                    err(&ok(&format!("{host_port}, status 200, result: a, 1 ms"))),
                    E::BadHost { .. }
                ),
                "{host_port}"
            );
        }
        for tail in [
            "h:1",
            "h:1,",
            "h:1, status",
            "h:1, status x, result: a, 1 ms",
            "h:1, status 70000, result: a, 1 ms",
            "h:1, stat 200, result: a, 1 ms",
        ] {
            assert!(matches!(err(&ok(tail)), E::BadStatus { .. }), "{tail}");
        }
        for tail in [
            "h:1, status 200",
            "h:1, status 200, a, 1 ms",
            "h:1, status 200,result: a, 1 ms",
        ] {
            assert!(matches!(err(&ok(tail)), E::MissingResult { .. }), "{tail}");
        }
        for tail in [
            "h:1, status 200, result: a",
            "h:1, status 500, result: timeout 3 ms",
            "h:1, status 200, result:",
        ] {
            assert!(matches!(err(&ok(tail)), E::MissingLatency { .. }), "{tail}");
        }
        for tail in [
            "h:1, status 200, result: a, b",
            "h:1, status 200, result: a, 3ms",
            "h:1, status 200, result: a, x ms",
            "h:1, status 200, result: a, 3 ms ",
            "h:1, status 200, result: a, 4294967296 ms",
        ] {
            assert!(matches!(err(&ok(tail)), E::BadLatency { .. }), "{tail}");
        }
        for tail in [
            "h:1, status 200, result: a b, 1 ms",
            "h:1, status 200, result: a,, b, 1 ms",
            "h:1, status 200, result: a, b/c, 1 ms",
        ] {
            assert!(matches!(err(&ok(tail)), E::BadMovieId { .. }), "{tail}");
        }
    }

    #[test]
    fn errors_quote_at_most_a_little() {
        let line = format!("2024-02-01T10:11:12,42,GET /rate/{}=4", "é".repeat(1000));
        let ParseError::BadMovieId { value } = err(&line) else {
            panic!("wrong error");
        };
        assert!(value.len() <= MAX_QUOTE + 3);
        assert_eq!(ParseError::Empty.kind(), "empty");
    }

    fn arb_id() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9][a-z0-9+._-]{0,40}",
            "[a-z]{1,8}(\\+[a-z]{1,8}){0,5}(\\+(19|20)[0-9]{2})?",
            "[a-z]{1,5}%[0-9A-F]{2}[a-z]{0,5}",
        ]
    }

    fn arb_event() -> impl Strategy<Value = OwnedEvent> {
        // Years 0000..=9999, the range the line format can express.
        let time = -62_167_219_200_000i64..253_402_300_800_000i64;
        let watch = (time.clone(), any::<u64>(), arb_id(), any::<u32>()).prop_map(
            |(time_ms, user, movie, minute)| Event::Watch {
                time_ms,
                user,
                movie: movie.into(),
                minute,
            },
        );
        let rate = (time.clone(), any::<u64>(), arb_id(), 1u8..=5).prop_map(
            |(time_ms, user, movie, rating)| Event::Rate {
                time_ms,
                user,
                movie: movie.into(),
                rating,
            },
        );
        let outcome = prop_oneof![
            prop::collection::vec(arb_id(), 0..20).prop_map(|items| (200u16, items, None)),
            (
                any::<u16>().prop_filter("failed", |s| *s != 200),
                "[^\r\n]{0,60}"
            )
                .prop_map(|(status, text)| (status, Vec::new(), Some(text))),
        ];
        let recommendation = (
            time,
            any::<u64>(),
            "[a-z0-9.-]{1,30}",
            any::<u16>(),
            outcome,
            any::<u32>(),
        )
            .prop_map(
                |(time_ms, user, host, port, (status, items, error), latency_ms)| {
                    Event::Recommendation {
                        time_ms,
                        user,
                        host: host.into(),
                        port,
                        status,
                        items: items.into_iter().map(Cow::Owned).collect(),
                        error: error.map(Cow::Owned),
                        latency_ms,
                    }
                },
            );
        prop_oneof![watch, rate, recommendation]
    }

    proptest! {
        #[test]
        fn never_panics_on_strings(s in "\\PC*") {
            let _ = parse_line(&s);
        }

        #[test]
        fn never_panics_on_bytes(b in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(e) = parse_bytes(&b) {
                let again = e.to_line();
                prop_assert_eq!(parse_line(&again), Ok(e.clone()));
            }
        }

        #[test]
        fn never_panics_on_near_valid_lines(
            prefix in prop_oneof![
                Just("2024-02-01T10:11:12,42,GET /data/m/"),
                Just("2024-02-01T10:11:12,42,GET /rate/"),
                Just("2024-02-01T10:11:12,42,recommendation request "),
                Just("2024-02-01T10:11:12."),
            ],
            tail in "[ -~é]{0,60}",
        ) {
            let line = format!("{prefix}{tail}");
            if let Ok(e) = parse_line(&line) {
                let again = e.to_line();
                prop_assert_eq!(parse_line(&again), Ok(e.clone()));
            }
        }

        #[test]
        fn valid_events_round_trip(e in arb_event()) {
            let line = e.to_line();
            prop_assert_eq!(parse_line(&line), Ok(e.clone()));
            let crlf = format!("{line}\r\n");
            prop_assert_eq!(parse_bytes(crlf.as_bytes()), Ok(e));
        }
    }
}
