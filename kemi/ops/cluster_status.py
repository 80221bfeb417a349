"""The cluster part of `kemi-ha status`: quorum, Corosync links and fencing, as plain data.

Rules:
- Read from the tools an operator would run: `corosync-quorumtool -s` (quorum, votes, quorum
  device), `corosync-cfgtool -s` (each knet link and each node's state on it) and
  `crm_mon --output-as=xml -1` (DC, stonith-enabled, fence devices, node states). The parse_*
  functions are pure (text in, dicts out) and tested on outputs captured from a drill cluster
  (tests/unit/data/cluster_status/).
- The commands are run by a runner handed in (`collect_cluster(run)`); a missing command or a
  stack that is not running (a single node, `make run`) gives a section that says so, never an
  exception: `kemi-ha status` still works.
"""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import Any

# argv -> (exit code, stdout, stderr); raises FileNotFoundError when the command is missing.
Runner = Callable[[Sequence[str]], tuple[int, str, str]]

QUORUMTOOL = ("corosync-quorumtool", "-s")
CFGTOOL = ("corosync-cfgtool", "-s")
CRM_MON = ("crm_mon", "--output-as=xml", "-1")


def run_command(argv: Sequence[str]) -> tuple[int, str, str]:
    result = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    return result.returncode, result.stdout, result.stderr


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.strip().isdigit() else None


def parse_quorumtool(text: str) -> dict[str, Any]:
    """`corosync-quorumtool -s`: quorate, votes, flags, quorum device and members."""
    fields: dict[str, str] = {}
    members: list[dict[str, Any]] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line.startswith(" ") and key.strip():
            fields.setdefault(key.strip(), value.strip())
            continue
        m = re.match(r"\s+(\d+)\s+(\d+)\s+(?:(N?A,N?V(?:,N?MW)?)\s+)?(\S+)(.*)",
                     line)  # fmt: skip
        if m:
            member = {"nodeid": int(m[1]), "votes": int(m[2]), "name": m[4],
                      "local": "(local)" in m[5]}  # fmt: skip
            members.append(member | ({"qdevice": m[3]} if m[3] else {}))
    flags = fields.get("Flags", "").split()
    qdevice_votes = next((m["votes"] for m in members if m["name"] == "Qdevice"), None)
    return {
        "quorate": {"Yes": True, "No": False}.get(fields.get("Quorate", "")),
        "node_id": _int(fields.get("Node ID")),
        "nodes": _int(fields.get("Nodes")),
        "expected_votes": _int(fields.get("Expected votes")),
        "total_votes": _int(fields.get("Total votes")),
        "quorum": _int(fields.get("Quorum")),
        "flags": flags,
        "qdevice": None
        if "Qdevice" not in flags and qdevice_votes is None
        else {"votes": qdevice_votes},
        "members": [m for m in members if m["name"] != "Qdevice"],
    }


def parse_cfgtool(text: str) -> dict[str, Any]:
    """`corosync-cfgtool -s` (Corosync 3, knet): every link with every node's state on it."""
    local = re.search(r"Local node ID (\d+), transport (\S+)", text)
    links: list[dict[str, Any]] = []
    for line in text.splitlines():
        if m := re.match(r"LINK ID (\d+)(?:\s+(\S+))?", line):
            links.append({"id": int(m[1]), "address": None, "nodes": {}})
        elif links and (m := re.match(r"\s+addr\s*=\s*(\S+)", line)):
            links[-1]["address"] = m[1]
        elif links and (m := re.match(r"\s+nodeid:?\s+(\d+):\s+(.+)", line)):
            links[-1]["nodes"][int(m[1])] = m[2].strip()
    return {
        "local_node_id": int(local[1]) if local else None,
        "transport": local[2] if local else None,
        "links": links,
    }


def _bool(value: str | None) -> bool | None:
    return None if value is None else value == "true"


def parse_crm_mon(xml_text: str) -> dict[str, Any]:
    """`crm_mon --output-as=xml -1`: DC, quorum, stonith-enabled, nodes, fence devices and the
    fencing history crm_mon shows."""
    root = ET.fromstring(xml_text)
    summary = root.find("summary")
    dc = summary.find("current_dc") if summary is not None else None
    options = summary.find("cluster_options") if summary is not None else None
    nodes = [
        {"name": n.attrib["name"], "online": _bool(n.get("online")),
         "unclean": _bool(n.get("unclean")), "standby": _bool(n.get("standby")),
         "is_dc": _bool(n.get("is_dc"))}
        for n in root.iterfind("nodes/node")
    ]  # fmt: skip
    devices = []
    for r in root.iter("resource"):
        if not r.get("resource_agent", "").startswith("stonith:"):
            continue
        devices.append({
            "id": r.attrib["id"], "agent": r.attrib["resource_agent"].removeprefix("stonith:"),
            "role": r.get("role"), "active": _bool(r.get("active")),
            "failed": _bool(r.get("failed")),
            "nodes": [n.attrib["name"] for n in r.iterfind("node")],
        })  # fmt: skip
    history = [
        {"action": e.get("action"), "target": e.get("target"), "status": e.get("status"),
         "delegate": e.get("delegate"), "completed": e.get("completed")}
        for e in root.iterfind("fence_history/fence_event")
    ]  # fmt: skip
    return {
        "dc": dc.get("name") if dc is not None and dc.get("present") == "true" else None,
        "with_quorum": _bool(dc.get("with_quorum")) if dc is not None else None,
        "stonith_enabled": _bool(options.get("stonith-enabled")) if options is not None else None,
        "nodes": nodes,
        "fence_devices": devices,
        "fence_history": history,
    }


