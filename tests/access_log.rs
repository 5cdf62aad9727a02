//! `[log] access = true` writes one structured line per request; off by default.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::backend::TestBackend;
use common::balancer::TestBalancer;
use common::bounded;
use common::client::TestClient;
use http::StatusCode;

/// Collects everything the tracing subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_writes_one_line_per_request_only_when_enabled() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .init();
    bounded(async {
        let backend = TestBackend::spawn("logged").await;
        let text = format!(
            "[log]\naccess = true\n\n{}",
            TestBalancer::builder()
                .backend(backend.addr())
                .config_text()
        );
        let config = fulcrum::Config::parse("test.toml", &text).expect("valid config");
        let server = fulcrum::Server::bind(config).await.expect("bind");
        let address = server.local_addr("web").expect("web listener");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        let mut client = TestClient::connect(address).await;
        for path in ["/first", "/second?x=1"] {
            let response = client.get(path).await.expect("response");
            assert_eq!(response.status, StatusCode::OK);
        }
        let _ = stop.send(());
        running.await.expect("server task");

        let quiet = TestBackend::spawn("quiet").await;
        let mut lb = TestBalancer::builder().backend(quiet.addr()).start().await;
        let mut client = lb.client().await;
        client.get("/unlogged").await.expect("response");
        lb.stop().await;
    })
    .await;
    let text = captured.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("fulcrum::access"))
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    for (line, path) in lines.iter().zip(["/first", "/second"]) {
        assert!(line.contains("method=GET"), "{line}");
        assert!(line.contains(&format!("path={path}")), "{line}");
        assert!(line.contains("status=200"), "{line}");
        assert!(line.contains("backend="), "{line}");
        assert!(line.contains("duration_ms="), "{line}");
    }
    assert!(!text.contains("/unlogged"), "{text}");
}
