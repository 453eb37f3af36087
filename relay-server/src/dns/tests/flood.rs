//! Response-rate limiting on real sockets: a flood from one source, and a second
//! source that keeps getting every answer.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use tokio::net::UdpSocket;
use tokio::time::{timeout, Instant};

use super::{query, sandbox_zone, start_with};
use crate::dns::{RrlConfig, ServerOptions};

async fn socket_on(ip: Ipv4Addr) -> UdpSocket {
    UdpSocket::bind(SocketAddr::from((ip, 0)))
        .await
        .expect("bind a loopback client address")
}

#[tokio::test]
async fn a_flood_from_one_source_leaves_another_answered() {
    // Per-address networks (/32), so that 127.0.0.2 and 127.0.0.3 count apart; the
    // /24 grouping of the default is covered by the unit tests in `rrl`.
    let options = ServerOptions {
        rrl: RrlConfig {
            responses_per_second: 50,
            slip: 2,
            ipv4_prefix: 32,
            exempt: vec![],
            ..RrlConfig::default()
        },
        ..ServerOptions::default()
    };
    let server = start_with(sandbox_zone(), &options).await;
    let flooder = Arc::new(socket_on(Ipv4Addr::new(127, 0, 0, 2)).await);
    let polite = socket_on(Ipv4Addr::new(127, 0, 0, 3)).await;
    let request = query("alice.sandbox.test.", RecordType::A, Some(1232))
        .to_vec()
        .expect("encode");

    // The flood: 2,000 queries as fast as the socket takes them, answers read aside.
    let sent = 2_000usize;
    let reader = {
        let flooder = Arc::clone(&flooder);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let (mut full, mut truncated) = (0usize, 0usize);
            while let Ok(Ok(len)) =
                timeout(Duration::from_millis(500), flooder.recv(&mut buf)).await
            {
                match Message::from_vec(&buf[..len]) {
                    Ok(m) if m.truncation => truncated += 1,
                    Ok(_) => full += 1,
                    Err(_) => {}
                }
            }
            (full, truncated)
        })
    };
    let flood = {
        let flooder = Arc::clone(&flooder);
        let request = request.clone();
        let addr = server.addr;
        tokio::spawn(async move {
            let started = Instant::now();
            for _ in 0..sent {
                let _ = flooder.send_to(&request, addr).await;
            }
            started.elapsed()
        })
    };

    // Meanwhile the other source asks 20 questions, 10 ms apart, as a resolver does
    // (up to 3 tries of 500 ms: the socket's receive buffer can overflow during the
    // flood, which is below anything a rate limiter sees): every one is answered.
    let mut buf = vec![0u8; 4096];
    let (mut answered, mut retries) = (0, 0);
    for _ in 0..20 {
        for attempt in 0..3 {
            polite.send_to(&request, server.addr).await.expect("send");
            let reply = timeout(Duration::from_millis(500), polite.recv(&mut buf)).await;
            if let Ok(Ok(len)) = reply {
                if Message::from_vec(&buf[..len])
                    .is_ok_and(|m| !m.truncation && m.answers.len() == 1)
                {
                    answered += 1;
                    retries += attempt;
                    break;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let flood_time = flood.await.expect("flood");
    let (full, truncated) = reader.await.expect("reader");
    let dropped = sent.saturating_sub(full + truncated);
    println!(
        "rrl: {sent} queries from 127.0.0.2 in {flood_time:?}: {full} answered, \
         {truncated} slipped (TC), {dropped} dropped; 127.0.0.3: {answered}/20 answered ({retries} retries)"
    );
    assert_eq!(answered, 20, "the second source gets every answer");
    // At 50/s with a burst of 50, a flood of a second or less gets at most ~100 answers.
    let allowed = 50 + (flood_time.as_secs_f64() * 50.0).ceil() as usize + 10;
    assert!(
        full <= allowed,
        "{full} answers to the flood (at most {allowed})"
    );
    assert!(truncated > 0 && dropped > 0, "some slipped, some dropped");
}
