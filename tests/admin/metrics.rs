//! `/metrics`: well-formed Prometheus text whose counters match the traffic sent.

use super::*;

#[test]
fn the_exposition_parser_accepts_and_rejects() {
    let text = "# HELP a_total A thing.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"z\"} 3\n\
                # HELP h Hist.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n";
    let exposition = Exposition::parse(text).expect("a valid exposition");
    assert_eq!(exposition.value("a_total", &[("y", "q\"z")]), Some(3.0));
    assert_eq!(exposition.value("h_count", &[]), Some(2.0));
    for bad in [
        "a_total 3\n",                                 // no HELP/TYPE
        "# HELP a A.\n# TYPE a counter\na{x=1} 3\n",   // unquoted label value
        "# HELP a A.\n# TYPE a counter\na{x=\"1\"}\n", // no value
        "# HELP a A.\n# TYPE a counter\na three\n",    // not a number
        "# HELP a A.\n# TYPE a counter\n9a 1\n",       // bad name
        "# HELP a A.\n# TYPE a counter\na 1 2 3\n",    // trailing field
    ] {
        assert!(Exposition::parse(bad).is_err(), "accepted: {bad:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_client_timeouts_by_kind() {
    bounded(async {
        let backend = TestBackend::spawn("a").await;
        let (mut balancer, admin) = TestBalancer::builder()
            .backend(backend.addr())
            .listener("header_read_timeout", "\"300ms\"")
            .listener("idle_timeout", "\"30s\"")
            .start_with_admin()
            .await;
        let mut stream = common::tcp::raw_connect(balancer.addr()).await;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
            .await
            .expect("write a partial head");
        let mut buf = [0u8; 64];
        let read = common::within(
            Duration::from_secs(3),
            "the proxy to close the connection",
            stream.read(&mut buf),
        )
        .await;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

        let (metrics, text) = scrape(admin).await;
        let header_read = [("listener", "web"), ("kind", "header_read")];
        assert_eq!(
            metrics.expect("fulcrum_client_timeouts_total", &header_read, &text),
            1.0
        );
        let idle = [("listener", "web"), ("kind", "idle")];
        assert_eq!(
            metrics.expect("fulcrum_client_timeouts_total", &idle, &text),
            0.0
        );
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn metrics_count_every_request_per_backend() {
    bounded(async {
        let backends = [
            TestBackend::spawn("a").await,
            TestBackend::spawn("b").await,
            TestBackend::spawn("c").await,
        ];
        let mut builder = TestBalancer::builder();
        for backend in &backends {
            builder = builder.backend(backend.addr());
        }
        let (mut balancer, admin) = builder.start_with_admin().await;

        send(&balancer, 30, StatusCode::OK).await;
        for backend in &backends {
            assert_eq!(backend.request_count(), 10, "round robin over three");
        }

        let (metrics, text) = scrape(admin).await;
        for backend in &backends {
            let address = backend.addr().to_string();
            let labels = [
                ("listener", "web"),
                ("pool", "app"),
                ("backend", address.as_str()),
            ];
            let ok = [labels.as_slice(), &[("code_class", "2xx")]].concat();
            assert_eq!(
                metrics.expect("fulcrum_requests_total", &ok, &text),
                10.0,
                "{address}"
            );
            for class in ["1xx", "3xx", "4xx", "5xx"] {
                let other = [labels.as_slice(), &[("code_class", class)]].concat();
                assert_eq!(
                    metrics
                        .value("fulcrum_requests_total", &other)
                        .unwrap_or(0.0),
                    0.0,
                    "{address} {class}"
                );
            }
            let series = [("pool", "app"), ("backend", address.as_str())];
            assert_eq!(
                metrics.expect("fulcrum_request_duration_seconds_count", &series, &text),
                10.0,
                "{address}"
            );
            let inf = [series.as_slice(), &[("le", "+Inf")]].concat();
            assert_eq!(
                metrics.expect("fulcrum_request_duration_seconds_bucket", &inf, &text),
                10.0,
                "{address}"
            );
            let sum = metrics.expect("fulcrum_request_duration_seconds_sum", &series, &text);
            assert!(sum > 0.0 && sum < 30.0, "{address}: duration sum {sum}");
            assert_eq!(
                metrics.value("fulcrum_upstream_connect_errors_total", &series),
                Some(0.0),
                "{address}"
            );
            assert_eq!(
                metrics.expect("fulcrum_backend_up", &series, &text),
                1.0,
                "{address}"
            );
            assert_eq!(
                metrics.expect("fulcrum_backend_in_flight", &series, &text),
                0.0,
                "{address}"
            );
            assert_eq!(
                backend.connection_count(),
                1,
                "{address}: one connection, reused"
            );
            assert_eq!(
                metrics.expect("fulcrum_upstream_connections_total", &series, &text),
                1.0,
                "{address}"
            );
            assert_eq!(
                metrics.expect("fulcrum_upstream_idle_connections", &series, &text),
                1.0,
                "{address}: back in the pool once its response ended"
            );
        }
        assert_eq!(metrics.types["fulcrum_requests_total"], "counter");
        assert_eq!(
            metrics.types["fulcrum_request_duration_seconds"],
            "histogram"
        );
        assert_eq!(metrics.types["fulcrum_backend_up"], "gauge");
        // Every test's listener is called `web`; these only grow.
        assert!(metrics.expect("fulcrum_connections_total", &[("listener", "web")], &text) >= 1.0);
        for direction in ["in", "out"] {
            assert!(
                metrics.expect(
                    "fulcrum_bytes_total",
                    &[("listener", "web"), ("direction", direction)],
                    &text
                ) > 0.0,
                "bytes {direction}"
            );
        }
        assert!(
            metrics.expect(
                "fulcrum_config_last_reload_success_timestamp_seconds",
                &[],
                &text
            ) > 1.6e9
        );
        balancer.stop().await;
    })
    .await;
}

#[tokio::test]
async fn metrics_count_server_errors_and_failed_connects() {
    bounded(async {
        // A backend answering 500: passed through, counted as 5xx, not a connect error.
        let failing = TestBackend::with_behaviour(
            "broken",
            Behaviour::Status(StatusCode::INTERNAL_SERVER_ERROR),
        )
        .await;
        let (mut erroring, admin) = TestBalancer::builder()
            .backend(failing.addr())
            .start_with_admin()
            .await;
        send(&erroring, 7, StatusCode::INTERNAL_SERVER_ERROR).await;

        // A pool whose only backend's port is closed: every request is one failed connect,
        // answered 503 (passive ejection off so each request really tries it).
        let closed = closed_port().await;
        let (mut refusing, _) = TestBalancer::builder()
            .backend(closed)
            .pool("retries", "0")
            .pool("passive", "{ consecutive_failures = 0 }")
            .start_with_admin()
            .await;
        send(&refusing, 4, StatusCode::SERVICE_UNAVAILABLE).await;

        let (metrics, text) = scrape(admin).await;
        let failing_addr = failing.addr().to_string();
        let failing_series = [("pool", "app"), ("backend", failing_addr.as_str())];
        let requests = |backend: &str, class: &str| {
            metrics
                .value(
                    "fulcrum_requests_total",
                    &[
                        ("listener", "web"),
                        ("pool", "app"),
                        ("backend", backend),
                        ("code_class", class),
                    ],
                )
                .unwrap_or(0.0)
        };
        assert_eq!(requests(&failing_addr, "5xx"), 7.0, "{text}");
        assert_eq!(requests(&failing_addr, "2xx"), 0.0);
        assert_eq!(
            metrics.expect(
                "fulcrum_request_duration_seconds_count",
                &failing_series,
                &text
            ),
            7.0
        );
        assert_eq!(
            metrics.expect(
                "fulcrum_upstream_connect_errors_total",
                &failing_series,
                &text
            ),
            0.0
        );

        let closed_addr = closed.to_string();
        let closed_series = [("pool", "app"), ("backend", closed_addr.as_str())];
        assert_eq!(
            metrics.expect(
                "fulcrum_upstream_connect_errors_total",
                &closed_series,
                &text
            ),
            4.0,
            "one failed connect per request"
        );
        assert_eq!(
            requests(&closed_addr, "5xx"),
            4.0,
            "answered 503 by fulcrum"
        );
        assert_eq!(
            metrics
                .value("fulcrum_request_duration_seconds_count", &closed_series)
                .unwrap_or(0.0),
            0.0,
            "no response head was ever timed"
        );
        erroring.stop().await;
        refusing.stop().await;
    })
    .await;
}
