//! End-to-end tests of TLS termination (SNI, ALPN, minimum version, handshake timeout,
//! certificate rotation, config errors) and of WebSocket/Upgrade proxying.
//!
//! Certificates are generated with rcgen: a test CA signs every leaf, and clients trust only
//! that CA. Files live in a temp dir next to the (virtual) config file, so the relative paths
//! in `[listeners.tls]` resolve there.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    PAST_PARKING, TempDir, TestBackend, TestBody, TestResponse, bounded, empty, full, within,
};
use fulcrum::{Config, Server};
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

/// How long to wait for a rotated certificate to be served.
const ROTATION_LIMIT: Duration = Duration::from_secs(3);

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A test certificate authority.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

/// A leaf certificate signed by the test CA, as PEM files and DER.
struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "fulcrum test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("self-sign the CA");
        Ca {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (first = common name) with the given serial number.
    fn leaf(&self, names: &[&str], serial: u64) -> Leaf {
        let key = KeyPair::generate().expect("generate leaf key");
        let sans: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(sans).expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{} #{serial}", names[0]));
        params.serial_number = Some(serial.into());
        let cert = params.signed_by(&key, &self.issuer).expect("sign the leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).expect("trust the test CA");
        roots
    }
}

impl Leaf {
    /// Writes `<stem>.pem` and `<stem>.key` into `dir`.
    fn write(&self, dir: &TempDir, stem: &str) {
        dir.write(&format!("{stem}.pem"), &self.cert_pem);
        dir.write(&format!("{stem}.key"), &self.key_pem);
    }
}

/// The subject common name of a DER certificate, for failure messages.
fn subject(der: &CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(der.as_ref())
        .map(|(_, cert)| cert.subject().to_string())
        .unwrap_or_else(|_| "<unparsable>".to_owned())
}

// ---------------------------------------------------------------------------------------------
// TLS clients
// ---------------------------------------------------------------------------------------------

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS12_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13_ONLY: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client trusting only `ca`, offering `alpn`, speaking `versions`.
fn client_config(
    ca: &Ca,
    alpn: &[&str],
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("client protocol versions")
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// A client that accepts any certificate (signatures still checked), to look at what the
/// server presents for names no certificate covers.
fn accept_any_config() -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(BOTH)
        .expect("client protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider())))
        .with_no_client_auth();
    Arc::new(config)
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Connects and completes a TLS handshake with SNI `name` (an IP address sends no SNI).
async fn tls_connect(
    address: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> std::io::Result<TlsStream<TcpStream>> {
    let server_name = ServerName::try_from(name.to_owned()).expect("a valid server name");
    within(Duration::from_secs(5), "a TLS handshake", async {
        let tcp = TcpStream::connect(address).await?;
        tcp.set_nodelay(true)?;
        TlsConnector::from(config).connect(server_name, tcp).await
    })
    .await
}

/// The leaf certificate the server presented.
fn peer_leaf(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server presented a certificate")
        .clone()
        .into_owned()
}

/// The leaf the server presents for SNI `name`.
async fn presented(
    address: SocketAddr,
    config: Arc<ClientConfig>,
    name: &str,
) -> CertificateDer<'static> {
    let stream = tls_connect(address, config, name)
        .await
        .unwrap_or_else(|err| panic!("TLS handshake with SNI {name:?}: {err}"));
    peer_leaf(&stream)
}

/// An HTTP/1.1 client connection over `stream`.
async fn http1_over(
    stream: TlsStream<TcpStream>,
) -> (
    hyper::client::conn::http1::SendRequest<TestBody>,
    JoinHandle<()>,
) {
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake over TLS");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, task)
}

fn get(path: &str) -> Request<TestBody> {
    Request::get(path)
        .header(http::header::HOST, "example.test")
        .body(empty())
        .expect("a valid request")
}

// ---------------------------------------------------------------------------------------------
// Balancer with a TLS listener
// ---------------------------------------------------------------------------------------------

/// A running fulcrum whose listener `web` takes the given `[listeners.tls]` body.
struct TlsBalancer {
    address: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

/// The config text: listener `web` with `tls` (a `[listeners.tls]` body, or None for plain
/// HTTP), pool `app` over `backends` with `algorithm`.
fn config_text(tls: Option<&str>, backends: &[SocketAddr], algorithm: &str) -> String {
    config_text_with("", tls, backends, algorithm)
}

/// [`config_text`] with `listener_extra` (TOML lines) added to the `[[listeners]]` entry.
fn config_text_with(
    listener_extra: &str,
    tls: Option<&str>,
    backends: &[SocketAddr],
    algorithm: &str,
) -> String {
    let backends: Vec<String> = backends
        .iter()
        .map(|address| format!("{{ address = \"{address}\" }}"))
        .collect();
    let tls = tls
        .map(|body| format!("\n[listeners.tls]\n{body}\n"))
        .unwrap_or_default();
    format!(
        "[runtime]\nshutdown_timeout = \"2s\"\n\n\
         [[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n{listener_extra}\n{tls}\n\
         [pools.app]\nalgorithm = \"{algorithm}\"\nbackends = [{}]\n",
        backends.join(", "),
    )
}

impl TlsBalancer {
    async fn start(file: &str, text: &str) -> TlsBalancer {
        let config = Config::parse(file, text)
            .unwrap_or_else(|err| panic!("test config is invalid:\n{err}\n--- config ---\n{text}"));
        let server = Server::bind(config)
            .await
            .unwrap_or_else(|err| panic!("cannot bind the test balancer: {err}"));
        let address = server.local_addr("web").expect("listener `web` is bound");
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        let task = tokio::spawn(async move { server.run(signal.cancelled_owned()).await });
        TlsBalancer {
            address,
            shutdown,
            task: Some(task),
        }
    }

    async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            within(Duration::from_secs(10), "the balancer to shut down", task)
                .await
                .expect("the balancer task panicked");
        }
    }
}

impl Drop for TlsBalancer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Writes one leaf for `example.test` into `dir` as `site.pem`/`site.key` and returns it.
fn single_site(ca: &Ca, dir: &TempDir) -> Leaf {
    let leaf = ca.leaf(&["example.test", "www.example.test"], 1);
    leaf.write(dir, "site");
    leaf
}

// ---------------------------------------------------------------------------------------------
// 1. SNI
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_exact_then_wildcard_then_default_certificate() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("sni");
        let main = ca.leaf(&["example.test", "www.example.test"], 10);
        let api = ca.leaf(&["api.example.test"], 11);
        let wild = ca.leaf(&["*.wild.test"], 12);
        main.write(&dir, "main");
        api.write(&dir, "api");
        wild.write(&dir, "wild");
        let text = config_text(
            Some(
                "certificates = [{ cert = \"main.pem\", key = \"main.key\" }, \
                 { cert = \"api.pem\", key = \"api.key\" }, \
                 { cert = \"wild.pem\", key = \"wild.key\" }]",
            ),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TlsBalancer::start(&dir.config_file(), &text).await;
        let verified = client_config(&ca, &["http/1.1"], BOTH);

        // Names a certificate covers: verified against the test CA, and the exact leaf.
        for (name, expected, what) in [
            ("api.example.test", &api, "api"),
            ("example.test", &main, "main"),
            ("www.example.test", &main, "main (second SAN)"),
            ("x.wild.test", &wild, "wildcard"),
            ("other.wild.test", &wild, "wildcard"),
            (
                "API.Example.TEST",
                &api,
                "api (SNI compared case-insensitively)",
            ),
        ] {
            let got = presented(lb.address, Arc::clone(&verified), name).await;
            assert!(
                got == expected.der,
                "SNI {name:?} should get the {what} certificate, got {}",
                subject(&got)
            );
        }

        // A verified connection carries requests.
        let stream = tls_connect(lb.address, Arc::clone(&verified), "api.example.test")
            .await
            .expect("handshake");
        let (mut sender, _conn) = http1_over(stream).await;
        let response = sender
            .send_request(get("/sni"))
            .await
            .expect("request over TLS");
        let response = TestResponse::collect(response).await.expect("body");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.text(), "app");

        // Names nothing covers get the first (default) certificate.
        let any = accept_any_config();
        for name in ["unknown.test", "a.b.wild.test", "wild.test", "127.0.0.1"] {
            let got = presented(lb.address, Arc::clone(&any), name).await;
            assert!(
                got == main.der,
                "SNI {name:?} should get the default certificate, got {}",
                subject(&got)
            );
        }
        // ...which a verifying client then rejects for the name it asked for.
        let err = tls_connect(lb.address, Arc::clone(&verified), "unknown.test")
            .await
            .expect_err("the default certificate does not cover unknown.test");
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "unexpected error: {err}"
        );
        lb.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. ALPN
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_negotiates_h2_or_http1_and_both_reach_the_http1_backend() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("alpn");
        single_site(&ca, &dir);
        let text = config_text(
            Some(
                "certificates = [{ cert = \"site.pem\", key = \"site.key\" }]\n\
                 min_version = \"1.2\"\nalpn = [\"h2\", \"http/1.1\"]\nhandshake_timeout = \"10s\"",
            ),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TlsBalancer::start(&dir.config_file(), &text).await;

        // h2 offered (first): h2 negotiated, HTTP/2 request.
        let stream = tls_connect(
            lb.address,
            client_config(&ca, &["h2", "http/1.1"], BOTH),
            "example.test",
        )
        .await
        .expect("handshake offering h2");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("HTTP/2 handshake over TLS");
        let _conn = tokio::spawn(connection);
        let request = Request::get("https://example.test/over-h2")
            .body(empty())
            .expect("request");
        let response = sender.send_request(request).await.expect("HTTP/2 request");
        assert_eq!(response.version(), Version::HTTP_2);
        let response = TestResponse::collect(response).await.expect("body");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.text(), "app");
        let seen = backend.last_request().expect("the backend got the request");
        assert_eq!(seen.path, "/over-h2");
        assert_eq!(seen.version, Version::HTTP_11, "backend hop is HTTP/1.1");
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        assert_eq!(seen.headers["host"], "example.test");

        // Only http/1.1 offered: http/1.1 negotiated.
        let stream = tls_connect(
            lb.address,
            client_config(&ca, &["http/1.1"], BOTH),
            "example.test",
        )
        .await
        .expect("handshake offering http/1.1");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let (mut sender, _conn) = http1_over(stream).await;
        let response = sender
            .send_request(get("/over-h1"))
            .await
            .expect("HTTP/1.1 request");
        assert_eq!(response.version(), Version::HTTP_11);
        let response = TestResponse::collect(response).await.expect("body");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.text(), "app");
        let seen = backend.last_request().expect("the backend got the request");
        assert_eq!(seen.path, "/over-h1");
        assert_eq!(seen.headers["x-forwarded-proto"], "https");

        // No ALPN at all: HTTP/1.1 still works.
        let stream = tls_connect(lb.address, client_config(&ca, &[], BOTH), "example.test")
            .await
            .expect("handshake without ALPN");
        assert_eq!(stream.get_ref().1.alpn_protocol(), None);
        let (mut sender, _conn) = http1_over(stream).await;
        let response = sender.send_request(get("/no-alpn")).await.expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_list_without_h2_refuses_h2_only_clients() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("alpn-h1");
        single_site(&ca, &dir);
        let text = config_text(
            Some(
                "certificates = [{ cert = \"site.pem\", key = \"site.key\" }]\n\
                 alpn = [\"http/1.1\"]",
            ),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TlsBalancer::start(&dir.config_file(), &text).await;
        let stream = tls_connect(
            lb.address,
            client_config(&ca, &["h2", "http/1.1"], BOTH),
            "example.test",
        )
        .await
        .expect("handshake");
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        // RFC 7301 §3.2: no protocol in common is a no_application_protocol alert.
        let result = tls_connect(
            lb.address,
            client_config(&ca, &["h2"], BOTH),
            "example.test",
        )
        .await;
        assert!(result.is_err(), "an h2-only client must not be accepted");
        lb.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 3. Minimum version
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_version_13_refuses_tls12_clients() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("version");
        single_site(&ca, &dir);
        let settings = |version: &str| {
            format!(
                "certificates = [{{ cert = \"site.pem\", key = \"site.key\" }}]\n\
                 min_version = \"{version}\""
            )
        };
        let mut strict = TlsBalancer::start(
            &dir.config_file(),
            &config_text(Some(&settings("1.3")), &[backend.addr()], "round_robin"),
        )
        .await;
        let mut lenient = TlsBalancer::start(
            &dir.config_file(),
            &config_text(Some(&settings("1.2")), &[backend.addr()], "round_robin"),
        )
        .await;

        let result = tls_connect(
            strict.address,
            client_config(&ca, &["http/1.1"], TLS12_ONLY),
            "example.test",
        )
        .await;
        assert!(
            result.is_err(),
            "a TLS 1.2-only client must fail against min_version 1.3"
        );

        let stream = tls_connect(
            strict.address,
            client_config(&ca, &["http/1.1"], TLS13_ONLY),
            "example.test",
        )
        .await
        .expect("a TLS 1.3 client is accepted");
        assert_eq!(
            stream.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let (mut sender, _conn) = http1_over(stream).await;
        let response = sender.send_request(get("/v13")).await.expect("request");
        assert_eq!(response.status(), StatusCode::OK);

        // Control: the same 1.2-only client works where 1.2 is allowed.
        let stream = tls_connect(
            lenient.address,
            client_config(&ca, &["http/1.1"], TLS12_ONLY),
            "example.test",
        )
        .await
        .expect("a TLS 1.2 client is accepted with min_version 1.2");
        assert_eq!(
            stream.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_2)
        );
        let (mut sender, _conn) = http1_over(stream).await;
        let response = sender.send_request(get("/v12")).await.expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        strict.stop().await;
        lenient.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. Config errors
// ---------------------------------------------------------------------------------------------

/// Parses a config whose listener has `certificates = [entries]`; returns the error text and
/// the keys of its problems.
fn parse_error(dir: &TempDir, entries: &str) -> (String, Vec<String>) {
    let text = config_text(
        Some(&format!("certificates = [{entries}]")),
        &["127.0.0.1:9".parse().expect("address")],
        "round_robin",
    );
    match Config::parse(&dir.config_file(), &text) {
        Ok(_) => panic!("config must be rejected:\n{text}"),
        Err(err) => (
            err.to_string(),
            err.problems().iter().map(|p| p.key.clone()).collect(),
        ),
    }
}

#[test]
fn config_errors_name_the_certificate_entry() {
    let ca = Ca::new();
    let dir = TempDir::new("errors");
    let good = ca.leaf(&["example.test"], 1);
    let other = ca.leaf(&["other.test"], 2);
    good.write(&dir, "good");
    dir.write("other.key", &other.key_pem);
    dir.write("only-key.pem", &good.key_pem);
    dir.write("garbage.pem", "this is not PEM at all\n");
    std::fs::create_dir_all(dir.join("certs")).expect("mkdir certs");
    dir.write("certs/nested.pem", &good.cert_pem);
    dir.write("certs/nested.key", &good.key_pem);

    // Control: the good pair, also from a subdirectory, parses.
    let text = config_text(
        Some(
            "certificates = [{ cert = \"good.pem\", key = \"good.key\" }, \
             { cert = \"certs/nested.pem\", key = \"certs/nested.key\" }]",
        ),
        &["127.0.0.1:9".parse().expect("address")],
        "round_robin",
    );
    Config::parse(&dir.config_file(), &text).unwrap_or_else(|err| panic!("valid config: {err}"));

    // A key from another certificate.
    let (text, keys) = parse_error(&dir, "{ cert = \"good.pem\", key = \"other.key\" }");
    assert!(
        keys.contains(&"listeners[0].tls.certificates[0].key".to_owned()),
        "{keys:?}\n{text}"
    );
    assert!(
        text.contains("listeners[0].tls.certificates[0].key"),
        "{text}"
    );
    assert!(text.contains("does not match"), "{text}");

    // A missing certificate file (second entry: the index is right).
    let (text, keys) = parse_error(
        &dir,
        "{ cert = \"good.pem\", key = \"good.key\" }, { cert = \"missing.pem\", key = \"good.key\" }",
    );
    assert_eq!(
        keys,
        vec!["listeners[0].tls.certificates[1].cert"],
        "{text}"
    );
    assert!(text.contains("cannot read"), "{text}");
    assert!(text.contains("missing.pem"), "{text}");

    // A missing key file.
    let (text, keys) = parse_error(&dir, "{ cert = \"good.pem\", key = \"missing.key\" }");
    assert_eq!(keys, vec!["listeners[0].tls.certificates[0].key"], "{text}");
    assert!(text.contains("cannot read"), "{text}");

    // A PEM with a key but no certificate.
    let (text, keys) = parse_error(&dir, "{ cert = \"only-key.pem\", key = \"good.key\" }");
    assert_eq!(
        keys,
        vec!["listeners[0].tls.certificates[0].cert"],
        "{text}"
    );
    assert!(text.contains("contains no PEM certificate"), "{text}");

    // A file that is not PEM at all, as the certificate.
    let (text, keys) = parse_error(&dir, "{ cert = \"garbage.pem\", key = \"good.key\" }");
    assert_eq!(
        keys,
        vec!["listeners[0].tls.certificates[0].cert"],
        "{text}"
    );
    assert!(text.contains("contains no PEM certificate"), "{text}");

    // A key file holding only a certificate.
    let (text, keys) = parse_error(&dir, "{ cert = \"good.pem\", key = \"good.pem\" }");
    assert_eq!(keys, vec!["listeners[0].tls.certificates[0].key"], "{text}");
    assert!(text.contains("contains no PEM private key"), "{text}");

    // An empty list.
    let (text, keys) = parse_error(&dir, "");
    assert_eq!(keys, vec!["listeners[0].tls.certificates"], "{text}");
}

// ---------------------------------------------------------------------------------------------
// 5. Rotation
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificate_files_are_served_to_new_handshakes_only() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("rotate");
        let old = ca.leaf(&["example.test"], 100);
        old.write(&dir, "site");
        let text = config_text(
            Some("certificates = [{ cert = \"site.pem\", key = \"site.key\" }]"),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TlsBalancer::start(&dir.config_file(), &text).await;
        let config = client_config(&ca, &["http/1.1"], BOTH);

        let stream = tls_connect(lb.address, Arc::clone(&config), "example.test")
            .await
            .expect("handshake before rotation");
        assert!(
            peer_leaf(&stream) == old.der,
            "the initial certificate is served"
        );
        let (mut early, _early_conn) = http1_over(stream).await;
        let response = early.send_request(get("/before")).await.expect("request");
        TestResponse::collect(response).await.expect("body");

        // Let the watcher settle before touching the files.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let new = ca.leaf(&["example.test"], 200);
        dir.replace("site.key", &new.key_pem);
        dir.replace("site.pem", &new.cert_pem);

        let started = Instant::now();
        loop {
            let got = presented(lb.address, Arc::clone(&config), "example.test").await;
            if got == new.der {
                break;
            }
            assert!(
                got == old.der,
                "neither the old nor the new certificate: {}",
                subject(&got)
            );
            assert!(
                started.elapsed() < ROTATION_LIMIT,
                "the rotated certificate was not served within {ROTATION_LIMIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        // The connection opened before the rotation still carries requests.
        early
            .ready()
            .await
            .expect("the early connection is still open");
        let response = early
            .send_request(get("/after"))
            .await
            .expect("request on the pre-rotation connection");
        let response = TestResponse::collect(response).await.expect("body");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.text(), "app");

        // A broken rotation (mismatched key) keeps the current certificate.
        let broken = ca.leaf(&["example.test"], 300);
        dir.replace("site.pem", &broken.cert_pem);
        tokio::time::sleep(Duration::from_millis(800)).await;
        let got = presented(lb.address, Arc::clone(&config), "example.test").await;
        assert!(
            got == new.der,
            "a cert without its key must not replace the served one, got {}",
            subject(&got)
        );
        lb.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 7. Handshake timeout
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_is_closed_after_the_handshake_timeout() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("timeout");
        single_site(&ca, &dir);
        let text = config_text(
            Some(
                "certificates = [{ cert = \"site.pem\", key = \"site.key\" }]\n\
                 handshake_timeout = \"300ms\"",
            ),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TlsBalancer::start(&dir.config_file(), &text).await;
        let mut stream = TcpStream::connect(lb.address).await.expect("connect");
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = within(
            Duration::from_millis(1500),
            "the server to close a silent connection",
            stream.read(&mut buf),
        )
        .await;
        let elapsed = started.elapsed();
        match read {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("expected a close, got {n} bytes: {:?}", &buf[..n]),
        }
        assert!(
            elapsed >= Duration::from_millis(250),
            "closed after {elapsed:?}, before the 300ms timeout"
        );

        // A client dripping a ClientHello one byte at a time does not extend the deadline.
        let mut stream = TcpStream::connect(lb.address).await.expect("connect");
        let started = Instant::now();
        let closed = within(
            Duration::from_millis(1500),
            "the server to close a dripping handshake",
            async {
                // A TLS record header announcing a large handshake message, then filler.
                let drip = [
                    0x16u8, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
                ];
                for byte in drip.iter().copied().chain(std::iter::repeat(0u8)) {
                    if stream.write_all(&[byte]).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let mut probe = [0u8; 64];
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe))
                            .await
                    {
                        assert_eq!(n, 0, "no bytes expected before the handshake completes");
                        return;
                    }
                }
            },
        );
        closed.await;
        assert!(
            started.elapsed() >= Duration::from_millis(250),
            "dripping client closed after {:?}",
            started.elapsed()
        );

        // A client that completes the handshake in time is unaffected.
        let stream = tls_connect(
            lb.address,
            client_config(&ca, &["http/1.1"], BOTH),
            "example.test",
        )
        .await
        .expect("handshake");
        let (mut sender, _conn) = http1_over(stream).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let response = sender
            .send_request(get("/late"))
            .await
            .expect("request after 500ms");
        assert_eq!(response.status(), StatusCode::OK);
        lb.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 8. curl
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_over_tls() {
    if !Path::new("/usr/bin/curl").exists() {
        eprintln!("skipping curl_http2_over_tls: /usr/bin/curl not found");
        return;
    }
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("curl");
        single_site(&ca, &dir);
        let text = config_text(
            Some("certificates = [{ cert = \"site.pem\", key = \"site.key\" }]"),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TlsBalancer::start(&dir.config_file(), &text).await;
        let output = tokio::process::Command::new("/usr/bin/curl")
            .args([
                "--http2",
                "-sk",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .arg(format!("https://127.0.0.1:{}/curl", lb.address.port()))
            .output()
            .await
            .expect("run curl");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "curl failed: {:?}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(stdout, "app\n200 2", "curl output");
        let seen = backend.last_request().expect("the backend got the request");
        assert_eq!(seen.path, "/curl");
        assert_eq!(seen.headers["x-forwarded-proto"], "https");
        lb.stop().await;
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 6. WebSocket
// ---------------------------------------------------------------------------------------------

/// A raw WebSocket echo server (tokio-tungstenite `accept_async`): greets with `welcome`,
/// echoes text and binary, closes itself (code 1000, reason `backend done`) on text `bye`.
async fn ws_echo_backend() -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(ws_echo(stream));
        }
    });
    (address, task)
}

async fn ws_echo<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    echo_loop(ws).await;
}

async fn echo_loop<S>(mut ws: tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if ws.send(Message::text("welcome")).await.is_err() {
        return;
    }
    while let Some(Ok(message)) = ws.next().await {
        match message {
            Message::Text(text) if text.as_str() == "bye" => {
                let frame = CloseFrame {
                    code: CloseCode::Normal,
                    reason: "backend done".into(),
                };
                let _ = ws.close(Some(frame)).await;
            }
            Message::Text(_) | Message::Binary(_) => {
                let echoed = ws.send(message).await;
                if echoed.is_err() {
                    return;
                }
            }
            // Close replies are queued by tungstenite and flushed by the next poll.
            _ => {}
        }
    }
}

type ClientWs = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Opens `ws://address/ws` through fulcrum (bounded) and reads the backend's greeting
/// (`welcome`); returns the stream and the 101.
async fn open_websocket(
    address: SocketAddr,
) -> (
    ClientWs,
    tokio_tungstenite::tungstenite::handshake::client::Response,
) {
    let (mut ws, response) = within(
        Duration::from_secs(5),
        "the WebSocket handshake",
        tokio_tungstenite::connect_async(format!("ws://{address}/ws")),
    )
    .await
    .expect("WebSocket handshake through fulcrum");
    assert_eq!(
        next_message(&mut ws, "the greeting").await,
        Message::text("welcome")
    );
    (ws, response)
}

async fn next_message<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, what: &str) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    within(Duration::from_secs(5), what, ws.next())
        .await
        .unwrap_or_else(|| panic!("stream ended while waiting for {what}"))
        .unwrap_or_else(|err| panic!("error while waiting for {what}: {err}"))
}

