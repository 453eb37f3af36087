//! `omb-sandbox`: a complete Own-Mailbox system on loopback.
//!
//! `cargo run --release --bin omb-sandbox -- --dir DIR` starts a relay (zone
//! `sandbox.test`, its own DNS server) and the home nodes `alice` and `bob`,
//! links them, writes `DIR/sandbox.json`, and runs until interrupted.

use clap::Parser;
use omb_tests::sandbox::{self, SandboxOptions};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "omb-sandbox",
    about = "A complete Own-Mailbox system on loopback"
)]
struct Cli {
    /// Folder for all state; `DIR/sandbox.json` describes the running system.
    #[arg(long, default_value = "omb-sandbox")]
    dir: PathBuf,
    /// Home nodes to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "alice,bob")]
    nodes: Vec<String>,
    /// A static outbound route DOMAIN=HOST:PORT (repeatable).
    #[arg(long = "route", value_parser = parse_route)]
    routes: Vec<(String, String)>,
    /// Run the tunnel over Tor where a Tor network is configured.
    #[arg(long)]
    tor: bool,
}

fn parse_route(s: &str) -> Result<(String, String), String> {
    let (domain, target) = s.split_once('=').ok_or("expected DOMAIN=HOST:PORT")?;
    if !target.contains(':') {
        return Err("expected DOMAIN=HOST:PORT".into());
    }
    Ok((domain.to_lowercase(), target.to_string()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    omb_shared::init_logging();
    let cli = Cli::parse();
    if cli.tor {
        anyhow::bail!("--tor: the Tor transport is not built yet; run without --tor");
    }
    let opts = SandboxOptions {
        dir: cli.dir,
        nodes: cli.nodes,
        routes: cli.routes,
        tor: cli.tor,
    };
    let sandbox = sandbox::start(&opts).await?;
    let json = opts.dir.join("sandbox.json");
    eprintln!("sandbox running; described in {}", json.display());
    println!("{}", serde_json::to_string_pretty(&sandbox.manifest)?);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
