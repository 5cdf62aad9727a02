//! `--pgo`: measure a profile-guided build of fulcrum, made with cargo-pgo. An instrumented
//! build serves every HTTP and TCP scenario once (fulcrum alone, one short round each) as its
//! training; cargo-pgo then merges the profile those runs wrote and builds the optimized
//! binary from it, which is what the bench measures and what an operator deploys.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Result;
use crate::environment::{Environment, cargo_command, target_dir};
use crate::options::Options;
use crate::{load, measure, scenarios};

/// Seconds each training run lasts: enough for every path of a scenario to run thousands
/// of times, short enough that training takes about a minute.
const TRAINING_SECONDS: u64 = 2;

/// Builds the instrumented fulcrum, trains it, and builds the optimized one; its path.
pub fn optimized_fulcrum(options: &Options, temp: &Path) -> Result<PathBuf> {
    let installed = Command::new("cargo-pgo").arg("--version").output();
    if !installed.is_ok_and(|output| output.status.success()) {
        return Err("--pgo needs cargo-pgo and LLVM's profile tools: \
                    `cargo install cargo-pgo` and `rustup component add llvm-tools`"
            .into());
    }
    // cargo-pgo builds for the host triple named explicitly (so build scripts are not
    // instrumented), which puts the binary under the triple's directory.
    let binary = target_dir()
        .join(host_triple()?)
        .join("release")
        .join("fulcrum");
    cargo_pgo(&["build"])?;
    let training = Options {
        rounds: 1,
        duration: TRAINING_SECONDS,
        warmup: 0,
        only: None,
        contenders: Some(vec!["fulcrum".to_owned()]),
        ..options.clone()
    };
    let env = Environment::discover(&training, binary.clone(), temp.to_owned())?;
    load::write_wrk_script(&env.temp)?;
    eprintln!("training the instrumented fulcrum: every HTTP and TCP scenario once");
    for scenario in scenarios::scenarios() {
        if scenario.idle().is_some() {
            continue;
        }
        let report = measure::run_scenario(&env, &training, &scenario);
        if let Some(reason) = &report.skipped {
            eprintln!("   not trained on {}: {reason}", scenario.name);
        }
    }
    cargo_pgo(&["optimize", "build"])?;
    Ok(binary)
}

/// Runs `cargo pgo <step> -- --bin fulcrum` in the package's directory.
fn cargo_pgo(step: &[&str]) -> Result<()> {
    let mut command = cargo_command();
    command
        .arg("pgo")
        .args(step)
        .args(["--", "--bin", "fulcrum"]);
    eprintln!(
        "building fulcrum: cargo pgo {} -- --bin fulcrum",
        step.join(" ")
    );
    if !command.status()?.success() {
        return Err(format!("cargo pgo {} failed", step.join(" ")).into());
    }
    Ok(())
}

/// The triple rustc builds for by default (`host:` in `rustc -vV`).
fn host_triple() -> Result<String> {
    let output = Command::new("rustc").arg("-vV").output()?;
    host_of(&String::from_utf8_lossy(&output.stdout))
        .map(str::to_owned)
        .ok_or_else(|| "rustc -vV named no host triple".into())
}

/// The `host:` line's value in `rustc -vV`'s output.
fn host_of(version: &str) -> Option<&str> {
    version
        .lines()
        .find_map(|line| line.strip_prefix("host:"))
        .map(str::trim)
}
