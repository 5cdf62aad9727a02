//! SRV discovery: each record's target is resolved to its addresses, its port and weight are
//! the backend's, and only the lowest priority serves.

use super::*;
use common::bounded;

#[tokio::test]
async fn srv_records_give_ports_and_weights() {
    bounded(async {
        // Three backends on three ports: SRV carries the port.
        let b2 = Backend::bind(2, 0).await.expect("bind b2");
        let b3 = Backend::bind(3, 0).await.expect("bind b3");
        let b4 = Backend::bind(4, 0).await.expect("bind b4");
        let service = "_http._tcp.app.test";
        let records = [
            format!("{service},b2.test,{},0,1", b2.address.port()),
            format!("{service},b3.test,{},0,3", b3.address.port()),
            // A backup (higher priority value): not used while priority 0 has targets.
            format!("{service},b4.test,{},1,100", b4.address.port()),
        ];
        let records: Vec<&str> = records.iter().map(String::as_str).collect();
        let zone = "127.0.0.2 b2.test\n127.0.0.3 b3.test\n127.0.0.4 b4.test\n";
        let Some(dns) = Dnsmasq::start(zone, 0, &records) else {
            return;
        };
        let text = web_config(&dns, &format!("srv = \"{service}\""), "");
        let balancer = start(&text, "web").await;

        let status = pool_status(balancer.admin_addr(), "app").await;
        assert_eq!(status["discovery"]["srv"], service, "{status}");
        assert_eq!(backend_status(&status, b2.address)["weight"], 1, "{status}");
        assert_eq!(backend_status(&status, b3.address)["weight"], 3, "{status}");
        assert_eq!(
            status["backends"].as_array().map(Vec::len),
            Some(2),
            "{status}"
        );

        // Smooth weighted round-robin: exactly 1:3 over whole periods.
        let mut client = TestClient::connect(balancer.addr()).await;
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..40 {
            let response = client.get("/").await.expect("a response");
            *counts
                .entry(response.served_by().unwrap_or("?").to_owned())
                .or_default() += 1;
        }
        assert_eq!(counts.get("b2"), Some(&10), "{counts:?}");
        assert_eq!(counts.get("b3"), Some(&30), "{counts:?}");
        drop(dns);
    })
    .await;
}
