"""Fast takeover decisions (kemi.core.vip_claim) on real corosync-quorumtool and crm_mon output."""

from __future__ import annotations

from pathlib import Path

import pytest

from kemi.core.node_spec import ClaimedVipSpec, FastTakeoverSpec
from kemi.core.vip_claim import (
    Eligibility,
    Membership,
    confirmation,
    located_on,
    lost_peers,
    parse_eligibility,
    parse_membership,
    quorumtool_blocks,
    vips_to_claim,
)
from kemi.ops.vip_claim import VipClaimer

DATA = Path(__file__).parent / "data" / "cluster_status"
VIPS = {"vip1": "10.98.0.201", "vip2": "10.98.0.202"}
OK = Eligibility(True, False, frozenset(VIPS), "")
ALONE = Membership(True, frozenset({"drill2"}), "drill2")


def report(members: list[tuple[int, str]], quorate: bool = True) -> str:
    """A `corosync-quorumtool -m` report as the tool prints it (drill2 local)."""
    rows = "".join(
        f"{nid:>10} {1:>10} {name}{' (local)' if name == 'drill2' else ''}\n"
        for nid, name in members
    )
    return (
        "Quorum information\n------------------\nDate:             Sun Dec  6 06:11:13 2026\n"
        f"Quorum provider:  corosync_votequorum\nNodes:            {len(members)}\n"
        f"Node ID:          2\nRing ID:          2.d\nQuorate:          "
        f"{'Yes' if quorate else 'No'}\n\nVotequorum information\n----------------------\n"
        "Expected votes:   2\nFlags:            2Node Quorate WaitForAll \n\n"
        "Membership information\n----------------------\n    Nodeid      Votes Name\n"
        f"{rows}\n"
    )


def test_monitor_output_splits_into_reports_and_finds_the_loss() -> None:
    text = 'Type "q" to finish\n' + report([(1, "drill1"), (2, "drill2")]) + report([(2, "drill2")])
    views = [parse_membership(b) for b in quorumtool_blocks(text.splitlines(keepends=True))]
    assert views == [
        Membership(True, frozenset({"drill1", "drill2"}), "drill2"),
        Membership(True, frozenset({"drill2"}), "drill2"),
    ]
    assert lost_peers(views[0], views[1]) == {"drill1"}
    assert lost_peers(None, views[0]) == set()  # the first report: nothing was lost
    assert lost_peers(views[1], views[0]) == set()  # a node joining


def test_quorum_device_row_is_not_a_member() -> None:
    text = (DATA / "quorumtool-qdevice-up.txt").read_text() + "\n"
    (view,) = [parse_membership(b) for b in quorumtool_blocks(text.splitlines())]
    assert view == Membership(True, frozenset({"drill1", "drill2"}), "drill2")


def test_a_cut_report_is_no_view() -> None:
    assert parse_membership(report([(2, "drill2")]).splitlines()[:8]) is None


def crm_mon() -> str:
    """A real `crm_mon --output-as=xml` of a two-node drill cluster, fencing off."""
    text = (DATA / "crm_mon-up.xml").read_text()
    return text.replace('stonith-enabled="true"', 'stonith-enabled="false"')


def test_eligibility_from_crm_mon() -> None:
    got = parse_eligibility(crm_mon(), "drill2", VIPS)
    assert got == Eligibility(True, False, frozenset(VIPS), "")
    fenced = parse_eligibility((DATA / "crm_mon-up.xml").read_text(), "drill2", VIPS)
    assert fenced.fencing


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        ('maintenance-mode="false"', 'maintenance-mode="true"', "cluster in maintenance mode"),
        ('stop-all-resources="false"', 'stop-all-resources="true"', "stop-all-resources is set"),
        ('name="drill2" id="2" online="true" standby="false"',
         'name="drill2" id="2" online="true" standby="true"', "node drill2 standby=true"),
        ('name="drill2" id="2"', 'name="other" id="2"', "node drill2 not in crm_mon's node list"),
    ],
)  # fmt: skip
def test_node_not_eligible(old: str, new: str, why: str) -> None:
    text = crm_mon()
    assert old in text
    got = parse_eligibility(text.replace(old, new, 1), "drill2", VIPS)
    assert (got.node_ok, got.why_not) == (False, why)


def test_vip_stopped_or_unmanaged_by_the_operator_is_not_claimed() -> None:
    text = crm_mon()
    one = '<resource id="vip1" resource_agent="ocf:kemi-ha:vip"'
    assert one in text
    stopped = text.replace(one, one + ' target_role="Stopped"')
    assert parse_eligibility(stopped, "drill2", VIPS).vips == {"vip2"}
    two = '<resource id="vip2" resource_agent="ocf:kemi-ha:vip" role="Started" active="true" '
    assert two in text
    unmanaged = text.replace(two + 'orphaned="false" blocked="false" managed="true"',
                             two + 'orphaned="false" blocked="false" managed="false"')  # fmt: skip
    assert parse_eligibility(unmanaged, "drill2", VIPS).vips == {"vip1"}


