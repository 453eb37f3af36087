"""The Own-Mailbox half of bench/imap: the real omb-relay and omb-node as two
processes (linked and keyed once by omb-sandbox), the node filled through the
relay's MX over SMTP, then measured like any IMAP server."""

import json
import os
import re
import smtplib
import socket
import sqlite3
import subprocess
import threading
import time

from imapclient import ImapError
from measure import Server, measure
from procs import MemSampler, MiB, free_port, log, now, proc_cpu, proc_mem, reset_peak, stop_proc, wait_port

NO_IMAP = "omb: the node has no IMAP server yet — only Dovecot measured"


def toml_set(text, section, key, value):
    """Sets `key = "value"` in [section] of a small flat TOML file (adds either if missing)."""
    lines = text.splitlines()
    out, cur, done, seen = [], None, False, False
    for line in lines:
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            if cur == section and not done:
                out.append(f'{key} = "{value}"')
                done = True
            cur = s[1:-1].strip()
            seen |= cur == section
        elif cur == section and re.match(rf"{re.escape(key)}\s*=", s):
            if not done:
                out.append(f'{key} = "{value}"')
                done = True
            continue
        out.append(line)
    if not done:
        if not seen:
            out += ["", f"[{section}]"]
        elif cur != section:
            raise ValueError(f"[{section}] is not the last section")
        out.append(f'{key} = "{value}"')
    return "\n".join(out) + "\n"


def toml_get(text, section, key):
    cur = None
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            cur = s[1:-1].strip()
        elif cur == section:
            m = re.match(rf'{re.escape(key)}\s*=\s*"([^"]*)"', s)
            if m:
                return m.group(1)
    return None


def imap_greets(addr):
    """True when an IMAP server greets on host:port."""
    host, port = addr.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), 3) as s:
            s.settimeout(5)
            return s.recv(4096).startswith((b"* OK", b"* PREAUTH", b"* BYE"))
    except OSError:
        return False


def link_once(sandbox_bin, d, env, keep_running=False):
    """Runs `omb-sandbox --nodes alice` in folder `d` until it has linked and keyed the
    node, and returns its manifest (sandbox.json). The sandbox is stopped, unless
    `keep_running`: then the manifest's "_process" is it, for the caller to stop."""
    log("omb: linking a node with omb-sandbox --nodes alice ...")
    sb_log = open(os.path.join(d, "sandbox.log"), "wb")
    sb = subprocess.Popen([sandbox_bin, "--dir", d, "--nodes", "alice"], stdout=subprocess.DEVNULL,
                          stderr=sb_log, env=env, start_new_session=True)
    manifest = os.path.join(d, "sandbox.json")
    try:
        deadline = now() + 120
        while not os.path.exists(manifest):
            if sb.poll() is not None or now() > deadline:
                raise RuntimeError(f"omb-sandbox did not start; see {sb_log.name}")
            time.sleep(0.1)
        time.sleep(0.2)
        with open(manifest) as f:
            m = json.load(f)
    except BaseException:
        stop_proc(sb)
        raise
    if keep_running:
        m["_process"] = sb
    else:
        stop_proc(sb)
    return m


