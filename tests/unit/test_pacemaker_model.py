"""The Pacemaker model: crm text and CIB XML say the same thing, and the decisions per cluster."""

from __future__ import annotations

import dataclasses
import xml.etree.ElementTree as ET

import pytest

from kemi.core.cluster_resources import cluster_resources
from kemi.core.cluster_spec import (
    ClusterSpec,
    ClusterVipSpec,
    FenceSpec,
    NodeSpec,
    QuorumDeviceSpec,
    RedisSpec,
)
from kemi.core.pacemaker import Location, PacemakerConfig, to_cib, to_cib_configuration, to_crm
from tests.pacemaker_shape import Shape, cib_shape, crm_shape


def cluster(interfaces: list[str], prefer: list[str], redis_port: int = 6379) -> ClusterSpec:
    """Nodes node1..N on 10.99.1.x, one VIP per entry of `prefer`, port ranges split."""
    nodes = [
        NodeSpec(name=f"node{i}", id=i, address=f"10.99.1.{i}", interface=nic)
        for i, nic in enumerate(interfaces, start=1)
    ]
    vips = [
        ClusterVipSpec(address=f"10.99.1.{100 + i}", prefer=node, ng_port=2222 + i,
                       port_min=20000 + 5000 * i, port_max=24999 + 5000 * i)
        for i, node in enumerate(prefer, start=1)
    ]  # fmt: skip
    return ClusterSpec(
        cluster_name="t", nodes=nodes, vips=vips, policy="p.yaml",
        redis=RedisSpec(vip="10.99.1.100", password_file="redis.pass", port=redis_port),
    )  # fmt: skip


TWO = cluster(["eth0", "eth0"], ["node1", "node2"])
THREE = cluster(["eth0", "ens3", "eth0"], ["node2", "node3", "node1"], redis_port=6380)
CLUSTERS = pytest.mark.parametrize("spec", [TWO, THREE], ids=["2-nodes", "3-nodes"])


def shapes(spec: ClusterSpec) -> tuple[Shape, Shape]:
    model = cluster_resources(spec)
    return crm_shape(to_crm(model)), cib_shape(to_cib_configuration(model))


@CLUSTERS
def test_crm_and_cib_say_the_same(spec: ClusterSpec) -> None:
    crm, cib = shapes(spec)
    assert crm == cib
    # The comparison is not vacuous: every resource and constraint was read on both sides.
    assert len(cib["resources"]) == 2 + 2 * len(spec.vips) + 1
    assert len(cib["clones"]) == 2 + len(spec.vips)
    assert len(cib["constraints"]) == 3 + 3 * len(
        spec.vips
    )  # Redis; per VIP: rtpengine, prefer, Kamailio


@CLUSTERS
def test_full_cib_is_the_configuration_plus_the_nodes(spec: ClusterSpec) -> None:
    model = cluster_resources(spec)
    full = to_cib(model, [(n.id, n.name) for n in spec.nodes])
    assert cib_shape(full) == cib_shape(to_cib_configuration(model))
    root = ET.fromstring(full)
    assert root.attrib["validate-with"] == "pacemaker-3.9" and root.find("status") is not None
    nodes = [(n.attrib["id"], n.attrib["uname"]) for n in root.iterfind("configuration/nodes/node")]
    assert nodes == [(str(n.id), n.name) for n in spec.nodes]


@pytest.mark.parametrize(
    ("spec", "clone_max", "no_quorum", "nic"),
    [(TWO, "2", "ignore", "eth0"), (THREE, "3", "stop", None)],
    ids=["2-nodes", "3-nodes"],
)
def test_decisions_per_cluster_size(
    spec: ClusterSpec, clone_max: str, no_quorum: str, nic: str | None
) -> None:
    _, cib = shapes(spec)
    for clone in ("redis-clone", "kamailio-clone"):
        assert cib["clones"][clone]["meta"]["clone-max"] == clone_max
    assert cib["properties"]["no-quorum-policy"] == no_quorum
    ipaddr2 = ["redis-vip"] + [f"vip{i}" for i in range(1, len(spec.vips) + 1)]
    for rid in ipaddr2:
        assert cib["resources"][rid]["params"].get("nic") == nic, rid


