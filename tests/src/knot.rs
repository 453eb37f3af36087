//! A real Knot DNS (Debian's `knotd`) serving zones on a loopback port, as a
//! user's own authoritative server: tests rewrite the (first) zone and reload
//! it. Zones can be DNSSEC-signed by Knot itself (one ECDSA P-256 key per
//! zone, NSEC), their DNSKEYs then a validator's trust anchor.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use crate::harness::{free_port, have_tool, spawn_logged, wait_until};

/// A running `knotd`, stopped on drop.
pub struct Knot {
    pub addr: SocketAddr,
    dir: PathBuf,
    zone: String,
    serial: u32,
    child: Child,
}

/// One zone Knot serves: its name, its records (zone-file lines relative to
/// it, after the SOA, NS and `ns1` address that Knot adds) and whether Knot
/// signs it.
pub struct Zone<'a> {
    pub name: &'a str,
    pub records: &'a str,
    pub signed: bool,
}

impl Knot {
    /// Whether Debian's knot is installed; prints why a test is skipped if not.
    pub fn available() -> bool {
        let ok = have_tool("knotd") && have_tool("knotc");
        if !ok {
            eprintln!("SKIPPED: knotd/knotc not installed (Debian package knot)");
        }
        ok
    }

    /// Starts Knot in `dir`, authoritative for `zone` with `records` (zone-file
    /// lines relative to the zone, after the SOA and NS that this adds).
    pub fn start(dir: &Path, zone: &str, records: &str) -> Self {
        Self::start_zones(
            dir,
            &[Zone {
                name: zone,
                records,
                signed: false,
            }],
        )
    }

    /// Starts Knot in `dir`, authoritative for `zones`; returns once each
    /// answers (signed when it is to be).
    pub fn start_zones(dir: &Path, zones: &[Zone<'_>]) -> Self {
        // The key store (signing) lives in `db`, which must exist.
        std::fs::create_dir_all(dir.join("db")).expect("knot folder");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let d = dir.display();
        let config = format!(
            "server:\n    listen: {}@{}\n    rundir: {d}\n    pidfile: {d}/knot.pid\n\
             control:\n    listen: {d}/knot.sock\n\
             database:\n    storage: {d}/db\n\
             template:\n  - id: default\n    storage: {d}\n    zonefile-sync: -1\n\
             policy:\n  - id: signed\n    algorithm: ecdsap256sha256\n    single-type-signing: on\n    nsec3: off\n\
             zone:\n{zones}\
             log:\n  - target: stderr\n    any: info\n",
            addr.ip(),
            addr.port(),
            zones = zones
                .iter()
                .map(|z| {
                    let signing = match z.signed {
                        true => "    dnssec-signing: on\n    dnssec-policy: signed\n",
                        false => "",
                    };
                    format!("  - domain: {0}\n    file: {0}.zone\n{signing}", z.name)
                })
                .collect::<String>(),
        );
        std::fs::write(dir.join("knot.conf"), config).expect("knot config");
        let mut knot = Knot {
            addr,
            dir: dir.to_path_buf(),
            zone: zones[0].name.to_string(),
            serial: 1,
            child: Command::new("true").spawn().expect("spawn true"),
        };
        for z in zones {
            knot.write_zone(z.name, z.records);
        }
        let mut cmd = Command::new("knotd");
        cmd.arg("-c").arg(dir.join("knot.conf"));
        knot.child = spawn_logged(&mut cmd, &dir.join("knot.log"));
        for z in zones {
            wait_until(Duration::from_secs(20), "knotd to answer", || {
                let answer = knot.dig(&["+dnssec", z.name, "SOA"]);
                // Knot bumps a signed zone's serial when it signs it.
                answer.contains("SOA") && (!z.signed || answer.contains("RRSIG"))
            });
        }
        knot
    }

    /// The DNSKEY records of `zone`, one a line in zone-file syntax: a
    /// validator's trust anchor for it.
    pub fn dnskeys(&self, zone: &str) -> String {
        self.dig(&["+noall", "+answer", "+nosplit", zone, "DNSKEY"])
    }

    /// `dig` asked of this Knot, its output.
    fn dig(&self, args: &[&str]) -> String {
        let out = Command::new("dig")
            .args(["+time=1", "+tries=1", &format!("@{}", self.addr.ip())])
            .args(["-p", &self.addr.port().to_string()])
            .args(args)
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Replaces the zone's records (keeping SOA and NS) and reloads it; returns
    /// once Knot serves the new serial.
    pub fn set_records(&mut self, records: &str) {
        self.serial += 1;
        let zone = self.zone.clone();
        self.write_zone(&zone, records);
        let out = Command::new("knotc")
            .arg("-c")
            .arg(self.dir.join("knot.conf"))
            .args(["zone-reload", &self.zone])
            .output()
            .expect("run knotc");
        assert!(
            out.status.success(),
            "knotc zone-reload: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let serial = self.serial;
        wait_until(
            Duration::from_secs(10),
            "knotd to serve the new zone",
            || self.soa_serial() == Some(serial),
        );
    }

    fn write_zone(&self, zone: &str, records: &str) {
        let text = format!(
            "$ORIGIN {zone}.\n$TTL 60\n@ SOA ns1 hostmaster {serial} 3600 600 86400 60\n@ NS ns1\nns1 A 127.0.0.1\n{records}\n",
            serial = self.serial
        );
        std::fs::write(self.dir.join(format!("{zone}.zone")), text).expect("zone file");
    }

    /// The serial Knot serves now for the first zone, asked with dig.
    fn soa_serial(&self) -> Option<u32> {
        self.dig(&["+short", &self.zone, "SOA"])
            .split_whitespace()
            .nth(2)?
            .parse()
            .ok()
    }
}

impl Drop for Knot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
