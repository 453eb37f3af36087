//! A real recursive resolver (Debian's Unbound) on a loopback port, as the resolver
//! a relay or a receiving mail system trusts: it knows only the zones it is given
//! (a stub zone each, at a loopback server) and refuses every other name, so that
//! nothing it does can leave loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use crate::harness::{free_port, have_tool, spawn_logged, wait_until};

/// A running `unbound`, stopped on drop.
pub struct Unbound {
    pub addr: SocketAddr,
    child: Child,
}

impl Unbound {
    /// Whether Debian's unbound is installed; prints why a test is skipped if not.
    pub fn available() -> bool {
        let ok = have_tool("unbound");
        if !ok {
            eprintln!("SKIPPED: unbound not installed (Debian package unbound)");
        }
        ok
    }

    /// Starts Unbound in `dir`, resolving each `(zone, server)` by asking `server`
    /// (an authoritative server on loopback). No cache worth the name (1 s), no
    /// DNSSEC validation, IPv4 only.
    pub fn start(dir: &Path, zones: &[(&str, SocketAddr)]) -> Self {
        std::fs::create_dir_all(dir).expect("unbound folder");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let d = dir.display();
        // Root hints at a loopback address where nothing listens: should Unbound ever
        // look for the root, it asks nobody outside.
        std::fs::write(
            dir.join("root.hints"),
            ". 3600 NS root.invalid.\nroot.invalid. 3600 A 127.0.0.53\n",
        )
        .expect("root hints");
        let mut config = format!(
            "server:\n  interface: {ip}\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n\
             \x20 chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n\
             \x20 use-syslog: no\n  logfile: \"\"\n  verbosity: 1\n  do-ip6: no\n\
             \x20 do-not-query-localhost: no\n  access-control: 127.0.0.0/8 allow\n\
             \x20 module-config: \"iterator\"\n  root-hints: \"{d}/root.hints\"\n\
             \x20 cache-max-ttl: 1\n  cache-max-negative-ttl: 1\n  local-zone: \".\" refuse\n",
            ip = addr.ip(),
            port = addr.port(),
        );
        for (zone, _) in zones {
            config.push_str(&format!("  local-zone: \"{zone}.\" transparent\n"));
        }
        config.push_str("remote-control:\n  control-enable: no\n");
        for (zone, server) in zones {
            config.push_str(&format!(
                "stub-zone:\n  name: \"{zone}.\"\n  stub-addr: {}@{}\n",
                server.ip(),
                server.port()
            ));
        }
        let file = dir.join("unbound.conf");
        std::fs::write(&file, config).expect("unbound config");
        let mut cmd = Command::new("unbound");
        cmd.arg("-d").arg("-c").arg(&file);
        let child = spawn_logged(&mut cmd, &dir.join("unbound.log"));
        let unbound = Unbound { addr, child };
        wait_until(Duration::from_secs(10), "unbound to answer", || {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_millis(200)))?;
                    // A query for the root's SOA: REFUSED, but an answer.
                    s.send_to(
                        &[0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 6, 0, 1],
                        unbound.addr,
                    )?;
                    s.recv(&mut [0u8; 512])
                })
                .is_ok()
        });
        unbound
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
