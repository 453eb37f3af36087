//! The relay's DNS server for `bench/dns/run`: a relay store with N accounts
//! (each with a linked node's certificate, for OPENPGPKEY), the zone served
//! from it exactly as `omb-relay serve` does, the same zone exported as a
//! master file for NSD, and a dnsperf query file. Once `DIR/go` exists it
//! creates one account every `--change-every-ms` for `--changes-secs` and
//! measures how long each takes to be answered, then prints the figures as
//! JSON and exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use omb_relay::config::{DnsConfig, RelayConfig};
use omb_relay::dns::{zone_file, DnsServer, RelayZone, ServerOptions, TransferAcl};
use omb_relay::store::{ImportedAccount, ImportedNode, Store};
use omb_shared::types::NodeKey;
use rand::Rng;
use sha2::{Digest, Sha256};
use tokio::net::UdpSocket;

#[derive(Parser)]
struct Args {
    /// Where the store, the zone file and the query file go.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 100_000)]
    accounts: usize,
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Queries in the dnsperf file.
    #[arg(long, default_value_t = 200_000)]
    queries: usize,
    #[arg(long, default_value_t = 20)]
    changes_secs: u64,
    #[arg(long, default_value_t = 250)]
    change_every_ms: u64,
}

const DOMAIN: &str = "sandbox.test";
const IMPORT_BATCH: usize = 10_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let config = RelayConfig {
        domain: DOMAIN.to_string(),
        hostname: Some(format!("mx.{DOMAIN}")),
        data_dir: args.dir.clone(),
        database: "sqlite".to_string(),
        smtp: Default::default(),
        tunnel: Default::default(),
        dns: DnsConfig {
            listen: Some(args.listen),
            resolver: args.listen,
            addresses: vec![std::net::IpAddr::from([127, 0, 0, 1])],
            ..DnsConfig::default()
        },
        accounts: Default::default(),
        http: Default::default(),
        passthrough: Default::default(),
        domains: Default::default(),
        mta_sts: Default::default(),
        outbound: Default::default(),
    };
    let store = omb_relay::server::open_store(&config).await?;
    load_accounts(&store, args.accounts).await?;

    let clients = omb_relay::server::client_settings(&config, Some(993));
    let zone = Arc::new(RelayZone::new(&omb_relay::server::zone_config(
        &config, &clients,
    ))?);
    let started = Instant::now();
    let loaded = zone.load(&store).await?;
    let load_time = started.elapsed();
    tokio::spawn(zone.clone().follow(store.clone(), loaded));
    // The options `omb-relay serve` runs with by default (rate limiting on,
    // loopback exempt), so the measured path is the served one.
    let options = ServerOptions {
        allow_transfer: TransferAcl::parse(&[]).map_err(anyhow::Error::msg)?,
        rrl: config.dns.rrl.clone(),
    };
    let server = DnsServer::bind(args.listen, zone.clone())
        .await?
        .with_options(&options)
        .map_err(anyhow::Error::msg)?;
    let addr = server.local_addr();
    tokio::spawn(server.run());

    std::fs::write(args.dir.join("zone.txt"), zone_file(&zone.read()))?;
    write_queries(&args)?;
    std::fs::write(args.dir.join("port"), addr.port().to_string())?;
    eprintln!(
        "omb-bench-dns: {} accounts loaded into the zone in {load_time:?}; serving on {addr}",
        args.accounts
    );

    let go = args.dir.join("go");
    while !go.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let latencies = changes(&store, addr, &args).await?;
    let mut sorted = latencies.clone();
    sorted.sort();
    let pct = |p: f64| {
        sorted
            .get(((sorted.len() as f64 - 1.0) * p).round() as usize)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };
    println!(
        "{}",
        serde_json::json!({
            "accounts": args.accounts,
            "zone_load_ms": load_time.as_secs_f64() * 1000.0,
            "changes": latencies.len(),
            "change_ms_p50": pct(0.5),
            "change_ms_p99": pct(0.99),
            "change_ms_max": pct(1.0),
        })
    );
    store.close().await;
    Ok(())
}

