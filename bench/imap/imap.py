#!/usr/bin/env python3
"""IMAP benchmark: the Own-Mailbox home node against Debian's Dovecot, same messages.

Both servers get the same N generated messages (corpus.py: deterministic, 2-64 KiB,
median about 8 KiB, some multipart/alternative and attachments, encoded-word headers):

  dovecot  a standalone instance (own config, base_dir, log and index files in the
           run's temporary folder, loopback port, passwd-file user, no TLS, no DNS);
           the messages are written straight into the Maildir's new/ the way Dovecot's
           own LDA names them (S= and W= sizes), and Dovecot indexes them at the
           first SELECT (reported as "cold").
  omb      the real omb-relay and omb-node as two processes: the sandbox is run once
           to link and key the node, then the relay and the node are started on
           their own, the messages are sent to the relay's MX over SMTP (the relay
           encrypts each to the node's key and sends it down the tunnel) and the node
           is restarted before measuring, so its first SELECT is "cold" as well.

Measured on each, in this order: first SELECT (cold), SELECT INBOX (median of 5, each
on a new logged-in connection), FETCH 1:* (FLAGS ENVELOPE) (median of 3, all N
responses counted), UID FETCH n BODY[] with 10 clients doing random fetches for a fixed
time, and the resident memory of the server processes (sampled from /proc every 0.25 s
while the IMAP phases run; the peak from VmHWM). Every BODY[] fetched is compared with
the generated message. Only loopback addresses are used. Python standard library only.
"""

import argparse
import email.utils
import json
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import smtplib
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from corpus import corpus, message_id  # noqa: E402
from imapclient import Imap, ImapError, fetch_items, uid_of  # noqa: E402

now = time.monotonic
MiB = 1024 * 1024
NO_IMAP = "omb: the node has no IMAP server yet — only Dovecot measured"


# ---------------------------------------------------------------- helpers

def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port(taken=set()):
    while True:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        if port not in taken:
            taken.add(port)
            return port


def wait_port(port, seconds, proc=None, what="server"):
    deadline = now() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what} exited with status {proc.returncode}")
            if now() > deadline:
                raise RuntimeError(f"{what} does not answer on 127.0.0.1:{port} after {seconds:.0f} s")
            time.sleep(0.05)


def median(v):
    return statistics.median(v) if v else float("nan")


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def descendants(root):
    """root and every process below it."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def proc_name(pid):
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def proc_mem(pid):
    """(VmRSS, VmHWM, Pss) in bytes; zeros for a process that is gone."""
    rss = hwm = pss = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return rss, hwm, pss


def reset_peak(pid):
    """Resets VmHWM to the current RSS (Linux: clear_refs 5)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def proc_cpu(pid, children=False):
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return 0.0
    fields = data[data.rindex(")") + 2:].split()
    t = int(fields[11]) + int(fields[12])
    if children:
        t += int(fields[13]) + int(fields[14])
    return t / os.sysconf("SC_CLK_TCK")


def cpu_ticks_total():
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def busy_snapshot(seconds=1.0):
    """CPU busy % of the machine over `seconds`, and the busiest processes."""
    def ticks():
        out = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        data = f.read()
                except OSError:
                    continue
                fields = data[data.rindex(")") + 2:].split()
                out[int(d)] = (data[data.index("(") + 1:data.rindex(")")], int(fields[11]) + int(fields[12]))
        return out
    p0, (b0, t0) = ticks(), cpu_ticks_total()
    time.sleep(seconds)
    p1, (b1, t1) = ticks(), cpu_ticks_total()
    hz = os.sysconf("SC_CLK_TCK")
    use = sorted(((t - p0[pid][1], c) for pid, (c, t) in p1.items() if pid in p0), reverse=True)
    top = ", ".join(f"{c} {100.0 * dt / hz / seconds:.0f}%" for dt, c in use[:5] if dt > 0) or "none"
    return 100.0 * (b1 - b0) / max(1, t1 - t0), top


