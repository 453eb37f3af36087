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
import json
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from corpus import corpus, message_id  # noqa: E402
from dovecot import bench_dovecot  # noqa: E402
from imapclient import ImapError  # noqa: E402
from measure import median  # noqa: E402
from omb import NO_IMAP, bench_omb  # noqa: E402
from procs import MiB, busy_snapshot, log, now  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


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
    out = {
        "select_cold": r["select_cold_s"],
        "select": median(r["select_s"]),
        "fetch_envelope": median(r["fetch_envelope_s"]),
    }
    for mode, rnd in r["random"].items():
        out[f"fetch_{mode}_per_s"] = rnd["per_s"]
        out[f"fetch_{mode}_per_cpu_s"] = rnd["per_server_cpu_s"]
    out.update(rss=r["rss_max"], pss=r["pss_max"], peak=r["peak"])
    return out


ITEM_LABEL = {"peek": "BODY.PEEK[]", "body": "BODY[] (sets \\Seen)"}


def rows(args):
    """(key, label, unit, target) of every figure, in the order printed."""
    out = [
        ("select_cold", "SELECT INBOX, first after start (ms)", "ms", None),
        ("select", f"SELECT INBOX, median of {args.select_runs} (ms)", "ms", "<= dovecot"),
        ("fetch_envelope", f"FETCH 1:* (FLAGS ENVELOPE), median of {args.fetch_runs} (ms)", "ms", "<= dovecot"),
    ]
    for mode in args.fetch:
        out += [(f"fetch_{mode}_per_s", f"UID FETCH {ITEM_LABEL[mode]} /s, {args.clients} clients", "/s", ">= dovecot"),
                (f"fetch_{mode}_per_cpu_s", "  per CPU-second of the server", "/s", None)]
    return out + [
        ("rss", "RSS, largest sample during IMAP (MiB)", "MiB", "omb < 50 MiB"),
        ("pss", "PSS, largest sample (MiB)", "MiB", None),
        ("peak", "peak RSS (sum of VmHWM) during IMAP (MiB)", "MiB", "omb < 50 MiB"),
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


def other(x):
    """CPU % (of one core) used by neither the server nor the driver during a phase."""
    return max(0.0, x["machine_cpu_pct"] - x["server_cpu_pct"] - x["driver_cpu_pct"])


def report(results, args, ctx, sizes):
    d, o = figures(results.get("dovecot")), figures(results.get("omb"))
    print()
    print(f"IMAP benchmark: {args.messages} messages (median {statistics.median(sizes) / 1024:.1f} KiB, "
          f"{sum(sizes) / MiB:.0f} MiB in all), loopback, plaintext LOGIN; random fetches for "
          f"{args.duration:g} s each")
    print(f"machine: nproc={os.cpu_count()}, load average {' '.join(open('/proc/loadavg').read().split()[:3])}")
    for label, (busy, top) in ctx.items():
        print(f"  {label}: CPU busy {busy:.0f}% over 1 s; top: {top}")
    if "dovecot" in results:
        x = list(results["dovecot"]["random"].values())[-1]
        print(f"dovecot: {results['dovecot'].get('version', '?')}; its memory is the sum over its processes "
              f"({x['procs']} at the end of the fetches: {x['process_names']})")
    print()
    w = 50
    print(f"{'figure':{w}} {'dovecot':>9} {'omb':>9} {'omb/dovecot':>11}  target")
    print("-" * (w + 50))
    verdicts = {}
    for key, label, unit, target in rows(args):
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
            print(f"{name}: FETCH ENVELOPE runs {[round(t * 1000) for t in r['fetch_envelope_s']]} ms, "
                  f"SELECT runs {[round(t * 1000, 1) for t in r['select_s']]} ms")
            for mode, x in r["random"].items():
                print(f"{name} {ITEM_LABEL[mode].split()[0]}: {x['fetches']} fetches ({x['mib_per_s']:.1f} MiB/s), "
                      f"latency p50 {x['lat_p50_ms']:.2f} ms p99 {x['lat_p99_ms']:.2f} ms; CPU (100% = one core) "
                      f"server {x['server_cpu_pct']:.0f}%, driver {x['driver_cpu_pct']:.0f}%, "
                      f"everything else {other(x):.0f}%")
                if other(x) > 20:
                    print(f"  ^ something else used {other(x):.0f}% of a core during this phase: "
                          "these figures are low; run again on a quiet machine")
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
    fetched = {n: list(r["random"].values()) for n, r in results.items() if r and "random" in r}
    bad = [(n, sum(x["bad"] for x in xs)) for n, xs in fetched.items() if any(x["bad"] for x in xs)]
    for n, k in bad:
        print(f"!!!!! ERROR: {n} served {k} BODY[] that differ from the message sent — its figures are not valid !!!!!")
    for n, xs in fetched.items():
        for mode, x in zip(results[n]["random"], xs):
            if x["errors"]:
                print(f"!!!!! ERROR: {n} {ITEM_LABEL[mode].split()[0]}: {len(x['errors'])} of {x['clients']} clients "
                      f"stopped on an error, e.g. {x['errors'][0]} !!!!!")
            if x["failed"]:
                print(f"!!!!! ERROR: {n} {ITEM_LABEL[mode].split()[0]}: {x['failed']} fetches answered NO/BAD "
                      f"(not counted), e.g. {x['failed_samples'][0]} !!!!!")
    checked = {n: sum(x["fetches"] for x in xs) for n, xs in fetched.items()}
    if checked and not bad:
        note = "; the node's carry the relay's trace fields in front" if "omb" in checked else ""
        counts = ", ".join(f"{n} {k}" for n, k in checked.items())
        print(f"correctness: every BODY[] fetched was the message sent, byte for byte ({counts} checked{note})")
    verdicts = {k: v for k, v in verdicts.items() if v in ("target met", "NOT met")}
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
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds between the first SELECT and the timed ones (Dovecot rescans a Maildir "
                    "changed in the last ~2 s)")
    ap.add_argument("--fetch", default="peek,body",
                    help="random-fetch phases, in order: peek (BODY.PEEK[]), body (BODY[], which sets \\Seen)")
    ap.add_argument("--systems", default="dovecot,omb", help="dovecot, omb, or both (comma-separated)")
    ap.add_argument("--smtp-sessions", type=int, default=8, help="parallel SMTP sessions filling the node")
    ap.add_argument("--fill-count", choices=("imap", "db"), default="imap",
                    help="how the fill is seen complete: IMAP STATUS once a second on one session, or the "
                    "node's mail.db read-only (no IMAP traffic during the fill)")
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
    args.fetch = [s.strip() for s in args.fetch.split(",") if s.strip()]
    if not set(args.fetch) <= {"peek", "body"}:
        ap.error("--fetch takes peek, body or both")
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
    bad = any(x["bad"] or x["errors"] or x["failed"] for r in results.values() if r and "random" in r for x in r["random"].values())
    sys.exit(2 if bad else 1 if failed else 0)


if __name__ == "__main__":
    main()
