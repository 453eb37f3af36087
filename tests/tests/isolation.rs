//! A node only ever gets its own account's mail: the relay refuses used tokens,
//! keys it doesn't know, and signatures by the wrong key; a node can't make the
//! relay drop another account's mail; a node checks the relay's pinned key.
//! These speak the tunnel protocol directly, as a hostile node would.

use omb_shared::identity::Identity;
use omb_shared::pgp;
use omb_shared::protocol::{read_frame, write_frame, Frame, FrameDecoder, PROTOCOL_VERSION};
use omb_shared::transport::quic::QuicConnector;
use omb_shared::transport::{Connector, TransportError, TunnelStream};
use omb_tests::harness::{have_tool, swaks, token, wait_until, Node, Relay, TestDir};
use std::time::Duration;

struct Peer {
    stream: TunnelStream,
    dec: FrameDecoder,
}

impl Peer {
    async fn connect(relay: &Relay, pin: &str) -> Self {
        let connector = QuicConnector::new(&relay.tunnel.to_string(), pin).expect("connector");
        Peer {
            stream: connector.connect().await.expect("connect"),
            dec: FrameDecoder::new(),
        }
    }
    async fn send(&mut self, f: &Frame) {
        write_frame(&mut self.stream.send, f)
            .await
            .expect("send frame");
    }
    async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(
            Duration::from_secs(10),
            read_frame(&mut self.stream.recv, &mut self.dec),
        )
        .await
        .ok()?
        .ok()
    }
    /// Hello + Challenge; returns the nonce.
    async fn hello(&mut self, key: [u8; 32]) -> [u8; 32] {
        self.send(&Frame::Hello {
            version: PROTOCOL_VERSION,
            node_key: key,
        })
        .await;
        match self.recv().await {
            Some(Frame::Challenge { nonce }) => nonce,
            other => panic!("expected a challenge, got {other:?}"),
        }
    }
    /// Links a fresh identity with `token`; returns the relay's answer.
    async fn link(&mut self, id: &Identity, token: &str, address: &str) -> Option<Frame> {
        let nonce = self.hello(id.public().0).await;
        let cert = pgp::generate_cert(&[format!("<{address}>")]).expect("cert");
        let signature = id.sign_challenge(&nonce, &self.stream.binding);
        self.send(&Frame::Link {
            token: token.to_string(),
            openpgp_cert: pgp::public_bytes(&cert).expect("cert bytes"),
            signature,
        })
        .await;
        self.recv().await
    }
}

