//! The relay on PostgreSQL, end to end with the real binaries and swaks: mail is
//! spooled in the database, survives a `kill -9` of the relay, and reaches the
//! node once it comes back. The same scenario runs on SQLite as the reference.
//! Sending too: the outbound queue in PostgreSQL, through a `kill -9`, to a
//! real Postfix (the SQLite run of that is tests/tests/outbound.rs).
//!
//! The PostgreSQL test needs `OMB_TEST_POSTGRES_URL` (a role that may create
//! databases, e.g. `postgres://omb:omb@127.0.0.1:5432/postgres`) and `psql`. It
//! creates a database of its own and drops it at the end. Without the variable it
//! is skipped, except in CI (`CI` set), where it fails.

use omb_relay::store::with_database;
use omb_tests::harness::{
    files_containing, free_port, have_tool, in_ci, is_root, swaks, token, wait_until, Node, Relay,
    TestDir,
};
use omb_tests::sending::{send, send_ok, started_node_with_access, Postfix};
use std::process::Command;
use std::time::Duration;

/// A database of one test's own on the server of `OMB_TEST_POSTGRES_URL`,
/// dropped (with any connection left to it) when this goes out of scope.
struct PgDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl PgDatabase {
    /// `None` (after printing why) when the test should be skipped.
    fn create() -> Option<Self> {
        let Some(admin_url) = std::env::var("OMB_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            assert!(!in_ci(), "CI must set OMB_TEST_POSTGRES_URL");
            eprintln!("SKIPPED: PostgreSQL tests need OMB_TEST_POSTGRES_URL");
            return None;
        };
        if !have_tool("psql") {
            return None;
        }
        let name = format!("omb_test_{}", hex::encode(rand::random::<[u8; 8]>()));
        psql(&admin_url, &format!("CREATE DATABASE {name}"));
        let url = with_database(&admin_url, &name);
        Some(PgDatabase {
            admin_url,
            name,
            url,
        })
    }

