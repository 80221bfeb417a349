"""DMQ replication lag: an INVITE admitted on node A -> its call counted on node B.

Two real nodes in network namespaces (kemi.lab.cluster). A SIPp caller places calls on VIP1
(node A) at RATE cps, each DURATION s long, so that during the first DURATION seconds both
channel counts only rise. Both counts are sampled as fast as the JSON-RPC FIFOs answer; for
each value k, lag(k) = (first time B counted k) - (first time A counted k). Prints median,
p99 and max, and the sampling resolution (the lag cannot be measured finer than that).
Run as root: make bench (or .venv/bin/python bench/dmq_lag.py [RATE])
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from kemi.lab.cluster import UNLIMITED, VIP1, start_cluster

DURATION_S = 6


def main() -> None:
    rate = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    sipp_rc = -1
    with tempfile.TemporaryDirectory(prefix="kemi-ha-dmq-lag-") as tmp:
        gen = start_cluster(Path(tmp))
        cluster = next(gen)
        try:
            cluster.uas()
            calls = rate * (DURATION_S - 1)
            # From an address of no tenant: only the global profile (no limit) counts it.
            uac = cluster.uac(
                VIP1, calls=calls, duration_ms=DURATION_S * 1000, rate=rate, source=UNLIMITED
            )
            first_a: dict[int, float] = {}
            first_b: dict[int, float] = {}
            samples, start = 0, time.monotonic()
            while time.monotonic() - start < DURATION_S - 0.5:
                now = time.monotonic()
                n_a = cluster.count_all(cluster.a)
                n_b = cluster.count_all(cluster.b)
                samples += 1
                for k in range(1, n_a + 1):
                    first_a.setdefault(k, now)
                for k in range(1, n_b + 1):
                    first_b.setdefault(k, now)
            resolution_ms = (time.monotonic() - start) / samples * 1000
            sipp_rc = uac.wait(120)
            if sipp_rc != 0:
                errors = (Path(tmp) / f"{uac.name}-errors.log").read_text(errors="replace")
                print("sipp errors (first lines):\n" + "\n".join(errors.splitlines()[:6]))
        finally:
            for _ in gen:
                pass
    lags = sorted((first_b[k] - first_a[k]) * 1000 for k in first_b if k in first_a)
    if not lags:
        print("dmq_lag: no call was counted on both nodes")
        sys.exit(1)
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    print(f"dmq_lag: rate={rate}cps calls_measured={len(lags)} "
          f"median_ms={statistics.median(lags):.1f} p99_ms={p99:.1f} max_ms={lags[-1]:.1f} "
          f"sampling_resolution_ms={resolution_ms:.1f} sipp_rc={sipp_rc}")  # fmt: skip


if __name__ == "__main__":
    main()
