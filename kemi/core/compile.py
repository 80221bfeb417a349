"""PolicySpec -> Policy: the cross-checks a type check cannot do, then the lookup tables.

Checks: addresses, CIDRs (no host bits) and SIP URIs parse; names are unique; routes,
trunks and limits refer to tenants that exist; every VIP has an rtpengine socket; the same
network or domain in two tenants (or two trunks) is ambiguous; two routes with the same
tenant, domain and prefix are ambiguous; limits are not negative; Retry-After goes with 503;
call timers are not negative (a media timeout at least MIN_MEDIA_TIMEOUT).
Every problem is reported, not only the first.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from kemi.core.policy import (
    CallTimers,
    CidrTable,
    Limit,
    Policy,
    Route,
    RouteKey,
    SdpLimits,
    Tenant,
    Trunk,
    Vip,
)
from kemi.core.spec import CallsSpec, LimitSpec, MediaSpec, PolicySpec
from kemi.core.structure import Path, Problem

SIP_URI = re.compile(r"^sips?:([^@\s;:]+@)?[A-Za-z0-9.\-\[\]:]+(:\d{1,5})?(;[^\s]*)?$")
NG_SOCKET = re.compile(r"^udp6?:[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
USER_PREFIX = re.compile(r"^[0-9A-Za-z+*#._\-]*$")
MIN_MEDIA_TIMEOUT = 5  # s: below it the sweep (kemi.shell.hygiene) could not honour it
DEFAULT_VIP_MEDIA = MediaSpec(ice="remove", replace=["origin", "session-connection"])


def media_flags(*layers: MediaSpec | None) -> str:
    """rtpengine flags from media settings; later layers override earlier ones field by field."""
    merged: dict[str, object] = {}
    for layer in layers:
        if layer is None:
            continue
        for name in MediaSpec.__slots__:
            value = getattr(layer, name)
            if value is not None:
                merged[name] = value
    flags: list[str] = [f"replace-{r}" for r in merged.get("replace", [])]  # type: ignore[union-attr]
    ice = merged.get("ice")
    if ice in ("remove", "force"):
        flags.append(f"ICE={ice}")
    if "transport" in merged:
        flags.append(f"transport-protocol={merged['transport']}")
    if "sdes" in merged:
        flags.append(f"SDES-{merged['sdes']}")
    if merged.get("dtmf") == "inject":
        flags.append("inject-DTMF")
    for field, flag in (("codec_mask", "codec-mask"), ("codec_strip", "codec-strip"),
                        ("codec_transcode", "codec-transcode")):  # fmt: skip
        flags += [f"{flag}-{c}" for c in merged.get(field, [])]  # type: ignore[union-attr]
    flags += list(merged.get("extra", []))  # type: ignore[call-overload]
    return " ".join(flags)


class _Checker:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, path: Path, message: str) -> None:
        self.problems.append(Problem(path, message))

    def cidr(self, path: Path, text: str) -> bool:
        try:
            ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            self.add(path, f"bad CIDR {text!r}: {exc}")
            return False
        return True

    def unique(self, path: Path, names: Iterable[str], what: str) -> None:
        seen: set[str] = set()
        for i, name in enumerate(names):
            if name in seen:
                self.add((*path, i, "name"), f"duplicate {what} name {name!r}")
            seen.add(name)

    def limit(self, path: Path, spec: LimitSpec | None) -> None:
        if spec is None:
            return
        if spec.max < 0:
            self.add((*path, "max"), f"must not be negative (got {spec.max})")
        if spec.retry_after is not None:
            if spec.retry_after < 0:
                self.add((*path, "retry_after"), "must not be negative")
            if spec.code != 503:
                self.add((*path, "retry_after"), "Retry-After goes with code 503 only")

    def calls(self, path: Path, spec: CallsSpec | None) -> None:
        if spec is None:
            return
        for name in ("media_timeout", "max_duration"):
            value = getattr(spec, name)
            if value is not None and value < 0:
                self.add((*path, name), f"must not be negative (got {value}); 0 turns it off")
        if spec.media_timeout is not None and 0 < spec.media_timeout < MIN_MEDIA_TIMEOUT:
            why = f"at least {MIN_MEDIA_TIMEOUT} s (the sweep runs every few seconds)"
            self.add((*path, "media_timeout"), why)


def check(spec: PolicySpec) -> list[Problem]:
    c = _Checker()
    vip_seen: set[str] = set()
    for i, vip in enumerate(spec.vips):
        try:
            ipaddress.ip_address(vip.address)
        except ValueError:
            c.add(("vips", i, "address"), f"not an IP address: {vip.address!r}")
        if vip.address in vip_seen:
            c.add(("vips", i, "address"), f"duplicate VIP {vip.address}")
        vip_seen.add(vip.address)
        if not vip.rtpengine:
            c.add(("vips", i, "rtpengine"), "a VIP needs at least one rtpengine ng socket")
        for j, sock in enumerate(vip.rtpengine):
            if not NG_SOCKET.match(sock):
                c.add(("vips", i, "rtpengine", j), f"not an ng socket (udp:HOST:PORT): {sock!r}")
    if not spec.vips:
        c.add(("vips",), "at least one VIP is required")

    tenant_names = {t.name for t in spec.tenants}
    c.unique(("tenants",), (t.name for t in spec.tenants), "tenant")
    c.unique(("trunks",), (t.name for t in spec.trunks), "trunk")
    c.unique(("routes",), (r.name for r in spec.routes), "route")
    owners: dict[str, str] = {}
    domains: dict[str, str] = {}
    for i, tenant in enumerate(spec.tenants):
        for j, src in enumerate(tenant.sources):
            if c.cidr(("tenants", i, "sources", j), src):
                net = str(ipaddress.ip_network(src))
                if net in owners and owners[net] != tenant.name:
                    c.add(("tenants", i, "sources", j),
                          f"{net} also belongs to tenant {owners[net]!r}: ambiguous")  # fmt: skip
                owners[net] = tenant.name
        for j, domain in enumerate(tenant.domains):
            key = domain.lower()
            if key in domains and domains[key] != tenant.name:
                c.add(("tenants", i, "domains", j),
                      f"{domain} also belongs to tenant {domains[key]!r}: ambiguous")  # fmt: skip
            domains[key] = tenant.name
        c.limit(("tenants", i, "limit"), tenant.limit)
    trunk_nets: dict[str, str] = {}
    for i, trunk in enumerate(spec.trunks):
        if not trunk.sources:
            c.add(("trunks", i, "sources"), "a trunk needs at least one source network")
        for j, src in enumerate(trunk.sources):
            if c.cidr(("trunks", i, "sources", j), src):
                net = str(ipaddress.ip_network(src))
                if net in trunk_nets and trunk_nets[net] != trunk.name:
                    other = trunk_nets[net]
                    c.add(("trunks", i, "sources", j), f"{net} also in trunk {other!r}: ambiguous")
                trunk_nets[net] = trunk.name
        if trunk.tenant is not None and trunk.tenant not in tenant_names:
            c.add(("trunks", i, "tenant"), f"unknown tenant {trunk.tenant!r}")
        c.limit(("trunks", i, "limit"), trunk.limit)
    route_keys: dict[tuple[str | None, str | None, str], str] = {}
    for i, route in enumerate(spec.routes):
        if route.tenant is not None and route.tenant not in tenant_names:
            c.add(("routes", i, "tenant"), f"unknown tenant {route.tenant!r}")
        if not USER_PREFIX.match(route.prefix):
            c.add(("routes", i, "prefix"), f"not a user prefix: {route.prefix!r}")
        if not route.destinations:
            c.add(("routes", i, "destinations"), "a route needs at least one destination")
        for j, dest in enumerate(route.destinations):
            if not SIP_URI.match(dest):
                c.add(("routes", i, "destinations", j), f"not a SIP URI: {dest!r}")
        key = (route.tenant, route.domain.lower() if route.domain else None, route.prefix)
        if key in route_keys:
            c.add(("routes", i), f"same tenant, domain and prefix as route {route_keys[key]!r}")
        route_keys[key] = route.name
    if not spec.routes:
        c.add(("routes",), "at least one route is required")
    c.limit(("global_limit",), spec.global_limit)
    for i, peer in enumerate(spec.trusted_peers):
        c.cidr(("trusted_peers", i), peer)
    if spec.sdp.max_streams < 1:
        c.add(("sdp", "max_streams"), "must be at least 1")
    if spec.sdp.max_bytes < 256:
        c.add(("sdp", "max_bytes"), "must be at least 256")
    c.calls(("calls",), spec.calls)
    for i, tenant in enumerate(spec.tenants):
        c.calls(("tenants", i, "calls"), tenant.calls)
    for i, peer in enumerate(spec.dmq_peers):
        if not SIP_URI.match(peer):
            c.add(("dmq_peers", i), f"not a SIP URI: {peer!r}")
    return c.problems


def _limit(scope: str, key: str, spec: LimitSpec | None) -> Limit | None:
    if spec is None:
        return None
    return Limit(scope, key, spec.max, spec.code, spec.reason, spec.retry_after)


def _timers(base: CallTimers, spec: CallsSpec | None) -> CallTimers:
    if spec is None:
        return base
    return CallTimers(
        base.media_timeout if spec.media_timeout is None else spec.media_timeout,
        base.max_duration if spec.max_duration is None else spec.max_duration,
    )


def compile_policy(spec: PolicySpec) -> Policy:
    """Build the runtime tables; `spec` must have passed check()."""
    tenants = {t.name: Tenant(t.name, _limit("tenant", t.name, t.limit)) for t in spec.tenants}
    trunks = {
        t.name: Trunk(t.name, t.tenant, _limit("trunk", t.name, t.limit)) for t in spec.trunks
    }
    vips: list[Vip] = []
    flags: dict[tuple[str, str | None], str] = {}
    for i, v in enumerate(spec.vips, start=1):
        vip_media = v.media if v.media is not None else DEFAULT_VIP_MEDIA
        vip = Vip(v.address, i, tuple(v.rtpengine), media_flags(DEFAULT_VIP_MEDIA, vip_media))
        vips.append(vip)
        flags[(vip.address, None)] = vip.media_flags
        for t in spec.tenants:
            flags[(vip.address, t.name)] = media_flags(DEFAULT_VIP_MEDIA, vip_media, t.media)
    routes: dict[RouteKey, dict[str, Route]] = {}
    for r in spec.routes:
        key = (r.tenant, r.domain.lower() if r.domain else None)
        routes.setdefault(key, {})[r.prefix] = Route(r.name, tuple(r.destinations))
    lengths = {
        k: tuple(sorted({len(p) for p in table}, reverse=True)) for k, table in routes.items()
    }
    by_source = {
        str(ipaddress.ip_network(s)): tenants[t.name] for t in spec.tenants for s in t.sources
    }
    trunk_src = {
        str(ipaddress.ip_network(s)): trunks[t.name] for t in spec.trunks for s in t.sources
    }
    default_timers = _timers(CallTimers(), spec.calls)
    call_timers: dict[str | None, CallTimers] = {None: default_timers}
    call_timers.update({t.name: _timers(default_timers, t.calls) for t in spec.tenants})
    trusted = {str(ipaddress.ip_network(p)): True for p in spec.trusted_peers}
    trusted.update({net: True for net in trunk_src})
    return Policy(
        version=spec.version,
        vips=tuple(vips),
        vip_by_address={v.address: v for v in vips},
        tenants=tenants,
        trunks=trunks,
        tenant_by_domain={d.lower(): tenants[t.name] for t in spec.tenants for d in t.domains},
        tenant_by_source=CidrTable.build(by_source),
        trunk_by_source=CidrTable.build(trunk_src),
        routes=routes,
        route_prefix_lengths=lengths,
        media_flags=flags,
        global_limit=_limit("global", "all", spec.global_limit),
        trusted=CidrTable.build(trusted),
        dmq_peers=tuple(spec.dmq_peers),
        dmq_peer_hosts=frozenset(uri_host(p) for p in spec.dmq_peers),
        sdp_limits=SdpLimits(spec.sdp.max_streams, spec.sdp.max_bytes),
        call_timers=call_timers,
    )


def uri_host(uri: str) -> str:
    """'sip:10.0.0.2:5090' -> '10.0.0.2' (user part, port and parameters dropped)."""
    rest = uri.split(":", 1)[1].split(";", 1)[0]
    rest = rest.rsplit("@", 1)[-1]
    if rest.startswith("["):
        return rest[1 : rest.index("]")]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest
