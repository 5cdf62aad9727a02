//! Response heads to clients: the status line, the fields, and the framing fields fulcrum adds
//! (`Content-Length` or chunked, `Connection`, `Date`), written into one buffer that holds the
//! head only as long as it takes to send it.

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderValue};
use http::response::Parts;
use http::{StatusCode, Version};
use http_body::SizeHint;

use crate::http::wire;

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body is written (`HEAD`, `1xx`, `204`, `304`).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and a body of unknown length).
    UntilClose,
}

/// What the request decided about its response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exchange {
    /// The request was `HEAD`.
    pub(crate) head: bool,
    /// The request's version.
    pub(crate) version: Version,
    /// Whether the connection may carry another request after this response.
    pub(crate) keep_alive: bool,
    /// The client's `TE` accepts trailers: a chunked body's trailer fields are sent.
    pub(crate) trailers: bool,
}

/// Writes the head of a response to `exchange` into `out`, with a body whose size hint is
/// `hint`; the body's framing, and whether the connection stays open after it.
pub(crate) fn head(
    parts: &mut Parts,
    hint: &SizeHint,
    exchange: Exchange,
    out: &mut Vec<u8>,
) -> (Framing, bool) {
    let status = parts.status;
    let headers = &mut parts.headers;
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let closing = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"));
    let mut keep_alive = exchange.keep_alive && !closing;
    let framing = if bodiless {
        if status != StatusCode::NOT_MODIFIED {
            headers.remove(header::CONTENT_LENGTH);
        }
        headers.remove(header::TRANSFER_ENCODING);
        Framing::None
    } else if exchange.head {
        headers.remove(header::TRANSFER_ENCODING);
        Framing::None
    } else {
        headers.remove(header::TRANSFER_ENCODING);
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| crate::http::wire::content_length(value.as_bytes()));
        match (declared, hint.exact()) {
            (Some(length), _) => Framing::Length(length),
            (None, Some(length)) => {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
                Framing::Length(length)
            }
            (None, None) if exchange.version == Version::HTTP_11 => {
                headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
                Framing::Chunked
            }
            (None, None) => {
                keep_alive = false;
                Framing::UntilClose
            }
        }
    };
    if status == StatusCode::SWITCHING_PROTOCOLS {
        // The connection carries another protocol from here; its `Connection: upgrade` stays.
        keep_alive = false;
    } else if !keep_alive {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    } else if exchange.version == Version::HTTP_10 {
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    }
    if !headers.contains_key(header::DATE) {
        headers.insert(header::DATE, now());
    }
    status_line(parts, out);
    for (name, value) in &parts.headers {
        wire::field_line(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// Bytes a head with these fields may take, to size its buffer in one allocation.
pub(crate) fn size_of(parts: &Parts) -> usize {
    let fields: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    // Status line, the fields fulcrum may add (Date, framing, Connection), the final CRLF.
    64 + 96 + fields
}

/// `HTTP/1.1 200 OK\r\n`: the response's version (1.0 stays 1.0), its status and its reason
/// phrase (a backend's own, when it sent a non-standard one).
fn status_line(parts: &Parts, out: &mut Vec<u8>) {
    out.extend_from_slice(if parts.version == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    match parts.extensions.get::<hyper::ext::ReasonPhrase>() {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(
            parts
                .status
                .canonical_reason()
                .unwrap_or_default()
                .as_bytes(),
        ),
    }
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// This thread's rendering of the current second (as hyper and nginx cache theirs).
    static DATE: RefCell<(u64, HeaderValue)> =
        const { RefCell::new((0, HeaderValue::from_static(""))) };
}

/// The `Date` field's value for now (RFC 9110 §6.6.1), rendered at most once a second.
fn now() -> HeaderValue {
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let rendered = httpdate::fmt_http_date(now);
            if let Ok(value) = HeaderValue::from_str(&rendered) {
                *cached = (second, value);
            }
        }
        cached.1.clone()
    })
}
