"""Call setup time of legitimate calls without and during a flood (issue 17: "within 2x").

Two real nodes in network namespaces (kemi.lab.cluster), trusted_peers narrowed so that FLOODER
is a stranger, floods at the policy defaults (100 requests/s per source, 600 s ban). Twice, 30
calls from CLIENT through VIP1 (node A) at 3 cps: first alone, then while FLOODER sends 1,000
INVITE/s for 10 s to VIP1. The setup time is SIPp's response time (INVITE sent -> 200 received,
`rtd` in tests/sipp/uac.xml, every value traced with -trace_rtt). Prints median, p95 and max of
both runs and the ratio of the medians. On a shared 2-core machine other load moves these figures:
read them as an order of magnitude, not a pass/fail.
Run as root: .venv/bin/python bench/flood_setup.py
"""

from __future__ import annotations

import csv
import statistics
import sys
import tempfile
from pathlib import Path

from kemi.lab.cluster import FLOODER, TRUSTED_CLIENTS, VIP1, Cluster, policy_text, start_cluster
from kemi.lab.sipp import SippRun

CALLS, RATE = 30, 3


def setup_times(cluster: Cluster, run: SippRun) -> list[float]:
    """The response times (ms) SIPp traced for `run` (its _rtt.csv in the log directory)."""
    if run.wait(120) != 0:
        print(f"{run.name} failed:\n{run.output()[-1500:]}", file=sys.stderr)
    pid = run.proc.pid
    files = [p for p in cluster.log_dir.glob("uac_*_rtt.csv") if str(pid) in p.name]
    times: list[float] = []
    for path in files or sorted(cluster.log_dir.glob("uac_*_rtt.csv"))[-1:]:
        with path.open() as f:
            for row in csv.DictReader(f, delimiter=";"):
                key = next(k for k in row if k.strip().lower().startswith("response_time"))
                times.append(float(row[key]))
        path.unlink()
    return times


def summary(name: str, times: list[float]) -> str:
    if not times:
        return f"{name}: no response time traced"
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return (f"{name}: {len(times)} calls, median {statistics.median(times):.2f} ms, "
            f"p95 {p95:.2f} ms, max {ordered[-1]:.2f} ms")  # fmt: skip


def main() -> None:
    policy = policy_text(2, trusted=TRUSTED_CLIENTS)
    with tempfile.TemporaryDirectory(prefix="kemi-ha-flood-") as tmp:
        gen = start_cluster(Path(tmp), policy=policy, client_addresses=(FLOODER,))
        cluster = next(gen)
        try:
            cluster.uas()
            trace = ("-trace_rtt", "-rtt_freq", "1")
            alone = setup_times(cluster, cluster.uac(VIP1, CALLS, 500, rate=RATE, extra=trace))
            flood = cluster.flood(FLOODER, VIP1, rate=1000, count=10_000)
            loaded = setup_times(cluster, cluster.uac(VIP1, CALLS, 500, rate=RATE, extra=trace))
            flood.wait(60)
        finally:
            for _ in gen:
                pass
    print(summary("unloaded", alone))
    print(summary("during a 1000 INVITE/s flood", loaded))
    if alone and loaded:
        print(f"ratio of medians: {statistics.median(loaded) / statistics.median(alone):.2f}")


if __name__ == "__main__":
    main()
