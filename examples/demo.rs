//! The demo: three example app servers behind fulcrum, in one process.
//!
//! ```text
//! cargo run --release --example demo
//! ```
//!
//! Starts the app servers on the ports `config/demo.toml` lists, then fulcrum on that file,
//! prints the URLs to open, and stops everything on Ctrl-C (or SIGTERM).

#[path = "common/app.rs"]
mod app;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use http::header::HeaderValue;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
    let config = fulcrum::Config::load(&path)?;
    let stop = CancellationToken::new();

    let mut apps = Vec::new();
    for (i, backend) in config.pools.iter().flat_map(|p| &p.backends).enumerate() {
        let listener = TcpListener::bind(backend.address)
            .await
            .with_context(|| format!("cannot start app server on {}", backend.address))?;
        let name = HeaderValue::from_str(&format!("app-{}", i + 1))?;
        let state = Arc::new(app::State::new(name, None, 0.0));
        apps.push(tokio::spawn(app::serve(
            listener,
            state,
            stop.clone().cancelled_owned(),
        )));
    }

    let server = fulcrum::Server::bind(config).await?;
    println!();
    for name in ["web"] {
        if let Some(address) = server.local_addr(name) {
            println!("  balanced site:   http://{address}/   (each reply names the app server)");
            println!(
                "  try:             curl -s http://{address}/ ; curl -s http://{address}/headers"
            );
        }
    }
    if let Some(admin) = server.admin_addr() {
        println!("  admin:           http://{admin}/healthz");
    }
    println!("  stop:            Ctrl-C");
    println!();

    server
        .run(async {
            app::shutdown_signal().await;
        })
        .await;
    stop.cancel();
    for app in apps {
        app.await?;
    }
    Ok(())
}
