//! One connection to a backend, and the response body it yields, by protocol.

use hyper::body::Incoming;
use hyper::client::conn::http2;

use super::h1;
use super::request_body::RequestBody;

/// One connection to a backend.
#[derive(Debug)]
pub enum Conn {
    /// One request at a time, driven by the request's own task; returned to the idle pool
    /// when its response ends.
    Http1(Box<h1::Connection>),
    /// Multiplexed: clones share one connection, which stays in the idle pool while in use.
    Http2(http2::SendRequest<RequestBody>),
}

impl Conn {
    /// Whether the connection can no longer carry a request.
    pub fn is_closed(&mut self) -> bool {
        match self {
            Conn::Http1(conn) => conn.is_closed(),
            Conn::Http2(sender) => sender.is_closed(),
        }
    }
}

/// A backend's response body, by the protocol it arrives in.
#[derive(Debug)]
pub(crate) enum ResponseBody {
    /// Read by the request's task from its HTTP/1.1 connection.
    Http1(h1::Body),
    /// From hyper's HTTP/2 client.
    Http2(Incoming),
}
