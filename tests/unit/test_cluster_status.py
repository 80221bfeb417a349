"""`kemi-ha status`'s cluster section, parsed from outputs captured on drill2 of a fenced drill
(2 nodes, 2 knet links): `-up` with both nodes, `-fenced` after drill1 was powered off and
fenced; crm_mon-not-running is crm_mon on a machine without a cluster."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from kemi.ops.cluster_status import (
    collect_cluster,
    parse_cfgtool,
    parse_crm_mon,
    parse_quorumtool,
    render_cluster,
)

DATA = Path(__file__).parent / "data" / "cluster_status"


def sample(name: str) -> str:
    return (DATA / name).read_text()


def test_quorum_with_both_nodes_and_after_the_fence() -> None:
    up = parse_quorumtool(sample("quorumtool-up.txt"))
    assert up["quorate"] is True and up["node_id"] == 2
    assert (up["expected_votes"], up["total_votes"], up["quorum"]) == (2, 2, 1)
    assert up["flags"] == ["2Node", "Quorate", "WaitForAll"] and up["qdevice"] is None
    assert up["members"] == [
        {"nodeid": 1, "votes": 1, "name": "drill1", "local": False},
        {"nodeid": 2, "votes": 1, "name": "drill2", "local": True},
    ]
    fenced = parse_quorumtool(sample("quorumtool-fenced.txt"))
    assert fenced["quorate"] is True and fenced["total_votes"] == 1  # two_node: 1 vote is enough
    assert [m["name"] for m in fenced["members"]] == ["drill2"]


def test_links_per_node() -> None:
    up = parse_cfgtool(sample("cfgtool-up.txt"))
    assert up["local_node_id"] == 2 and up["transport"] == "knet"
    assert [(lk["id"], lk["address"]) for lk in up["links"]] == [(0, "10.97.0.2"), (1, "10.97.1.2")]
    assert all(lk["nodes"] == {1: "connected", 2: "localhost"} for lk in up["links"])
    fenced = parse_cfgtool(sample("cfgtool-fenced.txt"))
    assert all(lk["nodes"][1] == "disconnected" for lk in fenced["links"])


def test_pacemaker_fencing_state() -> None:
    up = parse_crm_mon(sample("crm_mon-up.xml"))
    assert up["stonith_enabled"] is True and up["with_quorum"] is True
    assert {d["id"]: d["nodes"] for d in up["fence_devices"]} == {
        "fence-drill1": ["drill2"], "fence-drill2": ["drill1"],
    }  # fmt: skip
    assert all(d["agent"] == "fence_kemiha_netns" for d in up["fence_devices"])
    fenced = parse_crm_mon(sample("crm_mon-fenced.xml"))
    assert fenced["dc"] == "drill2"
    assert {n["name"]: n["online"] for n in fenced["nodes"]} == {"drill1": False, "drill2": True}
    history = fenced["fence_history"]
    assert [(e["action"], e["target"], e["status"], e["delegate"]) for e in history] == [
        ("reboot", "drill1", "success", "drill2")
    ]


def fake_runner(files: dict[str, tuple[int, str]]):  # type: ignore[no-untyped-def]
    def run(argv: Sequence[str]) -> tuple[int, str, str]:
        if argv[0] not in files:
            raise FileNotFoundError(argv[0])
        rc, name = files[argv[0]]
        return rc, sample(name) if name else "", "" if name else "Cannot initialize CMAP service"

    return run


def test_status_section_from_the_tools() -> None:
    run = fake_runner({"corosync-quorumtool": (0, "quorumtool-fenced.txt"),
                       "corosync-cfgtool": (0, "cfgtool-fenced.txt"),
                       "crm_mon": (0, "crm_mon-fenced.xml")})  # fmt: skip
    cluster = collect_cluster(run)
    assert all(part["available"] for part in cluster.values())
    text = "\n".join(render_cluster(cluster))
    assert "quorate yes, votes 1/2 expected" in text
    assert "link 1 10.97.1.2: node 1 disconnected, node 2 localhost" in text
    assert "DC drill2" in text and "drill1 OFFLINE" in text
    assert "fence-drill1 (fence_kemiha_netns): Started on drill2" in text
    assert "reboot of drill1: success by drill2" in text


@pytest.mark.parametrize(
    "files",
    [
        {},  # no Corosync/Pacemaker installed
        {"corosync-quorumtool": (1, ""), "corosync-cfgtool": (1, ""),
         "crm_mon": (102, "crm_mon-not-running.xml")},  # installed, not running
    ],
    ids=["not-installed", "not-running"],
)  # fmt: skip
def test_no_cluster_is_said_not_raised(files: dict[str, tuple[int, str]]) -> None:
    cluster = collect_cluster(fake_runner(files))
    assert not any(part["available"] for part in cluster.values())
    text = "\n".join(render_cluster(cluster))
    assert text.count("unavailable") == 3
    if files:
        assert "crm_mon: Not connected" in text and "Cannot initialize CMAP" in text
    else:
        assert "corosync-quorumtool not installed" in text


def test_not_quorate_is_an_answer() -> None:
    """corosync-quorumtool -s exits 2 when not quorate; the output still counts."""
    text = sample("quorumtool-fenced.txt").replace("Quorate:          Yes", "Quorate:          No")
    run = fake_runner({})

    def quorumtool(argv: Sequence[str]) -> tuple[int, str, str]:
        return (2, text, "") if argv[0] == "corosync-quorumtool" else run(argv)

    assert collect_cluster(quorumtool)["quorum"]["quorate"] is False


def test_quorum_device_votes() -> None:
    """A fenced drill with --qdevice (corosync-qnetd, ffsplit): 3 expected votes, the device's
    vote keeps the survivor quorate alone."""
    up = parse_quorumtool(sample("quorumtool-qdevice-up.txt"))
    assert up["flags"] == ["Quorate", "Qdevice"] and up["qdevice"] == {"votes": 1}
    assert (up["expected_votes"], up["total_votes"], up["quorum"]) == (3, 3, 2)
    assert [(m["name"], m["qdevice"]) for m in up["members"]] == [
        ("drill1", "A,V,NMW"), ("drill2", "A,V,NMW"),
    ]  # fmt: skip
    fenced = parse_quorumtool(sample("quorumtool-qdevice-fenced.txt"))
    assert fenced["quorate"] is True and fenced["total_votes"] == 2
    assert [m["name"] for m in fenced["members"]] == ["drill2"]
    text = "\n".join(render_cluster({
        "quorum": {"available": True} | fenced,
        "links": {"available": False, "reason": "x"},
        "pacemaker": {"available": False, "reason": "y"},
    }))  # fmt: skip
    assert "votes 2/3 expected (quorum 2), qdevice 1 vote(s)" in text
