"""The failover drill: N nodes under real Corosync + Pacemaker on one machine, installed from
`kemi-ha render` output exactly as docs/ha.md installs it on real hosts, one node powered off
with calls up on every VIP, and what happened to every call.

Topology (all in namespaces created here, removed at the end, also on Ctrl-C or failure):
  khad-sw   a bridge
  khad-<i>  node drill<i> (10.98.0.<i>): Corosync, Pacemaker, Redis, rtpengine, Kamailio
  khad-c    the client (10.98.0.10): SIPp callers and callee, the RTP capture
VIP<i> 10.98.0.(100+i) prefers drill<i>; Redis VIP 10.98.0.100. Pacemaker runs the VIPs, Redis
(promotable), one rtpengine per VIP and Kamailio on every node (ocf:kemi-ha:* agents), all as
rendered; Kamailio listens on every VIP and replicates dialogs over DMQ (full mesh).
Run r powers off drill<((r - 1) mod N) + 1>, so REPEAT=N powers off each node once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import redis
import yaml

from kemi.lab.hanode import HaNode, install_node, kill_netns
from kemi.lab.net import Host, Lab, lab_ns, sh
from kemi.lab.passwords import write_password
from kemi.lab.sipp import SippRun, sipp
from kemi.ops.cdrstore import read_cdrs, read_password
from kemi.ops.cluster_status import collect_cluster, render_cluster
from kemi.ops.netns import in_netns
from kemi.ops.ng import NgClient, NgError, rtp_streams
from kemi.ops.procs import Daemon, NotReady, wait_until
from kemi.ops.render import COROSYNC_PROFILES, render
from kemi.ops.rpc import KamailioRpc
from kemi.ops.stack import REPO_ROOT, sip_options_ok

# Another drill can run beside this one with its own namespaces and network, e.g.
# KEMI_HA_DRILL_PREFIX=khf KEMI_HA_DRILL_NET=10.97.0 (links on 10.97.<k>.x).
NET = os.environ.get("KEMI_HA_DRILL_NET", "10.98.0")
PREFIX = os.environ.get("KEMI_HA_DRILL_PREFIX", lab_ns("khad"))
LINK_NET = NET.rsplit(".", 1)[0]  # network k of the links: LINK_NET.<k>.<node>
CLIENT, CLIENT_NS = f"{NET}.10", f"{PREFIX}-c"
QNETD, QNETD_NS = f"{NET}.20", f"{PREFIX}-q"  # the quorum device's host (corosync-qnetd)
REDIS_VIP = f"{NET}.100"
UAS_PORT = 5080
PACKET_MS = 20
AGENTS = {
    f"kemi-ha/{a}": REPO_ROOT / "deploy" / "ocf" / a for a in ("rtpengine", "kamailio", "vip")
}
FENCE_AGENT = REPO_ROOT / "deploy" / "fence" / "fence_kemiha_netns"


@dataclass(frozen=True)
class DrillNode:
    name: str
    node_id: int
    address: str
    netns: str
    vip: str  # the VIP it prefers
    links: tuple[str, ...] = ()  # its addresses on networks 1.. (Corosync links 1..)

    @staticmethod
    def build(count: int, links: int = 1) -> list[DrillNode]:
        return [DrillNode(f"drill{i}", i, f"{NET}.{i}", f"{PREFIX}-{i}", f"{NET}.{100 + i}",
                          tuple(f"{LINK_NET}.{k}.{i}" for k in range(1, links)))
                for i in range(1, count + 1)]  # fmt: skip


# Calls caught in a transient state by the power-off (issue 13): (name, number prefix, callee
# scenario, callee's -d, caller scenario, caller's -d). Each kind has its own callee port.
TRANSIENT = (
    ("ringing", "71", "uas_ring_answer.xml", 2500, "uac.xml", 4000),  # answered after the fault
    ("late_ack", "72", "uas.xml", 0, "uac_late_ack.xml", 4000),  # 200 before, ACK after it
    ("cancelled", "73", "uas_ring.xml", 0, "uac_cancel_late.xml", 2000),  # CANCEL after it
    # established, then a hold re-INVITE relayed before the fault, answered 2.5 s later
    ("hold", "74", "uas_hold.xml", 2500, "uac_hold.xml", 500),
    # established, then a hold re-INVITE sent during the outage (retransmitted)
    ("hold_outage", "75", "uas_hold.xml", 0, "uac_hold.xml", 1200),
    # established, then the BYE sent during the outage (retransmitted)
    ("bye_outage", "76", "uas.xml", 0, "uac.xml", 1100),
)


def drill_policy() -> str:
    """The operator's base policy: routes to the client's callees (VIPs come from the cluster)."""
    transient = [{"name": name, "prefix": prefix,
                  "destinations": [f"sip:{CLIENT}:{UAS_PORT + 2 * (k + 1)}"]}
                 for k, (name, prefix, *_rest) in enumerate(TRANSIENT)]  # fmt: skip
    return yaml.safe_dump({
        "version": "drill", "vips": [{"address": "0.0.0.0", "rtpengine": ["udp:0.0.0.0:1"]}],
        "routes": [*transient, {"name": "callee", "destinations": [f"sip:{CLIENT}:{UAS_PORT}"]}],
        "trusted_peers": [f"{NET}.0/24"],
    }, sort_keys=False)  # fmt: skip


REDIS_PASSWORD_FILE = "redis.pass"  # beside cluster.yaml, as an operator keeps it


def fence_device(node: DrillNode) -> dict[str, object]:
    """The lab's power switch for a node: its namespace (pcmk_host_map gives the agent plug=)."""
    return {"fence": {"agent": FENCE_AGENT.name,
                      "params": {"pcmk_host_map": f"{node.name}:{node.netns}"}}}  # fmt: skip


def cluster_yaml(nodes: list[DrillNode], profile: str, qdevice: bool = False,
                 fencing: bool = False) -> str:  # fmt: skip
    """The operator's cluster file; everything the lab needs differently is a field here."""
    span = 20000 // len(nodes)
    # A trusted lab bridge: qdevice <-> qnetd without TLS certificates (docs/ha.md has them).
    timeout = int(os.environ.get("KEMI_HA_DRILL_QDEVICE_TIMEOUT_MS", "0")) or None
    device = ({"quorum_device": {"address": QNETD, "tls": False}
               | ({"timeout_ms": timeout} if timeout else {})} if qdevice else {})  # fmt: skip
    return yaml.safe_dump(device | {
        "cluster_name": "kemi-ha-drill", "corosync_profile": profile, "policy": "policy-base.yaml",
        "nodes": [{"name": n.name, "id": n.node_id, "address": n.address, "interface": "eth0"}
                  | ({"links": list(n.links)} if n.links else {})
                  | (fence_device(n) if fencing else {}) for n in nodes],
        "vips": [{"address": n.vip, "prefer": n.name, "port_min": 20000 + i * span,
                  "port_max": 20000 + (i + 1) * span - 1} for i, n in enumerate(nodes)],
        "redis": {"vip": REDIS_VIP, "password_file": REDIS_PASSWORD_FILE}, "netmask": 24,
        "kemi_ha_root": str(REPO_ROOT),
    }, sort_keys=False)  # fmt: skip


