//! One certificate's life: serve what is known at once (the cache, else a self-signed
//! stand-in), order when nothing real is served, renew at renewal time (or in the CA's ARI
//! window, asked for between renewals), and after a failure keep serving the old certificate
//! and retry with capped back-off, or when the CA said to.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{Account, CertificateIdentifier};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;

use super::client::{self, AcmeError};
use super::{Shared, cache, material, schedule, transport};
use crate::metrics::names;
use crate::tls::{AcmeSettings, CertificateInfo, Described, Source, unix};

/// Longest single sleep: a wall clock set forward (or a suspended machine) is noticed within it.
const MAX_SLEEP: Duration = Duration::from_secs(60 * 60);

/// What the CA last said about a certificate's renewal window (RFC 9773).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ari {
    /// Ask at this time: at once for a certificate just issued or loaded (§4.3), later after
    /// an error.
    AskAt(SystemTime),
    /// The CA answered and the renewal time lies in its window; ask again at this time.
    Answered(SystemTime),
    /// The CA offers no renewal info, or the certificate has no identifier: only
    /// `renew_before` decides.
    Off,
}

/// A real (CA-issued) certificate being served, and when to renew it.
#[derive(Debug)]
pub(super) struct Serving {
    described: Described,
    /// Its RFC 9773 §4.1 identifier; `None` without an authority key identifier.
    id: Option<CertificateIdentifier<'static>>,
    due: SystemTime,
    ari: Ari,
}

impl Serving {
    fn new(key: &CertifiedKey, described: Described, settings: &AcmeSettings) -> Option<Self> {
        let due = schedule::renewal_time(
            described.not_before,
            described.not_after,
            settings.renew_before,
            fastrand::f64(),
        );
        let id = client::certificate_id(key.cert.first()?);
        let ari = if id.is_some() {
            Ari::AskAt(SystemTime::now())
        } else {
            Ari::Off
        };
        Some(Serving {
            described,
            id,
            due,
            ari,
        })
    }

    /// When to ask the CA for the renewal window, if that comes before the renewal itself.
    fn ask_before_due(&self) -> Option<SystemTime> {
        match self.ari {
            Ari::AskAt(at) | Ari::Answered(at) if at < self.due => Some(at),
            _ => None,
        }
    }

    /// Whether the CA's last answer still stands (its `Retry-After` has not passed).
    fn answer_is_fresh(&self, now: SystemTime) -> bool {
        matches!(self.ari, Ari::Answered(at) if at > now)
    }
}

/// Serves what is known for `settings` now, before any handshake: the cached certificate if it
/// covers every domain, else a self-signed stand-in (logged, with why) for the names that have
/// nothing yet. Returns the real certificate served, if any.
pub(super) fn prepare(
    shared: &Shared,
    listener: &Arc<str>,
    settings: &AcmeSettings,
) -> Option<Serving> {
    let why = match cache::load_certificate(settings) {
        Ok(Some(cached))
            if settings
                .domains
                .iter()
                .all(|domain| cached.described.names.contains(domain)) =>
        {
            shared.issued.install(&settings.domains, &cached.key);
            let serving = Serving::new(&cached.key, cached.described, settings)?;
            record(shared, listener, settings, &serving, Source::Acme);
            tracing::info!(
                listener = %listener,
                domains = ?settings.domains,
                not_after = serving.described.not_after_unix(),
                "serving the cached ACME certificate"
            );
            return Some(serving);
        }
        Ok(Some(_)) => "the cached certificate does not cover every configured domain".to_owned(),
        Ok(None) => "no certificate in the cache yet".to_owned(),
        Err(err) => format!("the cached certificate is unusable: {err}"),
    };
    let missing: Vec<String> = settings
        .domains
        .iter()
        .filter(|domain| shared.issued.serving(domain).is_none())
        .cloned()
        .collect();
    if missing.is_empty() {
        return None;
    }
    match material::self_signed(&settings.domains) {
        Ok(key) => {
            shared.issued.install(&missing, &key);
            if let Some(described) = key.cert.first().and_then(|leaf| Described::of(leaf)) {
                shared.book.record(CertificateInfo {
                    listener: Arc::clone(listener),
                    names: settings.domains.clone(),
                    not_after_unix: described.not_after_unix(),
                    issuer: described.issuer,
                    source: Source::SelfSigned,
                    next_renewal_unix: Some(unix(SystemTime::now())),
                    last_error: None,
                });
            }
            tracing::warn!(
                listener = %listener,
                domains = ?missing,
                reason = %why,
                "no ACME certificate yet: serving a self-signed certificate until the CA issues one"
            );
        }
        Err(err) => tracing::error!(
            listener = %listener,
            domains = ?missing,
            error = %err,
            "cannot make a self-signed stand-in; handshakes for these names fail until the CA issues"
        ),
    }
    None
}

