//! Who is limited: per client (the real one behind a trusted proxy, the peer otherwise), per
//! route apart from the listener, and new connections on a tcp listener.

use std::time::Duration;

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

use super::{Client, DIRECT, Fulcrum, PROXY, retry_after};
use crate::common::backend::TestBackend;
use crate::common::{bounded, within};

/// A listener limited to a burst of two and one request per 20 s per client, trusting
/// `127.0.0.1`'s `X-Forwarded-For`, with `route` appended to the listener.
fn config(backend: std::net::SocketAddr, listener_limit: &str, route: &str) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n\
         [listeners.rate_limit]\n{listener_limit}\n\n{route}\n\
         [pools.app]\nbackends = [\"{backend}\"]\n"
    )
}

#[tokio::test]
async fn a_client_over_its_limit_gets_429_and_other_clients_do_not() {
    bounded(async {
        let backend = TestBackend::spawn("b1").await;
        let fulcrum = Fulcrum::start(&config(
            backend.addr(),
            "requests_per_second = 0.05\nburst = 2\ntrusted_proxies = [\"127.0.0.1/32\"]",
            "",
        ))
        .await;
        // Two clients behind the trusted proxy, on one connection.
        let mut proxy = Client::connect(PROXY, fulcrum.web).await;
        for _ in 0..2 {
            let response = proxy.get("/", Some("203.0.113.1")).await;
            assert_eq!(response.status, StatusCode::OK);
        }
        let refused = proxy.get("/", Some("203.0.113.1")).await;
        assert_eq!(
            refused.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            refused.text()
        );
        let wait = retry_after(&refused);
        assert!((1..=20).contains(&wait), "Retry-After {wait}");
        assert_eq!(
            backend.request_count(),
            2,
            "a refusal never reaches a backend"
        );
        // The connection stays open, and the next client behind the proxy has its own bucket.
        let other = proxy.get("/", Some("198.51.100.1, 203.0.113.2")).await;
        assert_eq!(other.status, StatusCode::OK);
        assert_eq!(
            backend.last_request().expect("a request").headers["x-forwarded-for"],
            "198.51.100.1, 203.0.113.2, 127.0.0.1"
        );

        // A direct client is its peer address, whatever it forwards: spoofing another address
        // per request does not get it a fresh bucket.
        let mut direct = Client::connect(DIRECT, fulcrum.web).await;
        for spoof in ["192.0.2.1", "192.0.2.2"] {
            let response = direct.get("/", Some(spoof)).await;
            assert_eq!(response.status, StatusCode::OK);
        }
        let spoofed = direct.get("/", Some("192.0.2.3")).await;
        assert_eq!(spoofed.status, StatusCode::TOO_MANY_REQUESTS);
        let unspoofed = direct.get("/", None).await;
        assert_eq!(unspoofed.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(backend.request_count(), 5);

        assert_eq!(
            fulcrum
                .metric("fulcrum_rate_limited_total{listener=\"web\",route=\"-\"}")
                .await,
            3.0
        );
        let status = fulcrum.status().await;
        let limit = &status["listeners"][0]["rate_limit"];
        assert_eq!(limit["requests_per_second"], 0.05, "{status}");
        assert_eq!(limit["burst"], 2);
        assert_eq!(limit["key"], "client_ip");
        assert_eq!(limit["trusted_proxies"][0], "127.0.0.1/32");
        // 203.0.113.1, 203.0.113.2 and 127.0.0.2.
        assert_eq!(limit["tracked_keys"], 3);
        // Refusals are logged at debug only: nothing per request at info.
        assert!(
            fulcrum
                .lines()
                .iter()
                .all(|line| !line.contains("rate limited") && !line.contains("request rejected")),
            "a refusal was logged above debug"
        );
    })
    .await;
}

#[tokio::test]
async fn a_route_limit_is_checked_after_and_apart_from_the_listener_limit() {
    bounded(async {
        let backend = TestBackend::spawn("b1").await;
        let fulcrum = Fulcrum::start(&config(
            backend.addr(),
            "requests_per_second = 0.05\nburst = 5",
            "[[listeners.routes]]\nname = \"api\"\npath_prefix = \"/api\"\npool = \"app\"\n\
             rate_limit = { requests_per_second = 0.05, burst = 1 }\n",
        ))
        .await;
        let mut client = Client::connect(DIRECT, fulcrum.web).await;
        assert_eq!(client.get("/api/a", None).await.status, StatusCode::OK);
        let refused = client.get("/api/b", None).await;
        assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(retry_after(&refused) >= 1);
        // The listener's bucket had five: two went to /api (the refused one passed it first).
        for _ in 0..3 {
            assert_eq!(client.get("/", None).await.status, StatusCode::OK);
        }
        assert_eq!(
            client.get("/", None).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(backend.request_count(), 4);
        assert_eq!(
            fulcrum
                .metric("fulcrum_rate_limited_total{listener=\"web\",route=\"api\"}")
                .await,
            1.0
        );
        assert_eq!(
            fulcrum
                .metric("fulcrum_rate_limited_total{listener=\"web\",route=\"-\"}")
                .await,
            1.0
        );
        let status = fulcrum.status().await;
        let route = &status["listeners"][0]["routes"][0]["rate_limit"];
        assert_eq!(route["burst"], 1, "{status}");
        assert_eq!(route["tracked_keys"], 1);
    })
    .await;
}

#[tokio::test]
async fn a_tcp_listener_closes_new_connections_over_the_limit() {
    bounded(async {
        // A TCP echo backend.
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let echo_addr = echo.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 64];
                    while let Ok(n @ 1..) = stream.read(&mut buffer).await {
                        if stream.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let fulcrum = Fulcrum::start(&format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"db\"\n\n\
             [listeners.rate_limit]\nrequests_per_second = 0.05\nburst = 2\n\n\
             [pools.db]\nbackends = [\"{echo_addr}\"]\n"
        ))
        .await;
        // Whether a connection from `local` is proxied (echoes) or closed at once.
        let echoes = |local: [u8; 4]| async move {
            let socket = TcpSocket::new_v4().expect("a socket");
            socket.bind((local, 0).into()).expect("bind");
            let mut stream = socket.connect(fulcrum.web).await.expect("connect");
            // A refused connection may already be closed: the write can fail too.
            let _ = stream.write_all(b"ping").await;
            let mut buffer = [0u8; 4];
            let read = within(Duration::from_secs(10), "an echo or a close", async {
                stream.read_exact(&mut buffer).await
            })
            .await;
            read.is_ok() && &buffer == b"ping"
        };
        assert!(echoes(PROXY).await);
        assert!(echoes(PROXY).await);
        assert!(!echoes(PROXY).await, "the third connection is over the limit");
        assert!(echoes(DIRECT).await, "another client has its own bucket");
        assert_eq!(
            fulcrum
                .metric("fulcrum_rate_limited_total{listener=\"web\",route=\"-\"}")
                .await,
            1.0
        );
    })
    .await;
}
