//! Heads on the wire: response heads parsed from the backend, request heads encoded for it,
//! and the body framing each declares.

use std::mem::MaybeUninit;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Request, StatusCode, Version};
use http_body::Body as _;

use super::error::Error;
use crate::http::decode::Decoder;
use crate::http::headers::{self, Forwarding};
use crate::http::wire::{self, content_length};
use crate::upstream::request_body::RequestBody;

/// Largest response head (status line and fields) accepted from a backend.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Most fields a response head or trailer section may have.
const MAX_HEADERS: usize = 100;

/// A parsed response head.
pub(super) struct Head {
    /// Bytes the head takes in the buffer.
    pub(super) len: usize,
    pub(super) status: StatusCode,
    pub(super) version: Version,
    /// What the fields say about framing and the connection.
    pub(super) fields: Fields,
    /// The reason phrase, kept only when it is not the standard one.
    pub(super) reason: Option<hyper::ext::ReasonPhrase>,
}

/// Parses a response head at the start of `buf` into `headers` (emptied first); `None` while
/// it is incomplete.
pub(super) fn parse_head(buf: &[u8], headers: &mut HeaderMap) -> Result<Option<Head>, Error> {
    if buf.is_empty() {
        return Ok(None);
    }
    // Uninitialised slots: zeroing a hundred fields per response costs more than parsing.
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::Malformed("too many header fields"));
        }
        Err(_) => return Err(Error::Malformed("unparsable response head")),
    };
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Error::Malformed("invalid status code"))?;
    let version = match response.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let reason = response
        .reason
        .filter(|reason| status.canonical_reason() != Some(*reason))
        .and_then(|reason| {
            hyper::ext::ReasonPhrase::try_from(Bytes::copy_from_slice(reason.as_bytes())).ok()
        });
    headers.clear();
    let fields = read_fields(response.headers, headers)?;
    Ok(Some(Head {
        len,
        status,
        version,
        fields,
        reason,
    }))
}

/// What a head's fields say about its framing and connection, gathered while copying them.
#[derive(Debug, Default)]
pub(super) struct Fields {
    /// `Connection: close` was sent.
    close: bool,
    /// `Connection: keep-alive` was sent.
    keep_alive: bool,
    /// `Transfer-Encoding` was sent; `true` when its last coding is chunked.
    chunked: Option<bool>,
    /// The `Content-Length`, when sent (every value agreeing).
    pub(super) length: Option<u64>,
}

impl Fields {
    /// Whether the backend lets the connection carry another request (RFC 9112 §9.3). Never
    /// after an HTTP/1.0 message with `Transfer-Encoding`: RFC 9112 §6.1 has the recipient
    /// treat its framing as faulty and close the connection after it.
    pub(super) fn allow_keep_alive(&self, version: Version) -> bool {
        let faulty = version == Version::HTTP_10 && self.chunked.is_some();
        !self.close && !faulty && (version == Version::HTTP_11 || self.keep_alive)
    }

    /// How a response that has a body delimits it (RFC 9112 §6.3).
    pub(super) fn body_framing(&self) -> Result<Decoder, Error> {
        match (self.chunked, self.length) {
            (Some(_), Some(_)) => Err(Error::Malformed(
                "both Transfer-Encoding and Content-Length",
            )),
            (Some(true), None) => Ok(Decoder::Size),
            (Some(false), None) => Err(Error::Malformed("transfer coding other than chunked last")),
            (None, Some(length)) => Ok(Decoder::length(length)),
            (None, None) => Ok(Decoder::UntilClose),
        }
    }
}

