//! The SMTP submission client of `bench/outbound/run`: what `smtp-source` is
//! for Postfix's side, with the AUTH PLAIN that submission to a node needs
//! (smtp-source has no AUTH). Each of `--sessions` connections says EHLO and
//! AUTH once, then sends messages numbered `--first` onwards, one at a time
//! (no PIPELINING, as smtp-source), until `--count` are sent. The messages
//! are the ones `outbound.py` makes. Prints the number refused (any reply but
//! 250 to the final dot) and the first such reply.
//!
//! Compiled, so that the client's own CPU is about smtp-source's: on a
//! two-core machine a Python asyncio client took CPU from the servers it
//! measured, and from omb's side only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use base64::Engine;
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    server: SocketAddr,
    #[arg(long)]
    user: String,
    #[arg(long)]
    password: String,
    /// The envelope and header sender.
    #[arg(long)]
    from: String,
    /// Recipients are rN@DOMAIN.
    #[arg(long)]
    domain: String,
    #[arg(long, default_value_t = 20)]
    sessions: usize,
    #[arg(long)]
    first: usize,
    #[arg(long)]
    count: usize,
    /// Body bytes per message.
    #[arg(long, default_value_t = 4096)]
    size: usize,
}

/// Message `n`, as `outbound.py`'s `message()` makes it, dot-stuffed and
/// ended with the final dot.
fn message(from: &str, domain: &str, n: usize, size: usize) -> Vec<u8> {
    let head = format!(
        "From: <{from}>\r\nTo: <r{n}@{domain}>\r\nSubject: outbound bench {n}\r\n\
         Date: Fri, 27 Nov 2026 12:00:00 +0000\r\nMessage-ID: <bench.{n}.{}@bench.client>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n",
        std::process::id()
    );
    let line = format!("The quick brown fox jumps over the lazy dog, message {n}.\r\n");
    let mut body: Vec<u8> = line.as_bytes().repeat(size / line.len() + 1);
    body.truncate(size);
    // Up to the last whole line, as outbound.py does.
    if let Some(end) = body.windows(2).rposition(|w| w == b"\r\n") {
        body.truncate(end + 2);
    }
    let mut out = head.into_bytes();
    for l in body.split_inclusive(|&b| b == b'\n') {
        if l.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(l);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// One reply (all its lines): its code and its text.
async fn reply(
    reader: &mut BufReader<TcpStream>,
    line: &mut String,
) -> anyhow::Result<(u16, String)> {
    let mut text = String::new();
    loop {
        line.clear();
        if reader.read_line(line).await? == 0 {
            bail!("the server closed the connection");
        }
        text.push_str(line);
        if line.as_bytes().get(3) != Some(&b'-') {
            let code = line
                .get(..3)
                .and_then(|c| c.parse().ok())
                .context("no reply code")?;
            return Ok((code, text));
        }
    }
}

async fn expect(
    reader: &mut BufReader<TcpStream>,
    line: &mut String,
    command: &[u8],
    class: u16,
) -> anyhow::Result<()> {
    if !command.is_empty() {
        reader.get_mut().write_all(command).await?;
    }
    let (code, text) = reply(reader, line).await?;
    if code / 100 != class {
        bail!(
            "{} -> {}",
            String::from_utf8_lossy(command).trim(),
            text.trim()
        );
    }
    Ok(())
}

async fn session(
    args: Arc<Args>,
    next: Arc<AtomicUsize>,
    refused: Arc<Mutex<Vec<String>>>,
) -> anyhow::Result<()> {
    let stream = TcpStream::connect(args.server).await?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("\0{}\0{}", args.user, args.password));
    expect(&mut reader, &mut line, b"", 2).await?;
    expect(&mut reader, &mut line, b"EHLO bench.client\r\n", 2).await?;
    expect(
        &mut reader,
        &mut line,
        format!("AUTH PLAIN {auth}\r\n").as_bytes(),
        2,
    )
    .await?;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= args.count {
            break;
        }
        let n = args.first + i;
        let mail = format!("MAIL FROM:<{}>\r\n", args.from);
        expect(&mut reader, &mut line, mail.as_bytes(), 2).await?;
        let rcpt = format!("RCPT TO:<r{n}@{}>\r\n", args.domain);
        expect(&mut reader, &mut line, rcpt.as_bytes(), 2).await?;
        expect(&mut reader, &mut line, b"DATA\r\n", 3).await?;
        reader
            .get_mut()
            .write_all(&message(&args.from, &args.domain, n, args.size))
            .await?;
        let (code, text) = reply(&mut reader, &mut line).await?;
        if code != 250 {
            if let Ok(mut r) = refused.lock() {
                r.push(text.trim().to_string());
            }
        }
    }
    let _ = reader.get_mut().write_all(b"QUIT\r\n").await;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    let next = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let sessions: Vec<_> = (0..args.sessions)
        .map(|_| tokio::spawn(session(args.clone(), next.clone(), refused.clone())))
        .collect();
    for s in sessions {
        s.await.context("a session panicked")??;
    }
    let refused = refused.lock().map(|r| r.clone()).unwrap_or_default();
    println!("{}", refused.len());
    if let Some(first) = refused.first() {
        println!("{first}");
    }
    Ok(())
}
