//! Chunked request bodies (RFC 9112 §7.1), one byte at a time: the scanner skips them to find
//! the next request head, accepting exactly what hyper's decoder accepts.

use crate::http::wire::hex_digit;

/// Position inside a chunked body, mirroring hyper's own decoder (RFC 9112 §7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Expecting the first hex digit of a chunk-size.
    Start,
    /// Reading chunk-size hex digits (value so far).
    Size(u64),
    /// Whitespace after the chunk-size, tolerated as hyper does.
    SizeWs(u64),
    /// Skipping a chunk extension (`;name=value`) up to the CR.
    Ext(u64),
    /// Expecting the LF ending a chunk-size line.
    SizeLf(u64),
    /// Skipping chunk data; the count of remaining bytes is never zero.
    Data(u64),
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// After the last chunk or a trailer field: a trailer line or the final CRLF follows.
    LineStart,
    /// Skipping a trailer field line up to its CR (RFC 9112 §7.1.2).
    Trailer,
    /// Expecting the LF ending a trailer field line.
    TrailerLf,
    /// Expecting the LF of the CRLF that ends the chunked body.
    EndLf,
}

/// Outcome of feeding one byte to a [`Chunk`] state.
pub(super) enum ChunkStep {
    /// Still inside the chunked body.
    Continue(Chunk),
    /// The chunked body (including trailers) is complete.
    End,
    /// The bytes do not follow the chunked syntax.
    Invalid,
}

impl Chunk {
    /// Consumes one byte of chunked framing (RFC 9112 §7.1); LF alone is not accepted
    /// as a line ending here, exactly as in hyper's decoder.
    pub(super) fn step(self, byte: u8) -> ChunkStep {
        let next = match (self, byte) {
            (Self::Start, _) => match hex_digit(byte) {
                Some(digit) => Self::Size(digit),
                None => return ChunkStep::Invalid,
            },
            (Self::Size(size) | Self::SizeWs(size), b' ' | b'\t') => Self::SizeWs(size),
            (Self::Size(size) | Self::SizeWs(size), b';') => Self::Ext(size),
            (Self::Size(size) | Self::SizeWs(size) | Self::Ext(size), b'\r') => Self::SizeLf(size),
            (Self::Size(size), _) => {
                match hex_digit(byte).and_then(|d| size.checked_mul(16)?.checked_add(d)) {
                    Some(size) => Self::Size(size),
                    None => return ChunkStep::Invalid,
                }
            }
            (Self::Ext(_), b'\n') => return ChunkStep::Invalid,
            (Self::Ext(size), _) => Self::Ext(size),
            (Self::SizeLf(0), b'\n') => Self::LineStart,
            (Self::SizeLf(size), b'\n') => Self::Data(size),
            (Self::DataCr, b'\r') => Self::DataLf,
            (Self::DataLf, b'\n') => Self::Start,
            (Self::LineStart, b'\r') => Self::EndLf,
            (Self::Trailer, b'\r') => Self::TrailerLf,
            (Self::LineStart | Self::Trailer, _) => Self::Trailer,
            (Self::TrailerLf, b'\n') => Self::LineStart,
            (Self::EndLf, b'\n') => return ChunkStep::End,
            // `Data` never gets here: `HeadScanner::feed` skips chunk data by length.
            (
                Self::SizeWs(_)
                | Self::SizeLf(_)
                | Self::Data(_)
                | Self::DataCr
                | Self::DataLf
                | Self::TrailerLf
                | Self::EndLf,
                _,
            ) => return ChunkStep::Invalid,
        };
        ChunkStep::Continue(next)
    }
}
