//! The data path: client connection → request checks → pick a backend → forward → stream back.
//!
//! [`l7`] is the HTTP proxy (hyper's HTTP/1 or HTTP/2 server per client connection, parked
//! while quiet); [`l4`] the TCP proxy, with [`proxy_protocol`] headers; [`client`] owns upstream
//! connections, [`h1`] speaks HTTP/1.1 on them; [`headers`] holds the RFC header rules; [`error`] is the single failure → status mapping; [`body`] streams responses
//! and releases per-request resources when they end; `framing` rejects smuggling attempts that
//! hyper would otherwise accept; [`idle`] times client connections out and parks quiet ones;
//! [`rewind`] puts bytes read ahead back in front of a stream.

pub mod body;
pub mod client;
pub mod error;
mod framing;
pub mod h1;
pub mod headers;
pub mod idle;
pub mod l4;
pub mod l7;
pub mod proxy_protocol;
pub mod rewind;
