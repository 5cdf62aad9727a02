//! The example user service: an HTTP JSON API that keeps users and sessions in SQLite, meant to
//! run as several instances on one database behind fulcrum (`cargo run --example demo` does
//! exactly that, in one process).
//!
//! ```text
//! cargo run --example user_service -- --port 3001 --name a --db /tmp/fulcrum-demo/users.db
//! ```
//!
//! Routes (every response carries `X-Served-By: NAME`; bodies are JSON):
//!
//! * `GET /` – a page that signs up, signs in and edits the profile with `fetch`
//! * `GET /health` – `200` when the database answers, else `503`
//! * `POST /api/users` `{username, password, display_name}` – `201` user, `409` name taken,
//!   `400` with `fields` naming each missing or invalid field
//! * `POST /api/sessions` `{username, password}` – `200 {token, expires_at, user}`, `401`
//! * `GET /api/me`, `PATCH /api/me` `{display_name}` with `Authorization: Bearer TOKEN` – the
//!   user, `401` without a valid token
//!
//! Passwords are stored as Argon2id hashes; session tokens as their SHA-256 (see
//! `user_service/auth.rs`). Prints `listening on http://ADDR name=NAME` once bound.

#[path = "common/logs.rs"]
mod logs;
#[path = "user_service/mod.rs"]
mod user_service;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;
use user_service::auth::HashCost;

/// Command-line options.
#[derive(Parser, Debug)]
#[command(about = "Example user service (JSON API on SQLite) for fulcrum demos and tests")]
struct Args {
    /// Port to listen on (0 picks an ephemeral port).
    #[arg(long)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Instance name, sent in the `X-Served-By` header.
    #[arg(long, default_value = "user-service")]
    name: String,
    /// SQLite database file shared by all instances [default: <temp dir>/fulcrum-demo/users.db].
    #[arg(long)]
    db: Option<PathBuf>,
    /// Cheap password hashing (1 MiB, 1 pass) for load tests; never for real passwords.
    #[arg(long)]
    fast_hash: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logs::init();
    let args = Args::parse();
    let mut options = user_service::Options::new(
        args.name,
        args.db.unwrap_or_else(user_service::default_db_path),
    );
    if args.fast_hash {
        options.hash_cost = HashCost::Fast;
    }
    let api = user_service::open(&options)
        .await
        .with_context(|| format!("cannot open {}", options.db.display()))?;
    let address = SocketAddr::new(args.host, args.port);
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    println!(
        "listening on http://{} name={} db={}",
        listener.local_addr()?,
        options.name,
        options.db.display()
    );
    std::io::stdout().flush()?;
    user_service::serve(listener, api, user_service::shutdown_signal()).await;
    tracing::info!(name = %options.name, "shut down");
    Ok(())
}
