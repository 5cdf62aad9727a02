//! The scenarios, in the order they run: what load, how many connections and backends (and
//! which server plays them), what response size, and whether a backend dies halfway.

use std::time::Duration;

/// Size of the "small" responses.
const SMALL_BODY: usize = 13;

/// HTTP/2 scenarios: concurrent streams per client connection (`h2load -m`).
pub const H2_STREAMS: usize = 10;

/// `idle-10k`: client connections held open at once (the most of any idle scenario).
const IDLE_CONNECTIONS: usize = 10_000;
/// The idle scenarios: the proxies' connection limits (clients, upstream connections and
/// slack), and the open-files limit this process needs to hold the client side.
pub const IDLE_CAPACITY: usize = IDLE_CONNECTIONS + 1_000;

/// How an idle scenario reads the proxy's memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IdleShape {
    /// How long the opened connections stay quiet before RSS is read: short enough that
    /// fulcrum has not parked them yet, or long enough that it has.
    pub quiet: Duration,
    /// fulcrum's target for the memory one idle connection adds, in KiB.
    pub target_kib_per_conn: f64,
}

/// What a scenario measures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Traffic {
    /// HTTP/1.1 requests from wrk (or the built-in generator).
    Http,
    /// HTTP/2 requests from h2load, `H2_STREAMS` at once per connection.
    Http2,
    /// Bytes streamed into a TCP sink.
    Tcp,
    /// No load: the proxy's memory, idle and with `connections` idle keep-alive clients.
    Idle(IdleShape),
}

/// What serves behind the proxy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BackendKind {
    /// This executable's `--serve-http` (hyper, one thread) or `--serve-tcp`.
    Builtin,
    /// nginx, one process, answering every request with the small body itself (`return 200`).
    Nginx,
}

/// One scenario: the same for every contender.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// What `--only` and the report call it.
    pub name: &'static str,
    /// One line for the table's heading and the report.
    pub about: &'static str,
    /// What is measured.
    pub traffic: Traffic,
    /// Clients speak TLS to the proxy (terminated there; backends stay plain HTTP/1.1).
    pub tls: bool,
    /// Client connections at once (`wrk -c`, `h2load -c`).
    pub connections: usize,
    /// Response body size in bytes.
    pub body: usize,
    /// A new client connection per request (`Connection: close`).
    pub close: bool,
    /// Backend processes behind the proxy.
    pub backends: usize,
    /// What serves as each backend.
    pub backend_kind: BackendKind,
    /// SIGKILL the second backend halfway through the measured run.
    pub kill_one: bool,
}

impl Scenario {
    /// How an idle scenario reads memory; `None` for a scenario with load.
    pub fn idle(&self) -> Option<IdleShape> {
        match self.traffic {
            Traffic::Idle(shape) => Some(shape),
            _ => None,
        }
    }
}

/// Every scenario, in the order they run.
pub fn scenarios() -> Vec<Scenario> {
    let base = Scenario {
        name: "",
        about: "",
        traffic: Traffic::Http,
        tls: false,
        connections: 64,
        body: SMALL_BODY,
        close: false,
        backends: 1,
        backend_kind: BackendKind::Builtin,
        kill_one: false,
    };
    vec![
        Scenario {
            name: "keepalive-64",
            about: "13 B responses, 64 keep-alive connections, 1 backend",
            ..base.clone()
        },
        Scenario {
            name: "keepalive-1000",
            about: "13 B responses, 1000 keep-alive connections, 1 backend",
            connections: 1000,
            ..base.clone()
        },
        Scenario {
            name: "keepalive-64-3nginx",
            about: "13 B responses, 64 keep-alive connections, round-robin over 3 nginx backends",
            backends: 3,
            backend_kind: BackendKind::Nginx,
            ..base.clone()
        },
        Scenario {
            name: "keepalive-1000-3nginx",
            about: "13 B responses, 1000 keep-alive connections, round-robin over 3 nginx backends",
            connections: 1000,
            backends: 3,
            backend_kind: BackendKind::Nginx,
            ..base.clone()
        },
        Scenario {
            name: "body-64k",
            about: "64 KiB responses, 64 keep-alive connections, 1 backend",
            body: 64 * 1024,
            ..base.clone()
        },
        Scenario {
            name: "close",
            about: "13 B responses, a new client connection per request (Connection: close), 64 at once",
            close: true,
            ..base.clone()
        },
        Scenario {
            name: "tls",
            about: "HTTPS termination (TLS 1.3), 13 B responses, 64 keep-alive connections, 1 backend over plain HTTP/1.1",
            tls: true,
            ..base.clone()
        },
        Scenario {
            name: "h2",
            about: "HTTP/2 cleartext (prior knowledge), 64 connections x 10 streams, 13 B responses, 1 backend over HTTP/1.1",
            traffic: Traffic::Http2,
            ..base.clone()
        },
        Scenario {
            name: "h2-tls",
            about: "HTTP/2 over TLS (ALPN h2), 64 connections x 10 streams, 13 B responses, 1 backend over HTTP/1.1",
            traffic: Traffic::Http2,
            tls: true,
            ..base.clone()
        },
        Scenario {
            name: "failover",
            about: "13 B responses, 64 connections, 3 backends; one is SIGKILLed halfway",
            backends: 3,
            kill_one: true,
            ..base.clone()
        },
        Scenario {
            name: "tcp-bulk",
            about: "L4: 4 connections each streaming 64 KiB writes into a TCP sink",
            traffic: Traffic::Tcp,
            connections: 4,
            ..base.clone()
        },
        // Last: they raise the open-files limit, which the processes of later scenarios would
        // inherit.
        Scenario {
            name: "idle-2k",
            about: "memory: the proxy's RSS idle, then holding 2 000 keep-alive client connections quiet for 1 s (not yet parked)",
            traffic: Traffic::Idle(IdleShape {
                quiet: Duration::from_secs(1),
                target_kib_per_conn: 2.0,
            }),
            connections: 2_000,
            ..base.clone()
        },
        Scenario {
            name: "idle-10k",
            about: "memory: the proxy's RSS idle, then holding 10 000 idle keep-alive client connections (parked)",
            // fulcrum parks a keep-alive connection, freeing hyper's buffers, after one to two
            // quiet seconds; nginx and HAProxy release theirs when a request ends.
            traffic: Traffic::Idle(IdleShape {
                quiet: Duration::from_secs(3),
                target_kib_per_conn: 4.0,
            }),
            connections: IDLE_CONNECTIONS,
            ..base
        },
    ]
}
