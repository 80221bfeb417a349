"""Flood and scanner decisions on plain data (policy `floods`); the shell does the htable calls.

Rules, in the order the shell applies them to every request (REQINIT, before anything else):
1. an exempt source (trusted peer, trunk, DMQ peer, loopback, `floods.exempt`) is never
   counted, refused nor banned: one CIDR lookup, the table built at load;
2. a source whose ban has not ended is dropped without an answer. A ban is one item of the
   htable kha_ban (replicated over DMQ): name the source address, value the end of the ban in
   epoch seconds, so every node ends it at the same time whatever its htable timer does;
3. a User-Agent matching the scanner list is dropped (and its source banned if `ban_scanners`):
   one regex search, compiled at load;
4. the request is counted in the local htable kha_rate under (source, window number); the
   request that takes the count past `max_requests` bans the source (once per window), and every
   request beyond the limit is dropped.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kemi.core.policy import CidrTable, FloodGuard

BAN_TABLE = "kha_ban"
RATE_TABLE = "kha_rate"
BAN_MAX_S = 86400  # kha_ban's autoexpire in kamailio.cfg: no ban outlives it
ALWAYS_EXEMPT = ("127.0.0.0/8", "::1/128")


def compile_guard(
    enabled: bool,
    max_requests: int,
    window_s: int,
    ban_s: int,
    exempt_networks: Iterable[str],
    scanner_user_agents: Iterable[str],
    ban_scanners: bool,
) -> FloodGuard:
    """The guard the shell consults per request; networks must be valid CIDRs (checked)."""
    networks = {str(ipaddress.ip_network(n, strict=False)): True for n in exempt_networks}
    networks.update({n: True for n in ALWAYS_EXEMPT})
    agents = sorted({a.lower() for a in scanner_user_agents if a})
    pattern = re.compile("|".join(map(re.escape, agents)), re.IGNORECASE) if agents else None
    return FloodGuard(
        enabled=enabled,
        max_requests=max_requests,
        window_s=window_s,
        ban_s=ban_s,
        exempt=CidrTable.build(networks),
        scanner_ua=pattern,
        ban_scanners=ban_scanners,
    )


def host_network(address: str) -> str:
    """'10.0.0.2' -> '10.0.0.2/32' (a DMQ peer's host as an exempt network)."""
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


def is_exempt(guard: FloodGuard, source: str) -> bool:
    return guard.exempt.lookup(source) is not None


def is_scanner(guard: FloodGuard, user_agent: str) -> bool:
    return guard.scanner_ua is not None and guard.scanner_ua.search(user_agent) is not None


def window_key(source: str, now: float, window_s: int) -> str:
    """The kha_rate item counting `source` in the window `now` falls in."""
    return f"{source}/{int(now // window_s)}"


def over_rate(guard: FloodGuard, count: int) -> bool:
    return count > guard.max_requests


def bans_now(guard: FloodGuard, count: int) -> bool:
    """The one request per window that takes the count past the limit sets the ban."""
    return count == guard.max_requests + 1


def ban_active(value: Any, now: float) -> bool:
    """A kha_ban value (end of the ban, epoch s; None when absent) still in force at `now`."""
    return isinstance(value, int) and not isinstance(value, bool) and value > now


def ban_end(now: float, seconds: int) -> int:
    return int(now) + seconds


@dataclass(frozen=True, slots=True)
class Ban:
    source: str
    until: int  # epoch seconds
    left_s: int


def bans_from_dump(dump: Iterable[Mapping[str, Any]], now: float) -> list[Ban]:
    """Bans in force from the RPC `htable.dump kha_ban` answer (slots of items), by source."""
    out: list[Ban] = []
    for slot in dump:
        items = slot.get("slot", [])
        for entry in items if isinstance(items, list) else [items]:
            item = entry.get("item", entry) if isinstance(entry, Mapping) else {}
            value = item.get("value")
            if isinstance(value, str) and value.isdigit():
                value = int(value)
            if ban_active(value, now):
                out.append(Ban(str(item.get("name")), value, int(value - now)))
    return sorted(out, key=lambda b: b.source)
