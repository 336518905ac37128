//! Text helpers for messages built from untrusted input.
//!
//! An offending value is quoted in an error so a user can find it, but a
//! 10 MB field must not become a 10 MB error line: values are cut to
//! [`CLIP`] bytes (at a character boundary) and marked with `…`.

use std::borrow::Cow;

/// How much of an offending value a message quotes.
pub(crate) const CLIP: usize = 200;

/// `s` cut to its first [`CLIP`] bytes, with `…` when anything was cut.
pub(crate) fn clip(s: &str) -> Cow<'_, str> {
    clip_to(s, CLIP)
}

/// `s` cut to its first `max` bytes (rounded down to a character
/// boundary), with `…` when anything was cut.
pub(crate) fn clip_to(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}…", &s[..end]))
}

/// The version number in an artifact name: `dataset_12` with prefix
/// `dataset_` is 12; anything but plain digits after the prefix is `None`.
pub(crate) fn number_after(name: &str, prefix: &str) -> Option<u64> {
    let rest = name.strip_prefix(prefix)?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) || rest.len() > 18 {
        return None;
    }
    rest.parse().ok()
}

/// An error and its sources on one line, `a: b: c` (a source whose text
/// the line holds already is not repeated).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_at_a_char_boundary() {
        assert_eq!(clip("short"), "short");
        let long = "x".repeat(10_000_000);
        let c = clip(&long);
        assert_eq!(c.len(), CLIP + "…".len());
        assert!(c.ends_with('…'));
        // 'é' is two bytes: a cut inside it moves back.
        let s = format!("a{}", "é".repeat(10));
        assert_eq!(clip_to(&s, 4), "aé…");
        assert_eq!(clip_to(&s, 21), s);
    }

    #[test]
    fn numbers_after_prefix() {
        assert_eq!(number_after("dataset_12", "dataset_"), Some(12));
        assert_eq!(number_after("model_v3", "model_v"), Some(3));
        assert_eq!(number_after("dataset_", "dataset_"), None);
        assert_eq!(number_after("dataset_1a", "dataset_"), None);
        assert_eq!(number_after("model_v99999999999999999999", "model_v"), None);
    }
}
