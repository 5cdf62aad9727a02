//! The PROXY protocol: byte-exact v1/v2 headers sent to backends, and headers accepted from a
//! front balancer (forwarded, stripped, timed out, refused).

use super::*;

use fulcrum::Server;
use tokio_util::sync::CancellationToken;

/// Sends `payload` through `lb` to a [`Mode::Capture`] backend; returns the client's local port
/// and everything the backend received.
async fn capture_through(lb: &TestBalancer, backend: &Backend, payload: &[u8]) -> (u16, Vec<u8>) {
    let mut stream = lb.connect().await;
    let port = stream.local_addr().expect("client address").port();
    assert_eq!(exchange(&mut stream, payload).await, b"");
    (port, backend.next_report().await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_sends_a_byte_exact_proxy_v1_header() {
    bounded_for(TEST_LIMIT, async {
        let backend = Backend::spawn("capture", Mode::Capture).await;
        let mut lb = start(&tcp_config(&[backend.addr], "", "proxy_protocol = \"v1\"")).await;
        let (client_port, received) = capture_through(&lb, &backend, b"hello").await;
        let expected = format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {}\r\nhello",
            lb.addr().port()
        );
        assert_eq!(
            String::from_utf8_lossy(&received),
            expected,
            "bytes at the backend"
        );
        assert_eq!(received, expected.as_bytes());
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_sends_a_byte_exact_proxy_v2_header() {
    bounded_for(TEST_LIMIT, async {
        let backend = Backend::spawn("capture", Mode::Capture).await;
        let mut lb = start(&tcp_config(&[backend.addr], "", "proxy_protocol = \"v2\"")).await;
        let (client_port, received) = capture_through(&lb, &backend, b"hello").await;
        let mut expected = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54,
            0x0A, // signature
            0x21, // version 2, PROXY
            0x11, // AF_INET, STREAM
            0x00, 0x0C, // 12 address bytes
            127, 0, 0, 1, // source
            127, 0, 0, 1, // destination
        ];
        expected.extend_from_slice(&client_port.to_be_bytes());
        expected.extend_from_slice(&lb.addr().port().to_be_bytes());
        expected.extend_from_slice(b"hello");
        assert_eq!(received, expected, "bytes at the backend");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_headers_for_an_ipv6_client_are_byte_exact() {
    bounded_for(TEST_LIMIT, async {
        let backend = Backend::spawn("capture", Mode::Capture).await;
        for version in ["v1", "v2"] {
            let text = tcp_config(
                &[backend.addr],
                "",
                &format!("proxy_protocol = \"{version}\""),
            )
            .replace("127.0.0.1:0", "[::1]:0");
            let Ok(config) = Config::parse("l4.toml", &text) else {
                panic!("config: {text}");
            };
            let server = match Server::bind(config).await {
                Ok(server) => server,
                Err(err) => {
                    println!("skipping: cannot bind [::1] ({err})");
                    return;
                }
            };
            let addr = server.local_addr("db").expect("bound");
            let shutdown = CancellationToken::new();
            let task = tokio::spawn(server.run(shutdown.clone().cancelled_owned()));
            let mut stream = TcpStream::connect(addr).await.expect("connect over IPv6");
            let client_port = stream.local_addr().expect("client address").port();
            assert_eq!(exchange(&mut stream, b"six").await, b"");
            let received = backend.next_report().await;
            let expected = if version == "v1" {
                format!("PROXY TCP6 ::1 ::1 {client_port} {}\r\nsix", addr.port()).into_bytes()
            } else {
                let mut expected = vec![
                    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21,
                    0x21, // AF_INET6, STREAM
                    0x00, 0x24, // 36 address bytes
                ];
                let loopback = std::net::Ipv6Addr::LOCALHOST.octets();
                expected.extend_from_slice(&loopback);
                expected.extend_from_slice(&loopback);
                expected.extend_from_slice(&client_port.to_be_bytes());
                expected.extend_from_slice(&addr.port().to_be_bytes());
                expected.extend_from_slice(b"six");
                expected
            };
            assert_eq!(received, expected, "{version}");
            shutdown.cancel();
            within(Duration::from_secs(5), "shutdown", task)
                .await
                .expect("server task");
        }
    })
    .await;
}

/// Splits a v1 header line off `received`: its fields and the bytes after it.
fn split_v1(received: &[u8]) -> (Vec<String>, Vec<u8>) {
    let end = received
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or_else(|| panic!("no v1 header in {:?}", String::from_utf8_lossy(received)));
    let line = String::from_utf8(received[..end].to_vec()).expect("ascii header");
    (
        line.split(' ').map(str::to_owned).collect(),
        received[end + 2..].to_vec(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_accepts_a_proxy_header_and_forwards_the_original_client() {
    bounded_for(TEST_LIMIT, async {
        let backend = Backend::spawn("capture", Mode::Capture).await;
        let mut lb = start(&tcp_config(
            &[backend.addr],
            "proxy_protocol = true",
            "proxy_protocol = \"v1\"",
        ))
        .await;

        // v1 header and data in one write.
        let (_, received) = capture_through(
            &lb,
            &backend,
            b"PROXY TCP4 203.0.113.7 198.51.100.9 40000 5432\r\nhello",
        )
        .await;
        let (fields, rest) = split_v1(&received);
        assert_eq!(
            fields,
            [
                "PROXY",
                "TCP4",
                "203.0.113.7",
                "198.51.100.9",
                "40000",
                "5432"
            ],
            "both announced ends are passed on"
        );
        assert_eq!(rest, b"hello", "data after the header");

        // The header split over several writes, the data in its own.
        let mut stream = lb.connect().await;
        for piece in [
            &b"PROXY TCP4 192.0.2."[..],
            b"44 198.51.100.9 ",
            b"1234 5432\r\n",
        ] {
            stream.write_all(piece).await.expect("write header piece");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert_eq!(exchange(&mut stream, b"world").await, b"");
        let (fields, rest) = split_v1(&backend.next_report().await);
        assert_eq!(&fields[..3], ["PROXY", "TCP4", "192.0.2.44"], "{fields:?}");
        assert_eq!(fields[4], "1234", "{fields:?}");
        assert_eq!(rest, b"world");

        // A v2 header from the client is accepted too.
        let mut v2 = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11,
            0x00, 0x0C, 10, 1, 2, 3, 10, 9, 9, 9,
        ];
        v2.extend_from_slice(&5555u16.to_be_bytes());
        v2.extend_from_slice(&6379u16.to_be_bytes());
        v2.extend_from_slice(b"data");
        let (_, received) = capture_through(&lb, &backend, &v2).await;
        let (fields, rest) = split_v1(&received);
        assert_eq!(&fields[..3], ["PROXY", "TCP4", "10.1.2.3"], "{fields:?}");
        assert_eq!(fields[4], "5555", "{fields:?}");
        assert_eq!(rest, b"data");

        // A v2 header with a TLV (a NOOP, as some cloud balancers pad with): the TLV is not
        // passed on as data.
        let mut v2 = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x11,
            0x00, 0x12, 10, 1, 2, 4, 10, 9, 9, 9,
        ];
        v2.extend_from_slice(&5556u16.to_be_bytes());
        v2.extend_from_slice(&6379u16.to_be_bytes());
        v2.extend_from_slice(&[0x04, 0x00, 0x03, 0, 0, 0]);
        v2.extend_from_slice(b"tlv");
        let (_, received) = capture_through(&lb, &backend, &v2).await;
        let (fields, rest) = split_v1(&received);
        assert_eq!(&fields[..3], ["PROXY", "TCP4", "10.1.2.4"], "{fields:?}");
        assert_eq!(fields[4], "5556", "{fields:?}");
        assert_eq!(rest, b"tlv");

        // A v2 LOCAL header (health checks of a front balancer) falls back to the real peer.
        let mut local = vec![
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x20, 0x00,
            0x00, 0x00,
        ];
        local.extend_from_slice(b"local");
        let (client_port, received) = capture_through(&lb, &backend, &local).await;
        let expected = format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {}\r\nlocal",
            lb.addr().port()
        );
        assert_eq!(String::from_utf8_lossy(&received), expected);

        // `PROXY UNKNOWN` falls back to the real peer.
        let (client_port, received) =
            capture_through(&lb, &backend, b"PROXY UNKNOWN\r\nmore").await;
        let expected = format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {}\r\nmore",
            lb.addr().port()
        );
        assert_eq!(String::from_utf8_lossy(&received), expected);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_proxy_header_is_stripped_when_the_pool_sends_none() {
    bounded_for(TEST_LIMIT, async {
        let backend = Backend::spawn("capture", Mode::Capture).await;
        let mut lb = start(&tcp_config(&[backend.addr], "proxy_protocol = true", "")).await;
        let (_, received) = capture_through(
            &lb,
            &backend,
            b"PROXY TCP4 203.0.113.7 198.51.100.9 40000 5432\r\nSELECT 1;",
        )
        .await;
        assert_eq!(String::from_utf8_lossy(&received), "SELECT 1;");
        // A header with nothing after it: the backend sees an empty stream.
        let (_, received) = capture_through(
            &lb,
            &backend,
            b"PROXY TCP4 203.0.113.7 198.51.100.9 40000 5432\r\n",
        )
        .await;
        assert_eq!(received, b"");
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_client_from_a_proxy_header_is_forwarded_as_tcp6() {
    bounded_for(TEST_LIMIT, async {
        let backend = Backend::spawn("capture", Mode::Capture).await;
        let mut lb = start(&tcp_config(
            &[backend.addr],
            "proxy_protocol = true",
            "proxy_protocol = \"v1\"",
        ))
        .await;
        let (_, received) = capture_through(
            &lb,
            &backend,
            b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 5432\r\nhi",
        )
        .await;
        // Both ends announced by the front balancer are passed on, as HAProxy's
        // accept-proxy + send-proxy do.
        assert_eq!(
            String::from_utf8_lossy(&received),
            "PROXY TCP6 2001:db8::7 2001:db8::1 40000 5432\r\nhi"
        );
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_proxy_header_is_closed_after_5s() {
    bounded_for(TEST_LIMIT, async {
        let backend = Backend::spawn("capture", Mode::Capture).await;
        let mut lb = start(&tcp_config(&[backend.addr], "proxy_protocol = true", "")).await;
        let silent = async {
            let mut stream = lb.connect().await;
            let started = Instant::now();
            let mut buffer = [0u8; 8];
            let result = within(
                Duration::from_secs(8),
                "the close",
                stream.read(&mut buffer),
            )
            .await;
            assert!(matches!(result, Ok(0)) || result.is_err(), "{result:?}");
            started.elapsed()
        };
        let partial = async {
            let mut stream = lb.connect().await;
            let started = Instant::now();
            stream.write_all(b"PROXY TCP4 10.0.0").await.expect("write");
            let mut buffer = [0u8; 8];
            let result = within(
                Duration::from_secs(8),
                "the close",
                stream.read(&mut buffer),
            )
            .await;
            assert!(matches!(result, Ok(0)) || result.is_err(), "{result:?}");
            started.elapsed()
        };
        let (silent, partial) = tokio::join!(silent, partial);
        println!("no header: closed after {silent:?}; partial header: closed after {partial:?}");
        for elapsed in [silent, partial] {
            assert!(
                (Duration::from_millis(4800)..Duration::from_millis(7000)).contains(&elapsed),
                "closed after {elapsed:?}"
            );
        }
        assert_eq!(backend.accepted(), 0);
        lb.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_closes_a_connection_without_a_valid_proxy_header() {
    bounded_for(TEST_LIMIT, async {
        let backend = Backend::spawn("capture", Mode::Capture).await;
        let mut lb = start(&tcp_config(&[backend.addr], "proxy_protocol = true", "")).await;
        for garbage in [
            &b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"[..],
            b"hello, this is not a PROXY header at all\r\n",
            b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\nhello",
            &[0u8; 64][..],
        ] {
            let mut stream = lb.connect().await;
            let started = Instant::now();
            // Nothing more is sent, so only the header check (not its 5 s timeout) can close it.
            stream.write_all(garbage).await.expect("write garbage");
            let mut buffer = [0u8; 16];
            let result = within(
                Duration::from_secs(3),
                "the connection to be closed",
                stream.read(&mut buffer),
            )
            .await;
            assert!(
                matches!(result, Ok(0)) || result.is_err(),
                "{:?}: expected the connection closed, got {result:?}",
                String::from_utf8_lossy(garbage)
            );
            assert!(started.elapsed() < Duration::from_secs(3));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(backend.accepted(), 0, "garbage reached a backend");
        lb.stop().await;
    })
    .await;
}
