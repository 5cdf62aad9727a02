//! The PROXY protocol parser: never panics, and a header it accepts lies within the bytes and
//! parses the same on its own.
#![no_main]

use fulcrum::fuzz::proxy_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(length)) = proxy_header(data) {
        assert!(length <= data.len());
        assert_eq!(proxy_header(&data[..length]), Ok(Some(length)));
    }
});
