//! Running a scenario: every chosen contender once per round, the starting one rotating, and
//! one measured run — backends, proxy, warm-up, load, and the CPU time every process spent.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::Result;
use crate::contenders::{Backend, Contender, start_backend, start_proxy, unsupported};
use crate::environment::Environment;
use crate::idle::measure_idle;
use crate::load::{finish_load, start_load};
use crate::options::Options;
use crate::report::{ContenderReport, Run, ScenarioReport};
use crate::sampling::{
    own_ticks, peak_rss_kib, raise_open_files_limit, reaped_children_ticks, user_system_ticks,
};
use crate::scenarios::{BackendKind, IDLE_CAPACITY, Scenario, Traffic};

/// How long a proxy is given to exit once asked, after its run.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Runs `scenario` for `options.rounds` rounds; a skipped scenario or contender is reported
/// with the reason, a failed run with its error.
pub fn run_scenario(env: &Environment, options: &Options, scenario: &Scenario) -> ScenarioReport {
    let unit = match scenario.traffic {
        Traffic::Tcp => "MiB/s",
        Traffic::Idle(_) => "conn/s",
        Traffic::Http | Traffic::Http2 => "req/s",
    };
    let skipped = match scenario.traffic {
        _ if scenario.backend_kind == BackendKind::Nginx && env.nginx.is_none() => {
            Some("skipped: nginx, which plays the backends here, is not installed".to_owned())
        }
        Traffic::Http2 if env.h2load.is_none() => {
            Some("skipped: h2load not installed (Debian: nghttp2-client)".to_owned())
        }
        Traffic::Http if scenario.tls && env.wrk.is_none() => Some(
            "skipped: needs wrk (the built-in load generator speaks plain HTTP/1.1 only)"
                .to_owned(),
        ),
        Traffic::Idle(_) => match raise_open_files_limit() {
            Some(limit) if limit >= IDLE_CAPACITY as u64 => None,
            limit => Some(format!(
                "skipped: needs an open-files limit of at least {IDLE_CAPACITY} (ulimit -n), have {}",
                limit.map_or_else(|| "unknown".to_owned(), |limit| limit.to_string())
            )),
        },
        _ => None,
    };
    let mut report = ScenarioReport {
        name: scenario.name,
        about: scenario.about,
        unit,
        skipped,
        contenders: Vec::new(),
    };
    if report.skipped.is_some() {
        return report;
    }
    let chosen: Vec<Contender> = Contender::ALL
        .into_iter()
        .filter(|contender| {
            options
                .contenders
                .as_ref()
                .is_none_or(|names| names.iter().any(|name| name == contender.name()))
        })
        .collect();
    for &contender in &chosen {
        report.contenders.push(ContenderReport {
            contender,
            runs: Vec::new(),
            failures: Vec::new(),
            skipped: unsupported(env, scenario, contender),
        });
    }
    let runnable: Vec<usize> = (0..report.contenders.len())
        .filter(|&i| report.contenders[i].skipped.is_none())
        .collect();
    eprintln!("== {}: {}", scenario.name, scenario.about);
    for round in 0..options.rounds {
        // Rotate the starting contender each round: A B C, B C A, C A B ...
        for step in 0..runnable.len() {
            let index = runnable[(round + step) % runnable.len()];
            let contender = report.contenders[index].contender;
            eprintln!(
                "   round {} / {}: {}",
                round + 1,
                options.rounds,
                contender.name()
            );
            match measure(env, options, scenario, contender) {
                Ok(run) => report.contenders[index].runs.push(run),
                Err(err) => {
                    eprintln!("   {} failed: {err}", contender.name());
                    report.contenders[index].failures.push(err.to_string());
                }
            }
        }
    }
    report
}

