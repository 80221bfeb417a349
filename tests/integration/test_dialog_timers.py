"""Issue 13, item 3: call timers of replicated dialogs after a takeover (kamailio #4938).

Kamailio 5.6 replicates a dialog's lifetime over DMQ but not its timeout-BYE flag: the dialog
module's own timer ends every node's copy silently. kemi-ha's maximum call duration is the
sweep's instead (kemi.shell.hygiene, every node, acting only on the calls of the VIPs it holds):
after a takeover the survivor ends the dead node's overlong call with one BYE each way and one
record; a node that comes back without the VIP ends nothing of the calls the other holds.

Two nodes in namespaces, one CDR store in the client namespace (as test_cdr_cluster.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from kemi.lab.cluster import A_ADDR, B_ADDR, VIP1, Cluster, node_ns, start_cluster
from kemi.lab.net import lab_ns
from kemi.ops.stack import Stack
from tests.integration.calls import wait_for

pytestmark = pytest.mark.integration
PREFIX = lab_ns("khtm")
MAX_DURATION = 10
NS_A = node_ns(1, PREFIX)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, require_root: None) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("timers")
    extra = f"calls: {{max_duration: {MAX_DURATION}}}\n"
    for running in start_cluster(base, prefix=PREFIX, cdr_store=True, policy_extra=extra):
        yield running
        running.stop_sipps()


def records(cluster: Cluster, since_ms: int) -> list[dict[str, str]]:
    return cluster.cdr_records(since_ms)


def ended_once(cluster: Cluster, since_ms: int) -> dict[str, str]:
    """The one record of the one call, and no second one a few sweeps later."""
    wait_for(lambda: records(cluster, since_ms), MAX_DURATION + 20, "the call's record",
             lambda: str(records(cluster, since_ms)))  # fmt: skip
    time.sleep(5)  # two sweep ticks on each node: a second BYE or record would come now
    [record] = records(cluster, since_ms)
    return record


def ended_by(node: Stack) -> int:
    """Calls this node ended itself (its sweep), with the callee's BYE sent; none refused."""
    log = (node.run_dir / "kamailio.log").read_text(errors="replace")
    assert "not sent to the callee" not in log
    return log.count("ending call ")


def test_a_survivor_ends_the_dead_nodes_overlong_call(cluster: Cluster) -> None:
    """Answered through A, A dies, B takes VIP1: at max_duration B (only) ends the call, its
    BYE to the callee sent once, one record: set up by A, ended by B."""
    since = int(time.time() * 1000)
    uas = cluster.uas()
    call = cluster.uac(VIP1, calls=1, duration_ms=120000)
    wait_for(lambda: cluster.counts() == [1, 1], 10, "the call answered on A, counted on both")
    answered = time.time()
    time.sleep(0.5)  # its confirmed state replicated to B (DMQ, on the ACK)
    saved, _killed = cluster.power_off_a_and_take_vip1()
    assert saved, "no session of VIP1 in Redis to restore"
    record = ended_once(cluster, since)
    assert (record["reason"], record["setup_node"], record["end_node"]) == (
        "max_duration", A_ADDR, B_ADDR)  # fmt: skip
    # B counts from the replicated start_ts, whole seconds: up to 1 s before A's answer
    assert MAX_DURATION - 1 <= int(record["end_ms"]) / 1000 - answered <= MAX_DURATION + 5
    assert ended_by(cluster.b) == 1
    wait_for(lambda: cluster.count(cluster.b) == 0, 10, "the channel freed on B")
    uas.stop()
    call.stop()
    cluster.revive_a()


def test_b_a_node_back_without_the_vip_ends_nothing_of_the_others_calls(
    cluster: Cluster,
) -> None:
    """VIP1 on B; A restarts without it and resyncs B's dialogs over DMQ; a call on VIP1 runs
    past max_duration: B ends it, A writes nothing and sends no BYE."""
    cluster.move_vip(VIP1, NS_A, node_ns(2, PREFIX))
    cluster.a.stop()
    cluster.b.config.rtpengine_vips = (*cluster.b.config.rtpengine_vips, VIP1)
    cluster.b.start_rtpengine(cluster.b.policy.vips[0])
    since = int(time.time() * 1000)
    uas = cluster.uas()
    call = cluster.uac(VIP1, calls=1, duration_ms=120000)
    wait_for(lambda: cluster.count(cluster.b) == 1, 10, "the call up on B")
    cluster.a.config.rtpengine_vips = ()
    cluster.a.start()
    wait_for(lambda: cluster.count(cluster.a) == 1, 15, "A resynced from B")
    record = ended_once(cluster, since)
    assert (record["reason"], record["setup_node"], record["end_node"]) == (
        "max_duration", B_ADDR, B_ADDR)  # fmt: skip
    assert ended_by(cluster.a) == 0
    wait_for(lambda: cluster.counts() == [0, 0], 10, "both nodes back to 0")
    uas.stop()
    call.stop()
