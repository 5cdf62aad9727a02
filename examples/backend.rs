//! A tiny HTTP application server for demos, manual testing and benchmarks
//! of `fulcrum`.
//!
//! It speaks HTTP/1.1 and cleartext HTTP/2 (h2c) on one port and prints a
//! single line, `listening on http://ADDR name=NAME`, to stdout once bound,
//! so a parent process can learn the port when started with `--port 0`.
//!
//! ```text
//! cargo run --example backend -- --port 9001 --name a --delay 20ms --fail-rate 0.1
//! ```
//!
//! Routes (every response carries `X-Served-By: NAME`):
//!
//! * `GET /health` – `200 ok` (never affected by `--fail-rate`)
//! * `/slow/<millis>` – sleeps, then answers with the instance name
//! * `/status/<code>` – answers with that status code
//! * `/bytes/<n>` – streams an `n`-byte body in 64 KiB chunks
//! * `/echo` – streams the request body back, keeping its content type
//! * `/headers` – the request line and headers as plain text
//! * anything else – `NAME\n`
//!
//! `--delay` is applied before every response; `--fail-rate r` makes exactly
//! a fraction `r` of requests (deterministically spread) answer `500`.

#[path = "common/app.rs"]
mod app;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use http::header::HeaderValue;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(about = "Example HTTP backend for fulcrum demos and benchmarks")]
struct Args {
    /// Port to listen on (0 picks an ephemeral port).
    #[arg(long)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Instance name, returned in bodies and the `X-Served-By` header.
    #[arg(long, default_value = "backend", value_parser = parse_name)]
    name: HeaderValue,
    /// Delay before every response, e.g. `200ms`.
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<Duration>,
    /// Fraction of requests (0..=1) that answer 500.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    fail_rate: f64,
}

fn parse_name(s: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(s).map_err(|e| format!("not a valid header value: {e}"))
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}` is not a number between 0 and 1")),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    // fulcrum's own bind: the longest accept backlog the kernel allows, so a proxy opening a
    // thousand connections at once does not wait a second for SYN retries.
    let listener = fulcrum::server::accept::bind(SocketAddr::new(args.host, args.port)).await?;
    let name = String::from_utf8_lossy(args.name.as_bytes()).into_owned();
    println!("listening on http://{} name={name}", listener.local_addr()?);
    std::io::stdout().flush().expect("flush stdout");
    let state = Arc::new(app::State::new(args.name, args.delay, args.fail_rate));
    app::serve(listener, state, app::shutdown_signal()).await;
    eprintln!("{name}: shutting down");
    Ok(())
}
