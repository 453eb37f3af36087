//! Helpers of the sending tests (`outbound`, `mta_sts`): a standalone
//! Postfix as a recipient domain's MX on a loopback port, a node with
//! submission and IMAP listeners and a password, and Python's smtplib,
//! imaplib and dkimpy driven through `tests/outbound_client.py`.

use crate::harness::{free_port, Node, Relay};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/outbound_client.py");
pub const PASSWORD: &str = "correct horse battery";

pub fn client(mode: &str, config: &serde_json::Value) -> (bool, String) {
    let out = Command::new("python3")
        .arg(CLIENT)
        .arg(mode)
        .arg(config.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A standalone Postfix instance as the MX of `domains` on a loopback port,
/// delivering every accepted recipient into one Maildir, refusing
/// `reject@example.org` and `reject2@example.org` with 550 5.1.1, making no DNS lookups; with
/// STARTTLS when given a certificate and key (PEM files).
pub struct Postfix {
    conf: PathBuf,
    maildir: PathBuf,
    log: PathBuf,
}

impl Postfix {
    pub fn new(dir: &Path, port: u16, domains: &[&str], tls: Option<(&Path, &Path)>) -> Self {
        let root = dir.join("postfix");
        let (conf, queue, data, mail) = (
            root.join("conf"),
            root.join("queue"),
            root.join("data"),
            root.join("mail"),
        );
        for d in [&conf, &queue, &data, &mail] {
            std::fs::create_dir_all(d).expect("postfix folders");
        }
        let r = root.display();
        let domains = domains.join(" ");
        let tls = match tls {
            Some((cert, key)) => format!(
                "smtpd_tls_security_level = may\nsmtpd_tls_received_header = yes\n\
                 smtpd_tls_cert_file = {}\nsmtpd_tls_key_file = {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        std::fs::write(
            conf.join("main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {r}/queue\ndata_directory = {r}/data\n\
                 myhostname = mx.example.org\nmydomain = example.org\nmyorigin = example.org\n\
                 mydestination =\ninet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n\
                 mynetworks = 127.0.0.0/8\nsmtp_dns_support_level = disabled\n\
                 smtpd_peername_lookup = no\nmaillog_file_prefixes = {r}\nmaillog_file = {r}/maillog\n\
                 virtual_mailbox_domains = {domains}\nvirtual_mailbox_base = {r}/mail\n\
                 virtual_mailbox_maps = static:inbox/\nvirtual_uid_maps = static:65534\n\
                 virtual_gid_maps = static:65534\nalias_maps =\nalias_database =\n\
                 smtpd_recipient_restrictions = check_recipient_access inline:{{ {{reject@example.org=550 5.1.1 no such user here}} {{reject2@example.org=550 5.1.1 no such user here}} }}, permit_mynetworks, reject\n{tls}"
            ),
        )
        .expect("main.cf");
        let master = std::fs::read_to_string("/etc/postfix/master.cf").expect("master.cf");
        let master: String = master
            .lines()
            .map(|l| {
                if l.starts_with("smtp      inet") {
                    format!("127.0.0.1:{port} inet n - n - - smtpd\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(conf.join("master.cf"), master).expect("master.cf");
        for (path, owner) in [(&data, "postfix"), (&mail, "65534:65534")] {
            let ok = Command::new("chown")
                .arg(owner)
                .arg(path)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown {owner} {}", path.display());
        }
        Postfix {
            conf,
            maildir: mail.join("inbox"),
            log: root.join("maillog"),
        }
    }

    /// Also listens on `[::1]:port` (call before starting it): for mail
    /// to a host that has only an IPv6 address.
    pub fn listen_on_ipv6_too(&self, port: u16) {
        let main = self.conf.join("main.cf");
        let text = std::fs::read_to_string(&main).expect("main.cf");
        let text = text
            .replace(
                "inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n",
                "inet_interfaces = 127.0.0.1, [::1]\ninet_protocols = all\n",
            )
            .replace(
                "mynetworks = 127.0.0.0/8\n",
                "mynetworks = 127.0.0.0/8 [::1]/128\n",
            );
        std::fs::write(&main, text).expect("main.cf");
        let master = self.conf.join("master.cf");
        let mut text = std::fs::read_to_string(&master).expect("master.cf");
        text.push_str(&format!("[::1]:{port} inet n - n - - smtpd\n"));
        std::fs::write(&master, text).expect("master.cf");
    }

    pub fn postfix(&self, action: &str) {
        let out = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg(action)
            .output()
            .expect("run postfix");
        assert!(
            out.status.success() || action == "stop",
            "postfix {action}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Postfix's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every message delivered so far.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) {
                for e in entries.flatten() {
                    out.push(std::fs::read(e.path()).unwrap_or_default());
                }
            }
        }
        out
    }

    pub fn with_subject(&self, subject: &str) -> Option<Vec<u8>> {
        self.messages()
            .into_iter()
            .find(|m| String::from_utf8_lossy(m).contains(subject))
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.conf)
            .arg("stop")
            .output();
    }
}

/// Where a node's mail apps connect.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// Submission with STARTTLS (587).
    pub submission: SocketAddr,
    /// Submission in implicit TLS (465).
    pub submissions: SocketAddr,
    /// IMAP with STARTTLS.
    pub imap: SocketAddr,
}

/// A linked node with submission (STARTTLS and implicit TLS) and IMAP listeners and a
/// password.
pub fn node_with_access(dir: &Path, relay: &Relay, handle: &str) -> (Node, Access) {
    let token = relay.add_account(handle);
    let node = Node::new(dir, relay, handle, Some(&token));
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let access = Access {
        submission: loopback(free_port()),
        submissions: loopback(free_port()),
        imap: loopback(free_port()),
    };
    let mut config = std::fs::read_to_string(&node.config).expect("node config");
    config.push_str(&format!(
        "\n[access]\nsubmission = \"{}\"\nsubmissions = \"{}\"\nimap = \"{}\"\n",
        access.submission, access.submissions, access.imap
    ));
    std::fs::write(&node.config, config).expect("node config");
    let mut child = Command::new(crate::harness::bin("omb-node"))
        .arg("-c")
        .arg(&node.config)
        .arg("password")
        .stdin(Stdio::piped())
        .spawn()
        .expect("omb-node password");
    use std::io::Write;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(PASSWORD.as_bytes()).expect("password");
    }
    assert!(child.wait().expect("password").success());
    (node, access)
}

/// [`node_with_access`], started, once its tunnel to `relay` is up.
pub fn started_node_with_access(dir: &Path, relay: &Relay, handle: &str) -> (Node, Access) {
    let (mut node, access) = node_with_access(dir, relay, handle);
    node.start();
    node.wait_tunnel_ups(1, std::time::Duration::from_secs(60));
    (node, access)
}

/// Submits one message from `from` (envelope and header, logged in as `from`) and
/// asserts that the node queued it.
pub fn send_ok(submission: SocketAddr, from: &str, to: &[&str], subject: &str) {
    let reply = send(submission, from, from, from, to, subject);
    assert!(reply.starts_with("250"), "{subject}: {reply}");
}

/// Submits one message with smtplib on `submission` (STARTTLS, then AUTH); the
/// server's final answer as "CODE TEXT".
pub fn send(
    submission: SocketAddr,
    user: &str,
    mail_from: &str,
    from: &str,
    to: &[&str],
    subject: &str,
) -> String {
    submit(submission, false, user, mail_from, from, to, subject)
}

/// [`send`] on a port of implicit TLS (465, RFC 8314 §3.3).
pub fn send_implicit_tls(
    submissions: SocketAddr,
    user: &str,
    from: &str,
    to: &[&str],
    subject: &str,
) -> String {
    submit(submissions, true, user, from, from, to, subject)
}

fn submit(
    port: SocketAddr,
    implicit_tls: bool,
    user: &str,
    mail_from: &str,
    from: &str,
    to: &[&str],
    subject: &str,
) -> String {
    let (_, out) = client(
        "send",
        &serde_json::json!({
            "submission": port.to_string(), "implicit_tls": implicit_tls, "user": user,
            "password": PASSWORD, "mail_from": mail_from, "from": from, "to": to,
            "subject": subject,
        }),
    );
    out
}