    /// One number from a query on this database.
    fn count(&self, sql: &str) -> i64 {
        let out = psql(&self.url, sql);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("psql {sql:?} printed {out:?}, not a number"))
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        // FORCE: a relay killed by a failed assertion may still hold connections.
        let _ = Command::new("psql")
            .args([
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.admin_url,
                "-c",
            ])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

/// Runs one statement with psql; returns its unaligned, tuples-only output.
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The body of a decrypted message: everything after the first empty line.
fn body(message: &[u8]) -> String {
    let pos = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header/body separator");
    String::from_utf8_lossy(&message[pos + 4..]).into_owned()
}

/// The body swaks sends for `--body TEXT` (one line): the line, an empty line,
/// and the CRLF before the final dot, which belongs to the message (RFC 5321
/// 4.1.1.4). Seen on the wire with swaks 20201014.0.
fn sent(text: &str) -> String {
    format!("{text}\r\n\r\n\r\n")
}

/// Mail to alice arrives; mail sent while her node is down waits in the spool
/// through a `kill -9` of the relay and arrives when both are back.
fn mail_survives_node_absence_and_relay_kill(name: &str, database: &str, pg: Option<&PgDatabase>) {
    let dir = TestDir::new(name);
    let mut relay = Relay::new(dir.path(), database, "");
    relay.start();
    let link_token = relay.add_account("alice");
    let mut node = Node::new(dir.path(), &relay, "alice", Some(&link_token));
    node.start();
    node.wait_tunnel_ups(1, Duration::from_secs(30));

    let first = token();
    let first_body = format!("first message {first}");
    let transcript = swaks(relay.smtp, "alice@sandbox.test", &first_body, &[]);
    assert!(
        transcript.contains("250 2.0.0 Ok: queued"),
        "{transcript}\nrelay log:\n{}",
        relay.log_text()
    );
    wait_until(
        Duration::from_secs(20),
        "the first message in alice's store",
        || node.uids().len() == 1,
    );
    assert_eq!(
        body(&node.show(node.uids()[0])),
        sent(&first_body),
        "the body, byte for byte"
    );
    if let Some(pg) = pg {
        // Acknowledged by the node, so gone from the relay's spool.
        wait_until(
            Duration::from_secs(10),
            "the delivered message to leave the spool",
            || pg.count("SELECT count(*) FROM spool") == 0,
        );
    }

    node.kill9();
    let second = token();
    let second_body = format!("second message {second}");
    let transcript = swaks(relay.smtp, "alice@sandbox.test", &second_body, &[]);
    assert!(
        transcript.contains("250 2.0.0 Ok: queued"),
        "{transcript}\nrelay log:\n{}",
        relay.log_text()
    );
    match pg {
        Some(pg) => {
            // 250 came after the spool write: the message is in PostgreSQL, as ciphertext.
            assert_eq!(
                pg.count("SELECT count(*) FROM spool"),
                1,
                "the second message waits in the database"
            );
            let in_clear = pg.count(&format!(
                "SELECT count(*) FROM spool WHERE position('{second}'::bytea IN data) > 0"
            ));
            assert_eq!(in_clear, 0, "plaintext in the spool");
        }
        None => assert!(
            files_containing(&relay.dir, second.as_bytes()).is_empty(),
            "plaintext on the relay's disk"
        ),
    }

    relay.kill9();
    relay.start();
    node.start();
    wait_until(
        Duration::from_secs(30),
        "the second message after the relay's kill -9",
        || node.uids().len() == 2,
    );
    let uids = node.uids();
    assert_eq!(body(&node.show(uids[0])), sent(&first_body));
    assert_eq!(body(&node.show(uids[1])), sent(&second_body));
    if let Some(pg) = pg {
        wait_until(Duration::from_secs(10), "the spool to be empty", || {
            pg.count("SELECT count(*) FROM spool") == 0
        });
    }
    // No duplicate arrives late.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(node.uids().len(), 2, "each message once");
}

#[test]
fn postgres_relay_delivers_and_survives_kill9() {
    let Some(db) = PgDatabase::create() else {
        return;
    };
    if !have_tool("swaks") {
        return;
    }
    mail_survives_node_absence_and_relay_kill("pg-e2e", &db.url, Some(&db));
}

#[test]
fn sqlite_relay_delivers_and_survives_kill9() {
    if !have_tool("swaks") {
        return;
    }
    mail_survives_node_absence_and_relay_kill("sqlite-e2e", "sqlite", None);
}

/// Sending on PostgreSQL: a message submitted to alice's node while the
/// recipient's MX (a real Postfix, by a static route) is down waits in the
/// relay's outbound queue in the database, through a `kill -9` of the relay,
/// and goes out once Postfix is back; the queue is empty afterwards.
#[test]
fn postgres_outbound_queue_survives_kill9() {
    let Some(db) = PgDatabase::create() else {
        return;
    };
    if !is_root() || !have_tool("postfix") || !have_tool("python3") {
        assert!(!in_ci(), "CI runs as root with postfix and python3");
        eprintln!("skipped: needs root, postfix and python3 (scripts/install-peers)");
        return;
    }
    let dir = TestDir::new("pg-outbound");
    let postfix_port = free_port();
    let extra = format!(
        "[outbound]\nroutes = {{ \"example.org\" = \"127.0.0.1:{postfix_port}\" }}\n\
         retry_secs = [1, 1, 2]\npoll_ms = 200\ntimeout_secs = 10\nper_minute = 1\n"
    );
    let mut relay = Relay::new(dir.path(), &db.url, &extra);
    relay.start();
    let (_alice, access) = started_node_with_access(dir.path(), &relay, "alice");
    let postfix = Postfix::new(dir.path(), postfix_port, &["example.org"], None);

    send_ok(
        access.submission,
        "alice@sandbox.test",
        &["bob@example.org"],
        "queued in postgres",
    );
    wait_until(Duration::from_secs(20), "a deferral", || {
        relay.log_text().contains("deferred")
    });
    assert_eq!(db.count("SELECT count(*) FROM outbound_rcpts"), 1);
    relay.kill9();
    relay.start();
    postfix.postfix("start");
    wait_until(
        Duration::from_secs(60),
        "delivery after the relay's kill -9, once Postfix is up",
        || postfix.with_subject("queued in postgres").is_some(),
    );
    wait_until(Duration::from_secs(10), "an empty queue", || {
        db.count("SELECT count(*) FROM outbound_rcpts") == 0
            && db.count("SELECT count(*) FROM outbound") == 0
    });
    // The rate (one a minute) is kept in the database: the restarted relay,
    // whose memory is fresh, still refuses a second message this minute.
    let reply = send(
        access.submission,
        "alice@sandbox.test",
        "alice@sandbox.test",
        "alice@sandbox.test",
        &["bob@example.org"],
        "too soon",
    );
    assert!(reply.starts_with("451 4.7.1"), "{reply}");
}
