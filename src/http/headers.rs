//! Header rules for a forwarding proxy (RFC 9110 §7.6).
//!
//! Hop-by-hop fields describe one connection, not the message, so they never cross the proxy:
//! the fixed set below plus every field named in `Connection` (RFC 9110 §7.6.1), except `Host`,
//! which no `Connection` token may take away. Forwarded requests gain
//! `X-Forwarded-For/-Proto/-Host`, and both directions gain `Via` (§7.6.3). Trailer sections
//! lose the fields a trailer may not carry (RFC 9110 §6.5.1).

use bytes::Bytes;
use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};
use http_body::Frame;

/// Fields that are hop-by-hop whatever `Connection` says: RFC 9110 §7.6.1 names `Connection`,
/// `Proxy-Connection`, `Keep-Alive`, `TE`, `Transfer-Encoding` and `Upgrade`; RFC 2616 §13.5.1
/// adds `Proxy-Authenticate` and `Proxy-Authorization`, which still only concern the hop they
/// arrive on. Not `Trailer` (RFC 2616 listed it): it describes the message, and hyper sends an
/// HTTP/1.1 client only the trailer fields it names.
///
/// Pre-built names: removing by `HeaderName` skips parsing a string on every request.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
];

/// `X-Forwarded-For`: the chain of client addresses (de-facto standard, see RFC 7239 §1).
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`: the scheme the client used.
pub(crate) static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`: the `Host` the client asked for.
pub(crate) static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Where `name` stands in [`HOP_BY_HOP`], if it is one; the length filter settles most names
/// at once.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    if !matches!(name.as_str().len(), 2 | 7 | 10 | 16..=19) {
        return None;
    }
    HOP_BY_HOP.iter().position(|fixed| fixed == name)
}

/// Whether `name` is one of [`HOP_BY_HOP`].
pub(crate) fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_index(name).is_some()
}

/// Which of [`HOP_BY_HOP`] a message carries (bit `i` for `HOP_BY_HOP[i]`), and whether its
/// `Connection` lists other fields ([`HopByHop::LISTS_MORE`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct HopByHop(u16);

impl HopByHop {
    /// `Connection`'s bit; `TE`'s.
    const CONNECTION: u16 = 1 << 0;
    const TE: u16 = 1 << 3;
    /// `Connection` names a field beyond the fixed ones (see [`listed_names`]).
    const LISTS_MORE: u16 = 1 << 8;

    fn add(&mut self, name: &HeaderName, value: &HeaderValue) {
        if let Some(index) = hop_by_hop_index(name) {
            self.0 |= 1 << index;
            if 1 << index == Self::CONNECTION && connection_lists_fields(value.as_bytes()) {
                self.0 |= Self::LISTS_MORE;
            }
        }
    }

    fn of(headers: &HeaderMap) -> Self {
        let mut present = Self::default();
        for (name, value) in headers {
            present.add(name, value);
        }
        present
    }

    fn has(self, bit: u16) -> bool {
        self.0 & bit != 0
    }
}

/// Removes every hop-by-hop field, including the ones `Connection` lists.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none or only `Connection: keep-alive`: one pass over the fields,
    // then a removal for each one found, is far cheaper than nine hashed removals.
    let present = HopByHop::of(headers);
    if present != HopByHop::default() {
        strip_hop_by_hop(headers, false, present);
    }
}

/// The field names a `Connection` value lists that are not removed anyway: not the fixed
/// hop-by-hop ones, not `close`, and never `Host`, which routes the request: a client must not
/// be able to strip it after the check that it is there (RFC 9112 §3.2).
fn listed_names(value: &[u8]) -> impl Iterator<Item = &str> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|name| !name.is_empty() && !removed_anyway(name))
        .filter_map(|name| std::str::from_utf8(name).ok())
}

