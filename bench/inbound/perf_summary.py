#!/usr/bin/env python3
"""Summarises a diagnostic run made with `bench/inbound/run --perf DIR`.

For each system's peak phase it prints, per message sent in that phase:
  - CPU time by process group (the system under test, the driver, everything else),
  - for omb, CPU time by what the code was doing (symbol classes below),
  - syscall counts by process group (fsync, network, futex, ...) and context switches.
The figures are approximate: sampling at 499 Hz, and the phase's messages are the
denominator although some of them finish after recording stops.
"""

import collections
import json
import os
import re
import subprocess
import sys

POSTFIX = {"smtpd", "cleanup", "qmgr", "virtual", "trivial-rewrite", "master", "anvil",
           "proxymap", "postlogd", "tlsmgr", "pickup", "bounce", "scache", "verify"}


def group(comm):
    if comm in ("tokio-rt-worker", "omb-sandbox") or comm.startswith("sqlx-sqlite"):
        return "omb-sandbox"
    if comm in POSTFIX:
        return "postfix"
    if comm == "python3":
        return "driver (python3)"
    return "other"


# First match wins; tested against the sampled symbol and its shared object.
CLASSES = [
    ("OpenPGP (sequoia, curve25519, AES, SHA)", r"sequoia|curve25519|x25519|aes::|sha1collision|sha2::|sha1::|base64|cipher::|buffered_reader|ctr::|cfb|omb_shared::pgp"),
    ("SQLite", r"sqlite3|^(btree|pcache|pager|wal|moveTo|getPage|readDbPage|unix[A-Z]|vdbe|sqlx|getCell|balance|insertCell|fillInCell|clearCell|freePage|allocateBtreePage|accessPayload|memjrnl)"),
    ("QUIC tunnel (quinn, rustls, ring)", r"quinn|rustls|ring::|ring_core|aws_lc|chacha|poly1305|gcm|ghash"),
    ("DNS (hickory, relay DNS server, mail-auth)", r"hickory|mail_auth|omb_relay::dns"),
    ("backtrace capture / unwinding", r"Backtrace|_Unwind|_dl_find_object|gimli|addr2line"),
    ("serde / tunnel frames", r"serde|bincode|postcard|omb_shared::protocol"),
    ("malloc / memcpy", r"malloc|free|realloc|calloc|memmove|memcpy|memset|memcmp|_int_|unlink_chunk|malloc_consolidate"),
    ("tokio / futex / threads", r"tokio|futex|parking_lot|flume|mio::|epoll|pthread|crossbeam|std::thread|syscall$"),
    ("kernel: scheduling", r"^\[k\] (finish_task_switch|__schedule|schedule|pick_next|enqueue|dequeue|try_to_wake|ttwu|update_curr|switch_|__switch|irqentry_exit|exit_to_user|_raw_spin)"),
    ("kernel: network", r"^\[k\] .*(tcp|udp|skb|sock|net_|ip_|inet|__dev_|loopback|napi|nf_|fib_)"),
    ("kernel: files / fsync", r"^\[k\] .*(ext4|jbd2|filemap|folio|blk|bio|iomap|file|vfs|page_cache|fsync|copy_to_iter|copy_from_iter|iowrite|virtio)"),
    ("kernel: other", r"^\[k\]"),
]


def perf_lines(args):
    return subprocess.run(["perf", *args], capture_output=True, text=True, errors="replace").stdout.splitlines()


def cpu(path, msgs, secs):
    by_group = collections.Counter()
    omb = collections.Counter()
    total = 0
    for line in perf_lines(["script", "-i", path, "-F", "comm,ip,sym,dso"]):
        # "tokio-rt-worker  7f... symbol+0x.. (dso)"
        m = re.match(r"\s*(.+?)\s+([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$", line)
        if not m:
            continue
        comm, _ip, sym, dso = m.groups()
        total += 1
        g = group(comm)
        by_group[g] += 1
        if g == "omb-sandbox":
            name = ("[k] " if "kernel" in dso else "") + re.sub(r"\+0x[0-9a-f]+$", "", sym)
            for cls, rx in CLASSES:
                if re.search(rx, name):
                    omb[cls] += 1
                    break
            else:
                omb["other user code (" + os.path.basename(dso) + ")"] += 1
    if not total:
        print("  no samples")
        return
    hz = 499.0
    print(f"  CPU (samples at {hz:.0f} Hz): {total / hz:.1f} CPU-s in ~{secs:g} s")
    for g, n in by_group.most_common():
        print(f"    {g:32} {100 * n / hz / secs:5.0f}% of a core  {1000 * n / hz / msgs:6.2f} ms/msg")
    if omb:
        n_omb = sum(omb.values())
        print("  omb-sandbox by activity:")
        for cls, n in omb.most_common():
            print(f"    {cls:44} {100 * n / n_omb:5.1f}%  {1000 * n / hz / msgs:6.3f} ms/msg")


def syscalls(path, msgs):
    counts = collections.defaultdict(collections.Counter)
    for line in perf_lines(["script", "-i", path, "-F", "comm,event"]):
        parts = line.split()
        if len(parts) < 2:
            continue
        ev = parts[-1].rstrip(":")
        comm = " ".join(parts[:-1])
        ev = ev.replace("syscalls:sys_enter_", "").replace("sched:sched_switch", "ctx switch")
        counts[group(comm)][ev] += 1
    for g in ("omb-sandbox", "postfix", "driver (python3)", "other"):
        c = counts.get(g)
        if not c:
            continue
        top = ", ".join(f"{ev} {n / msgs:.1f}" for ev, n in c.most_common() if n / msgs >= 0.05)
        print(f"  syscalls per message, {g}: {top}")


def main(d):
    for name in ("omb", "postfix"):
        meta = os.path.join(d, f"{name}-peak.json")
        if not os.path.exists(meta):
            continue
        with open(meta) as f:
            m = json.load(f)
        print(f"{name} peak: {m['messages']} messages in {m['seconds']:g} s")
        cpu(os.path.join(d, f"{name}-peak.cpu.data"), m["messages"], m["seconds"])
        syscalls(os.path.join(d, f"{name}-peak.sys.data"), m["messages"])
        print()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