@dataclass
class DrillSetup:
    work: Path
    lab: Lab
    nodes: list[DrillNode]
    ha: dict[str, HaNode]
    rpc: dict[str, KamailioRpc]  # each node's Kamailio (its /run/kemi-ha, seen from here)
    rendered: Path
    runs: list[SippRun] = field(default_factory=list)
    capture: Daemon | None = None


@contextlib.contextmanager
def drill_cluster(work: Path, profile: str, size: int = 2, links: int = 1,
                  qdevice: bool = False,
                  fencing: bool = False) -> Iterator[DrillSetup]:  # fmt: skip
    """Render, install, start every node, wait until every resource runs; undo it all."""
    nodes = DrillNode.build(size, links)
    work.chmod(0o755)  # the redis user (ocf:heartbeat:redis runs it) reads its config here
    (work / "policy-base.yaml").write_text(drill_policy())
    (work / "cluster.yaml").write_text(cluster_yaml(nodes, profile, qdevice, fencing))
    write_password(work / REDIS_PASSWORD_FILE)
    rendered = work / "rendered"
    render(work / "cluster.yaml", rendered)
    lab = Lab(
        PREFIX,
        [Host(n.netns, n.address, links=list(n.links)) for n in nodes]
        + [Host(CLIENT_NS, CLIENT)]
        + ([Host(QNETD_NS, QNETD)] if qdevice else []),
    )
    setup = DrillSetup(work, lab, nodes, {}, {}, rendered)
    hosts = {n.name: n.address for n in nodes}
    qnetd: Daemon | None = None
    try:
        lab.create()
        if qdevice:  # the arbiter, as on its third host: `corosync-qnetd` (TLS off: see above)
            qnetd = Daemon("qnetd", ["ip", "netns", "exec", QNETD_NS, "corosync-qnetd", "-f",
                                     "-s", "off", "-l", QNETD, "-S",
                                     f"local_socket_file={work}/qnetd.sock"],
                           work / "qnetd.log")  # fmt: skip
            qnetd.start()
        for n in nodes:
            base = work / n.name
            base.mkdir(mode=0o755)
            install_node(rendered, n.name, base, AGENTS, [FENCE_AGENT] if fencing else [])
            setup.ha[n.name] = HaNode(n.name, n.netns, base, hosts)
            setup.ha[n.name].start()
            run_dir = base / "run-kemi-ha"
            setup.rpc[n.name] = KamailioRpc(run_dir / "kamailio-rpc.fifo", run_dir)
        for node in setup.ha.values():
            node.wait_ready(90)
        first = setup.ha[nodes[0].name]
        try:
            wait_resources(first, nodes)
            for name, rpc in setup.rpc.items():
                wait_until(lambda r=rpc: r.call("core.uptime") is not None, 60,
                           f"Kamailio (Pacemaker clone) on {name}")  # fmt: skip
            if qdevice:  # a fault before the device votes would leave no side quorate
                for node in setup.ha.values():
                    wait_until(lambda h=node: total_votes(h) == len(nodes) + 1, 60,
                               f"quorum device voting on {node.name}")  # fmt: skip
        except Exception as exc:
            raise RuntimeError(
                f"{exc}\n{first.run(['crm_mon', '-1', '-r', '--show-detail']).stdout}"
            ) from None
        yield setup
    finally:
        for run in setup.runs:
            run.stop()
        if setup.capture is not None:
            setup.capture.stop()
        for n in nodes:
            kill_netns(n.netns)
        if qnetd is not None:
            qnetd.kill()
        for node in setup.ha.values():
            if node.daemon is not None:
                node.daemon.kill()
        lab.destroy()


def wait_resources(first: HaNode, nodes: list[DrillNode], timeout: float = 90) -> None:
    def placed() -> bool:
        return bool(first.located("redis-vip")) and all(
            first.located(f"vip{i}") == n.name and first.promoted(f"rtpengine{i}") == n.name
            for i, n in enumerate(nodes, start=1)
        )

    wait_until(placed, timeout, "cluster resources started", step=0.25)


# ----- one run: calls, power-off, measurements ---------------------------------------------

LOG_TS = re.compile(r"^(\w{3} +\d+ \d\d:\d\d:\d\d\.\d{3})")
# pacemaker-controld: "Result of start operation for vip1 on drill2: ok" (2.1; 3.0 says "OK").
RESULT = r"Result of {} operation for {} on \S+: (?:ok|OK)\b"
# pacemaker-fenced 2.1.5: "Operation 'reboot' targeting drill1 by drill2 for
# pacemaker-controld.23203@drill2: OK (complete)"; before it, the random pcmk_delay_max wait:
# "Delaying 'reboot' action targeting drill1 using fence-drill1 for 1s | ... max=2s".
FENCED = re.compile(r"Operation '(?:off|reboot)' targeting \S+ by \S+ for \S+: OK")
FENCE_DELAY = re.compile(r"Delaying '\w+' action targeting (\S+) using \S+ for (\d+s)")


def events(vip_no: int) -> tuple[tuple[str, str, re.Pattern[str]], ...]:
    """(timeline name, log, pattern) for a failover of VIP `vip_no`; the first match counts."""
    return (
        ("token lost", "corosync", re.compile(r"A processor failed|Token has not been received")),
        ("new membership", "corosync", re.compile(r"A new membership .* was formed")),
        ("Redis promoted", "pacemaker", re.compile(RESULT.format("promote", "redis"))),
        ("Redis VIP up", "pacemaker", re.compile(RESULT.format("start", "redis-vip"))),
        (f"VIP{vip_no} up", "pacemaker", re.compile(RESULT.format("start", f"vip{vip_no}"))),
        # Hot standby: the survivor's rtpengine already holds the calls; it is promoted.
        ("rtpengine promoted", "pacemaker",
         re.compile(RESULT.format("promote", f"rtpengine{vip_no}"))),
        # With fencing (scenario fenced): the controller asks, pacemaker-fenced reports.
        ("fencing requested", "pacemaker", re.compile(r"Requesting fencing \((?:off|reboot)\)")),
        ("fenced", "pacemaker", FENCED),
    )  # fmt: skip


@dataclass
class CallResult:
    call_id: str
    vip: str
    gap_ms: float
    lost: int
    media_resumed: bool


