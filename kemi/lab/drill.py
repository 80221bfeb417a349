"""`kemi-ha drill`: two nodes under real Corosync + Pacemaker on one machine, node1 powered off
with calls up, and what happened to every call.

Topology (all in namespaces created here, removed at the end, also on Ctrl-C or failure):
  khad-sw   a bridge
  khad-1    node drill1 (10.98.0.1): Corosync, Pacemaker, Redis, rtpengine, Kamailio
  khad-2    node drill2 (10.98.0.2): the same
  khad-c    the client (10.98.0.10): SIPp callers and callee, the RTP capture
VIP1 10.98.0.101 prefers drill1, VIP2 10.98.0.102 prefers drill2, Redis VIP 10.98.0.100.
Pacemaker runs the VIPs, Redis (promotable) and one rtpengine per VIP (our OCF agent); Kamailio
runs on both nodes, listening on both VIPs, wired by DMQ.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import yaml

from kemi.lab.hanode import HaNode, kill_netns
from kemi.lab.net import Host, Lab
from kemi.lab.sipp import SippRun, sipp
from kemi.ops.netns import in_netns
from kemi.ops.ng import NgClient, rtp_streams
from kemi.ops.procs import Daemon, wait_until
from kemi.ops.render import COROSYNC_PROFILES, render
from kemi.ops.stack import REPO_ROOT, Stack, StackConfig

NET = "10.98.0"
NODES = {"drill1": (1, f"{NET}.1", "khad-1"), "drill2": (2, f"{NET}.2", "khad-2")}
CLIENT, CLIENT_NS = f"{NET}.10", "khad-c"
VIP1, VIP2, REDIS_VIP = f"{NET}.101", f"{NET}.102", f"{NET}.100"
UAS_PORT = 5080
PACKET_MS = 20

DRILL_POLICY = f"""\
version: drill
vips:
  - address: {VIP1}
    rtpengine: ["udp:{VIP1}:2223"]
  - address: {VIP2}
    rtpengine: ["udp:{VIP2}:2223"]
routes:
  - name: callee
    destinations: ["sip:{CLIENT}:{UAS_PORT}"]
trusted_peers: ["{NET}.0/24"]
"""


def cluster_yaml(profile: str) -> str:
    return yaml.safe_dump({
        "cluster_name": "kemi-ha-drill", "corosync_profile": profile, "policy": "policy-base.yaml",
        "nodes": [{"name": n, "id": i, "address": a, "interface": "eth0"}
                  for n, (i, a, _ns) in NODES.items()],
        "vips": [{"address": VIP1, "prefer": "drill1", "port_min": 20000, "port_max": 24999},
                 {"address": VIP2, "prefer": "drill2", "port_min": 25000, "port_max": 29999}],
        "redis": {"vip": REDIS_VIP}, "netmask": 24, "kemi_ha_root": str(REPO_ROOT),
    }, sort_keys=False)  # fmt: skip


def seeded_cib(rendered: Path, base: Path) -> str:
    """A full CIB: the rendered configuration with this run's paths, and both nodes."""
    config = (rendered / "cib-resources.xml").read_text()
    config = config.replace("/etc/kemi-ha/redis.conf", str(base / "redis.conf"))
    # Each node's node.yaml is copied to its private /run/kemi-ha by the node's start script.
    config = config.replace("/etc/kemi-ha/node.yaml", "/run/kemi-ha/node.yaml")
    # rtpengine's pid and log files where the drill can read them after a power-off.
    config = re.sub(
        r'(<instance_attributes id="(rtpengine\d+)-params">)',
        rf'\1<nvpair id="\2-rundir" name="rundir" value="{base.parent}/rtpengine-logs"/>',
        config,
    )
    body = config.removeprefix("<configuration>").removesuffix("</configuration>")
    nodes = "".join(f'<node id="{i}" uname="{n}"/>' for n, (i, _a, _ns) in NODES.items())
    body = body.replace("<resources>", f"<nodes>{nodes}</nodes><resources>", 1)
    return (
        '<cib validate-with="pacemaker-3.9" epoch="1" num_updates="0" '
        f'admin_epoch="0"><configuration>{body}</configuration><status/></cib>\n'
    )


@dataclass
class DrillSetup:
    work: Path
    lab: Lab
    ha: dict[str, HaNode]
    kamailio: dict[str, Stack]
    runs: list[SippRun] = field(default_factory=list)
    capture: Daemon | None = None


