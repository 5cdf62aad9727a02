//! Command-line arguments of the `fulcrum` binary.

use std::path::PathBuf;

use clap::Parser;

/// A layer-4/7 load balancer.
#[derive(Debug, Parser)]
#[command(name = "fulcrum", version, about)]
pub struct Cli {
    /// Config file to load.
    #[arg(short, long, default_value = "config/fulcrum.toml")]
    pub config: PathBuf,

    /// Validate the config, print a summary (or every error) and exit.
    #[arg(long)]
    pub check: bool,

    /// With --check: print the changes this file would make to the instance whose admin
    /// listener is at this address, without applying them.
    #[arg(long, value_name = "ADMIN_ADDR", requires = "check")]
    pub diff: Option<std::net::SocketAddr>,

    /// Log filter, e.g. `info` or `fulcrum=debug`; overrides RUST_LOG.
    #[arg(long)]
    pub log_level: Option<String>,
}
