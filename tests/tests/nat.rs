//! A home node behind a real NAT, built from network namespaces:
//!
//! ```text
//!  home-ID                router-ID                          relay-ID
//!  hv 198.18.1.2/24 ──── rh 198.18.1.1/24
//!  default via .1.1      rw 198.18.2.1/24 ──────────────── wv 198.18.2.2/24
//!                        ip_forward=1                       omb-relay: tunnel UDP 198.18.2.2:P,
//!                        POSTROUTING -o rw MASQUERADE       SMTP/DNS on its own 127.0.0.1
//!                                                           no route to 198.18.1.0/24
//! ```
//!
//! The node only dials out; mail must reach it through the tunnel, and keep
//! reaching it when the NAT changes its external port, when the router gets a
//! new external address, and when the node's own address changes.
//!
//! Needs root, `ip` (iproute2), `iptables` and `conntrack` (conntrack-tools);
//! `swaks` sends the mail. Addresses are from 198.18.0.0/15 only, and no
//! namespace has a route out of the three.

use omb_tests::harness::{free_port, have_tool, swaks_wrapped, token, Node, Relay, TestDir};
use omb_tests::netns::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long mail may take to arrive after a change of the path.
const AFTER_REBIND: Duration = Duration::from_secs(20);

/// Everything one test runs; fields drop in order: processes first, then the
/// namespaces, then the folder (kept when the test failed).
struct World {
    node: Node,
    relay: Relay,
    nat: Nat,
    dir: TestDir,
    /// Message bodies already decrypted, by UID.
    seen: HashMap<u32, String>,
}

impl World {
    /// Builds the NAT, starts the relay in its namespace and a linked node
    /// `alice` behind the NAT, and waits for the tunnel.
    fn start(name: &str) -> World {
        let dir = TestDir::new(name);
        let nat = Nat::build();
        let mut relay = Relay::new(dir.path(), "sqlite", "");
        // The tunnel listens where the router can reach it; SMTP and DNS stay on
        // the relay namespace's own loopback.
        relay.set_tunnel_listen(SocketAddr::new(
            RELAY_ADDR.parse().expect("an IPv4 address"),
            free_port(),
        ));
        let probe = format!("exec 3<>/dev/tcp/127.0.0.1/{}", relay.smtp.port());
        relay.start_wrapped(&["ip", "netns", "exec", &nat.relay], || {
            nat.try_exec(&nat.relay, &["bash", "-c", &probe])
                .status
                .success()
        });
        let tunnel = relay.tunnel;
        let link = relay.add_account("alice");
        let mut node = Node::with_tunnel(
            dir.path(),
            &tunnel.to_string(),
            &relay.pin(),
            "alice",
            Some(&link),
        );
        node.start_wrapped(&["ip", "netns", "exec", &nat.home]);
        let mut world = World {
            node,
            relay,
            nat,
            dir,
            seen: HashMap::new(),
        };
        let started = Instant::now();
        world.wait(
            Duration::from_secs(60),
            "the node's tunnel through the NAT to come up",
            |w| w.node.tunnel_ups() >= 1,
        );
        eprintln!(
            "tunnel up through the NAT after {:?}; router's mapping: {}",
            started.elapsed(),
            world.nat.udp_mappings()
        );
        world
    }