@contextlib.contextmanager
def drill_cluster(work: Path, profile: str) -> Iterator[DrillSetup]:
    """Build the namespaces, start both nodes, wait until every resource runs; undo it all."""
    work.chmod(0o755)  # the redis user (ocf:heartbeat:redis runs it) reads its config here
    (work / "policy-base.yaml").write_text(DRILL_POLICY)
    (work / "cluster.yaml").write_text(cluster_yaml(profile))
    rendered = work / "rendered"
    render(work / "cluster.yaml", rendered)
    lab = Lab("khad", [Host(ns, addr) for _n, (_i, addr, ns) in NODES.items()]
              + [Host(CLIENT_NS, CLIENT)])  # fmt: skip
    setup = DrillSetup(work, lab, {}, {})
    try:
        lab.create()
        for name, (node_id, addr, ns) in NODES.items():
            base = work / name
            base.mkdir(mode=0o755)
            (base / "node.yaml").write_text(yaml.safe_dump({
                "node_id": node_id, "node_address": addr, "policy": str(rendered / "policy.yaml"),
                "run_dir": str(base / "kamailio"), "components": ["kamailio"],
                "ready_check": "rpc",
            }))  # fmt: skip
            (base / "redis.conf").write_text((rendered / name / "redis.conf").read_text())
            shutil.chown(base / "redis.conf", "redis", "redis")
            node = HaNode(
                name, ns, base, (rendered / name / "corosync.conf").read_text(),
                seeded_cib(rendered, base),
                {"kemi-ha/rtpengine": REPO_ROOT / "deploy" / "ocf" / "rtpengine"},
                {n: a for n, (_i, a, _ns) in NODES.items()},
            )  # fmt: skip
            setup.ha[name] = node
            node.start()
        for node in setup.ha.values():
            node.wait_ready(90)
        first = setup.ha["drill1"]
        try:
            wait_resources(first)
        except Exception as exc:
            raise RuntimeError(
                f"{exc}\n{first.run(['crm_mon', '-1', '-r', '--show-detail']).stdout}"
            ) from None
        # Kamailio runs as Pacemaker's clone (ocf:heartbeat:anything + kemi-ha run); these
        # Stack objects only read each node's JSON-RPC FIFO.
        for name in NODES:
            stack = Stack(StackConfig(run_dir=work / name / "kamailio",
                                      policy_path=rendered / "policy.yaml"))  # fmt: skip
            setup.kamailio[name] = stack
            wait_until(lambda st=stack: st.rpc.call("core.uptime") is not None, 60,
                       f"Kamailio (Pacemaker clone) on {name}")  # fmt: skip
        yield setup
    finally:
        for run in setup.runs:
            run.stop()
        if setup.capture is not None:
            setup.capture.stop()
        for stack in setup.kamailio.values():
            stack.stop()
        for _n, (_i, _a, ns) in NODES.items():
            kill_netns(ns)
        for node in setup.ha.values():
            if node.daemon is not None:
                node.daemon.kill()
        lab.destroy()


def wait_resources(first: HaNode, timeout: float = 60) -> None:
    wait_until(
        lambda: first.located("vip1") == "drill1" and first.located("vip2") == "drill2"
        and first.located("rtpengine1") == "drill1" and first.located("rtpengine2") == "drill2"
        and bool(first.located("redis-vip")),
        timeout, "cluster resources started", step=0.25,
    )  # fmt: skip


# ----- one run: calls, power-off, measurements ---------------------------------------------

LOG_TS = re.compile(r"^(\w{3} +\d+ \d\d:\d\d:\d\d\.\d{3})")
RESULT = "Result of {} operation for {} on drill2: ok"
EVENTS = (  # (timeline name, log, pattern): the first match after the failure counts
    ("token lost", "corosync", re.compile(r"A processor failed|Token has not been received")),
    ("new membership", "corosync", re.compile(r"A new membership .* was formed")),
    ("Redis promoted", "pacemaker", re.compile(RESULT.format("promote", "redis"))),
    ("Redis VIP up", "pacemaker", re.compile(RESULT.format("start", "redis-vip"))),
    ("VIP1 up", "pacemaker", re.compile(RESULT.format("start", "vip1"))),
    ("rtpengine restored", "pacemaker", re.compile(RESULT.format("start", "rtpengine1"))),
)


@dataclass
class CallResult:
    call_id: str
    gap_ms: float
    lost: int
    media_resumed: bool


@dataclass
class RunResult:
    calls: list[CallResult]
    bye_ok: int
    survivor_dialogs: int
    survivor_channels: int
    timeline_ms: dict[str, float]
    redis_restore_ms: str
    dc_before: str = "?"  # the Pacemaker DC when drill1 was powered off

    @property
    def dropped(self) -> int:
        failed_bye = len(self.calls) - self.bye_ok
        return max(failed_bye, sum(not c.media_resumed for c in self.calls))


