//! `/status` JSON after known traffic and health checks, `/healthz`, `/readyz`, and unknown paths.

use super::*;

#[tokio::test]
async fn status_reports_traffic_and_health() {
    bounded(async {
        // Controlled backends count probes (`/health`) apart from traffic.
        let a = ControlledBackend::spawn("a").await;
        let b = ControlledBackend::spawn("b").await;
        let closed = closed_port().await;
        let (mut balancer, admin) = TestBalancer::builder()
            .backend(a.addr())
            .backend(b.addr())
            .backend(closed)
            .pool("health_check", FAST_CHECKS)
            .start_with_admin()
            .await;

        let healthz = admin_get(admin, "/healthz").await;
        assert_eq!(healthz.status, StatusCode::OK);
        assert_eq!(healthz.text(), "ok\n");

        // Every backend checked once: a and b up, the closed port down with its error.
        let document = status_until(admin, "first health checks", |status| {
            status["ready"] == true
                && backend(status, a.addr())["state"] == "healthy"
                && backend(status, b.addr())["state"] == "healthy"
                && backend(status, closed)["state"] == "unhealthy"
        })
        .await;
        assert_eq!(admin_get(admin, "/readyz").await.status, StatusCode::OK);
        let down = backend(&document, closed);
        let error = down["last_error"]
            .as_str()
            .unwrap_or_else(|| panic!("an unhealthy backend has a last_error:\n{document:#}"));
        assert!(!error.is_empty());

        // Traffic only goes to the healthy two, alternately.
        let mut client = balancer.client().await;
        for i in 0..20 {
            let response = client.get("/").await.expect("request");
            assert_eq!(response.status, StatusCode::OK, "request {i}");
        }
        assert_eq!((a.hit_count(), b.hit_count()), (10, 10));

        let document = status(admin).await;
        assert_eq!(document["version"], env!("CARGO_PKG_VERSION"));
        assert!(
            document["uptime_seconds"]
                .as_f64()
                .is_some_and(|s| s >= 0.0)
        );
        assert_eq!(
            document["config_file"],
            Value::Null,
            "not started from a file"
        );
        assert_eq!(document["last_reload"], Value::Null, "no reload yet");
        assert_eq!(document["ready"], true);

        let listeners = document["listeners"].as_array().expect("listeners");
        assert_eq!(listeners.len(), 1, "{document:#}");
        let web = &listeners[0];
        assert_eq!(web["name"], "web");
        assert_eq!(web["address"], balancer.addr().to_string());
        assert_eq!(web["protocol"], "http");
        assert_eq!(web["pool"], "app");
        assert_eq!(web["connections_active"], 1, "our client's connection");

        let pools = document["pools"].as_array().expect("pools");
        assert_eq!(pools.len(), 1);
        let pool = &pools[0];
        assert_eq!(pool["name"], "app");
        assert_eq!(pool["algorithm"], "round_robin");
        assert_eq!(pool["active_checks"], true);
        assert_eq!(pool["fail_open"], false);
        let addresses: Vec<&str> = pool["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .map(|backend| backend["address"].as_str().expect("address"))
            .collect();
        assert_eq!(
            addresses,
            [
                a.addr().to_string(),
                b.addr().to_string(),
                closed.to_string()
            ],
            "config order"
        );

        for up in [a.addr(), b.addr()] {
            let backend = backend(&document, up);
            assert_eq!(backend["name"], up.to_string(), "named by address");
            assert_eq!(backend["state"], "healthy");
            assert_eq!(backend["weight"], 1);
            assert_eq!(backend["effective_weight"], 1.0);
            assert_eq!(backend["in_flight"], 0);
            assert_eq!(
                backend["idle_connections"], 1,
                "{up}: its one connection, idle"
            );
            assert_eq!(backend["requests"], 10, "{up}");
            assert_eq!(backend["last_error"], Value::Null);
            let minute = &backend["last_minute"];
            assert_eq!(minute["requests"], 10, "{up}");
            let rps = minute["requests_per_second"].as_f64().expect("rps");
            assert!(rps > 0.0 && rps <= 10.0, "{up}: {rps} requests/s");
            assert_eq!(minute["error_rate"], 0.0);
            let p50 = minute["p50_ms"].as_f64().expect("p50");
            let p99 = minute["p99_ms"].as_f64().expect("p99");
            assert!(
                p50 > 0.0 && p50 <= p99 && p99 < 5_000.0,
                "{up}: {p50} {p99}"
            );
        }
        let down = backend(&document, closed);
        assert_eq!(down["state"], "unhealthy");
        assert_eq!(down["requests"], 0);
        assert_eq!(down["in_flight"], 0);
        assert_eq!(down["idle_connections"], 0);
        assert_eq!(down["last_minute"]["requests"], 0);
        assert_eq!(down["last_minute"]["error_rate"], 0.0);

        // /metrics mirrors the health state.
        let (metrics, text) = scrape(admin).await;
        let closed_addr = closed.to_string();
        let series = [("pool", "app"), ("backend", closed_addr.as_str())];
        assert_eq!(metrics.expect("fulcrum_backend_up", &series, &text), 0.0);
        assert!(
            metrics.sum(
                "fulcrum_health_checks_total",
                &[series.as_slice(), &[("result", "fail")]].concat()
            ) >= 1.0
        );
        drop(client);
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn readyz_waits_for_the_first_health_check() {
    bounded(async {
        let backend = ControlledBackend::spawn("slow-to-check").await;
        // The first probe is held: it cannot complete (pass or time out) for a second.
        backend.hold_health(true);
        let (mut balancer, admin) = TestBalancer::builder()
            .backend(backend.addr())
            .pool(
                "health_check",
                "{ path = \"/health\", interval = \"1s\", timeout = \"1s\", jitter = \"0ms\", \
                 healthy_threshold = 1 }",
            )
            .start_with_admin()
            .await;

        let readyz = admin_get(admin, "/readyz").await;
        assert_eq!(
            readyz.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            readyz.text()
        );
        assert_eq!(status(admin).await["ready"], false);
        assert_eq!(admin_get(admin, "/healthz").await.status, StatusCode::OK);

        backend.hold_health(false);
        let document = status_until(admin, "readiness", |status| status["ready"] == true).await;
        assert_eq!(admin_get(admin, "/readyz").await.status, StatusCode::OK);
        assert!(backend.probe_count() >= 1, "{document:#}");
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_admin_paths_are_not_found() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let (mut balancer, admin) = TestBalancer::builder()
            .backend(a.addr())
            .start_with_admin()
            .await;
        assert_eq!(
            admin_get(admin, "/nope").await.status,
            StatusCode::NOT_FOUND
        );
        let page = admin_get(admin, "/").await;
        assert_eq!(page.status, StatusCode::OK);
        assert_eq!(
            page.headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("text/html; charset=utf-8")
        );
        let html = page.text();
        assert!(html.starts_with("<!doctype html>"), "{html}");
        assert!(html.contains("id=\"last-reload\""));
        for external in ["src=\"", "href=\"", "url(", "@import", "<link", "//cdn"] {
            assert!(
                !html.contains(external),
                "self-contained: no external resources ({external})"
            );
        }
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn status_shows_hash_shares_and_the_sticky_cookie_and_metrics_count_pins() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let (mut balancer, admin) = TestBalancer::builder()
            .pool_name("hashed")
            .algorithm("consistent_hash")
            .backend(a.addr())
            .weighted(b.addr(), 3)
            .pool("hash_key", "\"path\"")
            .pool("sticky", "{ cookie = \"srv\" }")
            .start_with_admin()
            .await;
        let document = status(admin).await;
        let pool = &document["pools"][0];
        assert_eq!(pool["algorithm"], "consistent_hash");
        assert_eq!(pool["sticky_cookie"], "srv");
        let share = |address| {
            backend(&document, address)["table_share"]
                .as_f64()
                .unwrap_or_else(|| panic!("a table_share for {address}:\n{document:#}"))
        };
        let (light, heavy) = (share(a.addr()), share(b.addr()));
        assert!((light + heavy - 100.0).abs() < 1e-6, "{light} + {heavy}");
        assert!(
            (2.0..=4.5).contains(&(heavy / light)),
            "weight 3 vs 1: {heavy} / {light}"
        );

        // One request without a cookie: one pin made, counted as new.
        let mut client = balancer.client().await;
        let response = client.get("/").await.expect("request");
        assert!(response.headers.contains_key("set-cookie"));
        let (metrics, text) = scrape(admin).await;
        let series = [("pool", "hashed"), ("reason", "new")];
        assert_eq!(
            metrics.expect("fulcrum_sticky_pins_total", &series, &text),
            1.0
        );
        drop(client);
        balancer.stop().await;
    })
    .await;
}
