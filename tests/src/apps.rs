//! Support for the end-to-end tests with real mail apps (mbsync, neomutt,
//! Python's imaplib): a running `omb-sandbox`, mail delivered with swaks to
//! its MX, the message exactly as swaks sent it, and the Python helpers.

use crate::harness::{bin, wait_until, TestDir};
use base64::Engine;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The folder of the Python helpers (`tests/tests/apps/`).
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/apps")
}

/// A node as `sandbox.json` lists it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub address: String,
    pub password: String,
    /// IMAP with STARTTLS.
    pub imap: SocketAddr,
    /// IMAP in implicit TLS.
    pub imaps: SocketAddr,
    pub data_dir: PathBuf,
}

/// A running `omb-sandbox` (the real binary); stopped when dropped.
pub struct RunningSandbox {
    dir: TestDir,
    child: Child,
    pub manifest: serde_json::Value,
}

impl RunningSandbox {
    /// Starts `omb-sandbox --dir DIR --nodes NODES` and waits for `sandbox.json`.
    pub fn start(name: &str, nodes: &[&str]) -> Self {
        let dir = TestDir::new(name);
        let log = std::fs::File::create(dir.path().join("sandbox.log")).expect("log");
        let child = Command::new(bin("omb-sandbox"))
            .arg("--dir")
            .arg(dir.path())
            .arg("--nodes")
            .arg(nodes.join(","))
            .env("OMB_LOG", "info,omb_node=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start omb-sandbox");
        let mut sandbox = RunningSandbox {
            dir,
            child,
            manifest: serde_json::Value::Null,
        };
        let json = sandbox.path().join("sandbox.json");
        wait_until(Duration::from_secs(90), "sandbox.json", || {
            if let Ok(Some(status)) = sandbox.child.try_wait() {
                panic!("omb-sandbox exited with {status}:\n{}", sandbox.log());
            }
            json.exists()
        });
        sandbox.manifest =
            serde_json::from_slice(&std::fs::read(&json).expect("read sandbox.json"))
                .expect("sandbox.json is JSON");
        sandbox
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `relay.KEY` from the manifest.
    pub fn relay(&self, key: &str) -> String {
        self.manifest["relay"][key]
            .as_str()
            .unwrap_or_else(|| panic!("relay.{key} missing from sandbox.json"))
            .to_string()
    }

    pub fn relay_addr(&self, key: &str) -> SocketAddr {
        self.relay(key)
            .parse()
            .unwrap_or_else(|e| panic!("relay.{key} is not an address: {e}"))
    }

    /// The sandbox CA, which signs every node's certificate.
    pub fn ca(&self) -> PathBuf {
        PathBuf::from(
            self.manifest["ca_cert"]
                .as_str()
                .expect("ca_cert missing from sandbox.json"),
        )
    }

    pub fn node(&self, name: &str) -> NodeInfo {
        let nodes = self.manifest["nodes"].as_array().expect("nodes");
        let n = nodes
            .iter()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("no node {name} in sandbox.json"));
        let s = |key: &str| {
            n[key]
                .as_str()
                .unwrap_or_else(|| panic!("nodes[{name}].{key} missing from sandbox.json"))
                .to_string()
        };
        let addr = |key: &str| -> SocketAddr {
            s(key)
                .parse()
                .unwrap_or_else(|e| panic!("nodes[{name}].{key}: {e}"))
        };
        NodeInfo {
            name: name.to_string(),
            address: s("address"),
            password: s("password"),
            imap: addr("imap"),
            imaps: addr("imaps"),
            data_dir: PathBuf::from(s("data_dir")),
        }
    }

    /// How many messages node `name` holds in INBOX, from its own store
    /// (`omb-node mail list`, not IMAP).
    pub fn inbox_len(&self, name: &str) -> usize {
        let out = Command::new(bin("omb-node"))
            .arg("-c")
            .arg(self.path().join(format!("nodes/{name}.toml")))
            .args(["mail", "list"])
            .output()
            .expect("run omb-node");
        assert!(
            out.status.success(),
            "omb-node mail list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .count()
    }

    /// Sends `message` (header and body, `\n` line ends) with swaks to the
    /// relay's MX for node `to`, waits until it is in the node's store, and
    /// returns the message exactly as swaks sent it (`\n` line ends).
    pub fn deliver(&self, to: &str, message: &str) -> String {
        let before = self.inbox_len(to);
        let address = self.node(to).address;
        // A command-line argument holds at most 128 KiB; swaks reads a
        // `--data` that names a file from the file.
        let file;
        let data = if message.len() > 64 * 1024 {
            file = self.path().join(format!(
                "message-{}.eml",
                hex::encode(rand::random::<[u8; 4]>())
            ));
            std::fs::write(&file, message).expect("write the message file");
            file.to_str().expect("UTF-8 path")
        } else {
            message
        };
        let transcript = swaks_data(self.relay_addr("smtp"), &address, data);
        wait_until(
            Duration::from_secs(10),
            "the message in the node's store",
            || self.inbox_len(to) > before,
        );
        sent_data(&transcript)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("sandbox.log")).unwrap_or_default()
    }
}