class Omb:
    def __init__(self, run_dir, args):
        self.args = args
        self.dir = d = os.path.join(run_dir, "omb")
        os.makedirs(d)
        self.relay = self.node = self.poller = None
        self.env = dict(os.environ, OMB_LOG=args.omb_log, RUST_LIB_BACKTRACE="0")

        # 1. The sandbox links and keys alice once; then it is stopped.
        self.manifest = link_once(args.sandbox_bin, d, self.env, keep_running=True)
        sb = self.manifest.pop("_process")
        try:
            node = self.manifest["nodes"][0]
            # The manifest names the node's IMAP port as soon as the node has the config
            # for it; whether an IMAP server answers there is another matter.
            self.has_imap = bool(node.get("imap")) and imap_greets(node["imap"])
        finally:
            stop_proc(sb)
        self.address, self.password = node["address"], node["password"]
        self.data_dir = node["data_dir"]
        self.cafile = self.manifest.get("ca_cert")

        # 2. The relay on its own, with a config of ours over the sandbox's relay folder.
        self.smtp, tunnel, dns = free_port(), free_port(), free_port()
        self.relay_conf = os.path.join(d, "relay.toml")
        with open(self.relay_conf, "w") as f:
            f.write(f'domain = "{self.manifest["relay"]["domain"]}"\n'
                    f'data_dir = "{self.manifest["relay"]["data_dir"]}"\n'
                    f'database = "sqlite"\n\n'
                    f'[smtp]\nlisten = "127.0.0.1:{self.smtp}"\n\n'
                    f'[tunnel]\nlisten = "127.0.0.1:{tunnel}"\n\n'
                    # Its own DNS server is the only one it asks: nothing reaches the system resolver.
                    f'[dns]\nlisten = "127.0.0.1:{dns}"\nresolver = "127.0.0.1:{dns}"\naddresses = ["127.0.0.1"]\n')
        # 3. The node's config: the sandbox's, pointed at the new tunnel port, with our ports for mail access.
        with open(os.path.join(d, "nodes", "alice.toml")) as f:
            text = f.read()
        text = toml_set(text, "relay", "tunnel", f"127.0.0.1:{tunnel}")
        self.imap = None
        if self.has_imap:
            self.imap = free_port()
            text = toml_set(text, "access", "imap", f"127.0.0.1:{self.imap}")
            for key in ("imaps", "pop3", "pop3s"):
                text = toml_set(text, "access", key, f"127.0.0.1:{free_port()}")
            # The certificate the sandbox's CA signed for the node, when it made one.
            for key, name in (("tls_cert", "access-cert.pem"), ("tls_key", "access-key.pem")):
                path = os.path.join(self.data_dir, name)
                if os.path.exists(path) and toml_get(text, "access", key) is None:
                    text = toml_set(text, "access", key, path)
        self.node_conf = os.path.join(d, "alice-bench.toml")
        with open(self.node_conf, "w") as f:
            f.write(text)
        try:
            self.start_relay()
            self.start_node()
        except BaseException:
            self.stop()
            raise

    def start_relay(self):
        self.relay_log = open(os.path.join(self.dir, "relay.log"), "ab")
        self.relay = subprocess.Popen([self.args.relay_bin, "-c", self.relay_conf, "serve"], stdout=subprocess.DEVNULL,
                                      stderr=self.relay_log, env=self.env, start_new_session=True)
        try:
            wait_port(self.smtp, 60, self.relay, "omb-relay")
        except RuntimeError as e:
            raise RuntimeError(f"{e}; see {self.relay_log.name}") from None

    def start_node(self):
        self.node_log = open(os.path.join(self.dir, "node.log"), "ab")
        self.node = subprocess.Popen([self.args.node_bin, "-c", self.node_conf, "run"], stdout=subprocess.DEVNULL,
                                     stderr=self.node_log, env=self.env, start_new_session=True)
        if self.imap:
            try:
                wait_port(self.imap, 60, self.node, "omb-node")
            except RuntimeError as e:
                raise RuntimeError(f"{e}; see {self.node_log.name}") from None
        else:
            time.sleep(1.0)
            if self.node.poll() is not None:
                raise RuntimeError(f"omb-node exited with status {self.node.returncode}; see {self.node_log.name}")

    def restart_node(self):
        stop_proc(self.node)
        self.start_node()

    def count(self):
        """Messages in alice's INBOX: IMAP STATUS, or (no IMAP yet, or --fill-count db)
        the node's store, read-only."""
        if self.imap and self.args.fill_count == "imap":
            # One session, logged in once, as a mail app polling would: a login per
            # poll would cost the node a password hash each time.
            if self.poller is None:
                self.poller = self.server().connect()
            try:
                return self.poller.status_messages("INBOX")
            except (ImapError, OSError):
                self.poller.close()
                self.poller = None
                raise
        db = sqlite3.connect(f"file:{os.path.join(self.data_dir, 'mail.db')}?mode=ro", uri=True)
        try:
            db.execute("PRAGMA busy_timeout=2000")
            return db.execute("SELECT COUNT(*) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
                              "WHERE b.name = 'INBOX'").fetchone()[0]
        except sqlite3.Error:
            return 0
        finally:
            db.close()

    def end_polling(self):
        if self.poller is not None:
            self.poller.logout()
            self.poller = None

    def pids(self):
        return [self.node.pid] if self.node and self.node.poll() is None else []

    def cpu(self):
        return proc_cpu(self.node.pid) if self.node else 0.0

    def server(self):
        return Server("omb", self.imap, self.address, self.password, self.pids, self.cpu, self.cafile)

    def stop(self):
        for p in (self.node, self.relay):
            if p is not None:
                stop_proc(p)
        self.node = self.relay = None




