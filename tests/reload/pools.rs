//! Pool changes under load: backends added and removed, weights and algorithm, a backend's
//! `max_connections`, and health state that survives an unrelated edit.

use super::*;

use common::controlled::ControlledBackend;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_backend_gets_traffic_within_a_second_with_zero_client_failures() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let c = TestBackend::spawn("c").await;
        let dir = TempDir::new("add");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr(), b.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;

        let started = Instant::now();
        let load = Load::start(fulcrum.web, 4).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(c.request_count(), 0);
        let mark = fulcrum.mark();
        cfg.backends.push((c.addr(), 1));
        write_in_place(&path, &cfg.text());
        let took = wait_for_traffic(&c, 0, Duration::from_secs(1)).await;
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("changes=pool app: +{} (weight 1)", c.addr())),
            "{line}"
        );
        assert!(line.contains("trigger=\"file\""), "{line}");
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(started.elapsed())).await;
        let report = load.finish().await;

        assert_no_failures(&report);
        assert!(report.served("c") > 0, "{report:?}");
        assert!(
            report.served("a") > 0 && report.served("b") > 0,
            "{report:?}"
        );
        eprintln!("c got traffic {took:?} after the write; {report:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_backend_finishes_its_in_flight_request_and_gets_no_new_ones() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let dir = TempDir::new("remove");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr(), b.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;

        let web = fulcrum.web;
        let slow = tokio::spawn(async move {
            let mut client = TestClient::connect(web).await;
            client.get("/slow/1500").await
        });
        // Find out which backend holds the slow request: that one is removed.
        let deadline = Instant::now() + Duration::from_secs(2);
        let (victim, survivor) = loop {
            let on =
                |backend: &TestBackend| backend.requests().iter().any(|r| r.path == "/slow/1500");
            if on(&a) {
                break (&a, &b);
            }
            if on(&b) {
                break (&b, &a);
            }
            assert!(
                Instant::now() < deadline,
                "the slow request reached no backend"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let load = Load::start(fulcrum.web, 2).await;
        tokio::time::sleep(Duration::from_millis(200)).await;

        let mark = fulcrum.mark();
        cfg.backends
            .retain(|(address, _)| *address != victim.addr());
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("-{} (draining)", victim.addr())),
            "{line}"
        );
        // A request already routed under the old config when the reload landed may still be
        // on its way there (on a busy machine, a thread preempted between pick and send);
        // give those a moment, then nothing more may arrive.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let count_at_reload = victim.request_count();
        let survivor_at_reload = survivor.request_count();

        let response = within(Duration::from_secs(5), "the slow response", slow)
            .await
            .expect("slow request task")
            .expect("slow request failed");
        assert_eq!(response.status, StatusCode::OK, "{response:?}");
        assert_eq!(response.served_by(), Some(victim.name()));
        assert_eq!(response.text(), victim.name());

        tokio::time::sleep(Duration::from_millis(500)).await;
        let report = load.finish().await;
        assert_no_failures(&report);
        assert_eq!(
            victim.request_count(),
            count_at_reload,
            "requests reached the removed backend after the reload was logged"
        );
        assert!(survivor.request_count() > survivor_at_reload);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_max_connections_lets_a_queued_request_through_at_once() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let dir = TempDir::new("cap");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr()]);
        cfg.pool_keys.push("max_connections = 1".to_owned());
        cfg.pool_keys.push("queue_timeout = \"10s\"".to_owned());
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;

        let web = fulcrum.web;
        let get = |path: &'static str| {
            tokio::spawn(async move {
                let mut client = TestClient::connect(web).await;
                client.get(path).await
            })
        };
        // The gated response holds the backend's only unit; the next request queues.
        let holding = get("/gated");
        common::wait_until(Duration::from_secs(5), "the gated request", || {
            a.request_count() == 1
        })
        .await;
        let queued = get("/");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(a.request_count(), 1, "the second request must be queued");

        let mark = fulcrum.mark();
        cfg.pool_keys[0] = "max_connections = 2".to_owned();
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(line.contains("max_connections 1→2"), "{line}");
        let response = within(Duration::from_secs(5), "the queued response", queued)
            .await
            .expect("request task")
            .expect("the queued request failed");
        assert_eq!(response.status, StatusCode::OK);
        a.open_gate();
        let response = within(Duration::from_secs(5), "the gated response", holding)
            .await
            .expect("request task")
            .expect("the gated request failed");
        assert_eq!(response.text(), "firstrest");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_change_shifts_shares_and_algorithm_change_applies() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let dir = TempDir::new("weight");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr(), b.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;

        let before = sequential(fulcrum.web, 40).await;
        assert_eq!((before["a"], before["b"]), (20, 20), "{before:?}");

        // Weight 1 → 3 under load.
        let load = Load::start(fulcrum.web, 4).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mark = fulcrum.mark();
        cfg.backends[0].1 = 3;
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("changes=pool app: {} weight 1→3", a.addr())),
            "{line}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_no_failures(&load.finish().await);
        let after = sequential(fulcrum.web, 400).await;
        let (got_a, got_b) = (after["a"], after.get("b").copied().unwrap_or(0));
        assert!(
            got_a.abs_diff(300) <= 2 && got_b.abs_diff(100) <= 2,
            "expected 300:100 (±2), got {after:?}"
        );

        // round_robin → least_connections, under load.
        let load = Load::start(fulcrum.web, 4).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mark = fulcrum.mark();
        cfg.algorithm = "least_connections";
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains("algorithm round_robin→least_connections"),
            "{line}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_no_failures(&load.finish().await);

        // Least connections avoids the backend busy with a slow request; round-robin would not.
        let web = fulcrum.web;
        let slow = tokio::spawn(async move {
            let mut client = TestClient::connect(web).await;
            client.get("/slow/1500").await
        });
        let deadline = Instant::now() + Duration::from_secs(2);
        let busy = loop {
            if let Some(busy) = [&a, &b]
                .into_iter()
                .find(|backend| backend.requests().iter().any(|r| r.path == "/slow/1500"))
            {
                break busy.name().to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "the slow request reached no backend"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let during = sequential(fulcrum.web, 20).await;
        assert_eq!(
            during.get(&busy),
            None,
            "least_connections sent requests to the busy backend {busy}: {during:?}"
        );
        let slow = within(Duration::from_secs(5), "the slow response", slow)
            .await
            .expect("slow task")
            .expect("slow request");
        assert_eq!(slow.status, StatusCode::OK);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_survives_an_unrelated_edit() {
    bounded(async {
        let a = ControlledBackend::spawn("a").await;
        let b = ControlledBackend::spawn("b").await;
        let dir = TempDir::new("health");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr(), b.addr()]);
        cfg.tail = "\n[pools.app.health_check]\npath = \"/health\"\ninterval = \"100ms\"\n\
                    timeout = \"100ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n"
            .to_owned();
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;

        // Both come up, then b's check starts failing and it is marked down.
        let deadline = Instant::now() + Duration::from_secs(5);
        while b.hit_count() == 0 || a.hit_count() == 0 {
            assert!(Instant::now() < deadline, "a and b never both served");
            let mut client = TestClient::connect(fulcrum.web).await;
            let _ = client.get("/").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mark = fulcrum.mark();
        b.set_health(503);
        fulcrum
            .wait_log(
                mark,
                &format!("backend is down pool=\"app\" backend=\"{}\"", b.addr()),
                Duration::from_secs(5),
            )
            .await;

        let load = Load::start(fulcrum.web, 2).await;
        // Connections for the burst, opened before the reload.
        let mut burst_clients = Vec::new();
        for _ in 0..4 {
            burst_clients.push(TestClient::connect(fulcrum.web).await);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let b_before = b.hit_count();

        // An unrelated edit: fewer retries and a new pool.
        let mark = fulcrum.mark();
        cfg.pool_keys.push("retries = 1".to_owned());
        cfg.tail.push_str(&format!(
            "\n[pools.other]\nbackends = [\"{}\"]\n",
            a.addr()
        ));
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        let probes_at_reload = b.probe_count();

        // Burst right away: 4 connections × 10 requests.
        let burst = burst_clients.into_iter().map(|mut client| {
            tokio::spawn(async move {
                let mut results = Vec::new();
                for _ in 0..10 {
                    results.push(match client.get("/").await {
                        Ok(response) => {
                            (response.status, response.served_by().map(str::to_owned))
                        }
                        Err(err) => panic!("burst request failed: {err}"),
                    });
                }
                results
            })
        });
        let mut results = Vec::new();
        for task in burst {
            results.extend(within(Duration::from_secs(5), "the burst", task).await.expect("burst"));
        }
        let burst_took_probes = b.probe_count() - probes_at_reload;
        assert!(
            line.contains("retries 2→1") && line.contains("pool other: added"),
            "{line}"
        );
        assert!(
            results
                .iter()
                .all(|(status, by)| *status == StatusCode::OK && by.as_deref() == Some(a.name())),
            "burst right after the reload (b probed {burst_took_probes} times meanwhile): {results:?}"
        );
        assert_eq!(
            b.hit_count(),
            b_before,
            "the down backend got traffic right after the reload"
        );
        let report = load.finish().await;
        assert_no_failures(&report);
        assert_eq!(report.served(b.name()), 0, "{report:?}");

        // The checker still runs after the reload: b comes back.
        b.set_health(200);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut client = TestClient::connect(fulcrum.web).await;
        while b.hit_count() == b_before {
            assert!(Instant::now() < deadline, "b never came back after the reload");
            let _ = client.get("/").await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// A pool that a reload adds, with active checks, gets its first round of checks before the new
/// config serves: a client that connects the moment the new listener takes connections gets its
/// backend's answer, not a 503 for want of a check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_added_by_a_reload_serves_without_a_503_for_want_of_a_check() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let dir = TempDir::new("added-pool");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|probe| probe.local_addr())
            .expect("a free port")
            .port();
        let api = SocketAddr::from(([127, 0, 0, 1], port));
        let client = tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            let stream = loop {
                // From 127.0.0.2: a connect loop on a port nobody listens on yet may otherwise
                // pick that very port as its own and connect to itself.
                let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
                socket
                    .bind(SocketAddr::from(([127, 0, 0, 2], 0)))
                    .expect("bind 127.0.0.2");
                match socket.connect(api).await {
                    Ok(stream) => break stream,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    Err(err) => panic!("the new listener never came: {err}"),
                }
            };
            drop(stream);
            let mut client = TestClient::connect(api).await;
            let mut statuses = Vec::new();
            for i in 0..5 {
                let response = client.get(&format!("/api/{i}")).await.expect("a response");
                statuses.push(response.status);
            }
            statuses
        });
        let mark = fulcrum.mark();
        cfg.tail = format!(
            "\n[[listeners]]\nname = \"api\"\nlisten = \"{api}\"\npool = \"api\"\n\n\
             [pools.api]\nbackends = [\"{}\"]\n\
             [pools.api.health_check]\npath = \"/health\"\ninterval = \"500ms\"\n\
             timeout = \"500ms\"\njitter = \"50ms\"\n",
            b.addr()
        );
        write_in_place(&path, &cfg.text());
        fulcrum.wait_reloaded(mark).await;
        let statuses = within(Duration::from_secs(5), "the client", client)
            .await
            .expect("client task");
        assert!(
            statuses.iter().all(|s| *s == StatusCode::OK),
            "{statuses:?}"
        );
    })
    .await;
}
