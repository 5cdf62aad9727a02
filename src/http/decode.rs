//! HTTP/1.1 message bodies read off a buffer (RFC 9112 §6.3, §7.1), without doing any IO: the
//! caller reads into the buffer when told more is needed. One decoder for requests from clients
//! and responses from backends, so both sides accept exactly the same framing.

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

use super::wire;

/// Longest chunk-size line (with its extensions) accepted.
pub(crate) const MAX_CHUNK_LINE: usize = 1024;
/// Bytes of body data up to which a frame is copied out of the buffer, so that the buffer stays
/// unshared and is reused for the next read; larger frames are split off without a copy.
pub(crate) const COPY_LIMIT: usize = 4 * 1024;

/// Why a body cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// The bytes do not follow the chunked syntax.
    #[error("{0}")]
    Malformed(&'static str),
}

/// Where a body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decoder {
    /// This many bytes are still due (never zero).
    Length(u64),
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data are due (never zero).
    Data(u64),
    /// The CRLF after chunk data is next.
    DataEnd,
    /// The trailer section (possibly empty) is next.
    Trailers,
    /// Everything until the peer closes the connection.
    UntilClose,
    /// The body has ended.
    Done,
}

/// What the buffer held.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// Body data.
    Data(Bytes),
    /// The trailer fields that ended a chunked body.
    Trailers(HeaderMap),
    /// The body has ended.
    End,
    /// More bytes are needed. `Some(n)`: the next `n` bytes are body data, which may be read
    /// into a buffer of their own and handed to [`Decoder::consumed`].
    More(Option<u64>),
}

impl Decoder {
    /// A decoder for a body of `length` bytes.
    pub(crate) fn length(length: u64) -> Self {
        if length == 0 {
            Decoder::Done
        } else {
            Decoder::Length(length)
        }
    }

    /// Whether the body has ended.
    pub(crate) fn is_done(&self) -> bool {
        *self == Decoder::Done
    }

    /// Body bytes still due, when known.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match *self {
            Decoder::Length(left) => Some(left),
            Decoder::Done => Some(0),
            _ => None,
        }
    }

    /// Takes the next piece of the body out of `buf`, at most `limit` bytes of data.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, DecodeError> {
        loop {
            match *self {
                Decoder::Done => return Ok(Decoded::End),
                Decoder::Length(due) | Decoder::Data(due) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More(Some(due)));
                    }
                    let data = take(buf, due);
                    self.consumed(data.len() as u64);
                    return Ok(Decoded::Data(data));
                }
                Decoder::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::More(Some(u64::MAX)));
                    }
                    return Ok(Decoded::Data(take(buf, u64::MAX)));
                }
                Decoder::Size => {
                    let Some(end) = memchr::memchr(b'\n', buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(DecodeError::Malformed("chunk size line too long"));
                        }
                        return Ok(Decoded::More(None));
                    };
                    let size = wire::chunk_size(&buf[..=end])
                        .ok_or(DecodeError::Malformed("invalid chunk size line"))?;
                    buf.advance(end + 1);
                    *self = if size == 0 {
                        Decoder::Trailers
                    } else {
                        Decoder::Data(size)
                    };
                }
                Decoder::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::More(None));
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(DecodeError::Malformed("chunk data not followed by CRLF"));
                    }
                    buf.advance(2);
                    *self = Decoder::Size;
                }
                Decoder::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        *self = Decoder::Done;
                        return Ok(Decoded::End);
                    }
                    let Some(end) = memchr::memmem::find(buf, b"\r\n\r\n") else {
                        if buf.len() >= wire::MAX_TRAILERS {
                            return Err(DecodeError::Malformed("trailer section too large"));
                        }
                        return Ok(Decoded::More(None));
                    };
                    let trailers = wire::trailers(&buf[..end + 4])
                        .ok_or(DecodeError::Malformed("invalid trailer section"))?;
                    buf.advance(end + 4);
                    *self = Decoder::Done;
                    return Ok(Decoded::Trailers(trailers));
                }
            }
        }
    }

    /// Notes that `n` bytes of body data were taken (by [`Decoder::decode`], or read by the
    /// caller straight into a buffer of their own after [`Decoded::More`]`(Some(_))`).
    pub(crate) fn consumed(&mut self, n: u64) {
        *self = match *self {
            Decoder::Length(due) if due > n => Decoder::Length(due - n),
            Decoder::Length(_) => Decoder::Done,
            Decoder::Data(due) if due > n => Decoder::Data(due - n),
            Decoder::Data(_) => Decoder::DataEnd,
            other => other,
        };
    }

    /// The end of the stream came now: the end of an until-close body, an error otherwise.
    pub(crate) fn closed(&mut self) -> Result<(), DecodeError> {
        match self {
            Decoder::UntilClose | Decoder::Done => {
                *self = Decoder::Done;
                Ok(())
            }
            _ => Err(DecodeError::Malformed("connection closed inside the body")),
        }
    }
}

