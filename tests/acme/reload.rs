//! Reload: a listener added with `[listeners.tls.acme]` gets its certificate ordered; one
//! removed stops renewing, and its cache stays.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::TempDir;
use crate::common::backend::TestBackend;
use crate::common::pebble::Pebble;
use crate::{Fulcrum, free_address, wait_for_trusted};

/// `POST /reload` on the admin listener; the status line.
async fn reload(admin: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect to admin");
    stream
        .write_all(b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .expect("send");
    let mut response = Vec::new();
    crate::common::within(
        Duration::from_secs(30),
        "the reload",
        stream.read_to_end(&mut response),
    )
    .await
    .expect("read");
    String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_orders_added_domains_and_stops_renewing_removed_ones() {
    let https = free_address();
    let Some(pebble) = Pebble::start(1, https.port(), None).await else {
        return;
    };
    let backend = TestBackend::spawn("app").await;
    let admin = free_address();
    let dir = TempDir::new("acme-reload");
    let listener = |name: &str, address: SocketAddr, domain: &str| {
        format!(
            "[[listeners]]\nname = \"{name}\"\nlisten = \"{address}\"\npool = \"app\"\n[listeners.tls.acme]\ndomains = [\"{domain}\"]\ndirectory = \"{}\"\ndirectory_ca = {:?}\ncache = \"cache\"\n\n",
            pebble.directory,
            pebble.directory_ca.display().to_string(),
        )
    };
    let head = format!("[admin]\nlisten = \"{admin}\"\n\n");
    let pools = format!("[pools.app]\nbackends = [\"{}\"]\n", backend.addr());
    let one = format!("{head}{}{pools}", listener("a", https, "a.example.com"));
    let fulcrum = Fulcrum::start(&dir, &one, https).await;
    let root = pebble.root_pem().await;
    let logs = || format!("{}\n--- pebble ---\n{}", fulcrum.log(), pebble.log());
    wait_for_trusted(https, &root, "a.example.com", logs).await;

    // Pebble validates TLS-ALPN-01 on one port only: the added domain goes on the same
    // listener's port, in a listener that replaces it.
    let two = format!("{head}{}{pools}", listener("b", https, "b.example.com"));
    dir.write("fulcrum.toml", &two);
    let status = reload(admin).await;
    assert!(status.contains(" 200 "), "{status}\n{}", fulcrum.log());
    wait_for_trusted(https, &root, "b.example.com", logs).await;
    let log = fulcrum.log();
    assert!(
        log.contains("ACME certificate no longer configured; renewal stopped (the cache is kept)"),
        "{log}"
    );
    let cached: Vec<String> = std::fs::read_dir(dir.join("cache"))
        .expect("the cache")
        .flatten()
        .flat_map(|ca| std::fs::read_dir(ca.path()).into_iter().flatten().flatten())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        cached.contains(&"a.example.com.crt".to_owned())
            && cached.contains(&"b.example.com.crt".to_owned()),
        "{cached:?}"
    );
    let certificates = crate::status_certificates(admin).await;
    assert_eq!(certificates.len(), 1, "{certificates:?}");
    assert_eq!(certificates[0]["names"][0], "b.example.com");
}
