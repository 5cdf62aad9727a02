//! `Host` rules (RFC 9112 §3.2): which requests must be refused before anything is forwarded.
//!
//! Two `Host` fields, or one that is not `uri-host [ ":" port ]` (RFC 3986 §3.2.2–3), are a
//! 400: a backend and the proxy could each pick a different one. So is an HTTP/1.1 request
//! without `Host`, and a target whose authority carries userinfo (RFC 9110 §4.2.4).

use http::header::{self, HeaderMap};
use http::{Uri, Version};

/// Why a request's `Host` makes it unforwardable; the text goes into the 400.
pub(crate) fn refusal(uri: &Uri, version: Version, headers: &HeaderMap) -> Option<&'static str> {
    let mut values = headers.get_all(header::HOST).iter();
    let first = values.next();
    if values.next().is_some() {
        return Some("more than one Host field");
    }
    match first {
        None if version == Version::HTTP_11 => return Some("missing Host header"),
        Some(host) if !is_valid(host.as_bytes()) => return Some("invalid Host header"),
        _ => {}
    }
    match uri.authority() {
        Some(authority) if authority.as_str().contains('@') => {
            Some("userinfo in the request target")
        }
        Some(authority) if !is_valid(authority.as_str().as_bytes()) => {
            Some("invalid authority in the request target")
        }
        _ => None,
    }
}

/// Whether `value` is `uri-host [ ":" port ]` (RFC 3986 §3.2.2–3). An empty value is valid:
/// RFC 9112 §3.2 has clients send one for a target without an authority.
pub(crate) fn is_valid(value: &[u8]) -> bool {
    let (host_ok, rest) = match value.strip_prefix(b"[") {
        Some(literal) => match literal.iter().position(|&b| b == b']') {
            Some(end) => (
                end > 0 && literal[..end].iter().all(|&b| is_literal_byte(b)),
                &literal[end + 1..],
            ),
            None => return false,
        },
        None => {
            let end = value.iter().position(|&b| b == b':').unwrap_or(value.len());
            (is_reg_name(&value[..end]), &value[end..])
        }
    };
    let port_ok = match rest.split_first() {
        None => true,
        Some((b':', port)) => port.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    host_ok && port_ok
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )`; IPv4 addresses are reg-names too.
fn is_reg_name(name: &[u8]) -> bool {
    let mut bytes = name.iter();
    while let Some(&byte) = bytes.next() {
        let ok = if byte == b'%' {
            bytes.next().is_some_and(u8::is_ascii_hexdigit)
                && bytes.next().is_some_and(u8::is_ascii_hexdigit)
        } else {
            is_unreserved_or_sub_delim(byte)
        };
        if !ok {
            return false;
        }
    }
    true
}

fn is_unreserved_or_sub_delim(byte: u8) -> bool {
    UNRESERVED_OR_SUB_DELIM[usize::from(byte)]
}

/// `unreserved / sub-delims` (RFC 3986 §2.2–3) as a table: one load per byte of every request's
/// `Host`, instead of a search of the punctuation list.
static UNRESERVED_OR_SUB_DELIM: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        byte += 1;
    }
    table
};

/// A byte of an `IP-literal` between the brackets: IPv6 (hex digits, `:`, `.`) or IPvFuture
/// (`v` hex `.` then unreserved, sub-delims and `:`), checked loosely as that alphabet.
fn is_literal_byte(byte: u8) -> bool {
    byte == b':' || is_unreserved_or_sub_delim(byte)
}

/// The request's host without its port: the URI's authority (HTTP/2, absolute form), else
/// `Host`.
pub(crate) fn name<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let authority = match uri.host() {
        Some(host) => host,
        None => headers.get(http::header::HOST)?.to_str().ok()?,
    };
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority
            .split_once(':')
            .map_or(authority, |(host, _)| host)
    };
    Some(host.trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn host_syntax_follows_rfc_3986() {
        for good in [
            &b""[..],
            b"a.example",
            b"a.example:8080",
            b"a.example:",
            b"127.0.0.1:80",
            b"[::1]",
            b"[::1]:443",
            b"xn--bcher-kva.example",
            b"a%2Db.example",
        ] {
            assert!(is_valid(good), "{:?}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b"a.example "[..],
            b" a.example",
            b"a.example:80x",
            b"a.example:80:81",
            b"a b",
            b"a/b",
            b"user@a.example",
            b"[::1",
            b"[]",
            b"[::1]x",
            b"a%2",
            b"a%zz",
            b"a\"b",
        ] {
            assert!(!is_valid(bad), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    fn with_hosts(hosts: &[&'static str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for host in hosts {
            map.append(header::HOST, HeaderValue::from_static(host));
        }
        map
    }

    #[test]
    fn refusals_name_the_problem() {
        let origin = Uri::from_static("/x");
        let h11 = Version::HTTP_11;
        assert_eq!(refusal(&origin, h11, &with_hosts(&["a.example"])), None);
        assert_eq!(
            refusal(&origin, h11, &with_hosts(&["a.example", "b.example"])),
            Some("more than one Host field")
        );
        assert_eq!(
            refusal(&origin, h11, &with_hosts(&["a.example", "a.example"])),
            Some("more than one Host field")
        );
        assert_eq!(
            refusal(&origin, h11, &with_hosts(&["a b"])),
            Some("invalid Host header")
        );
        assert_eq!(
            refusal(&origin, h11, &HeaderMap::new()),
            Some("missing Host header")
        );
        assert_eq!(refusal(&origin, Version::HTTP_10, &HeaderMap::new()), None);
        assert_eq!(
            refusal(
                &Uri::from_static("http://u@a.example/"),
                h11,
                &with_hosts(&["a.example"])
            ),
            Some("userinfo in the request target")
        );
        let absolute = Uri::from_static("http://a.example/x");
        assert_eq!(refusal(&absolute, Version::HTTP_2, &HeaderMap::new()), None);
    }
}
