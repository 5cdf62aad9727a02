//! The contenders and the processes they need: a backend per scenario's backend count, and the
//! proxy (fulcrum, nginx or HAProxy) started with its generated config on a free port, pinned
//! to the proxy's core. `direct` has no proxy: the load goes straight to the backend.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::Result;
use crate::children::ChildGuard;
use crate::configs::{Front, fulcrum_config, haproxy_config, nginx_config};
use crate::environment::Environment;
use crate::scenarios::{Scenario, Traffic};

/// How long a contender may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is measured: the backend alone (the ceiling) or a proxy in front of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contender {
    Direct,
    Fulcrum,
    Nginx,
    Haproxy,
}

impl Contender {
    /// Every contender, in the order the tables list them.
    pub const ALL: [Contender; 4] = [
        Contender::Direct,
        Contender::Fulcrum,
        Contender::Nginx,
        Contender::Haproxy,
    ];

    /// What `--contenders`, the tables and the report call it.
    pub fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::Fulcrum => "fulcrum",
            Contender::Nginx => "nginx",
            Contender::Haproxy => "haproxy",
        }
    }
}

/// Why `contender` cannot run `scenario` here, if it cannot.
pub fn unsupported(env: &Environment, scenario: &Scenario, contender: Contender) -> Option<String> {
    match contender {
        Contender::Direct if scenario.kill_one => {
            Some("no proxy to fail over: not applicable".to_owned())
        }
        Contender::Direct if scenario.tls => {
            Some("the backend speaks plain HTTP only: not applicable".to_owned())
        }
        Contender::Direct if scenario.traffic == Traffic::Idle => {
            Some("no proxy to measure: not applicable".to_owned())
        }
        Contender::Nginx if env.nginx.is_none() => Some("nginx not installed".to_owned()),
        Contender::Nginx
            if scenario.traffic == Traffic::Tcp && env.nginx_stream_module.is_none() =>
        {
            Some("nginx stream module not installed (Debian: libnginx-mod-stream)".to_owned())
        }
        Contender::Haproxy if env.haproxy.is_none() => Some("haproxy not installed".to_owned()),
        _ => None,
    }
}

/// A started backend: its guard and address.
pub struct Backend {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
}

/// Starts one backend for `scenario` (HTTP server or TCP sink) on the load generator's core
/// and waits for the port it announces.
pub fn start_backend(env: &Environment, scenario: &Scenario) -> Result<Backend> {
    let mut command = env.command(0, &env.me);
    if scenario.traffic == Traffic::Tcp {
        command.arg("--serve-tcp");
    } else {
        command.arg("--serve-http").arg(scenario.body.to_string());
    }
    command.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut guard = ChildGuard::spawn("backend", &mut command)?;
    let stdout = guard.take_stdout().ok_or("backend has no stdout pipe")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let port: u16 = line
        .strip_prefix("PORT ")
        .and_then(|port| port.trim().parse().ok())
        .ok_or_else(|| format!("backend did not announce its port (said {line:?})"))?;
    Ok(Backend {
        guard,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    })
}

/// A free loopback port (bound and released; the contender binds it right after).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A started proxy: its guard, where clients connect, its log.
pub struct Proxy {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

/// Starts `contender`'s proxy in front of `backends` with its config for `scenario`, and
/// waits until it accepts connections (at most `START_TIMEOUT`).
pub fn start_proxy(
    env: &Environment,
    scenario: &Scenario,
    contender: Contender,
    backends: &[SocketAddr],
) -> Result<Proxy> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let dir = env.temp.join(contender.name());
    std::fs::create_dir_all(&dir)?;
    let log = dir.join("output.log");
    let front = Front {
        addr,
        tcp: scenario.traffic == Traffic::Tcp,
        tls: scenario.tls.then_some(&env.tls),
        h2c: scenario.traffic == Traffic::Http2 && !scenario.tls,
        many_idle: scenario.traffic == Traffic::Idle,
    };
    let mut command = match contender {
        Contender::Direct => return Err("direct has no proxy".into()),
        Contender::Fulcrum => {
            let config = dir.join("fulcrum.toml");
            std::fs::write(&config, fulcrum_config(&front, free_port()?, backends))?;
            let mut command = env.command(1, &env.fulcrum);
            command
                .arg("--config")
                .arg(&config)
                .args(["--log-level", "warn"]);
            command
        }
        Contender::Nginx => {
            let config = dir.join("nginx.conf");
            let module = env.nginx_stream_module.as_deref();
            std::fs::write(&config, nginx_config(&dir, &front, module, backends))?;
            let binary = env.nginx.as_deref().ok_or("nginx not installed")?;
            let mut command = env.command(1, binary);
            command.arg("-p").arg(&dir).arg("-c").arg(&config);
            command
        }
        Contender::Haproxy => {
            let config = dir.join("haproxy.cfg");
            std::fs::write(&config, haproxy_config(&front, backends))?;
            let binary = env.haproxy.as_deref().ok_or("haproxy not installed")?;
            let mut command = env.command(1, binary);
            command.arg("-db").arg("-f").arg(&config);
            command
        }
    };
    let output = std::fs::File::create(&log)?;
    command.stdout(output.try_clone()?).stderr(output);
    let mut guard = ChildGuard::spawn(contender.name(), &mut command)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        if guard.exited() || Instant::now() > deadline {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = said.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            return Err(format!(
                "{} did not start listening on {addr}: {tail}",
                contender.name()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Proxy { guard, addr, log })
}
