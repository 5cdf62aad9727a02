//! Numbers and sections on the wire: `Content-Length` values, chunk sizes and trailer sections
//! (RFC 9110 §8.6, RFC 9112 §7.1), read the same way from clients and from backends, and field
//! values.

use bytes::Bytes;
use http::HeaderValue;
use http::header::InvalidHeaderValue;

/// A copy of a field value as a `HeaderValue` (an allocation of its own: no reference count
/// shared with other values moves as it is cloned or dropped), checked for the bytes
/// `HeaderValue` accepts (HTAB, 0x20–0x7E, 0x80–0xFF; not CR, LF, NUL or other controls). The
/// common value, all visible ASCII and spaces, is checked eight bytes at a time and taken as it
/// is; `HeaderValue`'s own check, a byte at a time, cost a tenth of a proxied request's field
/// handling. Anything else (a tab, obs-text) goes through that check.
pub(crate) fn field_value(value: &[u8]) -> Result<HeaderValue, InvalidHeaderValue> {
    if !printable_ascii(value) {
        return HeaderValue::from_bytes(value);
    }
    let bytes = Bytes::copy_from_slice(value);
    // SAFETY: `from_maybe_shared_unchecked` asks for valid UTF-8, and for the value to be
    // well-formed its bytes must be ones `HeaderValue` accepts: every byte is 0x20–0x7E
    // (checked above), which is both. Debug builds check again (and panic).
    #[allow(unsafe_code)]
    let value = unsafe { HeaderValue::from_maybe_shared_unchecked(bytes) };
    Ok(value)
}

/// Whether every byte of `bytes` is 0x20–0x7E: visible ASCII or a space.
fn printable_ascii(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        let word = u64::from_ne_bytes(eight);
        // A byte with its high bit set; a byte below 0x20 (subtracting 0x20 from each byte
        // borrows into its high bit only there, among bytes below 0x80); a DEL (0x7F: XOR
        // makes it zero, and subtracting one borrows only from a zero byte).
        let high = word & HIGH;
        let below = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
        let del = word ^ (ONES * 0x7f);
        let del = del.wrapping_sub(ONES) & !del & HIGH;
        if high | below | del != 0 {
            return false;
        }
    }
    words.remainder().iter().all(|&b| (0x20..0x7f).contains(&b))
}

/// A `Content-Length` value (RFC 9110 §8.6): one or more ASCII digits fitting in a `u64`;
/// anything else (a sign, spaces, an empty value, an overflow) is `None`.
pub(crate) fn content_length(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |total, &byte| {
        let digit = char::from(byte).to_digit(10)?;
        total.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// Value of an ASCII hex digit.
pub(crate) fn hex_digit(byte: u8) -> Option<u64> {
    char::from(byte).to_digit(16).map(u64::from)
}

/// The size on a chunk-size line (`1a;ext=1\r\n`, RFC 9112 §7.1); extensions are ignored.
/// At most 15 hex digits, so the size always fits in a `u64` with room to add to it. Only
/// SP and HTAB may follow the digits (as hyper allows), and no CR or LF may come before the
/// final CRLF: a line another parser ends elsewhere is refused.
pub(crate) fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    if line.iter().any(|&b| b == b'\r' || b == b'\n') {
        return None;
    }
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let blanks = digits
        .iter()
        .rev()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let digits = &digits[..digits.len() - blanks];
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits
        .iter()
        .try_fold(0u64, |size, &digit| Some(size * 16 + hex_digit(digit)?))
}

/// Largest trailer section accepted after a chunked body.
pub(crate) const MAX_TRAILERS: usize = 64 * 1024;

/// The fields of a trailer section ending in its empty line (RFC 9112 §7.1.2); `None` when it
/// does not parse or holds a field that is not valid.
pub(crate) fn trailers(section: &[u8]) -> Option<http::HeaderMap> {
    let mut fields = [httparse::EMPTY_HEADER; 100];
    let httparse::Status::Complete((_, fields)) =
        httparse::parse_headers(section, &mut fields).ok()?
    else {
        return None;
    };
    let mut trailers = http::HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = http::HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let value = http::HeaderValue::from_bytes(field.value).ok()?;
        trailers.append(name, value);
    }
    Some(trailers)
}

/// Whether a `Transfer-Encoding` value's last coding is chunked. Several fields form one list
/// (RFC 9110 §5.3), so the last field's value decides.
pub(crate) fn last_coding_is_chunked(value: &[u8]) -> bool {
    let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// What a `Connection` value says: `(close, keep_alive)`.
pub(crate) fn connection_options(value: &[u8]) -> (bool, bool) {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii).fold(
        (false, false),
        |(close, keep_alive), token| {
            // Mostly lower case: the exact comparison settles that at once.
            let is = |name: &[u8]| token == name || token.eq_ignore_ascii_case(name);
            (close || is(b"close"), keep_alive || is(b"keep-alive"))
        },
    )
}