@dataclass
class RunResult:
    victim: str  # the node powered off
    failed_vip: str  # the VIP it held
    calls: list[CallResult]
    bye_ok: int
    survivor_dialogs: int
    survivor_channels: int
    timeline_ms: dict[str, float]
    takeover: str  # how the new holder's rtpengine took the calls (hot standby, cold restore)
    dc_before: str = "?"  # the Pacemaker DC when the victim was powered off
    scenario: str = "power-off"
    observed: list[str] = field(default_factory=list)  # what the scenario checked, for the report
    holders_after: dict[str, str] = field(default_factory=dict)  # VIP -> node(s) at the end
    transient_failed: int = 0  # calls in a transient state at the fault whose flow failed
    rejoin_gap_ms: float | None = None  # rejoin: worst RTP gap of any call while it rejoined
    duplicate_vip_ms: float = 0.0  # link-cut: time some VIP was on two nodes at once
    cdrs_ok: int = 0  # calls with exactly one CDR, ended by a survivor, duration within 1 s

    @property
    def dropped(self) -> int:
        failed_bye = len(self.calls) - self.bye_ok
        media = sum(not c.media_resumed for c in self.calls)
        return max(failed_bye, media) + self.transient_failed

    @property
    def failover_calls(self) -> list[CallResult]:
        """The calls whose VIP moved (every call when none did: their gap is the scenario's)."""
        if not self.failed_vip:
            return self.calls
        return [c for c in self.calls if c.vip == self.failed_vip]


def line_time(line: str) -> float | None:
    """The timestamp of a Corosync/Pacemaker log line (None if it has none)."""
    m = LOG_TS.match(line)
    if not m:
        return None
    year = datetime.now().year
    return datetime.strptime(f"{year} {m.group(1)}", "%Y %b %d %H:%M:%S.%f").timestamp()


def log_times(text: str, pattern: re.Pattern[str], after: float) -> float | None:
    for line in text.splitlines():
        if not pattern.search(line):
            continue
        ts = line_time(line)
        if ts is not None and ts >= after - 0.05:
            return ts
    return None


