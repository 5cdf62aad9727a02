//! A request's hash key for `consistent_hash` pools (`hash_key`), and the `Cookie` field
//! parsing sticky sessions share.
//!
//! The key is hashed as bytes from the request head as the client sent it: a header's first
//! value, a cookie's value, the path, or the path and query (origin-form, so HTTP/1.1 and
//! HTTP/2 requests for the same resource hash the same). A client IP is hashed as its 4 or 16
//! address bytes (IPv4-mapped IPv6 as IPv4), the same for HTTP and TCP pools.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Uri};

use super::consistent_hash::key_hash;
use crate::config::HashKey;

/// What a pool hashes, ready to apply to a request.
#[derive(Debug)]
pub(crate) struct RequestKey(HashKey);

impl RequestKey {
    /// The key `hash_key` configures.
    pub(crate) fn new(key: HashKey) -> Self {
        RequestKey(key)
    }

    /// The hash of the request's key, or `None` when the request lacks it. `client_ip` is the
    /// client address as rendered for `X-Forwarded-For`.
    pub(crate) fn hash(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        client_ip: &HeaderValue,
    ) -> Option<u64> {
        match &self.0 {
            HashKey::Header(name) => headers.get(name).map(|value| key_hash(value.as_bytes())),
            HashKey::Cookie(name) => cookie_values(headers, name).next().map(key_hash),
            HashKey::ClientIp => {
                let text = std::str::from_utf8(client_ip.as_bytes()).ok()?;
                let text = text
                    .strip_prefix('[')
                    .and_then(|text| text.strip_suffix(']'))
                    .unwrap_or(text);
                text.parse().ok().map(ip_hash)
            }
            HashKey::Path => Some(key_hash(uri.path().as_bytes())),
            HashKey::Uri => Some(key_hash(
                uri.path_and_query()
                    .map_or(uri.path(), |path| path.as_str())
                    .as_bytes(),
            )),
        }
    }
}

/// The hash of a client address: its 4 (IPv4, also IPv4-mapped IPv6) or 16 bytes.
pub(crate) fn ip_hash(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(ip) => key_hash(&ip.octets()),
        IpAddr::V6(ip) => key_hash(&ip.octets()),
    }
}

/// The values of the cookies called `name` in the request's `Cookie` fields, in order
/// (RFC 6265 §5.4: `name=value` pairs separated by `; `). Values keep their quotes, if any.
pub(crate) fn cookie_values<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|field| field.as_bytes().split(|&byte| byte == b';'))
        .filter_map(move |pair| {
            let pair = pair.trim_ascii();
            let (cookie, value) = pair.split_at(pair.iter().position(|&byte| byte == b'=')?);
            (cookie.trim_ascii_end() == name.as_bytes()).then(|| value[1..].trim_ascii_start())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn cookies_are_found_in_every_cookie_field_and_only_by_their_exact_name() {
        let map = headers(&[
            ("cookie", "a=1; session=abc ;x_session=no"),
            ("cookie", "session = def;empty=;novalue"),
        ]);
        let found: Vec<&[u8]> = cookie_values(&map, "session").collect();
        assert_eq!(found, [b"abc".as_slice(), b"def"]);
        assert_eq!(cookie_values(&map, "empty").collect::<Vec<_>>(), [b""]);
        assert_eq!(cookie_values(&map, "novalue").count(), 0);
        assert_eq!(cookie_values(&map, "sess").count(), 0);
    }

    #[test]
    fn each_key_form_reads_its_part_and_a_missing_part_is_no_key() {
        let uri: Uri = "http://example.com/a/b?q=1".parse().expect("uri");
        let origin: Uri = "/a/b?q=1".parse().expect("uri");
        let map = headers(&[("x-user-id", "42"), ("cookie", "uid=42")]);
        let ip = HeaderValue::from_static("203.0.113.7");
        let hash =
            |key: HashKey, uri: &Uri, map: &HeaderMap| RequestKey::new(key).hash(uri, map, &ip);
        let user = HashKey::Header(http::HeaderName::from_static("x-user-id"));
        assert_eq!(hash(user.clone(), &uri, &map), Some(key_hash(b"42")));
        assert_eq!(
            hash(HashKey::Cookie("uid".into()), &uri, &map),
            Some(key_hash(b"42"))
        );
        assert_eq!(hash(HashKey::Path, &uri, &map), Some(key_hash(b"/a/b")));
        assert_eq!(hash(HashKey::Uri, &uri, &map), Some(key_hash(b"/a/b?q=1")));
        assert_eq!(
            hash(HashKey::Uri, &origin, &map),
            hash(HashKey::Uri, &uri, &map)
        );
        let v4: IpAddr = "203.0.113.7".parse().expect("ip");
        assert_eq!(hash(HashKey::ClientIp, &uri, &map), Some(ip_hash(v4)));
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().expect("ip");
        assert_eq!(ip_hash(mapped), ip_hash(v4));
        let empty = HeaderMap::new();
        assert_eq!(hash(user, &uri, &empty), None);
        assert_eq!(hash(HashKey::Cookie("uid".into()), &uri, &empty), None);
    }
}
