//! Header rules for a forwarding proxy (RFC 9110 §7.6).
//!
//! Hop-by-hop fields describe one connection, not the message, so they never cross the proxy:
//! the fixed set below plus every field named in `Connection` (RFC 9110 §7.6.1). Forwarded
//! requests gain `X-Forwarded-For/-Proto/-Host`, and both directions gain `Via` (§7.6.3).

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};

/// Fields that are hop-by-hop whatever `Connection` says: RFC 9110 §7.6.1 names `Connection`,
/// `Proxy-Connection`, `Keep-Alive`, `TE`, `Transfer-Encoding` and `Upgrade`; RFC 2616 §13.5.1
/// adds `Trailer`, `Proxy-Authenticate` and `Proxy-Authorization`, which still only concern
/// the hop they arrive on.
///
/// Pre-built names: removing by `HeaderName` skips parsing a string on every request.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// `X-Forwarded-For`: the chain of client addresses (de-facto standard, see RFC 7239 §1).
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the `Host` the client asked for.
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether `name` is one of [`HOP_BY_HOP`]; the length filter settles most names at once.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(name.as_str().len(), 2 | 7 | 10 | 16..=19) && HOP_BY_HOP.contains(name)
}

/// Removes every hop-by-hop field, including the ones `Connection` lists.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names is far cheaper than nine hashed
    // removals.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderValue> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        for value in &listed {
            let Ok(value) = value.to_str() else {
                continue;
            };
            for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                headers.remove(name);
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (RFC 9110 §7.8): its `Upgrade` value,
/// when `Connection` also lists `upgrade`.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Puts back the two hop-by-hop fields an upgrade needs on the next hop.
pub fn keep_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// The `Via` value this proxy adds for a message of `version` (RFC 9110 §7.6.3).
pub fn via(version: Version) -> HeaderValue {
    HeaderValue::from_static(match version {
        Version::HTTP_09 => "0.9 fulcrum",
        Version::HTTP_10 => "1.0 fulcrum",
        Version::HTTP_2 => "2 fulcrum",
        Version::HTTP_3 => "3 fulcrum",
        _ => "1.1 fulcrum",
    })
}

/// What the proxy knows about the client connection a request arrived on.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client's IP, pre-rendered once per connection.
    pub ip: HeaderValue,
    /// `http` or `https`.
    pub proto: HeaderValue,
}

/// Rewrites a client request's head for the backend, in place.
///
/// Removes hop-by-hop fields, makes sure `Host` is present (HTTP/2 clients send `:authority`
/// instead), turns the target into origin-form, and adds the forwarding fields.
pub fn prepare_request(
    uri: &mut Uri,
    version: Version,
    headers: &mut HeaderMap,
    client: &ClientInfo,
) {
    remove_hop_by_hop(headers);

    // Each lookup hashes the name: every field below is looked up once.
    let host = match headers.get(header::HOST) {
        Some(host) => Some(host.clone()),
        None => uri
            .authority()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
            .inspect(|host| {
                headers.insert(header::HOST, host.clone());
            }),
    };
    if uri.scheme().is_some() || uri.authority().is_some() {
        let origin_form = uri
            .path_and_query()
            .cloned()
            .map_or_else(|| Uri::from_static("/"), Uri::from);
        *uri = origin_form;
    }

    match headers.entry(&X_FORWARDED_FOR) {
        Entry::Vacant(slot) => {
            slot.insert(client.ip.clone());
        }
        Entry::Occupied(mut slot) => {
            let previous = slot.get();
            let mut chain = Vec::with_capacity(previous.len() + 2 + client.ip.len());
            chain.extend_from_slice(previous.as_bytes());
            chain.extend_from_slice(b", ");
            chain.extend_from_slice(client.ip.as_bytes());
            slot.insert(HeaderValue::from_bytes(&chain).unwrap_or_else(|_| client.ip.clone()));
        }
    }
    headers.insert(X_FORWARDED_PROTO.clone(), client.proto.clone());
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST.clone(), host);
    }
    headers.append(header::VIA, via(version));
}

/// Rewrites a backend response's head for the client, in place.
pub fn prepare_response(version: Version, headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    headers.append(header::VIA, via(version));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> ClientInfo {
        ClientInfo {
            ip: HeaderValue::from_static("203.0.113.7"),
            proto: HeaderValue::from_static("http"),
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn length_filter_admits_every_hop_by_hop_name() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        for name in [
            header::CONTENT_LENGTH,
            header::HOST,
            header::DATE,
            X_FORWARDED_FOR.clone(),
        ] {
            assert!(!is_hop_by_hop(&name), "{name}");
        }
    }

    #[test]
    fn fixed_hop_by_hop_fields_are_removed() {
        for name in &HOP_BY_HOP {
            let mut map = HeaderMap::new();
            map.insert(name.clone(), HeaderValue::from_static("x"));
            map.insert("accept", HeaderValue::from_static("*/*"));
            remove_hop_by_hop(&mut map);
            assert!(!map.contains_key(name), "{name} survived");
            assert!(map.contains_key("accept"));
        }
    }

    #[test]
    fn fields_named_in_connection_are_removed() {
        let mut map = headers(&[
            ("connection", "x-secret, Keep-Alive"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
        ]);
        remove_hop_by_hop(&mut map);
        assert!(!map.contains_key("x-secret"));
        assert!(!map.contains_key("x-other"));
        assert!(!map.contains_key("connection"));
        assert_eq!(map["x-kept"], "3");
    }

    #[test]
    fn forwarding_fields_are_added_and_host_kept() {
        let mut uri = Uri::from_static("/a?b=1");
        let mut map = headers(&[
            ("host", "shop.example"),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        prepare_request(&mut uri, Version::HTTP_11, &mut map, &client());
        assert_eq!(map["host"], "shop.example");
        assert_eq!(map["x-forwarded-for"], "198.51.100.1, 203.0.113.7");
        assert_eq!(map["x-forwarded-proto"], "http");
        assert_eq!(map["x-forwarded-host"], "shop.example");
        assert_eq!(map["via"], "1.1 fulcrum");
        assert_eq!(uri, "/a?b=1");
    }

    #[test]
    fn http2_authority_becomes_host_and_origin_form() {
        let mut uri = Uri::from_static("http://api.example:8080/v1/items?x=1");
        let mut map = HeaderMap::new();
        prepare_request(&mut uri, Version::HTTP_2, &mut map, &client());
        assert_eq!(map["host"], "api.example:8080");
        assert_eq!(uri, "/v1/items?x=1");
        assert_eq!(map["via"], "2 fulcrum");
    }

    #[test]
    fn upgrade_needs_both_fields() {
        let map = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(upgrade_protocol(&map).expect("an upgrade"), "websocket");
        assert!(upgrade_protocol(&headers(&[("upgrade", "websocket")])).is_none());
        assert!(upgrade_protocol(&headers(&[("connection", "upgrade")])).is_none());
        let mut map = HeaderMap::new();
        keep_upgrade(&mut map, HeaderValue::from_static("websocket"));
        assert_eq!(map["connection"], "upgrade");
        assert_eq!(map["upgrade"], "websocket");
    }

    #[test]
    fn response_loses_hop_by_hop_and_gains_via() {
        let mut map = headers(&[("keep-alive", "timeout=5"), ("content-type", "text/plain")]);
        prepare_response(Version::HTTP_11, &mut map);
        assert!(!map.contains_key("keep-alive"));
        assert_eq!(map["via"], "1.1 fulcrum");
        assert_eq!(map["content-type"], "text/plain");
    }
}