def spread(calls: int, vips: int) -> list[int]:
    """`calls` split over the VIPs as evenly as possible (the first VIPs take the rest)."""
    return [calls // vips + (1 if i < calls % vips else 0) for i in range(vips)]


SCENARIOS = (
    "power-off",
    "one-link-lost",
    "rejoin",
    "link-cut",
    "failback",
    "fenced",
    "kamailio-crash",
    "rtpengine-crash",
    "redis-crash",
)
CRASHES = ("kamailio-crash", "rtpengine-crash")  # one process dies, the node stays up


def run_once(setup: DrillSetup, calls: int, run_no: int, hold_s: float = 4.0,
             after_s: float = 12.0, scenario: str = "power-off",
             transient: int = 0) -> RunResult:  # fmt: skip
    """Place `calls` calls on every VIP, inflict the scenario's fault on one node, measure, end
    each call with a BYE.

    power-off      the node's links down, then SIGKILL of everything it runs;
    one-link-lost  the node's Corosync link 0 to the other nodes cut (the client still reaches
                   it): knet carries on over link 1, no failover is expected;
    rejoin         power-off, then the node comes back while the calls last: no VIP moves back
                   (stickiness), DMQ and Redis resync, no gap on the survivors.
    failback       rejoin, then a planned move of the VIP back to its node (crm resource move):
                   the calls on it must lose at most about one packet.
    link-cut       every link between the node and the others cut while all keep running and
                   the client reaches them all: with a quorum device one side keeps quorum, the
                   other stops its resources; the drill samples who holds each VIP every 50 ms.
    fenced         power-off with fencing configured: Pacemaker fences the node (the lab agent
                   fence_kemiha_netns) before it moves the node's resources (fencing_checked).
    kamailio-crash one UDP worker of the node's Kamailio killed (SIGKILL, as a segfault ends
                   it): Kamailio's main process then stops all of Kamailio, `kemi-ha run` exits,
                   and Pacemaker recovers it; the node, its rtpengines and Redis stay up.
    rtpengine-crash the node's active rtpengine (of the VIP it holds) killed (SIGKILL); the
                   node, its Kamailio and its standby rtpengines stay up.
    redis-crash    the Redis of the node that holds the hot standby of the victim's VIP killed
                   (SIGKILL; a replica in run 1, the master prefers the first node); once it is
                   back, the victim powered off: the standby must still hold the calls.
    """
    if scenario in ("rejoin", "failback", "redis-crash"):
        after_s = max(after_s, 40.0)
    nodes = setup.nodes
    victim = nodes[(run_no - 1) % len(nodes)]
    survivors = [n for n in nodes if n is not victim]
    work = setup.work / f"run{run_no}"
    work.mkdir(mode=0o755)
    (work / "stream.al").write_bytes(bytes([0xD5]) * 8000)  # 1 s of A-law silence, looped
    sources = " or ".join(f"src host {n.vip}" for n in nodes)
    capture = Daemon(
        "capture", ["ip", "netns", "exec", CLIENT_NS, "tshark", "-q", "-i", "eth0", "-f",
                    f"udp and ({sources})", "-w", str(work / "rtp.pcap")],
        work / "tshark.log",
    )  # fmt: skip
    capture.start()
    setup.capture = capture
    time.sleep(1.0)
    uas = sipp("uas", "uas_drill.xml", work, CLIENT, UAS_PORT, 6000, "-rtp_echo", netns=CLIENT_NS)
    setup.runs.append(uas)
    duration_ms = int((hold_s + after_s) * 1000)
    uacs: list[SippRun] = []
    call_vip: dict[str, str] = {}
    for i, (n, count) in enumerate(zip(nodes, spread(calls, len(nodes)), strict=True)):
        if count == 0:
            continue
        uac = sipp(
            f"uac{i + 1}", "uac_drill.xml", work, CLIENT, 5100 + 10 * i, 7000 + 100 * i,
            "-s", "1000", "-m", str(count), "-r", "50", "-d", str(duration_ms),
            "-cid_str", f"drill{run_no}-{i + 1}-%u@x", "-timeout", "120", "-timeout_error",
            "-recv_timeout", "30000", target=f"{n.vip}:5060", netns=CLIENT_NS,
        )  # fmt: skip
        setup.runs.append(uac)
        uacs.append(uac)
        call_vip |= {f"drill{run_no}-{i + 1}-{k}@x": n.vip for k in range(1, count + 1)}
    for name, rpc in setup.rpc.items():
        # Every dialog replicated (any state); 5.6's DMQ sometimes leaves a copy unconfirmed
        # (kamailio #2423): counted below, not waited for.
        wait_until(lambda r=rpc: int(r.call("dlg.stats_active")["all"]) == calls,
                   30, f"calls established and replicated to {name}")  # fmt: skip
    unconfirmed = {name: calls - int(rpc.call("dlg.stats_active")["ongoing"])
                   for name, rpc in setup.rpc.items()}  # fmt: skip
    legs_of: dict[tuple[str, int], str] = {}  # (VIP, rtpengine's RTP port of a leg) -> call
    no_session: list[str] = []
    for i, n in enumerate(nodes, start=1):  # ng is on each node's loopback: ask VIP i's holder
        with in_netns(n.netns):
            ng = NgClient("127.0.0.1", 2222 + i, timeout=10.0)  # busy with hundreds of calls
            for call_id in (c for c, vip in call_vip.items() if vip == n.vip):
                try:
                    streams = rtp_streams(ng.query(call_id))
                except NgError:  # ended already (e.g. a SIPp too loaded aborted it): no legs
                    no_session.append(call_id)
                    continue
                for stream in streams:
                    legs_of[(n.vip, int(stream["local port"]))] = call_id
    time.sleep(hold_s - 1.0)
    kinds = start_transient(setup, work, victim, transient) if transient else []
    transient_failed = 0
    time.sleep(1.0)

    dc = setup.ha[survivors[0].name].run(["crmadmin", "-D", "-q"]).stdout.strip() or "?"
    holders = vip_holders(setup)
    observed: list[str] = [f"VIP holders before: {holders}"]
    if any(unconfirmed.values()):
        observed.append(f"replicated dialogs not confirmed before the fault: {unconfirmed}")
    if no_session:  # counted as dropped (no media after the fault): said why here
        observed.append(
            f"{len(no_session)} calls had no media session before the fault (ended "
            f"already: see the SIPp logs), e.g. {', '.join(no_session[:3])}"
        )
    t_fail = time.time()
    duplicate_ms = 0.0
    if scenario == "link-cut":
        cut_peers(setup, victim, cut=True, every_link=True)
        duplicate_ms, late = watch_duplicates(setup, after_s / 2, settle_s=3.0)
        observed.append(f"quorum: {quorum_state(setup)}")
        observed.append(f"VIP held by two nodes at once: {duplicate_ms:.0f} ms in all, "
                        f"{late:.0f} ms after the first 3 s")  # fmt: skip
        observed.append(f"VIP holders with the links cut: {vip_holders(setup)}")
        cut_peers(setup, victim, cut=False, every_link=True)
    elif scenario == "one-link-lost":
        cut_peers(setup, victim, cut=True)
        time.sleep(after_s / 2)
        observed.append(f"{victim.name} corosync links: {link_status(setup, victim)}")
        observed.append(f"VIP holders with link 0 cut: {vip_holders(setup)}")
        cut_peers(setup, victim, cut=False)
        changes = membership_changes(setup, t_fail)
        observed.append(f"Corosync membership changes while link 0 was cut: {changes}")
        if changes:  # none expected: what Corosync saw, for the report (CI keeps no work dir)
            observed += [f"corosync: {line}" for line in corosync_lines(setup, t_fail - 1)]
    elif scenario in CRASHES:
        crash(setup, victim, scenario, t_fail, observed)
    else:
        if scenario == "redis-crash":  # first the standby's Redis, then the power-off
            crash(setup, survivors[0], scenario, t_fail, observed)
            time.sleep(2.0)
            t_fail = time.time()
        # Power off the victim: its links first (no goodbye on the wire), then every process.
        setup.lab.links(victim.netns, up=False)
        kill_netns(victim.netns)
    t_move = 0.0
    took_over = ""  # the node that took the victim's VIP (read before a rejoin moves anything)
    if scenario in ("rejoin", "failback"):
        time.sleep(3.0)
        after = vip_holders(setup, survivors)
        took_over = after.get(f"vip{nodes.index(victim) + 1}", "")
        observed.append(f"VIP holders after the failover: {after}")
        t_rejoin = time.time()
        rejoin(setup, victim, calls, observed)
        observed.append(f"rejoined in {time.time() - t_rejoin:.1f} s; VIP holders: "
                        f"{vip_holders(setup)}")  # fmt: skip
    if scenario == "failback":
        time.sleep(2.0)
        vip_id = f"vip{nodes.index(victim) + 1}"
        ha = setup.ha[survivors[0].name]
        t_move = time.time()
        ha.run(["crm_resource", "--move", "-r", vip_id, "-N", victim.name])
        wait_until(lambda: vip_holders(setup).get(vip_id) == victim.name, 30,
                   f"{vip_id} back on {victim.name}")  # fmt: skip
        observed.append(f"{vip_id} moved back in {1000 * (time.time() - t_move):.0f} ms")
        ha.run(["crm_resource", "--clear", "-r", vip_id])
    for uac in uacs:
        uac.wait(duration_ms / 1000 + 90)
    for name, callee, caller in kinds:
        caller.wait(90)
        ok = sipp_stats(caller.output()).get("successful", 0)
        observed.append(f"{name}={ok}/{transient} completed (caller's SIPp)")
        transient_failed += transient - ok
        callee.stop()
    time.sleep(1)
    capture.stop()
    setup.capture = None
    uas.stop()

    bye_ok = sum(sipp_stats(uac.output()).get("successful", 0) for uac in uacs)
    streams = packet_times(work / "rtp.pcap")
    rejoin_gap = float("nan")
    legs: dict[str, list[tuple[float, bool]]] = {call_id: [] for call_id in call_vip}
    for key, times in streams.items():
        if key in legs_of:
            if scenario in ("one-link-lost", "link-cut"):  # the worst silence while cut
                legs[legs_of[key]].append(worst_gap(times, t_fail, t_fail + after_s / 2 + 1))
            else:
                legs[legs_of[key]].append(gap_around(times, t_fail))
    results = [call_result(c, call_vip[c], legs[c]) for c in call_vip]
    if scenario == "failback":
        moved = [worst_gap(times, t_move, t_move + 5)[0] for (vip, port), times in streams.items()
                 if (vip, port) in legs_of and vip == victim.vip]  # fmt: skip
        observed.append(f"worst RTP gap of the calls on the VIP moved back: "
                        f"{max(moved, default=float('nan')):.0f} ms")  # fmt: skip
    if scenario in ("rejoin", "failback"):
        quiet = [worst_gap(times, t_rejoin, t_rejoin + 15)[0] for key, times in streams.items()
                 if key in legs_of]  # fmt: skip
        rejoin_gap = max(quiet, default=float("nan"))
        observed.append(f"worst RTP gap of any call while {victim.name} rejoined: "
                        f"{rejoin_gap:.0f} ms")  # fmt: skip
    failed_vip = "" if scenario in ("one-link-lost", "link-cut", "kamailio-crash") else victim.vip
    survivors = survivors if scenario not in ("rejoin", *CRASHES) else nodes
    timeline = failover_timeline(setup, [n for n in survivors if n is not victim],
                                 nodes.index(victim) + 1, t_fail)  # fmt: skip
    resumed_at = [t for (vip, _p), times in streams.items() if vip == victim.vip
                  for t in times if t > t_fail + 0.05]  # fmt: skip
    if resumed_at and failed_vip:
        timeline["first RTP after failover"] = (min(resumed_at) - t_fail) * 1000
    vip_id = f"vip{nodes.index(victim) + 1}"
    claimed = [claim_time(setup.work / s.name / "log-kemi-ha" / "kemi-ha-run.log", vip_id, t_fail)
               for s in survivors if s is not victim]  # fmt: skip
    for s in survivors:
        if s is not victim:
            observed += claim_outcomes(setup.work / s.name / "log-kemi-ha" / "kemi-ha-run.log")
    if failed_vip and any(t is not None for t in claimed):
        timeline[f"VIP{nodes.index(victim) + 1} claimed (fast takeover)"] = min(
            t for t in claimed if t is not None
        )
    if scenario == "fenced":
        observed += fencing_checked(setup, victim, survivors, timeline, nodes.index(victim) + 1)
    up = nodes if scenario not in ("power-off", "redis-crash") else [
        n for n in nodes if n is not victim]  # fmt: skip
    holder = took_over or vip_holders(setup, up).get(f"vip{nodes.index(victim) + 1}", "")
    log = setup.work / holder / "log-kemi-ha" / f"rtpengine-{victim.vip}.log"
    restore = takeover_mode(log, t_fail) if holder and failed_vip else "no takeover"
    rpcs = {s.name: setup.rpc[s.name] for s in survivors}
    for name, rpc in rpcs.items():
        try:
            wait_until(lambda r=rpc: int(r.call("dlg.stats_active")["all"]) == 0, 30,
                       f"dialogs on {name} back to 0")  # fmt: skip
            # A dialog leaves the active count when it ends, its profile entries (channels)
            # when the last reference to it goes (e.g. its BYE transaction's wait timer, 5 s).
            wait_until(lambda r=rpc: int(r.call("dlg.profile_get_size", "kha_global")) == 0, 10,
                       f"channels on {name} back to 0")  # fmt: skip
        except NotReady as exc:  # a leak is a finding of the run (survivor_dialogs), not a crash
            left = [f"{d.get('call-id')} state {d.get('state')}" for d in rpc.call("dlg.list")]
            observed.append(f"{exc}: {', '.join(left)}")
    # who may end a call: every node still (or again) running at the end of the scenario
    kept = ("one-link-lost", "link-cut", "rejoin", "failback", *CRASHES)
    enders = nodes if scenario in kept else [
        n for n in nodes if n is not victim]  # fmt: skip
    password = read_password(setup.work / REDIS_PASSWORD_FILE)
    cdrs_ok = cdrs_checked(enders, call_vip, duration_ms / 1000, observed, password)
    return RunResult(
        cdrs_ok=cdrs_ok,
        holders_after=vip_holders(setup, up),
        transient_failed=transient_failed,
        duplicate_vip_ms=duplicate_ms,
        rejoin_gap_ms=rejoin_gap if scenario in ("rejoin", "failback") else None,
        victim=victim.name,
        failed_vip=failed_vip,
        scenario=scenario,
        observed=observed,
        calls=results,
        bye_ok=bye_ok,
        survivor_dialogs=sum(int(r.call("dlg.stats_active")["all"]) for r in rpcs.values()),
        survivor_channels=sum(
            int(r.call("dlg.profile_get_size", "kha_global")) for r in rpcs.values()
        ),
        timeline_ms=dict(sorted(timeline.items(), key=lambda kv: kv[1])),
        takeover=restore,
        dc_before=dc,
    )


def cdrs_checked(survivors: list[DrillNode], call_vip: dict[str, str], duration_s: float,
                 observed: list[str], password: str | None) -> int:  # fmt: skip
    """Issue 15: every call of the run has exactly one CDR in the cluster's Redis (read through
    the Redis VIP from a survivor), ended by a node alive at the end, its duration within 1 s of
    SIPp's hold time. Returns the number of calls for which all of that holds."""
    alive = {n.address for n in survivors}
    found: dict[str, list[dict[str, str]]] = {}

    def read() -> bool:
        with in_netns(survivors[0].netns):
            conn = redis.Redis(host=REDIS_VIP, port=6379, db=0, socket_timeout=2,
                               password=password, decode_responses=True)  # fmt: skip
            rows = read_cdrs(conn, 0, None)
            found.clear()
            for row in rows:
                if row["call_id"] in call_vip:
                    found.setdefault(row["call_id"], []).append(row)
        return len(found) == len(call_vip)

    try:
        wait_until(read, 15, "a CDR for every call")
    except (NotReady, redis.RedisError, OSError) as exc:
        observed.append(f"CDRs: {exc}")
    good = 0
    for call_id in call_vip:
        rows = found.get(call_id, [])
        if len(rows) != 1:
            observed.append(f"CDRs of {call_id}: {len(rows)}")
            continue
        row = rows[0]
        off = abs(float(row["duration_s"]) - duration_s)
        if row["end_node"] not in alive or off > 1.0:
            observed.append(f"CDR of {call_id}: ended by {row['end_node']}, duration "
                            f"{row['duration_s']} s (SIPp {duration_s:.1f} s)")  # fmt: skip
            continue
        good += 1
    observed.append(f"CDRs: {good}/{len(call_vip)} calls with exactly one record")
    return good


def start_transient(setup: DrillSetup, work: Path, victim: DrillNode, count: int
                    ) -> list[tuple[str, SippRun, SippRun]]:  # fmt: skip
    """`count` calls of each TRANSIENT kind on the victim's VIP, 1 s before its power-off."""
    started = []
    for k, (name, prefix, callee_xml, callee_d, caller_xml, caller_d) in enumerate(TRANSIENT):
        port = UAS_PORT + 2 * (k + 1)
        callee = sipp(f"uas-{name}", callee_xml, work, CLIENT, port, 6200 + 100 * k,
                      "-rtp_echo", *(["-d", str(callee_d)] if callee_d else []),
                      netns=CLIENT_NS)  # fmt: skip
        caller = sipp(f"uac-{name}", caller_xml, work, CLIENT, 5200 + 10 * k, 7600 + 100 * k,
                      "-s", prefix, "-m", str(count), "-r", "50", "-d", str(caller_d),
                      "-timeout", "90", "-timeout_error", "-recv_timeout", "30000",
                      target=f"{victim.vip}:5060", netns=CLIENT_NS)  # fmt: skip
        setup.runs += [callee, caller]
        started.append((name, callee, caller))
    return started


def crash(setup: DrillSetup, victim: DrillNode, scenario: str, t_fail: float,
          observed: list[str]) -> None:  # fmt: skip
    """Kill one process of the victim (by PID), then follow its recovery: when its VIP answers
    again (SIP OPTIONS, or rtpengine's ng ping where the VIP is) and where the VIP went."""
    index = setup.nodes.index(victim) + 1
    if scenario == "kamailio-crash":
        workers = [p for p in setup.rpc[victim.name].call("core.psx")
                   if str(p.get("DSC", "")).startswith("udp receiver")]  # fmt: skip
        pid = int(workers[0]["PID"])
        os.kill(pid, signal.SIGKILL)
        observed.append(f"killed {victim.name}'s Kamailio worker {pid} ({workers[0]['DSC']})")

        def sip() -> bool:
            with in_netns(CLIENT_NS):
                return sip_options_ok(victim.vip, 5060, 0.1, CLIENT)

        wait_until(lambda: not sip(), 5, "the crash seen on SIP")
        wait_until(sip, 90, f"SIP answered again on {victim.vip}", step=0.0)
        what = f": {victim.vip} answered SIP OPTIONS"
    elif scenario == "rtpengine-crash":
        pidfile = setup.work / victim.name / "run-kemi-ha" / f"rtpengine-{victim.vip}.pid"
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGKILL)
        observed.append(f"killed {victim.name}'s active rtpengine of {victim.vip} ({pid})")

        def relay() -> bool:
            holder = next(n for n in setup.nodes if n.name == vip_holders(setup)[f"vip{index}"])
            with in_netns(holder.netns):
                return NgClient("127.0.0.1", 2222 + index, timeout=0.1).ping()

        time.sleep(0.2)
        wait_until(relay, 90, f"an rtpengine for {victim.vip} again", step=0.0)
        what = f": {victim.vip} had an rtpengine answering ng"
    else:
        master = setup.ha[victim.name].promoted("redis-clone")
        pidfile = setup.work / victim.name / "run-kemi-ha" / "redis" / "redis-server.pid"
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGKILL)
        role = "master" if master == victim.name else "replica"
        observed.append(f"killed {victim.name}'s Redis ({role}, {pid})")
        password = read_password(setup.work / REDIS_PASSWORD_FILE)

        def writable() -> bool:
            with in_netns(victim.netns):
                conn = redis.Redis(host=REDIS_VIP, port=6379, socket_timeout=0.2,
                                   password=password)  # fmt: skip
                return bool(conn.set("kemi-ha-drill-probe", "1", ex=5))

        def local() -> bool:  # a replica in sync again (or the master)
            info = setup.ha[victim.name].run(["redis-cli", "-a", password, "--no-auth-warning",
                                              "info", "replication"]).stdout  # fmt: skip
            return "master_link_status:up" in info or "role:master" in info

        time.sleep(0.2)
        wait_until(writable, 90, "the Redis VIP writable again", step=0.0)
        observed.append(
            f"the Redis VIP writable again {1000 * (time.time() - t_fail):.0f} ms "
            f"after the kill; master on {setup.ha[victim.name].promoted('redis-clone')}"
        )
        wait_until(local, 90, f"{victim.name}'s Redis back")
        what = "'s own Redis in sync again"
        # Pacemaker's recovery may restart it once more: the next fault waits for it to settle
        setup.ha[victim.name].run(["crm_resource", "--wait", "--timeout", "60s"], timeout=70)
        wait_until(local, 90, f"{victim.name}'s Redis back after Pacemaker settled")
    observed.append(f"{victim.name}{what} {1000 * (time.time() - t_fail):.0f} ms after the "
                    f"kill; VIP holders {vip_holders(setup)}")  # fmt: skip