def log_times(text: str, pattern: re.Pattern[str], after: float) -> float | None:
    year = datetime.now().year
    for line in text.splitlines():
        m = LOG_TS.match(line)
        if not m or not pattern.search(line):
            continue
        ts = datetime.strptime(f"{year} {m.group(1)}", "%Y %b %d %H:%M:%S.%f").timestamp()
        if ts >= after - 0.05:
            return ts
    return None


def run_once(setup: DrillSetup, calls: int, run_no: int, hold_s: float = 4.0,
             after_s: float = 12.0) -> RunResult:  # fmt: skip
    """Place `calls` calls on VIP1, power drill1 off, measure, let the calls end with a BYE."""
    work = setup.work / f"run{run_no}"
    work.mkdir(mode=0o755)
    (work / "stream.al").write_bytes(bytes([0xD5]) * 8000)  # 1 s of A-law silence, looped
    lab = setup.lab
    capture = Daemon(
        "capture", ["ip", "netns", "exec", CLIENT_NS, "tshark", "-q", "-i", "eth0", "-f",
                    f"udp and src host {VIP1}", "-w", str(work / "rtp.pcap")],
        work / "tshark.log",
    )  # fmt: skip
    capture.start()
    setup.capture = capture
    time.sleep(1.0)
    uas = sipp("uas", "uas.xml", work, CLIENT, UAS_PORT, 6000, "-rtp_echo", netns=CLIENT_NS)
    setup.runs.append(uas)
    duration_ms = int((hold_s + after_s) * 1000)
    uac = sipp(
        "uac", "uac_drill.xml", work, CLIENT, 5070, 7000, "-s", "1000", "-m", str(calls),
        "-r", "50", "-d", str(duration_ms), "-cid_str", f"drill{run_no}-%u@x",
        "-timeout", "120", "-timeout_error", "-recv_timeout", "30000",
        target=f"{VIP1}:5060", netns=CLIENT_NS,
    )  # fmt: skip
    setup.runs.append(uac)
    vip1_ng = setup.kamailio["drill1"].policy.vips[0]
    survivor = setup.kamailio["drill2"]
    wait_until(lambda: int(survivor.rpc.call("dlg.stats_active")["ongoing"]) == calls,
               30, "calls established and replicated")  # fmt: skip
    call_ids = [f"drill{run_no}-{n}@x" for n in range(1, calls + 1)]
    ports: dict[int, str] = {}  # rtpengine's local RTP port of each call leg -> its call
    with in_netns(CLIENT_NS):
        ng = NgClient.from_socket(vip1_ng.rtpengine[0])
        for call_id in call_ids:
            for stream in rtp_streams(ng.query(call_id)):
                ports[int(stream["local port"])] = call_id
    time.sleep(hold_s)

    dc = setup.ha["drill2"].run(["crmadmin", "-D", "-q"]).stdout.strip() or "?"
    # Power off drill1: its link first (no goodbye on the wire), then every process it runs.
    t_fail = time.time()
    lab.link("khad-1", up=False)
    kill_netns("khad-1")
    uac.wait(duration_ms / 1000 + 90)
    time.sleep(1)
    capture.stop()
    setup.capture = None
    uas.stop()

    stats = sipp_stats(uac.output())
    streams = packet_times(work / "rtp.pcap")
    legs: dict[str, list[tuple[float, bool]]] = {call_id: [] for call_id in call_ids}
    for port, times in streams.items():
        if port in ports:
            legs[ports[port]].append(gap_around(times, t_fail))
    results = [call_result(call_id, legs[call_id]) for call_id in call_ids]
    node2 = setup.ha["drill2"]
    logs = {
        "corosync": (node2.base / "log-corosync" / "corosync.log").read_text(errors="replace"),
        "pacemaker": (node2.base / "log-pacemaker" / "pacemaker.log").read_text(errors="replace"),
    }
    timeline: dict[str, float] = {}
    for name, log, pattern in EVENTS:
        ts = log_times(logs[log], pattern, t_fail)
        if ts is not None:
            timeline[name] = (ts - t_fail) * 1000
    resumed_at = [t for times in streams.values() for t in times if t > t_fail + 0.05]
    if resumed_at:
        timeline["first RTP after failover"] = (min(resumed_at) - t_fail) * 1000
    restore = last_line_with(setup.work / "rtpengine-logs" / f"rtpengine-{VIP1}.log",
                             "Redis restore time")  # fmt: skip
    wait_until(lambda: int(survivor.rpc.call("dlg.stats_active")["all"]) == 0, 30,
               "survivor dialogs back to 0")  # fmt: skip
    return RunResult(
        calls=results,
        bye_ok=stats.get("successful", 0),
        survivor_dialogs=int(survivor.rpc.call("dlg.stats_active")["all"]),
        survivor_channels=int(survivor.rpc.call("dlg.profile_get_size", "kha_global")),
        timeline_ms=dict(sorted(timeline.items(), key=lambda kv: kv[1])),
        redis_restore_ms=restore or "Redis restore time not logged",
        dc_before=dc,
    )


