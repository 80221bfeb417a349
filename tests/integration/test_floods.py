"""Issue 17 part 3: floods and scanners banned cluster-wide, on two live DMQ nodes.

Real Kamailio, rtpengine, Redis and SIPp in network namespaces (kemi/lab/cluster.py). The policy
trusts only 10.99.0.0/28 (nodes, CLIENT, RACER, UNLIMITED): FLOODER and SCANNER are strangers.
A ban set on one node is an htable item replicated over DMQ (kha_ban), read here over each
node's JSON-RPC.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator

import pytest

from kemi.cli import main as kemi_ha
from kemi.core.floods import BAN_TABLE, bans_from_dump
from kemi.lab.cluster import (
    CLIENT,
    FLOODER,
    NET,
    TRUSTED_CLIENTS,
    UNLIMITED,
    VIP1,
    VIP2,
    Cluster,
    policy_text,
    start_cluster,
)
from kemi.lab.net import lab_ns
from kemi.ops.netns import in_netns
from kemi.ops.stack import Stack
from tests.integration.calls import assert_ok, send_raw, wait_for

pytestmark = pytest.mark.integration

SCANNER, OPERATOR_BANNED = f"{NET}.67", f"{NET}.68"
BAN_S = 8
MAX_REQUESTS = 100
POLICY = policy_text(
    2, trusted=TRUSTED_CLIENTS, extra=f"floods: {{max_requests: {MAX_REQUESTS}, ban_s: {BAN_S}}}\n"
)


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory, require_root: None) -> Iterator[Cluster]:
    yield from start_cluster(
        tmp_path_factory.mktemp("floods"), prefix=lab_ns("khfl"), policy=POLICY,
        client_addresses=(FLOODER, SCANNER, OPERATOR_BANNED),
    )  # fmt: skip


@pytest.fixture
def cluster(two_nodes: Cluster) -> Iterator[Cluster]:
    """The cluster with no ban left by an earlier test, and no SIPp outliving the test."""
    for source in (FLOODER, SCANNER, OPERATOR_BANNED):
        assert kemi_ha(["ban", "remove", source, "--run-dir", str(two_nodes.a.run_dir)]) == 0
    wait_for(lambda: not any(banned(n) for n in two_nodes.nodes), what="no bans left")
    yield two_nodes
    two_nodes.stop_sipps()


def banned(node: Stack) -> set[str]:
    dump = node.rpc.call("htable.dump", BAN_TABLE) or []
    return {b.source for b in bans_from_dump(dump, time.time())}


def bans(cluster: Cluster) -> str:
    return " ".join(f"node{i}={sorted(banned(n))}" for i, n in enumerate(cluster.nodes, 1))


def options(
    cluster: Cluster, vip: str, source: str, ua: str = "probe/1.0", timeout: float = 1.0
) -> str | None:
    """One OPTIONS to the proxy on `vip` from `source` (client namespace): its answer line."""
    text = (
        f"OPTIONS sip:{vip}:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {source}:LPORT;branch=z9hG4bK{time.monotonic_ns()};rport\r\n"
        f"From: <sip:probe@{source}>;tag=p{time.monotonic_ns()}\r\nTo: <sip:{vip}:5060>\r\n"
        f"Call-ID: probe-{time.monotonic_ns()}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
        f"User-Agent: {ua}\r\nContent-Length: 0\r\n\r\n"
    )
    with in_netns(cluster.client_ns):
        return send_raw(vip, 5060, text, timeout=timeout, bind=source)


def banned_everywhere_after(cluster: Cluster, source: str, start: float) -> list[float]:
    """Seconds from `start` until each node holds a ban on `source` (polled every 20 ms)."""
    seen: dict[int, float] = {}
    while len(seen) < len(cluster.nodes) and time.monotonic() - start < 5:
        for i, node in enumerate(cluster.nodes):
            if i not in seen and source in banned(node):
                seen[i] = time.monotonic() - start
        time.sleep(0.02)
    assert len(seen) == len(cluster.nodes), f"{source} not banned everywhere: {bans(cluster)}"
    return [seen[i] for i in range(len(cluster.nodes))]


def metric(node: Stack, line_start: str) -> float:
    with in_netns(node.config.netns), urllib.request.urlopen(f"{node.http_url}/metrics") as page:
        for line in page.read().decode().splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_a_flood_is_banned_on_both_nodes_within_1s_legit_calls_pass_the_ban_expires(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """1,000 INVITE/s for 10 s from FLOODER to VIP1 (node A): banned on A and B within 1 s;
    calls from CLIENT through both VIPs during the flood all complete; the ban ends BAN_S
    after the flood's last ban, on both nodes, and FLOODER is answered again."""
    uas = cluster.uas()
    legit = [cluster.uac(vip, calls=20, duration_ms=1000, rate=2) for vip in (VIP1, VIP2)]
    start = time.monotonic()
    run = cluster.flood(FLOODER, VIP1, rate=1000, count=10_000)
    delays = banned_everywhere_after(cluster, FLOODER, start)
    with capsys.disabled():
        print(f"\nflood 1000/s: banned on node1 after {delays[0]:.3f} s, node2 {delays[1]:.3f} s")
    assert max(delays) < 1.0, delays
    assert options(cluster, VIP2, FLOODER) is None  # node B drops it too (it holds VIP2)
    assert options(cluster, VIP2, CLIENT) == "SIP/2.0 200 OK"
    for call in legit:
        assert_ok(call, 60)
    run.wait(30)
    flood_end = time.monotonic()
    assert metric(cluster.a, 'kemi_ha_flood_drops_total{reason="banned"}') > 5000
    assert metric(cluster.a, 'kemi_ha_bans_total{reason="flood"}') >= 1
    wait_for(
        lambda: not any(FLOODER in banned(n) for n in cluster.nodes),
        timeout=BAN_S + 5,
        what="the ban ended on both nodes",
        state=lambda: bans(cluster),
    )
    assert time.monotonic() - flood_end <= BAN_S + 1.5
    assert options(cluster, VIP1, FLOODER) == "SIP/2.0 200 OK"
    assert options(cluster, VIP2, FLOODER) == "SIP/2.0 200 OK"
    uas.stop()