class MemSampler:
    """Samples the summed RSS and PSS of pids() every `interval` s in a thread."""

    def __init__(self, pids, interval=0.25):
        self.pids, self.interval = pids, interval
        self.max_rss = self.max_pss = self.max_hwm = 0
        self.max_procs = 0
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def sample(self):
        pids = self.pids()
        rss = pss = hwm = 0
        for p in pids:
            r, h, s = proc_mem(p)
            rss += r
            hwm += h
            pss += s
        self.max_rss = max(self.max_rss, rss)
        self.max_hwm = max(self.max_hwm, hwm)
        self.max_pss = max(self.max_pss, pss)
        self.max_procs = max(self.max_procs, len(pids))

    def run(self):
        while not self.stop_ev.is_set():
            self.sample()
            self.stop_ev.wait(self.interval)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        self.thread.join()
        self.sample()


# ---------------------------------------------------------------- correctness

TRACE_FIELDS = {b"received", b"authentication-results", b"return-path", b"delivered-to",
                b"received-spf", b"arc-seal", b"arc-message-signature", b"arc-authentication-results",
                b"x-original-to"}


def check_body(got, want):
    """'exact', 'traced' (want with trace header fields prepended, as a relay or
    delivery agent adds them), or None (wrong)."""
    if got == want:
        return "exact"
    if len(got) > len(want) and got.endswith(want):
        prefix = got[:len(got) - len(want)]
        if not prefix.endswith(b"\r\n"):
            return None
        for line in prefix[:-2].split(b"\r\n"):
            if line[:1] in (b" ", b"\t"):
                continue
            name = line.split(b":", 1)[0].strip().lower()
            if b":" not in line or name not in TRACE_FIELDS:
                return None
        return "traced"
    return None


def describe_mismatch(got, want):
    n = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    return (f"{len(got)} bytes fetched, {len(want)} expected, first difference at byte {n}: "
            f"got {got[max(0, n - 20):n + 40]!r}, expected {want[max(0, n - 20):n + 40]!r}")


# ---------------------------------------------------------------- IMAP measurements

class Server:
    """What the measurements need of a server."""

    def __init__(self, name, port, user, password, pids, cpu, cafile=None):
        self.name, self.port, self.user, self.password = name, port, user, password
        self.pids, self.cpu, self.cafile = pids, cpu, cafile

    def connect(self, select=False):
        c = Imap("127.0.0.1", self.port)
        c.login(self.user, self.password, self.cafile)
        if select:
            c.select("INBOX")
        return c


def uid_map(srv, mids):
    """[uid of message i] over the whole corpus, from every message's Message-ID."""
    c = srv.connect(select=True)
    uids = [None] * len(mids)
    dup = 0

    def on(text, lits):
        nonlocal dup
        items = fetch_items(text)
        if items is None or not lits:
            return
        m = re.search(rb"<([^>]+)>", lits[0])
        i = mids.get(m.group(1).decode()) if m else None
        if i is None:
            return
        if uids[i] is not None:
            dup += 1
        uids[i] = uid_of(items)

    c.command("UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])", on)
    c.logout()
    missing = sum(1 for u in uids if u is None)
    return uids, missing, dup


def fetch_worker(k, srv, uids, msgs, args, ready, go, start_at, done, may_logout, results):
    """One client: random UID FETCH n BODY[] until the shared deadline."""
    try:
        rng = random.Random(args.seed * 1000 + k)
        c = srv.connect(select=True)
        ready.put(k)
        go.wait()
        t0 = start_at.value
        t_end = t0 + args.duration
        while now() < t0:
            time.sleep(0.001)
        item = b"BODY.PEEK[]" if args.peek else b"BODY[]"
        n = nbytes = 0
        kinds = {"exact": 0, "traced": 0}
        bad = []
        lat = []
        cpu0 = time.process_time()
        while True:
            t = now()
            if t >= t_end:
                break
            i = rng.randrange(len(uids))
            got = []

            def on(text, lits):
                if lits and fetch_items(text) is not None:
                    got.append(lits[0])

            c.command(b"UID FETCH %d (%s)" % (uids[i], item), on)
            t1 = now()
            if t1 > t_end:
                break            # finished after the deadline: not counted
            lat.append(t1 - t)
            n += 1
            if len(got) != 1:
                bad.append(f"UID {uids[i]}: {len(got)} literals in the reply")
                continue
            nbytes += len(got[0])
            kind = check_body(got[0], msgs[i])
            if kind is None:
                bad.append(f"UID {uids[i]} (message {i + 1}): {describe_mismatch(got[0], msgs[i])}")
            else:
                kinds[kind] += 1
        cpu = time.process_time() - cpu0
        done.put(k)
        may_logout.wait()
        c.logout()
        results.put({"k": k, "n": n, "bytes": nbytes, "kinds": kinds, "bad": bad[:5], "bad_n": len(bad),
                     "lat": lat, "cpu": cpu})
    except Exception as e:      # reported, never hangs the parent
        try:
            done.put(k)
        except Exception:
            pass
        results.put({"k": k, "error": f"{type(e).__name__}: {e}"})


