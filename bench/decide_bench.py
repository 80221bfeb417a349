"""Per-INVITE decision time (tenant, trunk, trust, route, limits, media flags) on a big policy.

10,000 route prefixes and 1,000 tenants (by network and by domain). Prints the median and p99
of decide_invite() over a mix of INVITEs; the policy is compiled once, as in Kamailio. Then the
rewrite decision: INVITEs from a trunk whose numbers are normalised to E.164 before the lookup,
to a gateway-set route that strips the '+' and adds a prefix after it, and the
P-Asserted-Identity normalisation the shell then applies (rewrite_header). Then the flood
guard's per-request part (kemi.core.floods: exemption among 1,000 networks, scanner User-Agent,
rate key) over the same sources, 30 % of them not exempt.
Run: make bench  (or .venv/bin/python bench/decide_bench.py)
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any

from kemi.core import floods
from kemi.core.decide import Admit, InviteFacts, decide_invite
from kemi.core.numbers import rewrite_header
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
    lines.append("  - {name: germany, prefix: '+49', gateway_set: carriers,"
                 " rewrite: {plus: strip, prefix: '77#', diversion: remove}}")  # fmt: skip
    lines.append("trunks:")
    lines.append("  - {name: pbx, sources: ['10.200.0.0/16'],"
                 " rewrite: {e164: true, country_code: '49', pai: normalise}}")  # fmt: skip
    lines.append("gateway_sets:")
    lines.append("  - name: carriers")
    lines.append("    gateways: [{uri: 'sip:10.9.0.1', priority: 1, weight: 70},")
    lines.append("               {uri: 'sip:10.9.0.2', priority: 1, weight: 30},")
    lines.append("               {uri: 'sip:10.9.0.3'}]")
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
    times = timed(lambda f: decide_invite(policy, f), facts)
    print(f"policy: {TENANTS} tenants, {PREFIXES} prefixes; validated+compiled in {load_s:.2f} s")
    print(f"decide_invite: {admitted}/{len(facts)} admitted in the mix, {SAMPLES} samples")
    report("decide_invite", times)

    trunk_facts = [
        InviteFacts("10.0.0.1", f"10.200.{rng.randrange(256)}.{rng.randrange(1, 255)}",
                    f"0{rng.randrange(30, 99)}{rng.randrange(10**5, 10**7)}", "carrier.example")
        for _ in range(1000)
    ]  # fmt: skip
    rewritten = [decide_invite(policy, f) for f in trunk_facts]
    assert all(isinstance(d, Admit) and d.route.name == "germany" for d in rewritten)
    sample = rewritten[0]
    assert isinstance(sample, Admit)
    print(f"rewrite: {trunk_facts[0].ruri_user} from the trunk -> {sample.ruri_user}")
    report("decide_invite with rewrites", timed(lambda f: decide_invite(policy, f), trunk_facts))
    pai = ['"Desk 1" <sip:0301234567@pbx.example;user=phone>']
    report("rewrite_header P-Asserted-Identity",
           timed(lambda v: rewrite_header(v, sample.identity, "pai"), pai))  # fmt: skip

    networks = [f"172.{16 + t // 250}.{t % 250}.0/24" for t in range(TENANTS)]
    guard = floods.compile_guard(True, 100, 1, 600, networks, SCANNER_USER_AGENTS, True)
    agents = ["Asterisk PBX 18.10", "friendly-scanner", "Linphone/5.0 (belle-sip/5.0)"]
    requests = [(f.source, agents[i % len(agents)]) for i, f in enumerate(facts)]

    def guard_request(request: tuple[str, str]) -> None:
        source, ua = request
        if not floods.is_exempt(guard, source) and not floods.is_scanner(guard, ua):
            floods.window_key(source, 1e9, guard.window_s)

    report("flood guard", timed(guard_request, requests))


def timed(call: Callable[[Any], object], inputs: list[Any]) -> list[float]:
    times: list[float] = []
    for i in range(SAMPLES):
        item = inputs[i % len(inputs)]
        start = time.perf_counter_ns()
        call(item)
        times.append((time.perf_counter_ns() - start) / 1000)
    times.sort()
    return times


def report(name: str, times: list[float]) -> None:
    print(f"{name} median_us={statistics.median(times):.2f} "
          f"p99_us={times[int(len(times) * 0.99)]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
