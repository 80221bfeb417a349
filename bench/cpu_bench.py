"""Kamailio CPU per call: kemi-ha (Python, KEMI) against bench/native.cfg, side by side.

`make bench-cpu` runs this inside a network namespace of its own (loopback only, the ports of
`make run`, nothing shared with the host). Redis and one rtpengine per VIP are started once
(kemi.ops.stack, the code of `make run`); Kamailio is started alternately with kemi-ha's
kamailio.cfg and with bench/native.cfg, on the same ports, the same node include and the same
policy (tenant by source network with a channel limit and NAT detection, a global limit, a
prefix route with a number rewrite and two destinations, media flags on the VIP, floods on), so
both check the source against the flood exemptions, read two dialog profiles, rewrite the R-URI
user, ask nathelper for every message, make the same rtpengine calls and write the same call
record to Redis at the end of each call (native.cfg's header lists what it does not do).

Each pair runs both Kamailios under the same SIPp loads, in alternating order (kemi first in odd
pairs, native first in even ones), so a slow drift of the machine's load cancels in the ratio:
- SIP only: INVITE/180/200/ACK/BYE without SDP (the BYE still asks rtpengine to delete);
- SDP + RTP: the same with SDP both ways and G.711 RTP through the VIP's rtpengine, echoed.
CPU = utime+stime of every process of Kamailio's process group (it runs in its own session),
from /proc/<pid>/stat, over the load, divided by the calls SIPp completed; rtpengine the same.
Then a short ramp (SIP only) finds each one's highest rate with 0 failed calls and SIPp keeping
the asked rate. The last line is
`bench-cpu: ratio_sip=X ratio_rtp=Y maxcps_kemi=A maxcps_native=B` (median ratios of the pairs).

Run: make bench-cpu   (options: .venv/bin/python bench/cpu_bench.py --help)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kemi.core.cdr import WRITE_ENDED_LUA
from kemi.core.spec import SCANNER_USER_AGENTS
from kemi.lab.sipp import SCENARIOS, SippRun, sipp
from kemi.ops.procs import Daemon
from kemi.ops.stack import REPO_ROOT, Stack, StackConfig
from kemi.policyfile import parse_policy

BENCH = REPO_ROOT / "bench"
NATIVE_CFG = BENCH / "native.cfg"
SIP_UAC, SIP_UAS = str(BENCH / "sipp" / "uac_nosdp.xml"), str(BENCH / "sipp" / "uas_nosdp.xml")
RTP_UAC, RTP_UAS = str(SCENARIOS / "uac.xml"), str(SCENARIOS / "uas.xml")
VIP1, VIP2 = "127.0.0.1", "127.0.0.2"
SIP_PORT, UAS_PORT, UAC_PORT = 5060, 5080, 5070
TENANT, TENANT_NET, TRUSTED = "bench", "127.0.0.0/24", "127.0.0.0/8"
LIMIT_GLOBAL, LIMIT_TENANT = 100_000, 50_000
REWRITE_STRIP, REWRITE_PREFIX = 1, "49"  # the route's number rewrite: 1000 -> 49000
CLK_TCK = os.sysconf("SC_CLK_TCK")

POLICY = f"""\
version: bench-cpu
vips:
  - address: {VIP1}
    rtpengine: ["udp:{VIP1}:2223"]
    media: {{replace: [origin, session-connection]}}
  - address: {VIP2}
    rtpengine: ["udp:{VIP2}:2223"]
    media: {{replace: [origin, session-connection]}}
tenants:
  - name: {TENANT}
    sources: ["{TENANT_NET}"]
    limit: {{max: {LIMIT_TENANT}, code: 486}}
    nat: {{mode: detect}}
routes:
  - name: bench
    tenant: {TENANT}
    prefix: "1"
    destinations: ["sip:127.0.0.1:{UAS_PORT}", "sip:127.0.0.1:{UAS_PORT + 1}"]
    rewrite: {{strip: {REWRITE_STRIP}, prefix: "{REWRITE_PREFIX}"}}
