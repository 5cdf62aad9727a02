//! fulcrum: a layer-4/7 load balancer.
//!
//! Clients connect to listeners; each listener forwards to one pool of backends, choosing a
//! backend per request with the pool's algorithm. Data flows one way: listener → (TLS) →
//! protocol (l7 | l4) → pool → balancer → upstream connection → response, with health, reload,
//! metrics and admin beside that path.
//!
//! # Layout
//! Layers import downward only, and no two files import each other: `backend`, `pool`,
//! `balance`, `health`, `config` and `tls` never import from `proxy`; `config` depends on `tls`,
//! never the reverse. `upstream` is always the backend side, `client` the client side.
//! - `config/`: the TOML file: `raw` serde structs → `validate/` (listener, pool, health) →
//!   `types`, with `defaults`, the reload `diff` and file:line:col errors.
//! - `tls/`: PEM `load`ing, the `server` side (certificates, SNI, ALPN), the `issued` store of
//!   certificates obtained at run time, and the `client` side (the backend-facing config).
//! - `acme/`: automatic HTTPS: the ACME `client`, its `cache`, a `task` per certificate that
//!   orders and renews on a `schedule`, and the HTTP-01 tokens plain listeners answer.
//! - `snapshot`: the immutable runtime snapshot (pools, which pool serves which listener),
//!   swapped whole on reload.
//! - `discovery/`: DNS service discovery: a task per `discover` pool does the `lookup`s, its
//!   `tracker` keeps the last good set through failures; the sets live in a registry that
//!   reload merges into the config.
//! - `pool`: a pool's policy per request: next attempt within the retry budget, the queue in
//!   front of `max_connections`, fail-open, passive ejection.
//! - `retry_budget`: a pool's retries over a 10 s window, bounded by its requests.
//! - `backend`: per-backend live state (health, in-flight, idle connections) that outlives
//!   snapshots, and what a health transition does (log, wake the queue).
//! - `route/`: a listener's router: which route (host, path, methods, headers) a request takes,
//!   and its action (pool, weighted split, redirect, fixed response).
//! - `balance/`: one file per algorithm; each owns its running state.
//! - `health/`: the pure state `machine`, the shared `Health` the hot path reads, and the
//!   `checker` tasks.
//! - `limit`: connection caps (listeners' and backends' `max_connections`) and their waiters.
//! - `rate_limit/`: per-client request rates (GCRA per listener and route, kept in the router),
//!   the client `key` (the trusted `X-Forwarded-For` walk) and the sweeper of idle keys.
//! - `http/`: wire rules: hop-by-hop and forwarding `headers`, `wire` numbers (lengths, chunk
//!   sizes, trailer sections), the HTTP/1.1 body `decode`r both sides use, the `body_slot` a
//!   request body reaches its handler through.
//! - `upstream/`: the backend side: `connect`, one `conn` of either protocol, the `idle_pool`,
//!   the HTTP/1.1 client `h1/`, the `request_body` sent up (and `BoxedRequest`, the request
//!   boxed once where its head is parsed and passed on as a pointer).
//! - `proxy/`: the client side: `l7/` (listener, conn, handler, forward, tunnel, `calm`: the
//!   HTTP/2 budget of cancelled streams, `h1/`: the HTTP/1.1 server, its framing checks and
//!   its `replay` over recorded bytes), `activity` (client timeouts, parking), `l4`,
//!   `proxy_protocol`, the response `body`, and `error`, the one error → status mapping.
//! - `io/`: byte-stream helpers both sides share (`rewind`; `socket`: TCP reads and writes as
//!   direct system calls).
//! - `metrics/`: series `names`, per-listener/pool/backend `handles`, one-minute `window`s,
//!   the request path's per-thread counters and histograms (`tally`).
//! - `admin/`: the operator endpoints (health, reload, status, Prometheus, dashboard) and their
//!   `access` rules (token, `Host`, `Origin`).
//! - [`reload`]: triggers (file watch, SIGHUP, admin), the reload `transaction`, and the
//!   same swap for changed `discovery` sets.
//! - [`server`]: bind, run, drain: `accept` loops and the `runtime` of a running server.
//! - [`cli`]: the `fulcrum` binary's arguments and the admin client behind `--check --diff`.
//!
//! The public API is narrow: [`Config`], [`Server`], [`reload`]'s handle and outcome, [`cli`].

