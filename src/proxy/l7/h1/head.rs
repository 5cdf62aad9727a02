//! Request heads from clients: parsed with `httparse` into the `http` crate's types, judged for
//! framing (RFC 9112 §6.3) and for what they say about the connection, in one pass over the
//! fields. Every refusal names the status it earns, so the connection answers it and closes.

use std::mem::MaybeUninit;

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Request, Uri, Version};

use crate::http::wire::{self, content_length};
use crate::upstream::request_body::{BoxedRequest, RequestBody};

/// Most fields a request head may have (hyper's server allows 100 as well).
pub(crate) const MAX_FIELDS: usize = 100;

/// Why a request head is refused, and so which status answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    /// Not a request head, or one with an invalid field (`400`).
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    /// Framing another parser could read differently (RFC 9112 §6.3 items 3–5; `400`).
    #[error("ambiguous request framing: {0}")]
    Ambiguous(&'static str),
    /// The head is larger than `max_header_bytes`, or has too many fields (`431`).
    #[error("request head too large")]
    TooLarge,
    /// A transfer coding other than chunked (`501`, RFC 9112 §6.1).
    #[error("unsupported transfer coding")]
    UnsupportedCoding,
    /// An HTTP version other than 1.0 and 1.1 (`505`).
    #[error("unsupported HTTP version")]
    Version,
}

impl HeadError {
    /// The status that answers it.
    pub(crate) fn status(self) -> http::StatusCode {
        match self {
            HeadError::Malformed(_) | HeadError::Ambiguous(_) => http::StatusCode::BAD_REQUEST,
            HeadError::TooLarge => http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::UnsupportedCoding => http::StatusCode::NOT_IMPLEMENTED,
            HeadError::Version => http::StatusCode::HTTP_VERSION_NOT_SUPPORTED,
        }
    }
}