def vip_holders(setup: DrillSetup, among: list[DrillNode] | None = None) -> dict[str, str]:
    """Where each VIP is configured right now (`ip addr` in the namespaces of `among`, default
    every node; a powered-off node's namespace keeps its addresses: leave it out)."""
    shown = {n.name: sh("ip", "-n", n.netns, "-o", "-4", "addr", "show", check=False).stdout
             for n in (among or setup.nodes)}  # fmt: skip
    return {
        f"vip{i}": ",".join(name for name, text in shown.items() if f" {n.vip}/" in text)
        for i, n in enumerate(setup.nodes, start=1)
    }


def cut_peers(setup: DrillSetup, victim: DrillNode, cut: bool, every_link: bool = False) -> None:
    """Drop (or let again) everything between the victim and the other nodes: on network 0 only
    (its Corosync link 0 and DMQ), or on every link. The client still reaches everyone."""
    for n in setup.nodes:
        if n is victim:
            continue
        for address in [n.address, *(n.links if every_link else ())]:
            for chain, flag in (("INPUT", "-s"), ("OUTPUT", "-d")):
                sh("ip", "netns", "exec", victim.netns, "iptables", "-I" if cut else "-D", chain,
                   flag, address, "-j", "DROP", check=cut)  # fmt: skip


