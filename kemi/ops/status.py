"""`kemi-ha status`: one screen about a running node, read over Kamailio's JSON-RPC (jsonrpcs).

Channel counts come from the dialog profiles (dlg.profile_get_size), rtpengine sets from the
rtpengine module (rtpengine.show) plus an ng `list` for their session counts, gateways from
this node's dispatcher (dispatcher.list: state, probing, average OPTIONS latency), the policy
generation and version from shared variables (pv.shvGet), bans from the replicated htable
kha_ban (htable.dump), the cluster's quorum, links and
fencing from Corosync's and Pacemaker's tools (kemi.ops.cluster_status). Nothing is read from
logs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from kemi.core.cdr import SetupFacts, dialog_variables
from kemi.core.dispatch import gateway_states, sets_up
from kemi.core.policy import Policy
from kemi.core.reconcile import ORPHAN_MIN_AGE_S, reconcile
from kemi.core.structure import SpecError
from kemi.ops.bans import as_json, list_bans
from kemi.ops.cluster_status import collect_cluster, render_cluster
from kemi.ops.ng import NgClient, NgError
from kemi.ops.rpc import KamailioRpc, RpcError
from kemi.policyfile import load_policy


def collect(info: dict[str, Any]) -> dict[str, Any]:
    rpc = KamailioRpc(Path(info["rpc_fifo"]), Path(info["rpc_fifo"]).parent)
    gen = int(rpc.call("pv.shvGet", "kha_policy_gen")["value"])
    version = str(rpc.call("pv.shvGet", "kha_policy_version")["value"] or "")
    version = version or str(info.get("policy_version_at_start", "?"))
    policy: Policy | None = None
    try:
        policy = load_policy(info["policy"])
        tenants = {n: t.limit.max if t.limit else None for n, t in policy.tenants.items()}
        trunks = {n: t.limit.max if t.limit else None for n, t in policy.trunks.items()}
        global_limit = policy.global_limit.max if policy.global_limit else None
    except SpecError:  # the file on disk was changed and is broken: counts only
        tenants, trunks, global_limit = {}, {}, None
        policy = None

    def size(profile: str, *key: str) -> int:
        return int(rpc.call("dlg.profile_get_size", profile, *key))

    channels = [{"profile": "global", "key": "all", "active": size("kha_global"),
                 "limit": global_limit}]  # fmt: skip
    channels += [{"profile": "tenant", "key": n, "active": size("kha_tenant", n), "limit": lim}
                 for n, lim in tenants.items()]  # fmt: skip
    channels += [{"profile": "trunk", "key": n, "active": size("kha_trunk", n), "limit": lim}
                 for n, lim in trunks.items()]  # fmt: skip
    sets = []
    for node in rpc.call("rtpengine.show", "all"):
        entry = {"set": node["set"], "url": node["url"], "disabled": bool(node["disabled"])}
        try:
            entry["sessions"] = len(NgClient.from_socket(node["url"], 0.3).list_calls())
            entry["up"] = True
        except (OSError, NgError):
            entry["sessions"], entry["up"] = None, False
        sets.append(entry)
    try:
        dmq = rpc.call("dmq.list_nodes")
    except RpcError:
        dmq = None  # DMQ not loaded on this node
    dialogs = rpc.call("dlg.stats_active")
    gateways, no_gateway_up = [], []
    if policy is not None and policy.gateway_sets:
        states = gateway_states(policy, rpc.call("dispatcher.list"))
        gateways = [dataclasses.asdict(g) | {"up": g.up} for g in states]
        no_gateway_up = [name for name, n in sets_up(policy, states).items() if n == 0]
    return {
        "node_id": info["node_id"],
        "vips": info["vips"],
        "sip_port": info["sip_port"],
        "uptime_s": int(rpc.call("core.uptime")["uptime"]),
        "policy": {"version": version, "generation": gen},
        "dialogs": dialogs,
        "channels": channels,
        "rtpengine_sets": sets,
        "dmq_peers": dmq,
        "bans": as_json(list_bans(rpc)),
        "gateways": gateways,
        "gateway_sets_down": no_gateway_up,
        "media": media_reconciliation(policy, list(rpc.call("dlg.list") or []))
        if policy is not None
        else [],
        "metrics_url": info["metrics_url"],
        "cluster": collect_cluster(),
    }


def media_reconciliation(
    policy: Policy, dialogs: list[dict[str, Any]], min_age_s: float = ORPHAN_MIN_AGE_S
) -> list[dict[str, Any]]:
    """Per VIP: dialogs on it, its rtpengine's sessions, orphans and dialogs without media
    (kemi.core.reconcile)."""
    by_vip: dict[str, dict[str, bool]] = {v.address: {} for v in policy.vips}
    for entry in dialogs:
        facts = SetupFacts.decode(dialog_variables(entry).get("kha_cdr", ""))
        state = int(entry.get("state", 0))
        if facts is not None and facts.vip in by_vip and state < 5:
            by_vip[facts.vip][str(entry.get("call-id", ""))] = state == 4
    out = []
    for vip in policy.vips:
        sessions: dict[str, float] | None = {}
        try:
            ng = NgClient.from_socket(vip.rtpengine[0], 0.5)
            for call_id in ng.command("list", limit=1_000_000).get("calls", []):
                created = time.time()  # a call with a dialog: its age does not matter
                if str(call_id) not in by_vip[vip.address]:
                    created = float(ng.query(str(call_id)).get("created", created))
                sessions[str(call_id)] = created  # type: ignore[index]
        except (OSError, NgError):
            sessions = None
        report = reconcile(vip.address, by_vip[vip.address], sessions, time.time(), min_age_s)
        out.append(dataclasses.asdict(report) | {"socket": vip.rtpengine[0]})
    return out


def remove_orphans(status: dict[str, Any]) -> list[str]:
    """ng delete of every orphan session the status found; returns what was deleted."""
    deleted = []
    for vip in status.get("media", []):
        for call_id in vip["orphan_sessions"]:
            try:
                NgClient.from_socket(vip["socket"], 0.5).command("delete", **{"call-id": call_id})
                deleted.append(call_id)
            except (OSError, NgError):
                continue
    return deleted


def render_status(status: dict[str, Any]) -> str:
    lines = [
        f"kemi-ha node {status['node_id']}  up {status['uptime_s']} s  "
        f"policy {status['policy']['version']} (generation {status['policy']['generation']})",
        f"VIPs: {', '.join(status['vips'])} (SIP port {status['sip_port']})",
        f"dialogs: {status['dialogs']['all']} (ongoing {status['dialogs']['ongoing']})",
        "",
        f"{'channels':<28}{'active':>8}{'limit':>8}",
    ]
    for ch in status["channels"]:
        limit = "-" if ch["limit"] is None else str(ch["limit"])
        lines.append(f"  {ch['profile'] + ' ' + ch['key']:<26}{ch['active']:>8}{limit:>8}")
    lines += ["", f"{'rtpengine set':<28}{'state':>8}{'calls':>8}"]
    for rs in status["rtpengine_sets"]:
        state = "down" if not rs["up"] else ("disabled" if rs["disabled"] else "up")
        calls = "-" if rs["sessions"] is None else str(rs["sessions"])
        lines.append(f"  {str(rs['set']) + ' ' + rs['url']:<26}{state:>8}{calls:>8}")
    lines += render_gateways(status.get("gateways", []), status.get("gateway_sets_down", []))
    if status.get("media"):
        lines += ["", f"{'media per VIP':<28}{'dialogs':>8}{'calls':>8}{'orphans':>8}"
                  f"{'no media':>9}"]  # fmt: skip
        for m in status["media"]:
            calls = "-" if m["sessions"] is None else str(m["sessions"])
            orphans, no_media = len(m["orphan_sessions"]), len(m["dialogs_without_media"])
            lines.append(f"  {m['vip']:<26}{m['dialogs']:>8}{calls:>8}{orphans:>8}{no_media:>9}")
            for what in ("orphan_sessions", "dialogs_without_media"):
                if m[what]:
                    lines.append(f"    {what.replace('_', ' ')}: {', '.join(m[what][:5])}")
    peers = status["dmq_peers"]
    lines += ["", "DMQ peers: " + ("not configured" if peers is None else json.dumps(peers))]
    bans = status.get("bans", [])
    lines += ["", f"bans (cluster-wide): {len(bans)}"]
    lines += [f"  {b['source']:<26}{b['left_s']:>8} s left" for b in bans[:20]]
    if len(bans) > 20:
        lines.append(f"  ... and {len(bans) - 20} more (kemi-ha ban list)")
    lines.append(f"metrics: {status['metrics_url']}")
    if "cluster" in status:
        lines += ["", *render_cluster(status["cluster"])]
    return "\n".join(lines)


def render_gateways(gateways: list[dict[str, Any]], sets_down: list[str]) -> list[str]:
    """Gateways as this node's dispatcher sees them (each node probes on its own)."""
    if not gateways:
        return []
    lines = ["", f"{'gateway (set, priority)':<44}{'state':>10}{'latency':>10}"]
    for gw in gateways:
        state = gw["state"] + (" P" if gw["probing"] else "")
        latency = "-" if gw["latency_ms"] is None else f"{gw['latency_ms']:.1f}ms"
        name = f"{gw['uri']} ({gw['gateway_set']}, {gw['priority']})"
        lines.append(f"  {name:<42}{state:>10}{latency:>10}")
    lines.append("gateway sets with no gateway up: " + (", ".join(sets_down) or "none"))
    return lines
