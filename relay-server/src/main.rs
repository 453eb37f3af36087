//! `omb-relay`: the Own-Mailbox relay.

use anyhow::Context;
use clap::{Parser, Subcommand};
use omb_relay::accounts::Handle;
use omb_relay::config::RelayConfig;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "omb-relay",
    about = "The Own-Mailbox relay: MX, encrypting spool and tunnel to home nodes"
)]
struct Cli {
    /// The relay's configuration file (see ops/relay.example.toml).
    #[arg(long, short, default_value = "/etc/omb/relay.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the relay.
    Serve,
    /// Manages accounts.
    Account {
        #[command(subcommand)]
        command: AccountCommand,
    },
    /// Prints the tunnel certificate pin that nodes configure.
    Pin,
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Creates an account HANDLE (address HANDLE@DOMAIN) and prints its one-time
    /// link token. The handle rules of signups apply (3 to 32 letters, digits
    /// and inner hyphens; not reserved; no look-alike of an existing handle).
    Add {
        handle: String,
        /// Allows a reserved handle (postmaster, abuse, …) or a look-alike of an
        /// existing one; the syntax rules still apply.
        #[arg(long)]
        force: bool,
    },
    /// Issues a new one-time link token for an existing account (to link a new node).
    LinkToken { handle: String },
    /// Turns ANYTHING@HANDLE.DOMAIN on or off for an account.
    Aliases { handle: String, state: OnOff },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    omb_shared::init_logging();
    let cli = Cli::parse();
    let config = RelayConfig::load(&cli.config)?;
    match cli.command {
        Command::Serve => {
            let relay = omb_relay::server::start(config).await?;
            tracing::info!(smtp = %relay.smtp, tunnel = %relay.tunnel, dns = ?relay.dns, imaps = ?relay.imaps, https = ?relay.https, pin = %relay.tunnel_pin, "relay running");
            tokio::select! {
                r = relay.wait() => r,
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
        Command::Account { command } => {
            let store = omb_relay::server::open_store(&config).await?;
            let result = account(&config, &store, command).await;
            store.close().await;
            result
        }
        Command::Pin => {
            println!("{}", omb_relay::server::tunnel_pin(&config)?);
            Ok(())
        }
    }
}

async fn account(
    config: &RelayConfig,
    store: &omb_relay::store::Store,
    command: AccountCommand,
) -> anyhow::Result<()> {
    match command {
        AccountCommand::Add { handle, force } => {
            let handle = if force {
                Handle::parse(&handle)
            } else {
                Handle::parse_for_signup(&handle)
            }
            .context("this handle cannot be used")?;
            store
                .create_account_checked(&handle, &config.domain, config.accounts.quota_bytes, force)
                .await
                .context("cannot create the account")?;
            print_link(config, store, handle.as_str()).await
        }
        AccountCommand::LinkToken { handle } => {
            print_link(config, store, &handle.to_ascii_lowercase()).await
        }
        AccountCommand::Aliases { handle, state } => {
            let handle = handle.to_ascii_lowercase();
            let on = matches!(state, OnOff::On);
            store
                .set_aliases(&handle, on)
                .await
                .context("cannot change the aliases")?;
            println!(
                "aliases: ANYTHING@{handle}.{} {}",
                config.domain,
                if on { "on" } else { "off" }
            );
            Ok(())
        }
    }
}

/// Prints a new link token for `handle`, with what a node needs beside it.
async fn print_link(
    config: &RelayConfig,
    store: &omb_relay::store::Store,
    handle: &str,
) -> anyhow::Result<()> {
    let token = store.create_link_token(handle).await?;
    println!("account: {handle}@{}", config.domain);
    println!("link_token: {token}");
    println!("tunnel_pin: {}", omb_relay::server::tunnel_pin(config)?);
    Ok(())
}