/// Puts parsed fields into `headers`, each value a copy of its own (see `wire::field_value`),
/// noting the ones that frame the message and the connection.
///
/// The hop-by-hop fields describe this connection alone and are left out (the proxy would
/// remove them anyway): all but `Upgrade`, which a 101 needs, and a `Connection` that names
/// other fields, which go with it.
///
/// `Date` is left out: the client gets the proxy's own, rendered once a second (as nginx
/// does), which costs less than carrying the backend's through. So is `Content-Length`, noted
/// in the facts: `Connection::respond` puts it back unless the body's own length says the same
/// (the client's response head is written with that length).
fn read_fields(fields: &[httparse::Header<'_>], headers: &mut HeaderMap) -> Result<Fields, Error> {
    let mut facts = Fields::default();
    headers.reserve(fields.len());
    for field in fields {
        // The fields left out are known by their bytes, before a name or value is built.
        let raw = field.name.as_bytes();
        if raw.eq_ignore_ascii_case(b"date") {
            continue;
        }
        if raw.eq_ignore_ascii_case(b"content-length") {
            for item in field.value.split(|&b| b == b',') {
                let length = content_length(item.trim_ascii())
                    .ok_or(Error::Malformed("invalid Content-Length"))?;
                if facts.length.is_some_and(|known| known != length) {
                    return Err(Error::Malformed("conflicting Content-Length values"));
                }
                facts.length = Some(length);
            }
            continue;
        }
        // This connection's own business, noted here: the proxy would take it out again. Not
        // a `Connection` that names other fields, which the proxy removes with it.
        if raw.eq_ignore_ascii_case(b"connection") {
            let (close, keep_alive) = wire::connection_options(field.value);
            facts.close |= close;
            facts.keep_alive |= keep_alive;
            if !headers::connection_lists_fields(field.value) {
                continue;
            }
        }
        let name =
            HeaderName::from_bytes(raw).map_err(|_| Error::Malformed("invalid header name"))?;
        if name == header::TRANSFER_ENCODING {
            facts.chunked = Some(wire::last_coding_is_chunked(field.value));
            continue;
        }
        if name != header::CONNECTION && name != header::UPGRADE && headers::is_hop_by_hop(&name) {
            // `Upgrade` stays: a 101's protocol is read from it.
            continue;
        }
        // Built for the fields kept only.
        let value =
            wire::field_value(field.value).map_err(|_| Error::Malformed("invalid header value"))?;
        headers.append(name, value);
    }
    Ok(facts)
}

/// The length of the response head at the start of `buf` (`None` while it is incomplete),
/// once its fields and body framing were judged: the whole head path, for the fuzz targets.
pub(crate) fn judge_response_head(buf: &[u8]) -> Result<Option<usize>, Error> {
    let mut headers = HeaderMap::new();
    let Some(head) = parse_head(buf, &mut headers)? else {
        return Ok(None);
    };
    head.fields.body_framing()?;
    Ok(Some(head.len))
}

/// How a request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding: the length is not known in advance.
    Chunked,
}

