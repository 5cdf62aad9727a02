//! Numbers on the wire: `Content-Length` values and chunk sizes (RFC 9110 §8.6, RFC 9112 §7.1),
//! read the same way by the request-framing scanner and the upstream HTTP/1.1 client.

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
/// At most 15 hex digits, so the size always fits in a `u64` with room to add to it.
pub(crate) fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r\n")?;
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    let digits = digits.trim_ascii_end();
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits
        .iter()
        .try_fold(0u64, |size, &digit| Some(size * 16 + hex_digit(digit)?))
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
}