fn record(
    shared: &Shared,
    listener: &Arc<str>,
    settings: &AcmeSettings,
    serving: &Serving,
    source: Source,
) {
    shared.book.record(CertificateInfo {
        listener: Arc::clone(listener),
        names: settings.domains.clone(),
        issuer: serving.described.issuer.clone(),
        not_after_unix: serving.described.not_after_unix(),
        source,
        next_renewal_unix: Some(unix(serving.due)),
        last_error: None,
    });
}

/// Orders and renews `settings`' certificate until `stop`.
pub(super) async fn run(
    shared: Arc<Shared>,
    listener: Arc<str>,
    settings: AcmeSettings,
    mut serving: Option<Serving>,
    stop: CancellationToken,
) {
    let first = settings.domains.first().cloned().unwrap_or_default();
    let mut failures = 0u32;
    let mut retry_at = SystemTime::now();
    let mut fresh_account = false;
    loop {
        let (due, ask) = match (&serving, failures) {
            (_, 1..) => (retry_at, None),
            (Some(serving), 0) => (serving.due, serving.ask_before_due()),
            (None, 0) => (SystemTime::now(), None),
        };
        shared.book.update(&listener, &first, |info| {
            info.next_renewal_unix = Some(unix(due));
        });
        let wake = ask.unwrap_or(due);
        while let Ok(left) = wake.duration_since(SystemTime::now()) {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(left.min(MAX_SLEEP)) => {}
            }
        }
        if let (Some(_), Some(current)) = (ask, serving.as_mut()) {
            tokio::select! {
                () = stop.cancelled() => return,
                () = ask_renewal_info(&shared, &listener, &settings, current) => {}
            }
            continue;
        }
        let attempt = async {
            let account = client::account(&shared, &settings, fresh_account).await?;
            let mut replaces = None;
            if let Some(current) = serving.as_mut() {
                if current.answer_is_fresh(SystemTime::now())
                    || consult(&account, &listener, current).await
                {
                    if failures == 0 && current.due > SystemTime::now() {
                        return Ok(None);
                    }
                    replaces = current.id.clone();
                }
            }
            client::order(&shared, &account, &settings, replaces)
                .await
                .map(Some)
        };
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = attempt => outcome,
        };
        match outcome {
            Ok(None) => {}
            Ok(Some(issued)) => match install(&shared, &listener, &settings, &issued) {
                Ok(next) => {
                    let renewed = serving.is_some();
                    metrics::counter!(names::ACME_ORDERS, "outcome" => if renewed { "renewed" } else { "issued" }).increment(1);
                    tracing::info!(
                        listener = %listener,
                        domains = ?settings.domains,
                        issuer = %next.described.issuer,
                        not_after = next.described.not_after_unix(),
                        next_renewal = unix(next.due),
                        "{}", if renewed { "ACME certificate renewed" } else { "ACME certificate issued" }
                    );
                    serving = Some(next);
                    failures = 0;
                    fresh_account = false;
                }
                Err(err) => {
                    failures += 1;
                    retry_at = fail(&shared, &listener, &settings, &err, failures);
                }
            },
            Err(err) => {
                failures += 1;
                fresh_account = err.unknown_account();
                retry_at = fail(&shared, &listener, &settings, &err, failures);
            }
        }
    }
}

/// Between renewals: asks the CA for the renewal window (RFC 9773 §4.3), which may move the
/// renewal earlier (to now) or later. Not an order: a failure is logged at debug and asked
/// again later, `renew_before` still standing.
async fn ask_renewal_info(
    shared: &Shared,
    listener: &Arc<str>,
    settings: &AcmeSettings,
    current: &mut Serving,
) {
    match client::account(shared, settings, false).await {
        Ok(account) => {
            consult(&account, listener, current).await;
        }
        Err(err) => {
            current.ari = Ari::AskAt(SystemTime::now() + schedule::MAX_RETRY);
            tracing::debug!(listener = %listener, error = %err, "ACME renewal info not asked: no account; renewing on schedule");
        }
    }
}

