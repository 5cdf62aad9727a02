//! Logging set-up shared by the examples: `RUST_LOG` (default `info`), with ANSI colour only
//! when stdout is a terminal, as the `fulcrum` binary does, so a log written to a file or a
//! pipe carries no escape codes.

use std::io::IsTerminal;

/// Installs the global tracing subscriber, writing to stdout.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();
}
