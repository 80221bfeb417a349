"""Per-INVITE decision time (tenant, trunk, trust, route, limits, media flags) on a big policy.

10,000 route prefixes and 1,000 tenants (by network and by domain). Prints the median and p99
of decide_invite() over a mix of INVITEs; the policy is compiled once, as in Kamailio. Then the
flood guard's per-request part (kemi.core.floods: exemption among 1,000 networks, scanner
User-Agent, rate key) over the same sources, 30 % of them not exempt.
Run: make bench  (or .venv/bin/python bench/decide_bench.py)
"""

from __future__ import annotations

import random
import statistics
import time

from kemi.core import floods
from kemi.core.decide import Admit, InviteFacts, decide_invite
from kemi.core.spec import SCANNER_USER_AGENTS
from kemi.policyfile import parse_policy

TENANTS = 1000
PREFIXES = 10_000
SAMPLES = 50_000


def big_policy_yaml(rng: random.Random) -> str:
    lines = [
        "version: bench",
        "vips:",
        "  - {address: 10.0.0.1, rtpengine: ['udp:10.0.0.1:2223']}",
        "  - {address: 10.0.0.2, rtpengine: ['udp:10.0.0.2:2223']}",
        "tenants:",
    ]
    for t in range(TENANTS):
        lines.append(
            f"  - {{name: t{t}, sources: ['172.{16 + t // 250}.{t % 250}.0/24'], "
            f"domains: ['t{t}.example'], limit: {{max: 50}}, media: {{codec_mask: [opus]}}}}"
        )
    lines.append("routes:")
    prefixes: set[str] = set()
    while len(prefixes) < PREFIXES:
        prefixes.add(str(rng.randrange(10, 10 ** rng.randint(3, 8))))
    for i, prefix in enumerate(sorted(prefixes)):
        tenant = f", tenant: t{i % TENANTS}" if i % 3 == 0 else ""
        lines.append(
            f"  - {{name: r{i}, prefix: '{prefix}', destinations: ['sip:gw{i % 7}']{tenant}}}"
        )
    lines.append("  - {name: default, destinations: ['sip:gw0']}")
    lines.append("global_limit: {max: 5000}")
    lines.append("trusted_peers: ['0.0.0.0/0']")
    return "\n".join(lines) + "\n"


def main() -> None:
    rng = random.Random(7)
    text = big_policy_yaml(rng)
    t0 = time.perf_counter()
    policy = parse_policy(text, "bench")
    load_s = time.perf_counter() - t0
    facts = []
    for _ in range(1000):
        t = rng.randrange(TENANTS)
        src = (
            f"172.{16 + t // 250}.{t % 250}.{rng.randrange(1, 250)}"
            if rng.random() < 0.7
            else (f"192.0.2.{rng.randrange(1, 250)}")
        )
        user = str(rng.randrange(10**9, 10**10))
        facts.append(InviteFacts(rng.choice(["10.0.0.1", "10.0.0.2"]), src, user, f"t{t}.example"))
    admitted = sum(isinstance(decide_invite(policy, f), Admit) for f in facts)
    times: list[float] = []
    for i in range(SAMPLES):
        f = facts[i % len(facts)]
        start = time.perf_counter_ns()
        decide_invite(policy, f)
        times.append((time.perf_counter_ns() - start) / 1000)
    times.sort()
    print(f"policy: {TENANTS} tenants, {PREFIXES} prefixes; validated+compiled in {load_s:.2f} s")
    print(f"decide_invite: {admitted}/{len(facts)} admitted in the mix, {SAMPLES} samples")
    print(f"decide_invite median_us={statistics.median(times):.2f} "
          f"p99_us={times[int(len(times) * 0.99)]:.2f}")  # fmt: skip
    networks = [f"172.{16 + t // 250}.{t % 250}.0/24" for t in range(TENANTS)]
    guard = floods.compile_guard(True, 100, 1, 600, networks, SCANNER_USER_AGENTS, True)
    agents = ["Asterisk PBX 18.10", "friendly-scanner", "Linphone/5.0 (belle-sip/5.0)"]
    times = []
    for i in range(SAMPLES):
        f, ua = facts[i % len(facts)], agents[i % len(agents)]
        start = time.perf_counter_ns()
        if not floods.is_exempt(guard, f.source) and not floods.is_scanner(guard, ua):
            floods.window_key(f.source, 1e9, guard.window_s)
        times.append((time.perf_counter_ns() - start) / 1000)
    times.sort()
    print(f"flood guard median_us={statistics.median(times):.2f} "
          f"p99_us={times[int(len(times) * 0.99)]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