    /// Like `wait_until`, with both logs in the panic message.
    fn wait(&mut self, limit: Duration, what: &str, mut f: impl FnMut(&mut World) -> bool) {
        let start = Instant::now();
        while !f(self) {
            if let Some(status) = self.relay.exited() {
                panic!(
                    "omb-relay exited with {status} while waiting for {what}\n{}",
                    self.logs()
                );
            }
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        format!(
            "--- relay log ---\n{}\n--- node log ---\n{}\n--- router NAT ---\n{}\n(test folder: {})",
            tail(&self.relay.log_text(), 60),
            tail(&self.node.log_text(), 60),
            self.nat.udp_mappings(),
            self.dir.path().display()
        )
    }

    /// Sends one message to alice with swaks, from inside the relay namespace.
    fn send(&self, body: &str) {
        swaks_wrapped(
            &["ip", "netns", "exec", &self.nat.relay],
            self.relay.smtp,
            "alice@sandbox.test",
            body,
            &[],
        );
    }

    /// How often each token appears in alice's mailbox now.
    fn counts(&mut self, tokens: &[String]) -> Vec<usize> {
        for uid in self.node.uids() {
            if !self.seen.contains_key(&uid) {
                let body = String::from_utf8_lossy(&self.node.show(uid)).into_owned();
                self.seen.insert(uid, body);
            }
        }
        tokens
            .iter()
            .map(|t| {
                self.seen
                    .values()
                    .filter(|b| b.contains(t.as_str()))
                    .count()
            })
            .collect()
    }

    /// Waits until every token is in the mailbox; returns when each first appeared,
    /// measured from `since`.
    fn wait_for(
        &mut self,
        tokens: &[String],
        since: Instant,
        limit: Duration,
        what: &str,
    ) -> Vec<Duration> {
        let mut arrived: Vec<Option<Duration>> = vec![None; tokens.len()];
        self.wait(limit, what, |w| {
            for (i, n) in w.counts(tokens).into_iter().enumerate() {
                if n > 0 && arrived[i].is_none() {
                    arrived[i] = Some(since.elapsed());
                }
            }
            arrived.iter().all(Option::is_some)
        });
        arrived
            .into_iter()
            .map(|a| a.expect("every token arrived"))
            .collect()
    }

    /// Asserts that each token is in the mailbox exactly once, and nothing else is.
    fn assert_exactly_once(&mut self, tokens: &[String]) {
        let counts = self.counts(tokens);
        for (t, n) in tokens.iter().zip(&counts) {
            assert_eq!(
                *n,
                1,
                "message {t} is in the mailbox {n} times\n{}",
                self.logs()
            );
        }
        assert_eq!(
            self.seen.len(),
            tokens.len(),
            "the mailbox holds {} messages for {} sent\n{}",
            self.seen.len(),
            tokens.len(),
            self.logs()
        );
    }

    /// Whether the tunnel survived a change by QUIC migration (still the first
    /// connection) or came back by a reconnect; for the report.
    fn how_it_survived(&self, ups_before: usize) -> String {
        let ups = self.node.tunnel_ups();
        if ups == ups_before {
            format!(
                "QUIC connection migration (still {ups} tunnel-up in the node's log, no reconnect)"
            )
        } else {
            // Why: the node's and the relay's own words about the old session.
            let why: Vec<String> = self
                .node
                .log_text()
                .lines()
                .chain(self.relay.log_text().lines())
                .filter(|l| {
                    l.contains("tunnel down")
                        || l.contains("session ended")
                        || l.contains("disconnected")
                })
                .map(str::to_string)
                .collect();
            format!(
                "reconnect ({} new tunnel-up in the node's log):\n{}",
                ups - ups_before,
                why.join("\n")
            )
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Sends `n` messages one after the other on a thread, while the caller changes
/// the path; returns their tokens when joined.
fn send_in_background(
    world: &World,
    n: usize,
    gap: Duration,
) -> std::thread::JoinHandle<Vec<String>> {
    let (ns, smtp) = (world.nat.relay.clone(), world.relay.smtp);
    std::thread::spawn(move || {
        (0..n)
            .map(|_| {
                let t = token();
                swaks_wrapped(
                    &["ip", "netns", "exec", &ns],
                    smtp,
                    "alice@sandbox.test",
                    &t,
                    &[],
                );
                std::thread::sleep(gap);
                t
            })
            .collect()
    })
}

/// Sends mail during and after `change`, and checks it all arrives, each once,
/// within [`AFTER_REBIND`]. Returns the tokens sent.
fn mail_across(world: &mut World, what: &str, change: impl FnOnce(&World)) -> Vec<String> {
    let ups_before = world.node.tunnel_ups();
    let during = send_in_background(world, 3, Duration::from_millis(150));
    std::thread::sleep(Duration::from_millis(100));
    let changed = Instant::now();
    change(world);
    let mut tokens = during.join().expect("the sending thread");
    for _ in 0..3 {
        let t = token();
        world.send(&t);
        tokens.push(t);
    }
    let arrived = world.wait_for(
        &tokens,
        changed,
        AFTER_REBIND,
        &format!("mail sent across {what}"),
    );
    let latest = arrived.iter().max().copied().unwrap_or_default();
    eprintln!(
        "{what}: {} messages arrived, the last {latest:?} after the change (each: {:?}); tunnel survived by {}",
        tokens.len(),
        arrived,
        world.how_it_survived(ups_before)
    );
    tokens
}

#[test]
fn mail_reaches_a_node_behind_nat_and_survives_rebinding() {
    if !can_build_nat() {
        return;
    }
    let mut world = World::start("nat-rebind");
    let (home, router, relay_ns) = (
        world.nat.home.clone(),
        world.nat.router.clone(),
        world.nat.relay.clone(),
    );
    let relay_port = world.relay.tunnel.port();

    // Nothing gets in: the relay side has no route to the home network, so a
    // connection or a ping to the node's address fails, while the node reaches out.
    let route = world
        .nat
        .try_exec(&relay_ns, &["ip", "route", "get", HOME_ADDR]);
    assert!(
        !route.status.success(),
        "the relay side has a route to the home network: {}",
        String::from_utf8_lossy(&route.stdout)
    );
    let connect = world.nat.try_exec(
        &relay_ns,
        &[
            "timeout",
            "3",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{HOME_ADDR}/587"),
        ],
    );
    assert!(
        !connect.status.success(),
        "a TCP connection from the relay side reached the home network"
    );
    if has_tool_quiet("ping") {
        assert!(
            !world
                .nat
                .try_exec(&relay_ns, &["ping", "-c1", "-W1", HOME_ADDR])
                .status
                .success(),
            "the relay side can ping the home network"
        );
        world.nat.exec(&home, &["ping", "-c1", "-W2", RELAY_ADDR]);
    }

    // Mail reaches the node through the tunnel it dialled out.
    let first = token();
    let sent = Instant::now();
    world.send(&first);
    let took = world.wait_for(
        std::slice::from_ref(&first),
        sent,
        Duration::from_secs(30),
        "the first message",
    );
    eprintln!(
        "first message in the mailbox {:?} after sending began",
        took[0]
    );
    let mut all = vec![first];

    // 1. The NAT gives the flow a new external port: forget every mapping and
    //    take UDP ports from a range the old mapping isn't in.
    if have_tool("conntrack") {
        let (_, old_port) = world
            .nat
            .tunnel_mapping(relay_port)
            .unwrap_or_else(|| panic!("no NAT mapping for the tunnel\n{}", world.logs()));
        let (lo, hi) = if (40000..=40100).contains(&old_port) {
            (50000, 50100)
        } else {
            (40000, 40100)
        };
        let rule = format!(
            "iptables -t nat -I POSTROUTING 1 -o rw -p udp -j MASQUERADE --to-ports {lo}-{hi}"
        );
        let tokens = mail_across(&mut world, "a NAT port rebinding", |w| {
            w.nat.exec(&router, &rule.split(' ').collect::<Vec<_>>());
            w.nat.exec(&router, &["conntrack", "-F"]);
        });
        let (_, new_port) = world
            .nat
            .tunnel_mapping(relay_port)
            .unwrap_or_else(|| panic!("no NAT mapping after the rebinding\n{}", world.logs()));
        eprintln!("the tunnel's external port moved from {old_port} to {new_port}");
        assert!(
            (lo..=hi).contains(&new_port),
            "the tunnel's flow is not on the rebound port range: {new_port}\n{}",
            world.logs()
        );
        all.extend(tokens);
    } else {
        eprintln!(
            "SKIPPED part: the NAT port rebinding needs conntrack (Debian package `conntrack`)"
        );
    }

    // 2. The router gets a new external address (as from the ISP): the old one
    //    goes, and the kernel drops the mappings masqueraded to it.
    let tokens = mail_across(
        &mut world,
        "a change of the router's external address",
        |w| {
            w.nat.ip(
                &router,
                &["addr", "add", &format!("{ROUTER_WAN_NEW}/24"), "dev", "rw"],
            );
            w.nat.ip(
                &router,
                &["addr", "del", &format!("{ROUTER_WAN}/24"), "dev", "rw"],
            );
        },
    );
    if has_tool_quiet("conntrack") {
        let (addr, port) = world
            .nat
            .tunnel_mapping(relay_port)
            .unwrap_or_else(|| panic!("no NAT mapping after the address change\n{}", world.logs()));
        eprintln!("the tunnel now leaves the router from {addr}:{port}");
        assert_eq!(
            addr, ROUTER_WAN_NEW,
            "the tunnel's flow does not use the router's new address"
        );
    }
    all.extend(tokens);

    std::thread::sleep(Duration::from_secs(1));
    world.assert_exactly_once(&all);
}

#[test]
fn mail_still_reaches_a_node_behind_nat_after_its_home_address_changes() {
    if !can_build_nat() {
        return;
    }
    let mut world = World::start("nat-home-addr");
    let home = world.nat.home.clone();

    let first = token();
    let sent = Instant::now();
    world.send(&first);
    world.wait_for(
        std::slice::from_ref(&first),
        sent,
        Duration::from_secs(30),
        "the first message",
    );
    let mut all = vec![first];

    // The node's own address changes under it (a new DHCP lease): the new
    // address comes, the old one goes, and the default route stays.
    let tokens = mail_across(&mut world, "a change of the node's home address", |w| {
        w.nat.ip(
            &home,
            &["addr", "add", &format!("{HOME_ADDR_NEW}/24"), "dev", "hv"],
        );
        w.nat.ip(
            &home,
            &["addr", "del", &format!("{HOME_ADDR}/24"), "dev", "hv"],
        );
        w.nat
            .ip(&home, &["route", "replace", "default", "via", ROUTER_LAN]);
    });
    let addrs = world.nat.ip(&home, &["-br", "addr", "show", "dev", "hv"]);
    assert!(
        addrs.contains(HOME_ADDR_NEW) && !addrs.contains(&format!("{HOME_ADDR}/")),
        "home addresses: {addrs}"
    );
    all.extend(tokens);

    std::thread::sleep(Duration::from_secs(1));
    world.assert_exactly_once(&all);
}
