//! Who may use the admin API: the bearer token (`token_file`, re-read when it changes), the
//! `Host` and `Origin` checks, the header-read timeout and connection cap, and the
//! `--check --diff` client's bounds.

use super::*;

use common::TempDir;
use common::balancer::admin_request;
use http::Method;

pub(super) const TOKEN: &str = "s3cret-admin-token-0123456789";

/// A balancer whose admin listener has `admin` (TOML lines) in its `[admin]` table, with the
/// token file `admin.token` holding [`TOKEN`] in `dir`; the backend is returned to keep it up.
pub(super) async fn with_admin(
    dir: &TempDir,
    admin: &str,
) -> (TestBalancer, SocketAddr, TestBackend) {
    let backend = TestBackend::spawn("a").await;
    dir.write("admin.token", &format!("{TOKEN}\n"));
    let text = format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{admin}\n\n{}",
        TestBalancer::builder()
            .backend(backend.addr())
            .config_text()
    );
    let balancer = TestBalancer::from_config(&dir.config_file(), &text, "web").await;
    let admin = balancer.admin_addr();
    (balancer, admin, backend)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn unauthenticated_reload_is_refused_with_401_when_a_token_is_set() {
    bounded(async {
        let dir = TempDir::new("admin-token");
        let (mut balancer, admin, _backend) =
            with_admin(&dir, "token_file = \"admin.token\"").await;

        let refused = admin_request(admin, Method::POST, "/reload", &[]).await;
        assert_eq!(
            refused.status,
            StatusCode::UNAUTHORIZED,
            "{}",
            refused.text()
        );
        assert_eq!(
            refused
                .headers
                .get(http::header::WWW_AUTHENTICATE)
                .map(|v| v.to_str().ok()),
            Some(Some("Bearer realm=\"fulcrum admin\""))
        );
        let wrong = bearer("s3cret-admin-token-0123456788");
        let refused =
            admin_request(admin, Method::POST, "/reload", &[("authorization", &wrong)]).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        for path in ["/status", "/metrics", "/config"] {
            let refused = admin_get(admin, path).await;
            assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{path}");
        }

        // The probes stay open; everything else opens with the token.
        assert_eq!(admin_get(admin, "/healthz").await.status, StatusCode::OK);
        assert_eq!(admin_get(admin, "/readyz").await.status, StatusCode::OK);
        let good = bearer(TOKEN);
        let status =
            admin_request(admin, Method::GET, "/status", &[("authorization", &good)]).await;
        assert_eq!(status.status, StatusCode::OK, "{}", status.text());
        let reload =
            admin_request(admin, Method::POST, "/reload", &[("authorization", &good)]).await;
        assert_ne!(reload.status, StatusCode::UNAUTHORIZED, "{}", reload.text());

        // Refusals are counted by reason.
        let metrics = admin_request(admin, Method::GET, "/metrics", &[("authorization", &good)])
            .await
            .text();
        let refused = Exposition::parse(&metrics)
            .expect("valid exposition")
            .value("fulcrum_admin_refused_total", &[("reason", "token")]);
        assert!(refused.is_some_and(|n| n >= 6.0), "{refused:?}");
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_new_token_in_the_file_replaces_the_old_one() {
    bounded(async {
        let dir = TempDir::new("admin-token-change");
        let (mut balancer, admin, _backend) =
            with_admin(&dir, "token_file = \"admin.token\"").await;
        let old = bearer(TOKEN);
        // Answered: the server runs, and watches the token file.
        let before = admin_request(admin, Method::GET, "/status", &[("authorization", &old)]).await;
        assert_eq!(before.status, StatusCode::OK);
        let new_token = "a-brand-new-token-9876543210";
        dir.replace("admin.token", &format!("{new_token}\n"));
        let new = bearer(new_token);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let status =
                admin_request(admin, Method::GET, "/status", &[("authorization", &new)]).await;
            if status.status == StatusCode::OK {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the new token never worked"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let stale = admin_request(admin, Method::GET, "/status", &[("authorization", &old)]).await;
        assert_eq!(stale.status, StatusCode::UNAUTHORIZED);
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn foreign_hosts_and_origins_are_refused() {
    bounded(async {
        let dir = TempDir::new("admin-hosts");
        let (mut balancer, admin, _backend) =
            with_admin(&dir, "allowed_hosts = [\"fulcrum.internal\"]").await;
        // A DNS-rebinding page carries its own name as Host.
        let rebound =
            admin_request(admin, Method::POST, "/reload", &[("host", "evil.example")]).await;
        assert_eq!(
            rebound.status,
            StatusCode::MISDIRECTED_REQUEST,
            "{}",
            rebound.text()
        );
        for host in ["localhost", "fulcrum.internal:9900", "127.0.0.1"] {
            let ok = admin_request(admin, Method::GET, "/status", &[("host", host)]).await;
            assert_eq!(ok.status, StatusCode::OK, "{host}");
        }
        // Probes answer whatever the Host (kubelet sends the pod IP, or a name).
        let probe =
            admin_request(admin, Method::GET, "/healthz", &[("host", "evil.example")]).await;
        assert_eq!(probe.status, StatusCode::OK);
        // A cross-site form post from a browser carries Origin.
        let csrf = admin_request(
            admin,
            Method::POST,
            "/reload",
            &[("origin", "https://evil.example")],
        )
        .await;
        assert_eq!(csrf.status, StatusCode::FORBIDDEN, "{}", csrf.text());
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_slow_request_head_is_cut_off_at_the_admin_header_read_timeout() {
    bounded(async {
        let dir = TempDir::new("admin-slow");
        let (mut balancer, admin, _backend) =
            with_admin(&dir, "header_read_timeout = \"300ms\"").await;
        let mut stream = common::tcp::raw_connect(admin).await;
        stream
            .write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .expect("write half a head");
        let started = std::time::Instant::now();
        let mut rest = Vec::new();
        common::within(
            Duration::from_secs(3),
            "the admin listener to close a slow head",
            stream.read_to_end(&mut rest),
        )
        .await
        .ok();
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(!String::from_utf8_lossy(&rest).contains("200 OK"));
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn admin_connections_wait_at_max_connections() {
    bounded(async {
        let dir = TempDir::new("admin-cap");
        let (mut balancer, admin, _backend) = with_admin(&dir, "max_connections = 1").await;
        let first = common::tcp::raw_connect(admin).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = tokio::spawn(async move { admin_get(admin, "/healthz").await.status });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !second.is_finished(),
            "a second connection was served beside the first"
        );
        drop(first);
        let status = common::within(Duration::from_secs(3), "the waiting connection", second)
            .await
            .expect("the request task");
        assert_eq!(status, StatusCode::OK);
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn check_diff_fetch_sends_the_token_and_is_bounded() {
    bounded(async {
        let dir = TempDir::new("admin-fetch");
        let (mut balancer, admin, _backend) = with_admin(&dir, "token_file = \"admin.token\"").await;
        let token = fulcrum::config::AdminToken::read(&dir.join("admin.token")).expect("token");
        let limit = Duration::from_secs(5);
        // Not started from a file, so `/config` has nothing, but the token let the request in.
        let text = fulcrum::cli::fetch_config(admin, Some(&token), limit).await;
        assert!(
            matches!(&text, Err(fulcrum::cli::FetchError::Status { status, .. }) if *status == StatusCode::NOT_FOUND),
            "{text:?}"
        );
        let refused = fulcrum::cli::fetch_config(admin, None, limit).await;
        assert!(
            matches!(&refused, Err(fulcrum::cli::FetchError::Status { status, .. }) if *status == StatusCode::UNAUTHORIZED),
            "{refused:?}"
        );
        balancer.stop().await;

        // A listener that accepts and never answers: the whole fetch times out.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = silent.local_addr().expect("address");
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                open.push(stream);
            }
        });
        let started = std::time::Instant::now();
        let silent_result = fulcrum::cli::fetch_config(address, None, Duration::from_millis(300)).await;
        assert!(
            matches!(silent_result, Err(fulcrum::cli::FetchError::TimedOut { .. })),
            "{silent_result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
        held.abort();

        // An endless body: refused past the cap, not read to the end.
        let endless = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = endless.local_addr().expect("address");
        let server = tokio::spawn(async move {
            let Ok((mut stream, _)) = endless.accept().await else { return };
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
            while stream.write_all(chunk.as_bytes()).await.is_ok() {}
        });
        let large = fulcrum::cli::fetch_config(address, None, Duration::from_secs(20)).await;
        assert!(
            matches!(large, Err(fulcrum::cli::FetchError::TooLarge { .. })),
            "{large:?}"
        );
        server.abort();
    })
    .await;
}

/// With a token set, a browser opens the dashboard page, is asked for the token, and shows the
/// status once given it (here in the address's fragment, which never reaches the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_asks_a_browser_for_the_token_and_works_with_it() {
    let Some(browser) = common::tools::require_tool("chromium") else {
        return;
    };
    let dir = TempDir::new("admin-token-dashboard");
    let (mut balancer, admin, _backend) = with_admin(&dir, "token_file = \"admin.token\"").await;
    let page = admin_get(admin, "/").await;
    assert_eq!(page.status, StatusCode::OK, "the page itself holds no data");
    assert_eq!(
        admin_get(admin, "/status").await.status,
        StatusCode::UNAUTHORIZED
    );

    let without =
        super::dashboard::chromium(&browser, &format!("http://{admin}/"), &["--dump-dom"]).await;
    assert!(without.contains("data-auth=\"required\""), "{without}");
    assert!(!without.contains("data-loaded=\"true\""), "{without}");

    let url = format!("http://{admin}/#token={TOKEN}");
    let with = super::dashboard::chromium(&browser, &url, &["--dump-dom"]).await;
    assert!(with.contains("data-loaded=\"true\""), "{with}");
    assert!(!with.contains("data-auth=\"required\""), "{with}");
    balancer.stop().await;
}
