//! TLS passthrough: a tcp listener routes TLS connections by the SNI of their ClientHello to
//! backends that terminate TLS themselves, with certificates fulcrum never sees.

use super::*;

use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A TLS server on `127.0.0.1:0` presenting `leaf` that answers every connection with `name`.
async fn tls_backend(leaf: &Leaf, name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).expect("leaf key");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der.clone()], key)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    // Best effort: the client may already be gone.
                    let _ = tls.write_all(name.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (address, task)
}

/// What the backend behind fulcrum says to a client asking for `sni`, trusting `ca`.
async fn answer(address: SocketAddr, ca: &Ca, sni: &str) -> std::io::Result<String> {
    let mut stream = tls_connect(address, client_config(ca, &[], BOTH), sni).await?;
    let mut text = String::new();
    within(
        Duration::from_secs(5),
        "the backend's answer",
        stream.read_to_string(&mut text),
    )
    .await?;
    Ok(text)
}

#[tokio::test]
async fn connections_go_to_the_backend_their_sni_names_and_the_rest_to_the_fallback() {
    bounded(async {
        let ca = Ca::new();
        let (db, _db) = tls_backend(&ca.leaf(&["db.example.com"], 1), "db").await;
        let (cache, _cache) = tls_backend(&ca.leaf(&["cache.internal"], 2), "cache").await;
        let (other, _other) = tls_backend(&ca.leaf(&["www.example.com"], 3), "other").await;
        let config = format!(
            r#"[[listeners]]
name = "tls"
listen = "127.0.0.1:0"
protocol = "tcp"
pool = "other"

[[listeners.routes]]
name = "db"
sni = "db.example.com"
pool = "db"

[[listeners.routes]]
sni = ["*.internal"]
pool = "cache"

[pools.db]
backends = ["{db}"]

[pools.cache]
backends = ["{cache}"]

[pools.other]
backends = ["{other}"]
"#
        );
        let mut balancer = TestBalancer::from_config("sni.toml", &config, "tls").await;
        let address = balancer.addr();
        assert_eq!(
            answer(address, &ca, "db.example.com").await.expect("db"),
            "db"
        );
        assert_eq!(
            answer(address, &ca, "DB.example.com").await.expect("db"),
            "db"
        );
        assert_eq!(
            answer(address, &ca, "cache.internal").await.expect("cache"),
            "cache"
        );
        assert_eq!(
            answer(address, &ca, "www.example.com")
                .await
                .expect("fallback"),
            "other"
        );
        assert!(
            answer(address, &ca, "nothing.example.org").await.is_err(),
            "the fallback's certificate does not cover that name: the client refuses it"
        );
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn without_a_fallback_an_unrouted_name_is_closed_before_any_backend() {
    bounded(async {
        let ca = Ca::new();
        let (db, _db) = tls_backend(&ca.leaf(&["db.example.com"], 1), "db").await;
        let config = format!(
            "[[listeners]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\n\n\
             [[listeners.routes]]\nsni = \"db.example.com\"\npool = \"db\"\n\n\
             [pools.db]\nbackends = [\"{db}\"]\n"
        );
        let mut balancer = TestBalancer::from_config("sni.toml", &config, "tls").await;
        assert!(
            answer(balancer.addr(), &ca, "www.example.com")
                .await
                .is_err()
        );
        assert_eq!(
            answer(balancer.addr(), &ca, "db.example.com")
                .await
                .expect("db"),
            "db"
        );
        balancer.stop().await;
    })
    .await;
}