/// Whether a name `Connection` lists is `Host`, `close` or a fixed hop-by-hop field: by its
/// length first, so most names meet one comparison at most.
fn removed_anyway(name: &[u8]) -> bool {
    let candidates: &[&[u8]] = match name.len() {
        2 => &[b"te"],
        4 => &[b"host"],
        5 => &[b"close"],
        7 => &[b"upgrade"],
        10 => &[b"keep-alive", b"connection"],
        16 => &[b"proxy-connection"],
        17 => &[b"transfer-encoding"],
        18 => &[b"proxy-authenticate"],
        19 => &[b"proxy-authorization"],
        _ => &[],
    };
    // Senders mostly write these in lower case: the exact comparison settles that at once.
    candidates
        .iter()
        .any(|candidate| name == *candidate || name.eq_ignore_ascii_case(candidate))
}

/// Whether a `Connection` value names fields beyond the hop-by-hop ones every message loses
/// anyway (mostly it says only `keep-alive` or `close`).
pub(crate) fn connection_lists_fields(value: &[u8]) -> bool {
    listed_names(value).next().is_some()
}

/// Removes the hop-by-hop fields, `present` saying which of the fixed ones are there; for a
/// `request`, also says whether its `TE` asked for trailers, which an HTTP/2 backend is told
/// again ([`Forwarding::apply`]); a response's `TE` means nothing, so it is not read.
fn strip_hop_by_hop(headers: &mut HeaderMap, request: bool, present: HopByHop) -> bool {
    // Read before `Connection` is: a client sending TE also lists it there (RFC 9110 §10.1.4).
    let te_trailers = request
        && present.has(HopByHop::TE)
        && headers
            .get_all(header::TE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|coding| {
                let coding = coding.split(';').next().unwrap_or_default();
                coding.trim().eq_ignore_ascii_case("trailers")
            });
    if present.has(HopByHop::LISTS_MORE) {
        let listed: Vec<HeaderValue> = headers
            .get_all(header::CONNECTION)
            .iter()
            .cloned()
            .collect();
        for name in listed
            .iter()
            .flat_map(|value| listed_names(value.as_bytes()))
        {
            headers.remove(name);
        }
    }
    for (index, name) in HOP_BY_HOP.iter().enumerate() {
        if present.has(1 << index) {
            headers.remove(name);
        }
    }
    te_trailers
}

/// Removes the fields a trailer section may not carry (RFC 9110 §6.5.1): framing
/// (`Content-Length`, `Transfer-Encoding`, `Trailer`), routing (`Host`), request modifiers
/// (controls, conditionals, `Range`), authentication, cookies, content metadata and response
/// control data, the hop-by-hop fields and the ones this proxy writes. A recipient that merged
/// such a field into the head would let a trailer rewrite what the proxy already checked.
pub(crate) fn filter_trailers(trailers: &mut HeaderMap) {
    if trailers.keys().all(allowed_in_trailers) {
        return;
    }
    let refused: Vec<HeaderName> = trailers
        .keys()
        .filter(|name| !allowed_in_trailers(name))
        .cloned()
        .collect();
    for name in refused {
        trailers.remove(name);
    }
}

/// `frame`, with a trailer section [filtered](filter_trailers); data frames pass as they are.
/// Both directions: a backend's `connection` trailer would reset an HTTP/2 client's stream.
pub(crate) fn filter_trailer_frame(frame: Frame<Bytes>) -> Frame<Bytes> {
    match frame.into_trailers() {
        Ok(mut trailers) => {
            filter_trailers(&mut trailers);
            Frame::trailers(trailers)
        }
        Err(frame) => frame,
    }
}

/// Whether `name` may appear in a trailer section (see [`filter_trailers`]).
fn allowed_in_trailers(name: &HeaderName) -> bool {
    !(is_hop_by_hop(name)
        || is_forwarding(name)
        || matches!(
            name.as_str(),
            "content-length"
                | "trailer"
                | "host"
                | "cache-control"
                | "expect"
                | "max-forwards"
                | "pragma"
                | "range"
                | "if-match"
                | "if-none-match"
                | "if-modified-since"
                | "if-unmodified-since"
                | "if-range"
                | "authorization"
                | "www-authenticate"
                | "authentication-info"
                | "proxy-authentication-info"
                | "cookie"
                | "set-cookie"
                | "content-encoding"
                | "content-type"
                | "content-range"
                | "content-location"
                | "age"
                | "date"
                | "expires"
                | "location"
                | "retry-after"
                | "vary"
                | "warning"
        ))
}

