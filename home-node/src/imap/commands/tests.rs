//! The command layer over a real store, through the session machine, no sockets.

use super::*;
use crate::config::{AccessConfig, NodeConfig, RelayLink};
use crate::imap::session::Limits;
use std::sync::Arc;

struct Fixture {
    dir: std::path::PathBuf,
    ctx: AccessContext,
}

async fn fixture() -> Fixture {
    let dir = std::env::temp_dir().join(format!("omb-imapcmd-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = NodeConfig {
        address: "alice@sandbox.test".into(),
        data_dir: dir.clone(),
        relay: RelayLink { tunnel: "127.0.0.1:1".into(), pin: String::new(), link_token: None },
        access: AccessConfig::default(),
    };
    crate::access::login::set_password(&dir, "correct horse").unwrap();
    let keys = Arc::new(crate::keys::Keys::load_or_create(&dir, &config.address).unwrap());
    let store = crate::store::MailStore::open(&dir).await.unwrap();
    let ctx = AccessContext::new(&config, keys, store).unwrap();
    Fixture { dir, ctx }
}

/// Feeds bytes and runs every event; returns what the server wrote.
async fn run(h: &mut Handler, s: &mut Session, input: &[u8]) -> String {
    s.feed(input);
    while let Some(e) = s.next_event() {
        let mut flow = h.event(s, e).await;
        while flow == Flow::More {
            flow = h.resume(s).await;
        }
    }
    String::from_utf8_lossy(&s.take_output()).into_owned()
}

#[tokio::test]
async fn plaintext_login_is_refused_from_afar_but_not_from_loopback() {
    let f = fixture().await;
    let far: IpAddr = [192, 0, 2, 1].into();
    let mut h = Handler::new(f.ctx.clone(), far, false);
    let mut s = Session::new(Limits::default());
    let caps = format!("{:?}", h.capabilities(State::NotAuthenticated));
    assert!(caps.contains("LoginDisabled") && !caps.contains("Plain"), "{caps}");
    let out = run(&mut h, &mut s, b"a LOGIN alice \"correct horse\"\r\nb AUTHENTICATE PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U=\r\n").await;
    assert!(out.contains("a NO [PRIVACYREQUIRED]"), "{out}");
    assert!(out.contains("b NO [PRIVACYREQUIRED]"), "{out}");

    let mut h = Handler::new(f.ctx.clone(), [127, 0, 0, 1].into(), false);
    let mut s = Session::new(Limits::default());
    let out = run(&mut h, &mut s, b"a LOGIN alice \"correct horse\"\r\n").await;
    assert!(out.starts_with("a OK [CAPABILITY"), "{out}");
    f.ctx.store.close().await;
    std::fs::remove_dir_all(&f.dir).unwrap();
}

#[tokio::test]
async fn append_select_fetch_store_search_expunge() {
    let f = fixture().await;
    let mut h = Handler::new(f.ctx.clone(), [127, 0, 0, 1].into(), true);
    let mut s = Session::new(Limits::default());
    let msg = b"Subject: hello\r\nFrom: a@b.c\r\n\r\nbody text\r\n";
    let out = run(&mut h, &mut s, b"a LOGIN alice@sandbox.test \"correct horse\"\r\n").await;
    assert!(out.contains("a OK"), "{out}");
    let append = format!("b APPEND INBOX (\\Seen) {{{}+}}\r\n", msg.len());
    let mut input = append.into_bytes();
    input.extend_from_slice(msg);
    input.extend_from_slice(b"\r\n");
    let out = run(&mut h, &mut s, &input).await;
    assert!(out.contains("b OK [APPENDUID "), "{out}");
    let out = run(&mut h, &mut s, b"c SELECT INBOX\r\n").await;
    assert!(out.contains("* 1 EXISTS") && out.contains("c OK [READ-WRITE]"), "{out}");
    let out = run(&mut h, &mut s, b"d FETCH 1 (FLAGS RFC822.SIZE ENVELOPE BODY.PEEK[])\r\n").await;
    assert!(out.contains(&format!("RFC822.SIZE {}", msg.len())), "{out}");
    assert!(out.contains("\"hello\""), "{out}");
    assert!(out.contains("body text"), "{out}");
    let out = run(&mut h, &mut s, b"e STORE 1 +FLAGS (\\Deleted)\r\nf SEARCH DELETED SUBJECT hello\r\ng SEARCH BODY nothere\r\n").await;
    assert!(out.contains("* SEARCH 1\r\n"), "{out}");
    assert!(out.contains("* SEARCH\r\n"), "{out}");
    let out = run(&mut h, &mut s, b"h EXPUNGE\r\n").await;
    assert!(out.contains("* 1 EXPUNGE\r\nh OK"), "{out}");
    f.ctx.store.close().await;
    std::fs::remove_dir_all(&f.dir).unwrap();
}