/// Up to `due` bytes from the front of `buf`: copied when few (the buffer stays unshared),
/// split off otherwise.
fn take(buf: &mut BytesMut, due: u64) -> Bytes {
    let n = usize::try_from(due).unwrap_or(usize::MAX).min(buf.len());
    if n <= COPY_LIMIT {
        let data = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        data
    } else {
        buf.split_to(n).freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `step` bytes: the data, and the trailers if any.
    fn decode_all(mut decoder: Decoder, wire: &[u8], step: usize) -> (Vec<u8>, Option<HeaderMap>) {
        let mut buf = BytesMut::new();
        let mut pieces = wire.chunks(step);
        let mut data = Vec::new();
        loop {
            match decoder.decode(&mut buf).expect("valid") {
                Decoded::Data(bytes) => data.extend_from_slice(&bytes),
                Decoded::Trailers(trailers) => return (data, Some(trailers)),
                Decoded::End => return (data, None),
                Decoded::More(_) => match pieces.next() {
                    Some(piece) => buf.extend_from_slice(piece),
                    None => {
                        decoder.closed().expect("ends at the close");
                        return (data, None);
                    }
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_however_they_are_split() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-sum: 1\r\n\r\n";
        for step in 1..wire.len() {
            let (data, trailers) = decode_all(Decoder::Size, wire, step);
            assert_eq!(data, b"hello world", "step {step}");
            let trailers = trailers.expect("trailers");
            assert_eq!(trailers["x-sum"], "1");
        }
        let (data, trailers) = decode_all(Decoder::Size, b"3\r\nabc\r\n0\r\n\r\n", 2);
        assert_eq!((data.as_slice(), trailers), (&b"abc"[..], None));
    }

    #[test]
    fn lengths_stop_at_the_end_and_leave_the_next_message() {
        let mut buf = BytesMut::from(&b"abcdeGET / HTTP/1.1\r\n"[..]);
        let mut decoder = Decoder::length(5);
        match decoder.decode(&mut buf).expect("valid") {
            Decoded::Data(data) => assert_eq!(data, "abcde"),
            other => panic!("expected data, got {other:?}"),
        }
        assert!(decoder.is_done());
        assert!(matches!(decoder.decode(&mut buf), Ok(Decoded::End)));
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
        assert!(Decoder::length(0).is_done());
    }

    #[test]
    fn data_read_elsewhere_counts_against_what_is_due() {
        let mut decoder = Decoder::Data(10);
        let mut buf = BytesMut::new();
        assert!(matches!(
            decoder.decode(&mut buf),
            Ok(Decoded::More(Some(10)))
        ));
        decoder.consumed(4);
        assert_eq!(decoder, Decoder::Data(6));
        decoder.consumed(6);
        assert_eq!(decoder, Decoder::DataEnd);
    }

    #[test]
    fn broken_framing_is_refused() {
        for wire in [
            &b"5\r\nhelloXX"[..],
            b"zz\r\n",
            b"5 5\r\nhello\r\n",
            b"-1\r\n",
            b"ffffffffffffffff\r\n",
        ] {
            let mut buf = BytesMut::from(wire);
            let mut decoder = Decoder::Size;
            let outcome = loop {
                match decoder.decode(&mut buf) {
                    Ok(Decoded::Data(_)) => continue,
                    other => break other,
                }
            };
            assert!(outcome.is_err(), "{wire:?}: {outcome:?}");
        }
        let mut cut = Decoder::Length(3);
        assert!(cut.closed().is_err());
        let mut until_close = Decoder::UntilClose;
        assert!(until_close.closed().is_ok() && until_close.is_done());
    }
}
