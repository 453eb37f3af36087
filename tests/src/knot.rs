//! A real Knot DNS (Debian's `knotd`) serving one zone on a loopback port, as a
//! user's own authoritative server: tests rewrite the zone and reload it.

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
        std::fs::create_dir_all(dir).expect("knot folder");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let d = dir.display();
        let config = format!(
            "server:\n    listen: {}@{}\n    rundir: {d}\n    pidfile: {d}/knot.pid\n\
             control:\n    listen: {d}/knot.sock\n\
             database:\n    storage: {d}/db\n\
             template:\n  - id: default\n    storage: {d}\n    zonefile-sync: -1\n\
             zone:\n  - domain: {zone}\n    file: {zone}.zone\n\
             log:\n  - target: stderr\n    any: info\n",
            addr.ip(),
            addr.port()
        );
        std::fs::write(dir.join("knot.conf"), config).expect("knot config");
        let mut knot = Knot {
            addr,
            dir: dir.to_path_buf(),
            zone: zone.to_string(),
            serial: 0,
            child: Command::new("true").spawn().expect("spawn true"),
        };
        knot.write_zone(records);
        let mut cmd = Command::new("knotd");
        cmd.arg("-c").arg(dir.join("knot.conf"));
        knot.child = spawn_logged(&mut cmd, &dir.join("knot.log"));
        wait_until(Duration::from_secs(10), "knotd to answer", || {
            knot.soa_serial() == Some(knot.serial)
        });
        knot
    }

    /// Replaces the zone's records (keeping SOA and NS) and reloads it; returns
    /// once Knot serves the new serial.
    pub fn set_records(&mut self, records: &str) {
        self.write_zone(records);
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

    fn write_zone(&mut self, records: &str) {
        self.serial += 1;
        let text = format!(
            "$ORIGIN {zone}.\n$TTL 60\n@ SOA ns1 hostmaster {serial} 3600 600 86400 60\n@ NS ns1\nns1 A 127.0.0.1\n{records}\n",
            zone = self.zone,
            serial = self.serial
        );
        std::fs::write(self.dir.join(format!("{}.zone", self.zone)), text).expect("zone file");
    }

    /// The serial Knot serves now, asked with dig.
    fn soa_serial(&self) -> Option<u32> {
        let out = Command::new("dig")
            .args([
                "+short",
                "+time=1",
                "+tries=1",
                &format!("@{}", self.addr.ip()),
                "-p",
                &self.addr.port().to_string(),
                &self.zone,
                "SOA",
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
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
