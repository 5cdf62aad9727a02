//! Resolver failures never empty a pool: error answers (REFUSED, SERVFAIL), an upstream that never
//! answers, a killed DNS server all keep the last good set; NXDOMAIN is believed only after
//! it has been the answer for twice the refresh interval.

use std::time::Duration;

use http::StatusCode;

use super::*;
use common::bounded;

/// Serves `rounds` rounds of 8 requests over at least `span`, each served by exactly `want`.
async fn keeps_serving(address: SocketAddr, want: &[&str], span: Duration) {
    let start = tokio::time::Instant::now();
    while start.elapsed() < span {
        assert_eq!(served(address, 8).await, set(want));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn failed_lookups_keep_the_last_good_set() {
    bounded(async {
        let (port, _backends) = backends_on_one_port(&[2, 3]).await;
        let Some(mut dns) = Dnsmasq::start(&hosts("app.test", &[2, 3]), 0, &[]) else {
            return;
        };
        let text = web_config(&dns, &format!("name = \"app.test\", port = {port}"), "");
        let balancer = start(&text, "web").await;
        let (web, admin) = (balancer.addr(), balancer.admin_addr());
        assert_eq!(served(web, 8).await, set(&["b2", "b3"]));

        // REFUSED: the name is forwarded to no upstream at all.
        dns.set_hosts("");
        dns.set_servers("server=/app.test/#\n");
        let status = wait_status(admin, "app", SLACK_LIMIT, "a failed lookup", |pool| {
            pool["discovery"]["last_outcome"] == "error"
        })
        .await;
        let error = status["discovery"]["last_error"]
            .as_str()
            .unwrap_or_default();
        assert!(error.contains("Refused"), "{status}\n{}", dns.log());
        keeps_serving(web, &["b2", "b3"], REFRESH * 3).await;

        // SERVFAIL from the name's authoritative server, relayed by dnsmasq.
        let servfail = common::dnsmasq::serve_servfail().await;
        dns.set_servers(&format!(
            "server=/app.test/{}#{}\n",
            servfail.ip(),
            servfail.port()
        ));
        let status = wait_status(admin, "app", SLACK_LIMIT, "a SERVFAIL answer", |pool| {
            pool["discovery"]["last_error"]
                .as_str()
                .is_some_and(|error| !error.contains("Refused"))
        })
        .await;
        let error = status["discovery"]["last_error"]
            .as_str()
            .unwrap_or_default();
        assert!(error.contains("Server Failure"), "{status}\n{}", dns.log());
        keeps_serving(web, &["b2", "b3"], REFRESH * 3).await;

        // An upstream that never answers: every lookup times out.
        dns.set_servers("server=/app.test/127.0.0.1#9\n");
        wait_status(
            admin,
            "app",
            Duration::from_secs(3),
            "a timed-out lookup",
            |pool| {
                pool["discovery"]["last_error"]
                    .as_str()
                    .is_some_and(|error| !error.contains("answered"))
            },
        )
        .await;
        keeps_serving(web, &["b2", "b3"], REFRESH * 3).await;

        // The server is gone.
        dns.kill();
        keeps_serving(web, &["b2", "b3"], REFRESH * 4).await;
        let status = pool_status(admin, "app").await;
        let discovery = &status["discovery"];
        assert_eq!(discovery["last_outcome"], "error", "{status}");
        assert_eq!(discovery["backends"], 2, "{status}");
        let good = discovery["last_good_unix"]
            .as_f64()
            .expect("a last good answer");
        let looked = discovery["last_lookup_unix"]
            .as_f64()
            .expect("a last lookup");
        assert!(looked > good, "{status}");
        let metrics = admin_get(admin, "/metrics").await.text();
        assert!(
            metrics.contains("fulcrum_discovery_refreshes_total{pool=\"app\",outcome=\"error\"}"),
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test]
async fn nxdomain_is_believed_only_after_twice_the_refresh() {
    bounded(async {
        let (port, _backends) = backends_on_one_port(&[2]).await;
        let Some(dns) = Dnsmasq::start(&hosts("app.test", &[2]), 0, &[]) else {
            return;
        };
        let text = web_config(&dns, &format!("name = \"app.test\", port = {port}"), "");
        let balancer = start(&text, "web").await;
        let (web, admin) = (balancer.addr(), balancer.admin_addr());
        assert_eq!(served(web, 4).await, set(&["b2"]));

        // Every NXDOMAIN comes after this instant, and the set may only go 2 × refresh after
        // the first one.
        let removed = tokio::time::Instant::now();
        dns.set_hosts("");
        wait_status(admin, "app", SLACK_LIMIT, "an NXDOMAIN answer", |pool| {
            pool["discovery"]["last_outcome"] == "nxdomain"
        })
        .await;
        let limit = REFRESH * 2 + SLACK_LIMIT;
        loop {
            let response = fetch(web, "/").await;
            if response.status == StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
            assert_eq!(response.served_by(), Some("b2"));
            assert!(removed.elapsed() < limit, "still serving after {limit:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let believed = removed.elapsed();
        println!("NXDOMAIN believed {believed:?} after the record went");
        assert!(
            believed >= REFRESH * 2,
            "NXDOMAIN believed after only {believed:?}"
        );
        let status = pool_status(admin, "app").await;
        assert_eq!(status["discovery"]["backends"], 0, "{status}");
        assert!(
            status["discovery"]["last_good_unix"].as_f64().is_some(),
            "{status}"
        );

        dns.set_hosts(&hosts("app.test", &[2]));
        wait_served_by(web, &["b2"], SLACK_LIMIT).await;
    })
    .await;
}