def smtp_fill(host, port, rcpt, msgs, sessions):
    """Sends every message to rcpt over `sessions` parallel SMTP sessions."""
    nxt = iter(range(len(msgs)))
    lock = threading.Lock()
    errors = []

    def worker():
        try:
            # local_hostname given: smtplib would otherwise ask the system resolver for our FQDN.
            s = smtplib.SMTP(host, port, local_hostname="bench.client", timeout=300)
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    break
                s.sendmail("bench@bench.client", [rcpt], msgs[i])
            s.quit()
        except (smtplib.SMTPException, OSError) as e:
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker) for _ in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"SMTP to the relay failed: {errors[:3]}")


def bench_omb(run_dir, msgs, mids, args):
    om = Omb(run_dir, args)
    out = {}
    try:
        if not om.has_imap:
            log(NO_IMAP)
            if args.omb_memory:
                log("omb: (the node's memory with the messages stored is still measured: --omb-memory)")
        if not om.has_imap and not args.omb_memory:
            return {"no_imap": True}
        n = len(msgs)
        log(f"omb: sending {n} messages to {om.address} through the relay's MX ({args.smtp_sessions} SMTP sessions) ...")
        reset_peak(om.node.pid)
        with MemSampler(om.pids) as fill_mem:
            t = now()
            smtp_fill("127.0.0.1", om.smtp, om.address, msgs, args.smtp_sessions)
            sent = now() - t
            last, last_change = -1, now()
            while True:
                c = om.count()
                if c != last:
                    last, last_change = c, now()
                if c >= n:
                    break
                if now() - last_change > args.fill_stall:
                    raise RuntimeError(f"omb: the node has {c} of {n} messages and none came in "
                                       f"{args.fill_stall:.0f} s; see {om.dir}/relay.log, node.log")
                time.sleep(1.0)
            stored = now() - t
            om.end_polling()
        out["fill"] = {"smtp_s": sent, "stored_s": stored, "per_s": n / stored,
                       "rss_max": fill_mem.max_rss, "peak": proc_mem(om.node.pid)[1]}
        if last != n:
            raise RuntimeError(f"omb: INBOX has {last} messages, {n} were sent")
        log(f"omb: {n} messages stored in {stored:.1f} s ({n / stored:.0f}/s); node RSS during the fill "
            f"up to {fill_mem.max_rss / MiB:.1f} MiB, peak {out['fill']['peak'] / MiB:.1f} MiB")
        # Restarted, so that its first SELECT is cold, like Dovecot's, and its memory
        # is what a node holding these messages uses, not what receiving them left.
        om.restart_node()
        time.sleep(1.0)
        out["rss_restarted"] = proc_mem(om.node.pid)[0]
        if not om.has_imap:
            out["no_imap"] = True
            log(f"omb: node restarted with {n} messages: RSS {out['rss_restarted'] / MiB:.1f} MiB")
            return out
        out.update(measure(om.server(), msgs, mids, args))
        return out
    finally:
        om.stop()