/// Appends one field line, `name: value` and CRLF, to `out`.
pub(crate) fn field_line(out: &mut Vec<u8>, name: &http::HeaderName, value: &http::HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body: the last chunk, `trailers` as its trailer section, the empty line.
pub(crate) fn last_chunk<'a>(
    trailers: impl IntoIterator<Item = (&'a http::HeaderName, &'a http::HeaderValue)>,
) -> Vec<u8> {
    let mut end = b"0\r\n".to_vec();
    for (name, value) in trailers {
        field_line(&mut end, name, value);
    }
    end.extend_from_slice(b"\r\n");
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_digits_that_fit_in_a_u64() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"65536"), Some(65536));
        assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(
            content_length(b"000000000000000000000042"),
            Some(42),
            "leading zeros are digits too"
        );
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"+1",
            b"-1",
            b" 1",
            b"1 ",
            b"0x10",
            b"1_000",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// Found by `chunk_size_matches_the_reference`: other whitespace than SP/HTAB after the
    /// digits, or a CR/LF inside the line, was taken for blanks.
    #[test]
    fn chunk_size_lines_have_one_line_ending() {
        assert_eq!(chunk_size(b"1a \t;x=y\r\n"), Some(0x1a));
        for bad in [&b"00\n\r\n"[..], b"5\r\r\n", b"5\x0c\r\n", b"5;a\rb\r\n"] {
            assert_eq!(chunk_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn transfer_codings_and_connection_options_are_lists() {
        assert!(last_coding_is_chunked(b"gzip, Chunked "));
        assert!(!last_coding_is_chunked(b"chunked, gzip"));
        assert!(!last_coding_is_chunked(b"xchunked"));
        assert_eq!(connection_options(b"Upgrade, CLOSE"), (true, false));
        assert_eq!(connection_options(b" keep-alive ,te"), (false, true));
        assert_eq!(connection_options(b"closed"), (false, false));
    }

    #[test]
    fn a_last_chunk_carries_its_trailers_and_reads_back() {
        let mut fields = http::HeaderMap::new();
        fields.append("x-sum", http::HeaderValue::from_static("7"));
        fields.append("x-sum", http::HeaderValue::from_static("8"));
        let end = last_chunk(&fields);
        assert_eq!(end, b"0\r\nx-sum: 7\r\nx-sum: 8\r\n\r\n");
        assert_eq!(trailers(&end[3..]), Some(fields));
        assert_eq!(last_chunk(&http::HeaderMap::new()), b"0\r\n\r\n");
    }

    #[test]
    fn trailer_sections_are_fields_up_to_an_empty_line() {
        let fields = trailers(b"X-Sum: 1\r\nexpires: never\r\nX-Sum: 2\r\n\r\n").expect("valid");
        assert_eq!(fields.get_all("x-sum").iter().count(), 2);
        assert_eq!(fields["expires"], "never");
        assert!(trailers(b"\r\n").expect("empty").is_empty());
        for bad in [
            &b"X Sum: 1\r\n\r\n"[..],
            b"X-Sum: \x01\r\n\r\n",
            b"X-Sum: 1\r\n",
            b": 1\r\n\r\n",
        ] {
            assert!(trailers(bad).is_none(), "{bad:?}");
        }
    }

    mod properties {
        use super::super::*;
        use crate::testing::proptest_config;
        use proptest::prelude::*;

        /// Bytes from the alphabet a length or chunk-size line is made of, and a few others.
        fn wire_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
            let byte = prop_oneof![
                4 => prop::sample::select(b"0123456789abcdefABCDEF".to_vec()),
                1 => prop::sample::select(b" \t;=,+-xX\r\n\x0c\"".to_vec()),
                1 => any::<u8>(),
            ];
            prop::collection::vec(byte, 0..max)
        }

        /// The grammar of RFC 9112 §7.1 as fulcrum accepts it, written plainly: 1 to 15 hex
        /// digits, optional SP/HTAB, then an extension (anything but CR and LF) after `;`.
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
            if !(rest.is_empty() || rest[0] == b';')
                || rest.contains(&b'\r')
                || rest.contains(&b'\n')
            {
                return None;
            }
            u64::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
        }

        proptest! {
            #![proptest_config(proptest_config(2048))]

            #[test]
            fn a_field_value_is_accepted_exactly_as_header_value_accepts_it(
                value in prop::collection::vec(
                    prop_oneof![
                        6 => 0x20u8..0x7f,
                        1 => prop::sample::select(vec![0u8, b'\t', b'\r', b'\n', 0x1f, 0x7f, 0x80, 0xff]),
                        1 => any::<u8>(),
                    ],
                    0..40,
                )
            ) {
                let expected = HeaderValue::from_bytes(&value).ok();
                let got = field_value(&value).ok();
                prop_assert_eq!(got.as_ref().map(HeaderValue::as_bytes), expected.as_ref().map(HeaderValue::as_bytes));
                prop_assert_eq!(
                    printable_ascii(&value),
                    value.iter().all(|&b| (0x20..0x7f).contains(&b))
                );
            }

            #[test]
            fn content_length_is_exactly_u64_decimal(digits in wire_bytes(24)) {
                let reference = digits
                    .iter()
                    .all(u8::is_ascii_digit)
                    .then(|| std::str::from_utf8(&digits).ok()?.parse::<u64>().ok())
                    .flatten();
                prop_assert_eq!(content_length(&digits), reference);
            }

            #[test]
            fn every_u64_round_trips_as_a_content_length(n in any::<u64>(), zeros in 0usize..4) {
                let text = format!("{}{n}", "0".repeat(zeros));
                prop_assert_eq!(content_length(text.as_bytes()), Some(n));
            }

            #[test]
            fn trailer_sections_never_panic(section in wire_bytes(64)) {
                // Refusing is fine; only a panic fails.
                let _ = trailers(&section);
            }

            #[test]
            fn chunk_size_matches_the_reference(mut line in wire_bytes(24), crlf in any::<bool>()) {
                if crlf {
                    line.extend_from_slice(b"\r\n");
                }
                prop_assert_eq!(chunk_size(&line), reference_chunk_size(&line));
            }
        }
    }
}
