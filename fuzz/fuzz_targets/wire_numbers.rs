//! `Content-Length` values and chunk-size lines against plain reference readings.
#![no_main]

use fulcrum::fuzz::{chunk_size, content_length, host_is_valid};
use libfuzzer_sys::fuzz_target;

fn reference_content_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn reference_chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return None;
    }
    let rest = &line[digits..];
    let blanks = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let rest = &rest[blanks..];
    if !(rest.is_empty() || rest[0] == b';') || rest.contains(&b'\r') || rest.contains(&b'\n') {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

fuzz_target!(|data: &[u8]| {
    assert_eq!(content_length(data), reference_content_length(data));
    assert_eq!(chunk_size(data), reference_chunk_size(data));
    if host_is_valid(data) {
        assert!(
            !data
                .iter()
                .any(|b| b.is_ascii_whitespace() || *b == b'/' || *b == b'@')
        );
    }
});