/// Whether `name` is a field the proxy writes itself on forwarded requests.
fn is_forwarding(name: &HeaderName) -> bool {
    match name.as_str().len() {
        3 => name == header::VIA,
        15..=17 => name == X_FORWARDED_FOR || name == X_FORWARDED_PROTO || name == X_FORWARDED_HOST,
        _ => false,
    }
}

/// Whether a route may not set `name`: hop-by-hop and framing fields, `Host`, and the
/// forwarding fields fulcrum writes itself.
pub(crate) fn is_managed(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || is_forwarding(name)
        || name == header::HOST
        || name == header::CONTENT_LENGTH
}

/// What a request's field names say, from one pass over them.
#[derive(Default)]
struct Names {
    host: bool,
    cookie: bool,
    hop_by_hop: HopByHop,
    forwarding: bool,
}

impl Names {
    fn of(headers: &HeaderMap) -> Self {
        let mut names = Names::default();
        for (name, value) in headers {
            names.host |= name == header::HOST;
            names.cookie |= name == header::COOKIE;
            names.hop_by_hop.add(name, value);
            names.forwarding |= is_forwarding(name);
        }
        names
    }
}

/// The protocol an HTTP/1.1 request asks to switch to (RFC 9110 §7.8): its `Upgrade` value,
/// when `Connection` also lists `upgrade`.
pub(crate) fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
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
pub(crate) fn keep_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// The `Via` value this proxy adds for a message of `version` (RFC 9110 §7.6.3).
pub(crate) fn via(version: Version) -> HeaderValue {
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

/// A client's IP as a header value, rendered once per connection. IPv4, the common case, is
/// written digit by digit: the formatting machinery costs more than the rest of accepting.
pub(crate) fn ip_value(ip: std::net::IpAddr) -> HeaderValue {
    let rendered = match ip {
        std::net::IpAddr::V4(ip) => {
            let mut text = [0u8; 15];
            let mut len = 0;
            for (i, octet) in ip.octets().into_iter().enumerate() {
                if i > 0 {
                    text[len] = b'.';
                    len += 1;
                }
                for divisor in [100, 10, 1] {
                    if octet >= divisor || divisor == 1 {
                        text[len] = b'0' + octet / divisor % 10;
                        len += 1;
                    }
                }
            }
            HeaderValue::from_bytes(&text[..len])
        }
        ip @ std::net::IpAddr::V6(_) => HeaderValue::from_str(&ip.to_string()),
    };
    rendered.unwrap_or(HeaderValue::from_static("unknown"))
}

/// Rewrites a client request's head for the backend, in place, and returns the fields the
/// proxy adds to it.
///
/// Removes hop-by-hop fields, sets `Host` (the target's authority when it has one: RFC 9112
/// §3.2.2 for absolute-form, RFC 9113 §8.3.1 for `:authority`; empty for an HTTP/1.0 request
/// without either, since the next hop is HTTP/1.1), joins an HTTP/2 client's `cookie` fields
/// into one (RFC 9113 §8.2.3), and turns the target into origin-form. Forwarding fields the
/// client sent are taken out of the map: the returned [`Forwarding`] writes them, extended or
/// replaced. The caller has refused what [`host::refusal`](super::host::refusal) refuses.
pub fn prepare_request<'a>(
    uri: &mut Uri,
    version: Version,
    headers: &mut HeaderMap,
    client: &'a ClientInfo,
) -> Forwarding<'a> {
    let names = Names::of(headers);
    let te_trailers = names.hop_by_hop != HopByHop::default()
        && strip_hop_by_hop(headers, true, names.hop_by_hop);
    if let Some(authority) = uri.authority() {
        let same = headers
            .get(header::HOST)
            .is_some_and(|host| host.as_bytes() == authority.as_str().as_bytes());
        if !same {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                headers.insert(header::HOST, host);
            }
        }
    } else if !names.host {
        headers.insert(header::HOST, HeaderValue::from_static(""));
    }
    if names.cookie && version == Version::HTTP_2 {
        join_cookies(headers);
    }
    if uri.scheme().is_some() || uri.authority().is_some() {
        let origin_form = uri
            .path_and_query()
            .cloned()
            .map_or_else(|| Uri::from_static("/"), Uri::from);
        *uri = origin_form;
    }
    let mut forwarding = Forwarding {
        client,
        version,
        forwarded_for: None,
        via: None,
        te_trailers,
    };
    if names.forwarding {
        headers.remove(&X_FORWARDED_PROTO);
        headers.remove(&X_FORWARDED_HOST);
        forwarding.forwarded_for = take_list(headers, &X_FORWARDED_FOR);
        forwarding.via = take_list(headers, &header::VIA);
    }
    forwarding
}

