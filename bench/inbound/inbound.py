#!/usr/bin/env python3
"""Inbound benchmark: Own-Mailbox (relay -> tunnel -> home node) against Postfix.

Drives N concurrent SMTP sessions sending fixed-size messages, first as fast as
they go (peak), then paced at half of the measured peak (latency). For each
message it records when the final "." of DATA was written and when the message
became durable in the final store:

  omb      a row with delivery_id = <queue id from the 250 reply> committed in the
           node's SQLite store (<node data_dir>/mail.db, WAL, synchronous=FULL);
           the driver polls it read-only every ~1 ms.
  postfix  the file in the Maildir's new/ (virtual(8) writes tmp/, fsyncs, links
           into new/); the driver watches new/ with inotify and matches the
           message by its X-Bench-Id header.

Latency = durable time - time the final "." was written (end of DATA, client side).
Only loopback addresses are used. Python standard library only.
"""

import argparse
import asyncio
import ctypes
import ctypes.util
import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
now = time.monotonic


# ---------------------------------------------------------------- helpers

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def cpu_ticks_total():
    """(busy, total) jiffies from /proc/stat, all CPUs."""
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def proc_cpu_seconds(pid, children=True):
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return 0.0
    fields = data[data.rindex(")") + 2:].split()
    # utime stime cutime cstime = fields 14..17 (1-based) -> index 11..14 here
    t = int(fields[11]) + int(fields[12])
    if children:
        t += int(fields[13]) + int(fields[14])
    return t / os.sysconf("SC_CLK_TCK")


def thread_ticks(pid):
    """{tid: (name, cpu seconds)} for every thread of `pid`."""
    out = {}
    hz = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                data = f.read()
        except OSError:
            continue
        name = data[data.index("(") + 1:data.rindex(")")]
        fields = data[data.rindex(")") + 2:].split()
        out[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / hz)
    return out


def thread_groups(before, after, wall, core_workers):
    """CPU % of one core per kind of thread of the omb process. Tokio's core workers
    are its first `core_workers` threads of that name; later ones are the blocking pool
    (spawn_blocking: OpenPGP encryption on the relay, decryption on the node)."""
    groups = {}
    rt = sorted(tid for tid, (name, _) in after.items() if name.startswith("tokio"))
    core = set(rt[:core_workers])
    for tid, (name, t1) in after.items():
        t0 = before.get(tid, (name, 0.0))[1]
        if name.startswith("tokio"):
            g = "tokio workers" if tid in core else "blocking pool (OpenPGP)"
        elif name.startswith("sqlx-sqlite"):
            g = "SQLite workers (relay+node)"
        else:
            g = name
        groups[g] = groups.get(g, 0.0) + 100.0 * (t1 - t0) / wall
    return groups


def pids_with_env(key, value):
    want = f"{key}={value}".encode()
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if want in f.read().split(b"\0"):
                    out.append(int(d))
        except OSError:
            pass
    return out


def _all_proc_ticks():
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                data = f.read()
        except OSError:
            continue
        comm = data[data.index("(") + 1:data.rindex(")")]
        fields = data[data.rindex(")") + 2:].split()
        out[int(d)] = (comm, int(fields[11]) + int(fields[12]))
    return out


def busy_snapshot(seconds=1.0):
    """What else is using the machine: CPU busy % over `seconds`, rustc count, busiest processes."""
    p0 = _all_proc_ticks()
    b0, t0 = cpu_ticks_total()
    time.sleep(seconds)
    b1, t1 = cpu_ticks_total()
    p1 = _all_proc_ticks()
    busy = 100.0 * (b1 - b0) / max(1, t1 - t0)
    hz = os.sysconf("SC_CLK_TCK")
    use = sorted(((t - p0[pid][1], comm) for pid, (comm, t) in p1.items() if pid in p0), reverse=True)
    top = ", ".join(f"{comm} {100.0 * dt / hz / seconds:.0f}%" for dt, comm in use[:5] if dt > 0) or "none"
    rustc = sum(1 for comm, _ in p1.values() if comm == "rustc")
    return busy, rustc, top


# ---------------------------------------------------------------- inotify (ctypes)