#![warn(unreachable_pub, missing_debug_implementations)]

mod acme;
mod admin;
mod backend;
mod balance;
pub mod cli;
pub mod config;
mod discovery;
mod health;
mod http;
mod io;
mod limit;
mod metrics;
mod pool;
mod proxy;
mod rate_limit;
pub mod reload;
mod retry_budget;
mod route;
pub mod server;
mod snapshot;
mod tls;
mod upstream;

#[cfg(test)]
mod testing;

pub use config::Config;
pub use server::Server;

/// What the micro-benchmarks (`benches/micro.rs`) measure, without widening the API: a pool's
/// pick, the router and the header rules. Not a stable interface.
#[doc(hidden)]
pub mod bench {
    pub use crate::balance::{Balancer, Tried};
    pub use crate::http::headers::{ClientInfo, Forwarding, prepare_request, prepare_response};
    pub use crate::pool::Pool;
    pub use crate::snapshot::Snapshot;

    /// Routes a request as the listener `listener` would: whether a route (not the fallback)
    /// takes it.
    pub fn route(
        snapshot: &Snapshot,
        listener: &str,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> bool {
        snapshot
            .router_for(listener)
            .and_then(|router| router.route(method, uri, headers))
            .is_some_and(|target| {
                !matches!(target, crate::route::Target::Forward { route: None, .. })
            })
    }
}

/// The parsers the `cargo fuzz` targets in `fuzz/` drive, without widening the API: each
/// function is one entry point of fulcrum's own HTTP/1.1, PROXY protocol and config parsing.
/// Not a stable interface.
#[doc(hidden)]
pub mod fuzz {
    pub use crate::Config;
    pub use crate::http::headers::{ClientInfo, prepare_request, prepare_response};

    /// A `Content-Length` value (`crate::http::wire::content_length`).
    pub fn content_length(digits: &[u8]) -> Option<u64> {
        crate::http::wire::content_length(digits)
    }

    /// The size on a chunk-size line, CRLF included.
    pub fn chunk_size(line: &[u8]) -> Option<u64> {
        crate::http::wire::chunk_size(line)
    }

    /// Whether a `Host` value is `uri-host [ ":" port ]`.
    pub fn host_is_valid(value: &[u8]) -> bool {
        crate::http::host::is_valid(value)
    }

    /// The HTTP/1.1 server over `input`, read in pieces that end at `cuts` (offsets, any
    /// order, out-of-range ones ignored): the target of every request it served, and how the
    /// stream ended (`clean`, `closed`, `body failed`, or the status of a refused head).
    pub fn serve_requests(input: &[u8], cuts: &[usize]) -> (Vec<String>, String) {
        let replayed = crate::proxy::l7::h1::replay::replay(input, cuts);
        (replayed.targets, format!("{:?}", replayed.end))
    }

    /// The upstream client's response-head parser: the head's length once its fields and
    /// framing were judged, `Ok(None)` while incomplete, or why it is refused.
    pub fn response_head(buf: &[u8]) -> Result<Option<usize>, String> {
        crate::upstream::h1::judge_response_head(buf).map_err(|err| err.to_string())
    }

    /// The trailer-section parser both sides use: the number of fields, or `None` if refused.
    pub fn trailer_section(section: &[u8]) -> Option<usize> {
        crate::http::wire::trailers(section).map(|fields| fields.len())
    }

    /// The PROXY protocol (v1 or v2) parser: the header's length when whole, `Ok(None)` while
    /// incomplete.
    pub fn proxy_header(buffer: &[u8]) -> Result<Option<usize>, String> {
        crate::proxy::proxy_protocol::parse(buffer)
            .map(|parsed| parsed.map(|(_, length)| length))
            .map_err(|err| err.to_string())
    }
}
