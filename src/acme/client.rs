//! Talking to the CA (instant-acme): the account (created once, then restored from the cache)
//! and one order from new-order to the downloaded chain, with the challenges armed in between
//! and disarmed however the order ends.

use std::collections::HashMap;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType,
    Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};

use super::Shared;
use super::cache::{self, CacheError};
use super::material::{self, MaterialError};
use super::transport::{self, CaClient, TransportError};
use crate::tls::{AcmeSettings, Challenge};

/// How long an order may take from challenges set ready to the chain downloaded.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);
/// RFC 8555 §6.7: the CA's "too many requests" problem type.
const RATE_LIMITED: &str = "urn:ietf:params:acme:error:rateLimited";
/// RFC 8555 §6.7: the account the request was signed with does not exist.
const UNKNOWN_ACCOUNT: &str = "urn:ietf:params:acme:error:accountDoesNotExist";

/// Why an order failed. Every variant names what the CA said where it said something.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcmeError {
    /// The CA answered with an error, or could not be reached.
    #[error("{0}")]
    Protocol(#[from] instant_acme::Error),
    /// The HTTP client to the CA could not be built.
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// The CA could not validate a domain.
    #[error("validation of {name} failed: {detail}")]
    Validation {
        /// The domain.
        name: String,
        /// The CA's problem document, or the status it ended in.
        detail: String,
    },
    /// The CA offered no challenge of the configured type.
    #[error("the CA offers no {challenge} challenge for {name}")]
    NoChallenge {
        /// The domain.
        name: String,
        /// The configured challenge.
        challenge: &'static str,
    },
    /// The cache could not be read or written.
    #[error("cache: {0}")]
    Cache(#[from] CacheError),
    /// A key, CSR or validation certificate could not be made, or the issued one not loaded.
    #[error("{0}")]
    Material(#[from] MaterialError),
    /// The account credentials in the cache do not parse.
    #[error("account credentials {}: {source}", path.display())]
    Credentials {
        /// The file.
        path: std::path::PathBuf,
        /// serde's reason.
        #[source]
        source: serde_json::Error,
    },
}

impl AcmeError {
    /// Whether the CA refused for its rate limits (then the retry waits longest).
    pub(super) fn rate_limited(&self) -> bool {
        self.problem_type() == Some(RATE_LIMITED)
    }

    /// Whether the CA does not know the account (the next attempt creates one).
    pub(super) fn unknown_account(&self) -> bool {
        self.problem_type() == Some(UNKNOWN_ACCOUNT)
    }

    /// How long the CA asked to wait before the next attempt, when its error answer said
    /// (`Retry-After`).
    pub(super) fn retry_after(&self) -> Option<Duration> {
        match self {
            AcmeError::Protocol(err) => transport::refused(err).map(|refused| refused.wait),
            _ => None,
        }
    }

    fn problem_type(&self) -> Option<&str> {
        let AcmeError::Protocol(err) = self else {
            return None;
        };
        let problem = match err {
            instant_acme::Error::Api(problem) => problem,
            other => &transport::refused(other)?.problem,
        };
        problem.r#type.as_deref()
    }
}

/// Accounts by directory URL, made once per server and shared by its certificates' tasks.
#[derive(Default)]
pub(super) struct Accounts(tokio::sync::Mutex<HashMap<String, Account>>);

impl std::fmt::Debug for Accounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Accounts").finish_non_exhaustive()
    }
}

/// The account for `settings`' CA: from memory, else restored from the cache, else created
/// (and its credentials cached). `fresh`: the CA no longer knows the cached account (a test
/// CA was reset); create another, overwriting the credentials.
pub(super) async fn account(
    shared: &Shared,
    settings: &AcmeSettings,
    fresh: bool,
) -> Result<Account, AcmeError> {
    let mut accounts = shared.accounts.0.lock().await;
    if fresh {
        accounts.remove(&settings.directory);
    }
    if let Some(account) = accounts.get(&settings.directory) {
        return Ok(account.clone());
    }
    let builder = || -> Result<_, AcmeError> {
        let http = CaClient::new(settings.directory_ca.as_deref())?;
        Ok(Account::builder_with_http(Box::new(http)))
    };
    let path = cache::account_file(settings);
    let cached = if fresh {
        None
    } else {
        cache::read_optional(&path)?
    };
    let account = match cached {
        Some(bytes) => {
            let credentials: AccountCredentials =
                serde_json::from_slice(&bytes).map_err(|source| AcmeError::Credentials {
                    path: path.clone(),
                    source,
                })?;
            builder()?.from_credentials(credentials).await?
        }
        None => {
            let contact = settings
                .email
                .as_ref()
                .map(|email| format!("mailto:{email}"));
            let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
            let (account, credentials) = builder()?
                .create(
                    &NewAccount {
                        contact: &contact,
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    settings.directory.clone(),
                    None,
                )
                .await?;
            let json = serde_json::to_vec_pretty(&credentials).map_err(|source| {
                AcmeError::Credentials {
                    path: path.clone(),
                    source,
                }
            })?;
            cache::write_private(&path, &json)?;
            tracing::info!(directory = %settings.directory, account = account.id(), "ACME account created");
            account
        }
    };
    accounts.insert(settings.directory.clone(), account.clone());
    Ok(account)
}

/// A chain and key the CA issued.
#[derive(Debug)]
pub(super) struct Issued {
    pub(super) chain_pem: String,
    pub(super) key_pem: String,
}

/// Challenges armed for one order; dropping it disarms them, however the order ended.
struct Armed<'a> {
    shared: &'a Shared,
    names: Vec<String>,
    tokens: Vec<String>,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        for name in &self.names {
            self.shared.issued.set_validation(name, None);
        }
        for token in &self.tokens {
            self.shared.http01.disarm(token);
        }
    }
}