global_limit: {{max: {LIMIT_GLOBAL}, code: 503, retry_after: 10}}
trusted_peers: ["{TRUSTED}"]
"""

ERE_SPECIALS = set(".[]()*+?{}|^$\\")


def ere_alternatives(words: list[str]) -> str:
    """A POSIX extended regex matching any of `words` (Kamailio's =~), specials escaped."""
    return "|".join("".join(f"\\{c}" if c in ERE_SPECIALS else c for c in w) for w in words)


def native_values() -> str:
    """The bench policy's decisions as defines for bench/native.cfg (written next to
    kemi-ha-node.cfg): taken from the compiled policy where kemi-ha reads them, so that both
    sides use the same flags, limits and flood guard."""
    policy = parse_policy(POLICY)
    guard = policy.floods
    key = (VIP1, TENANT)
    agents = sorted({a.lower() for a in SCANNER_USER_AGENTS})
    values = {
        "BENCH_VIP1": f'"{VIP1}"',
        "BENCH_VIP2": f'"{VIP2}"',
        "BENCH_TRUSTED": TRUSTED,
        "BENCH_TENANT_NET": TENANT_NET,
        "BENCH_TENANT": f'"{TENANT}"',
        "BENCH_ROUTE_RE": '"^1"',
        "BENCH_LIMIT_GLOBAL": str(LIMIT_GLOBAL),
        "BENCH_LIMIT_TENANT": str(LIMIT_TENANT),
        "BENCH_SDP_MAX_BYTES": str(policy.sdp_limits.max_bytes),
        "BENCH_MFLAGS": f'"{policy.media_flags[key]}"',
        "BENCH_NAT_MFLAGS": f'"{policy.nat_media_flags[key]}"',
        "BENCH_REWRITE_PREFIX": f'"{REWRITE_PREFIX}"',  # native.cfg strips REWRITE_STRIP (1)
        "BENCH_DESTINATIONS": f'"sip:127.0.0.1:{UAS_PORT} sip:127.0.0.1:{UAS_PORT + 1}"',
        "BENCH_FIRST_DESTINATION": f'"sip:127.0.0.1:{UAS_PORT}"',
        "BENCH_SECOND_DESTINATION": f'"sip:127.0.0.1:{UAS_PORT + 1}"',
        "BENCH_FLOOD_MAX": str(guard.max_requests),
        "BENCH_FLOOD_WINDOW": str(guard.window_s),
        "BENCH_BAN_S": str(guard.ban_s),
        "BENCH_SCANNER_RE": f'"{ere_alternatives(agents)}"',
        "BENCH_SIP_PORT": str(SIP_PORT),
        "BENCH_TLS_PORT": str(StackConfig.tls_port),
        "BENCH_NODE": f'"{StackConfig.node_address}"',  # the call records' node
    }
    lines = [
        "# Generated by bench/cpu_bench.py: the bench policy's decisions for bench/native.cfg."
    ]
    return "\n".join([*lines, *(f"#!define {k} {v}" for k, v in values.items()), ""])


@dataclass(frozen=True)
class Load:
    name: str  # "sip" | "rtp"
    uac: str
    uas: str  # scenario paths
    rate: int
    seconds: float
    hold_ms: int

    @property
    def calls(self) -> int:
        return int(self.rate * self.seconds)


@dataclass(frozen=True)
class Result:
    variant: str
    load: str
    ok: int
    failed: int
    kamailio_s: float
    rtpengine_s: float
    elapsed: float
    shm_max_mb: float = 0.0  # Kamailio's shared memory high-water mark since its start

    @property
    def clean(self) -> bool:
        """At most 1 % failed calls: CPU per call comparable (failures mean retransmissions)."""
        return self.failed <= 0.01 * (self.ok + self.failed)

    @property
    def kam_ms(self) -> float:
        return 1000 * self.kamailio_s / max(self.ok, 1)

    @property
    def rtp_ms(self) -> float:
        return 1000 * self.rtpengine_s / max(self.ok, 1)


def group_cpu(daemon: Daemon | None) -> float:
    """utime+stime (s) of every live process of the daemon's process group (its session)."""
    if daemon is None or daemon.pid is None:
        return 0.0
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        # after the comm: state(0) ppid(1) pgrp(2) ... utime(11) stime(12)
        if int(fields[2]) == daemon.pid:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


class Bench:
    def __init__(
        self,
        run_dir: Path,
        children: int,
        shm_mb: int,
        pkg_mb: int,
        profile: bool = False,
        tcp_children: int | None = None,  # None: make run's
    ) -> None:
        self.run_dir = run_dir
        self.profile = profile
        self.kemi_cfg: Path | None = None  # another cfg in kemi-ha's place (--kemi-cfg)
        self.kemi_root: Path | None = None  # another checkout's kemi-ha (--kemi-root)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "policy.yaml").write_text(POLICY)
        self.common = dict(
            run_dir=run_dir,
            policy_path=run_dir / "policy.yaml",
            children=children,
            shm_mb=shm_mb,
            pkg_mb=pkg_mb,
            tcp_children=tcp_children or StackConfig.tcp_children,
            # 5000 ports per VIP (4 per call), below the ephemeral range: 100 cps x 3 s fits
            rtp_port_base=20000,
            rtp_ports_per_vip=5000,
        )
        self.media = Stack(StackConfig(components=("redis", "rtpengine"), **self.common))
        self.counter = 0

    @contextlib.contextmanager
    def kamailio(self, variant: str) -> Iterator[Stack]:
        cfg = NATIVE_CFG if variant == "native" else self.kemi_cfg
        (self.run_dir / "bench-native.cfg").write_text(native_values())
        env = {}
        if self.profile and variant == "kemi":  # cProfile in every Kamailio process
            profiles = self.run_dir / "profiles"
            profiles.mkdir(exist_ok=True)
            env["KEMI_HA_PROFILE"] = str(profiles)
        root = {"kemi_root": self.kemi_root} if self.kemi_root and variant == "kemi" else {}
        stack = Stack(StackConfig(components=("kamailio",), kamailio_cfg=cfg, extra_env=env,
                                  **root, **self.common))  # fmt: skip
        stack.start()
        try:
            time.sleep(1.0)  # let the workers finish importing before the CPU is sampled
            yield stack
        finally:
            stack.stop()

    def run_load(self, stack: Stack, variant: str, load: Load) -> Result:
        self.counter += 1
        tag = f"{self.counter:03d}-{variant}-{load.name}-{load.rate}"
        logs = self.run_dir / "sipp"
        logs.mkdir(exist_ok=True)
        echo = ["-rtp_echo"] if load.name == "rtp" else []
        uas = sipp(f"{tag}-uas", load.uas, logs, VIP1, UAS_PORT, 6000, *echo)
        stat = logs / f"{tag}-uac.csv"
        kam0 = group_cpu(stack.kamailio)
        rtp0 = sum(group_cpu(d) for d in self.media.rtpengines.values())
        start = time.monotonic()
        uac: SippRun = sipp(
            f"{tag}-uac", load.uac, logs, VIP1, UAC_PORT, 7000,
            "-s", "1000", "-r", str(load.rate), "-m", str(load.calls), "-d", str(load.hold_ms),
            "-l", str(max(load.rate * (load.hold_ms // 1000 + 3), 100)),
            "-timeout", str(int(load.seconds * 3 + 60)), "-timeout_error",
            "-recv_timeout", "10000", "-trace_stat", "-fd", "1", "-stf", str(stat),
            target=f"{VIP1}:{SIP_PORT}", settle=0,
        )  # fmt: skip
        try:
            uac.wait(load.seconds * 3 + 90)
        finally:
            uac.stop()
            uas.stop()
        elapsed = time.monotonic() - start
        time.sleep(0.3)
        kam = group_cpu(stack.kamailio) - kam0
        rtp = sum(group_cpu(d) for d in self.media.rtpengines.values()) - rtp0
        ok, failed = sipp_counts(stat)
        return Result(variant, load.name, ok, failed, kam, rtp, elapsed, shm_max_mb(stack))


def shm_max_mb(stack: Stack) -> float:
    """core.shmmem max_used over JSON-RPC (0 if Kamailio does not answer)."""
    try:
        info = stack.rpc.call("core.shmmem")
        return int(info.get("max_used", 0)) / 2**20
    except Exception:  # a figure for the report, never a reason to fail the run
        return 0.0


def sipp_counts(stat: Path) -> tuple[int, int]:
    """Successful and failed calls from the last line of SIPp's -trace_stat file."""
    try:
        lines = stat.read_text().strip().splitlines()
    except OSError:
        return 0, 0
    if len(lines) < 2:
        return 0, 0
    header = lines[0].split(";")
    last = lines[-1].split(";")
    return (int(last[header.index("SuccessfulCall(C)")]),
            int(last[header.index("FailedCall(C)")]))  # fmt: skip


def fmt_pair(n: int, kemi: Result, native: Result) -> str:
    return (
        f"pair {n} {kemi.load}: kamailio kemi {kemi.kam_ms:.3f} ms/call native "
        f"{native.kam_ms:.3f} ms/call ratio {kemi.kam_ms / native.kam_ms:.2f} | rtpengine "
        f"kemi {kemi.rtp_ms:.3f} native {native.rtp_ms:.3f} ms/call | calls ok/failed kemi "
        f"{kemi.ok}/{kemi.failed} native {native.ok}/{native.failed}"
        + ("" if kemi.clean and native.clean else " | over 1 % failed: not in the median")
    )


def max_clean(bench: Bench, rates: list[int], seconds: float) -> dict[str, int]:
    """The highest rate (SIP only) with 0 failed calls and SIPp keeping the rate, per variant;
    each rate is tried on both (interleaved) until a variant's first unclean step."""
    best = {"kemi": 0, "native": 0}
    going = ["kemi", "native"]
    for rate in rates:
        load = Load("sip", SIP_UAC, SIP_UAS, rate, seconds, 500)
        for variant in list(going):
            with bench.kamailio(variant) as stack:
                res = bench.run_load(stack, variant, load)
            # SIPp ends calls/rate s after its start plus the last call's hold when it keeps up
            kept_up = res.elapsed <= seconds * 1.1 + 2.0
            clean = res.failed == 0 and res.ok == load.calls and kept_up
            print(f"ramp {variant} {rate} cps: {res.ok} ok, {res.failed} failed, "
                  f"{res.elapsed:.1f} s, kamailio {res.kam_ms:.3f} ms/call, shm max used "
                  f"{res.shm_max_mb:.0f} MB"
                  f" -> {'clean' if clean else 'not clean'}", flush=True)  # fmt: skip
            if clean:
                best[variant] = rate
            else:
                going.remove(variant)
        if not going:
            break
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--pairs", type=int, default=5)  # the figures of record: 5 pairs
    ap.add_argument("--sip-rate", type=int, default=300)
    ap.add_argument("--sip-seconds", type=float, default=30)
    ap.add_argument("--rtp-rate", type=int, default=100)
    ap.add_argument("--rtp-seconds", type=float, default=30)
    ap.add_argument("--rtp-hold-ms", type=int, default=3000)
    ap.add_argument(
        "--ramp",
        default="400,600,800,1000,1200,1500,1800,2100,2400",
        help="SIP-only rates tried in order for the max clean cps ('' skips)",
    )
    ap.add_argument("--ramp-seconds", type=float, default=8)
    ap.add_argument("--children", type=int, default=StackConfig.children)
    ap.add_argument("--shm-mb", type=int, default=StackConfig.shm_mb)
    ap.add_argument("--pkg-mb", type=int, default=StackConfig.pkg_mb)
    ap.add_argument("--run-dir", type=Path, default=REPO_ROOT / "run" / "bench-cpu")
    ap.add_argument("--only", choices=("sip", "rtp"), default=None)
    ap.add_argument(
        "--kemi-root",
        type=Path,
        default=None,
        help="run another checkout's kemi-ha (e.g. main, for a before/after)",
    )
    ap.add_argument(
        "--kemi-script",
        type=Path,
        default=None,
        help="kamailio.cfg loading this KEMI script in kemi-ha's place",
    )
    ap.add_argument("--kemi-cfg", type=Path, default=None,
                    help="run this cfg in kemi-ha's place (A/B experiments)")  # fmt: skip
    ap.add_argument(
        "--profile",
        action="store_true",
        help="cProfile kemi-ha's callbacks into RUN_DIR/profiles (skews its CPU)",
    )
    args = ap.parse_args(argv)

    loads = [
        Load("sip", SIP_UAC, SIP_UAS, args.sip_rate, args.sip_seconds, 500),
        Load("rtp", RTP_UAC, RTP_UAS, args.rtp_rate, args.rtp_seconds, args.rtp_hold_ms),
    ]
    loads = [ld for ld in loads if args.only in (None, ld.name)]
    bench = Bench(args.run_dir, args.children, args.shm_mb, args.pkg_mb, args.profile)
    bench.kemi_cfg, bench.kemi_root = args.kemi_cfg, args.kemi_root
    if args.kemi_script:  # kemi-ha's kamailio.cfg, loading another script
        text = (REPO_ROOT / "kamailio.cfg").read_text()
        line = 'modparam("app_python3", "load", KEMI_SCRIPT)'
        assert line in text, "kamailio.cfg no longer loads KEMI_SCRIPT this way"
        bench.kemi_cfg = args.run_dir / "kemi-script.cfg"
        args.run_dir.mkdir(parents=True, exist_ok=True)
        bench.kemi_cfg.write_text(
            text.replace(line, f'modparam("app_python3", "load", "{args.kemi_script.resolve()}")')
        )
    print(f"bench-cpu: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, Kamailio "
          f"-x tlsf -m {args.shm_mb} -M {args.pkg_mb} -n {args.children} "
          f"-N {StackConfig.tcp_children}, loads "
          + ", ".join(f"{ld.name} {ld.rate} cps x {ld.seconds:g} s" for ld in loads),
          flush=True)  # fmt: skip
    ratios: dict[str, list[float]] = {ld.name: [] for ld in loads}  # clean pairs
    everything: dict[str, list[float]] = {ld.name: [] for ld in loads}
    results: list[Result] = []
    bench.media.start()
    try:
        # The call records' script, loaded as kemi-ha's store loads it after a NOSCRIPT
        # (native.cfg has no such fallback): both sides then write with EVALSHA.
        bench.media.redis_client().script_load(WRITE_ENDED_LUA)
        for n in range(1, args.pairs + 1):
            order = ("kemi", "native") if n % 2 else ("native", "kemi")
            got: dict[tuple[str, str], Result] = {}
            for variant in order:
                with bench.kamailio(variant) as stack:
                    for load in loads:
                        got[(variant, load.name)] = bench.run_load(stack, variant, load)
            for load in loads:
                kemi, native = got[("kemi", load.name)], got[("native", load.name)]
                results += [kemi, native]
                everything[load.name].append(kemi.kam_ms / native.kam_ms)
                if kemi.clean and native.clean:
                    ratios[load.name].append(kemi.kam_ms / native.kam_ms)
                print(fmt_pair(n, kemi, native), flush=True)
        for name, values in everything.items():
            if not values:  # --pairs 0: the ramp only
                continue
            if ratios[name]:
                which = f"{len(ratios[name])} clean pair(s) of {len(values)}"
                values = ratios[name]
            else:  # no clean pair: the median of all, said so
                which = f"no clean pair: all {len(values)}"
                ratios[name] = values
            rows = [r for r in results if r.load == name]
            med = {v: statistics.median(r.kam_ms for r in rows if r.variant == v)
                   for v in ("kemi", "native")}  # fmt: skip
            rtp = {v: statistics.median(r.rtp_ms for r in rows if r.variant == v)
                   for v in ("kemi", "native")}  # fmt: skip
            failed = {v: sum(r.failed for r in rows if r.variant == v) for v in ("kemi", "native")}
            print(f"median {name}: kamailio kemi {med['kemi']:.3f} native {med['native']:.3f} "
                  f"ms/call, ratio median {statistics.median(values):.2f} over {which} (min "
                  f"{min(values):.2f}, max {max(values):.2f}); rtpengine kemi {rtp['kemi']:.3f} "
                  f"native {rtp['native']:.3f} ms/call; failed calls kemi {failed['kemi']} "
                  f"native {failed['native']}", flush=True)  # fmt: skip
        rates = [int(r) for r in args.ramp.split(",") if r.strip()]
        maxcps = max_clean(bench, rates, args.ramp_seconds)
    finally:
        bench.media.stop()

    def ratio(name: str) -> str:
        return f"{statistics.median(ratios[name]):.2f}" if ratios.get(name) else "n/a"

    print(f"bench-cpu: ratio_sip={ratio('sip')} ratio_rtp={ratio('rtp')} "
          f"maxcps_kemi={maxcps['kemi']} maxcps_native={maxcps['native']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
