//! The demo: three user-service instances on one SQLite database behind fulcrum, in one process.
//!
//! ```text
//! cargo run --release --example demo
//! ```
//!
//! Starts the instances on the ports `config/demo.toml` lists (the database goes to
//! `<temp dir>/fulcrum-demo/users.db`), then fulcrum on that file, prints the URLs to open, and
//! stops everything on Ctrl-C (or SIGTERM): fulcrum drains first, then the instances stop.

#[path = "common/logs.rs"]
mod logs;
#[path = "user_service/mod.rs"]
mod user_service;

use std::path::Path;

use anyhow::Context as _;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    logs::init();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/demo.toml");
    let config = fulcrum::Config::load(&path)?;
    let db = user_service::default_db_path();

    let mut instances = Vec::new();
    for (i, backend) in config.pools.iter().flat_map(|p| &p.backends).enumerate() {
        let listener = TcpListener::bind(backend.address)
            .await
            .with_context(|| format!("cannot start a user service on {}", backend.address))?;
        let options = user_service::Options::new(format!("app-{}", i + 1), &db);
        let instance = user_service::Instance::start(listener, &options)
            .await
            .with_context(|| format!("cannot open the database {}", db.display()))?;
        instances.push(instance);
    }

    let server = fulcrum::Server::bind(config).await?;
    println!();
    if let Some(address) = server.local_addr("web") {
        println!(
            "  the page:        http://{address}/   (sign up, sign in, watch which app answers)"
        );
        println!(
            "  the API:         curl -si http://{address}/api/users -H 'content-type: application/json' \\"
        );
        println!(
            r#"                     -d '{{"username":"ada","password":"correct horse","display_name":"Ada"}}'"#
        );
    }
    if let Some(admin) = server.admin_addr() {
        println!("  admin:           http://{admin}/");
    }
    println!("  database:        {}", db.display());
    println!("  stop:            Ctrl-C");
    println!();

    server.run(user_service::shutdown_signal()).await;
    for instance in instances {
        instance.stop().await;
    }
    Ok(())
}