def random_fetches(srv, uids, msgs, args):
    ctx = mp.get_context("fork")
    ready, done, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    go, may_logout = ctx.Event(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = [ctx.Process(target=fetch_worker, args=(k, srv, uids, msgs, args, ready, go, start_at, done,
                                                    may_logout, results), daemon=True)
             for k in range(args.clients)]
    for p in procs:
        p.start()
    got_ready = 0
    deadline = now() + 120
    while got_ready < len(procs):
        try:
            ready.get(timeout=1)
            got_ready += 1
        except Exception:
            if now() > deadline or all(not p.is_alive() for p in procs):
                break
    cpu0 = srv.cpu()
    b0 = cpu_ticks_total()
    start_at.value = now() + 0.2
    go.set()
    for _ in procs:
        try:
            done.get(timeout=args.duration + 180)
        except Exception:
            break
    cpu1 = srv.cpu()
    b1 = cpu_ticks_total()
    wall = now() - start_at.value
    # All clients are still logged in: the server's memory at its largest.
    loaded = srv.pids()
    rss_loaded = sum(proc_mem(p)[0] for p in loaded)
    names = {}
    for p in loaded:
        names[proc_name(p)] = names.get(proc_name(p), 0) + 1
    may_logout.set()
    res = []
    for _ in procs:
        try:
            res.append(results.get(timeout=30))
        except Exception:
            break
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.kill()
    errors = [r["error"] for r in res if "error" in r]
    ok = [r for r in res if "error" not in r]
    lat = sorted(x for r in ok for x in r["lat"])
    n = sum(r["n"] for r in ok)
    out = {
        "clients": args.clients, "clients_ok": len(ok), "errors": errors,
        "fetches": n, "per_s": n / args.duration, "mib_per_s": sum(r["bytes"] for r in ok) / MiB / args.duration,
        "lat_p50_ms": pct(lat, 50) * 1000, "lat_p99_ms": pct(lat, 99) * 1000,
        "exact": sum(r["kinds"]["exact"] for r in ok), "traced": sum(r["kinds"]["traced"] for r in ok),
        "bad": sum(r["bad_n"] for r in ok), "bad_samples": [b for r in ok for b in r["bad"]][:5],
        "server_cpu_pct": 100.0 * (cpu1 - cpu0) / wall,
        "driver_cpu_pct": 100.0 * sum(r["cpu"] for r in ok) / args.duration,
        "machine_cpu_pct": 100.0 * (b1[0] - b0[0]) / max(1, b1[1] - b0[1]) * os.cpu_count(),
        "per_server_cpu_s": n / max(1e-9, cpu1 - cpu0),
        "rss_loaded": rss_loaded, "procs": len(loaded),
        "process_names": ", ".join(f"{k}" + (f" x{v}" if v > 1 else "") for k, v in sorted(names.items())),
    }
    return out


def measure(srv, msgs, mids, args):
    """Every IMAP figure of one server; returns a dict."""
    n = len(msgs)
    r = {}
    for p in srv.pids():
        reset_peak(p)
    with MemSampler(srv.pids) as mem:
        r["rss_idle"] = sum(proc_mem(p)[0] for p in srv.pids())
        c = srv.connect()
        exists, r["select_cold_s"] = c.select("INBOX")
        c.logout()
        if exists != n:
            raise RuntimeError(f"{srv.name}: SELECT INBOX says {exists} messages, not {n}")
        sel = []
        for _ in range(args.select_runs):
            c = srv.connect()
            exists, dt = c.select("INBOX")
            c.logout()
            if exists != n:
                raise RuntimeError(f"{srv.name}: SELECT INBOX says {exists} messages, not {n}")
            sel.append(dt)
        r["select_s"] = sel
        log(f"  {srv.name}: SELECT cold {r['select_cold_s'] * 1000:.0f} ms, warm {[round(x * 1000, 1) for x in sel]} ms")

        fe = []
        c = srv.connect(select=True)
        for _ in range(args.fetch_runs):
            count = 0

            def on(text, lits):
                nonlocal count
                if fetch_items(text) is not None:
                    count += 1

            t = time.perf_counter()
            c.command("FETCH 1:* (FLAGS ENVELOPE)", on)
            fe.append(time.perf_counter() - t)
            if count != n:
                raise RuntimeError(f"{srv.name}: FETCH 1:* (FLAGS ENVELOPE) gave {count} responses, not {n}")
        c.logout()
        r["fetch_envelope_s"] = fe
        log(f"  {srv.name}: FETCH 1:* (FLAGS ENVELOPE) {[round(x * 1000) for x in fe]} ms")

        uids, missing, dup = uid_map(srv, mids)
        if missing or dup:
            raise RuntimeError(f"{srv.name}: {missing} of the generated messages are not in INBOX"
                               f"{f', {dup} twice' if dup else ''} (matched by Message-ID)")
        log(f"  {srv.name}: {args.clients} clients fetching random BODY[] for {args.duration:g} s ...")
        r["random"] = random_fetches(srv, uids, msgs, args)
    r["rss_max"] = mem.max_rss
    r["pss_max"] = mem.max_pss
    r["procs_max"] = mem.max_procs
    # Peak: the largest sum of VmHWM over the processes alive at one sample (HWM reset
    # before the first SELECT, so what the fill or the Maildir writing used is not in it).
    r["peak"] = mem.max_hwm
    rnd = r["random"]
    if rnd["errors"]:
        log(f"  {srv.name}: CLIENT ERRORS: {rnd['errors'][:3]}")
    if rnd["bad"]:
        log(f"\n!!!!! {srv.name}: {rnd['bad']} of {rnd['fetches']} BODY[] fetched are NOT the message sent !!!!!")
        for b in rnd["bad_samples"]:
            log(f"!!!!!   {b}")
    log(f"  {srv.name}: {rnd['per_s']:.0f} fetches/s, p50 {rnd['lat_p50_ms']:.2f} ms, p99 {rnd['lat_p99_ms']:.2f} ms; "
        f"{rnd['exact']} identical, {rnd['traced']} identical after prepended trace headers, {rnd['bad']} wrong")
    return r


# ---------------------------------------------------------------- Dovecot

DOVECOT_CONF = """\
# Standalone Dovecot for bench/imap: loopback only, plaintext, no DNS, no TLS.
# Everything not set here is at Dovecot's default (mail_fsync = optimized, ...).
base_dir = {d}/run
state_dir = {d}/state
instance_name = omb-bench-dovecot-{port}
log_path = {d}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_use_winbind = no
login_trusted_networks =
hostname = dovecot.bench.test
import_environment = TZ
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
first_valid_uid = {uid}
first_valid_gid = {gid}
# 10 clients + the driver's own connections, all from 127.0.0.1 as one user.
mail_max_userip_connections = 1000
mail_location = maildir:{d}/Maildir:INDEX={d}/index
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
{login_extra}}}
{extra}"""

# Without root, Dovecot runs every process as the invoking user (no chroot, no setuid).
ROOTLESS_EXTRA = """\
service anvil {
  chroot =
}
service auth {
  user = $default_internal_user
}
service auth-worker {
  user = $default_internal_user
}
"""


def maildir_name(i, msg_lf, msg_crlf, mtime):
    # As Dovecot's own delivery names a file: S= its size, W= its size with CRLF.
    return f"{int(mtime)}.M{i:06d}P{os.getpid()}.bench,S={len(msg_lf)},W={len(msg_crlf)}"


class Dovecot:
    def __init__(self, run_dir, msgs, args):
        self.dir = d = os.path.join(run_dir, "dovecot")
        os.makedirs(d)
        os.chmod(run_dir, 0o755)
        os.chmod(d, 0o755)
        root = os.geteuid() == 0
        import grp
        import pwd
        if root:
            uid, gid = 65534, 65534            # nobody:nogroup owns the mail
            internal_user, internal_group, login_user = "dovecot", "dovecot", "dovenull"
            for u in (internal_user, login_user):
                pwd.getpwnam(u)                # Debian's package makes both
        else:
            uid, gid = os.getuid(), os.getgid()
            internal_user = login_user = pwd.getpwuid(uid).pw_name
            internal_group = grp.getgrgid(gid).gr_name
        self.port = free_port()
        self.user, self.password = "bench", "bench-password"
        for sub in ("run", "state", "index", "home", "Maildir/new", "Maildir/cur", "Maildir/tmp"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        for sub in ("index", "home", "Maildir", "Maildir/new", "Maildir/cur", "Maildir/tmp"):
            os.chown(os.path.join(d, sub), uid, gid)
        with open(os.path.join(d, "users"), "w") as f:
            f.write(f"{self.user}:{self.password}:{uid}:{gid}::{d}/home::\n")
        os.chmod(os.path.join(d, "users"), 0o644)
        self.conf = os.path.join(d, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(DOVECOT_CONF.format(
                d=d, port=self.port, uid=500 if root else uid, gid=1 if root else gid,
                internal_user=internal_user, internal_group=internal_group, login_user=login_user,
                login_extra="" if root else "  chroot =\n", extra="" if root else ROOTLESS_EXTRA))

        t = now()
        new = os.path.join(d, "Maildir", "new")
        for i, m in enumerate(msgs):
            lf = m.replace(b"\r\n", b"\n")
            try:
                mtime = email.utils.parsedate_to_datetime(
                    re.search(rb"\r\nDate: ([^\r]+)", m).group(1).decode()).timestamp()
            except (AttributeError, ValueError, TypeError):
                mtime = time.time()
            p = os.path.join(new, maildir_name(i, lf, m, mtime))
            with open(p, "wb") as f:
                f.write(lf)
            os.utime(p, (mtime, mtime))
            if root:
                os.chown(p, uid, gid)
        self.fill_s = now() - t

        binary = shutil.which("dovecot") or "/usr/sbin/dovecot"
        self.log = open(os.path.join(d, "dovecot.stderr"), "wb")
        self.proc = subprocess.Popen([binary, "-F", "-c", self.conf], stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        try:
            wait_port(self.port, 30, self.proc, "dovecot")
        except RuntimeError as e:
            self.stop()
            raise RuntimeError(f"{e}; see {d}/dovecot.log and dovecot.stderr") from None

    def pids(self):
        return descendants(self.proc.pid) if self.proc.poll() is None else []

    def cpu(self):
        # Live processes, plus what the master collected from the ones that exited.
        return proc_cpu(self.proc.pid, children=True) + sum(proc_cpu(p) for p in self.pids()[1:])

    def server(self):
        return Server("dovecot", self.port, self.user, self.password, self.pids, self.cpu)

    def version(self):
        try:
            return subprocess.run([shutil.which("dovecot") or "/usr/sbin/dovecot", "--version"],
                                  capture_output=True, text=True).stdout.strip()
        except OSError:
            return "?"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def bench_dovecot(run_dir, msgs, mids, args):
    log(f"dovecot: writing {len(msgs)} messages into a Maildir ...")
    dv = Dovecot(run_dir, msgs, args)
    try:
        log(f"dovecot: {dv.version()} on 127.0.0.1:{dv.port} (Maildir written in {dv.fill_s:.1f} s)")
        r = measure(dv.server(), msgs, mids, args)
        r["version"] = dv.version()
        return r
    finally:
        dv.stop()


# ---------------------------------------------------------------- Own-Mailbox

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


class Omb:
    def __init__(self, run_dir, args):
        self.args = args
        self.dir = d = os.path.join(run_dir, "omb")
        os.makedirs(d)
        self.relay = self.node = None
        self.env = dict(os.environ, OMB_LOG=args.omb_log, RUST_LIB_BACKTRACE="0")

        # 1. The sandbox links and keys alice once; then it is stopped.
        log("omb: linking a node with omb-sandbox --nodes alice ...")
        sb_log = open(os.path.join(d, "sandbox.log"), "wb")
        sb = subprocess.Popen([args.sandbox_bin, "--dir", d, "--nodes", "alice"], stdout=subprocess.DEVNULL,
                              stderr=sb_log, env=self.env, start_new_session=True)
        manifest = os.path.join(d, "sandbox.json")
        deadline = now() + 120
        while not os.path.exists(manifest):
            if sb.poll() is not None or now() > deadline:
                stop_proc(sb)
                raise RuntimeError(f"omb-sandbox did not start; see {sb_log.name}")
            time.sleep(0.1)
        time.sleep(0.2)
        with open(manifest) as f:
            self.manifest = json.load(f)
        node = self.manifest["nodes"][0]
        # The manifest names the node's IMAP port as soon as the node has the config
        # for it; whether an IMAP server answers there is another matter.
        self.has_imap = bool(node.get("imap")) and imap_greets(node["imap"])
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
        self.start_relay()
        self.start_node()

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
        """Messages in alice's INBOX: IMAP STATUS, or (no IMAP yet) the node's store read-only."""
        if self.imap:
            c = self.server().connect()
            try:
                return c.status_messages("INBOX")
            finally:
                c.logout()
        db = sqlite3.connect(f"file:{os.path.join(self.data_dir, 'mail.db')}?mode=ro", uri=True)
        try:
            db.execute("PRAGMA busy_timeout=2000")
            return db.execute("SELECT COUNT(*) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id "
                              "WHERE b.name = 'INBOX'").fetchone()[0]
        except sqlite3.Error:
            return 0
        finally:
            db.close()

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


def stop_proc(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


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
                time.sleep(0.5)
            stored = now() - t
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


# ---------------------------------------------------------------- report

def fmt(v, unit):
    if v is None or v != v:
        return "n/a"
    if unit == "ms":
        return f"{v * 1000:.1f}"
    if unit == "MiB":
        return f"{v / MiB:.1f}"
    return f"{v:.0f}"


def figures(r):
    """The figures of one system, each (value, unit)."""
    if not r or "select_s" not in r:
        return {}
    rnd = r["random"]
    return {
        "select_cold": r["select_cold_s"],
        "select": median(r["select_s"]),
        "fetch_envelope": median(r["fetch_envelope_s"]),
        "fetch_per_s": rnd["per_s"],
        "fetch_per_cpu_s": rnd["per_server_cpu_s"],
        "rss": r["rss_max"],
        "pss": r["pss_max"],
        "peak": r["peak"],
    }


ROWS = [  # key, label, unit, better, target
    ("select_cold", "SELECT INBOX, first after start (ms)", "ms", "lower", None),
    ("select", "SELECT INBOX, median of {sel} (ms)", "ms", "lower", "<= dovecot"),
    ("fetch_envelope", "FETCH 1:* (FLAGS ENVELOPE), median of {fe} (ms)", "ms", "lower", "<= dovecot"),
    ("fetch_per_s", "UID FETCH BODY[] per s, {cl} clients", "/s", "higher", ">= dovecot"),
    ("fetch_per_cpu_s", "  per CPU-second of the server", "/s", "higher", None),
    ("rss", "RSS, largest sample during IMAP (MiB)", "MiB", "lower", "omb < 50 MiB"),
    ("pss", "PSS, largest sample (MiB)", "MiB", "lower", None),
    ("peak", "peak RSS (sum of VmHWM) during IMAP (MiB)", "MiB", "lower", "omb < 50 MiB"),
]


def verdict(key, target, o, d):
    if target is None or o is None:
        return ""
    if target.startswith("omb <"):
        return "target met" if o < 50 * MiB else "NOT met"
    if d is None:
        return "(no dovecot)"
    if target.startswith("<="):
        return "target met" if o <= d else "NOT met"
    return "target met" if o >= d else "NOT met"


FETCH_ITEM = {True: "BODY.PEEK[]", False: "BODY[] (sets \\Seen)"}


def report(results, args, ctx, sizes):
    d, o = figures(results.get("dovecot")), figures(results.get("omb"))
    print()
    print(f"IMAP benchmark: {args.messages} messages (median {statistics.median(sizes) / 1024:.1f} KiB, "
          f"{sum(sizes) / MiB:.0f} MiB in all), loopback, plaintext LOGIN; "
          f"{FETCH_ITEM[args.peek]} fetches for {args.duration:g} s")
    print(f"machine: nproc={os.cpu_count()}, load average {' '.join(open('/proc/loadavg').read().split()[:3])}")
    for label, (busy, top) in ctx.items():
        print(f"  {label}: CPU busy {busy:.0f}% over 1 s; top: {top}")
    if "dovecot" in results:
        x = results["dovecot"]["random"]
        print(f"dovecot: {results['dovecot'].get('version', '?')}; its memory is the sum over its processes "
              f"({x['procs']} at the end of the fetches: {x['process_names']})")
    print()
    w = 50
    print(f"{'figure':{w}} {'dovecot':>9} {'omb':>9} {'omb/dovecot':>11}  target")
    print("-" * (w + 50))
    verdicts = {}
    for key, label, unit, better, target in ROWS:
        label = label.format(sel=args.select_runs, fe=args.fetch_runs, cl=args.clients)
        dv, ov = d.get(key), o.get(key)
        ratio = f"{ov / dv:.2f}x" if dv and ov is not None else "n/a"
        v = verdict(key, target, ov, dv)
        if v:
            verdicts[key] = v
        print(f"{label:{w}} {fmt(dv, unit):>9} {fmt(ov, unit):>9} {ratio:>11}  {target or ''}{'  ' + v if v else ''}")
    print()
    for name in ("dovecot", "omb"):
        r = results.get(name)
        if r and "random" in r:
            x = r["random"]
            print(f"{name}: fetches {x['fetches']} ({x['mib_per_s']:.1f} MiB/s), latency p50 {x['lat_p50_ms']:.2f} ms "
                  f"p99 {x['lat_p99_ms']:.2f} ms; CPU (100% = one core) server {x['server_cpu_pct']:.0f}%, "
                  f"driver {x['driver_cpu_pct']:.0f}%, whole machine {x['machine_cpu_pct']:.0f}%; "
                  f"FETCH ENVELOPE runs {[round(t * 1000) for t in r['fetch_envelope_s']]} ms")
    om = results.get("omb") or {}
    if "fill" in om:
        f = om["fill"]
        print(f"omb fill: {args.messages} messages SMTP -> relay -> node in {f['stored_s']:.1f} s ({f['per_s']:.0f}/s); "
              f"node RSS up to {f['rss_max'] / MiB:.1f} MiB, VmHWM {f['peak'] / MiB:.1f} MiB while receiving; "
              f"{om['rss_restarted'] / MiB:.1f} MiB after a restart with the messages stored")
    if om.get("no_imap"):
        print(NO_IMAP)
    elif "omb" not in results and "omb" in args.systems:
        print("omb: not measured (see the error above)")
    bad = [(n, r["random"]["bad"]) for n, r in results.items() if r and "random" in r and r["random"]["bad"]]
    for n, k in bad:
        print(f"!!!!! ERROR: {n} served {k} BODY[] that differ from the message sent — its figures are not valid !!!!!")
    checked = {n: r["random"]["fetches"] for n, r in results.items() if r and "random" in r}
    if checked and not bad:
        note = "; the node's carry the relay's trace fields in front" if "omb" in checked else ""
        counts = ", ".join(f"{n} {k}" for n, k in checked.items())
        print(f"correctness: every BODY[] fetched was the message sent, byte for byte ({counts} checked{note})")
    if verdicts:
        met = all(v == "target met" for v in verdicts.values())
        print(f"targets: {'all met' if met else 'NOT all met'} "
              f"({', '.join(f'{k} {v}' for k, v in verdicts.items())})")
    return verdicts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=1, help="corpus and random-fetch seed")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of random BODY[] fetches")
    ap.add_argument("--clients", type=int, default=10, help="concurrent clients doing random fetches")
    ap.add_argument("--select-runs", type=int, default=5)
    ap.add_argument("--fetch-runs", type=int, default=3)
    ap.add_argument("--peek", action="store_true", help="fetch BODY.PEEK[] (no \\Seen flag written)")
    ap.add_argument("--systems", default="dovecot,omb", help="dovecot, omb, or both (comma-separated)")
    ap.add_argument("--smtp-sessions", type=int, default=8, help="parallel SMTP sessions filling the node")
    ap.add_argument("--fill-stall", type=float, default=120.0,
                    help="give up filling the node when no message arrives for this many seconds")
    ap.add_argument("--omb-memory", action=argparse.BooleanOptionalAction, default=True,
                    help="while the node has no IMAP server, still fill it and report its memory")
    ap.add_argument("--omb-log", default="warn", help="OMB_LOG for the relay and the node")
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(HERE, "..", "..", "target")))
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--keep", action="store_true", help="keep the run's folder (configs, logs, Maildir, stores)")
    args = ap.parse_args()
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    rel = os.path.join(os.path.abspath(args.target_dir), "release")
    args.sandbox_bin, args.relay_bin, args.node_bin = (os.path.join(rel, b) for b in ("omb-sandbox", "omb-relay", "omb-node"))

    ctx = {"before": busy_snapshot()}
    t = now()
    msgs = corpus(args.messages, args.seed)
    sizes = [len(m) for m in msgs]
    mids = {message_id(m): i for i, m in enumerate(msgs)}
    assert len(mids) == len(msgs), "Message-IDs must be unique"
    log(f"corpus: {len(msgs)} messages, median {statistics.median(sizes) / 1024:.1f} KiB, "
        f"{sum(sizes) / MiB:.0f} MiB, made in {now() - t:.1f} s")

    run_dir = tempfile.mkdtemp(prefix="omb-bench-imap-")
    results = {}
    failed = False
    try:
        if "dovecot" in args.systems:
            if not (shutil.which("dovecot") or os.path.exists("/usr/sbin/dovecot")):
                log("dovecot: SKIPPED: not installed (apt-get install dovecot-imapd; run/ does it as root)")
            else:
                try:
                    results["dovecot"] = bench_dovecot(run_dir, msgs, mids, args)
                except (RuntimeError, ImapError, OSError) as e:
                    failed = True
                    log(f"dovecot: FAILED: {e}")
        if "omb" in args.systems:
            missing = [b for b in (args.sandbox_bin, args.relay_bin, args.node_bin) if not os.access(b, os.X_OK)]
            if missing:
                failed = True
                log(f"omb: SKIPPED: {', '.join(missing)} missing (build them, or set CARGO_TARGET_DIR)")
            else:
                try:
                    results["omb"] = bench_omb(run_dir, msgs, mids, args)
                except (RuntimeError, ImapError, OSError) as e:
                    failed = True
                    log(f"omb: FAILED: {e}")
    finally:
        if args.keep or failed:
            log(f"\nstate kept in {run_dir}")
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    ctx["after"] = busy_snapshot()
    verdicts = report(results, args, ctx, sizes)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"figures": {n: figures(r) for n, r in results.items()}, "verdicts": verdicts,
                       "results": results, "context": ctx,
                       "args": {k: v for k, v in vars(args).items()}}, f, indent=1, default=str)
    bad = any(r and "random" in r and (r["random"]["bad"] or r["random"]["errors"]) for r in results.values())
    sys.exit(2 if bad else 1 if failed else 0)


if __name__ == "__main__":
    main()
