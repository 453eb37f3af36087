"""Processes for bench/imap: free ports, waiting for a listener, stopping a
process group, and reading /proc for memory (RSS, VmHWM, PSS) and CPU."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time

now = time.monotonic
MiB = 1024 * 1024


def log(*a):
    print(*a, file=sys.stderr, flush=True)


_GIVEN = set()


def free_port():
    """A free loopback port, never one handed out before in this run (the kernel
    readily gives a just-closed port again)."""
    taken = _GIVEN
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


def stop_proc(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
