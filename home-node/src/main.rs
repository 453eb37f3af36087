//! `omb-node`: the Own-Mailbox home node.

use anyhow::Context;
use clap::{Parser, Subcommand};
use omb_node::config::NodeConfig;
use omb_node::keys::Keys;
use omb_node::store::MailStore;
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "omb-node", about = "The Own-Mailbox home node")]
struct Cli {
    /// The node's configuration file (see ops/node.example.toml).
    #[arg(long, short, default_value = "/etc/omb/node.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the node: keeps the tunnel to the relay up and stores incoming mail.
    Run,
    /// Reads the mail store.
    Mail {
        #[command(subcommand)]
        command: MailCommand,
    },
    /// Prints the node's OpenPGP fingerprint and tunnel key.
    Keys,
    /// Sets the password mail apps log in with (read from standard input; only
    /// its Argon2id hash is kept).
    Password,
    /// Publishes DNS records of this node's account in the relay's zone, through
    /// the running node's tunnel.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
}

#[derive(Subcommand)]
enum DnsCommand {
    /// Sets the `_acme-challenge.HANDLE.DOMAIN` TXT values for a DNS-01
    /// challenge (RFC 8555 §8.4); with no value, removes them. Returns once the
    /// relay's DNS serves them.
    AcmeChallenge { values: Vec<String> },
}

#[derive(Subcommand)]
enum MailCommand {
    /// Lists the messages of a folder.
    List {
        #[arg(long, default_value = "INBOX")]
        mailbox: String,
    },
    /// Prints one message, decrypted, exactly as it arrived.
    Show {
        /// The message's UID in the folder.
        uid: u32,
        #[arg(long, default_value = "INBOX")]
        mailbox: String,
        /// Print the stored (encrypted) form instead.
        #[arg(long)]
        raw: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    omb_shared::init_logging();
    let cli = Cli::parse();
    let config = NodeConfig::load(&cli.config)?;
    match cli.command {
        Command::Run => {
            let mut node = omb_node::node::start(config).await?;
            tokio::select! {
                _ = node.tasks.join_next() => anyhow::bail!("the node stopped unexpectedly"),
                _ = tokio::signal::ctrl_c() => Ok(()),
            }
        }
        Command::Dns {
            command: DnsCommand::AcmeChallenge { values },
        } => {
            let request = omb_node::control::Request {
                publish: omb_shared::protocol::PublishKind::AcmeChallenge,
                values,
            };
            omb_node::control::request(&config.data_dir, &request).await?;
            println!("published");
            Ok(())
        }
        Command::Password => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            std::fs::create_dir_all(&config.data_dir)?;
            omb_node::access::login::set_password(&config.data_dir, password)?;
            println!("password set for {}", config.address);
            Ok(())
        }
        Command::Keys => {
            let keys = Keys::load_or_create(&config.data_dir, &config.address)?;
            println!(
                "openpgp_fingerprint: {}",
                omb_shared::pgp::fingerprint(&keys.openpgp)
            );
            println!("tunnel_key: {}", keys.tunnel.public());
            Ok(())
        }
        Command::Mail { command } => {
            let store = MailStore::open(&config.data_dir).await?;
            match command {
                MailCommand::List { mailbox } => {
                    let mut text =
                        format!("{:>6}  {:<29}  {:>8}  FLAGS\n", "UID", "RECEIVED", "SIZE");
                    for m in store.list(&mailbox).await? {
                        let date = chrono::DateTime::from_timestamp(m.internaldate, 0)
                            .map(|d| d.to_rfc2822())
                            .unwrap_or_default();
                        text.push_str(&format!(
                            "{:>6}  {:<29}  {:>8}  {}\n",
                            m.uid, date, m.size, m.flags
                        ));
                    }
                    // `omb-node mail list | head` closes the pipe early: not an error.
                    match std::io::stdout().write_all(text.as_bytes()) {
                        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                        other => other?,
                    }
                }
                MailCommand::Show { uid, mailbox, raw } => {
                    let data = store
                        .raw(&mailbox, uid)
                        .await?
                        .with_context(|| format!("no message with UID {uid} in {mailbox}"))?;
                    let out = if raw {
                        data
                    } else {
                        let keys = Keys::load_or_create(&config.data_dir, &config.address)?;
                        omb_shared::pgp::decrypt_message(&keys.openpgp, &data)
                            .context("cannot decrypt the message with this node's key")?
                    };
                    std::io::stdout().write_all(&out)?;
                }
            }
            store.close().await;
            Ok(())
        }
    }
}
