//! Runs the real `omb-relay` and `omb-node` binaries as child processes for
//! end-to-end tests (so a test can `kill -9` them), and the real peers (swaks).
//!
//! The binaries come from the same cargo target folder as the test; the test
//! command builds them first (`cargo build --workspace --bins`).

use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A workspace binary next to the running test's own executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let mut dir = exe
        .parent()
        .expect("test executable has a folder")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` before the tests",
        path.display()
    );
    path
}

/// True when running in CI, where every peer must be present.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Checks that an external tool is installed. In CI a missing tool fails the
/// test; elsewhere the test is skipped with the reason printed.
pub fn have_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        assert!(!in_ci(), "{tool} is required in CI but not installed");
        eprintln!("SKIPPED: {tool} is not installed (scripts/test installs it as root)");
    }
    found
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A free loopback TCP port (also free for UDP at the time of asking), never
/// one this process handed out before: the kernel readily gives a just-released
/// port again, and two parts of one relay must not get the same one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
        let port = tcp.local_addr().expect("local address").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// A scratch folder, removed at the end unless `OMB_KEEP_TEST_DIRS` is set.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "omb-test-{name}-{}",
            hex::encode(rand::random::<[u8; 4]>())
        ));
        std::fs::create_dir_all(&dir).expect("create test folder");
        TestDir(dir)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("OMB_KEEP_TEST_DIRS").is_none() && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Spawns `cmd` with its stdout and stderr appended to `log`.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    cmd.stdout(Stdio::null())
        .stderr(file)
        .env("OMB_LOG", "info,omb_relay=debug,omb_node=debug")
        .spawn()
        .expect("spawn")
}

/// Waits until `f` is true, or panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Relay {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub smtp: SocketAddr,
    pub tunnel: SocketAddr,
    pub dns: SocketAddr,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Relay {
    /// Writes a relay configuration in `dir/relay` with fresh loopback ports.
    /// `database` is `sqlite` or a PostgreSQL URL.
    pub fn new(dir: &Path, database: &str, extra: &str) -> Self {
        let data = dir.join("relay");
        std::fs::create_dir_all(&data).expect("relay folder");
        let smtp = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let tunnel = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dns = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = dir.join("relay.toml");
        std::fs::write(
            &config,
            format!(
                "domain = \"sandbox.test\"\ndata_dir = \"{}\"\ndatabase = \"{database}\"\n{extra}\n\
                 [smtp]\nlisten = \"{smtp}\"\n\n[tunnel]\nlisten = \"{tunnel}\"\n\n\
                 [dns]\nlisten = \"{dns}\"\nresolver = \"{dns}\"\naddresses = [\"127.0.0.1\"]\n",
                data.display()
            ),
        )
        .expect("write relay config");
        Relay {
            log: dir.join("relay.log"),
            dir: data,
            config,
            smtp,
            tunnel,
            dns,
            child: None,
        }
    }

    /// Makes the relay ask `resolver` (instead of its own DNS server) for what it
    /// looks up: DKIM keys of submissions, deliveries. Before [`start`](Self::start).
    pub fn use_resolver(&self, resolver: SocketAddr) {
        let text = std::fs::read_to_string(&self.config).expect("relay config");
        let own = format!("resolver = \"{}\"", self.dns);
        assert!(text.contains(&own), "no resolver line in the relay config");
        let text = text.replace(&own, &format!("resolver = \"{resolver}\""));
        std::fs::write(&self.config, text).expect("relay config");
    }

    pub fn start(&mut self) {
        let smtp = self.smtp;
        self.start_wrapped(&[], || std::net::TcpStream::connect(smtp).is_ok());
    }

    /// Starts the relay under a command prefix (e.g. `ip netns exec NS`), and
    /// waits until `listening` says it answers.
    pub fn start_wrapped(&mut self, prefix: &[&str], mut listening: impl FnMut() -> bool) {
        assert!(self.child.is_none(), "relay already running");
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin("omb-relay"));
                c
            }
            None => Command::new(bin("omb-relay")),
        };
        cmd.arg("-c").arg(&self.config).arg("serve");
        self.child = Some(spawn_logged(&mut cmd, &self.log));
        let log = self.log.clone();
        wait_until(Duration::from_secs(30), "the relay to listen", || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "omb-relay exited with {status}:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
            listening()
        });
    }

    /// The relay's exit status, if it has exited by itself.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Moves the tunnel endpoint to `addr` (e.g. an address in a namespace).
    pub fn set_tunnel_listen(&mut self, addr: SocketAddr) {
        let config = std::fs::read_to_string(&self.config).expect("read relay config");
        let old = format!("[tunnel]\nlisten = \"{}\"", self.tunnel);
        assert!(
            config.contains(&old),
            "relay config changed shape:\n{config}"
        );
        std::fs::write(
            &self.config,
            config.replace(&old, &format!("[tunnel]\nlisten = \"{addr}\"")),
        )
        .expect("write relay config");
        self.tunnel = addr;
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(bin("omb-relay"))
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run omb-relay");
        assert!(
            out.status.success(),
            "omb-relay {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Creates an account; returns its link token.
    pub fn add_account(&self, handle: &str) -> String {
        let out = self.cli(&["account", "add", handle]);
        field(&out, "link_token").expect("link token printed")
    }

    pub fn link_token(&self, handle: &str) -> String {
        let out = self.cli(&["account", "link-token", handle]);
        field(&out, "link_token").expect("link token printed")
    }

    /// Issues an API token for the account (the custom-domain API).
    pub fn api_token(&self, handle: &str) -> String {
        let out = self.cli(&["account", "api-token", handle]);
        field(&out, "api_token").expect("api token printed")
    }

    pub fn pin(&self) -> String {
        self.cli(&["pin"]).trim().to_string()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
}

pub struct Node {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Node {
    /// Writes a node configuration for `handle@sandbox.test` in `dir/nodes/handle`.
    pub fn new(dir: &Path, relay: &Relay, handle: &str, token: Option<&str>) -> Self {
        Self::with_tunnel(dir, &relay.tunnel.to_string(), &relay.pin(), handle, token)
    }

    pub fn with_tunnel(
        dir: &Path,
        tunnel: &str,
        pin: &str,
        handle: &str,
        token: Option<&str>,
    ) -> Self {
        let data = dir.join("nodes").join(handle);
        std::fs::create_dir_all(&data).expect("node folder");
        let config = dir.join(format!("{handle}.toml"));
        let token = token
            .map(|t| format!("link_token = \"{t}\"\n"))
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!("address = \"{handle}@sandbox.test\"\ndata_dir = \"{}\"\n\n[relay]\ntunnel = \"{tunnel}\"\npin = \"{pin}\"\n{token}", data.display()),
        )
        .expect("write node config");
        Node {
            log: dir.join(format!("{handle}.log")),
            dir: data,
            config,
            child: None,
        }
    }

    /// Adds a `[passthrough]` section: `(service, local server)` pairs, e.g.
    /// `("imaps", addr)`. Takes effect at the next start.
    pub fn set_passthrough(&self, targets: &[(&str, SocketAddr)]) {
        let mut config = std::fs::read_to_string(&self.config).expect("read node config");
        assert!(!config.contains("[passthrough]"), "passthrough set already");
        config.push_str("\n[passthrough]\n");
        for (service, addr) in targets {
            config.push_str(&format!("{service} = \"{addr}\"\n"));
        }
        std::fs::write(&self.config, config).expect("write node config");
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    pub fn start_with_env(&mut self, env: &[(&str, &str)]) {
        assert!(self.child.is_none(), "node already running");
        let mut cmd = Command::new(bin("omb-node"));
        cmd.arg("-c").arg(&self.config).arg("run");
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(spawn_logged(&mut cmd, &self.log));
    }

    /// Starts the node under another command prefix (e.g. `ip netns exec NS`).
    pub fn start_wrapped(&mut self, prefix: &[&str]) {
        assert!(self.child.is_none(), "node already running");
        let mut cmd = Command::new(prefix[0]);
        cmd.args(&prefix[1..])
            .arg(bin("omb-node"))
            .arg("-c")
            .arg(&self.config)
            .arg("run");
        self.child = Some(spawn_logged(&mut cmd, &self.log));
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many times the tunnel came up so far (from the log).
    pub fn tunnel_ups(&self) -> usize {
        self.log_text().matches("tunnel up").count()
    }

    pub fn wait_tunnel_ups(&self, n: usize, limit: Duration) {
        wait_until(limit, "the node's tunnel to come up", || {
            self.tunnel_ups() >= n
        });
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the node process to exit by itself; returns whether it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("omb-node"))
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run omb-node")
    }

    /// UIDs in INBOX.
    pub fn uids(&self) -> Vec<u32> {
        let out = self.cli(&["mail", "list"]);
        assert!(
            out.status.success(),
            "mail list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }

    /// One message, decrypted by the node's key.
    pub fn show(&self, uid: u32) -> Vec<u8> {
        let out = self.cli(&["mail", "show", &uid.to_string()]);
        assert!(
            out.status.success(),
            "mail show failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The stored form (ciphertext).
    pub fn show_raw(&self, uid: u32) -> Vec<u8> {
        self.cli(&["mail", "show", "--raw", &uid.to_string()])
            .stdout
    }

    pub fn fingerprint(&self) -> String {
        let out = self.cli(&["keys"]);
        field(&String::from_utf8_lossy(&out.stdout), "openpgp_fingerprint")
            .expect("fingerprint printed")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends one message with swaks; returns its transcript. Panics unless the
/// exit status is success. An empty `body` is left out (swaks would ask for
/// one on its standard input, forever), for messages given with `--data`.
pub fn swaks(server: SocketAddr, to: &str, body: &str, extra: &[&str]) -> String {
    swaks_wrapped(&[], server, to, body, extra)
}

/// [`swaks`] under a command prefix (e.g. `ip netns exec NS`).
pub fn swaks_wrapped(
    prefix: &[&str],
    server: SocketAddr,
    to: &str,
    body: &str,
    extra: &[&str],
) -> String {
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg("swaks");
            c
        }
        None => Command::new("swaks"),
    };
    let out = cmd
        .args([
            "--server",
            &server.to_string(),
            "--to",
            to,
            "--from",
            "sender@example.org",
            "--helo",
            "client.example.org",
        ])
        .args(if body.is_empty() {
            vec![]
        } else {
            vec!["--body", body]
        })
        .args(extra)
        .stdin(Stdio::null())
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

/// A running relay with an account `alice` and alice's node linked to it, its
/// tunnel up. `extra` is added to the relay's configuration.
pub fn relay_with_alice(name: &str, extra: &str) -> (TestDir, Relay, Node) {
    let dir = TestDir::new(name);
    let mut relay = Relay::new(dir.path(), "sqlite", extra);
    relay.start();
    let token = relay.add_account("alice");
    let mut node = Node::new(dir.path(), &relay, "alice", Some(&token));
    node.start();
    node.wait_tunnel_ups(1, Duration::from_secs(30));
    (dir, relay, node)
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(p);
                }
            }
        }
    }
    found
}

/// A random token to put in a message body.
pub fn token() -> String {
    format!("tok-{}", hex::encode(rand::random::<[u8; 12]>()))
}

/// A raw SMTP client for malformed input.
pub struct RawSmtp {
    pub stream: std::net::TcpStream,
    buf: Vec<u8>,
}

impl RawSmtp {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = std::net::TcpStream::connect(addr).expect("connect to SMTP");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut s = RawSmtp {
            stream,
            buf: Vec::new(),
        };
        let greeting = s.reply();
        assert!(greeting.starts_with("220"), "greeting: {greeting}");
        s
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Reads one whole (possibly multi-line) reply.
    pub fn reply(&mut self) -> String {
        use std::io::Read;
        let mut text = String::new();
        loop {
            while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line).into_owned();
                text.push_str(&line);
                if line.len() < 4 || line.as_bytes()[3] != b'-' {
                    return text;
                }
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return text,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }
}