def call_result(call_id: str, legs: list[tuple[float, bool]]) -> CallResult:
    """A call's gap is its worst leg's; its media resumed only if every leg's did."""
    if not legs or not all(resumed for _gap, resumed in legs):
        return CallResult(call_id, float("inf"), -1, False)
    gap = max(gap for gap, _resumed in legs)
    return CallResult(call_id, gap, max(0, round(gap / PACKET_MS) - 1), True)


def last_line_with(path: Path, text: str) -> str:
    """The last log line containing `text`, without its timestamp ('' if none)."""
    if not path.exists():
        return ""
    hits = [ln for ln in path.read_text(errors="replace").splitlines() if text in ln]
    return hits[-1].split("]", 1)[-1].strip() if hits else ""


def sipp_stats(output: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in output.splitlines():
        m = re.match(r"\s*(Successful call|Failed call)\s*\|\s*\d+\s*\|\s*(\d+)", line)
        if m:
            out["successful" if m.group(1).startswith("Succ") else "failed"] = int(m.group(2))
    return out


def packet_times(pcap: Path) -> dict[int, list[float]]:
    """RTP packets from VIP1 to the client, by rtpengine's source port (one per call leg)."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-e", "frame.time_epoch", "-e", "udp.srcport"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    streams: dict[int, list[float]] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 2 and parts[1]:
            streams.setdefault(int(parts[1]), []).append(float(parts[0]))
    return streams


def gap_around(times: list[float], t_fail: float) -> tuple[float, bool]:
    """The silence of one stream across the failure (ms), and whether RTP flowed again after it.

    The outage starts at the last packet before (or just after: packets in flight) the power-off
    and ends at the first packet after it; media resumed if at least 5 packets followed.
    """
    times = sorted(times)
    best, resumed_at = 0.0, None
    for a, b in itertools.pairwise(times):
        if b > t_fail and a < t_fail + 1.0 and b - a > best:
            best, resumed_at = b - a, b
    if resumed_at is None:
        return float("inf"), False
    after = sum(1 for t in times if t >= resumed_at)
    return best * 1000, after >= 5


def report(results: list[RunResult], calls: int, profile: str) -> tuple[str, str]:
    lines = [f"drill: profile={profile} calls={calls} runs={len(results)}"]
    gaps: list[float] = []
    dropped = 0
    for i, r in enumerate(results, start=1):
        lines.append(
            f"run {i}: BYE 200 after failover {r.bye_ok}/{len(r.calls)}; survivor dialogs "
            f"{r.survivor_dialogs}, channels {r.survivor_channels}; rtpengine {r.redis_restore_ms}"
        )
        lines.append(f"  Pacemaker DC at power-off: {r.dc_before}")
        lines.append("  timeline (ms after power-off): " + ", ".join(
            f"{k} {v:.0f}" for k, v in r.timeline_ms.items()))  # fmt: skip
        lines.append(f"  {'call':<16}{'gap_ms':>10}{'lost':>6}  resumed")
        for c in r.calls:
            resumed = "yes" if c.media_resumed else "NO"
            lines.append(f"  {c.call_id:<16}{c.gap_ms:>10.0f}{c.lost:>6}  {resumed}")
        gaps += [c.gap_ms for c in r.calls if c.media_resumed]
        dropped += r.dropped
    total = calls * len(results)
    median = statistics.median(gaps) if gaps else float("nan")
    worst = max(gaps) if gaps else float("nan")
    summary = (
        f"drill: calls={total} dropped={dropped} median_gap_ms={median:.0f} max_gap_ms={worst:.0f}"
    )
    return "\n".join(lines), summary


def drill(calls: int = 10, profile: str = "tuned", repeat: int = 1, keep: bool = False) -> int:
    """Run the drill `repeat` times; print the report, the JSON path and the summary line last."""
    if profile not in COROSYNC_PROFILES:
        raise ValueError(f"unknown profile {profile!r}")
    results: list[RunResult] = []
    for run_no in range(1, repeat + 1):
        work = Path(tempfile.mkdtemp(prefix="kemi-ha-drill-"))
        with drill_cluster(work, profile) as setup:
            results.append(run_once(setup, calls, run_no))
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    text, summary = report(results, calls, profile)
    print(text)
    out = Path(tempfile.gettempdir()) / "kemi-ha-drill-result.json"
    per_run = [vars(r) | {"calls": [vars(c) for c in r.calls]} for r in results]
    out.write_text(json.dumps(per_run, default=str, indent=1))
    print(f"drill: per-call results in {out}")
    print(summary, flush=True)
    return 0 if all(r.dropped == 0 for r in results) else 1
