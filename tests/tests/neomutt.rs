//! neomutt (Debian), driven through tmux like a person at a terminal, opens
//! alice's INBOX over IMAPS, trusting only the sandbox CA, shows a message
//! delivered through the relay in its index, and shows its body when opened;
//! saving it to Archive moves it there on the server, marked read.

use omb_tests::apps::{python, test_message, RunningSandbox};
use omb_tests::harness::{have_tool, token};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A detached tmux session on a private server socket, killed by its unique
/// name when dropped.
struct Tmux {
    socket: PathBuf,
    session: String,
}

impl Tmux {
    fn start(dir: &Path, env: &[(&str, String)], command: &str) -> Self {
        let tmux = Tmux {
            socket: dir.join("tmux.sock"),
            session: format!("omb-neomutt-{}", hex::encode(rand::random::<[u8; 6]>())),
        };
        let mut cmd = Command::new("tmux");
        cmd.arg("-S")
            .arg(&tmux.socket)
            .args(["new-session", "-d", "-x", "200", "-y", "50", "-s"])
            .arg(&tmux.session);
        for (k, v) in env {
            cmd.arg("-e").arg(format!("{k}={v}"));
        }
        let out = cmd.arg(command).output().expect("run tmux");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", &self.session])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.session];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Polls the screen until `done` holds; panics with the last screen after
    /// `limit`, or at once when `failed` recognises an error on it.
    fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        failed: impl Fn(&str) -> Option<&'static str>,
        done: impl Fn(&str) -> bool,
    ) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            if let Some(why) = failed(&screen) {
                panic!("{why} while waiting for {what}; the screen:\n{screen}");
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(["kill-session", "-t", &self.session])
            .output();
    }
}

/// Errors neomutt shows on its status line instead of the mailbox.
fn neomutt_error(screen: &str) -> Option<&'static str> {
    if screen.contains("(r)eject") {
        Some("neomutt did not trust the node's certificate")
    } else if screen.contains("Login failed") || screen.contains("authentication failed") {
        Some("neomutt could not log in")
    } else if screen.contains("Could not connect") || screen.contains("Connection refused") {
        Some("neomutt could not connect")
    } else {
        None
    }
}

#[test]
fn neomutt_shows_a_delivered_message_over_imaps() {
    if !have_tool("neomutt") || !have_tool("tmux") || !have_tool("swaks") {
        return;
    }
    let sandbox = RunningSandbox::start("neomutt", &["alice"]);
    let alice = sandbox.node("alice");
    let tok = token();
    let subject = format!("Lunch on Friday {tok}");
    sandbox.deliver(
        "alice",
        &test_message(&alice.address, "Lunch on Friday", &tok),
    );

    // A fresh HOME and only the test's muttrc (`-n`: no system config).
    let home = sandbox.path().join("home");
    std::fs::create_dir_all(&home).expect("create HOME");
    let muttrc = home.join("muttrc");
    let url = format!(
        "imaps://{}@{}/",
        alice.address.replace('@', "%40"),
        alice.imaps
    );
    std::fs::write(
        &muttrc,
        format!(
            "set folder = \"{url}\"\n\
             set spoolfile = \"+INBOX\"\n\
             set imap_pass = \"{pass}\"\n\
             set ssl_force_tls = yes\n\
             set ssl_verify_host = yes\n\
             set ssl_ca_certificates_file = \"{ca}\"\n\
             set certificate_file = \"{home}/certificates\"\n\
             set header_cache = \"\"\n\
             set message_cachedir = \"\"\n\
             set record = \"\"\n\
             set postponed = \"+Drafts\"\n\
             set imap_check_subscribed = no\n\
             set wait_key = no\n\
             set confirmappend = no\n\
             set delete = yes\n\
             set sort = date\n",
            pass = alice.password,
            ca = sandbox.ca().display(),
            home = home.display(),
        ),
    )
    .expect("write muttrc");

    let tmux = Tmux::start(
        sandbox.path(),
        &[
            ("HOME", home.display().to_string()),
            ("LANG", "C.UTF-8".to_string()),
            ("TERM", "xterm-256color".to_string()),
        ],
        &format!("neomutt -n -F {} -f {url}INBOX", muttrc.display()),
    );

    // The index lists the message by its subject, as new.
    let index = tmux.wait_for(
        "the subject in neomutt's index",
        Duration::from_secs(30),
        neomutt_error,
        |s| s.contains(&subject),
    );
    let line = index
        .lines()
        .find(|l| l.contains(&subject))
        .expect("index line");
    assert!(
        line.contains(" N ") && line.contains("Sender"),
        "the index line does not show a new message from Sender: {line:?}"
    );

    // Opening it shows the body text.
    tmux.keys(&["Enter"]);
    let pager = tmux.wait_for(
        "the message body in neomutt's pager",
        Duration::from_secs(30),
        neomutt_error,
        |s| s.contains(&format!("body {tok}")),
    );
    assert!(
        pager.lines().any(|l| l.trim() == "Hello,"),
        "the body's first line is not on screen:\n{pager}"
    );
    assert!(
        pager.contains(".a line that starts with a dot"),
        "the dot-stuffed line is not shown as sent:\n{pager}"
    );

    // Back in the index the message is shown as read.
    tmux.keys(&["i"]);
    tmux.wait_for(
        "the message shown as read in the index",
        Duration::from_secs(30),
        neomutt_error,
        |s| {
            s.lines()
                .find(|l| l.contains(&subject))
                .is_some_and(|l| !l.contains(" N "))
        },
    );

    // Saved to Archive (`s`), then the mailbox synced (`$`): the index no
    // longer lists it, and the server has it in Archive, read, not in INBOX.
    tmux.keys(&["s"]);
    tmux.wait_for(
        "the save prompt",
        Duration::from_secs(10),
        neomutt_error,
        |s| s.contains("Save to mailbox"),
    );
    tmux.keys(&["C-u", "=Archive", "Enter"]);
    tmux.wait_for(
        "the saved message marked deleted",
        Duration::from_secs(30),
        neomutt_error,
        |s| s.contains("Del:1"),
    );
    tmux.keys(&["$"]);
    tmux.wait_for(
        "the saved message gone from the index",
        Duration::from_secs(30),
        neomutt_error,
        |s| !s.contains(&subject) && !s.contains("Del:1"),
    );
    tmux.keys(&["q"]);

    let server = |folder: &str| -> Vec<serde_json::Value> {
        let config = serde_json::json!({
            "imaps": alice.imaps.to_string(), "sni": "alice.sandbox.test", "ca": sandbox.ca(),
            "user": alice.address, "password": alice.password,
        });
        let out = python("imap_ops.py", &[&config.to_string(), "list", folder]);
        let list: serde_json::Value = serde_json::from_str(&out).expect("JSON");
        list.as_array()
            .expect("list")
            .iter()
            .filter(|m| m["message"].as_str().unwrap_or("").contains(&tok))
            .cloned()
            .collect()
    };
    assert!(
        server("INBOX").is_empty(),
        "the message saved to Archive is still in the server's INBOX"
    );
    let archived = server("Archive");
    assert_eq!(
        archived.len(),
        1,
        "the message saved to Archive is not there once: {archived:?}"
    );
    assert!(
        archived[0]["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "\\Seen")),
        "the message read in neomutt is not \\Seen on the server: {archived:?}"
    );
}
