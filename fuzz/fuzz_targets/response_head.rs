//! The upstream client's response-head and trailer parsers: never panic, never claim a head
//! longer than the bytes, and judge a head the same with or without what follows it.
#![no_main]

use fulcrum::fuzz::{response_head, trailer_section};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(length)) = response_head(data) {
        assert!(length <= data.len());
        assert_eq!(response_head(&data[..length]), Ok(Some(length)));
    }
    // Refusing is fine; only a panic fails.
    let _ = trailer_section(data);
});
