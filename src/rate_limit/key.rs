//! What a request is counted against: the real client address, or a header's value.
//!
//! The client address behind proxies is the standard right-to-left walk of `X-Forwarded-For`:
//! the chain is believed only when the socket peer is a trusted proxy; from the right, each
//! trusted hop is skipped, and the first untrusted address is the client. An entry that is not
//! an address stops the walk at the last trusted hop, since nothing left of it can be trusted.
//! Nothing here allocates.

use std::hash::BuildHasher;
use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::config::RateLimitKey;
use crate::http::headers::X_FORWARDED_FOR;

/// One bucket's key. A header value is kept as a keyed hash, not its bytes: no allocation per
/// request, bounded memory per key, and no secret (an API key) in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    /// A client address.
    Ip(IpAddr),
    /// The hash of a header value.
    Header(u64),
}

/// The key of a request from socket peer `peer` with `headers`, by `kind`. `seed` hashes header
/// values (one per limiter, so keys cannot be crafted to collide across processes).
pub(crate) fn of_request(
    kind: &RateLimitKey,
    trusted: &[IpNet],
    seed: &impl BuildHasher,
    peer: IpAddr,
    headers: &HeaderMap,
) -> Key {
    if let RateLimitKey::Header(name) = kind {
        if let Some(value) = headers.get(name) {
            return Key::Header(seed.hash_one(value.as_bytes()));
        }
    }
    Key::Ip(client_ip(peer, headers, trusted))
}

/// The real client address of a request from `peer`: `peer` itself unless it is in `trusted`,
/// else the first untrusted address of `X-Forwarded-For` from the right (RFC 7239 §5.2 and the
/// de-facto rule for `X-Forwarded-For`). IPv4-mapped IPv6 addresses count as IPv4.
pub(crate) fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let mut client = peer.to_canonical();
    if !is_trusted(client, trusted) {
        return client;
    }
    // Several fields form one list, in order (RFC 9110 §5.3): walk the last one first.
    for field in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(field) = field.to_str() else {
            return client;
        };
        for entry in field.rsplit(',') {
            let entry = entry.trim();
            if entry.is_empty() {
                // `a,,b` and a trailing comma: empty list elements are ignored (RFC 9110 §5.6.1).
                continue;
            }
            let Some(address) = parse_entry(entry) else {
                return client;
            };
            client = address;
            if !is_trusted(address, trusted) {
                return address;
            }
        }
    }
    client
}

fn is_trusted(address: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|network| network.contains(&address))
}

/// One `X-Forwarded-For` entry: an address, possibly `[v6]`, or either with a `:port` (some
/// proxies append one).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    if let Ok(address) = entry.parse::<IpAddr>() {
        return Some(address.to_canonical());
    }
    if let Ok(socket) = entry.parse::<std::net::SocketAddr>() {
        return Some(socket.ip().to_canonical());
    }
    let bracketed = entry.strip_prefix('[')?.strip_suffix(']')?;
    bracketed.parse::<IpAddr>().ok().map(|a| a.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().expect("a network")).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                &X_FORWARDED_FOR,
                http::HeaderValue::from_str(value).expect("a value"),
            );
        }
        headers
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let headers = xff(&["198.51.100.1"]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &headers, &nets(&["10.0.0.0/8"])),
            ip("203.0.113.9")
        );
        assert_eq!(client_ip(ip("10.0.0.1"), &headers, &[]), ip("10.0.0.1"));
    }

    #[test]
    fn a_trusted_peer_forwards_the_first_untrusted_address_from_the_right() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client put a spoofed address first; the proxies appended the real one.
        let headers = xff(&["1.2.3.4, 198.51.100.7, 10.1.1.1"]);
        assert_eq!(
            client_ip(ip("10.0.0.2"), &headers, &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn several_fields_are_one_list_in_order() {
        let trusted = nets(&["10.0.0.0/8"]);
        let headers = xff(&["198.51.100.1", "198.51.100.2, 10.0.0.3", "10.0.0.4"]);
        assert_eq!(
            client_ip(ip("10.0.0.5"), &headers, &trusted),
            ip("198.51.100.2")
        );
    }

    #[test]
    fn a_chain_of_only_trusted_hops_ends_at_the_leftmost() {
        let trusted = nets(&["10.0.0.0/8"]);
        let headers = xff(&["10.0.0.7, 10.0.0.8"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &trusted),
            ip("10.0.0.7")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn a_malformed_entry_stops_at_the_last_trusted_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let headers = xff(&["198.51.100.1, unknown, 10.0.0.9"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &trusted),
            ip("10.0.0.9")
        );
        let headers = xff(&["198.51.100.1, garbage"]);
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &trusted),
            ip("10.0.0.1")
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            &X_FORWARDED_FOR,
            http::HeaderValue::from_bytes(b"198.51.100.1, \xff").expect("opaque bytes"),
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers, &trusted),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn entries_with_ports_brackets_and_mapped_addresses() {
        let trusted = nets(&["10.0.0.0/8", "2001:db8::/32"]);
        let cases = [
            ("198.51.100.1:4711", "198.51.100.1"),
            ("[2001:db9::1]:443", "2001:db9::1"),
            ("[2001:db9::2]", "2001:db9::2"),
            ("2001:db9::3", "2001:db9::3"),
            ("::ffff:198.51.100.4", "198.51.100.4"),
            ("198.51.100.5, ::ffff:10.0.0.6", "198.51.100.5"),
            ("198.51.100.6,, 2001:db8::1,", "198.51.100.6"),
        ];
        for (chain, client) in cases {
            assert_eq!(
                client_ip(ip("::ffff:10.0.0.1"), &xff(&[chain]), &trusted),
                ip(client),
                "{chain}"
            );
        }
    }

    #[test]
    fn header_keys_fall_back_to_the_client_address() {
        let seed = std::hash::RandomState::new();
        let name = http::HeaderName::from_static("x-api-key");
        let kind = RateLimitKey::Header(name.clone());
        let mut headers = HeaderMap::new();
        let peer = ip("192.0.2.1");
        assert_eq!(of_request(&kind, &[], &seed, peer, &headers), Key::Ip(peer));
        headers.insert(&name, http::HeaderValue::from_static("alpha"));
        let alpha = of_request(&kind, &[], &seed, peer, &headers);
        headers.insert(&name, http::HeaderValue::from_static("beta"));
        let beta = of_request(&kind, &[], &seed, peer, &headers);
        assert!(matches!(alpha, Key::Header(_)));
        assert_ne!(alpha, beta);
        assert_eq!(
            of_request(&RateLimitKey::ClientIp, &[], &seed, peer, &headers),
            Key::Ip(peer)
        );
    }
}
