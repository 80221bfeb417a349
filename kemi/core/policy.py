"""The compiled policy: immutable, plain Python types, built once per load (kemi.core.compile).

Rules:
- every VIP owns exactly one rtpengine set; set ids are 1-based positions in `vips`, and the
  same numbering is rendered into Kamailio's `rtpengine_sock` modparams (kemi.ops.nodecfg);
- every per-message lookup is a dict access prepared here (CIDR tables by prefix length,
  prefixes by length, domains by name, media flags per VIP and tenant): no list scan;
- an address is looked up as an integer (parse_address, once per message for several tables),
  never as an ipaddress object built per message;
- the tables are plain dicts so a policy pickles; nothing mutates them after compile.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from kemi.core.nat import NAT_OFF, Nat
from kemi.core.numbers import Rewrite

V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class Vip:
    """A cluster address: SIP is received on it, its media goes to its own rtpengine set."""

    address: str
    set_id: int
    rtpengine: tuple[str, ...]
    media_flags: str


@dataclass(frozen=True, slots=True)
class Limit:
    """A channel limit; `profile` and `key` name the dialog profile that counts it."""

    scope: str  # "global" | "tenant" | "trunk"
    key: str
    max: int
    code: int
    reason: str
    retry_after: int | None

    @property
    def profile(self) -> str:
        return f"kha_{self.scope}"


@dataclass(frozen=True, slots=True)
class Tenant:
    name: str
    limit: Limit | None


@dataclass(frozen=True, slots=True)
class Trunk:
    name: str
    tenant: str | None
    limit: Limit | None
    rewrite: Rewrite | None = None  # applied before the route lookup


@dataclass(frozen=True, slots=True)
class DsSet:
    """One dispatcher set: the gateways of one priority of a gateway set (dispatcher.list)."""

    set_id: int
    gateway_set: str
    priority: int
    gateways: tuple[tuple[str, int], ...]  # (SIP URI, weight as the algorithm reads it)


ALGORITHMS = {"weight": 9, "relative-weight": 11}  # dispatcher algorithm numbers


@dataclass(frozen=True, slots=True)
class GatewaySet:
    """A policy gateway set: its dispatcher sets, highest priority first."""

    name: str
    levels: tuple[int, ...]  # dispatcher set ids
    algorithm: int  # 9 or 11
    retry_after: int
    first_uri: str  # the first gateway of the highest priority (orphan forwards)
    timeout_ms: int = 0  # tm fr_timer of the branches to this set; 0: the global one


@dataclass(frozen=True, slots=True)
class Probing:
    """dispatcher's OPTIONS probing, rendered as modparams into kemi-ha-node.cfg."""

    interval: int = 10
    threshold: int = 3
    recover: int = 1
    reply_codes: str = "code=404;code=405;code=488;code=501"  # ds_ping_reply_codes
    from_uri: str = "sip:kemi-ha@localhost"


@dataclass(frozen=True, slots=True)
class Route:
    """Where initial INVITEs go: destinations in failover order, or a gateway set."""

    name: str
    destinations: tuple[str, ...]
    gateway_set: GatewaySet | None = None
    rewrite: Rewrite | None = None  # applied after the lookup

    @property
    def first_hop(self) -> str:
        """Where a stateless forward of this route goes (no dispatcher state for it)."""
        return self.gateway_set.first_uri if self.gateway_set else self.destinations[0]


# A dotted IPv4 address exactly as ipaddress accepts it (no leading zeros, each part <= 255).
_IPV4_PART = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_IPV4_PART}(?:\.{_IPV4_PART}){{3}}")
Address = tuple[int, int]  # (IP version, address as an integer)
_PARSED: dict[str, Address | None] = {}  # the sources seen lately (peers, trunks, phones)
_PARSED_MAX = 4096  # emptied when full: a scan from many sources cannot grow it


def parse_address(address: str) -> Address | None:
    """An IP address as (version, integer); None if it is none. The same answer as ipaddress
    for any text, without building an ipaddress object per message: a source seen lately is one
    dict lookup; a new dotted IPv4 one regex match and four int(); IPv6 goes through ipaddress."""
    if address in _PARSED:
        return _PARSED[address]
    parsed = _parse_address(address)
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[address] = parsed
    return parsed