/// Greeting, then text, binary and a large binary message echoed back.
async fn exchange<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    assert_eq!(
        next_message(ws, "the greeting").await,
        Message::text("welcome")
    );
    ws.send(Message::text("hello through fulcrum"))
        .await
        .expect("send text");
    assert_eq!(
        next_message(ws, "the text echo").await,
        Message::text("hello through fulcrum")
    );
    let binary = Bytes::from_static(&[0, 1, 2, 0xfe, 0xff]);
    ws.send(Message::Binary(binary.clone()))
        .await
        .expect("send binary");
    assert_eq!(
        next_message(ws, "the binary echo").await,
        Message::Binary(binary)
    );
    let large: Bytes = (0..300_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    ws.send(Message::Binary(large.clone()))
        .await
        .expect("send large");
    assert_eq!(
        next_message(ws, "the large echo").await,
        Message::Binary(large)
    );
}

/// Reads until the stream ends, expecting nothing but a Close frame first.
async fn expect_end<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Option<CloseFrame>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut close = None;
    within(
        Duration::from_secs(5),
        "the WebSocket stream to end",
        async {
            while let Some(message) = ws.next().await {
                match message {
                    Ok(Message::Close(frame)) => close = Some(frame),
                    Ok(other) => panic!("unexpected message before the end: {other:?}"),
                    Err(err) => panic!("stream ended with an error: {err}"),
                }
            }
        },
    )
    .await;
    close.expect("a Close frame before the end")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_and_close_from_either_side() {
    bounded(async {
        let (backend, _task) = ws_echo_backend().await;
        let dir = TempDir::new("ws");
        let text = config_text(None, &[backend], "round_robin");
        let mut lb = TlsBalancer::start(&dir.config_file(), &text).await;
        let url = format!("ws://{}/ws", lb.address);

        // The client closes.
        let (mut ws, response): (ClientWs, _) = within(
            Duration::from_secs(5),
            "the WebSocket handshake",
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        .expect("WebSocket handshake through fulcrum");
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        exchange(&mut ws).await;
        ws.close(None).await.expect("send Close");
        let _ = expect_end(&mut ws).await;
        drop(ws);

        // The backend closes.
        let (mut ws, _) = within(
            Duration::from_secs(5),
            "the WebSocket handshake",
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        .expect("second WebSocket handshake");
        exchange(&mut ws).await;
        ws.send(Message::text("bye")).await.expect("send bye");
        let frame = expect_end(&mut ws)
            .await
            .expect("a close frame with a code");
        assert_eq!(frame.code, CloseCode::Normal);
        assert_eq!(frame.reason.as_str(), "backend done");
        lb.stop().await;
    })
    .await;
}

/// An HTTP/1.1 backend (hyper, with upgrades) that answers plain requests with its name and
/// upgrades `/ws` requests to an echoing WebSocket, answering 101 with `x-served-by` too.
async fn dual_backend(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |request| dual_handle(name, request));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (address, task)
}

async fn dual_handle(
    name: &'static str,
    mut request: Request<Incoming>,
) -> Result<Response<TestBody>, Infallible> {
    let key = request.headers().get("sec-websocket-key").cloned();
    let response = match key {
        Some(key) if request.uri().path() == "/ws" => {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        tokio_tungstenite::tungstenite::protocol::Role::Server,
                        None,
                    )
                    .await;
                    echo_loop(ws).await;
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header(
                    "sec-websocket-accept",
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
                )
                .header("x-served-by", name)
                .body(empty())
        }
        _ => Response::builder()
            .header("x-served-by", name)
            .body(full(name)),
    };
    Ok(response.expect("a valid response"))
}

