"""Fast takeover: the survivor of a two-node cluster claims the VIPs as soon as Corosync forms
the membership without its peer, instead of ~100-170 ms later when Pacemaker's transition
starts them (docs/ha.md, "Fast takeover").

Pacemaker stays the authority: it starts the same VIPs on the same node a moment later (its
agent finds the address there and succeeds), and a claim it does not confirm is released. So a
claim is made only where Pacemaker can only decide the same thing: two nodes (the survivor is
the only place left), no quorum device (no vote to wait for), no fencing (Pacemaker moves
nothing before the fence), the survivor quorate, online, neither in standby nor in maintenance,
and each VIP managed and not stopped by the operator.

Pure functions on the text of `corosync-quorumtool -m` and `crm_mon --output-as=xml`.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

BLOCK_START = "Quorum information"


@dataclass(frozen=True, slots=True)
class Membership:
    """One `corosync-quorumtool -m` report: is this partition quorate, and who is in it."""

    quorate: bool
    members: frozenset[str]
    local: str  # this node's name ("(local)" in the member list); "" if not shown


def quorumtool_blocks(lines: Iterable[str]) -> Iterator[list[str]]:
    """The reports of `corosync-quorumtool -m`, one list of lines each (a report starts with
    'Quorum information'; the tool prints one at start and one per change)."""
    block: list[str] = []
    for raw in lines:
        line = raw.rstrip("\n")
        if line.strip() == BLOCK_START and block:
            yield block
            block = []
        if line.strip() == BLOCK_START or block:
            block.append(line)
        if block and line.strip() == "" and any(b.strip().startswith("Nodeid") for b in block):
            yield block
            block = []
    if block:
        yield block


def parse_membership(block: list[str]) -> Membership | None:
    """A report's quorum flag and member names; None if it is not a whole report."""
    quorate: bool | None = None
    members: set[str] = set()
    local = ""
    in_members = False
    for line in block:
        text = line.strip()
        if text.startswith("Quorate:"):
            quorate = text.split(":", 1)[1].strip() == "Yes"
        elif text.startswith("Nodeid"):
            in_members = True
        elif in_members and text and not text.startswith("-"):
            fields = text.split()
            # "Nodeid Votes [Qdevice] Name [(local)]": the name is the first field after the
            # numbers and flags that is not "(local)".
            names = [f for f in fields[2:] if f != "(local)" and not f.startswith(("A,", "NA,"))]
            if fields[0].isdigit() and fields[0] != "0" and names:  # 0: the quorum device
                members.add(names[-1])
                if "(local)" in fields:
                    local = names[-1]
    if quorate is None or not in_members:
        return None
    return Membership(quorate, frozenset(members), local)


def lost_peers(before: Membership | None, after: Membership) -> frozenset[str]:
    """Nodes in the previous membership that the new one lacks."""
    if before is None:
        return frozenset()
    return before.members - after.members


@dataclass(frozen=True, slots=True)
class Eligibility:
    """What Pacemaker's current state allows this node to take (from crm_mon)."""

    node_ok: bool  # online, not standby, not maintenance, cluster not in maintenance
    fencing: bool  # stonith-enabled: Pacemaker fences before moving anything
    vips: frozenset[str]  # VIP resource ids managed and not stopped by the operator
    why_not: str = ""  # the first reason node_ok is False, for the log


NOT_KNOWN = Eligibility(False, True, frozenset(), "Pacemaker's state not read yet")


def parse_eligibility(crm_mon_xml: str, node: str, vip_ids: Iterable[str]) -> Eligibility:
    """Eligibility of `node` for the VIP resources `vip_ids`, from `crm_mon -1 --output-as=xml`."""
    try:
        root = ET.fromstring(crm_mon_xml)
    except ET.ParseError as exc:
        return Eligibility(False, True, frozenset(), f"crm_mon output unreadable: {exc}")
    options = root.find("./summary/cluster_options")
    if options is None:
        return Eligibility(False, True, frozenset(), "crm_mon shows no cluster options")
    fencing = options.get("stonith-enabled", "true") == "true"
    why = ""
    if options.get("maintenance-mode", "false") == "true":
        why = "cluster in maintenance mode"
    elif options.get("stop-all-resources", "false") == "true":
        why = "stop-all-resources is set"
    me = next((n for n in root.iterfind("./nodes/node") if n.get("name") == node), None)
    if me is None:
        why = why or f"node {node} not in crm_mon's node list"
    else:
        for flag, bad in (("online", "false"), ("standby", "true"), ("maintenance", "true")):
            if me.get(flag) == bad:
                why = why or f"node {node} {flag}={bad}"
    wanted = set(vip_ids)
    vips = frozenset(
        r.get("id", "")
        for r in root.iter("resource")
        if r.get("id") in wanted
        and r.get("managed", "true") == "true"
        and (r.get("target_role") or "started").lower() not in ("stopped", "unpromoted")
        and r.get("blocked", "false") != "true"
    )
    return Eligibility(not why, fencing, vips, why)


def vips_to_claim(
    lost: frozenset[str],
    after: Membership,
    eligibility: Eligibility,
    vips: dict[str, str],
) -> tuple[list[str], str]:
    """Which VIP resource ids (of `vips`: id -> address) to claim now, and why none if none.

    Two nodes: the peer's loss leaves this node as the only place for every VIP, exactly what
    Pacemaker's transition will decide (those already here stay: adding them again is a no-op)."""
    if not lost:
        return [], "no node left the membership"
    if not after.quorate or (after.local and after.local not in after.members):
        return [], "this partition is not quorate"
    if len(after.members) != 1:
        return [], f"{len(after.members)} nodes remain: Pacemaker chooses"
    if eligibility.fencing:
        return [], "fencing is enabled: Pacemaker moves nothing before the fence"
    if not eligibility.node_ok:
        return [], eligibility.why_not
    claim = [rid for rid in vips if rid in eligibility.vips]
    return claim, "" if claim else "no VIP Pacemaker would start here"


def confirmation(located: list[str], me: str, members: frozenset[str]) -> str:
    """'confirmed' (Pacemaker runs the claimed VIP here), 'elsewhere' (on another live node:
    release it) or 'pending' (nowhere yet, or only on the lost node, whose status Pacemaker
    has not cleared yet)."""
    if me in located:
        return "confirmed"
    if any(n in members for n in located):
        return "elsewhere"
    return "pending"


def located_on(crm_resource_output: str) -> list[str]:
    """Nodes `crm_resource --locate` says the resource runs on ("... is running on: NODE")."""
    out = []
    for line in crm_resource_output.splitlines():
        if "is running on:" in line:
            out.append(line.split("is running on:", 1)[1].split()[0])
    return out