def watch_duplicates(setup: DrillSetup, seconds: float, settle_s: float) -> tuple[float, float]:
    """Sample every 50 ms who holds each VIP: the time some VIP was on two nodes at once, in
    all and after the first `settle_s` seconds (ms)."""
    start = time.monotonic()
    total = late = 0.0
    last = start
    while (now := time.monotonic()) - start < seconds:
        doubled = any("," in holders for holders in vip_holders(setup).values())
        if doubled:
            total += now - last
            if now - start > settle_s:
                late += now - last
        last = now
        time.sleep(0.05)
    return total * 1000, late * 1000


def total_votes(node: HaNode) -> int:
    """`Total votes` from corosync-quorumtool on the node (0 if unknown)."""
    text = node.run(["corosync-quorumtool", "-s"]).stdout
    line = next((ln for ln in text.splitlines() if ln.startswith("Total votes")), ":0")
    return int(line.split(":", 1)[1].strip() or 0)


def quorum_state(setup: DrillSetup) -> str:
    """`Quorate: Yes|No` per node, from corosync-quorumtool."""
    out = []
    for n in setup.nodes:
        text = setup.ha[n.name].run(["corosync-quorumtool", "-s"]).stdout
        quorate = next((ln.split(":", 1)[1].strip() for ln in text.splitlines()
                        if ln.startswith("Quorate")), "?")  # fmt: skip
        out.append(f"{n.name} {quorate}")
    return ", ".join(out)


def link_status(setup: DrillSetup, node: DrillNode) -> str:
    """The link lines `kemi-ha status` prints on the node (from corosync-cfgtool -s)."""
    ha = setup.ha[node.name]

    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        done = ha.run(list(argv))
        return done.returncode, done.stdout, done.stderr

    lines = render_cluster(collect_cluster(run))
    return " | ".join(line.strip() for line in lines if line.strip().startswith("link"))