/// A plain GET on a fresh connection; the backend name that answered.
async fn served_by(address: SocketAddr) -> String {
    let mut client = common::TestClient::connect(address).await;
    let response = client.get("/plain").await.expect("plain request");
    assert_eq!(response.status, StatusCode::OK);
    response.served_by().expect("x-served-by").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_websocket_counts_as_in_flight_for_least_connections() {
    bounded(async {
        let (a, _a_task) = dual_backend("a").await;
        let (b, _b_task) = dual_backend("b").await;
        let dir = TempDir::new("ws-lc");
        let text = config_text(None, &[a, b], "least_connections");
        let mut lb = TlsBalancer::start(&dir.config_file(), &text).await;

        let (mut ws, response) = open_websocket(lb.address).await;
        let holder = response
            .headers()
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .expect("the 101 names its backend")
            .to_owned();
        let other = if holder == "a" { "b" } else { "a" };

        // While the tunnel is open, every plain request goes to the other backend.
        for i in 0..8 {
            let name = served_by(lb.address).await;
            assert_eq!(
                name, other,
                "request {i} while the WebSocket to {holder} is open"
            );
            // Let the finished request's in-flight count drop before the next pick.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The tunnel still works.
        ws.send(Message::text("still here")).await.expect("send");
        assert_eq!(
            next_message(&mut ws, "the echo").await,
            Message::text("still here")
        );

        // Once it closes, the holder takes requests again.
        ws.close(None).await.expect("send Close");
        let _ = expect_end(&mut ws).await;
        drop(ws);
        let started = Instant::now();
        loop {
            if served_by(lb.address).await == holder {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{holder} got no request after its WebSocket closed: its in-flight count leaked"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_counts_against_the_listeners_max_connections() {
    bounded(async {
        let (backend, _task) = dual_backend("a").await;
        let dir = TempDir::new("ws-cap");
        let text = config_text_with("max_connections = 1", None, &[backend], "round_robin");
        let mut lb = TlsBalancer::start(&dir.config_file(), &text).await;
        let (mut ws, _) = open_websocket(lb.address).await;

        // The tunnel is the listener's one connection: the next client waits in the backlog.
        let waiting = common::backlogged_request(lb.address, "/plain").await;
        ws.send(Message::text("still here")).await.expect("send");
        assert_eq!(
            next_message(&mut ws, "the echo").await,
            Message::text("still here")
        );

        // The tunnel closes: the waiting client is accepted and answered.
        ws.close(None).await.expect("send Close");
        let _ = expect_end(&mut ws).await;
        drop(ws);
        let response = common::backlogged_response(waiting).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_the_tls_listener() {
    bounded(async {
        let (backend, _task) = ws_echo_backend().await;
        let ca = Ca::new();
        let dir = TempDir::new("wss");
        single_site(&ca, &dir);
        let text = config_text(
            Some("certificates = [{ cert = \"site.pem\", key = \"site.key\" }]"),
            &[backend],
            "round_robin",
        );
        let mut lb = TlsBalancer::start(&dir.config_file(), &text).await;
        let stream = tls_connect(
            lb.address,
            client_config(&ca, &["http/1.1"], BOTH),
            "example.test",
        )
        .await
        .expect("TLS handshake");
        let (mut ws, response) = within(
            Duration::from_secs(5),
            "the WebSocket handshake over TLS",
            tokio_tungstenite::client_async("wss://example.test/ws", stream),
        )
        .await
        .expect("WebSocket handshake over TLS");
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        exchange(&mut ws).await;
        ws.close(None).await.expect("send Close");
        let _ = expect_end(&mut ws).await;
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upgrade_is_an_ordinary_response() {
    bounded(async {
        let backend = TestBackend::spawn("plain").await;
        let dir = TempDir::new("ws-refused");
        let text = config_text(None, &[backend.addr()], "round_robin");
        let mut lb = TlsBalancer::start(&dir.config_file(), &text).await;
        let result = within(
            Duration::from_secs(5),
            "the refused WebSocket handshake",
            tokio_tungstenite::connect_async(format!("ws://{}/ws", lb.address)),
        )
        .await;
        match result {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), StatusCode::OK);
                assert_eq!(response.body().as_deref(), Some(&b"plain"[..]));
            }
            Err(other) => panic!("expected the backend's 200, got error {other}"),
            Ok(_) => panic!("a backend without WebSocket support cannot upgrade"),
        }
        let seen = backend
            .last_request()
            .expect("the backend got the upgrade request");
        assert_eq!(seen.headers["upgrade"], "websocket");
        assert_eq!(seen.headers["connection"], "upgrade");
        assert!(seen.headers.contains_key("sec-websocket-key"));
        // The proxy keeps working (and reusing the backend connection) afterwards.
        for _ in 0..3 {
            assert_eq!(served_by(lb.address).await, "plain");
        }
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websocket_tunnel_is_closed_after_the_idle_timeout() {
    bounded(async {
        let (backend, _task) = ws_echo_backend().await;
        let dir = TempDir::new("ws-idle");
        let text = config_text_with("idle_timeout = \"600ms\"", None, &[backend], "round_robin");
        let mut lb = TlsBalancer::start(&dir.config_file(), &text).await;
        let (mut ws, _) = open_websocket(lb.address).await;

        // Traffic keeps the tunnel open well past the idle timeout.
        for i in 0..8 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let text = format!("ping {i}");
            ws.send(Message::text(text.clone())).await.expect("send");
            assert_eq!(next_message(&mut ws, "an echo").await, Message::text(text));
        }

        // Silence closes it.
        let started = Instant::now();
        let ended = within(Duration::from_secs(3), "the idle tunnel to close", async {
            loop {
                match ws.next().await {
                    None | Some(Err(_)) => return,
                    Some(Ok(Message::Close(_))) => {}
                    Some(Ok(other)) => panic!("unexpected message: {other:?}"),
                }
            }
        });
        ended.await;
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "closed after {:?}, before the idle timeout",
            started.elapsed()
        );
        lb.stop().await;
    })
    .await;
}

/// Points `<dir>/..data` at `<dir>/<version>` atomically (the Kubernetes secret-volume layout).
#[cfg(unix)]
fn publish(dir: &TempDir, version: &str, leaf: &Leaf) {
    std::fs::create_dir_all(dir.join(version)).expect("mkdir version");
    dir.write(&format!("{version}/site.pem"), &leaf.cert_pem);
    dir.write(&format!("{version}/site.key"), &leaf.key_pem);
    let temp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&temp);
    std::os::unix::fs::symlink(version, &temp).expect("symlink ..data_tmp");
    std::fs::rename(&temp, dir.join("..data")).expect("rename over ..data");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinked_certificates_rotate_like_a_kubernetes_secret() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("k8s");
        let v1 = ca.leaf(&["example.test"], 1);
        publish(&dir, "..v1", &v1);
        std::os::unix::fs::symlink("..data/site.pem", dir.join("site.pem")).expect("symlink");
        std::os::unix::fs::symlink("..data/site.key", dir.join("site.key")).expect("symlink");
        let text = config_text(
            Some("certificates = [{ cert = \"site.pem\", key = \"site.key\" }]"),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TlsBalancer::start(&dir.config_file(), &text).await;
        let config = client_config(&ca, &["http/1.1"], BOTH);
        assert!(presented(lb.address, Arc::clone(&config), "example.test").await == v1.der);
        tokio::time::sleep(Duration::from_millis(300)).await;

        let mut previous = v1;
        for (serial, version, old) in [(2, "..v2", "..v1"), (3, "..v3", "..v2")] {
            let next = ca.leaf(&["example.test"], serial);
            publish(&dir, version, &next);
            let _ = std::fs::remove_dir_all(dir.join(old));
            let started = Instant::now();
            loop {
                let got = presented(lb.address, Arc::clone(&config), "example.test").await;
                if got == next.der {
                    break;
                }
                assert!(
                    got == previous.der,
                    "unexpected certificate {}",
                    subject(&got)
                );
                assert!(
                    started.elapsed() < ROTATION_LIMIT,
                    "rotation to {version} not served within {ROTATION_LIMIT:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            previous = next;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnel_is_drained_then_closed_on_shutdown() {
    bounded(async {
        let (backend, _task) = ws_echo_backend().await;
        let dir = TempDir::new("ws-shutdown");
        // config_text sets shutdown_timeout = "2s".
        let text = config_text(None, &[backend], "round_robin");
        let mut lb = TlsBalancer::start(&dir.config_file(), &text).await;
        let (mut ws, _) = open_websocket(lb.address).await;

        let started = Instant::now();
        let stopping = tokio::spawn(async move {
            lb.stop().await;
            Instant::now()
        });
        // README (Shutdown): open connections are drained until they end or shutdown_timeout.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !stopping.is_finished(),
            "Server::run returned after {:?} while a WebSocket tunnel was still open \
             (shutdown_timeout is 2s)",
            started.elapsed()
        );
        ws.send(Message::text("during drain")).await.expect("send");
        assert_eq!(
            next_message(&mut ws, "an echo while draining").await,
            Message::text("during drain")
        );
        let stopped = within(Duration::from_secs(5), "the balancer to stop", stopping)
            .await
            .expect("stop task");
        assert!(
            stopped - started >= Duration::from_millis(1500),
            "stopped after {:?}, before shutdown_timeout",
            stopped - started
        );
        // Once Server::run has returned, nothing may be forwarded any more.
        let _ = ws.send(Message::text("after shutdown")).await;
        let next = within(Duration::from_secs(3), "the tunnel to be closed", ws.next()).await;
        assert!(
            !matches!(next, Some(Ok(Message::Text(_)))),
            "the tunnel still forwards after Server::run returned: {next:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_tls_connections_resume_after_parking_and_http2_ones_stay_up() {
    bounded(async {
        let backend = TestBackend::spawn("app").await;
        let ca = Ca::new();
        let dir = TempDir::new("tls-park");
        single_site(&ca, &dir);
        let text = config_text(
            Some("certificates = [{ cert = \"site.pem\", key = \"site.key\" }]"),
            &[backend.addr()],
            "round_robin",
        );
        let mut lb = TlsBalancer::start(&dir.config_file(), &text).await;
        let http1 = tls_connect(
            lb.address,
            client_config(&ca, &["http/1.1"], BOTH),
            "example.test",
        )
        .await
        .expect("handshake offering http/1.1");
        let (mut http1, _conn) = http1_over(http1).await;
        let http2 = tls_connect(
            lb.address,
            client_config(&ca, &["h2"], BOTH),
            "example.test",
        )
        .await
        .expect("handshake offering h2");
        let (mut http2, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(http2))
                .await
                .expect("HTTP/2 handshake over TLS");
        let _conn2 = tokio::spawn(connection);
        for round in 0..3 {
            let response = http1
                .send_request(get(&format!("/h1-{round}")))
                .await
                .unwrap_or_else(|err| panic!("HTTP/1.1 request {round}: {err}"));
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers().get("connection"), None);
            let body = TestResponse::collect(response).await.expect("body");
            assert_eq!(body.text(), "app");
            let request = Request::get(format!("https://example.test/h2-{round}"))
                .body(empty())
                .expect("request");
            let response = http2
                .send_request(request)
                .await
                .unwrap_or_else(|err| panic!("HTTP/2 request {round}: {err}"));
            assert_eq!(response.status(), StatusCode::OK);
            // Past the parking time: the HTTP/1.1 connection is parked, rustls and all.
            tokio::time::sleep(PAST_PARKING).await;
        }
        assert_eq!(backend.request_count(), 6);
        lb.stop().await;
    })
    .await;
}
