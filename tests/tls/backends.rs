//! TLS to the backends together with active checks: the checks go through the pool's
//! connector (its server name, its CA, HTTP/2 when the pool speaks it), so a pool of TLS
//! backends comes up, and a pool that trusts the wrong CA is down with a `last_error` that says
//! why.

use super::*;
use common::balancer::admin_get;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// A TLS backend on `127.0.0.1:0` serving `leaf`, speaking HTTP/2 or HTTP/1.1 as ALPN decides;
/// every answer is `200` naming `name`.
async fn tls_backend(leaf: &Leaf, name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key_der.clone()));
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der.clone()], key)
    .expect("a server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let service = service_fn(move |_request| async move {
                    let response = http::Response::builder()
                        .header("x-served-by", name)
                        .body(Full::new(bytes::Bytes::from(name)))
                        .expect("response");
                    Ok::<_, std::convert::Infallible>(response)
                });
                let io = TokioIo::new(stream);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    (address, task)
}

/// The config: an admin listener, listener `web`, and pool `app` over `backends` with TLS
/// (`tls`, a `[pools.app.tls]` body), `http2`, and active checks of `kind`.
fn pool_config(backends: &[SocketAddr], tls: &str, http2: bool, kind: &str) -> String {
    let backends: Vec<String> = backends.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n\
         [pools.app]\nbackends = [{}]\nhttp2 = {http2}\n\
         [pools.app.passive]\nconsecutive_failures = 0\n\
         [pools.app.health_check]\nkind = \"{kind}\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\n\
         jitter = \"0s\"\n\
         [pools.app.tls]\n{tls}\n",
        backends.join(", "),
    )
}

/// The `(state, last_error)` of every backend of pool `app` in `/status`.
async fn backend_states(admin: SocketAddr) -> Vec<(String, Option<String>)> {
    let status = admin_get(admin, "/status").await;
    let document: serde_json::Value = serde_json::from_str(&status.text()).expect("JSON");
    document["pools"][0]["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                b["state"].as_str().unwrap_or_default().to_owned(),
                b["last_error"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Waits until every backend of pool `app` reports `state`.
async fn wait_for_state(admin: SocketAddr, state: &str) -> Vec<(String, Option<String>)> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let states = backend_states(admin).await;
        if states.iter().all(|(s, _)| s == state) {
            return states;
        }
        assert!(Instant::now() < deadline, "never all {state}: {states:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_backends_with_active_checks_come_up_and_serve() {
    bounded(async {
        let ca = Ca::new();
        let dir = TempDir::new("tls-backends");
        dir.write("ca.pem", &ca.cert_pem);
        let leaf = ca.leaf(&["backend.test"], 1);
        let (a, a_task) = tls_backend(&leaf, "a").await;
        let (b, b_task) = tls_backend(&leaf, "b").await;
        let tls = "ca = \"ca.pem\"\nserver_name = \"backend.test\"";
        for (http2, kind) in [(false, "http"), (true, "http"), (false, "tcp")] {
            let text = pool_config(&[a, b], tls, http2, kind);
            let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
            let admin = lb.admin_addr();
            wait_for_state(admin, "healthy").await;
            let mut client = lb.client().await;
            let mut served = Vec::new();
            for i in 0..4 {
                let response = client.get(&format!("/r/{i}")).await.expect("a response");
                assert_eq!(
                    response.status,
                    StatusCode::OK,
                    "http2 {http2}, {kind} checks"
                );
                served.push(response.served_by().map(str::to_owned));
            }
            assert!(served.contains(&Some("a".to_owned())), "{served:?}");
            assert!(served.contains(&Some("b".to_owned())), "{served:?}");
            lb.stop().await;
        }
        a_task.abort();
        b_task.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_trusting_the_wrong_ca_is_down_with_a_certificate_error() {
    bounded(async {
        let ca = Ca::new();
        let other = Ca::new();
        let dir = TempDir::new("tls-backends-wrong-ca");
        dir.write("other-ca.pem", &other.cert_pem);
        let leaf = ca.leaf(&["backend.test"], 1);
        let (a, a_task) = tls_backend(&leaf, "a").await;
        let tls = "ca = \"other-ca.pem\"\nserver_name = \"backend.test\"";
        for kind in ["http", "tcp"] {
            let text = pool_config(&[a], tls, false, kind);
            let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
            let admin = lb.admin_addr();
            let deadline = Instant::now() + Duration::from_secs(5);
            let states = loop {
                let states = backend_states(admin).await;
                if states[0].1.is_some() {
                    break states;
                }
                assert!(Instant::now() < deadline, "no check ran: {states:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let (state, last_error) = &states[0];
            assert_eq!(state, "unhealthy", "{kind} checks");
            let last_error = last_error.as_deref().unwrap_or_default();
            assert!(
                last_error.contains("TLS handshake")
                    && last_error.contains("invalid peer certificate"),
                "{kind} checks: {last_error}"
            );
            let response = lb.client().await.get("/").await.expect("a response");
            assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE);
            lb.stop().await;
        }
        // The pool's insecure_skip_verify holds for its checks as for its traffic.
        let tls =
            "ca = \"other-ca.pem\"\nserver_name = \"backend.test\"\ninsecure_skip_verify = true";
        let text = pool_config(&[a], tls, false, "http");
        let mut lb = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
        wait_for_state(lb.admin_addr(), "healthy").await;
        let response = lb.client().await.get("/").await.expect("a response");
        assert_eq!(response.status, StatusCode::OK);
        lb.stop().await;
        a_task.abort();
    })
    .await;
}
