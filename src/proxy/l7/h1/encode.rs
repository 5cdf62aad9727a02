//! Response heads to clients: the status line, the fields, and the framing fields fulcrum adds
//! (`Content-Length` or chunked, `Connection`, `Date`), written into one buffer that holds the
//! head only as long as it takes to send it.

use std::cell::RefCell;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap};
use http::{Response, StatusCode, Version};

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

/// What a response's own fields say about its framing and connection, from one pass over
/// them.
#[derive(Default)]
struct Said {
    /// `Connection` carries `close`.
    closing: bool,
    /// The first `Content-Length` value, when there is one and it is a length.
    length: Option<u64>,
    /// A `Date` field is there.
    dated: bool,
}

impl Said {
    fn of(headers: &HeaderMap) -> Self {
        let mut said = Said::default();
        let mut first_length = true;
        for (name, value) in headers {
            if name == header::CONNECTION {
                said.closing |= wire::connection_options(value.as_bytes()).0;
            } else if name == header::CONTENT_LENGTH && first_length {
                first_length = false;
                said.length = wire::content_length(value.as_bytes());
            } else if name == header::DATE {
                said.dated = true;
            }
        }
        said
    }
}

/// Writes the head of `response` (an answer to `exchange`) into `out`; the body's framing (from
/// the fields, else the body's size hint), and whether the connection stays open after it.
///
/// The response's fields go out as they are, less `Transfer-Encoding` (the framing is
/// fulcrum's own), less `Content-Length` on a bodiless status other than 304, and less
/// `Connection` where fulcrum says `close` or `keep-alive` itself; the fields fulcrum adds
/// (`Content-Length` or chunked, `Connection`, `Date`) follow them, written straight into
/// `out`.
pub(crate) fn head<B: http_body::Body>(
    response: &Response<B>,
    exchange: Exchange,
    out: &mut Vec<u8>,
) -> (Framing, bool) {
    let status = response.status();
    let said = Said::of(response.headers());
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut keep_alive = exchange.keep_alive && !said.closing;
    let mut added_length = None;
    let framing = if bodiless || exchange.head {
        Framing::None
    } else {
        match (said.length, response.body().size_hint().exact()) {
            (Some(length), _) => Framing::Length(length),
            (None, Some(length)) => {
                added_length = Some(length);
                Framing::Length(length)
            }
            (None, None) if exchange.version == Version::HTTP_11 => Framing::Chunked,
            (None, None) => {
                keep_alive = false;
                Framing::UntilClose
            }
        }
    };
    let connection: Option<&[u8]> = if status == StatusCode::SWITCHING_PROTOCOLS {
        // The connection carries another protocol from here; its `Connection: upgrade` stays.
        keep_alive = false;
        None
    } else if !keep_alive {
        Some(b"close")
    } else if exchange.version == Version::HTTP_10 {
        Some(b"keep-alive")
    } else {
        None
    };
    let drop_length = bodiless && status != StatusCode::NOT_MODIFIED;
    status_line(response, out);
    for (name, value) in response.headers() {
        let dropped = name == header::TRANSFER_ENCODING
            || (drop_length && name == header::CONTENT_LENGTH)
            || (connection.is_some() && name == header::CONNECTION);
        if !dropped {
            wire::field_line(out, name, value);
        }
    }
    if let Some(length) = added_length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
        out.extend_from_slice(b"\r\n");
    } else if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if let Some(connection) = connection {
        out.extend_from_slice(b"connection: ");
        out.extend_from_slice(connection);
        out.extend_from_slice(b"\r\n");
    }
    if !said.dated {
        date_line(out);
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// Bytes a head with these fields may take, to size its buffer in one allocation.
pub(crate) fn size_of(headers: &HeaderMap) -> usize {
    let fields: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    // Status line, the fields fulcrum may add (Date, framing, Connection), the final CRLF.
    64 + 96 + fields
}

/// `HTTP/1.1 200 OK\r\n`: the response's version (1.0 stays 1.0), its status and its reason
/// phrase (a backend's own, when it sent a non-standard one).
fn status_line<B>(response: &Response<B>, out: &mut Vec<u8>) {
    out.extend_from_slice(if response.version() == Version::HTTP_10 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    out.extend_from_slice(response.status().as_str().as_bytes());
    out.push(b' ');
    match response.extensions().get::<hyper::ext::ReasonPhrase>() {
        Some(reason) => out.extend_from_slice(reason.as_bytes()),
        None => out.extend_from_slice(
            response
                .status()
                .canonical_reason()
                .unwrap_or_default()
                .as_bytes(),
        ),
    }
    out.extend_from_slice(b"\r\n");
}

thread_local! {
    /// This thread's rendering of the current second (as hyper and nginx cache theirs).
    static DATE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
}

/// Writes the `Date` field for now (RFC 9110 §6.6.1), rendered at most once a second.
fn date_line(out: &mut Vec<u8>) {
    let second = coarse_unix_second();
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(second);
            *cached = (second, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(cached.1.as_bytes());
        out.extend_from_slice(b"\r\n");
    });
}

/// Seconds since the Unix epoch, from the kernel's coarse real-time clock: the time of its
/// last tick (1 to 10 ms ago), read from memory it shares with the process, without the
/// time-stamp counter a precise reading takes (about a quarter of the cost). A `Date` a tick
/// late is as good as nginx's, whose clock is read once per event-loop turn.
fn coarse_unix_second() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to write.
    #[allow(unsafe_code)]
    let read = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &raw mut now) };
    match u64::try_from(now.tv_sec) {
        Ok(second) if read == 0 => second,
        _ => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix_second() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after the epoch")
            .as_secs()
    }

    #[test]
    fn the_date_line_names_this_second_or_the_one_a_tick_ago() {
        let before = unix_second();
        let mut out = Vec::new();
        date_line(&mut out);
        let after = unix_second();
        let line = std::str::from_utf8(&out).expect("ASCII");
        let value = line
            .strip_prefix("date: ")
            .and_then(|rest| rest.strip_suffix("\r\n"))
            .expect("one date line");
        let said = httpdate::parse_http_date(value)
            .expect("an HTTP date")
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after the epoch")
            .as_secs();
        // The coarse clock trails by at most a tick (10 ms), so at most one second boundary.
        assert!(
            before - 1 <= said && said <= after,
            "{said} in {before}..={after}"
        );
    }
}
