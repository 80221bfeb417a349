"""CDRs exactly once across a node's death and a restart with DMQ resync (issue 15).

Two nodes in namespaces (kemi/lab/cluster.py), one CDR store in the client namespace (the
cluster's Redis behind its VIP survives any node). A dies with a call up (link down, every
process SIGKILLed), B takes VIP1 by hand, the caller's BYE reaches B: exactly one record,
set up by A, ended by B. A restarts and resyncs B's dialogs over DMQ while a call is up: that
call too gets exactly one record, and nothing is written twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from kemi.lab.cluster import A_ADDR, B_ADDR, VIP1, VIP2, Cluster, node_ns, start_cluster
from kemi.lab.net import lab_ns
from kemi.ops.stack import Stack
from tests.integration.calls import assert_ok, wait_for

pytestmark = pytest.mark.integration
PREFIX = lab_ns("khcdr")
MEDIA_TIMEOUT = 5
NS_A, NS_B = node_ns(1, PREFIX), node_ns(2, PREFIX)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, require_root: None) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cdr-cluster")
    extra = f"calls: {{media_timeout: {MEDIA_TIMEOUT}}}\n"
    for running in start_cluster(base, prefix=PREFIX, cdr_store=True, policy_extra=extra):
        yield running
        running.stop_sipps()


def confirmed(node: Stack) -> int:
    return int(node.rpc.call("dlg.stats_active")["ongoing"])


def records(cluster: Cluster, since_ms: int) -> list[dict[str, str]]:
    return cluster.cdr_records(since_ms)


def settled_records(cluster: Cluster, since_ms: int, n: int) -> list[dict[str, str]]:
    """Wait for `n` records, then a little more: a duplicate would come now."""
    wait_for(lambda: len(records(cluster, since_ms)) >= n, 15, f"{n} CDRs",
             lambda: str(records(cluster, since_ms)))  # fmt: skip
    time.sleep(3)  # two sweep ticks and any late DMQ state change
    return records(cluster, since_ms)


def test_a_call_of_a_dead_node_gets_one_record_from_the_survivor(cluster: Cluster) -> None:
    since = int(time.time() * 1000)
    uas = cluster.uas()
    started = time.time()
    call = cluster.uac(VIP1, calls=1, duration_ms=6000)
    wait_for(lambda: cluster.counts() == [1, 1] and confirmed(cluster.a) == 1, 10,
             "the call answered on A, counted on both nodes")  # fmt: skip
    time.sleep(0.5)  # its confirmed state replicated to B (DMQ, on the ACK)
    cluster.lab.link(NS_A, up=False)  # power off
    cluster.a.kill_all()
    cluster.lab.add_address(NS_B, VIP1)  # B takes VIP1 over
    assert_ok(call, 40)
    ended = time.time()
    uas.stop()
    [record] = settled_records(cluster, since, 1)
    assert (record["setup_node"], record["end_node"]) == (A_ADDR, B_ADDR)
    assert (record["reason"], record["code"], record["vip"]) == ("bye_caller", "200", VIP1)
    # A's answer time (ms) did not reach B (set after the last replication of the dialog's
    # variables): B uses the replicated start_ts, whole seconds.
    assert 6.0 - 0.5 <= float(record["duration_s"]) <= ended - started + 1
    wait_for(lambda: cluster.count(cluster.b) == 0, 10, "B back to 0")


def test_b_restart_and_dmq_resync_write_nothing_twice(cluster: Cluster) -> None:
    """A comes back (without VIP1) while a call is up on B: A gets B's dialog over DMQ; the
    call ends through B; one record, and none for the call of the previous test again."""
    since = int(time.time() * 1000)
    uas = cluster.uas()
    call = cluster.uac(VIP2, calls=1, duration_ms=6000)
    wait_for(lambda: cluster.count(cluster.b) == 1, 10, "the call up on B")
    cluster.lab.del_address(NS_A, VIP1)
    cluster.lab.link(NS_A, up=True)
    cluster.a.config.rtpengine_vips = ()  # VIP1 and its media relay stay on B
    cluster.a.start()
    wait_for(lambda: cluster.count(cluster.a) == 1, 15, "A resynced from B")
    assert_ok(call, 40)
    uas.stop()
    [record] = settled_records(cluster, since, 1)
    assert (record["setup_node"], record["end_node"], record["reason"]) == (
        B_ADDR, B_ADDR, "bye_caller")  # fmt: skip
    wait_for(lambda: cluster.counts() == [0, 0], 10, "both nodes back to 0")
    assert len(records(cluster, 0)) == 2  # the whole store: one record per call, ever
    cluster.move_vip(VIP1, NS_B, NS_A)
    cluster.a.config.rtpengine_vips = (VIP1,)
    cluster.a.start_rtpengine(cluster.a.policy.vips[0])


def test_c_the_survivor_ends_a_dead_call_of_the_dead_node(cluster: Cluster) -> None:
    """A call set up on A; A dies, B takes VIP1 and its rtpengine (restored from VIP1's Redis
    DB, copied by hand as Redis replication would); then the caller vanishes: B's sweep ends
    the call for dead media: one record, ended by B, channel and media freed on B."""
    a, b = cluster.a, cluster.b
    vip1 = a.policy.vips[0]
    since = int(time.time() * 1000)
    uas = cluster.uas()
    call = cluster.uac(VIP1, calls=1, duration_ms=60000)
    wait_for(lambda: cluster.counts() == [1, 1] and confirmed(a) == 1, 10,
             "the call answered on A, counted on both nodes")  # fmt: skip
    time.sleep(0.5)
    saved, _killed = cluster.power_off_a_and_take_vip1()
    assert saved, "no session of VIP1 in Redis to restore"
    time.sleep(1)
    call.stop()  # the caller vanishes: no RTP either way (the callee echoes)
    gone = time.time()
    [record] = settled_records(cluster, since, 1)
    assert (record["reason"], record["setup_node"], record["end_node"]) == (
        "media_timeout", A_ADDR, B_ADDR)  # fmt: skip
    assert int(record["end_ms"]) / 1000 - gone <= MEDIA_TIMEOUT + 5
    wait_for(lambda: cluster.count(b) == 0, 10, "the channel freed on B")
    with b.net():
        assert b.ng(vip1).list_calls() == []
    uas.stop()
    cluster.revive_a()
