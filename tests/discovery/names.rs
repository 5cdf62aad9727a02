//! A/AAAA discovery: backends appear and disappear with the records, keep their state while
//! their address stays, drain when it goes; http and tcp pools alike.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

use super::*;
use common::bounded;

#[tokio::test]
async fn backends_follow_the_records_in_http_and_tcp_pools() {
    bounded(async {
        let (port, _backends) = backends_on_one_port(&[2, 3, 4]).await;
        let Some(dns) = Dnsmasq::start(&hosts("app.test", &[2, 3]), 0, &[]) else {
            return;
        };
        let refresh = REFRESH.as_millis();
        let text = config(
            &dns,
            &format!(
                "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\npool = \"app\"\n\n\
                 [[listeners]]\nname = \"raw\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"tcp\"\npool = \"raw\"\n\n\
                 [pools.app]\ndiscover = {{ name = \"app.test\", port = {port}, refresh = \"{refresh}ms\" }}\n\n\
                 [pools.raw]\ndiscover = {{ name = \"app.test\", port = {port}, refresh = \"{refresh}ms\" }}\n"
            ),
        );
        let balancer = Running::start(&text).await;
        let (web, raw) = (balancer.addr("web"), balancer.addr("raw"));
        // The first answer is in before the listeners accept.
        assert_eq!(served(web, 8).await, set(&["b2", "b3"]));

        dns.set_hosts(&hosts("app.test", &[3, 4]));
        let took = wait_served_by(web, &["b3", "b4"], CHANGE_LIMIT).await;
        println!("http pool followed the change in {took:?}");

        // The tcp pool: one backend per connection.
        let start = tokio::time::Instant::now();
        loop {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..8 {
                let response = fetch(raw, "/").await;
                seen.insert(response.served_by().unwrap_or("?").to_owned());
            }
            if seen == set(&["b3", "b4"]) {
                break;
            }
            assert!(start.elapsed() < SLACK_LIMIT, "tcp pool served by {seen:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        let status = pool_status(balancer.admin, "app").await;
        let discovery = &status["discovery"];
        assert_eq!(discovery["name"], "app.test", "{status}");
        assert_eq!(discovery["port"], port, "{status}");
        assert_eq!(discovery["backends"], 2, "{status}");
        assert_eq!(discovery["last_outcome"], "ok", "{status}");
        assert!(discovery["last_good_unix"].as_f64().is_some(), "{status}");
        let metrics = admin_get(balancer.admin, "/metrics").await.text();
        assert!(
            metrics.contains("fulcrum_discovery_refreshes_total{pool=\"app\",outcome=\"ok\"}"),
            "{metrics}"
        );
        assert!(
            metrics.contains("fulcrum_discovery_backends{pool=\"raw\"}"),
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test]
async fn backends_that_stay_keep_their_state_and_removed_ones_drain() {
    bounded(async {
        let (port, backends) = backends_on_one_port(&[2, 3, 4]).await;
        let Some(dns) = Dnsmasq::start(&hosts("app.test", &[2, 3]), 0, &[]) else {
            return;
        };
        let check = "[pools.app.health_check]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\njitter = \"0s\"\nhealthy_threshold = 1\nunhealthy_threshold = 1\n";
        let text = web_config(&dns, &format!("name = \"app.test\", port = {port}"), check);
        let balancer = start(&text, "web").await;
        let admin = balancer.admin_addr();
        let (b2, b3, b4) = (&backends[0], &backends[1], &backends[2]);

        // b3 fails its checks; b2 takes a request that stays in flight.
        b3.set_health(503);
        wait_status(admin, "app", Duration::from_secs(5), "b3 unhealthy", |pool| {
            backend_status(pool, b3.address)["state"] == "unhealthy"
        })
        .await;
        let web = balancer.addr();
        let held = tokio::spawn(async move { fetch(web, "/hold").await });
        common::wait_until(Duration::from_secs(5), "the request held at b2", || {
            b2.held() == 1
        })
        .await;
        let before = pool_status(admin, "app").await;
        let requests_before = backend_status(&before, b2.address)["requests"].clone();

        // b4 joins: b2 and b3 are the same backends as before, with their state.
        dns.set_hosts(&hosts("app.test", &[2, 3, 4]));
        let after = wait_status(admin, "app", CHANGE_LIMIT, "b4 added", |pool| {
            pool["backends"]
                .as_array()
                .is_some_and(|backends| backends.iter().any(|b| b["address"] == b4.address.to_string()))
        })
        .await;
        assert_eq!(backend_status(&after, b2.address)["in_flight"], 1, "{after}");
        assert_eq!(backend_status(&after, b2.address)["requests"], requests_before, "{after}");
        assert_eq!(backend_status(&after, b3.address)["state"], "unhealthy", "{after}");

        // b2 goes: it drains its request instead of cutting it.
        dns.set_hosts(&hosts("app.test", &[3, 4]));
        let drained = wait_status(admin, "app", CHANGE_LIMIT, "b2 draining", |pool| {
            pool["backends"].as_array().is_some_and(|backends| {
                backends.iter().any(|b| {
                    b["address"] == b2.address.to_string() && b["state"] == "draining"
                })
            })
        })
        .await;
        assert_eq!(backend_status(&drained, b2.address)["in_flight"], 1, "{drained}");
        assert_eq!(served(web, 4).await, set(&["b4"]), "b3 is still unhealthy");
        b2.release();
        let response = held.await.expect("the held request's task");
        assert_eq!(response.status, StatusCode::OK);
        assert_eq!(response.served_by(), Some("b2"));
    })
    .await;
}

#[tokio::test]
async fn a_pool_waiting_for_its_first_answer_answers_503_then_serves() {
    bounded(async {
        let (port, _backends) = backends_on_one_port(&[2]).await;
        let Some(dns) = Dnsmasq::start("", 0, &[]) else {
            return;
        };
        let text = web_config(&dns, &format!("name = \"app.test\", port = {port}"), "");
        let balancer = start(&text, "web").await;
        let response = fetch(balancer.addr(), "/").await;
        assert_eq!(
            response.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            response.text()
        );
        let status = pool_status(balancer.admin_addr(), "app").await;
        assert_eq!(status["discovery"]["last_outcome"], "nxdomain", "{status}");
        assert!(status["discovery"]["last_good_unix"].is_null(), "{status}");

        dns.set_hosts(&hosts("app.test", &[2]));
        let took = wait_served_by(balancer.addr(), &["b2"], CHANGE_LIMIT).await;
        println!("first backend served {took:?} after its record appeared");
    })
    .await;
}

#[tokio::test]
async fn a_reload_keeps_the_discovered_backends_and_their_state() {
    bounded(async {
        let (port, _backends) = backends_on_one_port(&[2, 3]).await;
        let Some(dns) = Dnsmasq::start(&hosts("app.test", &[2, 3]), 0, &[]) else {
            return;
        };
        let dir = common::TempDir::new("discovery-reload");
        let file = dir.join("fulcrum.toml");
        let text = web_config(&dns, &format!("name = \"app.test\", port = {port}"), "");
        dir.write("fulcrum.toml", &text);
        let balancer = Running::start_from(Some(&file), &text).await;
        let (web, admin) = (balancer.addr("web"), balancer.admin);
        assert_eq!(served(web, 8).await, set(&["b2", "b3"]));
        let before = pool_status(admin, "app").await;

        // A reload that changes another setting of the pool: the discovered backends stay,
        // with their counters, and the reload's diff does not remove them.
        dir.write("fulcrum.toml", &format!("{text}retries = 1\n"));
        let reload =
            common::balancer::admin_request(admin, http::Method::POST, "/reload", &[]).await;
        assert_eq!(reload.status, StatusCode::OK, "{}", reload.text());
        assert!(!reload.text().contains("draining"), "{}", reload.text());
        let after = pool_status(admin, "app").await;
        for backend in before["backends"].as_array().expect("backends") {
            let address: SocketAddr = backend["address"]
                .as_str()
                .and_then(|a| a.parse().ok())
                .expect("an address");
            let kept = backend_status(&after, address);
            assert_eq!(kept["requests"], backend["requests"], "{after}");
            assert_eq!(kept["state"], "healthy", "{after}");
        }
        assert_eq!(
            after["backends"].as_array().map(Vec::len),
            Some(2),
            "{after}"
        );
        assert_eq!(served(web, 8).await, set(&["b2", "b3"]));
        let metrics = admin_get(admin, "/metrics").await.text();
        assert!(
            metrics.contains("fulcrum_discovery_backends{pool=\"app\"} 2"),
            "{metrics}"
        );

        // A reload that turns discovery off for the pool: one static backend remains, the
        // status has no discovery object and the gauge says no discovered backends.
        let discover = text
            .lines()
            .find(|line| line.starts_with("discover ="))
            .expect("a discover line");
        dir.write(
            "fulcrum.toml",
            &text.replace(discover, &format!("backends = [\"127.0.0.2:{port}\"]")),
        );
        let reload =
            common::balancer::admin_request(admin, http::Method::POST, "/reload", &[]).await;
        assert_eq!(reload.status, StatusCode::OK, "{}", reload.text());
        let status = pool_status(admin, "app").await;
        assert!(status.get("discovery").is_none(), "{status}");
        assert_eq!(served(web, 8).await, set(&["b2"]));
        let metrics = admin_get(admin, "/metrics").await.text();
        assert!(
            metrics.contains("fulcrum_discovery_backends{pool=\"app\"} 0"),
            "{metrics}"
        );
    })
    .await;
}
