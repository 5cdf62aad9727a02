//! The contenders and the processes they need: a backend per scenario's backend count (this
//! executable, or nginx with its own config), and the proxy (fulcrum, nginx or HAProxy) started
//! with its generated config on a free port, pinned to the proxy's core. `direct` has no proxy:
//! the load goes straight to the (first) backend.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;
use crate::children::ChildGuard;
use crate::configs::{Front, fulcrum_config, haproxy_config, nginx_backend_config, nginx_config};
use crate::environment::Environment;
use crate::scenarios::{BackendKind, Scenario, Traffic};

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
        Contender::Direct if scenario.idle().is_some() => {
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

/// Starts backend number `index` for `scenario` (HTTP server or TCP sink, or nginx) on the
/// load generator's core and waits until it listens.
pub fn start_backend(env: &Environment, scenario: &Scenario, index: usize) -> Result<Backend> {
    if scenario.backend_kind == BackendKind::Nginx {
        return start_nginx_backend(env, scenario, index);
    }
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

/// nginx as backend number `index`: its own directory, config, pid file and error log under the
/// bench's temporary directory.
fn start_nginx_backend(env: &Environment, scenario: &Scenario, index: usize) -> Result<Backend> {
    let binary = env.nginx.as_deref().ok_or("nginx not installed")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let dir = env.temp.join(format!("backend-nginx-{index}"));
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("nginx.conf");
    std::fs::write(&config, nginx_backend_config(&dir, addr, scenario.body))?;
    let log = dir.join("output.log");
    let mut command = env.command(0, binary);
    command.arg("-p").arg(&dir).arg("-c").arg(&config);
    let guard = spawn_listening("nginx backend", &mut command, addr, &log)?;
    Ok(Backend { guard, addr })
}

/// Starts `command` with its output in `log` and waits until it accepts connections on `addr`
/// (at most `START_TIMEOUT`); on failure the error quotes the log's last lines.
fn spawn_listening(
    name: &str,
    command: &mut Command,
    addr: SocketAddr,
    log: &Path,
) -> Result<ChildGuard> {
    let output = std::fs::File::create(log)?;
    command.stdout(output.try_clone()?).stderr(output);
    let mut guard = ChildGuard::spawn(name, command)?;
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(guard);
        }
        if guard.exited() || Instant::now() > deadline {
            let said = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = said.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
            return Err(format!("{name} did not start listening on {addr}: {tail}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free loopback port (bound and released; the contender binds it right after).
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A started proxy: its guard, where clients connect, its log, and (fulcrum) its admin
/// listener with the metrics.
pub struct Proxy {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
    pub log: PathBuf,
    pub admin: Option<SocketAddr>,
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
    let mut admin = None;
    let front = Front {
        addr,
        tcp: scenario.traffic == Traffic::Tcp,
        tls: scenario.tls.then_some(&env.tls),
        h2c: scenario.traffic == Traffic::Http2 && !scenario.tls,
        many_idle: scenario.idle().is_some(),
    };
    let mut command = match contender {
        Contender::Direct => return Err("direct has no proxy".into()),
        Contender::Fulcrum => {
            let config = dir.join("fulcrum.toml");
            let admin_port = free_port()?;
            admin = Some(SocketAddr::from(([127, 0, 0, 1], admin_port)));
            std::fs::write(&config, fulcrum_config(&front, admin_port, backends))?;
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
    let guard = spawn_listening(contender.name(), &mut command, addr, &log)?;
    Ok(Proxy {
        guard,
        addr,
        log,
        admin,
    })
}
