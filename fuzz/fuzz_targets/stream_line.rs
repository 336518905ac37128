//! Fuzzes the stream parser: any bytes must parse or be rejected without a
//! panic, and whatever parses must survive `to_line` -> `parse_line`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use recsys::stream::{parse_bytes, parse_line};

fuzz_target!(|data: &[u8]| {
    if let Ok(event) = parse_bytes(data) {
        let line = event.to_line();
        match parse_line(&line) {
            Ok(again) => assert_eq!(again, event, "round trip changed {line:?}"),
            Err(e) => panic!("to_line wrote {line:?}, which does not parse: {e}"),
        }
    }
});