fn refused(f: Option<Frame>) -> String {
    match f {
        Some(Frame::Refused { reason }) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_refuses_nodes_it_must_not_trust() {
    let dir = TestDir::new("isolation");
    let mut relay = Relay::new(dir.path(), "sqlite", "");
    relay.start();
    let pin = relay.pin();
    let alice_token = relay.add_account("alice");
    let mut alice = Node::new(dir.path(), &relay, "alice", Some(&alice_token));
    alice.start();
    alice.wait_tunnel_ups(1, Duration::from_secs(30));

    // A used token.
    let mut p = Peer::connect(&relay, &pin).await;
    let reason = refused(
        p.link(&Identity::generate(), &alice_token, "mallory@sandbox.test")
            .await,
    );
    assert!(reason.contains("link token"), "{reason}");

    // A made-up token.
    let mut p = Peer::connect(&relay, &pin).await;
    let reason = refused(
        p.link(
            &Identity::generate(),
            "omb-link-0000",
            "mallory@sandbox.test",
        )
        .await,
    );
    assert!(reason.contains("link token"), "{reason}");

    // No registered key: Auth with a key the relay never saw.
    let stranger = Identity::generate();
    let mut p = Peer::connect(&relay, &pin).await;
    let nonce = p.hello(stranger.public().0).await;
    let signature = stranger.sign_challenge(&nonce, &p.stream.binding);
    p.send(&Frame::Auth { signature }).await;
    let reason = refused(p.recv().await);
    assert!(reason.contains("unknown node key"), "{reason}");

    // Another node's identity: alice's public key, without alice's private key.
    let tunnel_key = {
        let out = std::process::Command::new(omb_tests::harness::bin("omb-node"))
            .arg("-c")
            .arg(&alice.config)
            .arg("keys")
            .output()
            .expect("keys");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let hex_key = text
            .lines()
            .find_map(|l| l.strip_prefix("tunnel_key: "))
            .expect("tunnel key printed")
            .to_string();
        omb_shared::types::NodeKey::from_hex(&hex_key).expect("hex key")
    };
    let mut p = Peer::connect(&relay, &pin).await;
    let nonce = p.hello(tunnel_key.0).await;
    let signature = stranger.sign_challenge(&nonce, &p.stream.binding);
    p.send(&Frame::Auth { signature }).await;
    let reason = refused(p.recv().await);
    assert!(reason.contains("bad signature"), "{reason}");

    // A signature replayed from another connection (other channel binding).
    let mut p1 = Peer::connect(&relay, &pin).await;
    let mut p2 = Peer::connect(&relay, &pin).await;
    let bob_token = relay.add_account("bob");
    let bob_id = Identity::generate();
    let Some(Frame::Welcome { account, .. }) =
        p1.link(&bob_id, &bob_token, "bob@sandbox.test").await
    else {
        panic!("bob should link")
    };
    assert_eq!(account, "bob");
    let nonce2 = p2.hello(bob_id.public().0).await;
    let replayed = bob_id.sign_challenge(&nonce2, &p1.stream.binding);
    p2.send(&Frame::Auth {
        signature: replayed,
    })
    .await;
    let reason = refused(p2.recv().await);
    assert!(reason.contains("bad signature"), "{reason}");

    // A node whose key was linked to bob can't be linked to carol as well.
    let carol_token = relay.add_account("carol");
    let mut p3 = Peer::connect(&relay, &pin).await;
    let reason = refused(p3.link(&bob_id, &carol_token, "carol@sandbox.test").await);
    assert!(reason.contains("another account"), "{reason}");

    // A wrong pin: the node refuses the relay.
    let wrong = "00".repeat(32);
    let err = QuicConnector::new(&relay.tunnel.to_string(), &wrong)
        .expect("connector")
        .connect()
        .await
        .err()
        .expect("must fail");
    assert!(
        matches!(
            err,
            TransportError::PinMismatch | TransportError::Connect { .. }
        ),
        "{err}"
    );

    // Garbage on the tunnel closes that connection and nothing else.
    let mut g = Peer::connect(&relay, &pin).await;
    use tokio::io::AsyncWriteExt;
    let _ = g.stream.send.write_all(&[0xff; 64]).await;
    assert!(!matches!(g.recv().await, Some(Frame::Challenge { .. })));
    assert!(
        alice.log_text().matches("tunnel up").count() == 1,
        "alice's tunnel was disturbed"
    );
    drop(p1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_never_receives_or_removes_another_accounts_mail() {
    if !have_tool("swaks") {
        return;
    }
    let dir = TestDir::new("isolation-mail");
    let mut relay = Relay::new(dir.path(), "sqlite", "");
    relay.start();
    let pin = relay.pin();
    let alice_token = relay.add_account("alice");
    let bob_token = relay.add_account("bob");
    let mut alice = Node::new(dir.path(), &relay, "alice", Some(&alice_token));
    // Alice links (mail for an account with no linked node gets 450), then goes away.
    alice.start();
    alice.wait_tunnel_ups(1, Duration::from_secs(30));
    alice.kill9();

    // Bob, linked and connected as a raw peer.
    let mut bob = Peer::connect(&relay, &pin).await;
    let Some(Frame::Welcome { .. }) = bob
        .link(&Identity::generate(), &bob_token, "bob@sandbox.test")
        .await
    else {
        panic!("bob should link")
    };

    // Mail for alice, while alice's node is not running yet.
    let tok = token();
    let smtp = relay.smtp;
    let transcript = tokio::task::spawn_blocking(move || {
        swaks(
            smtp,
            "alice@sandbox.test",
            &format!("for alice only {tok}"),
            &[],
        )
    })
    .await
    .expect("swaks");
    let queue_id = transcript
        .split("queued as ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("queue id")
        .to_string();

    // Bob tries to make the relay drop it by acknowledging its id.
    bob.send(&Frame::Ack {
        id: queue_id.clone(),
    })
    .await;
    // And bob gets nothing of alice's.
    let got = tokio::time::timeout(Duration::from_secs(2), bob.recv()).await;
    assert!(
        !matches!(got, Ok(Some(Frame::Deliver(_)))),
        "bob received alice's mail: {got:?}"
    );

    // Alice's node still gets it when it comes back.
    alice.start();
    tokio::task::spawn_blocking(move || {
        wait_until(Duration::from_secs(20), "alice's mail", || {
            alice.uids().len() == 1
        });
        assert!(String::from_utf8_lossy(&alice.show(1)).contains("for alice only"));
    })
    .await
    .expect("alice");
}
