//! Detection of ambiguous HTTP/1.x request framing on a client connection.
//!
//! hyper 1.x's HTTP/1 server accepts a request carrying both `Content-Length` and
//! `Transfer-Encoding`: it drops `Content-Length`, reads the body as chunked and closes
//! the connection after the response. RFC 9112 §6.1 lets a server reject such a request,
//! and §6.3 (item 3) says it "might indicate an attempt to perform request smuggling ...
//! and ought to be handled as an error". Our spec requires a 400 and no forwarding, but
//! hyper gives the service no way to see the original framing headers.
//!
//! So [`ScannedIo`] wraps the client socket and feeds every byte hyper reads into a
//! [`HeadScanner`](scan::HeadScanner), which follows the request stream's message boundaries
//! (RFC 9112 §6, §7.1) and judges each request head. The first request index (0-based, per
//! connection) with ambiguous framing is recorded in a shared [`FramingCheck`], which the
//! request handler consults once per request via [`FramingCheck::next_request_is_bad`].
//!
//! Requests with `Upgrade` or method `CONNECT` do not stop the scan. If hyper switches
//! protocols it dispatches no further requests on the connection, so nothing the scanner
//! later concludes from the tunnelled bytes is ever consulted; if it does not (the
//! response was not 101 / 2xx), more HTTP/1 requests follow and must still be checked.
//! Stopping there would let a client switch the check off with a dummy `Upgrade` field.
//!
//! The scanner never blocks or rejects anything itself. Whenever it cannot follow the
//! stream (unparsable bytes, an oversized head, HTTP/2) it stops looking for good and
//! leaves the connection to hyper, which rejects garbage on its own.
//!
//! [`scan`] follows the stream and judges heads, [`chunked`] steps through chunked bodies,
//! [`check`] carries the verdict to the handler, [`io`] feeds the scanner from the socket.

mod check;
mod chunked;
mod io;
mod scan;

pub(crate) use check::FramingCheck;
pub(crate) use io::ScannedIo;
pub(crate) use scan::HeadScanner;