/// One measured run of `contender` in `scenario`, from fresh processes.
fn measure(
    env: &Environment,
    options: &Options,
    scenario: &Scenario,
    contender: Contender,
) -> Result<Run> {
    if let Some(shape) = scenario.idle() {
        return measure_idle(env, scenario, shape, contender);
    }
    let mut backends = (0..scenario.backends)
        .map(|index| start_backend(env, scenario, index))
        .collect::<Result<Vec<_>>>()?;
    let addrs: Vec<SocketAddr> = backends.iter().map(|backend| backend.addr).collect();
    let proxy = match contender {
        Contender::Direct => None,
        _ => Some(start_proxy(env, scenario, contender, &addrs)?),
    };
    let target = proxy.as_ref().map_or(addrs[0], |proxy| proxy.addr);
    // HTTP/2 always warms up: its first burst of 640 requests makes the proxies open hundreds
    // of upstream connections at once, more than the backend's accept queue (128) holds, and
    // the dropped SYNs come back a second later as latency outliers.
    let warmup = if scenario.traffic == Traffic::Http2 {
        options.warmup.max(1)
    } else {
        options.warmup
    };
    if warmup > 0 && !scenario.kill_one {
        finish_load(start_load(env, scenario, target, warmup)?, warmup)?;
    }

    let proxy_pid = proxy.as_ref().map(|proxy| proxy.guard.pid());
    let backend_ticks = |backends: &[Backend]| -> u64 {
        backends
            .iter()
            .map(|backend| own_ticks(backend.guard.pid()))
            .sum()
    };
    let proxy_before = proxy_pid.map(user_system_ticks);
    let backends_before = backend_ticks(&backends);
    let reaped_before = reaped_children_ticks();
    let began = Instant::now();
    let load = start_load(env, scenario, target, options.duration)?;
    let mut killed_ticks = 0;
    if scenario.kill_one {
        std::thread::sleep(Duration::from_secs_f64(options.duration as f64 / 2.0));
        let victim = &mut backends[1];
        killed_ticks = own_ticks(victim.guard.pid());
        victim.guard.kill_now();
    }
    let result = finish_load(load, options.duration)?;
    let wall = began.elapsed().as_secs_f64();
    let loadgen_ticks = reaped_children_ticks().saturating_sub(reaped_before);
    let backends_after = backend_ticks(&backends) + killed_ticks;
    let proxy_ticks = proxy_pid.zip(proxy_before).map(|(pid, (user, system))| {
        let (user_after, system_after) = user_system_ticks(pid);
        (
            user_after.saturating_sub(user),
            system_after.saturating_sub(system),
        )
    });
    let peak_rss_kib = proxy_pid.and_then(peak_rss_kib);
    if let Some(mut proxy) = proxy {
        if result.requests == 0 && result.bytes == 0 {
            let said = std::fs::read_to_string(&proxy.log).unwrap_or_default();
            return Err(format!("no traffic got through; proxy said: {said}").into());
        }
        // Measured already: stopped the way an operator would (`--pgo`'s training needs
        // fulcrum to exit on its own to write its profile).
        proxy.guard.terminate(STOP_GRACE);
    }

    let ops = if scenario.traffic == Traffic::Tcp {
        result.bytes as f64 / (1024.0 * 1024.0)
    } else {
        result.requests as f64
    };
    let seconds = if result.seconds > 0.0 {
        result.seconds
    } else {
        wall
    };
    let client = (loadgen_ticks + backends_after.saturating_sub(backends_before)) as f64;
    let per_op = |ticks: u64| (ops > 0.0).then(|| ticks as f64 / env.ticks * 1e6 / ops);
    Ok(Run {
        rate: ops / seconds,
        proxy_cpu_us_per_op: proxy_ticks.and_then(|(user, system)| per_op(user + system)),
        proxy_user_us_per_op: proxy_ticks.and_then(|(user, _)| per_op(user)),
        proxy_system_us_per_op: proxy_ticks.and_then(|(_, system)| per_op(system)),
        proxy_core: proxy_ticks.map(|(user, system)| (user + system) as f64 / env.ticks / wall),
        client_core: client / env.ticks / wall,
        peak_rss_kib,
        load: result,
        idle: None,
    })
}
