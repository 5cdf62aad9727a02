//! A real database client: `redis-benchmark` through fulcrum against two `redis-server`s, when
//! Redis is installed (a failure under `CI=true` when it is not).

use super::*;

/// A `redis-server` child process on a free port; killed and reaped on drop.
struct RedisServer {
    port: u16,
    /// `redis-cli`, for `INFO`.
    cli: std::path::PathBuf,
    child: std::process::Child,
}

impl RedisServer {
    async fn start(server: &std::path::Path, cli: &std::path::Path) -> RedisServer {
        let port = closed_port().await.port();
        let child = std::process::Command::new(server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        let server = RedisServer {
            port,
            cli: cli.to_owned(),
            child,
        };
        within(
            Duration::from_secs(10),
            "redis-server to answer PING",
            async {
                loop {
                    if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await {
                        let mut reply = [0u8; 7];
                        if stream.write_all(b"PING\r\n").await.is_ok()
                            && stream.read_exact(&mut reply).await.is_ok()
                            && &reply == b"+PONG\r\n"
                        {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        )
        .await;
        server
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `INFO section` through `redis-cli`, as `field → value`.
    async fn info(&self, section: &str) -> HashMap<String, String> {
        let output = tokio::process::Command::new(&self.cli)
            .args(["-p", &self.port.to_string(), "info", section])
            .output()
            .await
            .expect("run redis-cli");
        assert!(output.status.success(), "redis-cli failed: {output:?}");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.trim().split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    async fn connections_received(&self) -> u64 {
        self.info("stats")
            .await
            .get("total_connections_received")
            .and_then(|v| v.parse().ok())
            .expect("total_connections_received in INFO stats")
    }

    /// `calls=` of `cmdstat_<command>` (0 when the command was never called), and its
    /// `failed_calls=`/`rejected_calls=` sum.
    async fn calls(&self, command: &str) -> (u64, u64) {
        let stats = self.info("commandstats").await;
        let Some(line) = stats.get(&format!("cmdstat_{command}")) else {
            return (0, 0);
        };
        let field = |name: &str| {
            line.split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == name)
                .and_then(|(_, v)| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        (
            field("calls"),
            field("failed_calls") + field("rejected_calls"),
        )
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_benchmark_through_the_balancer() {
    let Some(tools) =
        common::tools::require_tools(&["redis-server", "redis-benchmark", "redis-cli"])
    else {
        return;
    };
    let [server, benchmark, cli] = &tools[..] else {
        unreachable!("three tools asked, three returned");
    };
    bounded_for(TEST_LIMIT, async {
        let one = RedisServer::start(server, cli).await;
        let two = RedisServer::start(server, cli).await;
        // No active health checks: their connects would count as connections at the servers.
        let mut lb = start(&tcp_config(&[one.addr(), two.addr()], "", "")).await;
        let before = (
            one.connections_received().await,
            two.connections_received().await,
        );
        let output = within(
            Duration::from_secs(20),
            "redis-benchmark",
            tokio::process::Command::new(benchmark)
                .args(["-h", "127.0.0.1", "-p", &lb.addr().port().to_string()])
                .args(["-n", "20000", "-c", "20", "-t", "set,get", "-q"])
                .output(),
        )
        .await
        .expect("run redis-benchmark");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "redis-benchmark failed: {:?}\nstdout: {stdout}\nstderr: {stderr}",
            output.status
        );
        let rps: Vec<&str> = stdout
            .split(['\r', '\n'])
            .map(str::trim)
            .filter(|line| line.contains("requests per second"))
            .collect();
        for line in &rps {
            println!("through fulcrum: {line}");
        }
        for command in ["SET:", "GET:"] {
            assert!(
                rps.iter().any(|line| line.starts_with(command)),
                "no {command} result\nstdout: {stdout}\nstderr: {stderr}"
            );
        }
        assert!(
            !stderr.contains("Error") && !stdout.contains("Error"),
            "redis-benchmark reported errors\nstdout: {stdout}\nstderr: {stderr}"
        );

        let after = (
            one.connections_received().await,
            two.connections_received().await,
        );
        // Every request reached a server and succeeded there, and both servers took part.
        let mut totals = [0u64; 2];
        for (server, name) in [(&one, "one"), (&two, "two")] {
            let (set, set_failed) = server.calls("set").await;
            let (get, get_failed) = server.calls("get").await;
            println!("redis {name}: {set} SET, {get} GET");
            assert_eq!(set_failed + get_failed, 0, "failed calls on {name}");
            assert!(set > 0 && get > 0, "redis {name} got no traffic");
            totals[0] += set;
            totals[1] += get;
        }
        assert_eq!(
            totals,
            [20_000, 20_000],
            "SET and GET calls over both servers"
        );
        // Each `redis-cli info` is a connection of its own: subtract the one that read `after`.
        let received = (after.0 - before.0 - 1, after.1 - before.1 - 1);
        println!(
            "connections through fulcrum: one {}, two {}",
            received.0, received.1
        );
        assert!(
            received.0 >= 1 && received.1 >= 1,
            "connections: {received:?}"
        );
        assert!(after.0 > 1 && after.1 > 1);
        lb.stop().await;
    })
    .await;
}
