//! Wire rules of HTTP shared by both sides of the proxy: which headers are hop-by-hop, how
//! forwarding headers are written, and how lengths are read.

pub(crate) mod headers;
pub(crate) mod wire;
