//! Memory under a flood of distinct client keys (spoofed addresses behind a trusted proxy):
//! bounded while they are tracked, and given back once the sweeper forgets them.

use std::time::{Duration, Instant};

use http::StatusCode;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use super::{Fulcrum, PROXY};
use crate::common::{bounded_for, within};

/// Distinct keys in the flood.
const KEYS: u32 = 100_000;
/// Client connections sending it.
const CONNECTIONS: u32 = 16;
/// Most the flood may add to fulcrum's resident memory.
const MAX_GROWTH: u64 = 20 * 1024 * 1024;

/// One request per 10 s per key: a key's bucket is full 10 s after its request, governor
/// forgets it one interval later, and the sweeper runs every 10 s (the refill time).
const CONFIG: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
    [[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n\
    [listeners.rate_limit]\nrequests_per_second = 0.1\nburst = 1\ntrusted_proxies = [\"127.0.0.1\"]\n\n\
    [[listeners.routes]]\nname = \"all\"\nrespond = { status = 204 }\n";

/// Requests written at once on a connection before their responses are read (HTTP/1.1
/// pipelining keeps the client's cost per request low).
const BATCH: u32 = 200;

/// Sends one request from each key in `first..first + count` (as the `X-Forwarded-For` of the
/// trusted proxy), pipelined over [`CONNECTIONS`] connections; returns how many were answered
/// with `expected`.
async fn flood(fulcrum: &Fulcrum, first: u32, count: u32, expected: StatusCode) -> u32 {
    let mut tasks = Vec::new();
    for connection in 0..CONNECTIONS {
        let web = fulcrum.web;
        tasks.push(tokio::spawn(async move {
            let socket = TcpSocket::new_v4().expect("a socket");
            socket.bind((PROXY, 0).into()).expect("bind");
            let mut stream = socket.connect(web).await.expect("connect");
            let keys: Vec<u32> = (first + connection..first + count)
                .step_by(CONNECTIONS as usize)
                .collect();
            let status_line = format!("HTTP/1.1 {} ", expected.as_u16());
            let mut matched = 0;
            let mut buffer = vec![0u8; 64 * 1024];
            for batch in keys.chunks(BATCH as usize) {
                let mut requests = String::new();
                for key in batch {
                    let address = std::net::Ipv4Addr::from(0x0a00_0000 + key);
                    requests.push_str(&format!(
                        "GET / HTTP/1.1\r\nHost: fulcrum.test\r\nX-Forwarded-For: {address}\r\n\r\n"
                    ));
                }
                stream
                    .write_all(requests.as_bytes())
                    .await
                    .expect("write a batch");
                // Read until every response head of the batch is in.
                let mut received = Vec::new();
                let mut heads = 0;
                while heads < batch.len() {
                    let n = within(
                        Duration::from_secs(20),
                        "responses",
                        stream.read(&mut buffer),
                    )
                    .await
                    .expect("read responses");
                    assert!(n > 0, "fulcrum closed the connection");
                    received.extend_from_slice(&buffer[..n]);
                    heads = count_matches(&received, b"HTTP/1.1 ");
                }
                matched += count_matches(&received, status_line.as_bytes());
            }
            u32::try_from(matched).expect("a count")
        }));
    }
    let mut matched = 0;
    for task in tasks {
        matched += task.await.expect("a flood task");
    }
    matched
}

fn count_matches(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|window| *window == needle)
        .count()
}

async fn tracked_keys(fulcrum: &Fulcrum) -> u64 {
    fulcrum.status().await["listeners"][0]["rate_limit"]["tracked_keys"]
        .as_u64()
        .expect("tracked_keys")
}

#[tokio::test]
async fn memory_stays_bounded_under_100_000_keys_and_comes_back_after_eviction() {
    bounded_for(Duration::from_secs(180), async {
        let fulcrum = Fulcrum::start(CONFIG).await;
        // Warm up connections, buffers and the allocator with keys of another range.
        let warm = flood(&fulcrum, 1 << 23, 2_000, StatusCode::NO_CONTENT).await;
        assert_eq!(warm, 2_000);
        let baseline = fulcrum.rss();

        let started = Instant::now();
        let served = flood(&fulcrum, 0, KEYS, StatusCode::NO_CONTENT).await;
        let took = started.elapsed();
        let peak = fulcrum.rss();
        let tracked = tracked_keys(&fulcrum).await;
        eprintln!(
            "flood of {KEYS} keys took {took:?}; RSS {} KiB → {} KiB (+{} KiB); {tracked} keys tracked",
            baseline / 1024,
            peak / 1024,
            peak.saturating_sub(baseline) / 1024
        );
        assert_eq!(served, KEYS, "every new key gets its first request through");
        // Keys live at least 20 s; a slower flood has had its first keys swept already.
        if took < Duration::from_secs(18) {
            assert!(tracked >= u64::from(KEYS), "{tracked} keys tracked");
        } else {
            assert!(tracked >= u64::from(KEYS) / 4, "{tracked} keys tracked");
        }
        assert!(
            peak.saturating_sub(baseline) < MAX_GROWTH,
            "RSS grew by {} KiB",
            peak.saturating_sub(baseline) / 1024
        );
        // The keys seen last are still limited: their buckets are there.
        assert_eq!(
            flood(&fulcrum, KEYS - 64, 64, StatusCode::TOO_MANY_REQUESTS).await,
            64
        );

        // Idle keys are forgotten (at most 30 s after their request) and the memory goes back.
        let deadline = Instant::now() + Duration::from_secs(75);
        loop {
            let tracked = tracked_keys(&fulcrum).await;
            if tracked == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{tracked} keys still tracked");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // The allocator returns freed pages after a short delay.
        let mut after = fulcrum.rss();
        // Back to within half the growth of the baseline (or 1 MiB, when the growth was small).
        let slack = (peak.saturating_sub(baseline) / 2).max(1024 * 1024);
        let returned = |after: u64| after <= baseline + slack;
        let settle = Instant::now() + Duration::from_secs(10);
        while !returned(after) && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(200)).await;
            after = fulcrum.rss();
        }
        eprintln!("after eviction: RSS {} KiB", after / 1024);
        assert!(
            returned(after),
            "RSS {} KiB after eviction; peak {} KiB, baseline {} KiB",
            after / 1024,
            peak / 1024,
            baseline / 1024
        );
    })
    .await;
}
