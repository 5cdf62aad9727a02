//! Active checks: a killed backend, a failing health endpoint, a new backend's first check, and
//! the checks of a removed backend.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_costs_no_client_errors_and_ramps_back_after_restart() {
    bounded(async {
        let a = ControlledBackend::spawn("a").await;
        let b = ControlledBackend::spawn("b").await;
        let mut c = ControlledBackend::spawn("c").await;
        let mut lb = TestBalancer::builder()
            .backend(a.addr())
            .backend(b.addr())
            .backend(c.addr())
            .pool("slow_start", "\"1s\"")
            .pool("health_check", FAST_CHECK)
            .pool("passive", NO_PASSIVE)
            .start()
            .await;

        // The first probes bring everyone up; wait for that before loading.
        wait_until(
            Duration::from_secs(3),
            "first probes of every backend",
            || a.probe_count() > 0 && b.probe_count() > 0 && c.probe_count() > 0,
        )
        .await;
        wait_serving(&lb).await;

        let stop = CancellationToken::new();
        let load = spawn_load(lb.addr(), 4, stop.clone());
        wait_until(
            Duration::from_secs(3),
            "every backend to serve load",
            || a.hit_count() > 10 && b.hit_count() > 10 && c.hit_count() > 10,
        )
        .await;
        // Let the load run steadily for a moment (it is the workload, not a synchronisation).
        tokio::time::sleep(Duration::from_millis(300)).await;

        let killed_at = Instant::now();
        c.stop().await;
        // Restart once the checks must have marked it down: interval × unhealthy_threshold plus
        // slack. Had it not been marked down by then, the load would reach it at once after the
        // restart instead of only after `healthy_threshold` passing checks.
        tokio::time::sleep_until((killed_at + INTERVAL * 2 + SLACK).into()).await;
        let restarted_at = Instant::now();
        c.restart().await;
        wait_until(
            Duration::from_secs(3),
            "the restarted backend to receive traffic",
            || !c.hits_since(restarted_at).is_empty(),
        )
        .await;
        let back_at = c.hits_since(restarted_at)[0];
        tokio::time::sleep_until((back_at + Duration::from_millis(2000)).into()).await;
        stop.cancel();
        let samples = within(Duration::from_secs(10), "the load to stop", load)
            .await
            .expect("the load task panicked");
        lb.stop().await;

        assert!(
            samples.len() > 500,
            "too little load: {} requests",
            samples.len()
        );
        let failed = failures(&samples);
        assert!(
            failed.is_empty(),
            "{} of {} requests failed, first: {:?}",
            failed.len(),
            samples.len(),
            failed.first()
        );

        let probes = c.probes_since(restarted_at);
        assert!(
            probes.len() >= 2 && back_at > probes[1],
            "after the restart at +{}ms the backend got traffic at +{}ms, before its second \
             passing check (checks at {:?} ms): it was not marked down within {}ms of the kill, \
             or came back too early",
            ms(restarted_at - killed_at),
            ms(back_at - killed_at),
            probes
                .iter()
                .map(|p| ms(*p - killed_at))
                .collect::<Vec<_>>(),
            ms(restarted_at - killed_at),
        );
        assert!(
            back_at - probes[1] < SLACK,
            "back {}ms after its second passing check",
            ms(back_at - probes[1])
        );

        // Slow start: clearly under its fair third at first, its fair third once ramped.
        let (early, early_total) =
            share(&samples, "c", back_at, back_at + Duration::from_millis(300));
        let (late, late_total) = share(
            &samples,
            "c",
            back_at + Duration::from_millis(1100),
            back_at + Duration::from_millis(2000),
        );
        assert!(
            early_total >= 30 && late_total >= 30,
            "too few samples: {early_total}, {late_total}"
        );
        let early_share = early as f64 / early_total as f64;
        let late_share = late as f64 / late_total as f64;
        assert!(
            early_share < 0.2,
            "first 300ms after coming back: {early}/{early_total} = {early_share:.3} (fair 0.333)"
        );
        assert!(
            (0.25..=0.42).contains(&late_share),
            "after the ramp: {late}/{late_total} = {late_share:.3} (fair 0.333)"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_health_endpoint_takes_a_backend_out_and_passing_brings_it_back() {
    bounded(async {
        let a = ControlledBackend::spawn("a").await;
        let b = ControlledBackend::spawn("b").await;
        let mut lb = TestBalancer::builder()
            .backend(a.addr())
            .backend(b.addr())
            .pool("health_check", FAST_CHECK)
            .pool("passive", NO_PASSIVE)
            .start()
            .await;
        wait_serving(&lb).await;
        let stop = CancellationToken::new();
        let load = spawn_load(lb.addr(), 2, stop.clone());
        wait_until(
            Duration::from_secs(3),
            "both backends to serve load",
            || a.hit_count() > 10 && b.hit_count() > 10,
        )
        .await;

        let failing_at = Instant::now();
        b.set_health(503);
        let out_by = failing_at + INTERVAL * 2 + SLACK;
        tokio::time::sleep_until((out_by + Duration::from_millis(500)).into()).await;
        let late_hits = b.hits_since(out_by);
        let last_hit = b.hits().last().map(|hit| hit.at).expect("b had traffic");
        assert!(
            late_hits.is_empty(),
            "b still got {} requests more than {}ms after its checks began failing (last at +{}ms)",
            late_hits.len(),
            ms(out_by - failing_at),
            ms(last_hit - failing_at)
        );
        let a_during = a.hits_since(out_by).len();
        assert!(a_during > 20, "a took the load meanwhile: {a_during}");

        let passing_at = Instant::now();
        b.set_health(200);
        wait_until(Duration::from_secs(3), "b to get traffic again", || {
            !b.hits_since(passing_at).is_empty()
        })
        .await;
        let back_at = b.hits_since(passing_at)[0];
        stop.cancel();
        let samples = within(Duration::from_secs(10), "the load to stop", load)
            .await
            .expect("the load task panicked");
        lb.stop().await;

        let probes = b.probes_since(passing_at);
        assert!(
            probes.len() >= 2 && back_at > probes[1],
            "b got traffic at +{}ms, before its second passing check (checks at {:?} ms)",
            ms(back_at - passing_at),
            probes
                .iter()
                .map(|p| ms(*p - passing_at))
                .collect::<Vec<_>>()
        );
        let failed = failures(&samples);
        assert!(failed.is_empty(), "failed requests: {failed:?}");
    })
    .await;
}

/// The listener accepts only after the first round of checks: while one backend's first check
/// is held, a request already sent waits (it is neither answered 503 nor served); once that
/// check passes, one pass alone brings the backend up and both serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_round_of_checks_comes_before_traffic_and_one_pass_brings_a_backend_up() {
    bounded(async {
        let a = ControlledBackend::spawn("a").await;
        let fresh = ControlledBackend::spawn("fresh").await;
        fresh.hold_health(true);
        // A long interval and a high healthy_threshold: coming up within one interval shows
        // that the first pass alone brings a new backend up.
        let check = "{ path = \"/health\", interval = \"3s\", timeout = \"3s\", jitter = \"0s\", \
                     healthy_threshold = 3, unhealthy_threshold = 2 }";
        let mut lb = TestBalancer::builder()
            .backend(a.addr())
            .backend(fresh.addr())
            .pool("health_check", check)
            .pool("passive", NO_PASSIVE)
            .start()
            .await;
        wait_until(
            Duration::from_secs(3),
            "the first probe of the held backend",
            || fresh.probe_count() == 1,
        )
        .await;
        let mut client = lb.client().await;
        let first = tokio::spawn(async move {
            let response = client.get("/first").await.expect("a response");
            (response, client)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !first.is_finished(),
            "answered before the first round of checks"
        );
        assert_eq!(a.hit_count() + fresh.hit_count(), 0);

        let released_at = Instant::now();
        fresh.hold_health(false);
        let (response, mut client) = within(Duration::from_secs(2), "the first answer", first)
            .await
            .expect("client task");
        assert_eq!(response.status, StatusCode::OK);
        within(Duration::from_secs(2), "the new backend to serve", async {
            loop {
                let response = client.get("/after").await.expect("a response");
                assert_eq!(response.status, StatusCode::OK);
                if response.served_by() == Some("fresh") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(released_at.elapsed() < Duration::from_secs(2));
        assert_eq!(
            fresh.probe_count(),
            1,
            "up after its first passing check alone"
        );
        lb.stop().await;
    })
    .await;
}

/// Issue #3: the checks of a backend removed by a reload stop (no more probes arrive at it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_of_a_removed_backend_stop() {
    bounded(async {
        let kept = ControlledBackend::spawn("kept").await;
        let removed = ControlledBackend::spawn("removed").await;
        let dir = std::env::temp_dir().join(format!(
            "fulcrum-health-removed-{}-{}",
            std::process::id(),
            removed.addr().port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("fulcrum.toml");
        let config_for = |backends: &str| {
            format!(
                "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n\
                 [pools.app]\nbackends = [{backends}]\n\n\
                 [pools.app.health_check]\npath = \"/health\"\ninterval = \"50ms\"\n\
                 timeout = \"50ms\"\njitter = \"0s\"\n"
            )
        };
        let both = config_for(&format!("\"{}\", \"{}\"", kept.addr(), removed.addr()));
        std::fs::write(&path, &both).expect("write config");
        let config = fulcrum::Config::parse(&path.display().to_string(), &both).expect("valid");
        let server = fulcrum::Server::bind(config)
            .await
            .expect("bind")
            .with_config_file(&path, both.clone());
        let reload = server.reload_handle();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn(server.run(async {
            let _ = stop_rx.await;
        }));

        wait_until(Duration::from_secs(5), "probes reach both backends", || {
            kept.probe_count() >= 3 && removed.probe_count() >= 3
        })
        .await;
        let only_kept = config_for(&format!("\"{}\"", kept.addr()));
        std::fs::write(&path, &only_kept).expect("rewrite config");
        let outcome = reload.reload().await.expect("server running");
        assert!(
            matches!(outcome, fulcrum::reload::ReloadOutcome::Applied(_)),
            "{outcome:?}"
        );
        // A probe already in flight may still land; after that, none.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let settled = std::time::Instant::now();
        let kept_before = kept.probe_count();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            removed.probes_since(settled).is_empty(),
            "the removed backend was still probed"
        );
        assert!(
            kept.probe_count() >= kept_before + 5,
            "the kept backend's checks stopped too"
        );

        let _ = stop_tx.send(());
        running.await.expect("server task");
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await;
}

/// A backend killed under load is ejected by the failed requests and marked down by its
/// checks; once restarted, `healthy_threshold` passing checks end the ejection too, long before
/// its 30 s are over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_checks_end_a_passive_ejection_after_a_restart() {
    bounded(async {
        let a = ControlledBackend::spawn("a").await;
        let b = ControlledBackend::spawn("b").await;
        let mut c = ControlledBackend::spawn("c").await;
        let mut lb = TestBalancer::builder()
            .backend(a.addr())
            .backend(b.addr())
            .backend(c.addr())
            .pool("retries", "2")
            .pool("health_check", FAST_CHECK)
            .pool(
                "passive",
                "{ consecutive_failures = 1, ejection_time = \"30s\", \
                 max_ejection_time = \"30s\", max_ejected_percent = 50 }",
            )
            .start()
            .await;
        wait_serving(&lb).await;
        let stop = CancellationToken::new();
        let load = spawn_load(lb.addr(), 4, stop.clone());
        wait_until(Duration::from_secs(3), "c to serve load", || {
            c.hit_count() > 10
        })
        .await;

        let killed_at = Instant::now();
        c.stop().await;
        // Down by its checks and (from the refused connects) ejected; then back up.
        tokio::time::sleep_until((killed_at + INTERVAL * 2 + SLACK).into()).await;
        let restarted_at = Instant::now();
        c.restart().await;
        let limit = INTERVAL * 2 + Duration::from_secs(1);
        wait_until(limit, "the restarted backend to serve again", || {
            !c.hits_since(restarted_at).is_empty()
        })
        .await;
        stop.cancel();
        let samples = within(Duration::from_secs(10), "the load to stop", load)
            .await
            .expect("the load task panicked");
        lb.stop().await;
        assert!(!samples.is_empty());
    })
    .await;
}

/// The example backend (`examples/backend.rs`) as a child process of the test.
struct ChildBackend {
    child: std::process::Child,
    address: SocketAddr,
}

impl ChildBackend {
    /// The example's binary, which `cargo test` builds next to fulcrum's.
    fn binary() -> Option<std::path::PathBuf> {
        let binary = std::path::Path::new(env!("CARGO_BIN_EXE_fulcrum"))
            .parent()?
            .join("examples")
            .join("backend");
        binary.exists().then_some(binary)
    }

    /// Starts the example called `name` on `port` (0: any) and waits for its "listening" line.
    fn start(binary: &std::path::Path, name: &str, port: u16) -> ChildBackend {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(binary)
            .args(["--port", &port.to_string(), "--name", name])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the example backend");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the example's first line");
        let address = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("http://"))
            .and_then(|address| address.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        ChildBackend { child, address }
    }

    /// SIGKILL: no goodbye to anyone, connections reset by the kernel.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildBackend {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_backend_process_serves_again_within_two_checks_of_its_restart() {
    let Some(binary) = ChildBackend::binary() else {
        common::tools::skip("the example backend is not built (run `cargo test`)");
        return;
    };
    bounded(async {
        let a = ControlledBackend::spawn("a").await;
        let b = ControlledBackend::spawn("b").await;
        let mut c = ChildBackend::start(&binary, "c", 0);
        let port = c.address.port();
        let mut lb = TestBalancer::builder()
            .backend(a.addr())
            .backend(b.addr())
            .backend(c.address)
            .pool("health_check", FAST_CHECK)
            .pool("passive", NO_PASSIVE)
            .start()
            .await;
        wait_serving(&lb).await;
        let stop = CancellationToken::new();
        let load = spawn_load(lb.addr(), 4, stop.clone());
        // The load runs on every backend for a moment (it is the workload, not a synchronisation).
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.kill();
        tokio::time::sleep(INTERVAL * 2 + SLACK).await;
        let restarted_at = Instant::now();
        let c = ChildBackend::start(&binary, "c", port);
        tokio::time::sleep(INTERVAL * 2 + Duration::from_secs(2)).await;
        stop.cancel();
        let samples = within(Duration::from_secs(10), "the load to stop", load)
            .await
            .expect("the load task panicked");
        lb.stop().await;
        drop(c);

        let failed = failures(&samples);
        assert!(
            failed.is_empty(),
            "{} of {} requests failed, first: {:?}",
            failed.len(),
            samples.len(),
            failed.first()
        );
        let back_at = samples
            .iter()
            .find(|sample| sample.at >= restarted_at && sample.served_by() == Some("c"))
            .map(|sample| sample.at)
            .expect("the restarted process served again");
        assert!(
            back_at - restarted_at <= INTERVAL * 2 + Duration::from_secs(1),
            "served again {}ms after its restart",
            ms(back_at - restarted_at)
        );
    })
    .await;
}
