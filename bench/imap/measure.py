"""The IMAP measurements of bench/imap, the same for every server: SELECT,
FETCH 1:* (FLAGS ENVELOPE), random UID FETCH n BODY[] from several client
processes (every body checked against the message sent), and memory."""

import multiprocessing as mp
import os
import random
import re
import statistics
import time

from imapclient import Imap, ImapError, fetch_items, uid_of
from procs import MiB, MemSampler, cpu_ticks_total, log, now, proc_mem, proc_name, reset_peak


def median(v):
    return statistics.median(v) if v else float("nan")


def pct(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = min(len(sorted_vals) - 1, max(0, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


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


# What the random fetches ask for: BODY[] sets \Seen on a message not yet seen (what a
# mail app opening a message does); BODY.PEEK[] changes nothing.
FETCH_ITEMS = {"peek": b"BODY.PEEK[]", "body": b"BODY[]"}


def fetch_worker(k, srv, uids, msgs, args, item, ready, go, start_at, done, may_logout, results):
    """One client: random UID FETCH n <item> until the shared deadline."""
    try:
        rng = random.Random(args.seed * 1000 + k)
        c = srv.connect(select=True)
        ready.put(k)
        go.wait()
        t0 = start_at.value
        t_end = t0 + args.duration
        while now() < t0:
            time.sleep(0.001)
        n = nbytes = failed = 0
        fails = []
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

            try:
                c.command(b"UID FETCH %d (%s)" % (uids[i], item), on)
            except ImapError as e:
                # A NO or BAD: counted as failed, not as a fetch; the client goes on.
                failed += 1
                if len(fails) < 3:
                    fails.append(str(e))
                continue
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
                     "lat": lat, "cpu": cpu,
                     "failed": failed, "fails": fails})
    except Exception as e:      # reported, never hangs the parent
        try:
            done.put(k)
        except Exception:
            pass
        results.put({"k": k, "error": f"{type(e).__name__}: {e}"})


def random_fetches(srv, uids, msgs, args, item):
    ctx = mp.get_context("fork")
    ready, done, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    go, may_logout = ctx.Event(), ctx.Event()
    start_at = ctx.Value("d", 0.0)
    procs = [ctx.Process(target=fetch_worker, args=(k, srv, uids, msgs, args, item, ready, go, start_at, done,
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
        "failed": sum(r["failed"] for r in ok), "failed_samples": [f for r in ok for f in r["fails"]][:3],
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
        # Dovecot rescans a Maildir folder whose directory changed in the last
        # couple of seconds, and once more at the next SELECT if it had changed so
        # recently at the last one (the first SELECT just moved every file from
        # new/ to cur/). A mailbox at rest is the case to time: wait, SELECT once
        # untimed, then time.
        time.sleep(args.settle)
        c = srv.connect()
        c.select("INBOX")
        c.logout()
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
        r["random"] = {}
        for mode in args.fetch:
            item = FETCH_ITEMS[mode]
            log(f"  {srv.name}: {args.clients} clients fetching random {item.decode()} for {args.duration:g} s ...")
            rnd = r["random"][mode] = random_fetches(srv, uids, msgs, args, item)
            if rnd["errors"]:
                log(f"  {srv.name}: CLIENT ERRORS: {rnd['errors'][:3]}")
            if rnd["failed"]:
                log(f"  {srv.name}: {rnd['failed']} fetches FAILED, e.g. {rnd['failed_samples'][:2]}")
            if rnd["bad"]:
                log(f"\n!!!!! {srv.name}: {rnd['bad']} of {rnd['fetches']} {item.decode()} fetched are NOT "
                    "the message sent !!!!!")
                for b in rnd["bad_samples"]:
                    log(f"!!!!!   {b}")
            log(f"  {srv.name}: {rnd['per_s']:.0f} fetches/s, p50 {rnd['lat_p50_ms']:.2f} ms, "
                f"p99 {rnd['lat_p99_ms']:.2f} ms; {rnd['exact']} identical, {rnd['traced']} identical after "
                f"prepended trace fields, {rnd['bad']} wrong")
    r["rss_max"] = mem.max_rss
    r["pss_max"] = mem.max_pss
    r["procs_max"] = mem.max_procs
    # Peak: the largest sum of VmHWM over the processes alive at one sample (HWM reset
    # before the first SELECT, so what the fill or the Maildir writing used is not in it).
    r["peak"] = mem.max_hwm
    return r
