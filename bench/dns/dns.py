"""Drives bench/dns/run: the relay's DNS and NSD, same zone, same dnsperf load."""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dnsperf(port, queries, duration, clients):
    """Runs dnsperf against 127.0.0.1:port; returns (qps, lost %, codes)."""
    out = subprocess.run(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", queries,
         "-l", str(duration), "-c", str(clients), "-q", "200", "-t", "2"],
        capture_output=True, text=True, check=True).stdout
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))
    lost = float(re.search(r"Queries lost:\s+\d+ \(([\d.]+)%\)", out).group(1))
    codes = re.search(r"Response codes:\s+(.*)", out).group(1).strip()
    return qps, lost, codes


def answered(port, name):
    out = subprocess.run(["dig", "+short", "+time=1", "+tries=1", "@127.0.0.1",
                          "-p", str(port), name, "A"], capture_output=True, text=True).stdout
    return out.strip() != ""


def run_omb(args, work):
    d = os.path.join(work, "omb")
    cmd = [args.bin, "--dir", d, "--accounts", str(args.accounts),
           "--changes-secs", str(args.duration)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    port_file = os.path.join(d, "port")
    deadline = time.time() + 900
    while not os.path.exists(port_file):
        if proc.poll() is not None or time.time() > deadline:
            sys.exit("omb-bench-dns did not start")
        time.sleep(0.1)
    time.sleep(0.2)
    port = int(open(port_file).read())
    open(os.path.join(d, "go"), "w").close()
    qps, lost, codes = dnsperf(port, os.path.join(d, "queries.txt"), args.duration, args.clients)
    out, _ = proc.communicate(timeout=120)
    changes = json.loads(out.strip().splitlines()[-1])
    return d, {"qps": qps, "lost_pct": lost, "codes": codes, **changes}


def run_nsd(args, work, omb_dir):
    d = os.path.join(work, "nsd")
    os.makedirs(d)
    shutil.copy(os.path.join(omb_dir, "zone.txt"), os.path.join(d, "zone.txt"))
    port = free_port()
    conf = os.path.join(d, "nsd.conf")
    with open(conf, "w") as f:
        f.write(f"""server:
    port: {port}
    ip-address: 127.0.0.1
    zonesdir: "{d}"
    pidfile: "{d}/nsd.pid"
    database: ""
    xfrdfile: "{d}/xfrd.state"
    zonelistfile: "{d}/zone.list"
    username: ""
    chroot: ""
    logfile: "{d}/nsd.log"
    rrl-ratelimit: 0
    server-count: 1
remote-control:
    control-enable: yes
    control-interface: "{d}/nsd.ctl"
zone:
    name: sandbox.test
    zonefile: zone.txt
""")
    proc = subprocess.Popen(["nsd", "-c", conf, "-d"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        started = time.time()
        while not answered(port, "u0.sandbox.test"):
            if proc.poll() is not None or time.time() - started > 600:
                sys.exit(f"nsd did not start (see {d}/nsd.log)")
            time.sleep(0.2)
        load = time.time() - started
        qps, lost, codes = dnsperf(port, os.path.join(omb_dir, "queries.txt"),
                                   args.duration, args.clients)
        # A change: one more name and a new serial, then a reload.
        reloads = []
        zone = os.path.join(d, "zone.txt")
        for n in range(3):
            text = open(zone).read()
            text = re.sub(r"(IN SOA \S+ \S+ )(\d+)",
                          lambda m: m.group(1) + str(int(m.group(2)) + 1), text, count=1)
            text += f"nsdnew{n}.sandbox.test. 300 IN A 127.0.0.1\n"
            open(zone, "w").write(text)
            t0 = time.time()
            subprocess.run(["nsd-control", "-c", conf, "reload", "sandbox.test"],
                           capture_output=True, check=True)
            while not answered(port, f"nsdnew{n}.sandbox.test"):
                if time.time() - t0 > 120:
                    sys.exit("nsd did not serve the change")
                time.sleep(0.005)
            reloads.append((time.time() - t0) * 1000)
        return {"qps": qps, "lost_pct": lost, "codes": codes, "load_s": load,
                "reload_ms": sorted(reloads)}
    finally:
        proc.terminate()
        proc.wait()


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bin", required=True, help="the omb-bench-dns binary")
    p.add_argument("--accounts", type=int, default=100_000)
    p.add_argument("--duration", type=int, default=20, help="seconds of dnsperf per server")
    p.add_argument("--clients", type=int, default=10, help="dnsperf clients (-c)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="omb-bench-dns-")
    try:
        omb_dir, omb = run_omb(args, work)
        nsd = run_nsd(args, work, omb_dir)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work folder: {work}", file=sys.stderr)
    ratio = omb["qps"] / nsd["qps"]
    print(f"accounts: {args.accounts}, {args.duration} s of dnsperf -c {args.clients} each, "
          "A/MX/TXT/OPENPGPKEY mix")
    print(f"{'':10} {'queries/s':>12} {'lost':>7}  change served after")
    print(f"{'omb':10} {omb['qps']:12.0f} {omb['lost_pct']:6.2f}%  "
          f"p50 {omb['change_ms_p50']:.1f} ms, p99 {omb['change_ms_p99']:.1f} ms, "
          f"max {omb['change_ms_max']:.1f} ms ({omb['changes']} new accounts during the run)")
    print(f"{'nsd':10} {nsd['qps']:12.0f} {nsd['lost_pct']:6.2f}%  "
          f"reload of the whole zone: {', '.join(f'{r:.0f}' for r in nsd['reload_ms'])} ms")
    print(f"ratio omb/nsd queries/s: {ratio:.2f} (target >= 0.5)")
    print(f"response codes: omb {omb['codes']}; nsd {nsd['codes']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"omb": omb, "nsd": nsd, "ratio": ratio}, f, indent=2)


if __name__ == "__main__":
    main()
