"""`kemi-ha ban list|add|remove`: the cluster-wide ban list, over Kamailio's JSON-RPC.

The list is the htable kha_ban (kemi.core.floods): name = source address, value = end of the
ban (epoch s). htable replicates RPC sets and deletes over DMQ like the script's own bans, so
asking one node changes every node. A ban on an exempt source (trusted peer, trunk, DMQ peer,
loopback, floods.exempt) is stored but has no effect: the script checks exemption first.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from kemi.core.floods import BAN_MAX_S, BAN_TABLE, Ban, ban_end, bans_from_dump, is_exempt
from kemi.core.policy import Policy
from kemi.ops.rpc import KamailioRpc, RpcError


class BanError(ValueError):
    pass


def list_bans(rpc: KamailioRpc) -> list[Ban]:
    return bans_from_dump(rpc.call("htable.dump", BAN_TABLE) or [], time.time())


def check_source(source: str) -> str:
    try:
        return str(ipaddress.ip_address(source))
    except ValueError:
        raise BanError(f"not an IP address: {source!r}") from None


def add_ban(rpc: KamailioRpc, source: str, seconds: int) -> int:
    """Ban `source` for `seconds` on every node; returns the end of the ban (epoch s)."""
    source = check_source(source)
    if not 1 <= seconds <= BAN_MAX_S:
        raise BanError(f"a ban lasts 1..{BAN_MAX_S} seconds, not {seconds}")
    until = ban_end(time.time(), seconds)
    rpc.call("htable.setxi", BAN_TABLE, source, until, seconds)
    return until


def remove_ban(rpc: KamailioRpc, source: str) -> bool:
    """Lift the ban on every node; False if there was none in force."""
    source = check_source(source)
    known = any(b.source == source for b in list_bans(rpc))
    try:
        rpc.call("htable.delete", BAN_TABLE, source)
    except RpcError as exc:
        if "not found" not in str(exc).lower():
            raise
    return known


def exempt_note(policy: Policy | None, source: str) -> str | None:
    if policy is not None and is_exempt(policy.floods, source):
        return (f"note: {source} is exempt in the policy (trusted peer, trunk, DMQ peer, "
                "loopback or floods.exempt): the ban has no effect")  # fmt: skip
    return None


def render_bans(bans: list[Ban]) -> str:
    if not bans:
        return "no bans in force"
    lines = [f"{'source':<40}{'until (UTC)':<22}{'left':>8}"]
    for b in bans:
        until = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(b.until))
        lines.append(f"{b.source:<40}{until:<22}{b.left_s:>7}s")
    return "\n".join(lines)


def as_json(bans: list[Ban]) -> list[dict[str, Any]]:
    return [{"source": b.source, "until": b.until, "left_s": b.left_s} for b in bans]
