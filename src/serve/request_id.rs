//! Request ids that say what answered: UUIDv8 (RFC 9562) with a fixed
//! layout, so `recsys lineage <id>` can name the config, model and data
//! behind an answer whose log line never reached the disk (a `kill -9`
//! loses the batch in flight; see ARCHITECTURE.md, "Why self-describing
//! ids, not a durable-first log").
//!
//! Layout, most significant bit first (128 bits):
//!
//! | bits | field |
//! |---|---|
//! | 48 | Unix time in milliseconds (ids sort by time, as UUIDv7 ones do) |
//! | 4 | version, `8` |
//! | 12 | config prefix, its first 12 bits |
//! | 2 | variant, `0b10` |
//! | 20 | config prefix, its last 20 bits |
//! | 6 | slot: which model of the config answered (below) |
//! | 36 | sequence: a per-process counter started at a random value |
//!
//! The config prefix is the first 32 bits (8 hex digits) of the BLAKE3
//! digest of the config.json bytes that were deployed; every deployed
//! version is a store object before its first answer leaves. The slot is
//! the model's index in `RouterConfig::models()` (the deployment's model
//! list): 0 to 61; [`SLOT_MANY`] for an index above 61 (the config then
//! names the candidates); [`SLOT_NONE`] when no model answered (a
//! rejection, `/health`, `/metrics`, a 404, or hyper's own 400).
//!
//! Uniqueness: one process never repeats an id (the sequence would have to
//! wrap, 2^36 ids, within one millisecond). Two processes serving the same
//! config repeat one only if both answer in the same millisecond from the
//! same slot with equal sequence values: 2^-36 (1.5e-11) per such pair of
//! answers; the index keeps both rows if it ever happens, and `lineage`
//! shows both. A config prefix shared by two stored objects (about
//! n²/2^33 for n configs: 1.2e-4 for a thousand) is resolved by reading
//! the candidates; only objects that parse as a config count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::store::Digest;

/// The slot of an answer no model made.
pub(crate) const SLOT_NONE: u8 = 63;
/// The slot of a model whose index in the config is above 61.
pub(crate) const SLOT_MANY: u8 = 62;

const SEQ_BITS: u32 = 36;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;

/// What a request id of ours says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// When the id was made (Unix ms): the moment of the answer.
    pub time_ms: u64,
    /// The first 32 bits of the deployed config's digest.
    pub config_prefix: u32,
    /// Which model of that config answered.
    pub slot: Slot,
    pub seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The model at this index of `RouterConfig::models()`.
    Model(usize),
    /// A model at index 62 or above.
    Many,
    /// Not a recommendation: no model answered.
    None,
}

impl Decoded {
    /// The config prefix as 8 lower-case hex digits (a digest prefix).
    pub fn config_hex(&self) -> String {
        format!("{:08x}", self.config_prefix)
    }
}

/// The first 32 bits of a digest, as the id carries them.
pub(crate) fn config_prefix(d: &Digest) -> u32 {
    u32::from_be_bytes([d.0[0], d.0[1], d.0[2], d.0[3]])
}

/// Make an id. `slot` is the model's index in the config (`None`: no
/// model answered).
pub fn encode(time_ms: u64, config_prefix: u32, slot: Option<usize>, seq: u64) -> uuid::Uuid {
    let slot = match slot {
        Some(i) if i < SLOT_MANY as usize => i as u8,
        Some(_) => SLOT_MANY,
        None => SLOT_NONE,
    };
    let cfg = u128::from(config_prefix);
    let v: u128 = (u128::from(time_ms & ((1 << 48) - 1)) << 80)
        | ((cfg >> 20) << 64)
        | ((cfg & 0xf_ffff) << 42)
        | (u128::from(slot) << 36)
        | u128::from(seq & SEQ_MASK);
    // Sets the version (8) and variant bits, which the layout leaves free.
    uuid::Builder::from_custom_bytes(v.to_be_bytes()).into_uuid()
}

/// What an id says, when it is a UUIDv8 of the RFC variant (any id this
/// server makes; another system's v8 would decode too, and then name a
/// config this project does not have).
pub fn decode(id: &uuid::Uuid) -> Option<Decoded> {
    if id.get_version_num() != 8 || id.get_variant() != uuid::Variant::RFC4122 {
        return None;
    }
    let v = id.as_u128();
    let hi = ((v >> 64) & 0xfff) as u32;
    let lo = ((v >> 42) & 0xf_ffff) as u32;
    let slot = match ((v >> 36) & 0x3f) as u8 {
        SLOT_NONE => Slot::None,
        SLOT_MANY => Slot::Many,
        i => Slot::Model(usize::from(i)),
    };
    Some(Decoded {
        time_ms: (v >> 80) as u64,
        config_prefix: (hi << 20) | lo,
        slot,
        seq: (v as u64) & SEQ_MASK,
    })
}

/// Makes the ids of one server: the sequence, and the config deployed now
/// (for answers no model made).
#[derive(Debug)]
pub struct IdMint {
    seq: AtomicU64,
    /// The current config's prefix in the low 32 bits.
    config: AtomicU64,
}

impl Default for IdMint {
    fn default() -> Self {
        IdMint::new()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl IdMint {
    pub fn new() -> IdMint {
        // A UUIDv7's last 62 bits are random (the `fast-rng` feature).
        let start = uuid::Uuid::now_v7().as_u128() as u64;
        IdMint {
            seq: AtomicU64::new(start & SEQ_MASK),
            config: AtomicU64::new(0),
        }
    }

    /// The config now deployed (answers no model made name it).
    pub fn deployed(&self, config: &Digest) {
        self.config
            .store(u64::from(config_prefix(config)), Ordering::Relaxed);
    }

    /// The id of an answer made by the model at `slot` of `config`.
    pub fn answer(&self, config: &Digest, slot: usize) -> uuid::Uuid {
        encode(now_ms(), config_prefix(config), Some(slot), self.next())
    }

    /// The id of an answer no model made, under the config deployed now.
    pub fn other(&self) -> uuid::Uuid {
        let cfg = self.config.load(Ordering::Relaxed) as u32;
        encode(now_ms(), cfg, None, self.next())
    }

    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = Digest::of(b"{\"default\":\"model_v1\"}");
        let p = config_prefix(&d);
        assert_eq!(format!("{p:08x}"), d.hex()[..8]);
        for (slot, want) in [
            (Some(0), Slot::Model(0)),
            (Some(5), Slot::Model(5)),
            (Some(61), Slot::Model(61)),
            (Some(62), Slot::Many),
            (Some(1000), Slot::Many),
            (None, Slot::None),
        ] {
            let id = encode(1_767_225_600_123, p, slot, SEQ_MASK + 7);
            assert_eq!(id.get_version_num(), 8);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            let got = decode(&id).expect("ours");
            assert_eq!(
                got,
                Decoded {
                    time_ms: 1_767_225_600_123,
                    config_prefix: p,
                    slot: want,
                    seq: 6,
                }
            );
            assert_eq!(got.config_hex(), d.hex()[..8]);
        }
        assert_eq!(decode(&uuid::Uuid::now_v7()), None);
        assert_eq!(decode(&uuid::Uuid::nil()), None);
    }

    #[test]
    fn ids_sort_by_time_and_never_repeat_in_a_process() {
        let m = IdMint::new();
        let d = Digest::of(b"x");
        let a = m.answer(&d, 1);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = m.other();
        assert!(a < b, "{a} < {b}");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            assert!(seen.insert(m.answer(&d, 0)));
        }
    }
}