/// Orders a certificate for `settings`' domains, answering the configured challenge;
/// `replaces` names the certificate it renews (ARI, RFC 9773 §5).
pub(super) async fn order(
    shared: &Shared,
    account: &Account,
    settings: &AcmeSettings,
    replaces: Option<CertificateIdentifier<'static>>,
) -> Result<Issued, AcmeError> {
    let identifiers: Vec<Identifier> = settings
        .domains
        .iter()
        .map(|name| Identifier::Dns(name.clone()))
        .collect();
    let mut new_order = NewOrder::new(&identifiers);
    if let Some(replaces) = replaces {
        new_order = new_order.replaces(replaces);
    }
    let mut order = account.new_order(&new_order).await?;
    let mut armed = Armed {
        shared,
        names: Vec::new(),
        tokens: Vec::new(),
    };
    let kind = match settings.challenge {
        Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        Challenge::Http01 => ChallengeType::Http01,
    };
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization?;
        let name = authorization.identifier().to_string();
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(AcmeError::Validation {
                    name,
                    detail: format!("authorization is {other:?}"),
                });
            }
        }
        let Some(mut challenge) = authorization.challenge(kind.clone()) else {
            return Err(AcmeError::NoChallenge {
                name,
                challenge: settings.challenge.as_str(),
            });
        };
        let key_authorization = challenge.key_authorization();
        match settings.challenge {
            Challenge::TlsAlpn01 => {
                let certificate =
                    material::validation_certificate(&name, key_authorization.digest().as_ref())?;
                shared.issued.set_validation(&name, Some(certificate));
                armed.names.push(name.clone());
            }
            Challenge::Http01 => {
                shared
                    .http01
                    .arm(&challenge.token, key_authorization.as_str());
                armed.tokens.push(challenge.token.clone());
            }
        }
        tracing::debug!(domain = %name, challenge = settings.challenge.as_str(), "ACME challenge armed");
        challenge.set_ready().await?;
    }
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(ORDER_TIMEOUT);
    let status = order.poll_ready(&retries).await?;
    if status != OrderStatus::Ready {
        return Err(validation_failure(&mut order, status).await);
    }
    drop(armed);
    let (key_pem, csr) = material::key_and_csr(&settings.domains)?;
    order.finalize_csr(&csr).await?;
    let chain_pem = order.poll_certificate(&retries).await?;
    Ok(Issued { chain_pem, key_pem })
}

/// The CA's reason an order ended `status`: the first failed challenge's problem.
async fn validation_failure(order: &mut instant_acme::Order, status: OrderStatus) -> AcmeError {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let Ok(state) = authorization.refresh().await else {
            continue;
        };
        let name = state.identifier().to_string();
        let problem = state
            .challenges
            .iter()
            .find_map(|challenge| challenge.error.as_ref());
        if let Some(problem) = problem {
            return AcmeError::Validation {
                name,
                detail: problem.to_string(),
            };
        }
    }
    AcmeError::Validation {
        name: "the order".to_owned(),
        detail: format!("order is {status:?}"),
    }
}

/// The ARI identifier of a leaf certificate (RFC 9773 §4.1), if it has the extensions needed.
pub(super) fn certificate_id(
    leaf: &rustls_pki_types::CertificateDer<'_>,
) -> Option<CertificateIdentifier<'static>> {
    CertificateIdentifier::try_from(leaf)
        .ok()
        .map(CertificateIdentifier::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::acme::transport::Refused;

    fn problem(kind: &str) -> instant_acme::Problem {
        serde_json::from_str(&format!(r#"{{"type":"{kind}","status":429}}"#)).expect("a problem")
    }

    fn refused(kind: &str, seconds: u64) -> AcmeError {
        AcmeError::from(instant_acme::Error::Other(Box::new(Refused {
            problem: problem(kind),
            wait: Duration::from_secs(seconds),
        })))
    }

    #[test]
    fn a_refusal_keeps_the_cas_wait_and_its_problem_type() {
        let err = refused(RATE_LIMITED, 3);
        assert!(err.rate_limited());
        assert!(!err.unknown_account());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(3)));
        assert!(refused(UNKNOWN_ACCOUNT, 1).unknown_account());
    }

    #[test]
    fn a_problem_without_retry_after_names_no_wait() {
        let err = AcmeError::from(instant_acme::Error::Api(problem(RATE_LIMITED)));
        assert!(err.rate_limited());
        assert_eq!(err.retry_after(), None);
    }
}
