"""PolicySpec -> Policy: the cross-checks a type check cannot do, then the lookup tables.

Checks: addresses, CIDRs (no host bits) and SIP URIs parse; names are unique; routes,
trunks and limits refer to tenants that exist; every VIP has an rtpengine socket; the same
network or domain in two tenants (or two trunks) is ambiguous; two routes with the same
tenant, domain and prefix are ambiguous; limits are not negative; Retry-After goes with 503;
an ng socket is on a loopback or private IP address (ng has no authentication);
floods: at least 1 request per window, a window of 1-60 s, a ban of 1 s to a day, exempt
networks are CIDRs, no empty scanner User-Agent; a route has destinations or a gateway set that
exists (not both); gateway sets hold gateways with SIP URIs, weights 1-100 and priorities >= 0;
rewrites have digit prefixes and a country code when they normalise to E.164; probing values
are positive; call timers are not negative (a media timeout at least MIN_MEDIA_TIMEOUT).
Every problem is reported, not only the first.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from kemi.core.floods import BAN_MAX_S, compile_guard, host_network
from kemi.core.nat import CONFLICTING_FLAGS, Nat, with_nat_flags
from kemi.core.numbers import Rewrite
from kemi.core.policy import (
    ALGORITHMS,
    CallTimers,
    CidrTable,
    DsSet,
    GatewaySet,
    Limit,
    Policy,
    Probing,
    Route,
    RouteKey,
    SdpLimits,
    Tenant,
    Trunk,
    Vip,
)
from kemi.core.spec import (
    CallsSpec,
    GatewaySetSpec,
    LimitSpec,
    MediaSpec,
    NatSpec,
    PolicySpec,
    ProbingSpec,
    RewriteSpec,
)
from kemi.core.structure import Path, Problem, dotted

SIP_URI = re.compile(r"^sips?:([^@\s;:]+@)?[A-Za-z0-9.\-\[\]:]+(:\d{1,5})?(;[^\s]*)?$")
NG_SOCKET = re.compile(r"^udp6?:[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")
USER_PREFIX = re.compile(r"^[0-9A-Za-z+*#._\-]*$")
DIGITS = re.compile(r"^[0-9]*$")
COUNTRY_CODE = re.compile(r"^[1-9][0-9]{0,2}$")
REPLY_CODE = re.compile(r"^[1-6]([0-9]{2}|xx)$")
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

    def rewrite(self, path: Path, spec: RewriteSpec | None) -> None:
        if spec is None:
            return
        if spec.e164 and (spec.country_code is None or not COUNTRY_CODE.match(spec.country_code)):
            self.add((*path, "country_code"), "e164 needs a country code of 1-3 digits, e.g. '49'")
        for name in ("national_prefix", "international_prefix"):
            if not DIGITS.match(getattr(spec, name)):
                self.add((*path, name), f"digits only (got {getattr(spec, name)!r})")
        if spec.strip < 0:
            self.add((*path, "strip"), "must not be negative")
        if not USER_PREFIX.match(spec.prefix):
            self.add((*path, "prefix"), f"not a user prefix: {spec.prefix!r}")

    def gateway_set(self, path: Path, gws: GatewaySetSpec) -> None:
        if not gws.gateways:
            self.add((*path, "gateways"), "a gateway set needs at least one gateway")
        seen: set[str] = set()
        for j, gw in enumerate(gws.gateways):
            where = (*path, "gateways", j)
            if not SIP_URI.match(gw.uri):
                self.add((*where, "uri"), f"not a SIP URI: {gw.uri!r}")
            if gw.uri in seen:
                self.add((*where, "uri"), f"{gw.uri} twice in this set")
            seen.add(gw.uri)
            if not 1 <= gw.weight <= 100:
                self.add((*where, "weight"), f"must be 1-100 (got {gw.weight})")
            if gw.priority < 0:
                self.add((*where, "priority"), f"must not be negative (got {gw.priority})")
        if gws.retry_after < 0:
            self.add((*path, "retry_after"), "must not be negative")
        if gws.timeout_ms is not None and not 100 <= gws.timeout_ms <= 60000:
            self.add((*path, "timeout_ms"), f"must be 100-60000 (got {gws.timeout_ms})")

    def probing(self, spec: ProbingSpec) -> None:
        for name in ("interval", "threshold", "recover"):
            if getattr(spec, name) < 1:
                self.add(("probing", name), f"must be at least 1 (got {getattr(spec, name)})")
        for i, code in enumerate(spec.reply_codes):
            if not REPLY_CODE.match(code):
                self.add(("probing", "reply_codes", i), f"a code like '404' or a class like "
                         f"'4xx' (got {code!r})")  # fmt: skip
        if not SIP_URI.match(spec.from_uri):
            self.add(("probing", "from_uri"), f"not a SIP URI: {spec.from_uri!r}")

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
            elif not ng_host_private(sock):
                c.add(("vips", i, "rtpengine", j), f"{sock}: ng has no authentication: its "
                      "socket must be on a loopback or private IP address")  # fmt: skip
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
        c.rewrite(("trunks", i, "rewrite"), trunk.rewrite)
    c.unique(("gateway_sets",), (g.name for g in spec.gateway_sets), "gateway set")
    for i, gws in enumerate(spec.gateway_sets):
        c.gateway_set(("gateway_sets", i), gws)
    c.probing(spec.probing)
    set_names = {g.name for g in spec.gateway_sets}
    route_keys: dict[tuple[str | None, str | None, str], str] = {}
    for i, route in enumerate(spec.routes):
        if route.tenant is not None and route.tenant not in tenant_names:
            c.add(("routes", i, "tenant"), f"unknown tenant {route.tenant!r}")
        if not USER_PREFIX.match(route.prefix):
            c.add(("routes", i, "prefix"), f"not a user prefix: {route.prefix!r}")
        if route.gateway_set is not None:
            if route.destinations:
                c.add(("routes", i, "gateway_set"), "give destinations or a gateway_set, not both")
            if route.gateway_set not in set_names:
                c.add(("routes", i, "gateway_set"), f"unknown gateway set {route.gateway_set!r}")
        elif not route.destinations:
            c.add(("routes", i, "destinations"),
                  "a route needs at least one destination (or a gateway_set)")  # fmt: skip
        c.rewrite(("routes", i, "rewrite"), route.rewrite)
        for j, dest in enumerate(route.destinations):
            if not SIP_URI.match(dest):
                c.add(("routes", i, "destinations", j), f"not a SIP URI: {dest!r}")
        key = (route.tenant, route.domain.lower() if route.domain else None, route.prefix)
        if key in route_keys:
            c.add(("routes", i), f"same tenant, domain and prefix as route {route_keys[key]!r}")
        route_keys[key] = route.name
    if not spec.routes:
        c.add(("routes",), "at least one route is required")
    check_nat(c, spec)
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
        else:
            try:
                ipaddress.ip_address(uri_host(peer))
            except ValueError:
                c.add(("dmq_peers", i), f"a DMQ peer is an IP address (it is exempt from bans): "
                      f"{peer!r}")  # fmt: skip
    floods = spec.floods
    if floods.max_requests < 1:
        c.add(("floods", "max_requests"), "must be at least 1")
    if not 1 <= floods.window_s <= 60:
        c.add(("floods", "window_s"), "must be 1..60 seconds")
    if not 1 <= floods.ban_s <= BAN_MAX_S:
        c.add(("floods", "ban_s"), f"must be 1..{BAN_MAX_S} seconds (kha_ban's autoexpire)")
    for i, net in enumerate(floods.exempt):
        c.cidr(("floods", "exempt", i), net)
    for i, agent in enumerate(floods.scanner_user_agents):
        if not agent.strip():
            c.add(("floods", "scanner_user_agents", i), "an empty User-Agent would match all")
    return c.problems


def ng_host_private(socket_spec: str) -> bool:
    """'udp:10.0.0.1:2223' -> its host is a loopback or private IP address (not a name)."""
    host = socket_spec.split(":", 1)[1].rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_private and not ip.is_unspecified


def check_nat(c: _Checker, spec: PolicySpec) -> None:
    """A call handled as behind NAT must not get rtpengine flags that undo the NAT flags
    (kemi.core.nat rule 4): checked for every (VIP, tenant) pair whose NAT mode is not never."""
    parties: list[tuple[Path, MediaSpec | None, NatSpec]] = [(("nat",), None, spec.nat)]
    parties += [(("tenants", i, "nat"), t.media, t.nat or spec.nat)
                for i, t in enumerate(spec.tenants)]  # fmt: skip
    reported: set[Path] = set()
    for nat_path, tenant_media, nat in parties:
        if nat.mode == "never":
            continue
        layers = [(("vips", i, "media", "extra"), v.media) for i, v in enumerate(spec.vips)]
        layers.append(((*nat_path[:-1], "media", "extra"), tenant_media))
        for where, media in layers:
            bad = sorted(set(media.extra or []) & CONFLICTING_FLAGS) if media else []
            if bad and where not in reported:
                reported.add(where)
                c.add(where, f"{', '.join(bad)} would undo NAT traversal "
                      f"({dotted(nat_path)}.mode is {nat.mode})")  # fmt: skip


def _nat(spec: NatSpec) -> Nat:
    return Nat(spec.mode, spec.contact)


def _limit(scope: str, key: str, spec: LimitSpec | None) -> Limit | None:
    if spec is None:
        return None
    return Limit(scope, key, spec.max, spec.code, spec.reason, spec.retry_after)


def _rewrite(spec: RewriteSpec | None) -> Rewrite | None:
    if spec is None:
        return None
    return Rewrite(
        e164=spec.e164,
        country_code=spec.country_code or "",
        national_prefix=spec.national_prefix,
        international_prefix=spec.international_prefix,
        strip_plus=spec.plus == "strip",
        strip=spec.strip,
        prefix=spec.prefix,
        pai=spec.pai,
        diversion=spec.diversion,
    )


def percentages(weights: list[int]) -> list[int]:
    """Weights as shares of 100 (dispatcher's algorithm 9 fills 100 slots), largest remainder."""
    total = sum(weights)
    exact = [w * 100 / total for w in weights]
    shares = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in order[: 100 - sum(shares)]:
        shares[i] += 1
    return shares


def gateway_sets(
    specs: list[GatewaySetSpec],
) -> tuple[dict[str, GatewaySet], tuple[DsSet, ...]]:
    """One dispatcher set per (gateway set, priority), numbered 1.. in policy order, highest
    priority first: dispatcher spreads calls by weight within a set, kemi-ha walks the sets."""
    sets: dict[str, GatewaySet] = {}
    ds_sets: list[DsSet] = []
    for gws in specs:
        algorithm = ALGORITHMS[gws.algorithm]
        levels: list[int] = []
        for priority in sorted({g.priority for g in gws.gateways}, reverse=True):
            members = [g for g in gws.gateways if g.priority == priority]
            weights = [g.weight for g in members]
            if algorithm == 9:
                weights = percentages(weights)
            set_id = len(ds_sets) + 1
            uris = tuple(zip((g.uri for g in members), weights, strict=True))
            ds_sets.append(DsSet(set_id, gws.name, priority, uris))
            levels.append(set_id)
        first = ds_sets[levels[0] - 1].gateways[0][0]
        sets[gws.name] = GatewaySet(
            gws.name, tuple(levels), algorithm, gws.retry_after, first, gws.timeout_ms or 0
        )
    return sets, tuple(ds_sets)


def _probing(spec: ProbingSpec) -> Probing:
    codes = ";".join(f"class={c[0]}" if c.endswith("xx") else f"code={c}" for c in spec.reply_codes)
    return Probing(spec.interval, spec.threshold, spec.recover, codes, spec.from_uri)


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
        t.name: Trunk(t.name, t.tenant, _limit("trunk", t.name, t.limit), _rewrite(t.rewrite))
        for t in spec.trunks
    }
    sets, ds_sets = gateway_sets(spec.gateway_sets)
    vips: list[Vip] = []
    flags: dict[tuple[str, str | None], str] = {}
    for i, v in enumerate(spec.vips, start=1):
        vip_media = v.media if v.media is not None else DEFAULT_VIP_MEDIA
        vip = Vip(v.address, i, tuple(v.rtpengine), media_flags(DEFAULT_VIP_MEDIA, vip_media))
        vips.append(vip)
        flags[(vip.address, None)] = vip.media_flags
        for t in spec.tenants:
            flags[(vip.address, t.name)] = media_flags(DEFAULT_VIP_MEDIA, vip_media, t.media)
    nat_flags = {key: with_nat_flags(value) for key, value in flags.items()}
    routes: dict[RouteKey, dict[str, Route]] = {}
    for r in spec.routes:
        key = (r.tenant, r.domain.lower() if r.domain else None)
        gws = sets[r.gateway_set] if r.gateway_set is not None else None
        route = Route(r.name, tuple(r.destinations), gws, _rewrite(r.rewrite))
        routes.setdefault(key, {})[r.prefix] = route
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
    peer_hosts = frozenset(uri_host(p) for p in spec.dmq_peers)
    f = spec.floods
    floods = compile_guard(
        f.enabled, f.max_requests, f.window_s, f.ban_s,
        [*trusted, *f.exempt, *(host_network(h) for h in sorted(peer_hosts))],
        f.scanner_user_agents, f.ban_scanners,
    )  # fmt: skip
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
        dmq_peer_hosts=peer_hosts,
        sdp_limits=SdpLimits(spec.sdp.max_streams, spec.sdp.max_bytes),
        floods=floods,
        nat={None: _nat(spec.nat)} | {t.name: _nat(t.nat or spec.nat) for t in spec.tenants},
        nat_media_flags=nat_flags,
        gateway_sets=sets,
        dispatcher_sets=ds_sets,
        probing=_probing(spec.probing),
        call_timers=call_timers,
    )


def uri_host(uri: str) -> str:
    """'sip:10.0.0.2:5090' -> '10.0.0.2' (user part, port and parameters dropped)."""
    rest = uri.split(":", 1)[1].split(";", 1)[0]
    rest = rest.rsplit("@", 1)[-1]
    if rest.startswith("["):
        return rest[1 : rest.index("]")]
    return rest.rsplit(":", 1)[0] if rest.count(":") == 1 else rest