/// Removes every `name` field and returns their values as one list (RFC 9110 §5.3).
fn take_list(headers: &mut HeaderMap, name: &HeaderName) -> Option<HeaderValue> {
    take_joined(headers, name, b", ")
}

/// Removes every `name` field and returns their values joined by `separator`.
fn take_joined(
    headers: &mut HeaderMap,
    name: &HeaderName,
    separator: &[u8],
) -> Option<HeaderValue> {
    let Entry::Occupied(entry) = headers.entry(name) else {
        return None;
    };
    let mut list = Vec::new();
    for value in entry.remove_entry_mult().1 {
        if !list.is_empty() {
            list.extend_from_slice(separator);
        }
        list.extend_from_slice(value.as_bytes());
    }
    HeaderValue::from_bytes(&list).ok()
}

/// Joins several `cookie` fields into one line with `"; "`, as an HTTP/1.1 backend expects
/// (RFC 9113 §8.2.3: HTTP/2 clients may split the field, HTTP/1.1 does not allow it). One
/// field is left as it is.
fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    if let Some(joined) = take_joined(headers, &header::COOKIE, b"; ") {
        headers.insert(header::COOKIE, joined);
    }
}

/// The fields the proxy adds to a request for its backend: `X-Forwarded-For` (the client's
/// address appended to the chain the request came with), `X-Forwarded-Proto`,
/// `X-Forwarded-Host` (the request's `Host`) and `Via` (RFC 9110 §7.6.3).
///
/// The HTTP/1.1 encoder writes them straight after the request's own fields
/// ([`Forwarding::write`]), so forwarding a request inserts nothing into its field map; for
/// HTTP/2 backends, whose encoder is hyper's, [`Forwarding::apply`] puts them in the map.
#[derive(Debug)]
pub struct Forwarding<'a> {
    client: &'a ClientInfo,
    /// The version the client spoke, for `Via`.
    version: Version,
    /// The `X-Forwarded-For` chain the client sent, if any.
    forwarded_for: Option<HeaderValue>,
    /// The `Via` list the client sent, if any.
    via: Option<HeaderValue>,
    /// The client's `TE` asked for trailers: gRPC over HTTP/2 needs `te: trailers` at the
    /// backend, and TE is hop-by-hop, so the proxy says it again on that hop.
    te_trailers: bool,
}

