"""Issues 4 and 10: cluster-wide channel limits from DMQ-replicated dialogs, two and three
live nodes.

Real Kamailio, rtpengine, Redis and SIPp in network namespaces (see kemi/lab/cluster.py). The
two clusters use different namespace prefixes: both module fixtures live until the module ends.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from functools import partial

import pytest

from kemi.cli import main as kemi_ha
from kemi.core.dispatch import gateway_states
from kemi.lab.cluster import (
    A_ADDR,
    B_ADDR,
    CLIENT,
    DMQ_PORT,
    GATEWAY_PORT,
    NS_A,
    NS_B,
    NS_CLIENT,
    RACER,
    VIP1,
    VIP2,
    VIP3,
    Cluster,
    start_cluster,
)
from kemi.lab.net import lab_ns
from kemi.ops.bans import add_ban, list_bans, remove_ban
from kemi.ops.netns import in_netns
from kemi.ops.stack import Stack
from tests.integration.calls import assert_ok, dialog_var, send_raw, wait_for
from tests.integration.streamuac import StreamUac

pytestmark = pytest.mark.integration
FR_TIMER_S = 4  # kamailio.cfg's tm fr_timer: how long a KDMQ request is retransmitted


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory, require_root: None) -> Iterator[Cluster]:
    yield from start_cluster(tmp_path_factory.mktemp("cluster"))


@pytest.fixture
def cluster(two_nodes: Cluster) -> Iterator[Cluster]:
    """The two-node cluster; no SIPp of a test outlives the test, even a failed one."""
    yield two_nodes
    two_nodes.stop_sipps()


def every(cluster: Cluster, n: int, tenant: str = "clients") -> bool:
    return all(count == n for count in cluster.counts(tenant))


def ongoing(node: Stack) -> int:
    return int(node.rpc.call("dlg.stats_active")["ongoing"])


def counts(cluster: Cluster) -> str:
    return " ".join(f"node{i}={n}" for i, n in enumerate(cluster.counts(), 1))


def test_a_limit_holds_for_the_cluster(cluster: Cluster) -> None:
    """Limit 10: 6 calls via A and 4 via B succeed; an 11th is refused on either node."""
    uas = cluster.uas()
    via_a = cluster.uac(VIP1, calls=6, duration_ms=6000)
    via_b = cluster.uac(VIP2, calls=4, duration_ms=6000)
    wait_for(
        lambda: every(cluster, 10),
        timeout=10,
        what="10 calls counted on both nodes",
        state=lambda: counts(cluster),
    )
    for vip in (VIP1, VIP2):
        assert_ok(cluster.uac(vip, calls=1, duration_ms=0, scenario="uac_busy.xml"), 20)
    assert_ok(via_a, 30)
    assert_ok(via_b, 30)
    wait_for(
        lambda: every(cluster, 0),
        timeout=10,
        what="slots freed on both nodes",
        state=lambda: counts(cluster),
    )
    uas.stop()


def test_b_bye_through_the_other_node_ends_the_call(cluster: Cluster) -> None:
    """A BYE for calls set up through A, delivered to B (B took VIP1), ends them end-to-end."""
    uas = cluster.uas()
    via_a = cluster.uac(VIP1, calls=2, duration_ms=4000)
    # Established (ACKed) on both nodes first: see docs/cluster.md for a takeover mid-setup.
    wait_for(lambda: ongoing(cluster.a) == ongoing(cluster.b) == 2, timeout=10,
             what="2 established calls on both nodes", state=lambda: counts(cluster))  # fmt: skip
    cluster.move_vip(VIP1, NS_A, NS_B)
    try:
        assert_ok(via_a, 40)  # every BYE got its 200 through B
        wait_for(lambda: every(cluster, 0), timeout=10, what="slots freed on A and B",
                 state=lambda: counts(cluster))  # fmt: skip
    finally:
        cluster.move_vip(VIP1, NS_B, NS_A)
    uas.stop()


@pytest.mark.parametrize(("transport", "port"), [("tcp", 5060), ("tls", 5061)])
def test_b2_call_over_a_connection_continues_through_the_other_node(
    cluster: Cluster, transport: str, port: int
) -> None:
    """A call set up over TCP (TLS) through A on VIP1; VIP1 moved to B by hand. The caller
    finds its connection gone (RFC 5626 CRLF keepalive: B resets it), connects again to VIP1,
    now B, and its BYE, with the Route set of both sockets, ends the call through B (the
    dialog was replicated over DMQ): the callee's 200 (a proxy answers no BYE itself) reaches
    the caller over its new connection, and both nodes free the call."""
    cluster.uas()
    caller = StreamUac(CLIENT, (VIP1, port), transport, netns=cluster.client_ns)
    caller.connect()
    try:
        assert caller.invite().status == 200
        assert len(caller.routes) == 2, caller.routes  # TCP/TLS in, UDP to the callee
        wait_for(lambda: ongoing(cluster.a) == ongoing(cluster.b) == 1, timeout=10,
                 what="the call on both nodes", state=lambda: counts(cluster))  # fmt: skip
        assert caller.alive()
        cluster.move_vip(VIP1, NS_A, NS_B)
        try:
            assert not caller.alive(), "the connection to A survived the VIP's move"
            caller.connect()
            assert caller.bye().status == 200
            wait_for(lambda: every(cluster, 0), timeout=10, what="slots freed on A and B",
                     state=lambda: counts(cluster))  # fmt: skip
        finally:
            cluster.move_vip(VIP1, NS_B, NS_A)
    finally:
        caller.close()


def test_dmq_peers_in_metrics_and_status(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    with in_netns(NS_A), urllib.request.urlopen(f"{cluster.a.http_url}/metrics") as page:
        text = page.read().decode()
    assert 'kemi_ha_dmq_peer_up{peer="10.99.0.2:5090"} 1.0' in text
    capsys.readouterr()
    assert kemi_ha(["status", "--run-dir", str(cluster.a.run_dir), "--json"]) == 0
    peers = json.loads(capsys.readouterr().out)["dmq_peers"]
    assert {(p["host"], p["status"]) for p in peers} == {(A_ADDR, "active"), (B_ADDR, "active")}


def test_each_node_probes_the_gateway_on_its_own(cluster: Cluster) -> None:
    """No gateway yet: both nodes' probes mark it down; once it answers, both see it up from
    their own probes (the replies come back to the node that sent them, whichever VIPs it
    holds); once it is gone, both see it down again."""

    def states() -> list[str]:
        return [
            next(g.state for g in gateway_states(node.policy, node.rpc.call("dispatcher.list")))
            for node in cluster.nodes
        ]

    wait_for(lambda: states() == ["down", "down"], 15, "no gateway: down on both nodes", states)
    gateway = cluster.gateway()
    wait_for(lambda: states() == ["up", "up"], 10, "the gateway up on both nodes", states)
    # a call to it through node A: node B's copy of the dialog knows the gateway too (where
    # B forwards an orphan CANCEL/ACK of that call after a takeover)
    call = cluster.uac(VIP1, calls=1, duration_ms=2000, service="8000")
    kept = wait_for(lambda: dialog_var(cluster.b, "kha_dst"), 5, "the gateway in B's dialog")
    assert kept == f"sip:{CLIENT}:{GATEWAY_PORT}"
    assert_ok(call)
    gateway.stop()
    wait_for(lambda: states() == ["down", "down"], 15, "the gateway down on both nodes", states)


def test_d_kdmq_from_a_stranger_is_refused(cluster: Cluster) -> None:
    kdmq = (
        f"KDMQ sip:dialog@{A_ADDR}:5090 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {RACER}:LPORT;branch=z9hG4bKkdmqstranger;rport\r\n"
        f"From: <sip:dialog@{RACER}:LPORT>;tag=stranger\r\nTo: <sip:dialog@{A_ADDR}:5090>\r\n"
        "Call-ID: kdmq-stranger\r\nCSeq: 1 KDMQ\r\nMax-Forwards: 1\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    before = (cluster.count(cluster.a), cluster.count(cluster.b))
    with in_netns(NS_CLIENT):
        answer = send_raw(A_ADDR, 5090, kdmq, bind=RACER)
    assert answer is not None and answer.startswith("SIP/2.0 403"), answer
    assert (cluster.count(cluster.a), cluster.count(cluster.b)) == before
    log = (cluster.a.run_dir / "kamailio.log").read_text(errors="replace")
    assert f"KDMQ from {RACER} refused: not a configured DMQ peer" in log


def test_e_race_overshoot_is_measured(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    """50 INVITEs at once, split across A and B, against a limit of 20: print overshoot.

    Both callers start together at 200 cps each, so the INVITEs of the two nodes interleave
    over ~125 ms: every admission on one node races the replication of the other's.
    """
    uas = cluster.uas()
    runs = [
        cluster.uac(vip, calls=25, duration_ms=5000, scenario="uac_limited.xml", rate=200,
                    source=RACER, settle=0)
        for vip in (VIP1, VIP2)
    ]  # fmt: skip
    time.sleep(2.5)  # every INVITE answered and every dialog replicated
    admitted = max(cluster.count(cluster.a, "racers"), cluster.count(cluster.b, "racers"))
    for run in runs:
        assert_ok(run, 40)
    wait_for(lambda: every(cluster, 0, "racers"), timeout=10, what="race calls ended")
    uas.stop()
    overshoot = admitted - 20
    with capsys.disabled():
        print(f"\nrace: 50 INVITEs across 2 nodes, limit 20: admitted={admitted} "
              f"overshoot={overshoot}")  # fmt: skip
    assert 20 <= admitted <= 50
    assert overshoot >= 0


def test_c_node_a_dies_b_keeps_counting_and_a_resyncs(cluster: Cluster) -> None:
    """kill -9 of node A with calls up: B still counts them, they end through B, A resyncs."""
    uas = cluster.uas()
    via_a = cluster.uac(VIP1, calls=3, duration_ms=6000)
    via_b = cluster.uac(VIP2, calls=2, duration_ms=6000)
    wait_for(
        lambda: every(cluster, 5) and ongoing(cluster.a) == 5,
        timeout=10,
        what="5 calls counted on both nodes, all answered (B has no relay for VIP1 here)",
        state=lambda: f"{counts(cluster)}; answered, seen on A: {ongoing(cluster.a)}",
    )

    cluster.lab.link(NS_A, up=False)  # power off: link down, every process SIGKILLed
    cluster.a.kill_all()
    time.sleep(1)
    assert cluster.count(cluster.b) == 5, "B forgot calls of the dead node"
    cluster.lab.add_address(NS_B, VIP1)  # B takes VIP1 over
    assert_ok(via_a, 40)
    assert_ok(via_b, 40)
    wait_for(lambda: cluster.count(cluster.b) == 0, timeout=10, what="B back to 0")

    # A comes back (without VIP1) while calls run on B: it resynchronises from B.
    via_b = cluster.uac(VIP2, calls=2, duration_ms=6000)
    wait_for(lambda: cluster.count(cluster.b) == 2, timeout=10, what="2 calls on B")
    cluster.lab.del_address(NS_A, VIP1)
    cluster.lab.link(NS_A, up=True)
    cluster.a.config.rtpengine_vips = ()  # VIP1 and its media relay stay on B for now
    cluster.a.start()
    wait_for(
        lambda: cluster.count(cluster.a) == 2,
        timeout=15,
        what="A resynced from B",
        state=lambda: counts(cluster),
    )
    assert_ok(via_b, 40)
    wait_for(lambda: every(cluster, 0), timeout=10, what="both back to 0")
    cluster.move_vip(VIP1, NS_B, NS_A)
    cluster.a.config.rtpengine_vips = (VIP1,)
    cluster.a.start_rtpengine(cluster.a.policy.vips[0])
    uas.stop()


PARTITION_BANNED = "10.99.0.250"  # no host of the lab
CALL_S = 50  # the partition test's call: its BYE comes after the VIP moved to A


def banned(node: Stack, source: str) -> bool:
    return any(ban.source == source for ban in list_bans(node.rpc))


def test_f_after_a_partition_a_learns_the_calls_set_up_meanwhile(cluster: Cluster) -> None:
    """A and B cannot reach each other (both up, clients reach both) while a call is set up
    on B: the call's KDMQ updates to A time out. When the partition ends, A asks B for its
    dialogs again (kemi.core.dmq_resync): A counts the call, and when it then takes VIP2 over
    it ends the call on the caller's BYE. Kamailio 5.6 asks only at start: A would never count
    it, and would answer that BYE 481. The same for a ban B set meanwhile (htable)."""
    uas = cluster.uas()
    cluster.lab.partition(NS_A, NS_B, cut=True)  # the interconnect fails, both nodes up
    started = time.monotonic()
    call = cluster.uac(VIP2, calls=1, duration_ms=CALL_S * 1000)
    wait_for(lambda: cluster.count(cluster.b) == 1, timeout=10, what="the call up on B")
    time.sleep(FR_TIMER_S + 1)  # tm has given up retransmitting the call's updates to A
    b_seen = (B_ADDR, str(DMQ_PORT), "active")
    wait_for(lambda: b_seen not in dmq_peers(cluster.a), timeout=30,
             what="A's DMQ sees B gone", state=lambda: mesh_state(cluster))  # fmt: skip
    assert cluster.count(cluster.a) == 0, "the call reached A through the partition"
    add_ban(cluster.b.rpc, PARTITION_BANNED, 600)  # a ban on B: its DMQ update to A is lost
    time.sleep(FR_TIMER_S + 1)
    assert not banned(cluster.a, PARTITION_BANNED)
    cluster.lab.partition(NS_A, NS_B, cut=False)
    wait_for(
        lambda: cluster.count(cluster.a) == 1,
        timeout=30,
        what="A counts the call B set up during the partition",
        state=lambda: f"{counts(cluster)}; {mesh_state(cluster)}",
    )
    wait_for(lambda: banned(cluster.a, PARTITION_BANNED), timeout=10, what="B's ban on A")
    log = (cluster.a.log_dir / "kamailio.log").read_text(errors="replace")
    assert "became active: its dialog state requested" in log
    remove_ban(cluster.a.rpc, PARTITION_BANNED)
    assert time.monotonic() - started < CALL_S - 5, "the BYE would not wait for the move"
    cluster.move_vip(VIP2, NS_B, NS_A)  # A takes VIP2 over: the call's BYE reaches A
    try:
        assert_ok(call, 60)  # A relays it (a 481 would fail the caller's BYE)
    finally:
        cluster.move_vip(VIP2, NS_A, NS_B)
    wait_for(lambda: every(cluster, 0), timeout=10, what="both back to 0",
             state=lambda: counts(cluster))  # fmt: skip
    uas.stop()


# ----- three nodes (issue 10) ---------------------------------------------------------------


def dmq_peers(node: Stack) -> set[tuple[str, str, str]]:
    """(host, port, status) of the peers DMQ knows on `node`, itself left out."""
    return {
        (p["host"], str(p["port"]), p["status"])
        for p in node.rpc.call("dmq.list_nodes")
        if not int(p["local"])
    }


def peers_of(cluster: Cluster, node: Stack) -> set[tuple[str, str, str]]:
    """What a full mesh shows on `node`: every other node, active."""
    return {
        (other.config.node_address, str(DMQ_PORT), "active")
        for other in cluster.nodes
        if other is not node
    }


def full_mesh(cluster: Cluster) -> bool:
    return all(dmq_peers(node) == peers_of(cluster, node) for node in cluster.nodes)


def mesh_state(cluster: Cluster) -> str:
    return "; ".join(f"node{i}: {sorted(dmq_peers(n))}" for i, n in enumerate(cluster.nodes, 1))


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory: pytest.TempPathFactory, require_root: None) -> Iterator[Cluster]:
    """Started once for every 3-node test (~10 s); ready when DMQ is a full mesh."""
    base = tmp_path_factory.mktemp("cluster3")
    for cluster in start_cluster(base, nodes=3, prefix=lab_ns("khat-3n")):
        wait_for(partial(full_mesh, cluster), timeout=30, what="DMQ full mesh of 3 nodes",
                 state=partial(mesh_state, cluster))  # fmt: skip
        yield cluster


@pytest.fixture
def cluster3(three_nodes: Cluster) -> Iterator[Cluster]:
    yield three_nodes
    three_nodes.stop_sipps()


def test_3n_dmq_is_a_full_mesh(cluster3: Cluster) -> None:
    """Each node's dmq.list_nodes lists the two others as active (and nobody else)."""
    for node in cluster3.nodes:
        assert dmq_peers(node) == peers_of(cluster3, node), node.config.node_address