def rejoin(setup: DrillSetup, node: DrillNode, calls: int, observed: list[str]) -> None:
    """Bring a powered-off node back and wait until it serves: Pacemaker member, Kamailio up,
    every call's dialog resynced over DMQ, its Redis a replica."""
    # A host that was off comes back without the VIPs it held (its namespace kept them).
    for n in setup.nodes:
        sh("ip", "-n", node.netns, "addr", "del", f"{n.vip}/24", "dev", "eth0", check=False)
    sh("ip", "-n", node.netns, "addr", "del", f"{REDIS_VIP}/24", "dev", "eth0", check=False)
    setup.lab.links(node.netns, up=True)
    ha = setup.ha[node.name]
    ha.start()
    ha.wait_ready(90)
    rpc = setup.rpc[node.name]
    wait_until(lambda: rpc.call("core.uptime") is not None, 60, f"Kamailio back on {node.name}")
    wait_until(lambda: int(rpc.call("dlg.stats_active")["ongoing"]) == calls, 30,
               f"dialogs resynced to {node.name}")  # fmt: skip

    def replica() -> bool:
        out = ha.run(["sh", "-c", "REDISCLI_AUTH=$(cat /etc/kemi-ha/redis.pass) "
                      "redis-cli info replication"]).stdout  # fmt: skip
        return "role:slave" in out and "master_link_status:up" in out

    wait_until(replica, 30, f"Redis on {node.name} replicating the master")
    master = ha.promoted("redis-clone") or "?"
    observed.append(f"{node.name} back: {calls} dialogs resynced over DMQ, its Redis a synced "
                    f"replica, Redis master on {master}")  # fmt: skip


def membership_changes(setup: DrillSetup, since: float) -> int:
    """How many new memberships any node's Corosync formed after `since` (a lost link must
    cause none: knet carries on over the other link)."""
    pattern = re.compile(r"A new membership .* was formed")
    count = 0
    for node in setup.nodes:
        log = setup.work / node.name / "log-corosync" / "corosync.log"
        for line in log.read_text(errors="replace").splitlines():
            ts = line_time(line) if pattern.search(line) else None
            count += ts is not None and ts >= since
    return count


def corosync_lines(setup: DrillSetup, since: float, limit: int = 30) -> list[str]:
    """Each node's Corosync TOTEM and KNET lines after `since`, a repeated line once: what a
    report shows when a membership changed where none should (the logs go with the work dir)."""
    out: list[str] = []
    for node in setup.nodes:
        log = setup.work / node.name / "log-corosync" / "corosync.log"
        lines, last = [], ""
        for line in log.read_text(errors="replace").splitlines():
            ts = line_time(line)
            if ts is None or ts < since or not ("[TOTEM" in line or "[KNET" in line):
                continue
            text = line.split("] ", 1)[-1]
            if text != last:
                lines.append(f"{node.name}: {line}")
            last = text
        out += lines[-limit:]
    return out


def failover_timeline(setup: DrillSetup, survivors: list[DrillNode], vip_no: int,
                      t_fail: float) -> dict[str, float]:  # fmt: skip
    """ms after the power-off of each event, the earliest any survivor logged."""
    logs = {
        kind: [(setup.work / s.name / f"log-{kind}" / f"{kind}.log").read_text(errors="replace")
               for s in survivors]
        for kind in ("corosync", "pacemaker")
    }  # fmt: skip
    timeline: dict[str, float] = {}
    for name, kind, pattern in events(vip_no):
        hits = [ts for text in logs[kind] if (ts := log_times(text, pattern, t_fail)) is not None]
        if hits:
            timeline[name] = (min(hits) - t_fail) * 1000
    return timeline


def fencing_checked(setup: DrillSetup, victim: DrillNode, survivors: list[DrillNode],
                    timeline: dict[str, float], vip_no: int) -> list[str]:  # fmt: skip
    """What the survivors' fencing history says about the victim, and whether the fence came
    before the victim's VIP moved (Pacemaker must not move it before)."""
    ha = setup.ha[survivors[0].name]
    history = ha.run(["stonith_admin", "--history", victim.name]).stdout.strip()
    out = [f"stonith_admin --history {victim.name}: {' | '.join(history.splitlines()) or 'none'}"]
    log = setup.work / survivors[0].name / "log-pacemaker" / "pacemaker.log"
    delays = [m[2] for m in FENCE_DELAY.finditer(log.read_text(errors="replace"))
              if m[1] == victim.name]  # fmt: skip
    out.append(f"random fence delay (pcmk_delay_max): {delays[-1] if delays else 'none logged'}")
    fenced, vip_up = timeline.get("fenced"), timeline.get(f"VIP{vip_no} up")
    if fenced is None:
        out.append("FENCING NOT SEEN in the survivors' pacemaker log")
    elif vip_up is not None:
        order = "after" if vip_up >= fenced else "BEFORE"
        out.append(f"VIP{vip_no} started {order} the fence ({vip_up - fenced:+.0f} ms)")
    return out


def call_result(call_id: str, vip: str, legs: list[tuple[float, bool]]) -> CallResult:
    """A call's gap is its worst leg's; its media resumed only if every leg's did."""
    if not legs or not all(resumed for _gap, resumed in legs):
        return CallResult(call_id, vip, float("inf"), -1, False)
    gap = max(gap for gap, _resumed in legs)
    return CallResult(call_id, vip, gap, max(0, round(gap / PACKET_MS) - 1), True)


CLAIM_LOG = re.compile(r"^\[(\d+\.\d+)\] kemi-ha: fast takeover: (\S+) \S+ claimed")


def claim_outcomes(log: Path) -> list[str]:
    """What the node's fast-takeover watcher said after the claim (confirmed, released)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if line.startswith("fast takeover:")]


def claim_time(log: Path, vip_id: str, t_fail: float) -> float | None:
    """ms after the power-off at which `kemi-ha run` claimed the VIP (kemi.ops.vip_claim)."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        m = CLAIM_LOG.match(line)
        if m and m.group(2) == vip_id and float(m.group(1)) >= t_fail - 0.05:
            return (float(m.group(1)) - t_fail) * 1000
    return None


AGENT_LOG = re.compile(r"^\[(\d+\.\d+)\] kemi-ha: (start|promoted)")


def takeover_mode(log: Path, t_fail: float) -> str:
    """From the rtpengine agent's lines in the new holder's log: 'hot standby' if the instance
    that was promoted after the failure had started before it (it held the calls already),
    'cold restore' if it started after the failure."""
    started, promoted = None, None
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no agent log"
    for line in lines:
        m = AGENT_LOG.match(line)
        if m and m.group(2) == "start" and promoted is None:
            started = float(m.group(1))
        elif m and m.group(2) == "promoted" and float(m.group(1)) >= t_fail - 0.05:
            promoted = float(m.group(1))
            break
    if promoted is None or started is None:
        return "no promote logged"
    mode = "hot standby" if started < t_fail else "cold restore"
    return f"{mode} (promoted {1000 * (promoted - t_fail):.0f} ms after the power-off)"