def test_unreadable_crm_mon_allows_nothing() -> None:
    got = parse_eligibility("<pacemaker-result", "drill2", VIPS)
    assert not got.node_ok and got.why_not.startswith("crm_mon output unreadable")


def test_the_survivor_claims_every_vip_pacemaker_would_start_there() -> None:
    assert vips_to_claim(frozenset({"drill1"}), ALONE, OK, VIPS) == (["vip1", "vip2"], "")
    one = Eligibility(True, False, frozenset({"vip2"}))
    assert vips_to_claim(frozenset({"drill1"}), ALONE, one, VIPS) == (["vip2"], "")
    none = Eligibility(True, False, frozenset())
    assert vips_to_claim(frozenset({"drill1"}), ALONE, none, VIPS) == (
        [],
        "no VIP Pacemaker would start here",
    )


@pytest.mark.parametrize(
    ("located", "state"),
    [
        (["drill2"], "confirmed"),
        (["drill1"], "pending"),  # the lost node: its status is not cleared yet (seen)
        ([], "pending"),
        (["drill3"], "elsewhere"),
    ],
)
def test_pacemaker_confirms_or_overrules_a_claim(located: list[str], state: str) -> None:
    assert confirmation(located, "drill2", frozenset({"drill2", "drill3"})) == state


@pytest.mark.parametrize(
    ("lost", "after", "eligibility", "why"),
    [
        (frozenset(), ALONE, OK, "no node left the membership"),
        (frozenset({"drill1"}), Membership(False, frozenset({"drill2"}), "drill2"), OK,
         "this partition is not quorate"),
        (frozenset({"drill3"}), Membership(True, frozenset({"drill1", "drill2"}), "drill2"), OK,
         "2 nodes remain: Pacemaker chooses"),
        (frozenset({"drill1"}), ALONE, Eligibility(True, True, frozenset(VIPS)),
         "fencing is enabled: Pacemaker moves nothing before the fence"),
        (frozenset({"drill1"}), ALONE, Eligibility(False, False, frozenset(VIPS), "node drill2 "
         "standby=true"), "node drill2 standby=true"),
    ],
)  # fmt: skip
def test_no_claim_where_pacemaker_may_decide_otherwise(
    lost: frozenset[str], after: Membership, eligibility: Eligibility, why: str
) -> None:
    assert vips_to_claim(lost, after, eligibility, VIPS) == ([], why)


def test_locate_output() -> None:
    assert located_on("resource vip1 is running on: drill1\n") == ["drill1"]
    assert located_on("resource vip1 is NOT running\n") == []


class Commands:
    """The commands VipClaimer runs, answered from a script (no root, no cluster)."""

    def __init__(self, answers: dict[str, list[tuple[int, str]]]) -> None:
        self.answers = answers
        self.ran: list[list[str]] = []

    def __call__(self, argv: list[str], timeout: float = 10.0) -> tuple[int, str]:
        self.ran.append(argv)
        key = " ".join(argv[:3])
        queue = self.answers.get(key, [(0, "")])
        return queue.pop(0) if len(queue) > 1 else queue[0]


def claimer(commands: Commands, lines: list[str]) -> VipClaimer:
    spec = FastTakeoverSpec("drill2", [ClaimedVipSpec("vip1", "10.98.0.101", 24, "eth0")])
    made = VipClaimer(spec, lines.append, commands)
    made.members = frozenset({"drill2", "drill3"})
    return made


def test_a_claim_pacemaker_runs_elsewhere_is_released() -> None:
    commands = Commands({
        "crm_resource --locate --resource": [
            (0, "resource vip1 is running on: drill1\n"),  # the lost node: not yet cleared
            (0, "resource vip1 is running on: drill3\n"),  # Pacemaker chose another node
        ],
    })  # fmt: skip
    lines: list[str] = []
    made = claimer(commands, lines)
    made.stopping.wait = lambda _t=None: False  # type: ignore[method-assign]
    made.confirm("vip1")
    assert ["ip", "addr", "del", "10.98.0.101/24", "dev", "eth0"] in commands.ran
    assert lines[-1] == "fast takeover: vip1 10.98.0.101 released: Pacemaker runs it on drill3"


def test_a_claim_pacemaker_runs_here_is_kept() -> None:
    commands = Commands({"crm_resource --locate --resource": [
        (0, "resource vip1 is running on: drill2\n")]})  # fmt: skip
    lines: list[str] = []
    claimer(commands, lines).confirm("vip1")
    assert not any(argv[:3] == ["ip", "addr", "del"] for argv in commands.ran)
    assert lines[-1].startswith("fast takeover: vip1 confirmed by Pacemaker")


def test_a_vip_already_here_is_not_claimed_again() -> None:
    commands = Commands({"ip addr add": [(2, "Error: ipv4: Address already assigned.\n")]})
    lines: list[str] = []
    claimer(commands, lines).claim("vip1", "drill1", 0.0)
    assert lines == [] and not any(a[0] == "crm_resource" for a in commands.ran)
