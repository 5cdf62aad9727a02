//! Wire rules of HTTP shared by both sides of the proxy: which headers are hop-by-hop, how
//! forwarding headers are written, what a valid `Host` is, and how lengths are read.

pub(crate) mod headers;
pub(crate) mod host;
pub(crate) mod wire;
