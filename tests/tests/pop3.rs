//! The node's POP3 server with real clients, in a sandbox (`omb-sandbox`): mail
//! sent with swaks to the relay's MX is downloaded by Debian's fetchmail over
//! POP3 with STLS and UIDL (kept, then deleted), and Python's poplib drives
//! every command over POP3S, and bad input while another client is served.

use omb_tests::harness::{bin, have_tool, swaks, token, wait_until, TestDir};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// A running `omb-sandbox` with the node `alice`; stopped when dropped.
struct Sandbox {
    dir: TestDir,
    child: Child,
    manifest: serde_json::Value,
}

impl Sandbox {
    fn start(name: &str) -> Self {
        let dir = TestDir::new(name);
        let log = std::fs::File::create(dir.path().join("sandbox.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_omb-sandbox"))
            .arg("--dir")
            .arg(dir.path())
            .args(["--nodes", "alice"])
            .env("OMB_LOG", "info,omb_node=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start omb-sandbox");
        let json = dir.path().join("sandbox.json");
        let mut sandbox = Sandbox {
            dir,
            child,
            manifest: serde_json::Value::Null,
        };
        wait_until(Duration::from_secs(60), "sandbox.json", || json.exists());
        sandbox.manifest =
            serde_json::from_slice(&std::fs::read(&json).expect("read")).expect("valid JSON");
        sandbox
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn manifest_path(&self) -> PathBuf {
        self.path().join("sandbox.json")
    }

    fn node(&self, key: &str) -> String {
        self.manifest["nodes"][0][key]
            .as_str()
            .unwrap_or_else(|| panic!("nodes[0].{key} missing from sandbox.json"))
            .to_string()
    }

    fn smtp(&self) -> SocketAddr {
        self.manifest["relay"]["smtp"]
            .as_str()
            .expect("relay.smtp")
            .parse()
            .expect("address")
    }

    fn node_cli(&self, args: &[&str]) -> Output {
        let out = Command::new(bin("omb-node"))
            .arg("-c")
            .arg(self.path().join("nodes/alice.toml"))
            .args(args)
            .output()
            .expect("run omb-node");
        assert!(
            out.status.success(),
            "omb-node {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// UIDs in alice's INBOX, read from the node's store.
    fn uids(&self) -> Vec<u32> {
        String::from_utf8_lossy(&self.node_cli(&["mail", "list"]).stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// One message as the node decrypts it.
    fn show(&self, uid: u32) -> Vec<u8> {
        self.node_cli(&["mail", "show", &uid.to_string()]).stdout
    }

    /// Sends `body` to alice through the relay's MX; waits for it in her store.
    fn deliver(&self, body: &str) {
        let before = self.uids().len();
        swaks(self.smtp(), "alice@sandbox.test", body, &["--tls"]);
        wait_until(
            Duration::from_secs(10),
            "the message in alice's store",
            || self.uids().len() > before,
        );
    }

    /// INBOX's HIGHESTMODSEQ, read with Python's sqlite3 (not the node's code).
    fn highestmodseq(&self) -> i64 {
        let script = "import sqlite3,sys\nc=sqlite3.connect('file:'+sys.argv[1]+'?mode=ro',uri=True)\nprint(c.execute(\"select highestmodseq from mailboxes where name='INBOX'\").fetchone()[0])";
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(self.path().join("nodes/alice/mail.db"))
            .output()
            .expect("python3");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("sandbox.log")).unwrap_or_default()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs fetchmail with a fresh `.fetchmailrc` (mode 0600) in `home`;
/// returns its exit code and verbose transcript.
fn fetchmail(home: &Path, rc: &str) -> (i32, String) {
    use std::os::unix::fs::PermissionsExt;
    let rc_path = home.join(".fetchmailrc");
    std::fs::write(&rc_path, rc).expect("write .fetchmailrc");
    std::fs::set_permissions(&rc_path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = Command::new("fetchmail")
        .env("HOME", home)
        .env_remove("FETCHMAILHOME")
        .env_remove("FETCHMAILUSER")
        .arg("-f")
        .arg(&rc_path)
        // No syslog, no Received header of its own, no address rewriting: the
        // MDA gets the message as served.
        .args(["-v", "--nosyslog", "--invisible", "--norewrite"])
        .stdin(Stdio::null())
        .output()
        .expect("run fetchmail");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read folder")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// The body of a message: what follows the first empty line.
fn body(message: &[u8]) -> &[u8] {
    let pos = message
        .windows(2)
        .position(|w| w == b"\n\n")
        .expect("header/body separator");
    &message[pos + 2..]
}

#[test]
fn fetchmail_downloads_over_stls_with_uidl_keeping_then_deleting() {
    if !have_tool("swaks") || !have_tool("fetchmail") || !have_tool("python3") {
        return;
    }
    let sandbox = Sandbox::start("pop3-fetchmail");
    // Lines that start with dots (one is only a dot), trailing spaces,
    // non-ASCII, a long line: all must arrive byte for byte.
    let bodies: Vec<String> = vec![
        format!(
            "Hello Alice,\n.a line that starts with a dot\n.\n..two dots\nsecret {}  \nÜnïcødé ✓\n",
            token()
        ),
        format!("{}\n{}\n", token(), "long line ".repeat(90)),
        format!("third {}\n\nafter an empty line\n", token()),
    ];
    for b in &bodies {
        sandbox.deliver(b);
    }
    let uids = sandbox.uids();
    assert_eq!(uids.len(), 3);

    let home = sandbox.path().join("fetchmail-home");
    let out = sandbox.path().join("fetched");
    std::fs::create_dir_all(&home).expect("home");
    std::fs::create_dir_all(&out).expect("out");
    // The MDA: each message into a file of its own.
    let mda = home.join("mda.sh");
    std::fs::write(
        &mda,
        format!(
            "#!/bin/sh\nf=$(mktemp {}/msg.XXXXXX) || exit 75\ncat > \"$f\"\n",
            out.display()
        ),
    )
    .expect("mda");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&mda, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    let pop3: SocketAddr = sandbox.node("pop3").parse().expect("pop3 address");
    let ca = sandbox.manifest["ca_cert"].as_str().expect("ca_cert");
    // STLS with the certificate checked against the sandbox CA and the node's
    // name; `sslproto` makes TLS mandatory.
    let rc = |keep: &str| {
        format!(
            "set no syslog\n\
             poll {} service {} protocol pop3 uidl\n  \
             user \"{}\" there with password \"{}\"\n  \
             sslproto \"tls1.2+\" sslcertck sslcertfile \"{ca}\" sslcommonname \"alice.sandbox.test\"\n  \
             {keep}\n  mda \"{}\"\n",
            pop3.ip(),
            pop3.port(),
            sandbox.node("address"),
            sandbox.node("password"),
            mda.display()
        )
    };

    // 1. keep: everything is fetched, nothing leaves the node.
    let (code, transcript) = fetchmail(&home, &rc("keep"));
    assert_eq!(code, 0, "fetchmail failed:\n{transcript}");
    assert!(transcript.contains("POP3> STLS"), "{transcript}");
    assert!(
        transcript.contains("upgrade to TLS succeeded"),
        "{transcript}"
    );
    assert!(transcript.contains("POP3> UIDL"), "{transcript}");
    let fetched = files_in(&out);
    assert_eq!(fetched.len(), 3, "{transcript}");
    assert_eq!(sandbox.uids(), uids, "keep must leave the messages");
    for (uid, sent) in uids.iter().zip(&bodies) {
        // fetchmail hands the MDA LF line endings.
        let want: Vec<u8> = String::from_utf8_lossy(&sandbox.show(*uid))
            .replace("\r\n", "\n")
            .into_bytes();
        let got = fetched
            .iter()
            .map(|f| std::fs::read(f).expect("read fetched"))
            .find(|m| m == &want)
            .unwrap_or_else(|| panic!("no fetched file equals message {uid}"));
        // swaks ends the body it sends with one more empty line.
        assert_eq!(
            String::from_utf8_lossy(body(&got)),
            format!("{sent}\n\n"),
            "the body must be byte-identical"
        );
    }

    // 2. keep again: UIDL says every message was seen; nothing is fetched.
    let (code, transcript) = fetchmail(&home, &rc("keep"));
    assert_eq!(code, 1, "expected 'no mail':\n{transcript}");
    assert!(transcript.contains("3 messages (3 seen)"), "{transcript}");
    assert_eq!(files_in(&out).len(), 3);

    // 3. A new message, then without keep (and flushing the seen ones): only
    // the new one is fetched, and the mailbox is emptied.
    let last = format!("fourth {}\n", token());
    sandbox.deliver(&last);
    let modseq = sandbox.highestmodseq();
    let (code, transcript) = fetchmail(&home, &rc("no keep flush"));
    assert_eq!(code, 0, "fetchmail failed:\n{transcript}");
    assert!(transcript.contains("POP3> DELE"), "{transcript}");
    let fetched = files_in(&out);
    assert_eq!(fetched.len(), 4, "{transcript}");
    let new: Vec<Vec<u8>> = fetched
        .iter()
        .map(|f| std::fs::read(f).expect("read"))
        .filter(|m| body(m) == format!("{last}\n\n").as_bytes())
        .collect();
    assert_eq!(new.len(), 1, "the fourth message, once");
    assert!(sandbox.uids().is_empty(), "the node's INBOX must be empty");
    // IMAP sees the deletions: INBOX's HIGHESTMODSEQ moved on.
    assert!(sandbox.highestmodseq() > modseq);
    assert!(sandbox.log().contains("deleted on QUIT"));
}

#[test]
fn poplib_over_pop3s_exercises_every_command() {
    if !have_tool("swaks") || !have_tool("python3") {
        return;
    }
    let sandbox = Sandbox::start("pop3-poplib");
    sandbox.deliver(&format!(
        "one {}\n.dot\n..dots\n.\nline 4\nline 5\n",
        token()
    ));
    sandbox.deliver(&format!("two {}\nÜnïcødé\r\nbare\rCR\n", token()));
    sandbox.deliver(&format!("three {}\n", token()));
    let uids = sandbox.uids();
    assert_eq!(uids.len(), 3);
    // What RETR must send: the node's decrypted message with CRLF line ends.
    let expected = sandbox.path().join("expected");
    std::fs::create_dir_all(&expected).expect("expected");
    for (i, uid) in uids.iter().enumerate() {
        std::fs::write(
            expected.join((i + 1).to_string()),
            omb_node::pop3::message::normalize(&sandbox.show(*uid)),
        )
        .expect("write expected");
    }
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/pop3/commands.py"
        ))
        .arg(sandbox.manifest_path())
        .arg(&expected)
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("ALL OK"),
        "{text}\n--- node log ---\n{}",
        sandbox.log()
    );
    // The message deleted at QUIT is gone from the store; the others stay.
    assert_eq!(sandbox.uids(), uids[1..].to_vec());
}

#[test]
fn bad_input_gets_err_while_another_client_is_served() {
    if !have_tool("swaks") || !have_tool("python3") {
        return;
    }
    let sandbox = Sandbox::start("pop3-bad-input");
    sandbox.deliver(&format!("hello {}\n", token()));
    let out = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/pop3/bad_input.py"
        ))
        .arg(sandbox.manifest_path())
        .output()
        .expect("python3");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("ALL OK"),
        "{text}\n--- node log ---\n{}",
        sandbox.log()
    );
    assert_eq!(sandbox.uids().len(), 1, "nothing was deleted");
}