/// Asks the CA for `current`'s renewal window and moves its renewal time into it (RFC 9773
/// §4.2); the next ask follows the CA's `Retry-After` (§4.3). Returns whether the CA answered;
/// otherwise `renew_before` decides (errors are logged at debug).
async fn consult(account: &Account, listener: &Arc<str>, current: &mut Serving) -> bool {
    let Some(id) = current.id.as_ref() else {
        current.ari = Ari::Off;
        return false;
    };
    let now = SystemTime::now();
    match account.renewal_info(id).await {
        Ok((info, retry_after)) => {
            let next = now + schedule::renewal_info_interval(retry_after);
            let start = SystemTime::from(info.suggested_window.start);
            let end = SystemTime::from(info.suggested_window.end);
            let Some(due) = schedule::renewal_in_window(start, end, current.due, fastrand::f64())
            else {
                tracing::debug!(listener = %listener, window_start = unix(start), window_end = unix(end), "ACME renewal info has an empty window; renewing on schedule");
                current.ari = Ari::AskAt(next);
                return false;
            };
            if due != current.due {
                tracing::info!(
                    listener = %listener,
                    window_start = unix(start),
                    window_end = unix(end),
                    next_renewal = unix(due),
                    "the CA's renewal window (ARI) moves the renewal"
                );
            }
            current.due = due;
            current.ari = Ari::Answered(next);
            true
        }
        Err(instant_acme::Error::Unsupported(_)) => {
            current.ari = Ari::Off;
            false
        }
        Err(err) => {
            let wait = transport::refused(&err).map_or(schedule::MAX_RETRY, |refused| refused.wait);
            current.ari = Ari::AskAt(now + schedule::renewal_info_interval(wait));
            tracing::debug!(listener = %listener, error = %err, "ACME renewal info unavailable; renewing on schedule");
            false
        }
    }
}

/// Serves and caches a newly issued certificate.
fn install(
    shared: &Shared,
    listener: &Arc<str>,
    settings: &AcmeSettings,
    issued: &client::Issued,
) -> Result<Serving, AcmeError> {
    let key =
        crate::tls::certified_key_from_pem(issued.chain_pem.as_bytes(), issued.key_pem.as_bytes())
            .map_err(material::MaterialError::Load)?;
    let described = key
        .cert
        .first()
        .and_then(|leaf| Described::of(leaf))
        .ok_or(material::MaterialError::Load(rustls::Error::General(
            "the issued certificate does not parse".to_owned(),
        )))?;
    let serving = Serving::new(&key, described, settings).ok_or(material::MaterialError::Load(
        rustls::Error::General("the CA sent no certificate".to_owned()),
    ))?;
    if let Err(err) = cache::store_certificate(settings, &issued.chain_pem, &issued.key_pem) {
        // Served anyway; a restart orders again.
        tracing::error!(listener = %listener, error = %err, "cannot cache the issued certificate");
    }
    shared.issued.install(&settings.domains, &key);
    shared.book.forget(
        listener,
        Source::Acme,
        settings.domains.first().map(String::as_str),
    );
    record(shared, listener, settings, &serving, Source::Acme);
    Ok(serving)
}

/// Logs and counts a failed attempt; returns when to retry.
fn fail(
    shared: &Shared,
    listener: &Arc<str>,
    settings: &AcmeSettings,
    err: &AcmeError,
    failures: u32,
) -> SystemTime {
    let retry_after = err.retry_after();
    let delay = schedule::retry_delay(failures, err.rate_limited(), retry_after, fastrand::f64());
    metrics::counter!(names::ACME_ORDERS, "outcome" => "failed").increment(1);
    tracing::warn!(
        listener = %listener,
        domains = ?settings.domains,
        directory = %settings.directory,
        error = %err,
        failures,
        retry_in_secs = delay.as_secs(),
        retry_after_secs = retry_after.map(|wait| wait.as_secs()),
        rate_limited = err.rate_limited(),
        "ACME order failed; the current certificate stays and the order is retried"
    );
    let first = settings.domains.first().map_or("", String::as_str);
    shared.book.update(listener, first, |info| {
        info.last_error = Some(err.to_string());
    });
    SystemTime::now() + delay
}
