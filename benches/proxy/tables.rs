//! What the bench prints: the run's setup, then per scenario a table of medians and a verdict
//! line per contender (share of `direct`, what bounded it; idle-10k: fulcrum's memory targets).

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::contenders::Contender;
use crate::environment::Environment;
use crate::load::PERCENTILES;
use crate::options::Options;
use crate::report::{ScenarioReport, Summary};
use crate::scenarios::{H2_STREAMS, IdleShape, Scenario, Traffic};

/// The setup, before the first scenario: rounds, pinning, load generators, what is missing.
pub fn print_header(env: &Environment, options: &Options) {
    println!("fulcrum end-to-end benchmark (all traffic on 127.0.0.1)");
    println!(
        "  {} round(s) x {} s measured (+{} s warm-up) per contender; contenders alternate each round; medians shown",
        options.rounds, options.duration, options.warmup
    );
    if env.pin {
        println!(
            "  pinned with taskset: proxy on core 1; load generator and backends on core 0 ({} cores)",
            env.cores
        );
    } else {
        println!(
            "  NOT pinned ({} core(s){}): proxy, load generator and backends share the CPUs",
            env.cores,
            if options.pin {
                ", or no taskset"
            } else {
                ", --no-pin"
            }
        );
    }
    println!(
        "  load generator: {}",
        match &env.wrk {
            Some(path) => format!("{} (1 thread)", path.display()),
            None => "built-in closed-loop HTTP/1.1 generator (hyper, 1 thread)".to_owned(),
        }
    );
    println!(
        "  HTTP/2 load generator: {}",
        match &env.h2load {
            Some(path) => format!(
                "{} (1 thread, {H2_STREAMS} streams per connection)",
                path.display()
            ),
            None => "none (h2 and h2-tls are skipped)".to_owned(),
        }
    );
    println!(
        "  backends: built-in hyper server, one single-threaded process each; fulcrum: {}",
        env.fulcrum.display()
    );
    let missing: Vec<&str> = [("nginx", &env.nginx), ("haproxy", &env.haproxy)]
        .iter()
        .filter(|(_, path)| path.is_none())
        .map(|(name, _)| *name)
        .collect();
    if !missing.is_empty() {
        println!("  not installed, skipped: {}", missing.join(", "));
    }
}

/// A latency in µs, scaled to us, ms or s; `-` for none, `n/a` where the generator gave none.
fn fmt_latency(micros: Option<f64>) -> String {
    match micros {
        None => "-".to_owned(),
        Some(us) if us.is_nan() => "n/a".to_owned(),
        Some(us) if us >= 1e6 => format!("{:.2}s", us / 1e6),
        Some(us) if us >= 1e3 => format!("{:.2}ms", us / 1e3),
        Some(us) => format!("{us:.0}us"),
    }
}

/// `format`ted, or `-` for none.
fn fmt_option(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map_or_else(|| "-".to_owned(), format)
}

/// One scenario's table and verdicts (or why it was skipped).
pub fn print_scenario(scenario: &Scenario, report: &ScenarioReport) {
    println!("\n== {}: {}", report.name, report.about);
    if let Some(reason) = &report.skipped {
        println!("   {reason}");
        return;
    }
    if let Some(shape) = scenario.idle() {
        print_idle(scenario, shape, report);
        return;
    }
    let cpu_unit = if scenario.traffic == Traffic::Tcp {
        "CPU/MiB"
    } else {
        "CPU/req"
    };
    let [p50, p99, p999, p9999] = PERCENTILES.map(|(_, name)| name);
    println!(
        "   {:<9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>8} {:>8} {:>7} {:>7} {:>9}",
        "contender",
        report.unit,
        p50,
        p99,
        p999,
        p9999,
        "errors",
        cpu_unit,
        "user",
        "system",
        "proxy%",
        "client%",
        "peak RSS"
    );
    let mut summaries: HashMap<Contender, Summary> = HashMap::new();
    for contender in &report.contenders {
        let name = contender.contender.name();
        if let Some(reason) = &contender.skipped {
            println!("   {name:<9} skipped: {reason}");
            continue;
        }
        if contender.runs.is_empty() {
            let why = contender.failures.first().map_or("", String::as_str);
            println!("   {name:<9} failed: {why}");
            continue;
        }
        let s = contender.summary();
        let [p50, p99, p999, p9999] = s.latency.map(fmt_latency);
        let per_op = |value: Option<f64>| fmt_option(value, |us| format!("{us:.1}us"));
        println!(
            "   {:<9} {:>11} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>8} {:>8} {:>7} {:>7} {:>9}",
            name,
            fmt_option(s.rate, |r| format!("{r:.0}")),
            p50,
            p99,
            p999,
            p9999,
            fmt_option(s.errors, |e| format!("{e:.0}")),
            per_op(s.cpu),
            per_op(s.cpu_user),
            per_op(s.cpu_system),
            fmt_option(s.proxy_core, |c| format!("{:.0}%", c * 100.0)),
            fmt_option(s.client_core, |c| format!("{:.0}%", c * 100.0)),
            fmt_option(s.rss, |kib| format!("{:.1}MiB", kib / 1024.0)),
        );
        if !contender.failures.is_empty() {
            println!(
                "   {:<9} ({} failed run(s): {})",
                "",
                contender.failures.len(),
                contender.failures[0]
            );
        }
        summaries.insert(contender.contender, s);
    }
    let ceiling = summaries.get(&Contender::Direct).and_then(|s| s.rate);
    for contender in &report.contenders {
        let Some(s) = summaries.get(&contender.contender) else {
            continue;
        };
        let name = contender.contender.name();
        let mut verdict = String::new();
        if let (Some(ceiling), Some(rate), false) =
            (ceiling, s.rate, contender.contender == Contender::Direct)
        {
            let _ = write!(verdict, "{:.0}% of direct; ", rate / ceiling * 100.0);
        }
        let proxy = s.proxy_core.unwrap_or(0.0);
        let client = s.client_core.unwrap_or(0.0);
        verdict.push_str(if proxy >= 0.9 {
            "bound by the proxy (its core is busy)"
        } else if client >= 0.9 {
            "bound by the client side (load generator + backends saturate their core)"
        } else {
            "no core saturated (latency-bound, or a different limit)"
        });
        if let Some(tls) = contender
            .runs
            .iter()
            .find_map(|run| run.load.tls.as_deref())
        {
            let _ = write!(verdict, "; {tls}");
        }
        println!("   {name:<9} -> {verdict}");
    }
}