@CLUSTERS
def test_each_vip_gets_a_promotable_rtpengine_on_every_node(spec: ClusterSpec) -> None:
    """Hot standby: VIP i's rtpengine runs on every node; the promoted one follows the VIP."""
    _, cib = shapes(spec)
    port = spec.redis.port
    for i, vip in enumerate(spec.vips, start=1):
        dbs = " ".join(f"{n.name}:{16 * i + n.id}" for n in spec.nodes)
        assert cib["resources"][f"rtpengine{i}"]["params"] == {
            "vip": vip.address, "ng_address": "127.0.0.1", "ng_port": str(spec.ng_port_of(i)),
            "port_min": str(vip.port_min), "port_max": str(vip.port_max),
            "cli": f"127.0.0.1:{9900 + i}", "redis": f"127.0.0.1:{port}",
            "redis_write": f"10.99.1.100:{port}", "dbs": dbs,
            "redis_password_file": "/etc/kemi-ha/redis.pass",
            "rundir": "/run/kemi-ha", "logdir": "/var/log/kemi-ha",
        }  # fmt: skip
        clone = cib["clones"][f"rtpengine{i}-clone"]
        assert clone["primitive"] == f"rtpengine{i}"
        assert clone["meta"] == {
            "promotable": "true", "promoted-max": "1", "promoted-node-max": "1",
            "clone-max": str(len(spec.nodes)), "clone-node-max": "1",
        }  # fmt: skip
        roles = {op[3] for op in cib["resources"][f"rtpengine{i}"]["ops"] if op[0] == "monitor"}
        assert roles == {"Promoted", "Unpromoted"}
        assert cib["resources"][f"vip{i}"]["params"]["ip"] == vip.address
        assert cib["constraints"][f"vip{i}-prefers"]["node"] == vip.prefer
        assert cib["constraints"][f"rtpengine{i}-active-with-vip{i}"] == {
            "kind-of": "rsc_colocation", "rsc": f"rtpengine{i}-clone", "rsc-role": "Promoted",
            "with-rsc": f"vip{i}", "score": "INFINITY",
        }  # fmt: skip
        # No order between the VIP and its rtpengine: promote and the VIP's start run at once.
        orders = [c for c in cib["constraints"].values() if c["kind-of"] == "rsc_order"]
        assert all(f"vip{i}" not in (o["first"], o["then"]) for o in orders)
    assert cib["constraints"]["redis-promoted-prefers"]["rule-uname"] == spec.vips[0].prefer


def test_redis_and_kamailio_are_configured_once() -> None:
    """What the two old renderers disagreed on (rundir, notify, logfile) is now in both."""
    crm, _ = shapes(TWO)
    redis = crm["resources"]["redis"]
    assert redis["params"]["rundir"] == "/run/kemi-ha/redis"
    assert redis["params"]["wait_last_known_master"] == "false"
    assert ("notify", "0", "10s", None, None) in redis["ops"]
    kamailio = crm["resources"]["kamailio"]
    assert kamailio["agent"] == ("ocf", "kemi-ha", "kamailio")
    # one monitor, every second (a crash seen within a second; the agent checks SIP at most
    # every 5 s): two would add their fail counts on one crash against migration-threshold
    assert [op for op in kamailio["ops"] if op[0] == "monitor"] == [
        ("monitor", "1s", "10s", None, None)]  # fmt: skip
    assert kamailio["params"]["logfile"] == "/var/log/kemi-ha/kemi-ha-run.log"
    assert kamailio["params"]["node_config"] == "/etc/kemi-ha/node.yaml"


def test_values_with_blanks_are_quoted_in_crm() -> None:
    odd = PacemakerConfig((("note", 'a "b" c'), ("empty", "")), (), (), ())
    assert crm_shape(to_crm(odd)) == cib_shape(to_cib_configuration(odd))
    assert crm_shape(to_crm(odd))["properties"] == {"note": 'a "b" c', "empty": ""}


def test_location_needs_a_node_or_a_rule() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Location("x", "vip1", "50")


def fenced(spec: ClusterSpec, quorum_device: bool = False) -> ClusterSpec:
    """`spec` with an IPMI fence device on every node."""
    nodes = [
        dataclasses.replace(n, fence=FenceSpec(agent="fence_ipmilan", params={
            "ip": f"10.99.2.{n.id}", "username": "admin",
            "password_file": f"/etc/kemi-ha/ipmi-{n.name}.pass"}))
        for n in spec.nodes
    ]  # fmt: skip
    qdevice = QuorumDeviceSpec(address="10.99.1.50") if quorum_device else None
    return dataclasses.replace(spec, nodes=nodes, quorum_device=qdevice)


@pytest.mark.parametrize(
    ("spec", "delay"),
    [(fenced(TWO), "2s"), (fenced(TWO, quorum_device=True), None), (fenced(THREE), None)],
    ids=["2-nodes", "2-nodes-qdevice", "3-nodes"],
)
def test_fencing_one_device_per_node_never_on_its_own_node(
    spec: ClusterSpec, delay: str | None
) -> None:
    crm, cib = shapes(spec)
    assert crm == cib
    assert cib["properties"]["stonith-enabled"] == "true"
    for n in spec.nodes:
        device = cib["resources"][f"fence-{n.name}"]
        assert device["agent"] == ("stonith", None, "fence_ipmilan")
        assert device["params"] == {
            "ip": f"10.99.2.{n.id}", "username": "admin",
            "password_script": f"cat /etc/kemi-ha/ipmi-{n.name}.pass",
            "pcmk_host_list": n.name,
        } | ({"pcmk_delay_max": delay} if delay else {})  # fmt: skip
        assert cib["constraints"][f"fence-{n.name}-not-on-{n.name}"] == {
            "kind-of": "rsc_location", "rsc": f"fence-{n.name}", "node": n.name,
            "score": "-INFINITY",
        }  # fmt: skip
    text = to_crm(cluster_resources(spec))
    assert "primitive fence-node1 stonith:fence_ipmilan \\\n\tparams ip=10.99.2.1 " in text
    assert '<primitive id="fence-node1" class="stonith" type="fence_ipmilan">' in (
        to_cib_configuration(cluster_resources(spec))
    )


@CLUSTERS
def test_no_fence_device_no_fencing(spec: ClusterSpec) -> None:
    _, cib = shapes(spec)
    assert cib["properties"]["stonith-enabled"] == "false"
    assert not [r for r in cib["resources"].values() if r["agent"][0] == "stonith"]
