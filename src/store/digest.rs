//! BLAKE3 content digests: the names of every object in the store.

use std::fmt;
use std::str::FromStr;

/// The BLAKE3 hash of an object's bytes. Printed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(*blake3::hash(bytes).as_bytes())
    }

    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(64);
        self.push_hex(&mut s);
        s
    }

    /// Append the 64 hex digits to `s` (no allocation: manifests write
    /// one per file).
    pub(crate) fn push_hex(&self, s: &mut String) {
        let mut buf = [0u8; 64];
        for (i, b) in self.0.iter().enumerate() {
            buf[2 * i] = HEX[(b >> 4) as usize];
            buf[2 * i + 1] = HEX[(b & 0xf) as usize];
        }
        // Only ASCII hex digits were written.
        s.push_str(std::str::from_utf8(&buf).unwrap_or_default());
    }

    /// The first 12 hex digits, for human output.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }
}

impl From<blake3::Hash> for Digest {
    fn from(h: blake3::Hash) -> Self {
        Digest(*h.as_bytes())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a BLAKE3 digest (want 64 hex digits): {0:?}")]
pub struct BadDigest(pub String);

impl FromStr for Digest {
    type Err = BadDigest;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return Err(BadDigest(truncate(s)));
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks_exact(2).enumerate() {
            let hi = nibble(pair[0]).ok_or_else(|| BadDigest(truncate(s)))?;
            let lo = nibble(pair[1]).ok_or_else(|| BadDigest(truncate(s)))?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Digest(out))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_bad_text() {
        let d = Digest::of(b"hello");
        assert_eq!(d.hex().parse::<Digest>().unwrap(), d);
        assert_eq!(d.hex(), blake3::hash(b"hello").to_hex().as_str());
        assert!("xyz".parse::<Digest>().is_err());
        assert!(d.hex().to_uppercase().parse::<Digest>().is_err());
        assert!(format!("{}0", &d.hex()[..63]).parse::<Digest>().is_ok());
        assert!(format!("{}g", &d.hex()[..63]).parse::<Digest>().is_err());
    }
}