def _xml_status(out: str) -> str:
    """crm_mon's own error in its XML (<status code message><errors><error>)."""
    try:
        status = ET.fromstring(out).find("status")
    except ET.ParseError:
        return ""
    if status is None:
        return ""
    errors = [e.text or "" for e in status.iter("error")]
    return f"{status.get('message', '')}: {errors[-1]}" if errors else status.get("message", "")


def _section(run: Runner, argv: Sequence[str], parse: Callable[[str], dict[str, Any]],
             ok: tuple[int, ...] = (0,)) -> dict[str, Any]:  # fmt: skip
    try:
        rc, out, err = run(argv)
    except FileNotFoundError:
        return {"available": False, "reason": f"{argv[0]} not installed"}
    except (OSError, subprocess.SubprocessError) as exc:
        return {"available": False, "reason": f"{argv[0]}: {exc}"}
    if rc not in ok:
        first = (err.strip().splitlines() or [_xml_status(out) or f"exit code {rc}"])[0]
        reason = f"{argv[0]}: {first} (Corosync/Pacemaker not running?)"
        return {"available": False, "reason": reason}
    try:
        return {"available": True} | parse(out)
    except (ET.ParseError, ValueError, KeyError) as exc:
        return {"available": False, "reason": f"{argv[0]}: unreadable output ({exc})"}


def collect_cluster(run: Runner = run_command) -> dict[str, Any]:
    """Quorum, links and fencing, each with `available` and, when not, the `reason`."""
    return {
        # corosync-quorumtool -s exits 2 when not quorate: its output is the answer.
        "quorum": _section(run, QUORUMTOOL, parse_quorumtool, ok=(0, 2)),
        "links": _section(run, CFGTOOL, parse_cfgtool),
        "pacemaker": _section(run, CRM_MON, parse_crm_mon),
    }


def _yes(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "no")


def render_cluster(cluster: dict[str, Any]) -> list[str]:
    """The lines `kemi-ha status` prints for the cluster."""
    lines = ["cluster:"]
    q, links, pcmk = cluster["quorum"], cluster["links"], cluster["pacemaker"]
    if q["available"]:
        qdevice = "none" if q["qdevice"] is None else f"{q['qdevice']['votes']} vote(s)"
        lines.append(
            f"  quorum: quorate {_yes(q['quorate'])}, votes {q['total_votes']}/"
            f"{q['expected_votes']} expected (quorum {q['quorum']}), qdevice {qdevice}, "
            f"flags {' '.join(q['flags']) or '-'}"
        )
        lines.append("  members: " + ", ".join(
            f"{m['nodeid']} {m['name']}{' (local)' if m['local'] else ''}" for m in q["members"]
        ))  # fmt: skip
    else:
        lines.append(f"  quorum: unavailable: {q['reason']}")
    if links["available"]:
        for link in links["links"]:
            states = ", ".join(f"node {n} {s}" for n, s in sorted(link["nodes"].items()))
            lines.append(f"  link {link['id']} {link['address'] or '?'}: {states}")
    else:
        lines.append(f"  links: unavailable: {links['reason']}")
    if pcmk["available"]:
        nodes = ", ".join(
            n["name"] + ("" if n["online"] else " OFFLINE") + (" UNCLEAN" if n["unclean"] else "")
            for n in pcmk["nodes"]
        )
        lines.append(f"  pacemaker: DC {pcmk['dc'] or 'none'}, quorum {_yes(pcmk['with_quorum'])};"
                     f" nodes {nodes}")  # fmt: skip
        lines.append(f"  fencing: stonith-enabled {_yes(pcmk['stonith_enabled'])}")
        for d in pcmk["fence_devices"]:
            where = ",".join(d["nodes"]) or "nowhere"
            failed = " FAILED" if d["failed"] else ""
            lines.append(f"    {d['id']} ({d['agent']}): {d['role']} on {where}{failed}")
        for e in pcmk["fence_history"]:
            lines.append(f"    {e['action']} of {e['target']}: {e['status']} by {e['delegate']}"
                         f" at {e['completed']}")  # fmt: skip
    else:
        lines.append(f"  pacemaker: unavailable: {pcmk['reason']}")
    return lines
