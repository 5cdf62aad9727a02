//! Automatic HTTPS: certificates from an ACME CA (RFC 8555), obtained and renewed by fulcrum.
//!
//! Each listener's `[listeners.tls.acme]` is one certificate and one background task. Nothing
//! waits on the CA: [`Manager::sync`] serves the cached certificate (or a self-signed stand-in)
//! before the listener accepts, then the task orders, answers the challenge (TLS-ALPN-01 through
//! the listener's SNI resolver, HTTP-01 through plain listeners' [`Http01Tokens`]), installs the
//! result in the store the resolvers read, and renews it.
//!
//! - `client`: the account and one order (instant-acme).
//! - `transport`: the HTTP client to the CA (trust, and `Retry-After` on error answers).
//! - `cache`: account credentials, chains and keys on disk (0700/0600, never deleted).
//! - `material`: keys, CSRs, validation and self-signed certificates (rcgen).
//! - `schedule`: when to renew, when to ask for the renewal window, how long to back off (pure).
//! - `task`: one certificate's life; `http01`: the pending HTTP-01 tokens.

mod cache;
mod client;
mod http01;
mod material;
mod schedule;
mod task;
mod transport;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub(crate) use http01::Http01Tokens;

use crate::config::Config;
use crate::tls::{AcmeSettings, CertificateBook, IssuedCertificates, Source};

/// What ACME shares with the listeners and the admin API, one per server: the store SNI
/// resolvers read certificates from, the HTTP-01 tokens plain listeners answer, the book of
/// served certificates, and the CA accounts.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Issued (and stand-in) certificates, and pending TLS-ALPN-01 validation certificates.
    pub(crate) issued: Arc<IssuedCertificates>,
    /// Pending HTTP-01 tokens.
    pub(crate) http01: Http01Tokens,
    /// Every certificate served (file and ACME), for `/status` and the expiry gauge.
    pub(crate) book: CertificateBook,
    accounts: client::Accounts,
}

/// One running certificate task.
#[derive(Debug)]
struct Job {
    listener: Arc<str>,
    settings: AcmeSettings,
    stop: CancellationToken,
}

/// The running certificate tasks, kept in line with the config.
#[derive(Debug)]
pub(crate) struct Manager {
    shared: Arc<Shared>,
    jobs: Vec<Job>,
    stop: CancellationToken,
}

impl Manager {
    /// No tasks yet; every task stops with `stop`.
    pub(crate) fn new(shared: Arc<Shared>, stop: CancellationToken) -> Self {
        Self {
            shared,
            jobs: Vec::new(),
            stop,
        }
    }

    /// Serves what is known for each `[listeners.tls.acme]` of `config` at once and runs its
    /// task; stops the tasks of certificates no longer configured (their cache stays). A
    /// certificate whose settings did not change keeps its task.
    pub(crate) fn sync(&mut self, config: &Config) {
        let wanted: Vec<(Arc<str>, AcmeSettings)> = config
            .listeners
            .iter()
            .filter_map(|listener| {
                let acme = listener.tls.as_ref()?.acme.as_ref()?;
                Some((Arc::clone(&listener.name), acme.clone()))
            })
            .collect();
        self.jobs.retain(|job| {
            let keep = wanted
                .iter()
                .any(|(listener, settings)| *listener == job.listener && *settings == job.settings);
            if !keep {
                job.stop.cancel();
                self.shared.book.forget(
                    &job.listener,
                    Source::Acme,
                    job.settings.domains.first().map(String::as_str),
                );
                tracing::info!(listener = %job.listener, domains = ?job.settings.domains, "ACME certificate no longer configured; renewal stopped (the cache is kept)");
            }
            keep
        });
        for (listener, settings) in wanted {
            if self
                .jobs
                .iter()
                .any(|job| job.listener == listener && job.settings == settings)
            {
                continue;
            }
            if let Err(err) = cache::ensure_dir(&settings.cache) {
                tracing::error!(listener = %listener, error = %err, "cannot create the ACME cache");
            }
            let serving = task::prepare(&self.shared, &listener, &settings);
            let stop = self.stop.child_token();
            tokio::spawn(task::run(
                Arc::clone(&self.shared),
                Arc::clone(&listener),
                settings.clone(),
                serving,
                stop.clone(),
            ));
            self.jobs.push(Job {
                listener,
                settings,
                stop,
            });
        }
    }
}