/// Imports `u0`…`uN-1` (those missing), each with a linked node whose
/// certificate is one real OpenPGP certificate shared by all.
async fn load_accounts(store: &Store, n: usize) -> anyhow::Result<()> {
    let have = store.dns_accounts().await?.len();
    if have >= n {
        return Ok(());
    }
    let cert = omb_shared::pgp::generate_cert(&[format!("bench@{DOMAIN}")])?;
    let bytes = omb_shared::pgp::public_bytes(&cert)?;
    let fingerprint = omb_shared::pgp::fingerprint(&cert).0;
    let started = Instant::now();
    for start in (0..n).step_by(IMPORT_BATCH) {
        let batch: Vec<ImportedAccount> = (start..(start + IMPORT_BATCH).min(n))
            .map(|i| {
                let mut key = [0u8; 32];
                key[..8].copy_from_slice(&(i as u64).to_be_bytes());
                ImportedAccount {
                    handle: format!("u{i}"),
                    node: Some(ImportedNode {
                        node_key: NodeKey(key),
                        cert: bytes.clone(),
                        fingerprint: fingerprint.clone(),
                    }),
                }
            })
            .collect();
        store
            .import_accounts(DOMAIN, 1 << 30, &batch)
            .await
            .context("import accounts")?;
    }
    eprintln!(
        "omb-bench-dns: imported {n} accounts in {:?}",
        started.elapsed()
    );
    Ok(())
}

/// A dnsperf query file: A, MX and TXT of account names and OPENPGPKEY of
/// their addresses, in equal parts, on random accounts.
fn write_queries(args: &Args) -> anyhow::Result<()> {
    let mut rng = rand::thread_rng();
    let mut out = String::with_capacity(args.queries * 48);
    for q in 0..args.queries {
        let i = rng.gen_range(0..args.accounts);
        match q % 4 {
            0 => out.push_str(&format!("u{i}.{DOMAIN} A\n")),
            1 => out.push_str(&format!("u{i}.{DOMAIN} MX\n")),
            2 => out.push_str(&format!("u{i}.{DOMAIN} TXT\n")),
            _ => {
                let hash = Sha256::digest(format!("u{i}").as_bytes());
                out.push_str(&format!(
                    "{}._openpgpkey.{DOMAIN} OPENPGPKEY\n",
                    hex::encode(&hash[..28])
                ));
            }
        }
    }
    std::fs::write(args.dir.join("queries.txt"), out)?;
    Ok(())
}

/// Creates accounts one by one, as the API would, and measures from each
/// commit until the server answers the new name.
async fn changes(store: &Store, server: SocketAddr, args: &Args) -> anyhow::Result<Vec<Duration>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    socket.connect(server).await?;
    let mut latencies = Vec::new();
    let end = Instant::now() + Duration::from_secs(args.changes_secs);
    let mut n = 0u64;
    let tag = rand::random::<u32>();
    while Instant::now() < end {
        let handle = format!("new{tag}x{n}");
        n += 1;
        store
            .create_account(&handle, DOMAIN, 1 << 30)
            .await
            .context("create account")?;
        let committed = Instant::now();
        let name = Name::from_ascii(format!("{handle}.{DOMAIN}."))?;
        loop {
            if answered(&socket, &name).await {
                latencies.push(committed.elapsed());
                break;
            }
            if committed.elapsed() > Duration::from_secs(10) {
                anyhow::bail!("{handle} not served 10 s after it was created");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(args.change_every_ms)).await;
    }
    Ok(latencies)
}

/// Whether the server answers `name A` with a record now.
async fn answered(socket: &UdpSocket, name: &Name) -> bool {
    let mut query = Message::query();
    query.add_query(Query::query(name.clone(), RecordType::A));
    let Ok(bytes) = query.to_vec() else {
        return false;
    };
    if socket.send(&bytes).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_millis(500), socket.recv(&mut buf)).await {
            Ok(Ok(len)) => {
                let Ok(reply) = Message::from_vec(&buf[..len]) else {
                    return false;
                };
                if reply.id != query.id {
                    continue;
                }
                return reply.response_code == ResponseCode::NoError && !reply.answers.is_empty();
            }
            _ => return false,
        }
    }
}
