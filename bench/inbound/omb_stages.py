#!/usr/bin/env python3
"""Where the time goes in the omb path, from an omb-sandbox log taken at OMB_LOG=info.

    bench/inbound/run --systems omb --omb-log info --keep
    bench/inbound/omb_stages.py /tmp/omb-bench-inbound-XXXX/omb-sandbox.log

For every queue id it takes three log lines (their timestamps are written when the
event is logged, so they include a little logging delay):

  spooled            relay: encrypted and committed to the spool, 250 about to go out
  delivery stored    node:  decrypted, committed to mail.db, ack about to go out
  delivered to node  relay: ack received and the spool row deleted

and prints the distribution of each stage, plus the gaps between consecutive node
stores (while a backlog exists this is the node's service time per message, since
the node stores one delivery at a time).
"""

import re
import sys
from datetime import datetime

LINE = re.compile(r"^(\S+Z)\s+INFO .*?(spooled|delivery stored|delivered to node) queue_id=(\S+)")


def ts(s):
    # 2026-11-27T06:05:29.706880Z
    return datetime.strptime(s[:26], "%Y-%m-%dT%H:%M:%S.%f").timestamp()


def pct(v, p):
    if not v:
        return float("nan")
    v = sorted(v)
    return v[min(len(v) - 1, int(p / 100.0 * len(v)))]


def show(name, vals):
    ms = [x * 1000 for x in vals]
    print(f"  {name:38} n={len(ms):6}  p50 {pct(ms, 50):8.2f}  p90 {pct(ms, 90):8.2f}  "
          f"p99 {pct(ms, 99):8.2f}  max {max(ms) if ms else float('nan'):8.2f} ms")


def main(path):
    ev = {}
    stores = []
    with open(path, errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            t, what, qid = ts(m.group(1)), m.group(2), m.group(3)
            ev.setdefault(qid, {})[what] = t
            if what == "delivery stored":
                stores.append(t)
    full = [e for e in ev.values() if len(e) == 3]
    print(f"{path}: {len(ev)} queue ids, {len(full)} with all three events")
    show("spooled -> node stored", [e["delivery stored"] - e["spooled"] for e in full])
    show("node stored -> relay deleted (ack)", [e["delivered to node"] - e["delivery stored"] for e in full])
    stores.sort()
    gaps = [b - a for a, b in zip(stores, stores[1:])]
    show("gap between consecutive node stores", gaps)
    if len(stores) > 1:
        busiest = 0
        j = 0
        for i in range(len(stores)):
            while stores[i] - stores[j] > 1.0:
                j += 1
            busiest = max(busiest, i - j + 1)
        print(f"  node stores: {len(stores)} in {stores[-1] - stores[0]:.1f} s, busiest second {busiest}")
    spooled = sorted(e["spooled"] for e in ev.values() if "spooled" in e)
    if len(spooled) > 1:
        print(f"  relay spool commits: {len(spooled)} in {spooled[-1] - spooled[0]:.1f} s")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
