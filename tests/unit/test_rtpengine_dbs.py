"""Hot standby: no two rtpengines share a Redis DB, none subscribes to its own (LAB-NOTES traps)."""

from __future__ import annotations

import re

import pytest

from kemi.core.cluster_spec import ClusterSpec, ClusterVipSpec, NodeSpec, RedisSpec
from kemi.core.rtpengine_dbs import (
    dbs_param,
    redis_databases,
    rtpengine_db,
    subscribed_dbs,
    vip_dbs,
)
from kemi.ops.render import redis_conf, rtpengine_conf, rtpengine_env


def cluster(node_ids: list[int], vips: int) -> ClusterSpec:
    nodes = [NodeSpec(name=f"n{i}", id=i, address=f"10.99.1.{i}") for i in node_ids]
    return ClusterSpec(
        cluster_name="t", nodes=nodes, policy="p.yaml",
        redis=RedisSpec(vip="10.99.1.200", password_file="redis.pass"),
        vips=[ClusterVipSpec(address=f"10.99.1.{100 + v}", prefer="n1") for v in range(vips)],
    )  # fmt: skip


PASSWORD = "0123456789abcdef0123"
SPECS = [cluster([1, 2], 2), cluster([1, 2, 3], 3), cluster([15, 3, 7, 1], 5)]


@pytest.mark.parametrize("spec", SPECS, ids=["2x2", "3x3", "4x5"])
def test_every_instance_has_a_db_of_its_own(spec: ClusterSpec) -> None:
    """Across all VIPs and nodes: distinct DBs, below `databases`, never DB 0."""
    dbs = [db for i in range(1, len(spec.vips) + 1) for _name, db in vip_dbs(spec, i)]
    assert len(dbs) == len(set(dbs)) == len(spec.vips) * len(spec.nodes)
    assert min(dbs) > 0 and max(dbs) < redis_databases(spec)
    assert f"databases {redis_databases(spec)}\n" in redis_conf(spec, spec.nodes[0], PASSWORD)


@pytest.mark.parametrize("spec", SPECS, ids=["2x2", "3x3", "4x5"])
def test_rendered_instances_subscribe_to_every_other_node_and_never_to_their_own(
    spec: ClusterSpec,
) -> None:
    for i in range(1, len(spec.vips) + 1):
        for node in spec.nodes:
            env = rtpengine_env(spec, i, node)
            own = {int(x) for x in re.findall(r"REDIS(?:_WRITE)?=[\d.]+:\d+/(\d+)", env)}
            conf = rtpengine_conf(spec, i, node, PASSWORD)
            urls = {int(x) for x in re.findall(rf"{PASSWORD}@[\d.]+:\d+/(\d+)", conf)}
            assert urls == own and PASSWORD not in env
            subscribed = {int(x) for x in re.findall(r"--subscribe-keyspace=(\d+)", env)}
            assert own == {rtpengine_db(i, node.id)}
            assert own.isdisjoint(subscribed)
            others = {rtpengine_db(i, n.id) for n in spec.nodes if n is not node}
            assert subscribed == others == set(subscribed_dbs(spec, i, node.name))
        # The agent's parameter names every node once, with the DB render gives it.
        assert dbs_param(spec, i).split() == [f"{n.name}:{16 * i + n.id}" for n in spec.nodes]


def test_redis_conf_turns_keyspace_events_on() -> None:
    """A standby learns the active's calls from keyspace events (K), generic and string ($)."""
    assert "notify-keyspace-events Kg$\n" in redis_conf(SPECS[0], SPECS[0].nodes[0], PASSWORD)


@pytest.mark.parametrize(("vip", "node"), [(0, 1), (1, 0), (1, 16), (-1, 3)])
def test_no_db_outside_the_scheme(vip: int, node: int) -> None:
    with pytest.raises(ValueError, match="no rtpengine DB"):
        rtpengine_db(vip, node)
