"""The compiled policy: immutable, plain Python types, built once per load (kemi.core.compile).

Rules:
- every VIP owns exactly one rtpengine set; set ids are 1-based positions in `vips`, and the
  same numbering is rendered into Kamailio's `rtpengine_sock` modparams (kemi.ops.nodecfg);
- every per-message lookup is a dict access prepared here (CIDR tables by prefix length,
  prefixes by length, domains by name, media flags per VIP and tenant): no list scan;
- the tables are plain dicts so a policy pickles; nothing mutates them after compile.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

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


@dataclass(frozen=True, slots=True)
class Route:
    """Where initial INVITEs go: destinations in failover order."""

    name: str
    destinations: tuple[str, ...]


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
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        value, bits = int(ip), ip.max_prefixlen
        for version, length, table in self.tables:
            if version != ip.version:
                continue
            found = table.get(value >> (bits - length) << (bits - length))
            if found is not None:
                return found
        return None


@dataclass(frozen=True, slots=True)
class SdpLimits:
    """What an SDP sent to rtpengine may hold (policy `sdp`; 488 beyond)."""

    max_streams: int = 16
    max_bytes: int = 16384


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
    # tenant name (None: no tenant) -> its call timers; built by compile for every tenant
    call_timers: Mapping[str | None, CallTimers] = field(
        default_factory=lambda: {None: CallTimers()}
    )

    def timers_for(self, tenant: str | None) -> CallTimers:
        return self.call_timers.get(tenant) or self.call_timers[None]
