//! A reload keeps a limiter's buckets when its settings are unchanged and starts afresh when
//! they change.

use http::StatusCode;

use super::{Client, DIRECT, Fulcrum};
use crate::common::backend::TestBackend;
use crate::common::bounded;

fn config(backend: std::net::SocketAddr, burst: u32, retries: u32) -> String {
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n\
         [listeners.rate_limit]\nrequests_per_second = 0.02\nburst = {burst}\n\n\
         [[listeners.routes]]\nname = \"api\"\npath_prefix = \"/api\"\npool = \"app\"\n\
         rate_limit = {{ requests_per_second = 0.02, burst = 1 }}\n\n\
         [pools.app]\nbackends = [\"{backend}\"]\nretries = {retries}\n"
    )
}

#[tokio::test]
async fn a_reload_keeps_unchanged_limits_and_resets_changed_ones() {
    bounded(async {
        let backend = TestBackend::spawn("b1").await;
        let fulcrum = Fulcrum::start(&config(backend.addr(), 2, 1)).await;
        let mut client = Client::connect(DIRECT, fulcrum.web).await;
        assert_eq!(client.get("/api", None).await.status, StatusCode::OK);
        assert_eq!(client.get("/", None).await.status, StatusCode::OK);
        assert_eq!(
            client.get("/", None).await.status,
            StatusCode::TOO_MANY_REQUESTS
        );

        // Another pool setting changes; both limits stay, and so do their buckets.
        fulcrum.reload(&config(backend.addr(), 2, 2)).await;
        assert_eq!(
            client.get("/", None).await.status,
            StatusCode::TOO_MANY_REQUESTS,
            "the listener's bucket survived the reload"
        );

        // The listener's burst changes: its bucket starts full; the route's is still empty.
        fulcrum.reload(&config(backend.addr(), 3, 2)).await;
        let mut client = Client::connect(DIRECT, fulcrum.web).await;
        assert_eq!(client.get("/", None).await.status, StatusCode::OK);
        assert_eq!(
            client.get("/api", None).await.status,
            StatusCode::TOO_MANY_REQUESTS,
            "the route's bucket survived the reload"
        );
        assert!(
            fulcrum
                .lines()
                .iter()
                .any(|line| line.contains("rate_limit changed")),
            "the reload names the change"
        );
    })
    .await;
}
