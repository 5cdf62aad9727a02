//! The client side of the data path: client connection → request checks → pick a backend →
//! forward → stream back.
//!
//! [`l7`] is the HTTP proxy (fulcrum's own HTTP/1.1 server or hyper's HTTP/2 server per client
//! connection, parked while quiet); [`l4`] the TCP proxy, with [`proxy_protocol`] headers;
//! [`error`] is the single failure → status mapping; [`body`] streams responses and releases
//! per-request resources when they end; [`activity`]
//! watches client connections: idle and request-head timeouts, parking, byte counts.

pub(crate) mod activity;
pub(crate) mod body;
pub(crate) mod error;
pub(crate) mod l4;
pub(crate) mod l7;
pub(crate) mod proxy_protocol;
pub(crate) mod sni;
