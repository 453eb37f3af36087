//! A NAT for tests, built from network namespaces (see `tests/nat.rs`):
//!
//! ```text
//!  home-ID                router-ID                          relay-ID
//!  hv 198.18.1.2/24 ──── rh 198.18.1.1/24
//!  default via .1.1      rw 198.18.2.1/24 ──────────────── wv 198.18.2.2/24
//!                        ip_forward=1
//!                        POSTROUTING -o rw MASQUERADE       no route to 198.18.1.0/24
//! ```
//!
//! Addresses are from 198.18.0.0/15 (the benchmarking range) only. Needs root,
//! `ip` (iproute2) and `iptables`; `conntrack` for reading the NAT's mappings.

use crate::harness::{have_tool, is_root};
use std::process::{Command, Output, Stdio};

pub const HOME_ADDR: &str = "198.18.1.2";
pub const HOME_ADDR_NEW: &str = "198.18.1.3";
pub const ROUTER_LAN: &str = "198.18.1.1";
pub const ROUTER_WAN: &str = "198.18.2.1";
pub const ROUTER_WAN_NEW: &str = "198.18.2.3";
pub const RELAY_ADDR: &str = "198.18.2.2";

/// Whether this machine can run the NAT tests; prints why not.
pub fn can_build_nat() -> bool {
    if !is_root() {
        // Also in CI: a non-root runner can't make namespaces, and says so plainly.
        eprintln!(
            "SKIPPED: the NAT test needs root for network namespaces (ip netns, veth, iptables)"
        );
        return false;
    }
    for tool in ["ip", "iptables", "swaks"] {
        if !have_tool(tool) {
            eprintln!("SKIPPED: the NAT test needs root for network namespaces and `{tool}`");
            return false;
        }
    }
    true
}

/// Runs a command, panicking with its output unless it succeeds.
pub fn run(args: &[&str]) -> String {
    let out = try_run(args);
    assert!(
        out.status.success(),
        "`{}` failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn try_run(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]))
}

/// The three namespaces and the two links between them; all deleted on drop,
/// also when the test panics.
pub struct Nat {
    pub home: String,
    pub router: String,
    pub relay: String,
}

impl Nat {
    pub fn build() -> Nat {
        let id = hex::encode(rand::random::<[u8; 3]>());
        let nat = Nat {
            home: format!("home-{id}"),
            router: format!("router-{id}"),
            relay: format!("relay-{id}"),
        };
        // Guard first, so a failure half-way still deletes what was made.
        for ns in [&nat.home, &nat.router, &nat.relay] {
            run(&["ip", "netns", "add", ns]);
        }
        let (h, r, w) = (nat.home.as_str(), nat.router.as_str(), nat.relay.as_str());
        // Links are made inside the namespaces, so their names never clash with
        // another test's or the host's.
        run(&[
            "ip", "link", "add", "hv", "netns", h, "type", "veth", "peer", "name", "rh", "netns", r,
        ]);
        run(&[
            "ip", "link", "add", "rw", "netns", r, "type", "veth", "peer", "name", "wv", "netns", w,
        ]);
        for ns in [h, r, w] {
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
        }
        nat.ip(h, &["addr", "add", &format!("{HOME_ADDR}/24"), "dev", "hv"]);
        nat.ip(h, &["link", "set", "hv", "up"]);
        nat.ip(h, &["route", "add", "default", "via", ROUTER_LAN]);
        nat.ip(
            r,
            &["addr", "add", &format!("{ROUTER_LAN}/24"), "dev", "rh"],
        );
        nat.ip(r, &["link", "set", "rh", "up"]);
        nat.ip(
            r,
            &["addr", "add", &format!("{ROUTER_WAN}/24"), "dev", "rw"],
        );
        nat.ip(r, &["link", "set", "rw", "up"]);
        nat.ip(
            w,
            &["addr", "add", &format!("{RELAY_ADDR}/24"), "dev", "wv"],
        );
        nat.ip(w, &["link", "set", "wv", "up"]);
        // Address changes below delete a primary address: keep its secondaries.
        nat.exec(
            h,
            &["sysctl", "-qw", "net.ipv4.conf.hv.promote_secondaries=1"],
        );
        nat.exec(
            r,
            &["sysctl", "-qw", "net.ipv4.conf.rw.promote_secondaries=1"],
        );
        nat.exec(r, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        nat.exec(
            r,
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "rw",
                "-j",
                "MASQUERADE",
            ],
        );
        nat
    }

    pub fn ip(&self, ns: &str, args: &[&str]) -> String {
        let mut all = vec!["ip", "-n", ns];
        all.extend_from_slice(args);
        run(&all)
    }

    pub fn exec(&self, ns: &str, args: &[&str]) -> String {
        run(&self.exec_args(ns, args))
    }

    pub fn try_exec(&self, ns: &str, args: &[&str]) -> Output {
        try_run(&self.exec_args(ns, args))
    }

    pub fn exec_args<'a>(&'a self, ns: &'a str, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec!["ip", "netns", "exec", ns];
        all.extend_from_slice(args);
        all
    }

    /// The router's UDP NAT entries (for the report).
    pub fn udp_mappings(&self) -> String {
        if !has_tool_quiet("conntrack") {
            return "(conntrack not installed)".into();
        }
        let out = self.try_exec(&self.router, &["conntrack", "-L", "-p", "udp"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The external (address, port) the router gives the tunnel's flow from the
    /// home network to the relay's `relay_port`.
    pub fn tunnel_mapping(&self, relay_port: u16) -> Option<(String, u16)> {
        // `udp 17 29 src=H dst=R sport=S dport=P src=R dst=X sport=P dport=M ...`:
        // the original half is home to relay; the reply half names the external
        // address X and port M. (The relay's packets to a forgotten mapping make
        // entries of their own, from the relay to the router.)
        self.udp_mappings().lines().find_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let values = |key: &str| -> Vec<&str> {
                fields.iter().filter_map(|f| f.strip_prefix(key)).collect()
            };
            let (src, dst, dport) = (values("src="), values("dst="), values("dport="));
            let outbound = src.first()?.starts_with("198.18.1.")
                && *dst.first()? == RELAY_ADDR
                && dport.first()?.parse::<u16>().ok()? == relay_port;
            if !outbound {
                return None;
            }
            Some((dst.get(1)?.to_string(), dport.get(1)?.parse().ok()?))
        })
    }
}

impl Drop for Nat {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth ends in it (and so their peers).
        for ns in [&self.home, &self.router, &self.relay] {
            let _ = Command::new("ip")
                .args(["netns", "delete", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

pub fn has_tool_quiet(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
