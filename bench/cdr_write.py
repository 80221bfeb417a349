"""What one CDR write costs the SIP worker that ends the call (it runs on the BYE's path).

Starts a throwaway redis-server on loopback, then times RedisCdrStore.write (the SET NX + XADD
script, EVALSHA) for new calls and for duplicates, and the failure path: Redis refusing the
connection (one connect, then the spool) and Redis paused after a failure (spool only).
Run: make bench  (or .venv/bin/python bench/cdr_write.py [calls])
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

from kemi.core import cdr
from kemi.core.cdr import EndReason, SetupFacts
from kemi.ops.cdrstore import RedisAddress, RedisCdrStore

PORT = 16999


def record(n: int) -> cdr.Cdr:
    facts = SetupFacts("alice@a.example", "1000@10.0.0.1", "metro", "carrier1", "10.0.0.1",
                       "10.0.0.11", 1_700_000_000_000, 60, 14400)  # fmt: skip
    end, answer = 1_700_000_060_000, 1_700_000_002_000
    return cdr.build_cdr(facts, f"bench-{n}@10.0.0.9", f"tag-{n}", "10.0.0.12", end,
                         EndReason.BYE_CALLER, 200, answer)  # fmt: skip


def timed(calls: int, write: Callable[[int], object]) -> list[float]:
    out = []
    for n in range(calls):
        start = time.perf_counter()
        write(n)
        out.append((time.perf_counter() - start) * 1000)
    return out


def line(what: str, ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100)
    return f"{what:<42} median {statistics.median(ms):.3f} ms  p99 {q[98]:.3f} ms  (n={len(ms)})"


def main(calls: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="cdr-bench-"))
    server = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port",
         str(PORT), "--save", "", "--appendonly", "no", "--dir", str(work)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        probe = redis.Redis(port=PORT)
        for _ in range(100):
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        store = RedisCdrStore(RedisAddress("127.0.0.1", PORT), work / "spool")
        store.write(record(-1))  # connect and load the script once, as a worker's first call
        print(line("write, new call (Redis on loopback)", timed(calls, lambda n:
                   store.write(record(n)))))  # fmt: skip
        print(line("write, duplicate (marker already there)", timed(calls, lambda n:
                   store.write(record(n)))))  # fmt: skip
        down = RedisCdrStore(RedisAddress("127.0.0.1", PORT + 1), work / "spool-down",
                             pause_s=0.0)  # fmt: skip
        print(line("Redis refusing: connect fails, spooled", timed(calls // 10, lambda n:
                   down.write(record(n)))))  # fmt: skip
        paused = RedisCdrStore(RedisAddress("127.0.0.1", PORT + 1), work / "spool-paused")
        paused.write(record(-1))  # the failure that pauses it
        print(line("Redis paused after a failure: spooled", timed(calls, lambda n:
                   paused.write(record(n)))))  # fmt: skip
        start = time.perf_counter()
        paused._paused_until = 0.0
        paused.address = store.address
        paused._make_client = store._make_client
        paused._pid = -1
        done, left = paused.drain(limit=calls + 1)
        took = time.perf_counter() - start
        each = took * 1000 / max(done, 1)
        print(f"drain of {done} spooled records: {each:.3f} ms each, {left} left")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
