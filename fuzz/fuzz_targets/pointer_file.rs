//! Pointer files are untrusted (anyone's commit can carry one): parsing
//! arbitrary bytes must never panic, and whatever parses must round-trip
//! and name only a plain file beside the pointer.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use recsys::workspace::Pointer;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Pointer::parse(Path::new("fuzz.recsys"), data) {
        assert!(!p.path.contains('/') && p.path != ".." && !p.path.is_empty());
        let again = Pointer::parse(Path::new("fuzz.recsys"), p.to_text().as_bytes())
            .expect("a parsed pointer re-parses");
        assert_eq!(again, p);
    }
});
