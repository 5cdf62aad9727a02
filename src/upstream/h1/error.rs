//! How an exchange with a backend fails, and whether its request can still go to another
//! connection or backend.

use std::io;

use crate::upstream::request_body::BoxedRequest;

/// Why an exchange with a backend failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading from or writing to the backend failed (reset and the like).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The backend closed the connection before the response was complete.
    #[error("backend closed the connection before the response was complete")]
    Closed,
    /// The backend sent something that is not a valid HTTP/1.1 response.
    #[error("invalid response: {0}")]
    Malformed(&'static str),
    /// The client's request body failed while it was being forwarded.
    #[error("request body from the client failed: {0}")]
    RequestBody(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// No response head arrived before the exchange's deadline.
    #[error("no response head before the deadline")]
    TimedOut,
}

/// A failed exchange.
#[derive(Debug)]
pub enum SendError {
    /// Nothing of the request reached the backend in a usable form (the head could not be
    /// written): the request comes back whole for another connection or backend.
    NotSent(BoxedRequest, Error),
    /// The request was sent, at least in part; this connection cannot take it again. The
    /// head (its body empty) comes back when no response head had arrived (the caller may
    /// replay a bodiless idempotent request elsewhere with it).
    Failed(Error, Option<BoxedRequest>),
}