/// fulcrum's memory target for the idle proxy, printed next to every contender's idle
/// figures.
const IDLE_TARGET_MIB: f64 = 20.0;

/// An idle scenario's table and verdicts: memory instead of throughput.
fn print_idle(scenario: &Scenario, shape: IdleShape, report: &ScenarioReport) {
    let mib = |kib: f64| format!("{:.1}MiB", kib / 1024.0);
    println!(
        "   {:<9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7} {:>6} {:>6} {:>6} {:>6} {:>9}",
        "contender",
        "idle RSS",
        format!("{}k RSS", scenario.connections / 1000),
        "added",
        "per conn",
        "closed",
        "opened",
        "failed",
        "kept",
        "parked",
        "in",
        "CPU/conn"
    );
    for contender in &report.contenders {
        let name = contender.contender.name();
        if let Some(reason) = &contender.skipped {
            println!("   {name:<9} skipped: {reason}");
            continue;
        }
        let summary = contender.summary();
        let Some(idle) = &summary.idle else {
            let why = contender.failures.first().map_or("", String::as_str);
            println!("   {name:<9} failed: {why}");
            continue;
        };
        println!(
            "   {:<9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>7.0} {:>6.0} {:>6.0} {:>6} {:>6} {:>9}",
            name,
            mib(idle.rss_idle_kib),
            mib(idle.rss_loaded_kib),
            mib(idle.added_kib),
            format!("{:.1}KiB", idle.per_conn_kib()),
            mib(idle.rss_closed_kib),
            idle.opened,
            idle.failed,
            idle.still_open,
            fmt_option(idle.parked, |n| format!("{n:.0}")),
            format!("{:.1}s", idle.open_seconds),
            fmt_option(summary.cpu, |us| format!("{us:.0}us")),
        );
    }
    let nginx = report
        .contenders
        .iter()
        .find(|contender| contender.contender == Contender::Nginx)
        .and_then(|contender| contender.summary().idle);
    for contender in &report.contenders {
        let Some(idle) = contender.summary().idle else {
            continue;
        };
        let idle_mib = idle.rss_idle_kib / 1024.0;
        let per_conn = idle.per_conn_kib();
        let meets = |value: f64, target: f64| if value <= target { "met" } else { "MISSED" };
        let mut line = format!(
            "idle {idle_mib:.1} MiB (target < {IDLE_TARGET_MIB} MiB: {}); {:.0} connections quiet for {} s add {per_conn:.1} KiB each (target <= {} KiB: {})",
            meets(idle_mib, IDLE_TARGET_MIB),
            idle.opened,
            shape.quiet.as_secs_f64(),
            shape.target_kib_per_conn,
            meets(per_conn, shape.target_kib_per_conn),
        );
        if let (Some(nginx), false) = (&nginx, contender.contender == Contender::Nginx) {
            let _ = write!(
                line,
                "; {:.2}x nginx's {:.1} KiB",
                per_conn / nginx.per_conn_kib().max(0.01),
                nginx.per_conn_kib()
            );
        }
        if idle.still_open < scenario.connections as f64 {
            let _ = write!(
                line,
                "; only {:.0} of {} connections were open at the reading",
                idle.still_open, scenario.connections
            );
        }
        println!("   {:<9} -> {line}", contender.contender.name());
    }
}
