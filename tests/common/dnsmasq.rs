//! A real DNS server for discovery tests: dnsmasq as a child process on `127.0.0.1`, UDP and
//! TCP on one free port, authoritative for `test.` (`--local=/test/`: a name it does not know
//! there is NXDOMAIN). Its A records come from a hosts file and its forwarding rules from a
//! servers file, both re-read on SIGHUP, which [`Dnsmasq::set_hosts`] and
//! [`Dnsmasq::set_servers`] send after rewriting them. SRV records are fixed at start.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TempDir;
use super::tools;

/// Where Debian installs it (outside a non-root `PATH`).
const DNSMASQ: &str = "/usr/sbin/dnsmasq";

/// A running dnsmasq; killed on drop.
pub struct Dnsmasq {
    child: Option<Child>,
    address: SocketAddr,
    dir: TempDir,
}

impl Dnsmasq {
    /// Starts dnsmasq answering `hosts` (lines of `ADDRESS NAME`) with TTL `ttl_seconds`, and
    /// the SRV records `srv` (dnsmasq's `--srv-host` values: `NAME,TARGET,PORT,PRIORITY,WEIGHT`).
    /// `None` (after a skip line; a failure under `CI=true`) when dnsmasq is not installed.
    pub fn start(hosts: &str, ttl_seconds: u32, srv: &[&str]) -> Option<Dnsmasq> {
        let binary = if std::path::Path::new(DNSMASQ).exists() {
            PathBuf::from(DNSMASQ)
        } else {
            tools::require_tool("dnsmasq")?
        };
        let dir = TempDir::new("dnsmasq");
        dir.write("hosts", hosts);
        dir.write("servers", "");
        // A port free for UDP may be taken for TCP, or taken again before dnsmasq binds it:
        // try a few.
        for _ in 0..10 {
            let port = free_udp_and_tcp_port();
            let mut command = Command::new(&binary);
            command
                .arg("--no-daemon")
                .arg("--no-resolv")
                .arg("--no-hosts")
                .arg(format!("--port={port}"))
                .arg("--listen-address=127.0.0.1")
                .arg("--bind-interfaces")
                .arg(format!("--addn-hosts={}", dir.join("hosts").display()))
                .arg(format!("--servers-file={}", dir.join("servers").display()))
                .arg("--local=/test/")
                .arg(format!("--local-ttl={ttl_seconds}"))
                .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
                .arg("--log-queries")
                .arg(format!("--log-facility={}", dir.join("log").display()));
            for record in srv {
                command.arg(format!("--srv-host={record}"));
            }
            let mut child = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            if wait_answering(&mut child, address) {
                return Some(Dnsmasq {
                    child: Some(child),
                    address,
                    dir,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start on any of 10 ports");
    }

    /// The address to put in `[dns] servers`.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Replaces the hosts file (lines of `ADDRESS NAME`) and makes dnsmasq re-read it.
    pub fn set_hosts(&self, hosts: &str) {
        self.dir.replace("hosts", hosts);
        self.hang_up();
    }

    /// Replaces the servers file (lines such as `server=/app.test/127.0.0.1#9`) and makes
    /// dnsmasq re-read it.
    pub fn set_servers(&self, servers: &str) {
        self.dir.replace("servers", servers);
        self.hang_up();
    }

    /// Stops the server: lookups time out from now on.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// dnsmasq's query log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn hang_up(&self) {
        let child = self.child.as_ref().expect("dnsmasq is running");
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -HUP dnsmasq failed");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port that is free on 127.0.0.1 for both UDP and TCP right now.
fn free_udp_and_tcp_port() -> u16 {
    for _ in 0..100 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
        let port = udp
            .local_addr()
            .expect("a bound socket has an address")
            .port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

/// Whether the dnsmasq `child` answers a query at `address` within a few seconds (false if it
/// exited: its port was taken).
fn wait_answering(child: &mut Child, address: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("set a read timeout");
    // A query for `probe.test A`, id 0x1234, recursion desired.
    let mut query = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["probe", "test"] {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut answer = [0u8; 512];
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return false;
        }
        if socket.send_to(&query, address).is_ok()
            && matches!(socket.recv(&mut answer), Ok(n) if n >= 2 && answer[..2] == [0x12, 0x34])
        {
            return true;
        }
    }
    false
}

/// An upstream DNS server on `127.0.0.1` that answers every query with SERVFAIL (what a
/// broken authoritative server or a failed recursive lookup returns), for dnsmasq to forward
/// names to. It stops with the test's runtime.
pub async fn serve_servfail() -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind a UDP socket");
    let address = socket.local_addr().expect("a bound socket has an address");
    tokio::spawn(async move {
        let mut buffer = [0u8; 512];
        while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
            if len < 12 {
                continue;
            }
            // The query itself with QR set, opcode and RD kept, RA set, RCODE 2 (SERVFAIL):
            // the header's counts and the question stay as they were asked.
            let mut reply = buffer[..len].to_vec();
            reply[2] = 0x80 | (reply[2] & 0x79);
            reply[3] = 0x80 | 2;
            let _ = socket.send_to(&reply, from).await;
        }
    });
    address
}
