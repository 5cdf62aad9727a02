//! What an HTTP listener's connections share: its name and routing state, and the client
//! limits, TLS acceptor and HTTP/2 server builder that a reload may replace.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::acme;
use crate::config::ClientLimits;
use crate::metrics::ListenerMetrics;
use crate::proxy::l7::quiet::QuietConns;
use crate::snapshot::SharedState;
use crate::tls::SniResolver;
use crate::tls::{self, TlsError, TlsSettings};

/// Streams a client may reset before hyper accepted them (the plain rapid reset); one more is
/// GOAWAY (ENHANCE_YOUR_CALM). h2's default, set here so it cannot change under us.
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams h2 may reset itself for a client's errors over a connection's life (malformed
/// requests, refused streams); one more is GOAWAY (ENHANCE_YOUR_CALM). hyper's default.
const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// SETTINGS_MAX_FRAME_SIZE: the protocol's minimum, so a header block needs the most frames
/// to be large and CONTINUATION floods hit h2's frame count early.
const H2_MAX_FRAME_SIZE: u32 = 16 * 1024;
/// Response bytes buffered per stream for a client that does not open its window.
const H2_MAX_SEND_BUFFER: usize = 256 * 1024;
/// Stream and connection flow-control windows offered to clients (upload bytes in flight).
const H2_WINDOW: u32 = 1024 * 1024;

/// Everything an HTTP listener's connections share.
pub(crate) struct HttpListener {
    pub(super) name: Arc<str>,
    pub(super) state: SharedState,
    /// Cancelled when a drain stops waiting: ends upgraded tunnels still open.
    pub(super) drain_deadline: CancellationToken,
    /// Connection and byte counters.
    pub metrics: Arc<ListenerMetrics>,
    /// Client limits and the HTTP/2 builder made from them; a reload may replace both, and
    /// each new connection uses the newest.
    pub(super) settings: ArcSwap<HttpSettings>,
    /// ACME: certificates issued at run time, and the HTTP-01 tokens this listener answers.
    pub(super) acme: Arc<acme::Shared>,
    /// The wakers of connections waiting for their first bytes, for the drain.
    pub(super) quiet: Arc<QuietConns>,
}

pub(super) struct HttpSettings {
    pub(super) limits: ClientLimits,
    pub(super) http2: http2::Builder<TokioExecutor>,
    pub(super) tls: Option<TlsTermination>,
}

/// A listener's TLS acceptor, rebuilt (files re-read) on every reload.
pub(super) struct TlsTermination {
    pub(super) acceptor: TlsAcceptor,
    pub(super) handshake_timeout: Duration,
    /// The acceptor's certificate choice, to refuse requests for hosts the connection's
    /// certificate was not chosen for (`421`).
    pub(super) certificates: Arc<SniResolver>,
}

impl HttpSettings {
    fn new(
        name: &Arc<str>,
        limits: ClientLimits,
        tls: Option<&TlsSettings>,
        acme: &acme::Shared,
    ) -> Result<Self, TlsError> {
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        // Every limit explicit, not left to library defaults that may change (see README's
        // "HTTP/2 limits"). h2 answers a breach with GOAWAY (ENHANCE_YOUR_CALM) itself; `calm`
        // adds the budget of streams cancelled after dispatch.
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.http2.max_concurrent_streams)
            // Also bounds CONTINUATION frames: h2 accepts about this many bytes' worth of
            // frames per header block (a quarter more, at least 5), then sends GOAWAY.
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS)
            .max_frame_size(H2_MAX_FRAME_SIZE)
            .max_send_buf_size(H2_MAX_SEND_BUFFER)
            .initial_stream_window_size(H2_WINDOW)
            .initial_connection_window_size(H2_WINDOW)
            // No keep-alive PINGs: a connection with no bytes either way is closed at
            // `idle_timeout` already, and PING traffic would count as activity and keep an
            // idle connection open forever.
            .keep_alive_interval(None);
        let tls = match tls {
            None => {
                acme.book.forget(name, tls::Source::File, None);
                None
            }
            Some(settings) => {
                let (config, certificates) = tls::server_config(
                    settings,
                    tls::Certificates {
                        issued: &acme.issued,
                        book: Some((&acme.book, name)),
                    },
                )?;
                Some(TlsTermination {
                    acceptor: TlsAcceptor::from(config),
                    handshake_timeout: settings.handshake_timeout,
                    certificates,
                })
            }
        };
        Ok(Self { limits, http2, tls })
    }
}

impl HttpListener {
    /// A listener called `name` routing through `state`, protected by `limits`, terminating
    /// TLS when `tls` is set (certificate files are read now).
    pub(crate) fn new(
        name: Arc<str>,
        state: SharedState,
        limits: ClientLimits,
        tls: Option<&TlsSettings>,
        drain_deadline: CancellationToken,
        acme: Arc<acme::Shared>,
    ) -> Result<Self, TlsError> {
        let settings = HttpSettings::new(&name, limits, tls, &acme)?;
        let metrics = Arc::new(ListenerMetrics::new(&name));
        Ok(Self {
            quiet: Arc::default(),
            metrics,
            name,
            state,
            drain_deadline,
            settings: ArcSwap::from_pointee(settings),
            acme,
        })
    }

    /// Applies new limits and re-reads TLS certificates, for connections accepted from now on.
    /// On a TLS error the current settings stay and the error is returned.
    pub(crate) fn update(
        &self,
        limits: &ClientLimits,
        tls: Option<&TlsSettings>,
    ) -> Result<(), TlsError> {
        let current = self.settings.load();
        if current.limits == *limits && tls.is_none() && current.tls.is_none() {
            return Ok(());
        }
        self.settings.store(Arc::new(HttpSettings::new(
            &self.name,
            limits.clone(),
            tls,
            &self.acme,
        )?));
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A plain listener `web` of one pool (its backend `127.0.0.1:9`, where nothing listens),
    /// with `idle_timeout`.
    pub(in crate::proxy::l7) fn listener(idle_timeout: &str) -> Arc<HttpListener> {
        let config = crate::config::Config::parse(
            "test.toml",
            &format!(
                "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\
                 idle_timeout = \"{idle_timeout}\"\n\n[pools.app]\nbackends = [\"127.0.0.1:9\"]\n"
            ),
        )
        .expect("config");
        let limits = config.listeners[0].limits.clone();
        let state = Arc::new(ArcSwap::from_pointee(crate::snapshot::Snapshot::build(
            Arc::new(config),
            None,
        )));
        Arc::new(
            HttpListener::new(
                "web".into(),
                state,
                limits,
                None,
                CancellationToken::new(),
                Arc::new(acme::Shared::default()),
            )
            .expect("listener"),
        )
    }
}