/// How a request's body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body: the next request follows the head directly.
    Empty,
    /// A body of exactly this many bytes (never zero).
    Length(u64),
    /// A chunked body.
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub(crate) struct Head {
    /// The request, its body still to be set (by the framing below).
    pub(crate) request: BoxedRequest,
    /// Bytes the head took in the buffer.
    pub(crate) len: usize,
    /// How the body is delimited.
    pub(crate) framing: Framing,
    /// Whether the client lets the connection carry another request after this one.
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue` was sent (RFC 9110 §10.1.1): the client waits for a `100`.
    pub(crate) expects_continue: bool,
    /// `TE` lists `trailers` (RFC 9110 §10.1.4): the client accepts a trailer section.
    pub(crate) trailers: bool,
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is incomplete and no
/// longer than `max_len`. The target and each field value are copied into allocations of their
/// own (one per value, which no other value shares: no reference count moves as they are
/// cloned or dropped): the request pins no read buffer while it is in flight, and the read
/// buffer is free for the body and the next request.
pub(crate) fn parse(buf: &[u8], max_len: usize) -> Result<Option<Head>, HeadError> {
    let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut []);
    let status = httparse::ParserConfig::default()
        .allow_multiple_spaces_in_request_line_delimiters(false)
        .parse_request_with_uninit_headers(&mut parsed, buf, &mut fields);
    let len = match status {
        Ok(httparse::Status::Complete(len)) if len <= max_len => len,
        Ok(httparse::Status::Complete(_)) | Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::TooLarge);
        }
        Ok(httparse::Status::Partial) if buf.len() > max_len => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::Version) => return Err(HeadError::Version),
        Err(_) => return Err(HeadError::Malformed("unparsable request head")),
    };
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(HeadError::Version),
    };
    let method = parsed.method.unwrap_or_default();
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let target = parsed.path.unwrap_or_default();
    let uri = target_uri(target, &method)?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len());
    let facts = read_fields(parsed.headers, &mut headers)?;
    let framing = facts.framing(version)?;
    let keep_alive = !facts.close && (version == Version::HTTP_11 || facts.keep_alive);
    // Built where it stays for the request's whole way through the proxy.
    let mut request = Box::new(Request::new(RequestBody::Empty));
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(Some(Head {
        request,
        len,
        framing,
        // HTTP/1.0 with chunked framing is refused above; the connection closes after any
        // HTTP/1.0 request that did not ask to stay open.
        keep_alive,
        expects_continue: facts.expects_continue && version == Version::HTTP_11,
        trailers: facts.trailers,
    }))
}

/// The request target as a URI (RFC 9112 §3.2): origin-form, absolute-form, authority-form for
/// `CONNECT` only, and `*` for `OPTIONS` only.
fn target_uri(target: &str, method: &Method) -> Result<Uri, HeadError> {
    let malformed = HeadError::Malformed("invalid request target");
    let authority_form = !target.starts_with('/') && !target.contains("://") && target != "*";
    if authority_form != (method == Method::CONNECT) {
        return Err(malformed);
    }
    if target == "*" && method != Method::OPTIONS {
        return Err(malformed);
    }
    if target == "/" {
        return Ok(Uri::from_static("/"));
    }
    Uri::try_from(target).map_err(|_| malformed)
}

/// What a head's fields say about framing and the connection, gathered while copying them.
#[derive(Debug, Default)]
struct Facts {
    /// The `Content-Length` (every value agreeing).
    length: Option<u64>,
    /// `Transfer-Encoding` was sent; `true` when its last coding is chunked.
    chunked: Option<bool>,
    /// `Connection: close` was sent.
    close: bool,
    /// `Connection: keep-alive` was sent.
    keep_alive: bool,
    /// `Expect: 100-continue` was sent.
    expects_continue: bool,
    /// `TE` lists `trailers`.
    trailers: bool,
}

impl Facts {
    /// The body's framing (RFC 9112 §6.3), refusing what another parser could read otherwise.
    fn framing(&self, version: Version) -> Result<Framing, HeadError> {
        match (self.chunked, self.length) {
            (Some(_), Some(_)) => Err(HeadError::Ambiguous(
                "both Transfer-Encoding and Content-Length",
            )),
            (Some(_), None) if version == Version::HTTP_10 => Err(HeadError::Ambiguous(
                "Transfer-Encoding in an HTTP/1.0 request",
            )),
            (Some(true), None) => Ok(Framing::Chunked),
            (Some(false), None) => Err(HeadError::UnsupportedCoding),
            (None, None | Some(0)) => Ok(Framing::Empty),
            (None, Some(length)) => Ok(Framing::Length(length)),
        }
    }
}

/// Copies parsed fields into `headers` (each value a copy of its own), noting the ones that
/// frame the message or speak about the connection.
fn read_fields(
    fields: &[httparse::Header<'_>],
    headers: &mut HeaderMap,
) -> Result<Facts, HeadError> {
    let mut facts = Facts::default();
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| HeadError::Malformed("invalid field name"))?;
        if name == header::CONTENT_LENGTH {
            // A list (`5, 5`) is refused as well: RFC 9110 §8.6 allows it, and a recipient
            // that reads only its first item would frame the message differently.
            let length = content_length(field.value.trim_ascii())
                .ok_or(HeadError::Ambiguous("invalid Content-Length"))?;
            if facts.length.is_some_and(|known| known != length) {
                return Err(HeadError::Ambiguous("conflicting Content-Length values"));
            }
            facts.length = Some(length);
        } else if name == header::TRANSFER_ENCODING {
            facts.chunked = Some(wire::last_coding_is_chunked(field.value));
        } else if name == header::CONNECTION {
            let (close, keep_alive) = wire::connection_options(field.value);
            facts.close |= close;
            facts.keep_alive |= keep_alive;
        } else if name == header::TE {
            facts.trailers |= field.value.split(|&b| b == b',').any(|coding| {
                let coding = coding.split(|&b| b == b';').next().unwrap_or_default();
                coding.trim_ascii().eq_ignore_ascii_case(b"trailers")
            });
        } else if name == header::EXPECT {
            facts.expects_continue |= field
                .value
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue");
        }
        let value = wire::field_value(field.value)
            .map_err(|_| HeadError::Malformed("invalid field value"))?;
        headers.append(name, value);
    }
    Ok(facts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn parse_all(head: &str) -> Result<Option<Head>, HeadError> {
        parse(head.as_bytes(), 8192)
    }

    #[test]
    fn a_request_head_parses_into_the_http_types_owning_its_bytes() {
        let buf = Bytes::from_static(
            b"POST /items?x=1 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello",
        );
        let head = parse(&buf, 8192).expect("valid").expect("complete");
        assert_eq!(head.len, buf.len() - 5);
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive && !head.expects_continue);
        let request = head.request;
        assert_eq!(request.method(), Method::POST);
        assert_eq!(request.uri(), "/items?x=1");
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.headers()["host"], "app.test");
        let values: Vec<_> = request.headers().get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        let host = request.headers()["host"].as_bytes();
        let uri = request.uri().path().as_bytes();
        for part in [host, uri] {
            assert!(
                !buf.as_ptr_range().contains(&part.as_ptr()),
                "not the read buffer"
            );
        }
    }

    #[test]
    fn incomplete_heads_wait_until_they_are_too_large() {
        assert!(
            parse_all("GET / HTTP/1.1\r\nHost: a")
                .expect("valid")
                .is_none()
        );
        let long = format!("GET / HTTP/1.1\r\nx: {}", "a".repeat(9000));
        assert_eq!(parse_all(&long).err(), Some(HeadError::TooLarge));
        let many: String = (0..=MAX_FIELDS).map(|i| format!("x-{i}: 1\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse(&Bytes::from(many), 1 << 20).err(),
            Some(HeadError::TooLarge)
        );
    }

    #[test]
    fn framing_follows_rfc_9112_and_refuses_what_could_be_read_twice() {
        let framing = |fields: &str, version: &str| {
            parse_all(&format!("POST / {version}\r\n{fields}\r\n"))
                .map(|head| head.map(|h| h.framing))
        };
        assert_eq!(framing("", "HTTP/1.1"), Ok(Some(Framing::Empty)));
        assert_eq!(
            framing("Content-Length: 0\r\n", "HTTP/1.1"),
            Ok(Some(Framing::Empty))
        );
        assert_eq!(
            framing("Transfer-Encoding: gzip, chunked\r\n", "HTTP/1.1"),
            Ok(Some(Framing::Chunked))
        );
        assert_eq!(
            framing("Content-Length: 3\r\nContent-Length: 3\r\n", "HTTP/1.1"),
            Ok(Some(Framing::Length(3)))
        );
        for (fields, version) in [
            (
                "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                "HTTP/1.1",
            ),
            ("Content-Length: 3\r\nContent-Length: 4\r\n", "HTTP/1.1"),
            ("Content-Length: 3, 3\r\n", "HTTP/1.1"),
            ("Content-Length: +3\r\n", "HTTP/1.1"),
            ("Transfer-Encoding: chunked\r\n", "HTTP/1.0"),
        ] {
            assert!(
                matches!(framing(fields, version), Err(HeadError::Ambiguous(_))),
                "{fields:?} {version}"
            );
        }
        assert_eq!(
            framing("Transfer-Encoding: chunked, gzip\r\n", "HTTP/1.1"),
            Err(HeadError::UnsupportedCoding)
        );
    }

    #[test]
    fn the_connection_te_and_expect_fields_are_noted() {
        let head = |text: &str| parse_all(text).expect("valid").expect("complete");
        assert!(!head("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n").keep_alive);
        assert!(!head("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
        assert!(
            head("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .expects_continue
        );
        assert!(
            !head("PUT / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .expects_continue
        );
        assert!(head("GET / HTTP/1.1\r\nTE: gzip, Trailers;q=1\r\n\r\n").trailers);
        assert!(!head("GET / HTTP/1.1\r\nTE: gzip\r\nX-TE: trailers\r\n\r\n").trailers);
    }

    #[test]
    fn targets_and_versions_are_checked() {
        assert!(
            parse_all("GET http://a.test/x HTTP/1.1\r\n\r\n")
                .expect("valid")
                .is_some()
        );
        assert!(
            parse_all("CONNECT a.test:443 HTTP/1.1\r\n\r\n")
                .expect("valid")
                .is_some()
        );
        assert!(
            parse_all("OPTIONS * HTTP/1.1\r\n\r\n")
                .expect("valid")
                .is_some()
        );
        for bad in [
            "GET a.test:443 HTTP/1.1\r\n\r\n",
            "CONNECT /x HTTP/1.1\r\n\r\n",
            "GET * HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nbad name: 1\r\n\r\n",
            "GET / HTTP/1.1\r\n folded\r\n\r\n",
        ] {
            assert!(
                matches!(parse_all(bad), Err(HeadError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_all("GET / HTTP/2.0\r\n\r\n").err(),
            Some(HeadError::Version)
        );
    }
}
