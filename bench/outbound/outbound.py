"""bench/outbound: sending mail, Own-Mailbox against Postfix, in the same run.

omb      20 SMTP submission sessions (AUTH PLAIN, loopback; the client is omb-bench-submit,
         compiled, one message at a time per session like smtp-source) to alice's node; the node
         DKIM-signs each message, keeps a copy in Sent, hands it to the relay through
         the tunnel and answers 250 once the relay has queued it; the relay checks the
         From and the signature, queues it durably and delivers it to Postfix's
         smtp-sink (a static route for sink.test).
postfix  smtp-source, 20 sessions, to a private Postfix instance on loopback whose
         relayhost is another smtp-sink: smtpd, cleanup, the queue, qmgr, smtp.

The rate is messages per second from the first submission to the moment the sink has
counted the last message; the sink's own counter (`smtp-sink -c`) says when. Every
message counts only once the sink has it. See bench/README.md.
"""

import argparse
import asyncio
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "imap"))
sys.path.insert(0, os.path.join(HERE, "..", "inbound"))

from procs import free_port, log, now, proc_cpu, stop_proc, wait_port  # noqa: E402
from omb import link_once, toml_set  # noqa: E402
from inbound import pids_with_env, start_postfix, stop_postfix  # noqa: E402

SINK_DOMAIN = "sink.test"