/// Methods whose requests carry a body by definition: an empty one is sent with
/// `Content-Length: 0` so the backend does not wait for one.
fn expects_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// Encodes `request`'s head, with the proxy's `forwarding` fields after its own, into `out`
/// and says how its body follows.
///
/// The head was prepared by the proxy (hop-by-hop fields such as `Transfer-Encoding` are
/// gone), so the framing fields written here are the only ones.
pub(super) fn encode_head(
    request: &Request<RequestBody>,
    forwarding: &Forwarding<'_>,
    out: &mut Vec<u8>,
) -> Framing {
    let body = request.body();
    let headers = request.headers();
    let framing = if body.is_end_stream() {
        Framing::Empty
    } else {
        match body.size_hint().exact() {
            Some(length) => Framing::Length(length),
            None => Framing::Chunked,
        }
    };
    out.clear();
    out.extend_from_slice(request.method().as_str().as_bytes());
    out.push(b' ');
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut has_length = false;
    let mut host = None;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH {
            has_length = true;
            if framing == Framing::Chunked {
                continue;
            }
        } else if name == header::HOST {
            host = Some(value);
        }
        wire::field_line(out, name, value);
    }
    match framing {
        Framing::Empty if !has_length && expects_body(request.method()) => {
            out.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::Length(length) if !has_length => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Empty | Framing::Length(_) => {}
    }
    forwarding.write(host, out);
    out.extend_from_slice(b"\r\n");
    framing
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{backend, connect, read, request, send, sent};
    use super::*;
    use crate::http::headers::test_forwarding as forwarding;

    #[test]
    fn a_responses_own_connection_fields_are_noted_and_left_out() {
        let mut headers = HeaderMap::new();
        let plain = b"HTTP/1.1 200 OK\r\nServer: s\r\nConnection: keep-alive\r\n\
                      Keep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n";
        let head = parse_head(plain, &mut headers)
            .expect("valid")
            .expect("whole");
        assert!(head.fields.keep_alive && !head.fields.close);
        let names: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(
            names,
            ["server"],
            "Connection and Keep-Alive are this hop's"
        );

        // A `Connection` naming other fields stays, for the proxy to remove them with it.
        let listing = b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\n\r\n";
        let head = parse_head(listing, &mut headers)
            .expect("valid")
            .expect("whole");
        assert!(head.fields.close);
        assert_eq!(headers[header::CONNECTION], "close, X-Hop");
        assert_eq!(headers["x-hop"], "1");
    }

    #[tokio::test]
    async fn connections_the_backend_will_close_are_not_reused() {
        for reply in [
            &b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"[..],
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA",
            // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing, whatever
            // Connection says.
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ] {
            let (addr, _heads) = backend(vec![reply], false).await;
            let mut response = send(connect(addr).await, request(Method::GET, "/"))
                .await
                .expect("response");
            let _ = read(response.body_mut()).await.expect("body");
            assert!(response.body_mut().take_idle().is_none(), "{reply:?}");
        }
        let (addr, _heads) = backend(
            vec![b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"],
            false,
        )
        .await;
        let mut response = send(connect(addr).await, request(Method::GET, "/"))
            .await
            .expect("response");
        assert!(response.body_mut().take_idle().is_some());
    }

    #[tokio::test]
    async fn broken_responses_are_errors() {
        for reply in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        ] {
            let (addr, _heads) = backend(vec![reply], false).await;
            let result = send(connect(addr).await, request(Method::GET, "/")).await;
            assert!(
                matches!(result, Err(Error::Malformed(_))),
                "{reply:?}: {result:?}"
            );
        }
    }

    #[test]
    fn request_heads_say_how_the_body_follows() {
        let mut out = Vec::new();
        let framing = encode_head(
            &request(Method::GET, "http://app.test/x"),
            &forwarding(),
            &mut out,
        );
        assert_eq!(framing, Framing::Empty);
        assert_eq!(out, sent("GET /x HTTP/1.1\r\nhost: app.test\r\n"));
    }

    mod properties {
        use super::super::*;
        use crate::testing::proptest_config;
        use proptest::prelude::*;

        /// Response-head-like bytes: a status line, field lines from a small alphabet (framing
        /// fields included), CRLF or LF endings, and now and then anything at all.
        fn head_like() -> impl Strategy<Value = Vec<u8>> {
            let line = prop_oneof![
                Just(b"HTTP/1.1 200 OK".to_vec()),
                Just(b"HTTP/1.0 204 No Content".to_vec()),
                Just(b"HTTP/1.1 103 Early Hints".to_vec()),
                Just(b"Content-Length: 5".to_vec()),
                Just(b"content-length: 5, 5".to_vec()),
                Just(b"Content-Length: 18446744073709551616".to_vec()),
                Just(b"Transfer-Encoding: chunked".to_vec()),
                Just(b"Transfer-Encoding: gzip, chunked".to_vec()),
                Just(b"Connection: close, keep-alive".to_vec()),
                Just(b"Date: x".to_vec()),
                Just(b"X-A: \x80\xff".to_vec()),
                prop::collection::vec(any::<u8>(), 0..20),
            ];
            let end = prop::sample::select(vec![&b"\r\n"[..], b"\n", b"\r"]);
            prop::collection::vec((line, end), 0..8).prop_map(|lines| {
                let mut head = Vec::new();
                for (line, end) in lines {
                    head.extend_from_slice(&line);
                    head.extend_from_slice(end);
                }
                head.extend_from_slice(b"\r\n");
                head
            })
        }

        proptest! {
            #![proptest_config(proptest_config(2048))]

            /// Never panics; a parsed head lies within the buffer and its framing is one of
            /// the unambiguous kinds, with the length the fields declared.
            #[test]
            fn response_heads_parse_within_their_bytes(bytes in head_like(), cut in any::<prop::sample::Index>()) {
                let mut headers = HeaderMap::new();
                for buf in [&bytes[..], &bytes[..cut.index(bytes.len() + 1)]] {
                    let Ok(Some(head)) = parse_head(buf, &mut headers) else {
                        continue;
                    };
                    prop_assert!(head.len <= buf.len());
                    match head.fields.body_framing() {
                        Ok(Decoder::Length(n)) => prop_assert_eq!(Some(n), head.fields.length),
                        Ok(Decoder::Size | Decoder::UntilClose) => prop_assert_eq!(head.fields.length, None),
                        Ok(Decoder::Done) => prop_assert_eq!(head.fields.length, Some(0)),
                        Ok(decoder) => prop_assert!(false, "{:?}", decoder),
                        Err(_) => {}
                    }
                    prop_assert!(!headers.contains_key(header::CONTENT_LENGTH));
                    prop_assert!(!headers.contains_key(header::DATE));
                }
            }
        }
    }
}
