//! Command-line arguments of the `fulcrum` binary, and the admin client behind
//! `--check --diff` (it fetches the running instance's config from its admin listener).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use http::{Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::AdminToken;

/// A layer-4/7 load balancer.
#[derive(Debug, Parser)]
#[command(name = "fulcrum", version, about)]
pub struct Cli {
    /// Config file to load.
    #[arg(short, long, default_value = "config/fulcrum.toml")]
    pub config: PathBuf,

    /// Validate the config, print a summary (or every error) and exit.
    #[arg(long)]
    pub check: bool,

    /// With --check: print the changes this file would make to the instance whose admin
    /// listener is at this address, without applying them.
    #[arg(long, value_name = "ADMIN_ADDR", requires = "check")]
    pub diff: Option<SocketAddr>,

    /// Log filter, e.g. `info` or `fulcrum=debug`; overrides RUST_LOG.
    #[arg(long)]
    pub log_level: Option<String>,
}

/// Why the running instance's config could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Could not connect or talk HTTP to the admin listener.
    #[error("cannot reach the admin listener at {address}: {message}")]
    Unreachable {
        /// The admin address asked.
        address: SocketAddr,
        /// What went wrong.
        message: String,
    },
    /// The whole fetch took longer than allowed.
    #[error("the admin listener at {address} did not answer within {timeout:?}")]
    TimedOut {
        /// The admin address asked.
        address: SocketAddr,
        /// The limit.
        timeout: Duration,
    },
    /// The answer was larger than any config file should be.
    #[error("the admin listener at {address} sent more than {limit} bytes")]
    TooLarge {
        /// The admin address asked.
        address: SocketAddr,
        /// The limit.
        limit: usize,
    },
    /// The admin listener answered with an error.
    #[error("the admin listener at {address} answered {status}: {body}")]
    Status {
        /// The admin address asked.
        address: SocketAddr,
        /// Its status code.
        status: StatusCode,
        /// Its body.
        body: String,
    },
}

/// Longest config text `--check --diff` accepts from the admin listener: far above any real
/// file, and a bound on what a wrong or hostile address can make the CLI hold.
pub const MAX_CONFIG_BYTES: usize = 8 * 1024 * 1024;

/// How long `--check --diff` waits for the whole fetch (connect, answer, body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches the config text a running fulcrum has applied, from its admin listener's `/config`,
/// sending `token` as a bearer token when given. The whole exchange must finish within
/// `timeout`, and a body over [`MAX_CONFIG_BYTES`] is refused.
pub async fn fetch_config(
    address: SocketAddr,
    token: Option<&AdminToken>,
    timeout: Duration,
) -> Result<String, FetchError> {
    tokio::time::timeout(timeout, fetch(address, token))
        .await
        .unwrap_or(Err(FetchError::TimedOut { address, timeout }))
}

async fn fetch(address: SocketAddr, token: Option<&AdminToken>) -> Result<String, FetchError> {
    use http_body_util::{BodyExt, Empty, Limited};
    let unreachable = |message: String| FetchError::Unreachable { address, message };
    let stream = TcpStream::connect(address)
        .await
        .map_err(|err| unreachable(err.to_string()))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|err| unreachable(err.to_string()))?;
    let driver = tokio::spawn(connection);
    let mut request = Request::builder()
        .uri("/config")
        .header(header::HOST, address.to_string());
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {}", token.secret()));
    }
    let request = request
        .body(Empty::new())
        .map_err(|err| unreachable(err.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|err| unreachable(err.to_string()))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_CONFIG_BYTES)
        .collect()
        .await
        .map_err(|err| {
            if err.is::<http_body_util::LengthLimitError>() {
                FetchError::TooLarge {
                    address,
                    limit: MAX_CONFIG_BYTES,
                }
            } else {
                unreachable(err.to_string())
            }
        })?
        .to_bytes();
    driver.abort();
    let body = String::from_utf8_lossy(&body).into_owned();
    if status.is_success() {
        Ok(body)
    } else {
        Err(FetchError::Status {
            address,
            status,
            body,
        })
    }
}
