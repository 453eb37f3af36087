//! `omb-relay`: the Own-Mailbox relay.

use anyhow::Context;
use clap::{Parser, Subcommand};
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
    /// The relay's DNS zone.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
}

#[derive(Subcommand)]
enum DnsCommand {
    /// Prints the DS record (SHA-256) to publish at the parent zone, and the DNSKEY for
    /// trust anchors; makes the key if the relay has none yet.
    Ds,
}

#[derive(Subcommand)]
enum AccountCommand {
    /// Creates an account HANDLE (address HANDLE@DOMAIN) and prints its one-time link token.
    Add { handle: String },
    /// Issues a new one-time link token for an existing account (to link a new node).
    LinkToken { handle: String },
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
            let handle = match &command {
                AccountCommand::Add { handle } | AccountCommand::LinkToken { handle } => {
                    handle.to_lowercase()
                }
            };
            if let AccountCommand::Add { .. } = command {
                store
                    .create_account(&handle, &config.domain, config.accounts.quota_bytes)
                    .await
                    .context("cannot create the account")?;
            }
            let token = store.create_link_token(&handle).await?;
            println!("account: {handle}@{}", config.domain);
            println!("link_token: {token}");
            println!("tunnel_pin: {}", omb_relay::server::tunnel_pin(&config)?);
            store.close().await;
            Ok(())
        }
        Command::Dns {
            command: DnsCommand::Ds,
        } => {
            let key =
                omb_relay::dns::ZoneKey::load_or_generate(&config.dns.key_path(&config.data_dir))?;
            let mut origin = hickory_proto::rr::Name::from_ascii(&config.domain)
                .context("the relay's domain is not a domain name")?;
            origin.set_fqdn(true);
            let text = format!(
                "{}\n{}\n",
                key.ds_record(&origin, 3600)?,
                key.dnskey_record(&origin, 3600)
            );
            // A reader that closes the pipe early (`| head -1`) is not an error.
            match std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
        Command::Pin => {
            println!("{}", omb_relay::server::tunnel_pin(&config)?);
            Ok(())
        }
    }
}
