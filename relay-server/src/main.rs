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
    /// The relay's DNS zone.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
    /// Manages users' own domains.
    Domain {
        #[command(subcommand)]
        command: DomainCommand,
    },
    /// Prints the tunnel certificate pin that nodes configure.
    Pin,
}

#[derive(Subcommand)]
enum DnsCommand {
    /// Prints the DS record (SHA-256) to publish at the parent zone, and the DNSKEY for
    /// trust anchors; makes the key if the relay has none yet.
    Ds,
    /// Prints the zone as a master file (RFC 1035 §5), accounts included
    /// (unsigned).
    Export,
}

#[derive(Subcommand)]
enum DomainCommand {
    /// Adds DOMAIN to the account HANDLE and prints the records to publish.
    Add { handle: String, domain: String },
    /// Checks DOMAIN's records now and prints each one's state.
    Verify { domain: String },
    /// Lists the domains (of HANDLE, or all) and their states.
    List { handle: Option<String> },
    /// Removes DOMAIN from the account HANDLE; its mail is refused at once.
    Remove { handle: String, domain: String },
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
    /// Issues an API token for the account (for the custom-domain API).
    ApiToken { handle: String },
    /// Creates the accounts named in FILE (one handle per line) in one
    /// transaction, skipping those that exist.
    Import { file: PathBuf },
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
        Command::Domain { command } => domain_command(&config, command).await,
        Command::Dns {
            command: DnsCommand::Export,
        } => {
            let store = omb_relay::server::open_store(&config).await?;
            let clients = omb_relay::server::client_settings(
                &config,
                config.passthrough.imaps.map(|a| a.port()),
            );
            let zone =
                omb_relay::dns::RelayZone::new(&omb_relay::server::zone_config(&config, &clients))?;
            zone.load(&store).await?;
            print!("{}", omb_relay::dns::zone_file(&zone.read()));
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
        AccountCommand::ApiToken { handle } => {
            let token = store.create_api_token(&handle.to_ascii_lowercase()).await?;
            println!("api_token: {token}");
            Ok(())
        }
        AccountCommand::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let mut accounts = Vec::new();
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                // The syntax rules hold; reserved names and look-alikes are the
                // operator's call, as with `account add --force`.
                let handle = Handle::parse(line).with_context(|| {
                    format!("{line:?} in {} cannot be a handle", file.display())
                })?;
                accounts.push(omb_relay::store::ImportedAccount {
                    handle: handle.as_str().to_string(),
                    node: None,
                });
            }
            let created = store
                .import_accounts(&config.domain, config.accounts.quota_bytes, &accounts)
                .await?;
            println!("created {created} of {} accounts", accounts.len());
            Ok(())
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

async fn domain_command(config: &RelayConfig, command: DomainCommand) -> anyhow::Result<()> {
    use omb_relay::domains::{DomainSettings, Domains};
    let store = omb_relay::server::open_store(config).await?;
    let domains = Domains::new(
        store.clone(),
        DomainSettings {
            relay_domain: config.domain.clone(),
            mx_host: config.hostname(),
            resolver: config.domains.resolver.unwrap_or(config.dns.resolver),
            imaps_port: config.passthrough.imaps.map(|a| a.port()),
            recheck: std::time::Duration::from_secs(config.domains.recheck_secs.max(1)),
        },
    );
    match command {
        DomainCommand::Add { handle, domain } => {
            let name = omb_relay::web::check_domain_name(&domain, &config.domain)
                .map_err(anyhow::Error::msg)?;
            let added = store.add_domain(&handle.to_lowercase(), &name).await?;
            println!("domain: {} (pending)", added.domain);
            println!(
                "publish these records, then run `omb-relay domain verify {}`:",
                added.domain
            );
            for r in domains.expected(&added) {
                let need = if r.required {
                    "required"
                } else {
                    "recommended"
                };
                println!(
                    "{}. IN {} {}    ; {need}: {}",
                    r.name, r.rtype, r.value, r.purpose
                );
            }
        }
        DomainCommand::Verify { domain } => {
            let Some(found) = store.domain(&domain).await? else {
                anyhow::bail!("no domain {domain:?} on this relay; add it first");
            };
            let report = domains.verify(&found).await?;
            println!("domain: {} ({:?})", report.domain, report.state);
            for c in &report.records {
                println!(
                    "{:?}\t{}. {} {}\tfound: {}",
                    c.status,
                    c.expected.name,
                    c.expected.rtype,
                    c.expected.value,
                    c.found.join(" | ")
                );
            }
        }
        DomainCommand::List { handle } => {
            for d in store.domains(handle.as_deref()).await? {
                println!("{}\t{}\t{:?}", d.domain, d.handle, d.state);
            }
        }
        DomainCommand::Remove { handle, domain } => {
            if !store.remove_domain(&handle.to_lowercase(), &domain).await? {
                anyhow::bail!("the account {handle:?} has no domain {domain:?}");
            }
            println!("removed {domain}");
        }
    }
    store.close().await;
    Ok(())
}