impl Drop for RunningSandbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The swaks command that sends `message` (header and body, `\n` line ends)
/// to `to` at `smtp` with STARTTLS. (`--body ""` would make swaks ask for a
/// body on its standard input, so the message goes in `--data` alone.)
pub fn swaks_command(smtp: SocketAddr, to: &str, message: &str) -> Command {
    let mut cmd = Command::new("swaks");
    cmd.args(["--server", &smtp.to_string(), "--to", to])
        .args([
            "--from",
            "sender@example.org",
            "--helo",
            "client.example.org",
        ])
        .args(["--tls", "--data", message])
        .stdin(Stdio::null());
    cmd
}

/// Sends `message` with [`swaks_command`]; returns the transcript. Panics
/// unless swaks succeeds.
pub fn swaks_data(smtp: SocketAddr, to: &str, message: &str) -> String {
    let out = swaks_command(smtp, to, message)
        .output()
        .expect("run swaks");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "swaks failed:\n{text}");
    text
}

/// The message data of a swaks transcript (the lines after `354` up to the
/// final `.`, dot-stuffing undone), with `\n` line ends.
pub fn sent_data(transcript: &str) -> String {
    let mut data = String::new();
    let mut in_data = false;
    for line in transcript.lines() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if !in_data {
            in_data = line.starts_with("<-  354") || line.starts_with("<~  354");
            continue;
        }
        let Some(sent) = line
            .strip_prefix(" -> ")
            .or_else(|| line.strip_prefix(" ~> "))
            .or_else(|| (line == " ->" || line == " ~>").then_some(""))
        else {
            continue;
        };
        if sent == "." {
            return data;
        }
        data.push_str(sent.strip_prefix('.').unwrap_or(sent));
        data.push('\n');
    }
    panic!("no message data in the swaks transcript:\n{transcript}");
}

/// A message of about `size` bytes: `text/plain` and a base64 attachment of
/// random bytes, marked with `token`.
pub fn big_message(to: &str, token: &str, size: usize) -> String {
    let mut attachment = String::new();
    let mut line = 0u64;
    while attachment.len() < size {
        // 57 random-looking bytes per 76-character base64 line.
        let bytes: Vec<u8> = (0..57u64)
            .map(|i| ((line * 57 + i).wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        attachment.push_str(&base64::engine::general_purpose::STANDARD.encode(&bytes));
        attachment.push('\n');
        line += 1;
    }
    format!(
        "From: Sender <sender@example.org>\nTo: {to}\nSubject: big {token}\n\
         Message-ID: <{token}@example.org>\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=\"b-{token}\"\n\n\
         --b-{token}\nContent-Type: text/plain; charset=us-ascii\n\n\
         The photos, {token}.\n\
         --b-{token}\nContent-Type: application/octet-stream; name=\"photos.bin\"\n\
         Content-Transfer-Encoding: base64\n\
         Content-Disposition: attachment; filename=\"photos.bin\"\n\n\
         {attachment}--b-{token}--\n"
    )
}

/// A test message from `sender@example.org` to `to`, marked with `token` in
/// its subject and body; 8-bit text and a line that needs dot-stuffing.
pub fn test_message(to: &str, subject: &str, token: &str) -> String {
    format!(
        "From: Sender <sender@example.org>\nTo: {to}\nSubject: {subject} {token}\n\
         Message-ID: <{token}@example.org>\nMIME-Version: 1.0\n\
         Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\
         Hello,\nÜnïcødé body {token}\n.a line that starts with a dot\n"
    )
}

/// Checks that `stored` (a message as an app stored it, any line ends) is
/// `sent` after the trace headers the relay prepends (`Received`,
/// `Authentication-Results`), ignoring header lines named in `ignore` that
/// the app adds itself (e.g. mbsync's `X-TUID`).
pub fn assert_same_message(stored: &str, sent: &str, ignore: &[&str], what: &str) {
    let stored = stored.replace("\r\n", "\n");
    let first = sent.lines().next().unwrap_or_default();
    let at = stored
        .find(&format!("\n{first}\n"))
        .map(|i| i + 1)
        .or_else(|| stored.starts_with(&format!("{first}\n")).then_some(0))
        .unwrap_or_else(|| panic!("{what}: the sent message is not in:\n{stored}"));
    for line in stored[..at].lines() {
        assert!(
            line.starts_with("Received:")
                || line.starts_with("Authentication-Results:")
                || line.starts_with([' ', '\t'])
                || ignore.iter().any(|h| line.starts_with(&format!("{h}:"))),
            "{what}: unexpected header before the sent message: {line:?}\n{stored}"
        );
    }
    let mut kept = String::new();
    let mut in_header = true;
    let mut skipping = false;
    for line in stored[at..].split_inclusive('\n') {
        if in_header {
            if line == "\n" {
                in_header = false;
            } else if line.starts_with([' ', '\t']) && skipping {
                continue;
            } else {
                skipping = ignore.iter().any(|h| line.starts_with(&format!("{h}:")));
                if skipping {
                    continue;
                }
            }
        }
        kept.push_str(line);
    }
    assert_eq!(kept, sent, "{what}: the message differs from what was sent");
}

/// Runs `python3 SCRIPT ARGS` from [`scripts_dir`]; panics with its output
/// unless it succeeds; returns its standard output.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(scripts_dir().join(script))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python3 {script} {args:?} failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
