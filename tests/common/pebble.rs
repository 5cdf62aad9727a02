//! Pebble, Let's Encrypt's test ACME CA, as a child process with validation on: a
//! `pebble-challtestsrv` DNS server answers every name with 127.0.0.1, and Pebble validates
//! HTTP-01 and TLS-ALPN-01 against the ports a test gives (where its fulcrum listens).
//! Both processes are killed on drop. A missing `pebble` skips locally and fails under
//! `CI=true`.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::TempDir;
use super::pki::{self, Ca};
use super::tools;

/// A free TCP port on 127.0.0.1 (bound and released; a test binds it again at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port on 127.0.0.1")
}

/// A running Pebble and its DNS server.
pub struct Pebble {
    pebble: Option<Child>,
    dns: Child,
    /// The ACME directory URL.
    pub directory: String,
    /// PEM file of the CA that signed Pebble's own HTTPS certificate (`directory_ca`).
    pub directory_ca: PathBuf,
    management: SocketAddr,
    tls_ca: Ca,
    config: PathBuf,
    dns_address: SocketAddr,
    binary: PathBuf,
    dir: TempDir,
}

impl Pebble {
    /// Starts Pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`, issuing
    /// certificates valid for `validity` (Pebble's default, five years, when `None`). `None`
    /// when the tools are missing (after a skip line; a failure under `CI=true`).
    pub async fn start(
        http_port: u16,
        tls_port: u16,
        validity: Option<Duration>,
    ) -> Option<Pebble> {
        let tools = tools::require_tools(&["pebble", "pebble-challtestsrv"])?;
        let dir = TempDir::new("pebble");
        let tls_ca = Ca::new();
        let leaf = tls_ca.leaf(&["localhost", "127.0.0.1"], 1);
        leaf.write(&dir, "pebble");
        dir.write("pebble-ca.pem", &tls_ca.cert_pem);
        let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let management = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dns_address = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let validity = validity.map_or(String::new(), |v| {
            format!(",\n    \"certificateValidityPeriod\": {}", v.as_secs())
        });
        dir.write(
            "pebble.json",
            &format!(
                "{{\n  \"pebble\": {{\n    \"listenAddress\": \"{listen}\",\n    \"managementListenAddress\": \"{management}\",\n    \"certificate\": {:?},\n    \"privateKey\": {:?},\n    \"httpPort\": {http_port},\n    \"tlsPort\": {tls_port},\n    \"ocspResponderURL\": \"\",\n    \"externalAccountBindingRequired\": false{validity}\n  }}\n}}\n",
                dir.join("pebble.pem").display().to_string(),
                dir.join("pebble.key").display().to_string(),
            ),
        );
        let dns = Command::new(&tools[1])
            .args(["-dns01", &dns_address.to_string()])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args([
                "-management",
                &SocketAddr::from(([127, 0, 0, 1], free_port())).to_string(),
            ])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pebble-challtestsrv");
        let mut pebble = Pebble {
            pebble: None,
            dns,
            directory: format!("https://{listen}/dir"),
            directory_ca: dir.join("pebble-ca.pem"),
            management,
            tls_ca,
            config: dir.join("pebble.json"),
            dns_address,
            binary: tools[0].clone(),
            dir,
        };
        pebble.resume().await;
        Some(pebble)
    }

    /// Starts Pebble again after [`Pebble::stop`] (a fresh CA: new roots, no accounts).
    pub async fn resume(&mut self) {
        let log = std::fs::File::create(self.dir.join("pebble.log")).expect("pebble log");
        let child = Command::new(&self.binary)
            .arg("-config")
            .arg(&self.config)
            .args(["-dnsserver", &self.dns_address.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            // Pebble rejects 5% of nonces by default; a rejected retry would make a test's
            // failure count depend on luck.
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start pebble");
        self.pebble = Some(child);
        let listen: SocketAddr = self
            .directory
            .trim_start_matches("https://")
            .trim_end_matches("/dir")
            .parse()
            .expect("directory address");
        for address in [listen, self.management, self.dns_address] {
            super::within(Duration::from_secs(20), "pebble to listen", async {
                while tokio::net::TcpStream::connect(address).await.is_err() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
        }
    }

    /// Kills Pebble (a CA outage); the DNS server stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.pebble.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Pebble's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// The root Pebble issues under, as PEM, from its management endpoint `/roots/0`.
    pub async fn root_pem(&self) -> String {
        let config = pki::client_config(&self.tls_ca, &[], pki::BOTH);
        let mut stream = pki::tls_connect(self.management, config, "127.0.0.1")
            .await
            .expect("connect to pebble's management endpoint");
        let request = format!(
            "GET /roots/0 HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.management
        );
        stream.write_all(request.as_bytes()).await.expect("send");
        let mut response = Vec::new();
        // Pebble closes after answering; a TLS close without close_notify still ends the read.
        let _ = stream.read_to_end(&mut response).await;
        let response = String::from_utf8_lossy(&response).into_owned();
        let begin = response
            .find("-----BEGIN CERTIFICATE-----")
            .unwrap_or_else(|| panic!("no root in pebble's answer: {response}"));
        response[begin..].to_owned()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}
