//! Wire rules of HTTP shared by both sides of the proxy: which headers are hop-by-hop, how
//! forwarding headers are written, what a valid `Host` is, how lengths are read and how an
//! HTTP/1.1 body is decoded.

pub(crate) mod body_slot;
pub(crate) mod decode;
pub(crate) mod headers;
pub(crate) mod host;
pub(crate) mod wire;