def _parse_address(address: str) -> Address | None:
    if _IPV4.fullmatch(address) is not None:
        a, b, c, d = address.split(".")
        return 4, int(a) << 24 | int(b) << 16 | int(c) << 8 | int(d)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    return ip.version, int(ip)


@dataclass(frozen=True, slots=True)
class CidrTable(Generic[V]):
    """Longest-prefix match: one dict per (IP version, prefix length), longest first."""

    tables: tuple[tuple[int, int, Mapping[int, V]], ...]  # (version, length, {network: value})

    @staticmethod
    def build(entries: Mapping[str, V]) -> CidrTable[V]:
        grouped: dict[tuple[int, int], dict[int, V]] = {}
        for cidr, value in entries.items():
            net = ipaddress.ip_network(cidr)
            grouped.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = value
        order = sorted(grouped, key=lambda k: (k[0], -k[1]))
        return CidrTable(tuple((v, n, grouped[(v, n)]) for v, n in order))

    def lookup(self, address: str) -> V | None:
        parsed = parse_address(address)
        return None if parsed is None else self.lookup_parsed(parsed)

    def lookup_parsed(self, address: Address) -> V | None:
        """`address` from parse_address: parse once, look up in several tables."""
        version, value = address
        shift_base = 32 if version == 4 else 128
        for table_version, length, table in self.tables:
            if table_version != version:
                continue
            shift = shift_base - length
            found = table.get(value >> shift << shift)
            if found is not None:
                return found
        return None


@dataclass(frozen=True, slots=True)
class SdpLimits:
    """What an SDP sent to rtpengine may hold (policy `sdp`; 488 beyond)."""

    max_streams: int = 16
    max_bytes: int = 16384


@dataclass(frozen=True, slots=True)
class FloodGuard:
    """Policy `floods`, compiled: exemptions as one CIDR table, scanner User-Agents as one
    case-insensitive regex (None: no scanner list), both built at load (kemi.core.floods)."""

    enabled: bool = False
    max_requests: int = 100
    window_s: int = 1
    ban_s: int = 600
    exempt: CidrTable[bool] = CidrTable(())
    scanner_ua: re.Pattern[str] | None = None
    ban_scanners: bool = True


@dataclass(frozen=True, slots=True)
class CallTimers:
    """Call hygiene of a tenant's calls (policy `calls`, tenant override); 0: off."""

    media_timeout: int = 0
    max_duration: int = 0


RouteKey = tuple[str | None, str | None]  # (tenant, domain); None matches any


@dataclass(frozen=True, slots=True)
class Policy:
    version: str
    vips: tuple[Vip, ...]
    vip_by_address: Mapping[str, Vip]
    tenants: Mapping[str, Tenant]
    trunks: Mapping[str, Trunk]
    tenant_by_domain: Mapping[str, Tenant]
    tenant_by_source: CidrTable[Tenant]
    trunk_by_source: CidrTable[Trunk]
    routes: Mapping[RouteKey, Mapping[str, Route]]
    route_prefix_lengths: Mapping[RouteKey, tuple[int, ...]]  # longest first
    media_flags: Mapping[tuple[str, str | None], str]  # (VIP address, tenant) -> flags
    global_limit: Limit | None
    trusted: CidrTable[bool]
    dmq_peers: tuple[str, ...]
    dmq_peer_hosts: frozenset[str]
    sdp_limits: SdpLimits = SdpLimits()
    floods: FloodGuard = FloodGuard()
    nat: Mapping[str | None, Nat] = field(default_factory=lambda: {None: NAT_OFF})  # by tenant
    # (VIP address, tenant) -> flags for a sender behind NAT (kemi.core.nat rule 4)
    nat_media_flags: Mapping[tuple[str, str | None], str] = field(default_factory=dict)
    gateway_sets: Mapping[str, GatewaySet] = field(default_factory=dict)
    dispatcher_sets: tuple[DsSet, ...] = ()
    probing: Probing = Probing()
    # tenant name (None: no tenant) -> its call timers; built by compile for every tenant
    call_timers: Mapping[str | None, CallTimers] = field(
        default_factory=lambda: {None: CallTimers()}
    )

    def timers_for(self, tenant: str | None) -> CallTimers:
        return self.call_timers.get(tenant) or self.call_timers[None]