def test_b_a_ban_survives_the_vip_moving_to_the_other_node(cluster: Cluster) -> None:
    """Banned by node A (a burst to VIP1), VIP1 moves to node B: B drops FLOODER on VIP1 and
    still serves everyone else there."""
    start = time.monotonic()
    cluster.flood(FLOODER, VIP1, rate=1000, count=300)
    banned_everywhere_after(cluster, FLOODER, start)
    ns_a, ns_b = cluster.a.config.netns, cluster.b.config.netns
    assert ns_a is not None and ns_b is not None
    cluster.move_vip(VIP1, ns_a, ns_b)
    try:
        assert options(cluster, VIP1, CLIENT) == "SIP/2.0 200 OK"  # node B answers on VIP1 now
        assert options(cluster, VIP1, FLOODER) is None
        assert FLOODER in banned(cluster.b)
    finally:
        cluster.move_vip(VIP1, ns_b, ns_a)


def test_c_a_trusted_peer_flooding_is_never_banned(cluster: Cluster) -> None:
    """UNLIMITED (trusted) sends 1,000 OPTIONS/s for 3 s: never banned, always answered."""
    run = cluster.flood(UNLIMITED, VIP1, rate=1000, count=3000, method="OPTIONS")
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        assert not any(banned(n) for n in cluster.nodes), bans(cluster)
        time.sleep(0.1)
    run.wait(30)
    assert options(cluster, VIP1, UNLIMITED) == "SIP/2.0 200 OK"
    assert not any(banned(n) for n in cluster.nodes), bans(cluster)


def test_d_a_scanner_is_refused_and_banned_everywhere(cluster: Cluster) -> None:
    """One OPTIONS with SIPVicious' User-Agent: no answer, and its source banned on both."""
    start = time.monotonic()
    assert options(cluster, VIP2, SCANNER, ua="friendly-scanner") is None
    banned_everywhere_after(cluster, SCANNER, start)
    assert options(cluster, VIP1, SCANNER) is None  # banned: even a polite request is dropped


def test_e_operator_bans_on_one_node_apply_on_every_node(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kemi-ha ban add` on node A bans on B; `ban list` on B shows it; `ban remove` on B lifts
    it on A; a source that is exempt is stored but told to have no effect."""
    run_a, run_b = str(cluster.a.run_dir), str(cluster.b.run_dir)
    assert options(cluster, VIP2, OPERATOR_BANNED) == "SIP/2.0 200 OK"
    assert kemi_ha(["ban", "add", OPERATOR_BANNED, "--seconds", "60", "--run-dir", run_a]) == 0
    wait_for(lambda: OPERATOR_BANNED in banned(cluster.b), what="the ban replicated to node B")
    assert options(cluster, VIP2, OPERATOR_BANNED) is None
    capsys.readouterr()
    assert kemi_ha(["ban", "list", "--run-dir", run_b]) == 0
    out = capsys.readouterr().out
    assert OPERATOR_BANNED in out, out
    assert kemi_ha(["status", "--run-dir", run_b, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [b["source"] for b in status["bans"]] == [OPERATOR_BANNED]
    assert 50 <= status["bans"][0]["left_s"] <= 60
    assert kemi_ha(["status", "--run-dir", run_b]) == 0
    assert f"bans (cluster-wide): 1\n  {OPERATOR_BANNED}" in capsys.readouterr().out
    assert kemi_ha(["ban", "remove", OPERATOR_BANNED, "--run-dir", run_b]) == 0
    wait_for(lambda: OPERATOR_BANNED not in banned(cluster.a), what="the ban lifted on node A")
    assert options(cluster, VIP1, OPERATOR_BANNED) == "SIP/2.0 200 OK"
    assert kemi_ha(["ban", "add", CLIENT, "--seconds", "5", "--run-dir", run_a]) == 0
    assert "exempt" in capsys.readouterr().err
    assert options(cluster, VIP1, CLIENT) == "SIP/2.0 200 OK"
    assert kemi_ha(["ban", "remove", CLIENT, "--run-dir", run_a]) == 0
    assert kemi_ha(["ban", "add", "not-an-ip", "--run-dir", run_a]) == 2


def test_f_a_restarted_node_gets_the_bans_from_its_peer(cluster: Cluster) -> None:
    """Node B's Kamailio restarts (a node rejoining after a failover): DMQ's initial sync
    gives it node A's bans, with their end."""
    assert kemi_ha(["ban", "add", OPERATOR_BANNED, "--seconds", "120", "--run-dir",
                    str(cluster.a.run_dir)]) == 0  # fmt: skip
    wait_for(lambda: OPERATOR_BANNED in banned(cluster.b), what="the ban replicated to node B")
    node = cluster.b
    assert node.kamailio is not None
    node.kamailio.stop()
    node.start_kamailio()
    wait_for(
        lambda: OPERATOR_BANNED in banned(node),
        timeout=10,
        what="the ban synced to the restarted node B",
        state=lambda: bans(cluster),
    )
    assert options(cluster, VIP2, OPERATOR_BANNED) is None
