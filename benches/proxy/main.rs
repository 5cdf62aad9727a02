//! End-to-end throughput and latency: fulcrum side by side with the backend alone (the
//! ceiling), nginx and HAProxy, on loopback. See `benches/README.md` for the scenarios, the
//! contenders' configs and how to read the output.
//!
//! ```sh
//! cargo bench --bench proxy -- --quick     # 1 round of 1 s per contender: a few minutes
//! cargo bench --bench proxy                # 3 rounds of 10 s (+1 s warm-up), medians reported
//! cargo bench --bench proxy -- --pgo       # the same, measuring a profile-guided build
//! cargo bench --bench proxy -- --help      # every option
//! ```
//!
//! The same executable also plays the helpers, started as child processes so they can be
//! pinned to a core and measured from `/proc`: `--serve-http` (a hyper backend),
//! `--serve-tcp` (a TCP sink), `--http-load` (a closed-loop HTTP/1.1 load generator, used when
//! `wrk` is not installed) and `--tcp-load` (the bulk TCP client).
//!
//! Every child is killed on exit, on panic and on Ctrl-C/SIGTERM; helpers also exit on their
//! own when their parent is gone or after an hour. All traffic stays on 127.0.0.1.
//!
//! The modules follow a run: `options` (flags), `environment` (what the machine has, the
//! fulcrum binary, the TLS files), `pgo` (`--pgo`'s training and build), `scenarios`,
//! `contenders` and `configs` (starting the backends and each proxy with its config),
//! `measure` and `idle` (one measured run), `load` (driving and reading the load generators),
//! `sampling` (CPU and RSS from `/proc`), `report` (medians and the JSON file), `tables` (what
//! is printed), `html` (the HTML report drawn from the JSON, shared with
//! `tests/bench_report.rs`); `children` keeps every child process accounted for, and `helpers`
//! are the roles this executable plays as a child.

mod children;
mod configs;
mod contenders;
mod environment;
mod helpers;
mod html;
mod idle;
mod load;
mod measure;
mod options;
mod pgo;
mod report;
mod sampling;
mod scenarios;
mod tables;

use std::time::{SystemTime, UNIX_EPOCH};

use crate::children::{TempDir, install_signal_handler, kill_all_children};
use crate::environment::{Environment, fulcrum_binary};

/// Failures are only reported, never matched on, so a boxed error carrying its message does.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// `Result` with the harness's boxed error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = match args.first().map(String::as_str) {
        Some("--serve-http") => helpers::helper(helpers::serve_http, &args[1..]),
        Some("--serve-tcp") => helpers::helper(helpers::serve_tcp, &args[1..]),
        Some("--http-load") => helpers::http_load(&args[1..]),
        Some("--tcp-load") => helpers::tcp_load(&args[1..]),
        _ => orchestrate(&args),
    };
    if let Err(err) = outcome {
        eprintln!("proxy bench: {err}");
        kill_all_children();
        std::process::exit(1);
    }
}

/// The bench itself: every chosen scenario in turn, its table printed as soon as it is done,
/// then the JSON report.
fn orchestrate(args: &[String]) -> Result<()> {
    let options = options::parse_options(args)?;
    let temp = std::env::temp_dir().join(format!("fulcrum-bench-{}", std::process::id()));
    std::fs::create_dir_all(&temp)?;
    let _temp_guard = TempDir(temp.clone());
    install_signal_handler(temp.clone());
    let fulcrum = if options.pgo {
        pgo::optimized_fulcrum(&options, &temp)?
    } else {
        fulcrum_binary(&options)?
    };
    let env = Environment::discover(&options, fulcrum, temp)?;
    load::write_wrk_script(&env.temp)?;

    let started = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    tables::print_header(&env, &options);
    let mut reports = Vec::new();
    for scenario in scenarios::scenarios() {
        if let Some(only) = &options.only {
            if !only.iter().any(|name| name == scenario.name) {
                continue;
            }
        }
        let report = measure::run_scenario(&env, &options, &scenario);
        tables::print_scenario(&scenario, &report);
        reports.push(report);
    }

    let (json, html) = report::write_reports(&env, &options, args, started, &reports)?;
    println!(
        "\nJSON report: {}\nHTML report: {}",
        json.display(),
        html.display()
    );
    Ok(())
}
