//! Listeners added and removed by a reload, a reload refused whole when a listener cannot be
//! bound, and a route added under load.

use super::*;

use common::tcp::closed_port;
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_are_added_and_removed_without_dropping_in_flight_requests() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let dir = TempDir::new("listeners");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;
        let load = Load::start(fulcrum.web, 2).await;

        // Add `api` on a concrete free port.
        let api = closed_port().await;
        assert!(TcpStream::connect(api).await.is_err(), "{api} is taken");
        let mark = fulcrum.mark();
        cfg.listeners.push(("api", api));
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("listener api: added {api} -> app")),
            "{line}"
        );
        let tally = sequential(api, 5).await;
        assert_eq!(tally.get("a"), Some(&5), "{tally:?}");

        // A keep-alive connection on `api` with a slow request in flight, then remove `api`.
        let mut kept = TestClient::connect(api).await;
        let response = kept.get("/").await.expect("first request on api");
        assert_eq!(response.status, StatusCode::OK);
        let in_flight = tokio::spawn(async move {
            let result = kept.get("/slow/1000").await;
            (kept, result)
        });
        let deadline = Instant::now() + Duration::from_secs(2);
        while !a.requests().iter().any(|r| r.path == "/slow/1000") {
            assert!(Instant::now() < deadline, "the slow request never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mark = fulcrum.mark();
        cfg.listeners.clear();
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(
            line.contains(&format!("listener api: removed {api} (draining)")),
            "{line}"
        );
        let refused = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(api)).await;
        assert!(
            matches!(refused, Ok(Err(_))),
            "the removed listener still accepts connections: {refused:?}"
        );
        let (mut kept, result) =
            within(Duration::from_secs(5), "the in-flight response", in_flight)
                .await
                .expect("in-flight task");
        let response = result.expect("the in-flight request on the removed listener failed");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.text(), "a");
        // The drained connection is closed afterwards rather than served on.
        let next = tokio::time::timeout(Duration::from_secs(2), kept.get("/")).await;
        assert!(
            matches!(next, Ok(Err(_))),
            "the removed listener's connection served another request: {next:?}"
        );

        let report = load.finish().await;
        assert_no_failures(&report);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbindable_listener_rejects_the_whole_reload() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let b = TestBackend::spawn("b").await;
        let dir = TempDir::new("bind");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr()]);
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;
        let load = Load::start(fulcrum.web, 2).await;

        // Port held by the test; the same edit also adds backend b, which must not apply.
        let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind holder");
        let taken = holder.local_addr().expect("holder address");
        let mark = fulcrum.mark();
        cfg.listeners.push(("api", taken));
        cfg.backends.push((b.addr(), 1));
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum
            .wait_log(mark, "config reload rejected", RELOAD_LIMIT)
            .await;
        assert!(
            line.contains(&format!("cannot bind listener api on {taken}")),
            "{line}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            b.request_count(),
            0,
            "part of a rejected reload was applied"
        );
        let (status, body) = admin_request(fulcrum.admin(), http::Method::POST, "/reload").await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

        // Once the port is free, a requested reload applies the same file.
        drop(holder);
        let (status, body) = admin_request(fulcrum.admin(), http::Method::POST, "/reload").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            body.contains(&format!("listener api: added {taken} -> app")),
            "{body}"
        );
        wait_for_traffic(&b, 0, Duration::from_secs(1)).await;
        let tally = sequential(taken, 4).await;
        assert_eq!(tally.values().sum::<usize>(), 4);

        let report = load.finish().await;
        assert_no_failures(&report);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_added_under_load_takes_traffic_with_zero_client_failures() {
    bounded(async {
        let a = TestBackend::spawn("a").await;
        let next = TestBackend::spawn("next").await;
        let dir = TempDir::new("route");
        let path = dir.join("fulcrum.toml");
        let mut cfg = Cfg::new(&[a.addr()]);
        cfg.tail = format!("\n[pools.next]\nbackends = [\"{}\"]\n", next.addr());
        write_in_place(&path, &cfg.text());
        let fulcrum = Fulcrum::start(&path).await;

        let load = Load::start(fulcrum.web, 4).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mark = fulcrum.mark();
        cfg.tail.push_str(
            "\n[[listeners.routes]]\nname = \"everything\"\npath_prefix = \"/\"\npool = \"next\"\n",
        );
        write_in_place(&path, &cfg.text());
        let (_, line) = fulcrum.wait_reloaded(mark).await;
        assert!(line.contains("route everything added"), "{line}");
        wait_for_traffic(&next, 0, Duration::from_secs(1)).await;
        // A request routed just before the swap may still be on its way to `a`.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = a.request_count();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let report = load.finish().await;

        assert_no_failures(&report);
        assert!(
            report.served("a") > 0 && report.served("next") > 0,
            "{report:?}"
        );
        assert_eq!(
            a.request_count(),
            before,
            "the route takes every request once applied"
        );
    })
    .await;
}
