//! The request body on its way up: the client's frames written in the framing the request head
//! declared, while the response head is awaited and, if need be, while the response streams.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::header::HeaderMap;
use http_body::Body as _;
use tokio::io::AsyncWrite;

use super::connection::Stream;
use super::error::Error;
use super::head::Framing;
use crate::http::wire;
use crate::upstream::request_body::RequestBody;

/// Streams a request body to the backend in its framing.
pub(super) struct BodyWriter {
    body: RequestBody,
    framing: Framing,
    /// Encoded bytes waiting for the socket: chunk prefix, data, suffix.
    pending: [Bytes; 3],
    /// Body bytes still due under `Content-Length`.
    remaining: u64,
    /// Nothing more will be written.
    pub(super) done: bool,
    /// The whole body was written.
    pub(super) complete: bool,
}

impl BodyWriter {
    pub(super) fn new(body: RequestBody, framing: Framing) -> Self {
        let empty = framing == Framing::Empty;
        Self {
            body,
            framing,
            pending: Default::default(),
            remaining: match framing {
                Framing::Length(length) => length,
                Framing::Empty | Framing::Chunked => 0,
            },
            done: empty,
            complete: empty,
        }
    }

    /// Moves body frames to the socket until the body ends, the socket is full or the client
    /// has nothing more yet.
    pub(super) fn poll_write(
        &mut self,
        io: &mut Stream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Error>> {
        loop {
            ready!(self.poll_pending(io, cx))?;
            // A no-op on TCP; TLS may hold written bytes until flushed.
            ready!(Pin::new(&mut *io).poll_flush(cx))?;
            if self.complete {
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(err)) => return Poll::Ready(Err(Error::RequestBody(err))),
                None => {
                    self.finish(None)?;
                    continue;
                }
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => self.queue(data)?,
                Err(frame) => self.finish(frame.into_trailers().ok())?,
            }
        }
    }

    /// Queues one data frame in the body's framing.
    fn queue(&mut self, data: Bytes) -> Result<(), Error> {
        match self.framing {
            Framing::Length(_) => {
                let len = data.len() as u64;
                if len > self.remaining {
                    return Err(Error::Malformed(
                        "request body longer than its Content-Length",
                    ));
                }
                self.remaining -= len;
                self.pending[1] = data;
            }
            Framing::Chunked => {
                self.pending[0] = Bytes::from(format!("{:x}\r\n", data.len()));
                self.pending[1] = data;
                self.pending[2] = Bytes::from_static(b"\r\n");
            }
            Framing::Empty => {
                return Err(Error::Malformed("data in a request without a body"));
            }
        }
        Ok(())
    }

    /// Ends the body, with `trailers` when the framing can carry them.
    fn finish(&mut self, trailers: Option<HeaderMap>) -> Result<(), Error> {
        match self.framing {
            Framing::Length(_) if self.remaining > 0 => {
                return Err(Error::Malformed(
                    "request body shorter than its Content-Length",
                ));
            }
            Framing::Chunked => {
                self.pending[0] = Bytes::from(wire::last_chunk(trailers.iter().flatten()));
            }
            Framing::Empty | Framing::Length(_) => {}
        }
        self.complete = true;
        Ok(())
    }

    /// Writes the queued bytes.
    fn poll_pending(&mut self, io: &mut Stream, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        while self.pending.iter().any(|part| !part.is_empty()) {
            let slices = [
                io::IoSlice::new(&self.pending[0]),
                io::IoSlice::new(&self.pending[1]),
                io::IoSlice::new(&self.pending[2]),
            ];
            let mut written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
            if written == 0 {
                return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
            }
            for part in &mut self.pending {
                let step = written.min(part.len());
                part.advance(step);
                written -= step;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Where the request body stands once the response head has arrived.
pub(super) enum Writing {
    /// Nothing more will be written; `complete` when the whole body was.
    Done { complete: bool },
    /// Still streaming: the response body keeps it going.
    Body(Box<BodyWriter>),
}