def sipp_stats(output: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in output.splitlines():
        m = re.match(r"\s*(Successful call|Failed call)\s*\|\s*\d+\s*\|\s*(\d+)", line)
        if m:
            out["successful" if m.group(1).startswith("Succ") else "failed"] = int(m.group(2))
    return out


def packet_times(pcap: Path) -> dict[tuple[str, int], list[float]]:
    """RTP packets from the VIPs to the client, by (VIP, rtpengine's port): one per call leg."""
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-T", "fields", "-e", "frame.time_epoch", "-e", "ip.src",
         "-e", "udp.srcport"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    streams: dict[tuple[str, int], list[float]] = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[2]:
            streams.setdefault((parts[1], int(parts[2])), []).append(float(parts[0]))
    return streams


def worst_gap(times: list[float], start: float, end: float) -> tuple[float, bool]:
    """The longest silence of one stream between `start` and `end` (ms), and whether RTP still
    flowed after it (5 packets or more)."""
    times = sorted(times)
    best, after = 0.0, 0
    for a, b in itertools.pairwise(times):
        if b > start and a < end and b - a > best:
            best = b - a
            after = sum(1 for t in times if t >= b)
    return best * 1000, after >= 5


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


def report(results: list[RunResult], calls: int, profile: str,
           scenario: str = "power-off") -> tuple[str, str]:  # fmt: skip
    """Every run in detail, and one summary line: the gap is that of the calls whose VIP moved
    (calls on the other VIPs are listed too: they must not notice anything)."""
    lines = [f"drill: scenario={scenario} profile={profile} calls={calls} runs={len(results)}"]
    gaps: list[float] = []
    others: list[float] = []
    medians: list[float] = []  # per run
    dropped = 0
    cdrs = sum(r.cdrs_ok for r in results)
    for i, r in enumerate(results, start=1):
        lines.append(
            f"run {i}: {r.scenario} on {r.victim} ({r.failed_vip or 'no power-off'}); BYE 200 "
            f"{r.bye_ok}/{len(r.calls)}; survivor dialogs {r.survivor_dialogs}, channels "
            f"{r.survivor_channels}; rtpengine takeover: {r.takeover}"
        )
        lines.append(f"  Pacemaker DC at the fault: {r.dc_before}")
        lines += [f"  observed: {line}" for line in r.observed]
        events = sorted(r.timeline_ms.items(), key=lambda kv: kv[1])
        lines.append("  timeline (ms after power-off): " + ", ".join(
            f"{k} {v:.0f}" for k, v in events))  # fmt: skip
        lines.append(f"  {'call':<20}{'vip':>14}{'gap_ms':>10}{'lost':>6}  resumed")
        for c in r.calls:
            resumed = "yes" if c.media_resumed else "NO"
            lines.append(f"  {c.call_id:<20}{c.vip:>14}{c.gap_ms:>10.0f}{c.lost:>6}  {resumed}")
        run_gaps = [c.gap_ms for c in r.failover_calls if c.media_resumed]
        if run_gaps:
            medians.append(statistics.median(run_gaps))
            lines.append(f"  run {i} gap: median {medians[-1]:.0f} ms, max {max(run_gaps):.0f} ms")
        gaps += run_gaps
        others += [c.gap_ms for c in r.calls if c not in r.failover_calls and c.media_resumed]
        dropped += r.dropped
    total = calls * len(results)
    median = statistics.median(gaps) if gaps else float("nan")
    worst = max(gaps) if gaps else float("nan")
    other = max(others) if others else float("nan")
    if medians:
        lines.append(distribution(medians))
    summary = (
        f"drill: scenario={scenario} calls={total} dropped={dropped} median_gap_ms={median:.0f} "
        f"max_gap_ms={worst:.0f} other_vips_max_gap_ms={other:.0f} cdrs={cdrs}/{total}"
    )
    return "\n".join(lines), summary


def distribution(medians: list[float]) -> str:
    """Over runs: the median, p90 and worst of the per-run median gaps, and the runs over 1 s."""
    ordered = sorted(medians)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    slow = sum(1 for m in ordered if m > 1000)
    return (
        f"per-run median gaps over {len(ordered)} runs: median {statistics.median(ordered):.0f} ms,"
        f" p90 {p90:.0f} ms, worst {ordered[-1]:.0f} ms; runs over 1 s: {slow}"
    )


@dataclass(frozen=True)
class DrillCase:
    """One `make drill` invocation: what to inflict on which cluster, how often."""

    scenario: str = "power-off"
    nodes: int = 2
    calls: int = 10
    repeat: int = 1
    profile: str = "tuned"
    links: int = 1
    qdevice: bool = False
    transient: int = 0

    def checked(self) -> DrillCase:
        """The case with what its scenario implies, or ValueError on an unknown name."""
        if self.profile not in COROSYNC_PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}")
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}: one of {', '.join(SCENARIOS)}")
        links = max(self.links, 2) if self.scenario == "one-link-lost" else self.links
        # Without an arbiter both halves of a cut keep every VIP: nothing to measure.
        qdevice = self.qdevice or self.scenario == "link-cut"
        return dataclasses.replace(self, links=links, qdevice=qdevice)


def run_case(case: DrillCase, keep: bool = False) -> list[RunResult]:
    """Every run of `case`, each on a freshly installed cluster."""
    case = case.checked()
    results: list[RunResult] = []
    for run_no in range(1, case.repeat + 1):
        work = Path(tempfile.mkdtemp(prefix="kemi-ha-drill-"))
        try:
            with drill_cluster(work, case.profile, case.nodes, case.links, case.qdevice,
                               case.scenario == "fenced") as setup:  # fmt: skip
                results.append(run_once(setup, case.calls, run_no, scenario=case.scenario,
                                        transient=case.transient))  # fmt: skip
        except BaseException:
            print(f"drill: run {run_no} failed; its logs are kept in {work} (with the lab's "
                  "Redis password: remove it when read)", flush=True)  # fmt: skip
            raise
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"drill: run {run_no} kept in {work}")
    return results


def drill(case: DrillCase, keep: bool = False) -> int:
    """Run the drill; print the report, the JSON path and the summary line last."""
    results = run_case(case, keep)
    text, summary = report(results, case.calls, case.profile, case.scenario)
    print(text)
    name = "kemi-ha-drill-result" + ("" if PREFIX == "khad" else f"-{PREFIX}") + ".json"
    out = Path(tempfile.gettempdir()) / name
    per_run = [vars(r) | {"calls": [vars(c) for c in r.calls]} for r in results]
    out.write_text(json.dumps(per_run, default=str, indent=1))
    print(f"drill: per-call results in {out}")
    print(summary, flush=True)
    return 0 if all(r.dropped == 0 for r in results) else 1
