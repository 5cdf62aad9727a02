//! Automatic HTTPS against a real ACME CA: Pebble with validation on (its DNS answers every
//! test name with 127.0.0.1, and it validates against the ports the real `fulcrum` binary
//! listens on). Issuance through TLS-ALPN-01 and HTTP-01, a restart serving the cache with the
//! CA gone, renewal under load without a failed handshake, and a CA outage during renewal.
//! Through a [`front::Front`] before Pebble: ARI renewal windows (RFC 9773) and a CA's
//! `Retry-After` on a rate-limit refusal.

#[path = "../common/mod.rs"]
mod common;

mod ari;
mod front;
mod issue;
mod reload;
mod renew;
mod retry_after;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::TempDir;
use common::pki;

/// Each test issues at least once; Pebble validates in about a second, the machine is slow.
pub const ISSUE_LIMIT: Duration = Duration::from_secs(90);

const BIN: &str = env!("CARGO_BIN_EXE_fulcrum");

/// The real `fulcrum` binary running `config`, killed on drop; its log is in `fulcrum.log`.
pub struct Fulcrum {
    child: Child,
    log: PathBuf,
}

impl Fulcrum {
    /// Starts fulcrum on `dir/fulcrum.toml` (written from `config`) and waits until `ready`
    /// accepts connections.
    pub async fn start(dir: &TempDir, config: &str, ready: SocketAddr) -> Fulcrum {
        dir.write("fulcrum.toml", config);
        let log = dir.join(&format!("fulcrum-{}.log", common::pebble::free_port()));
        let file = std::fs::File::create(&log).expect("log file");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(dir.join("fulcrum.toml"))
            .env("RUST_LOG", "info,fulcrum::acme=debug")
            .stdout(file.try_clone().expect("log handle"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start fulcrum");
        let fulcrum = Fulcrum { child, log };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(ready).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "fulcrum did not listen on {ready}: {}",
                fulcrum.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        fulcrum
    }

    /// Everything fulcrum logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Fulcrum {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// fulcrum's config: one ACME listener at `https` for `domain` from `directory` (whose HTTPS
/// `directory_ca` signs), renewing `renew_before` ahead (the default when `None`), proxying to
/// `backend`, with an admin listener at `admin`.
pub fn acme_config(
    directory: &str,
    directory_ca: &Path,
    domain: &str,
    renew_before: Option<&str>,
    https: SocketAddr,
    admin: SocketAddr,
    backend: SocketAddr,
) -> String {
    let renew_before = renew_before.map_or(String::new(), |before| {
        format!("renew_before = \"{before}\"\n")
    });
    format!(
        "[admin]\nlisten = \"{admin}\"\n\n[[listeners]]\nname = \"https\"\nlisten = \"{https}\"\npool = \"app\"\n[listeners.tls.acme]\ndomains = [\"{domain}\"]\ndirectory = \"{directory}\"\ndirectory_ca = {:?}\ncache = \"cache\"\n{renew_before}\n[pools.app]\nbackends = [\"{backend}\"]\n",
        directory_ca.display().to_string(),
    )
}

/// An address on 127.0.0.1 with a free port.
pub fn free_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], common::pebble::free_port()))
}

/// A TLS client trusting only the root in `root_pem`. It never resumes a session: a resumed
/// handshake presents no certificate, and the tests look at each one.
pub fn trusting(root_pem: &str) -> Arc<ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots
            .add(cert.expect("a PEM root"))
            .expect("trust the root");
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(pki::BOTH)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A verified handshake with `name` at `address`, then `GET /` on it; the leaf and the status
/// line, or the handshake's error.
pub async fn fetch(
    address: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<(CertificateDer<'static>, String)> {
    let mut stream = pki::tls_connect(address, config, name).await?;
    let leaf = pki::peer_leaf(&stream);
    let request = format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    let _ = common::within(
        Duration::from_secs(10),
        "a response",
        stream.read_to_end(&mut response),
    )
    .await;
    let response = String::from_utf8_lossy(&response);
    Ok((leaf, response.lines().next().unwrap_or_default().to_owned()))
}

/// Polls until a client trusting `root_pem` completes a handshake for `name` and gets `200`;
/// returns the leaf. Panics with both logs after [`ISSUE_LIMIT`].
pub async fn wait_for_trusted(
    address: SocketAddr,
    root_pem: &str,
    name: &str,
    logs: impl Fn() -> String,
) -> CertificateDer<'static> {
    let config = trusting(root_pem);
    let deadline = tokio::time::Instant::now() + ISSUE_LIMIT;
    loop {
        match fetch(address, Arc::clone(&config), name).await {
            Ok((leaf, status)) if status.contains(" 200 ") => return leaf,
            Ok((_, status)) => panic!("a trusted handshake for {name} but {status:?}"),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(err) => panic!(
                "no trusted certificate for {name} within {ISSUE_LIMIT:?}: {err}\n{}",
                logs()
            ),
        }
    }
}

/// The serial number of a certificate, as hex.
pub fn serial(der: &CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(der.as_ref())
        .map(|(_, cert)| cert.raw_serial_as_string())
        .expect("a certificate")
}

/// The issuer of a certificate.
pub fn issuer(der: &CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(der.as_ref())
        .map(|(_, cert)| cert.issuer().to_string())
        .expect("a certificate")
}

/// A GET to fulcrum's admin listener; the body.
pub async fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect to admin");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    common::within(
        Duration::from_secs(10),
        "an admin response",
        stream.read_to_end(&mut response),
    )
    .await
    .expect("read");
    let response = String::from_utf8_lossy(&response).into_owned();
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default()
}

/// The `certificates` of fulcrum's `/status`.
pub async fn status_certificates(admin: SocketAddr) -> Vec<serde_json::Value> {
    let body = admin_get(admin, "/status").await;
    let status: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|err| panic!("/status is JSON: {err}: {body}"));
    status["certificates"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The dashboard at `admin` as a headless Chromium rendered it (`--dump-dom`); `None` when
/// Chromium is missing (a failure under `CI=true`).
pub async fn dashboard_dom(admin: SocketAddr) -> Option<String> {
    let chromium = common::tools::require_tool("chromium")?;
    let profile = TempDir::new("acme-chromium");
    let child = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
        ])
        .args(["--no-first-run", "--virtual-time-budget=3000", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://{admin}/"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    let output = common::within(
        Duration::from_secs(60),
        "chromium",
        child.wait_with_output(),
    )
    .await
    .expect("chromium ran");
    Some(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The mode bits of `path`.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("exists")
        .permissions()
        .mode()
        & 0o777
}
