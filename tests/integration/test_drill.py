"""The promise. A node dies under real Corosync + Pacemaker, installed from render output; no
call drops, whatever its state.

Power-off: 20 established calls with RTP both ways at 50 packets/s, plus 2 calls of each
transient kind at the fault (ringing, answered-not-ACKed, being cancelled, hold re-INVITE
answered after it, hold re-INVITE and BYE sent during the outage). Then failback, one lost
Corosync link of two, link-cut (quorum device), fenced, a crash of Kamailio alone (calls of
every transient kind too), of an rtpengine alone, and of the hot standby's Redis before a
power-off.
The figures belong to `make drill` and docs/ha.md; the bounds here are loose on purpose.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from kemi.lab.drill import TRANSIENT, RunResult, drill_cluster, report, run_once
from kemi.ops.cluster_status import collect_cluster
from tests.pacemaker_shape import cib_shape

pytestmark = pytest.mark.integration

CALLS = 20


def test_node_power_off_drops_no_call(require_root: None) -> None:
    work = Path(tempfile.mkdtemp(prefix="kemi-ha-drill-test-"))  # readable by the redis user
    try:
        with drill_cluster(work, "tuned") as setup:
            # The cluster runs the configuration render wrote, not a patched copy of it.
            running = setup.ha["drill2"].run(["cibadmin", "--query", "--scope", "configuration"])
            rendered = (setup.rendered / "cib-resources.xml").read_text()
            live = cib_shape(running.stdout)
            for maintained in ("have-watchdog", "dc-version", "cluster-infrastructure",
                               "cluster-name"):  # fmt: skip
                live["properties"].pop(maintained, None)  # written by Pacemaker itself
            assert live == cib_shape(rendered)
            node_yaml = (setup.rendered / "drill1" / "node.yaml").read_bytes()
            assert setup.ha["drill1"].run(["cat", "/etc/kemi-ha/node.yaml"]).stdout.encode() \
                == node_yaml  # fmt: skip
            result = run_once(setup, CALLS, run_no=1, transient=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text, summary = report([result], CALLS, "tuned")
    print(text + "\n" + summary)
    assert len(result.calls) == CALLS
    assert all(c.media_resumed for c in result.calls), text
    assert all(c.gap_ms < 5000 for c in result.calls), text  # media back within seconds
    assert result.bye_ok == CALLS, text  # every BYE after the failover got its 200
    assert result.survivor_dialogs == 0 and result.survivor_channels == 0, text
    assert result.dropped == 0
    assert result.cdrs_ok == CALLS, text  # one CDR per call, by a survivor (issue 15)
    # Calls caught ringing, answered-not-ACKed, being cancelled, with a hold re-INVITE or a BYE
    # crossing the power-off (issue 13).
    for kind, *_scenarios in TRANSIENT:
        assert f"{kind}=2/2 completed (caller's SIPp)" in result.observed, text
    # Media came back through the standby that held the calls, not a cold restore.
    assert result.takeover.startswith("hot standby"), result.takeover
    # The survivor claimed the VIP at the membership change, before Pacemaker's transition
    # started it, and Pacemaker then confirmed the claim (kemi.ops.vip_claim).
    claimed = result.timeline_ms.get("VIP1 claimed (fast takeover)")
    assert claimed is not None and claimed < result.timeline_ms["VIP1 up"], text
    assert any(line.startswith("fast takeover: vip1 confirmed by Pacemaker")
               for line in result.observed), text  # fmt: skip


def test_a_powered_off_node_rejoins_and_takes_its_vip_back(require_root: None) -> None:
    """failback: power-off, the node comes back while the calls last (no VIP moves back by
    itself: stickiness; its dialogs and Redis resync), then a planned move of its VIP back costs
    the calls on it about one packet, served by its hot standby."""
    result, text = one_run("failback")
    assert result.dropped == 0, text
    assert any("after the failover: {'vip1': 'drill2'" in line for line in result.observed), text
    assert any("rejoined" in line and "'vip1': 'drill2'" in line for line in result.observed)
    assert any("dialogs resynced" in line for line in result.observed), text
    assert result.holders_after == {"vip1": "drill1", "vip2": "drill2"}, text
    assert result.rejoin_gap_ms is not None and result.rejoin_gap_ms < 200, text
    moved = next(line for line in result.observed if "VIP moved back:" in line)
    assert float(moved.rsplit(" ", 2)[-2]) < 200, text


def test_a_link_cut_leaves_every_vip_on_one_node_only(require_root: None) -> None:
    """link-cut with a quorum device (corosync-qnetd in its own namespace): both nodes keep
    running, only one keeps quorum and the VIPs; never a VIP on both after the settle."""
    result, text = one_run("link-cut", qdevice=True)
    assert result.dropped == 0, text
    quorum = next(line for line in result.observed if line.startswith("quorum:"))
    assert quorum.count(" Yes") == 1 and quorum.count(" No") == 1, text
    assert any("0 ms after the first 3 s" in line for line in result.observed), text


def test_losing_one_of_two_corosync_links_moves_nothing(require_root: None) -> None:
    """one-link-lost: link 0 between the nodes cut, link 1 up (knet active mode): no new
    membership, no VIP moves, `kemi-ha status` shows the link down, calls lose at most a packet
    or two (bound loose for a loaded CI box)."""
    result, text = one_run("one-link-lost", links=2)
    assert result.dropped == 0, text
    assert "Corosync membership changes while link 0 was cut: 0" in result.observed, text
    assert "VIP holders with link 0 cut: {'vip1': 'drill1', 'vip2': 'drill2'}" in result.observed
    links = next(line for line in result.observed if "corosync links" in line)
    assert "link 0" in links and "node 2 disconnected" in links, text
    assert "link 1" in links and "node 2 connected" in links, text
    # Usually 1-2 packets (23-42 ms). Once in CI (2026-12-06) the calls on the *other* node's
    # VIP lost 243-266 ms while link 0 was cut, with no membership change and no VIP moved;
    # suspected: its rtpengine's Redis writes to a master across the cut link (not confirmed,
    # docs/ha.md). Bound: well under any failover (a takeover would show >= 100 ms on the
    # cut node's VIP and a membership change, both asserted above).
    assert max(c.gap_ms for c in result.calls) < 500, text


def test_a_powered_off_node_is_fenced_before_its_vip_moves(require_root: None) -> None:
    """fenced: fence devices in the cluster file (the lab's fence_kemiha_netns); the survivor's
    Pacemaker fences the powered-off node, then moves its VIP; `kemi-ha status`'s cluster
    section reads the live cluster."""
    work = Path(tempfile.mkdtemp(prefix="kemi-ha-drill-test-"))
    try:
        with drill_cluster(work, "tuned", fencing=True) as setup:
            node = setup.ha["drill2"]
            cluster = collect_cluster(lambda argv: _completed(node.run(list(argv))))
            result = run_once(setup, 6, run_no=1, scenario="fenced")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text, _summary = report([result], 6, "tuned", "fenced")
    print(text)
    assert result.dropped == 0, text
    assert cluster["pacemaker"]["stonith_enabled"] is True, cluster
    assert {d["id"]: d["nodes"] for d in cluster["pacemaker"]["fence_devices"]} == {
        "fence-drill1": ["drill2"], "fence-drill2": ["drill1"],
    }, cluster  # fmt: skip
    assert cluster["quorum"]["quorate"] is True, cluster
    assert "fenced" in result.timeline_ms, text
    assert any("reboot of drill1 successful" in line for line in result.observed), text
    assert any("VIP1 started after the fence" in line for line in result.observed), text


def test_a_kamailio_crash_drops_no_call_whatever_its_state(require_root: None) -> None:
    """kamailio-crash: one Kamailio worker killed (as a segfault ends it), so all of that node's
    Kamailio stops; Pacemaker starts it again on the same node (the VIP stays, its rtpengine
    never stopped relaying), and the new Kamailio takes its own calls back from the peer over
    DMQ. Calls of every transient kind complete, and no dialog or channel is left anywhere:
    an answered call whose ACK was lost in the outage, and a call cancelled meanwhile, were
    left early on both nodes with their channels before (kemi.core.takeover, 5.)."""
    result, text = one_run("kamailio-crash", transient=2)
    assert result.dropped == 0, text
    for kind, *_scenarios in TRANSIENT:
        assert f"{kind}=2/2 completed (caller's SIPp)" in result.observed, text
    assert any("answered SIP OPTIONS" in line for line in result.observed), text
    assert result.holders_after == {"vip1": "drill1", "vip2": "drill2"}, text
    assert all(c.gap_ms < 500 for c in result.calls), text  # the media never stopped
    assert result.survivor_dialogs == 0 and result.survivor_channels == 0, text
    assert result.cdrs_ok == len(result.calls), text


def test_an_rtpengine_crash_drops_no_call(require_root: None) -> None:
    """rtpengine-crash: the active rtpengine of a VIP killed; its node's Kamailio stays up.
    Pacemaker either promotes the VIP's hot standby on the other node (the VIP moves with it)
    or recovers the instance in place (the VIP stays; a cold restore from the node's Redis):
    both seen in CI, its choice. Either way the calls lose about a second of audio, none drops."""
    result, text = one_run("rtpengine-crash")
    assert result.dropped == 0, text
    assert all(c.gap_ms < 5000 for c in result.calls if c.vip == result.failed_vip), text
    moved = result.holders_after.get("vip1") != "drill1"
    expected = "hot standby" if moved else "cold restore"
    assert result.takeover.startswith(expected), (result.holders_after, result.takeover, text)
    assert result.survivor_dialogs == 0 and result.survivor_channels == 0, text


def test_a_redis_crash_leaves_the_hot_standby_ready(require_root: None) -> None:
    """redis-crash: the Redis replica beside the hot standby of VIP1 killed; Pacemaker brings it
    back in sync; then VIP1's node is powered off: the standby, whose Redis went away and came
    back, still holds every call (hot, not a cold restore) and no call drops."""
    result, text = one_run("redis-crash")
    assert any(line.startswith("killed drill2's Redis (replica")
               for line in result.observed), text  # fmt: skip
    assert any("own Redis in sync again" in line for line in result.observed), text
    assert result.dropped == 0, text
    assert result.takeover.startswith("hot standby"), result.takeover
    assert all(c.gap_ms < 5000 for c in result.calls if c.vip == result.failed_vip), text
    assert result.cdrs_ok == len(result.calls), text


def one_run(scenario: str, calls: int = 6, transient: int = 0,
            **cluster: int) -> tuple[RunResult, str]:  # fmt: skip
    """One run of `scenario` on a fresh two-node cluster; its result and report."""
    work = Path(tempfile.mkdtemp(prefix="kemi-ha-drill-test-"))  # readable by the redis user
    try:
        with drill_cluster(work, "tuned", **cluster) as setup:
            result = run_once(setup, calls, run_no=1, scenario=scenario, transient=transient)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text, _summary = report([result], calls, "tuned", scenario)
    print(text)
    return result, text


def _completed(result: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    return result.returncode, result.stdout, result.stderr