class Sink:
    """Postfix's smtp-sink on a free loopback port, its message counter read live."""

    def __init__(self, run_dir, name):
        self.port = free_port()
        self.count = 0
        self.changed = threading.Condition()
        self.proc = subprocess.Popen(
            ["smtp-sink", "-c", "-u", "nobody", "-h", f"{name}.sink.test", f"127.0.0.1:{self.port}", "256"],
            stdout=subprocess.PIPE, stderr=open(os.path.join(run_dir, f"sink-{name}.log"), "wb"),
            cwd=run_dir, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        wait_port(self.port, 10, self.proc, "smtp-sink")

    def _read(self):
        buf = b""
        while True:
            chunk = self.proc.stdout.read1(4096)
            if not chunk:
                return
            buf = (buf + chunk)[-256:]
            found = re.findall(rb"mesg=(\d+)", buf)
            if found:
                with self.changed:
                    self.count = int(found[-1])
                    self.changed.notify_all()

    def wait_for(self, n, seconds):
        """The time the sink's count reached n, or None after `seconds`."""
        deadline = now() + seconds
        with self.changed:
            while self.count < n:
                left = deadline - now()
                if left <= 0:
                    return None
                self.changed.wait(min(left, 0.05))
        return now()

    def stop(self):
        stop_proc(self.proc)


def message(sender, n, size):
    lines = [f"From: <{sender}>", f"To: <r{n}@{SINK_DOMAIN}>", f"Subject: outbound bench {n}",
             "Date: Fri, 27 Nov 2026 12:00:00 +0000", f"Message-ID: <bench.{n}.{os.getpid()}@bench.client>",
             "MIME-Version: 1.0", "Content-Type: text/plain; charset=us-ascii", ""]
    head = ("\r\n".join(lines) + "\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog, message " + str(n).encode() + b".\r\n"
    body = (line * (size // len(line) + 1))[:size]
    return head + body.rsplit(b"\r\n", 1)[0] + b"\r\n"


async def reply(reader):
    """One SMTP reply: (code, text)."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines).decode(errors="replace")


async def expect(reader, writer, command, want):
    if command is not None:
        writer.write(command)
    code, text = await reply(reader)
    if code // 100 != want:
        raise RuntimeError(f"{command!r} -> {text.strip()}")
    return code


async def submit_all(host, port, user, password, sender, numbers, sessions, size):
    """Submits every message numbered in `numbers` over `sessions` logged-in sessions;
    returns the number refused (any reply but 250 to the final dot)."""
    todo = list(numbers)
    refused = []
    auth = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())

    async def session():
        reader, writer = await asyncio.open_connection(host, port)
        await expect(reader, writer, None, 2)
        await expect(reader, writer, b"EHLO bench.client\r\n", 2)
        await expect(reader, writer, b"AUTH PLAIN " + auth + b"\r\n", 2)
        while todo:
            n = todo.pop()
            await expect(reader, writer, f"MAIL FROM:<{sender}>\r\n".encode(), 2)
            await expect(reader, writer, f"RCPT TO:<r{n}@{SINK_DOMAIN}>\r\n".encode(), 2)
            await expect(reader, writer, b"DATA\r\n", 3)
            writer.write(message(sender, n, size).replace(b"\r\n.", b"\r\n..") + b".\r\n")
            code, text = await reply(reader)
            if code != 250:
                refused.append(text.strip())
        writer.write(b"QUIT\r\n")
        await writer.drain()
        writer.close()

    await asyncio.gather(*(session() for _ in range(sessions)))
    if refused:
        log(f"omb: {len(refused)} refused, e.g. {refused[0]}")
    return len(refused)


class Omb:
    """omb-relay and omb-node as two processes, linked and keyed once by omb-sandbox."""

    def __init__(self, run_dir, args, sink_port):
        d = os.path.join(run_dir, "omb")
        os.makedirs(d)
        self.dir, self.args = d, args
        self.env = dict(os.environ, OMB_LOG=args.omb_log, RUST_LIB_BACKTRACE="0")
        self.relay = self.node = None
        m = link_once(args.sandbox_bin, d, self.env)
        node = m["nodes"][0]
        self.address, self.password = node["address"], node["password"]
        self.smtp, tunnel, dns, self.submission = free_port(), free_port(), free_port(), free_port()
        self.relay_conf = os.path.join(d, "relay.toml")
        big = 1_000_000_000
        with open(self.relay_conf, "w") as f:
            f.write(f'domain = "{m["relay"]["domain"]}"\n'
                    f'data_dir = "{m["relay"]["data_dir"]}"\n'
                    f'database = "sqlite"\n\n'
                    f'[smtp]\nlisten = "127.0.0.1:{self.smtp}"\n\n'
                    f'[tunnel]\nlisten = "127.0.0.1:{tunnel}"\n\n'
                    # Its own DNS server is the only one it asks (the DKIM check included).
                    f'[dns]\nlisten = "127.0.0.1:{dns}"\nresolver = "127.0.0.1:{dns}"\naddresses = ["127.0.0.1"]\n\n'
                    f'[outbound]\nroutes = {{ "{SINK_DOMAIN}" = "127.0.0.1:{sink_port}" }}\n'
                    # The abuse limits would stop a benchmark after 20 messages.
                    f'per_minute = {big}\nper_day = {big}\nnew_account_per_day = {big}\n')
        with open(os.path.join(d, "nodes", "alice.toml")) as f:
            text = f.read()
        text = toml_set(text, "relay", "tunnel", f"127.0.0.1:{tunnel}")
        text = toml_set(text, "access", "submission", f"127.0.0.1:{self.submission}")
        # One address opens all the sessions (10 by default); twice as many, since
        # the sessions of one phase may still be closing when the next opens its own.
        text = text.replace("[access]\n",
                            f"[access]\nsubmission_connections_per_address = {2 * args.sessions}\n", 1)
        self.node_conf = os.path.join(d, "alice-bench.toml")
        with open(self.node_conf, "w") as f:
            f.write(text)
        try:
            self.relay = self._start(args.relay_bin, self.relay_conf, "relay", self.smtp)
            self.node = self._start(args.node_bin, self.node_conf, "node", self.submission)
            # The node publishes its DKIM key when its tunnel comes up; the relay
            # refuses mail whose signature it cannot check yet.
            time.sleep(2.0)
        except BaseException:
            self.stop()
            raise

    def _start(self, binary, conf, name, port):
        logf = open(os.path.join(self.dir, f"{name}.log"), "ab")
        proc = subprocess.Popen([binary, "-c", conf, "run" if name == "node" else "serve"],
                                stdout=subprocess.DEVNULL, stderr=logf, env=self.env, start_new_session=True)
        try:
            wait_port(port, 60, proc, f"omb-{name}")
        except RuntimeError as e:
            raise RuntimeError(f"{e}; see {logf.name}") from None
        return proc

    def cpu(self):
        return sum(proc_cpu(p.pid) for p in (self.relay, self.node) if p is not None)

    def send(self, numbers, sessions, size):
        if self.args.client == "python":
            return asyncio.run(submit_all("127.0.0.1", self.submission, self.address, self.password,
                                          self.address, numbers, sessions, size))
        # The compiled client, as light as smtp-source on Postfix's side.
        out = subprocess.run([self.args.submit_bin, "--server", f"127.0.0.1:{self.submission}",
                              "--user", self.address, "--password", self.password,
                              "--from", self.address, "--domain", SINK_DOMAIN,
                              "--sessions", str(sessions), "--first", str(numbers[0]),
                              "--count", str(len(numbers)), "--size", str(size)],
                             check=True, stdout=subprocess.PIPE, text=True).stdout.splitlines()
        refused = int(out[0])
        if refused:
            log(f"omb: {refused} refused, e.g. {out[1] if len(out) > 1 else '?'}")
        return refused

    def stop(self):
        for p in (self.node, self.relay):
            if p is not None:
                stop_proc(p)
        self.node = self.relay = None


def postfix_cpu(etc):
    return sum(proc_cpu(pid) for pid in pids_with_env("MAIL_CONFIG", etc))


def run_omb(run_dir, args):
    sink = Sink(run_dir, "omb")
    omb = Omb(run_dir, args, sink.port)
    try:
        refused = omb.send(range(args.warmup), args.sessions, args.size)
        if sink.wait_for(args.warmup - refused, 120) is None:
            raise RuntimeError(f"omb: the warm-up did not reach the sink ({sink.count}/{args.warmup})")
        base, cpu0, t0 = sink.count, omb.cpu(), now()
        refused = omb.send(range(args.warmup, args.warmup + args.messages), args.sessions, args.size)
        t_submitted = now()
        t_end = sink.wait_for(base + args.messages - refused, args.timeout)
        if t_end is None:
            raise RuntimeError(f"omb: only {sink.count - base}/{args.messages} reached the sink "
                               f"in {args.timeout} s; see {omb.dir}/relay.log")
        return dict(messages=args.messages, refused=refused, seconds=t_end - t0,
                    submit_seconds=t_submitted - t0, cpu=omb.cpu() - cpu0)
    finally:
        omb.stop()
        sink.stop()


def run_postfix(run_dir, args):
    sink = Sink(run_dir, "postfix")
    # bench/inbound's private instance, turned into a relay: everything to the sink.
    etc, port, _ = start_postfix(run_dir, args, f"relayhost = [127.0.0.1]:{sink.port}\n"
                                                "virtual_mailbox_domains =\n")
    try:
        def source(count):
            subprocess.run(["smtp-source", "-s", str(args.sessions), "-m", str(count), "-d",
                            "-l", str(args.size), "-M", "bench.client", "-f", "bench@bench.client",
                            "-t", f"box@{SINK_DOMAIN}", f"127.0.0.1:{port}"], check=True,
                           stdout=subprocess.DEVNULL)
        source(args.warmup)
        if sink.wait_for(args.warmup, 120) is None:
            raise RuntimeError(f"postfix: the warm-up did not reach the sink ({sink.count}/{args.warmup})")
        base, cpu0, t0 = sink.count, postfix_cpu(etc), now()
        source(args.messages)
        t_submitted = now()
        t_end = sink.wait_for(base + args.messages, args.timeout)
        if t_end is None:
            raise RuntimeError(f"postfix: only {sink.count - base}/{args.messages} reached the sink")
        return dict(messages=args.messages, refused=0, seconds=t_end - t0,
                    submit_seconds=t_submitted - t0, cpu=postfix_cpu(etc) - cpu0)
    finally:
        stop_postfix(etc)
        sink.stop()


def report(results, args):
    print(f"outbound: {args.messages} messages of {args.size} body bytes, {args.sessions} sessions, "
          f"to smtp-sink on loopback (after {args.warmup} untimed)")
    print(f"{'':10}{'msgs/s':>10}{'submitted in':>14}{'at the sink':>13}{'server CPU':>12}{'refused':>9}")
    for name, r in results.items():
        # Only what reached the sink counts; refusals are printed.
        rate = (r["messages"] - r["refused"]) / r["seconds"]
        r["rate"] = rate
        print(f"{name:10}{rate:10.0f}{r['submit_seconds']:13.2f}s{r['seconds']:12.2f}s{r['cpu']:11.1f}s"
              f"{r['refused']:9d}")
    if "omb" in results and "postfix" in results:
        ratio = results["omb"]["rate"] / results["postfix"]["rate"]
        results["ratio"] = ratio
        verdict = "met" if ratio >= 1.0 else "NOT met"
        print(f"ratio omb/postfix: {ratio:.2f} (target >= 1.0 with DKIM signing included: {verdict})")
    print("omb's figure includes STARTTLS-free AUTH PLAIN on loopback, DKIM signing, the copy kept in "
          "Sent, the tunnel, the relay's DKIM check and its durable queue; Postfix's has no DKIM.")


def report_medians(rounds):
    """The medians over rounds: each round ran both systems one after the other, so a
    round's ratio compares figures taken minutes apart, not a whole run apart."""
    print(f"\nmedians over {len(rounds)} rounds:")
    for name in rounds[0]:
        if name == "ratio":
            continue
        rates = [r[name]["rate"] for r in rounds]
        print(f"{name:10}{statistics.median(rates):10.0f} msgs/s  (rounds: {', '.join(f'{x:.0f}' for x in rates)})")
    ratios = [r["ratio"] for r in rounds if "ratio" in r]
    if ratios:
        m = statistics.median(ratios)
        verdict = "met" if m >= 1.0 else "NOT met"
        print(f"ratio omb/postfix, median of the rounds' ratios: {m:.2f} "
              f"(rounds: {', '.join(f'{x:.2f}' for x in ratios)}; target >= 1.0: {verdict})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=4096, help="body bytes per message")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--systems", default="omb,postfix")
    ap.add_argument("--json", help="write the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the run's folder (configs, logs)")
    ap.add_argument("--omb-log", default="warn")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the systems in turn this many times and print the medians too")
    ap.add_argument("--client", choices=("compiled", "python"), default="compiled",
                    help="omb's submission client: omb-bench-submit (Rust, default: about smtp-source's "
                         "cost) or this script's asyncio client (which takes CPU from the servers)")
    ap.add_argument("--bin-dir", required=True)
    args = ap.parse_args()
    args.sandbox_bin, args.relay_bin, args.node_bin, args.submit_bin = (
        os.path.join(args.bin_dir, b) for b in ("omb-sandbox", "omb-relay", "omb-node", "omb-bench-submit"))
    run_dir = tempfile.mkdtemp(prefix="omb-bench-outbound-")
    os.chmod(run_dir, 0o755)
    rounds = []
    try:
        for i in range(args.rounds):
            rd = run_dir if args.rounds == 1 else os.path.join(run_dir, f"round-{i + 1}")
            os.makedirs(rd, exist_ok=True)
            os.chmod(rd, 0o755)
            results = {}
            for system in args.systems.split(","):
                of = f" (round {i + 1} of {args.rounds})" if args.rounds > 1 else ""
                log(f"{system}: {args.messages} messages{of} ...")
                results[system] = (run_omb if system == "omb" else run_postfix)(rd, args)
            report(results, args)
            rounds.append(results)
        if args.rounds > 1:
            report_medians(rounds)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rounds[0] if args.rounds == 1 else rounds, f, indent=2)
    finally:
        if args.keep:
            log(f"kept {run_dir}")
        else:
            subprocess.run(["rm", "-rf", run_dir])


if __name__ == "__main__":
    main()
