"""The cluster renderer: validation of the cluster file and the Corosync profiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from kemi.ops.render import RenderError, corosync_conf, load_cluster

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "cluster.example.yaml"


def test_example_cluster_loads() -> None:
    spec = load_cluster(EXAMPLE)
    assert [n.name for n in spec.nodes] == ["node1", "node2"]


def test_tuned_and_default_profiles() -> None:
    spec = load_cluster(EXAMPLE)
    tuned, default = corosync_conf(spec, "tuned"), corosync_conf(spec, "default")
    assert "token: 50\n" in tuned and "token_retransmits_before_loss_const: 1\n" in tuned
    assert "knet_ping_interval: 50" in tuned and "knet_ping_timeout: 400" in tuned
    assert "token: 3000\n" in default and "knet_ping" not in default
    assert "two_node: 1" in tuned


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("prefer: node2", "prefer: node9"), "unknown node 'node9'"),
        (("id: 2,", "id: 1,"), "node names and ids must be unique"),
        (("vip: 10.99.1.100", "vip: 10.99.1.101"), "must differ"),
        (("address: 10.99.1.2,", "address: 10.99.1.x,"), "not an IP address"),
        (("cluster_name: kemi-ha", "cluster_nam: kemi-ha"), "unknown key"),
    ],
)
def test_bad_cluster_files_are_refused(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    text = EXAMPLE.read_text()
    assert change[0] in text
    bad = tmp_path / "cluster.yaml"
    bad.write_text(text.replace(change[0], change[1], 1))
    with pytest.raises(RenderError, match=message):
        load_cluster(bad)