def test_3n_limit_holds_for_the_cluster(
    cluster3: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """Limit 10: 4 calls via node 1, 4 via node 2, then 2 more via node 3 are admitted, and
    every node refuses the 11th: a node that missed a replicated dialog would admit it."""
    assert cluster3.vips == [VIP1, VIP2, VIP3]
    uas = cluster3.uas()
    held = [cluster3.uac(vip, calls=4, duration_ms=8000) for vip in (VIP1, VIP2)]
    wait_for(lambda: every(cluster3, 8), timeout=10, what="8 calls counted on every node",
             state=lambda: counts(cluster3))  # fmt: skip
    held.append(cluster3.uac(VIP3, calls=2, duration_ms=6000))  # admitted: node 3 counts 8
    wait_for(lambda: every(cluster3, 10), timeout=10, what="10 calls counted on every node",
             state=lambda: counts(cluster3))  # fmt: skip
    at_limit = counts(cluster3)
    refused = [
        cluster3.uac(vip, calls=calls, duration_ms=0, scenario="uac_busy.xml")
        for vip, calls in ((VIP3, 2), (VIP1, 1), (VIP2, 1))
    ]
    for run in refused:
        assert_ok(run, 20)  # every INVITE got 486
    assert every(cluster3, 10), counts(cluster3)
    for run in held:
        assert_ok(run, 40)
    wait_for(lambda: every(cluster3, 0), timeout=10, what="slots freed on every node",
             state=lambda: counts(cluster3))  # fmt: skip
    uas.stop()
    with capsys.disabled():
        print(f"\n3 nodes, limit 10: admitted 4+4+2, refused 2 via VIP3 and 1 each via VIP1/VIP2; "
              f"at the limit {at_limit}; after the calls {counts(cluster3)}")  # fmt: skip