impl Forwarding<'_> {
    /// Writes the fields as HTTP/1.1 field lines; `host` is the request's `Host` value.
    pub fn write(&self, host: Option<&HeaderValue>, out: &mut Vec<u8>) {
        out.extend_from_slice(b"x-forwarded-for: ");
        push_extended(out, self.forwarded_for.as_ref(), &self.client.ip);
        out.extend_from_slice(b"\r\nx-forwarded-proto: ");
        out.extend_from_slice(self.client.proto.as_bytes());
        if let Some(host) = host {
            out.extend_from_slice(b"\r\nx-forwarded-host: ");
            out.extend_from_slice(host.as_bytes());
        }
        out.extend_from_slice(b"\r\nvia: ");
        push_extended(out, self.via.as_ref(), &via(self.version));
        out.extend_from_slice(b"\r\n");
    }

    /// Puts the fields into `headers` for an HTTP/2 backend, replacing any there (so applying
    /// twice, as a request retried on another backend is, changes nothing), with
    /// `te: trailers` when the client asked for trailers (RFC 9113 §8.2.2 allows that value).
    pub fn apply(&self, headers: &mut HeaderMap) {
        if self.te_trailers {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        headers.insert(
            X_FORWARDED_FOR.clone(),
            extended(self.forwarded_for.as_ref(), &self.client.ip),
        );
        headers.insert(X_FORWARDED_PROTO.clone(), self.client.proto.clone());
        if let Some(host) = headers.get(header::HOST).cloned() {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        headers.insert(header::VIA, extended(self.via.as_ref(), &via(self.version)));
    }
}

/// Writes `list` with `item` appended (RFC 9110 §5.6.1), or `item` alone, to `out`.
fn push_extended(out: &mut Vec<u8>, list: Option<&HeaderValue>, item: &HeaderValue) {
    if let Some(list) = list {
        out.extend_from_slice(list.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(item.as_bytes());
}

/// `list` with `item` appended, or `item` alone.
fn extended(list: Option<&HeaderValue>, item: &HeaderValue) -> HeaderValue {
    let Some(list) = list else {
        return item.clone();
    };
    let mut joined = Vec::with_capacity(list.len() + 2 + item.len());
    push_extended(&mut joined, Some(list), item);
    HeaderValue::from_bytes(&joined).unwrap_or_else(|_| item.clone())
}

/// Rewrites a backend response's head for the client, in place.
pub fn prepare_response(version: Version, headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    headers.append(header::VIA, via(version));
}

/// A client at 203.0.113.7 over plain HTTP, for tests.
#[cfg(test)]
pub(crate) static TEST_CLIENT: ClientInfo = ClientInfo {
    ip: HeaderValue::from_static("203.0.113.7"),
    proto: HeaderValue::from_static("http"),
};

/// The fields the proxy adds for [`TEST_CLIENT`] when it sent none of its own, for tests.
#[cfg(test)]
pub(crate) fn test_forwarding() -> Forwarding<'static> {
    let mut uri = Uri::from_static("/");
    prepare_request(
        &mut uri,
        Version::HTTP_11,
        &mut HeaderMap::new(),
        &TEST_CLIENT,
    )
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
    fn every_fixed_hop_by_hop_name_is_removed_anyway() {
        for name in HOP_BY_HOP
            .iter()
            .map(HeaderName::as_str)
            .chain(["host", "close"])
        {
            assert!(removed_anyway(name.as_bytes()), "{name}");
            assert!(
                removed_anyway(name.to_ascii_uppercase().as_bytes()),
                "{name}"
            );
        }
        for name in ["x-secret", "keep-alives", "tE ", "cookie", ""] {
            assert!(!removed_anyway(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn hop_by_hop_bits_name_their_fields() {
        let mut connection = HopByHop::default();
        connection.add(&header::CONNECTION, &HeaderValue::from_static("keep-alive"));
        assert_eq!(connection, HopByHop(HopByHop::CONNECTION));
        let mut te = HopByHop::default();
        te.add(&header::TE, &HeaderValue::from_static("trailers"));
        assert_eq!(te, HopByHop(HopByHop::TE));
        let mut listing = HopByHop::default();
        listing.add(
            &header::CONNECTION,
            &HeaderValue::from_static("close, X-Secret"),
        );
        assert!(listing.has(HopByHop::LISTS_MORE));
        for value in ["close", "Keep-Alive, TE", " upgrade ,", "host", ""] {
            let mut fixed = HopByHop::default();
            fixed.add(&header::CONNECTION, &HeaderValue::from_static(value));
            assert!(!fixed.has(HopByHop::LISTS_MORE), "{value:?}");
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

    /// The field lines `forwarding` writes for a request with `host`.
    fn written(forwarding: &Forwarding<'_>, host: Option<&'static str>) -> String {
        let mut out = Vec::new();
        forwarding.write(host.map(HeaderValue::from_static).as_ref(), &mut out);
        String::from_utf8(out).expect("ASCII field lines")
    }

    #[test]
    fn forwarding_fields_are_written_and_host_kept() {
        let client = &TEST_CLIENT;
        let mut uri = Uri::from_static("/a?b=1");
        let mut map = headers(&[("host", "shop.example"), ("accept", "*/*")]);
        let forwarding = prepare_request(&mut uri, Version::HTTP_11, &mut map, client);
        assert_eq!(map.len(), 2, "nothing inserted: {map:?}");
        assert_eq!(map["host"], "shop.example");
        assert_eq!(uri, "/a?b=1");
        assert_eq!(
            written(&forwarding, Some("shop.example")),
            "x-forwarded-for: 203.0.113.7\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: shop.example\r\nvia: 1.1 fulcrum\r\n"
        );
        assert_eq!(
            written(&forwarding, None),
            "x-forwarded-for: 203.0.113.7\r\nx-forwarded-proto: http\r\nvia: 1.1 fulcrum\r\n"
        );
    }

    #[test]
    fn forwarding_fields_from_the_client_are_extended_or_replaced() {
        let client = &TEST_CLIENT;
        let mut uri = Uri::from_static("/");
        let mut map = headers(&[
            ("host", "shop.example"),
            ("x-forwarded-for", "198.51.100.1"),
            ("x-forwarded-for", "198.51.100.2, 198.51.100.3"),
            ("x-forwarded-proto", "gopher"),
            ("x-forwarded-host", "spoofed.example"),
            ("via", "1.0 edge"),
        ]);
        let forwarding = prepare_request(&mut uri, Version::HTTP_11, &mut map, client);
        assert_eq!(map.len(), 1, "only Host is left: {map:?}");
        assert_eq!(
            written(&forwarding, Some("shop.example")),
            "x-forwarded-for: 198.51.100.1, 198.51.100.2, 198.51.100.3, 203.0.113.7\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: shop.example\r\n\
             via: 1.0 edge, 1.1 fulcrum\r\n"
        );
        for _ in 0..2 {
            forwarding.apply(&mut map);
            assert_eq!(
                map["x-forwarded-for"],
                "198.51.100.1, 198.51.100.2, 198.51.100.3, 203.0.113.7"
            );
            assert_eq!(map["x-forwarded-proto"], "http");
            assert_eq!(map["x-forwarded-host"], "shop.example");
            assert_eq!(map["via"], "1.0 edge, 1.1 fulcrum");
            assert_eq!(map.len(), 5, "applying again replaces: {map:?}");
        }
    }

    #[test]
    fn a_field_named_in_connection_is_gone_before_forwarding() {
        let client = &TEST_CLIENT;
        let mut uri = Uri::from_static("/");
        let mut map = headers(&[
            ("host", "shop.example"),
            ("connection", "x-forwarded-for"),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        let forwarding = prepare_request(&mut uri, Version::HTTP_11, &mut map, client);
        assert!(written(&forwarding, None).starts_with("x-forwarded-for: 203.0.113.7\r\n"));
        assert_eq!(map.len(), 1, "{map:?}");
    }

    #[test]
    fn http2_authority_becomes_host_and_origin_form() {
        let client = &TEST_CLIENT;
        let mut uri = Uri::from_static("http://api.example:8080/v1/items?x=1");
        let mut map = HeaderMap::new();
        let forwarding = prepare_request(&mut uri, Version::HTTP_2, &mut map, client);
        assert_eq!(map["host"], "api.example:8080");
        assert_eq!(uri, "/v1/items?x=1");
        forwarding.apply(&mut map);
        assert_eq!(map["x-forwarded-host"], "api.example:8080");
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
    fn connection_cannot_remove_host_and_absolute_form_sets_it() {
        let mut uri = Uri::from_static("http://a.example/x");
        let mut map = headers(&[("host", "b.example"), ("connection", "Host, x-a")]);
        prepare_request(&mut uri, Version::HTTP_11, &mut map, &TEST_CLIENT);
        assert_eq!(
            map.get_all("host").iter().collect::<Vec<_>>(),
            ["a.example"]
        );
        assert_eq!(uri, "/x");
        let mut uri = Uri::from_static("/");
        let mut map = headers(&[("host", "c.example"), ("connection", "host")]);
        prepare_request(&mut uri, Version::HTTP_11, &mut map, &TEST_CLIENT);
        assert_eq!(map["host"], "c.example");
        let mut map = HeaderMap::new();
        prepare_request(&mut uri, Version::HTTP_10, &mut map, &TEST_CLIENT);
        assert_eq!(map["host"], "", "an HTTP/1.1 request always has a Host");
    }

    #[test]
    fn http2_cookies_are_joined_and_te_trailers_told_to_http2_backends() {
        let mut uri = Uri::from_static("http://a.example/");
        let mut map = headers(&[
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("connection", "TE"),
            ("te", "trailers"),
        ]);
        let forwarding = prepare_request(&mut uri, Version::HTTP_2, &mut map, &TEST_CLIENT);
        assert_eq!(
            map.get_all("cookie").iter().collect::<Vec<_>>(),
            ["a=1; b=2"]
        );
        assert!(!map.contains_key("te"), "TE is hop-by-hop");
        forwarding.apply(&mut map);
        assert_eq!(map["te"], "trailers");
        let mut map = headers(&[("host", "a.example"), ("cookie", "a=1"), ("cookie", "b=2")]);
        let forwarding = prepare_request(&mut uri, Version::HTTP_11, &mut map, &TEST_CLIENT);
        assert_eq!(
            map.get_all("cookie").iter().count(),
            2,
            "HTTP/1.1 fields stay as sent"
        );
        forwarding.apply(&mut map);
        assert!(!map.contains_key("te"));
    }

    #[test]
    fn trailers_keep_only_fields_a_trailer_may_carry() {
        let mut map = headers(&[
            ("x-checksum", "1"),
            ("grpc-status", "0"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("host", "evil.example"),
            ("trailer", "x"),
            ("connection", "close"),
            ("authorization", "x"),
            ("x-forwarded-for", "10.0.0.1"),
            ("set-cookie", "a=1"),
        ]);
        filter_trailers(&mut map);
        let mut left: Vec<_> = map.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["grpc-status", "x-checksum"]);
    }

    #[test]
    fn trailer_is_not_hop_by_hop() {
        let mut map = headers(&[("trailer", "x-sum"), ("connection", "close")]);
        prepare_response(Version::HTTP_11, &mut map);
        assert_eq!(map["trailer"], "x-sum");
    }

    #[test]
    fn response_loses_hop_by_hop_and_gains_via() {
        let mut map = headers(&[("keep-alive", "timeout=5"), ("content-type", "text/plain")]);
        prepare_response(Version::HTTP_11, &mut map);
        assert!(!map.contains_key("keep-alive"));
        assert_eq!(map["via"], "1.1 fulcrum");
        assert_eq!(map["content-type"], "text/plain");
    }

    mod properties {
        use super::super::*;
        use crate::testing::proptest_config;
        use proptest::prelude::*;

        const NAMES: &[&str] = &[
            "connection",
            "keep-alive",
            "te",
            "transfer-encoding",
            "upgrade",
            "proxy-connection",
            "proxy-authorization",
            "trailer",
            "host",
            "cookie",
            "content-length",
            "x-a",
            "x-b",
        ];

        /// A `Connection` value: tokens from [`NAMES`] in any case, with stray blanks and commas.
        fn connection_value() -> impl Strategy<Value = String> {
            let token = (prop::sample::select(NAMES), any::<bool>(), " ?", ",?").prop_map(
                |(name, upper, blank, comma)| {
                    let name = if upper {
                        name.to_ascii_uppercase()
                    } else {
                        name.to_owned()
                    };
                    format!("{blank}{name}{blank}{comma}")
                },
            );
            prop::collection::vec(token, 0..4).prop_map(|tokens| tokens.join(","))
        }

        fn fields() -> impl Strategy<Value = Vec<(String, String)>> {
            let field = prop_oneof![
                (prop::sample::select(NAMES), "[a-z0-9]{0,3}")
                    .prop_map(|(name, value)| (name.to_owned(), value)),
                connection_value().prop_map(|value| ("connection".to_owned(), value)),
            ];
            prop::collection::vec(field, 0..10)
        }

        fn map_of(fields: &[(String, String)]) -> HeaderMap {
            let mut map = HeaderMap::new();
            for (name, value) in fields {
                let name = HeaderName::from_bytes(name.as_bytes()).expect("a name from NAMES");
                map.append(name, HeaderValue::from_str(value).expect("a plain value"));
            }
            map
        }

        proptest! {
            #![proptest_config(proptest_config(1024))]

            /// Exactly the hop-by-hop fields go: the fixed set and what `Connection` names
            /// (never `Host`); every other field keeps all its values, in order.
            #[test]
            fn hop_by_hop_stripping_removes_exactly_the_hop_by_hop_fields(fields in fields()) {
                let listed: Vec<String> = fields
                    .iter()
                    .filter(|(name, _)| name == "connection")
                    .flat_map(|(_, value)| value.split(','))
                    .map(|token| token.trim().to_ascii_lowercase())
                    .filter(|token| !token.is_empty() && token != "host")
                    .collect();
                let mut map = map_of(&fields);
                remove_hop_by_hop(&mut map);
                for name in NAMES {
                    let gone = HOP_BY_HOP.iter().any(|hop| hop == name)
                        || listed.iter().any(|token| token == name);
                    let expected: Vec<&str> = if gone {
                        Vec::new()
                    } else {
                        fields
                            .iter()
                            .filter(|(field, _)| field == name)
                            .map(|(_, value)| value.as_str())
                            .collect()
                    };
                    let left: Vec<&str> = map
                        .get_all(*name)
                        .iter()
                        .map(|value| value.to_str().expect("ASCII"))
                        .collect();
                    prop_assert_eq!(left, expected, "{}", name);
                }
            }

            /// A request that had a `Host` still has that one `Host` after preparation.
            #[test]
            fn no_connection_token_takes_host_away(fields in fields()) {
                let mut map = map_of(&fields);
                map.insert(header::HOST, HeaderValue::from_static("a.example"));
                let mut uri = Uri::from_static("/");
                prepare_request(&mut uri, Version::HTTP_11, &mut map, &TEST_CLIENT);
                let hosts: Vec<_> = map.get_all(header::HOST).iter().collect();
                prop_assert_eq!(hosts, ["a.example"]);
            }
        }
    }

    #[test]
    fn client_ip_renders_like_display() {
        for text in [
            "0.0.0.0:1",
            "127.0.0.1:80",
            "10.20.30.40:1",
            "100.9.99.255:1",
            "255.255.255.255:1",
            "1.100.10.0:1",
            "[::1]:80",
            "[2001:db8::7]:443",
            "[::ffff:192.0.2.1]:1",
        ] {
            let peer: std::net::SocketAddr = text.parse().expect("address");
            assert_eq!(ip_value(peer.ip()), peer.ip().to_string(), "{text}");
        }
    }
}
