//! `consistent_hash` on a TCP pool: the client IP is the key, so every connection from one
//! address goes to the same backend, and different addresses spread.

use super::*;

/// A connection through `lb` from the loopback address `127.0.0.<host>`; returns the name of
/// the backend serving it.
async fn connect_from(lb: &TestBalancer, host: u8) -> String {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, host], 0)))
        .expect("bind a loopback source address");
    let mut stream = within(
        Duration::from_secs(5),
        "a connection",
        socket.connect(lb.addr()),
    )
    .await
    .expect("connect to the balancer");
    read_line(&mut stream).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_address_sticks_to_one_backend_and_addresses_spread() {
    bounded_for(TEST_LIMIT, async {
        let backends = three(Mode::NamedEcho).await;
        let mut lb = start(&tcp_config(
            &addrs(&backends),
            "",
            "algorithm = \"consistent_hash\"",
        ))
        .await;
        let mut by_address = Vec::new();
        for host in 1..=24 {
            let first = connect_from(&lb, host).await;
            for _ in 0..3 {
                assert_eq!(connect_from(&lb, host).await, first, "127.0.0.{host}");
            }
            by_address.push(first);
        }
        let counts = tally(&by_address);
        assert!(counts.len() >= 2, "24 addresses on one backend: {counts:?}");
        lb.stop().await;
    })
    .await;
}