IN_CREATE = 0x100
IN_MOVED_TO = 0x80
IN_NONBLOCK = 0o4000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class Inotify:
    def __init__(self, path, mask):
        self.fd = _libc.inotify_init1(IN_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if _libc.inotify_add_watch(self.fd, path.encode(), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")

    def names(self):
        try:
            buf = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        out, i = [], 0
        while i < len(buf):
            _wd, _mask, _cookie, ln = struct.unpack_from("iIII", buf, i)
            name = buf[i + 16:i + 16 + ln].rstrip(b"\0").decode()
            out.append(name)
            i += 16 + ln
        return out

    def close(self):
        os.close(self.fd)


# ---------------------------------------------------------------- messages

class Msg:
    __slots__ = ("token", "key", "t_sched", "t_put", "t_pick", "t_dot", "t_250", "t_durable", "phase")

    def __init__(self, token, phase, t_sched=None):
        self.token = token
        self.key = None          # omb queue id / postfix token
        self.t_sched = t_sched
        self.t_put = None        # paced: handed to the session pool
        self.t_pick = None       # paced: taken by a free session
        self.t_dot = None
        self.t_250 = None
        self.t_durable = None
        self.phase = phase


def make_body(token, sender, rcpt, size):
    head = (
        f"From: Bench <{sender}>\r\n"
        f"To: <{rcpt}>\r\n"
        f"Subject: inbound bench {token}\r\n"
        f"Message-ID: <{token}@bench.client>\r\n"
        f"X-Bench-Id: {token}\r\n"
        f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = (b"The quick brown fox jumps over the lazy dog; pack my box with five dozen ")[:74] + b"\r\n"
    body = bytearray(head)
    while len(body) + len(line) <= size - 2:
        body += line
    body += b"x" * max(0, size - 2 - len(body)) + b"\r\n"
    return bytes(body) + b".\r\n"     # no line starts with '.', so no dot-stuffing needed


# ---------------------------------------------------------------- SMTP client

class SmtpError(Exception):
    pass


async def read_reply(r):
    lines = []
    while True:
        line = await r.readline()
        if not line:
            raise SmtpError("connection closed")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return int(line[:3]), b"".join(lines).decode(errors="replace")


class Session:
    def __init__(self, host, port, sender, rcpt):
        self.host, self.port, self.sender, self.rcpt = host, port, sender, rcpt

    async def open(self):
        self.r, self.w = await asyncio.open_connection(self.host, self.port)
        code, text = await read_reply(self.r)
        if code != 220:
            raise SmtpError(f"greeting: {text.strip()}")
        self.w.write(b"EHLO bench.client\r\n")
        code, text = await read_reply(self.r)
        if code != 250:
            raise SmtpError(f"EHLO: {text.strip()}")
        self.pipelining = "PIPELINING" in text.upper()
        self.envelope = f"MAIL FROM:<{self.sender}>\r\nRCPT TO:<{self.rcpt}>\r\nDATA\r\n".encode()

    async def send(self, msg, size):
        data = make_body(msg.token, self.sender, self.rcpt, size)
        if self.pipelining:     # RFC 2920: MAIL, RCPT, DATA in one write
            self.w.write(self.envelope)
            replies = [await read_reply(self.r) for _ in range(3)]
        else:
            replies = []
            for cmd in self.envelope.split(b"\r\n")[:3]:
                self.w.write(cmd + b"\r\n")
                replies.append(await read_reply(self.r))
        if [c for c, _ in replies] != [250, 250, 354]:
            raise SmtpError(f"envelope: {[t.strip() for _, t in replies]}")
        self.w.write(data)
        msg.t_dot = now()       # the whole DATA, final "." included, handed to the kernel
        code, text = await read_reply(self.r)
        msg.t_250 = now()
        if code != 250:
            raise SmtpError(f"end of DATA: {text.strip()}")
        return text

    async def close(self):
        try:
            self.w.write(b"QUIT\r\n")
            await asyncio.wait_for(read_reply(self.r), 2)
        except Exception:
            pass
        self.w.close()


# ---------------------------------------------------------------- observers

class OmbObserver:
    """Polls the node's store for new rows; a row is durable once it is visible."""

    def __init__(self, db_path, interval):
        self.db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, isolation_level=None)
        self.db.execute("PRAGMA busy_timeout=1000")
        self.last = self.db.execute("SELECT COALESCE(MAX(rowid), 0) FROM messages").fetchone()[0]
        self.interval = interval
        self.pending = {}        # queue id -> Msg
        self.early = {}          # queue id -> time seen before its 250 was parsed
        self.polls = 0

    def expect(self, msg):
        t = self.early.pop(msg.key, None)
        if t is not None:
            msg.t_durable = t
        else:
            self.pending[msg.key] = msg

    def attach_spool(self, relay_db):
        """Also watch how many messages wait in the relay's spool (once a second)."""
        self.spool = sqlite3.connect(f"file:{relay_db}?mode=ro", uri=True, isolation_level=None)
        self.spool.execute("PRAGMA busy_timeout=1000")
        self.spool_max = 0

    def reset_spool_max(self):
        self.spool_max = 0

    async def run(self):
        next_spool = now()
        while True:
            self.poll()
            if getattr(self, "spool", None) is not None and now() >= next_spool:
                next_spool = now() + 1.0
                try:
                    n = self.spool.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
                    self.spool_max = max(self.spool_max, n)
                except sqlite3.Error:
                    pass
            await asyncio.sleep(self.interval)

    def poll(self):
        self.polls += 1
        rows = self.db.execute("SELECT rowid, delivery_id FROM messages WHERE rowid > ?", (self.last,)).fetchall()
        if not rows:
            return
        t = now()
        for rowid, did in rows:
            self.last = max(self.last, rowid)
            m = self.pending.pop(did, None)
            if m is not None:
                m.t_durable = t
            else:
                self.early[did] = t

    def outstanding(self):
        return len(self.pending)


class MaildirObserver:
    TOKEN = re.compile(rb"X-Bench-Id: (\S+)")

    def __init__(self, new_dir):
        self.new_dir = new_dir
        self.ino = Inotify(new_dir, IN_CREATE | IN_MOVED_TO)
        self.pending, self.early = {}, {}
        self.polls = 0

    def expect(self, msg):
        t = self.early.pop(msg.key, None)
        if t is not None:
            msg.t_durable = t
        else:
            self.pending[msg.key] = msg

    async def run(self):
        loop = asyncio.get_running_loop()
        ev = asyncio.Event()
        loop.add_reader(self.ino.fd, ev.set)
        try:
            while True:
                await ev.wait()
                ev.clear()
                self.poll()
        finally:
            loop.remove_reader(self.ino.fd)

    def poll(self):
        self.polls += 1
        names = self.ino.names()
        t = now()
        for name in names:
            try:
                with open(os.path.join(self.new_dir, name), "rb") as f:
                    head = f.read(4096)
            except OSError:
                continue
            mt = self.TOKEN.search(head)
            if not mt:
                continue
            tok = mt.group(1).decode()
            m = self.pending.pop(tok, None)
            if m is not None:
                m.t_durable = t
            else:
                self.early[tok] = t

    def outstanding(self):
        return len(self.pending)


class SinkObserver:
    """For smtp-sink (accepts and discards): "durable" at the 250. Measures the driver."""

    polls = 0

    def expect(self, msg):
        msg.t_durable = msg.t_250

    async def run(self):
        await asyncio.Event().wait()

    def outstanding(self):
        return 0


# ---------------------------------------------------------------- load

class Target:
    threads_of = None

    def __init__(self, name, host, port, sender, rcpt, observer, key_of, cpu_pids):
        self.name, self.host, self.port = name, host, port
        self.sender, self.rcpt = sender, rcpt
        self.observer, self.key_of, self.cpu_pids = observer, key_of, cpu_pids


PERF_SYSCALLS = ("fsync", "fdatasync", "pwrite64", "pread64", "write", "writev", "read",
                 "sendmsg", "sendmmsg", "recvmsg", "recvmmsg", "sendto", "recvfrom", "futex",
                 "epoll_wait", "rename", "link", "openat")

QUEUED_AS = re.compile(r"queued as ([^\s>]+)")


def omb_key(msg, reply):
    m = QUEUED_AS.search(reply)
    if not m:
        raise SmtpError(f"no queue id in {reply.strip()!r}")
    return m.group(1)


def token_key(msg, reply):
    return msg.token


class Runner:
    def __init__(self, target, sessions, size):
        self.t, self.n, self.size = target, sessions, size
        self.seq = 0
        self.errors = []

    def new_msg(self, phase, t_sched=None):
        self.seq += 1
        return Msg(f"omb-bench-{os.getpid()}-{self.t.name}-{self.seq}", phase, t_sched)

    async def open(self):
        self.sessions = [Session(self.t.host, self.t.port, self.t.sender, self.t.rcpt) for _ in range(self.n)]
        for s in self.sessions:
            await s.open()
        self.obs_task = asyncio.create_task(self.t.observer.run())

    async def close(self):
        for s in self.sessions:
            await s.close()
        self.obs_task.cancel()

    async def one(self, s, msg):
        reply = await s.send(msg, self.size)
        msg.key = self.t.key_of(msg, reply)
        self.t.observer.expect(msg)

    async def drain(self, msgs, timeout):
        end = now() + timeout
        while any(m.t_durable is None for m in msgs) and now() < end:
            await asyncio.sleep(0.01)
        return sum(1 for m in msgs if m.t_durable is None)

    async def closed_loop(self, seconds, phase):
        msgs = []
        t_end = now() + seconds

        async def worker(s):
            while now() < t_end:
                m = self.new_msg(phase)
                msgs.append(m)
                await self.one(s, m)

        await asyncio.gather(*(worker(s) for s in self.sessions))
        return msgs, t_end

    async def paced(self, rate, seconds, phase):
        msgs = []
        q = asyncio.Queue()
        total = int(rate * seconds)
        t0 = now() + 0.05

        async def worker(s):
            while True:
                m = await q.get()
                if m is None:
                    return
                m.t_pick = now()
                await self.one(s, m)

        workers = [asyncio.create_task(worker(s)) for s in self.sessions]
        for i in range(total):
            ts = t0 + i / rate
            d = ts - now()
            if d > 0:
                await asyncio.sleep(d)
            m = self.new_msg(phase, ts)
            msgs.append(m)
            m.t_put = now()
            q.put_nowait(m)
        for _ in workers:
            q.put_nowait(None)
        await asyncio.gather(*workers)
        return msgs, now()


def cpu_probe(pids):
    return sum(proc_cpu_seconds(p) for p in pids())


def summarize(msgs, t_start, t_end, warm, cpu):
    done = [m for m in msgs if m.t_durable is not None]
    lat = sorted((m.t_durable - m.t_dot) * 1000 for m in done)
    smtp = sorted((m.t_250 - m.t_dot) * 1000 for m in done)
    w0 = t_start + warm
    durable_in_window = sum(1 for m in done if w0 <= m.t_durable < t_end)
    accepted_in_window = sum(1 for m in msgs if m.t_250 is not None and w0 <= m.t_250 < t_end)
    last = max((m.t_durable for m in done), default=t_end)
    timer_lag = sorted((m.t_put - m.t_sched) * 1000 for m in msgs if m.t_put)
    queue_wait = sorted((m.t_pick - m.t_put) * 1000 for m in msgs if m.t_pick)
    return {
        "sent": len(msgs),
        "durable": len(done),
        "lost": len(msgs) - len(done),
        "accept_rate": accepted_in_window / max(1e-9, t_end - w0),
        "e2e_rate": durable_in_window / max(1e-9, t_end - w0),
        "completion_rate": len(done) / max(1e-9, last - t_start),
        "drain_s": max(0.0, last - t_end),
        "p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "max": lat[-1] if lat else float("nan"),
        "smtp_p50": pct(smtp, 50), "smtp_p99": pct(smtp, 99),
        "timer_lag_p99": pct(timer_lag, 99) if timer_lag else 0.0,
        "queue_wait_p99": pct(queue_wait, 99) if queue_wait else 0.0,
        **cpu,
    }


async def bench_target(t, args):
    r = Runner(t, args.sessions, args.size)
    await r.open()
    out = {}
    try:
        # Warm-up: a few messages per session, not counted.
        warm = []
        for _round in range(2):
            batch = [r.new_msg("warm") for _ in r.sessions]
            warm += batch
            await asyncio.gather(*(r.one(s, m) for s, m in zip(r.sessions, batch)))
        left = await r.drain(warm, 60)
        if left:
            raise SmtpError(f"{t.name}: {left} warm-up messages never became durable")

        async def phase(name, coro_fn, warm_s):
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            b0, tt0 = cpu_ticks_total()
            s0 = cpu_probe(t.cpu_pids)
            if hasattr(t.observer, "reset_spool_max"):
                t.observer.reset_spool_max()
            th0 = thread_ticks(t.threads_of) if t.threads_of else {}
            t_start = now()
            msgs, t_end = await coro_fn()
            b1, tt1 = cpu_ticks_total()
            s1 = cpu_probe(t.cpu_pids)
            th1 = thread_ticks(t.threads_of) if t.threads_of else {}
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            wall = t_end - t_start
            left = await r.drain(msgs, args.drain_timeout)
            if left:
                print(f"  warning: {t.name} {name}: {left} messages not durable after {args.drain_timeout}s", file=sys.stderr)
            cpu = {
                "cpu_machine_pct": 100.0 * (b1 - b0) / max(1, tt1 - tt0) * os.cpu_count(),
                "cpu_system_pct": 100.0 * (s1 - s0) / wall,
                "cpu_driver_pct": 100.0 * ((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)) / wall,
            }
            res = summarize(msgs, t_start, t_end, warm_s, cpu)
            if getattr(t.observer, "spool", None) is not None:
                res["spool_max"] = t.observer.spool_max
            if th1:
                res["threads"] = thread_groups(th0, th1, wall, os.cpu_count())
                durable = sum(1 for m in msgs if m.t_durable is not None and m.t_durable <= t_end) or 1
                res["cpu_ms_per_msg"] = {g: v / 100.0 * wall * 1000 / durable for g, v in res["threads"].items()}
            return res

        print(f"  {t.name}: peak, {args.sessions} sessions back to back for {args.duration}s ...", file=sys.stderr)
        perf = None
        if args.perf:
            # Diagnostic only: whole-machine CPU samples (no call graphs) during the peak.
            os.makedirs(args.perf, exist_ok=True)
            # and every call of the syscalls that say what the I/O is (counted per process).
            base = os.path.join(args.perf, f"{t.name}-peak")
            events = []
            for sc in PERF_SYSCALLS:
                events += ["-e", f"syscalls:sys_enter_{sc}"]
            perf = [subprocess.Popen(["perf", "record", "-a", "-F", "499", "-q", "-o", base + ".cpu.data"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                    subprocess.Popen(["perf", "record", "-a", "-c", "1", "-q", "-o", base + ".sys.data",
                                      "-e", "sched:sched_switch", *events],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
            await asyncio.sleep(1.0)
        try:
            out["peak"] = phase_res = await phase("peak", lambda: r.closed_loop(args.duration, "peak"), min(args.warm, args.duration / 4))
        finally:
            for p in perf or []:
                p.send_signal(signal.SIGINT)
                p.wait()
        if perf:
            with open(os.path.join(args.perf, f"{t.name}-peak.json"), "w") as f:
                json.dump({"messages": phase_res["sent"], "seconds": args.duration}, f)
        rate = max(1.0, phase_res["e2e_rate"] * args.half)
        out["half_rate"] = rate
        print(f"  {t.name}: peak e2e {phase_res['e2e_rate']:.1f} msg/s; paced at {rate:.1f} msg/s for {args.duration}s ...", file=sys.stderr)
        out["half"] = await phase("half", lambda: r.paced(rate, args.duration, "half"), 0.0)
        for extra in args.rates:
            print(f"  {t.name}: paced at {extra:g} msg/s for {args.duration}s ...", file=sys.stderr)
            out[f"@{extra:g}"] = await phase(f"@{extra:g}", lambda: r.paced(extra, args.duration, "fixed"), 0.0)
    finally:
        await r.close()
    return out


# ---------------------------------------------------------------- systems under test

def start_omb(run_dir, args):
    sandbox_dir = os.path.join(run_dir, "omb")
    os.makedirs(sandbox_dir)
    env = dict(os.environ, OMB_LOG=args.omb_log)
    # A deployed relay has no RUST_BACKTRACE; with it set, every anyhow::Error made
    # inside sequoia's parsers (normal control flow there) captures a backtrace,
    # which cost ~4% of the sandbox's CPU here. Panics still print one with =1.
    if not args.error_backtraces:
        env["RUST_LIB_BACKTRACE"] = "0"
    log = open(os.path.join(run_dir, "omb-sandbox.log"), "wb")
    proc = subprocess.Popen([args.sandbox_bin, "--dir", sandbox_dir, "--nodes", "alice"],
                            stdout=subprocess.DEVNULL, stderr=log, env=env, start_new_session=True)
    manifest = os.path.join(sandbox_dir, "sandbox.json")
    deadline = time.time() + 120
    while not os.path.exists(manifest):
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise SystemExit(f"omb-sandbox did not start; see {log.name}")
        time.sleep(0.1)
    time.sleep(0.2)
    with open(manifest) as f:
        m = json.load(f)
    host, port = m["relay"]["smtp"].rsplit(":", 1)
    node = m["nodes"][0]
    db = os.path.join(node["data_dir"], "mail.db")
    relay_db = os.path.join(m["relay"]["data_dir"], "relay.db")
    return proc, host, int(port), node["address"], db, relay_db


def stop_omb(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {d}/spool
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
relayhost =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
# Nothing may reach the system resolver (it is not on loopback).
disable_dns_lookups = yes
smtp_dns_support_level = disabled
smtpd_peername_lookup = no
smtp_host_lookup = native
# Final delivery: one Maildir (virtual(8) fsyncs the file before linking it into new/).
virtual_mailbox_domains = bench.test
virtual_mailbox_base = {d}/mail
virtual_mailbox_maps = static:box/
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
virtual_minimum_uid = 100
default_process_limit = 100
smtpd_client_connection_count_limit = 200
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_tls_security_level = none
smtp_tls_security_level = none
smtputf8_enable = no
biff = no
append_dot_mydomain = no
maillog_file_prefixes = {d}
maillog_file = {d}/maillog
"""


def start_postfix(run_dir, args, extra_main_cf=""):
    """A private Postfix on a free loopback port; `extra_main_cf` is appended to its
    main.cf (a later setting overrides an earlier one)."""
    if os.geteuid() != 0:
        raise RuntimeError("Postfix needs root to start (postfix -c DIR start)")
    if not shutil.which("postfix") and not os.path.exists("/usr/sbin/postfix"):
        raise RuntimeError("Postfix is not installed (apt-get install postfix)")
    d = os.path.join(run_dir, "postfix")
    etc = os.path.join(d, "etc")
    for sub in ("etc", "spool", "data", "mail"):
        os.makedirs(os.path.join(d, sub))
    uid, gid = 65534, 65534        # nobody:nogroup owns the Maildir
    for p in (run_dir, d):
        os.chmod(p, 0o755)
    box = os.path.join(d, "mail", "box")
    for sub in ("", "tmp", "new", "cur"):
        os.makedirs(os.path.join(box, sub), exist_ok=True)
        os.chown(os.path.join(box, sub), uid, gid)
    os.chown(os.path.join(d, "mail"), uid, gid)
    import pwd
    pf = pwd.getpwnam("postfix")
    os.chown(os.path.join(d, "data"), pf.pw_uid, pf.pw_gid)
    port = free_port()
    with open(os.path.join(etc, "master.cf"), "w") as f:
        f.write(MASTER_CF.format(port=port))
    with open(os.path.join(etc, "main.cf"), "w") as f:
        f.write(MAIN_CF.format(d=d, uid=uid, gid=gid) + extra_main_cf)
    pf_bin = shutil.which("postfix") or "/usr/sbin/postfix"
    res = subprocess.run([pf_bin, "-c", etc, "start"], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"postfix -c {etc} start failed: {res.stderr.strip()} {res.stdout.strip()}")
    deadline = time.time() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            break
        except OSError:
            if time.time() > deadline:
                raise RuntimeError("Postfix's smtpd did not come up")
            time.sleep(0.1)
    return etc, port, os.path.join(box, "new")


def stop_postfix(etc):
    pf_bin = shutil.which("postfix") or "/usr/sbin/postfix"
    subprocess.run([pf_bin, "-c", etc, "stop"], capture_output=True)
    # master exits asynchronously; give it a moment so the next run's port is free
    for _ in range(50):
        if not pids_with_env("MAIL_CONFIG", etc):
            break
        time.sleep(0.1)


# ---------------------------------------------------------------- report

def fmt(v, w=8, d=1):
    return f"{v:{w}.{d}f}" if v == v else f"{'n/a':>{w}}"


def report(results, args, ctx_before, ctx_after):
    print()
    print(f"inbound benchmark: {args.sessions} concurrent SMTP sessions, {args.size}-byte messages, "
          f"{args.duration:g}s per phase (rates counted after {args.warm:g}s), loopback only")
    print(f"machine: nproc={os.cpu_count()}, load average {open('/proc/loadavg').read().split()[:3]}")
    for label, (busy, rustc, top) in (("before", ctx_before), ("after", ctx_after)):
        print(f"  {label}: CPU busy {busy:.0f}% of all cores over 1 s, {rustc} rustc processes; top: {top}")
    print("latency = final '.' of DATA written -> durable in the final store "
          "(omb: row in the node's mail.db; postfix: file in Maildir/new)")
    print(f"omb runs with OMB_LOG={args.omb_log}"
          f"{'' if args.error_backtraces else ', RUST_LIB_BACKTRACE=0'}; encryption on (relay encrypts every message to the node's OpenPGP key)")
    print()
    hdr = (f"{'system':8} {'phase':5} {'offered':>8} {'accept/s':>8} {'e2e/s':>8} {'drain s':>7} "
           f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8} {'250 p50':>8} {'250 p99':>8} "
           f"{'cpu sys%':>8} {'cpu drv%':>8} {'rest%':>8}")
    print(hdr)
    print("-" * len(hdr))
    for name, res in results.items():
        for ph in ("peak", "half", *[k for k in res if k.startswith("@")]):
            r = res[ph]
            offered = "max" if ph == "peak" else f"{res['half_rate']:.1f}" if ph == "half" else ph[1:]
            print(f"{name:8} {ph:5} {offered:>8} {fmt(r['accept_rate'])} {fmt(r['e2e_rate'])} {fmt(r['drain_s'], 7)} "
                  f"{fmt(r['p50'])} {fmt(r['p90'])} {fmt(r['p99'])} {fmt(r['max'])} {fmt(r['smtp_p50'])} {fmt(r['smtp_p99'])} "
                  f"{fmt(r['cpu_system_pct'], 8, 0)} {fmt(r['cpu_driver_pct'], 8, 0)} "
                  f"{fmt(max(0.0, r['cpu_machine_pct'] - r['cpu_system_pct'] - r['cpu_driver_pct']), 8, 0)}")
            if ph != "peak" and (r["timer_lag_p99"] > 5 or r["queue_wait_p99"] > 5):
                print(f"         ^ pacing: p99 {r['timer_lag_p99']:.1f} ms late waking up (driver), "
                      f"p99 {r['queue_wait_p99']:.1f} ms waiting for a free session")
            if r["lost"]:
                print(f"         ^ {r['lost']} of {r['sent']} messages never seen durable")
    for name, res in results.items():
        for ph in ("peak", "half", *[k for k in res if k.startswith("@")]):
            th = res[ph].get("threads")
            if th:
                per = res[ph]["cpu_ms_per_msg"]
                parts = ", ".join(f"{g} {v:.0f}% ({per[g]:.2f} ms/msg)" for g, v in sorted(th.items(), key=lambda kv: -kv[1]) if v >= 0.5)
                spool = f"; most messages waiting in the relay spool: {res[ph]['spool_max']}" if "spool_max" in res[ph] else ""
                print(f"{name} {ph:5} CPU by thread (100% = one core): {parts}{spool}")
    print("(e2e/s = messages durable per second while the load ran; 250 p50/p99 = DATA '.' -> 250 reply; "
          "cpu sys% = the system under test, drv% = this driver, rest% = everything else: other processes, and kernel threads (journal, block I/O); "
          "100% = one core, the machine has " + str(os.cpu_count() * 100) + "%)")
    if "omb" in results and "postfix" in results:
        o, p = results["omb"], results["postfix"]
        ratio = o["peak"]["e2e_rate"] / max(1e-9, p["peak"]["e2e_rate"])
        print()
        print(f"omb/postfix end-to-end rate at peak: {ratio:.2f}x  (target >= 2x)")
        print(f"omb/postfix p99 at half of own peak: {o['half']['p99']:.1f} ms / {p['half']['p99']:.1f} ms "
              f"= {o['half']['p99'] / max(1e-9, p['half']['p99']):.2f}x  (target: omb p99 < 50 ms)")
        verdict_rate = "MET" if ratio >= 2 else "NOT MET"
        verdict_p99 = "MET" if o["half"]["p99"] < 50 else "NOT MET"
        print(f"targets: rate {verdict_rate}, p99 {verdict_p99}")


async def amain(args):
    run_dir = tempfile.mkdtemp(prefix="omb-bench-inbound-")
    ctx_before = busy_snapshot()
    results = {}
    omb_proc = pf_etc = None
    try:
        if "omb" in args.systems:
            omb_proc, host, port, rcpt, db, relay_db = start_omb(run_dir, args)
            obs = OmbObserver(db, args.poll_ms / 1000.0)
            if os.path.exists(relay_db):
                obs.attach_spool(relay_db)
            t = Target("omb", host, port, "bench@bench.client", rcpt, obs, omb_key,
                       lambda: [omb_proc.pid])
            t.threads_of = omb_proc.pid
            results["omb"] = await bench_target(t, args)
            stop_omb(omb_proc)
        if "postfix" in args.systems:
            try:
                pf_etc, port, new_dir = start_postfix(run_dir, args)
            except RuntimeError as e:
                print(f"postfix: SKIPPED: {e}", file=sys.stderr)
            else:
                obs = MaildirObserver(new_dir)
                t = Target("postfix", "127.0.0.1", port, "bench@bench.client", "box@bench.test", obs, token_key,
                           lambda: pids_with_env("MAIL_CONFIG", pf_etc))
                results["postfix"] = await bench_target(t, args)
        if "sink" in args.systems:
            # Postfix's smtp-sink: the ceiling of this driver on this machine.
            port = free_port()
            sink = subprocess.Popen(["/usr/sbin/smtp-sink", *(["-u", "nobody"] if os.geteuid() == 0 else []), "-c", f"127.0.0.1:{port}", "100"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                for _ in range(100):
                    try:
                        socket.create_connection(("127.0.0.1", port), 1).close()
                        break
                    except OSError:
                        time.sleep(0.05)
                t = Target("sink", "127.0.0.1", port, "bench@bench.client", "box@bench.test",
                           SinkObserver(), token_key, lambda: [sink.pid])
                results["sink"] = await bench_target(t, args)
            finally:
                sink.terminate()
                sink.wait()
    finally:
        if omb_proc is not None:
            stop_omb(omb_proc)
        if pf_etc is not None:
            stop_postfix(pf_etc)
        if args.keep:
            print(f"\nstate kept in {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    ctx_after = busy_snapshot()
    report(results, args, ctx_before, ctx_after)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "args": vars(args)}, f, indent=1, default=str)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=8192, help="message size in bytes (headers included)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    ap.add_argument("--warm", type=float, default=2.0, help="seconds at the start of the peak phase not counted in rates")
    ap.add_argument("--half", type=float, default=0.5, help="fraction of peak for the latency phase")
    ap.add_argument("--systems", default="omb,postfix",
                    help="any of omb, postfix, sink (Postfix's smtp-sink, which discards: the driver's own ceiling)")
    ap.add_argument("--rates", default="", help="extra paced phases at these rates (msg/s), comma-separated, "
                    "after the half-load phase; same rates for every system")
    ap.add_argument("--poll-ms", type=float, default=1.0, help="how often the node's store is polled")
    ap.add_argument("--drain-timeout", type=float, default=120.0)
    ap.add_argument("--omb-log", default="warn", help="OMB_LOG for the sandbox (info logs every message)")
    ap.add_argument("--error-backtraces", action="store_true",
                    help="leave RUST_LIB_BACKTRACE alone (by default it is set to 0 for the sandbox)")
    ap.add_argument("--sandbox-bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", "/work/target"), "release", "omb-sandbox"))
    ap.add_argument("--json", help="also write the raw figures here")
    ap.add_argument("--keep", action="store_true", help="keep the run's folder (logs, stores)")
    ap.add_argument("--perf", metavar="DIR", help="diagnostic: perf record -a during each peak phase into DIR "
                    "(costs CPU itself: don't use the figures of such a run)")
    args = ap.parse_args()
    args.systems = args.systems.split(",")
    args.rates = [float(x) for x in args.rates.split(",") if x]
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
