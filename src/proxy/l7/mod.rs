//! The HTTP (layer 7) proxy: serves one client connection and forwards each request to a
//! backend of the listener's pool, retrying failed connects on other backends.
//!
//! [`listener`] is what a listener's connections share (limits, TLS, hyper's HTTP/2 builder,
//! swapped on reload); [`conn`] is one client connection's life (TLS handshake, HTTP/1 or HTTP/2
//! start, the server, parking), [`start`] reads its first bytes and tells HTTP/2's preface
//! apart, [`side_wake`] wakes it for its watchdog and drain; [`parked`] holds parked
//! connections, with no task each, until their next bytes; [`quiet`] keeps the wakers of
//! connections awaiting their first bytes for the drain; [`h1`] is the HTTP/1.1 server;
//! [`handler`] answers each request (checks, pool, errors → response); [`forward`] makes the attempts on backends (retries, replay, idle connections);
//! [`tunnel`] runs an upgraded connection (WebSocket and the like) after a 101; [`upload`] answers
//! an upload that stalls (`408`, or `504` when the backend stopped reading it); [`calm`] is
//! the HTTP/2 budget of cancelled streams and the GOAWAY that ends a connection past it.

mod calm;
mod conn;
mod forward;
pub(crate) mod h1;
mod handler;
mod listener;
mod mirror;
mod parked;
mod quiet;
mod side_wake;
mod start;
mod tunnel;
mod upload;

pub(crate) use listener::HttpListener;
