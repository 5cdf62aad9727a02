//! The command line: `--help`'s text and the options it describes, with `--quick`'s shorter
//! defaults applied under any explicit value.

use std::path::PathBuf;

use crate::{Error, Result};

/// What `--help` prints, and what an unknown option is answered with.
const USAGE: &str = "\
usage: cargo bench --bench proxy -- [options]

  --quick               1 round of 1 s per contender, no warm-up (a few minutes)
  --rounds N            rounds per scenario (default 3); contenders alternate A B C A B C ...
  --duration SECS       measured seconds per run (default 10; --quick: 1)
  --warmup SECS         unmeasured seconds before each run (default 1; --quick: 0; h2 and
                        h2-tls: at least 1)
  --only NAME,...       scenarios to run (default all): keepalive-64 keepalive-1000
                        keepalive-64-3nginx keepalive-1000-3nginx body-64k close tls h2
                        h2-tls failover tcp-bulk idle-2k idle-10k
  --contenders NAME,... subset of: direct fulcrum nginx haproxy (default all that are installed)
  --fulcrum PATH        the fulcrum binary (default: target/release/fulcrum, built first with
                        `cargo build --release --bin fulcrum`)
  --pgo                 measure a profile-guided build of fulcrum instead: cargo-pgo builds it
                        instrumented, it serves every HTTP and TCP scenario once (2 s each) as
                        training, and the build optimized from that profile is measured; it
                        stays at target/<host triple>/release/fulcrum, to deploy (needs
                        `cargo install cargo-pgo` and `rustup component add llvm-tools`)
  --builtin-load        use the built-in HTTP/1.1 load generator even where wrk is installed
  --no-pin              do not pin processes to cores with taskset
  --json PATH           where to write the JSON report (default target/bench/proxy-<time>.json);
                        the HTML report goes next to it (.html)
";

/// The parsed command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds per scenario, at least 1.
    pub rounds: usize,
    /// Measured seconds per run, at least 1.
    pub duration: u64,
    /// Unmeasured seconds before each run.
    pub warmup: u64,
    /// Scenarios to run; `None` runs all.
    pub only: Option<Vec<String>>,
    /// Contenders to run; `None` runs every one that is installed.
    pub contenders: Option<Vec<String>>,
    /// A fulcrum binary to measure instead of building the release one.
    pub fulcrum: Option<PathBuf>,
    /// Measure a profile-guided build (`--pgo`).
    pub pgo: bool,
    /// Use the built-in HTTP/1.1 load generator even where wrk is installed.
    pub builtin_load: bool,
    /// Pin processes to cores (when `taskset` and two cores are there).
    pub pin: bool,
    /// Where to write the JSON report instead of `target/bench/`.
    pub json: Option<PathBuf>,
    /// `--quick` was given.
    pub quick: bool,
}

/// Parses the bench's arguments; `--help` prints the usage and exits.
pub fn parse_options(args: &[String]) -> Result<Options> {
    let mut options = Options {
        rounds: 3,
        duration: 10,
        warmup: 1,
        only: None,
        contenders: None,
        fulcrum: None,
        pgo: false,
        builtin_load: false,
        pin: true,
        json: None,
        quick: false,
    };
    let mut explicit = (None, None, None);
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .cloned()
                .ok_or_else(|| Error::from(format!("{flag} needs a value")))
        };
        let list = |text: String| text.split(',').map(str::to_owned).collect::<Vec<_>>();
        match flag.as_str() {
            // cargo bench passes --bench to every bench binary.
            "--bench" => {}
            "--quick" => options.quick = true,
            "--rounds" => explicit.0 = Some(value()?.parse()?),
            "--duration" => explicit.1 = Some(value()?.parse()?),
            "--warmup" => explicit.2 = Some(value()?.parse()?),
            "--only" => options.only = Some(list(value()?)),
            "--contenders" => options.contenders = Some(list(value()?)),
            "--fulcrum" => options.fulcrum = Some(PathBuf::from(value()?)),
            "--pgo" => options.pgo = true,
            "--builtin-load" => options.builtin_load = true,
            "--no-pin" => options.pin = false,
            "--json" => options.json = Some(PathBuf::from(value()?)),
            "--help" | "-h" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other}\n\n{USAGE}").into()),
        }
    }
    if options.pgo && options.fulcrum.is_some() {
        return Err("--pgo builds the fulcrum it measures: it cannot be given --fulcrum".into());
    }
    if options.quick {
        (options.rounds, options.duration, options.warmup) = (1, 1, 0);
    }
    options.rounds = explicit.0.unwrap_or(options.rounds).max(1);
    options.duration = explicit.1.unwrap_or(options.duration).max(1);
    options.warmup = explicit.2.unwrap_or(options.warmup);
    Ok(options)
}
