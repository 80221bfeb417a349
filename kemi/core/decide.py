"""Decisions on plain data, called by the KSR shell (kemi.shell.routes).

An initial INVITE is decided in this order (decide_invite):
1. the VIP it arrived on must be a policy VIP (its rtpengine set serves the media) -> else 500;
2. the source must be a trusted peer or a trunk -> else 403;
3. trunk by source network, tenant by trunk, source network or request domain; the trunk's
   number rewrite (kemi.core.numbers) applies to the R-URI user before the route lookup;
4. route: most specific (tenant+domain, tenant, domain, any), then longest R-URI user prefix
   -> none matches: 404; the route's rewrite applies after it;
5. limits that apply (global, tenant, trunk), media flags for (VIP, tenant), with and without
   NAT, and the tenant's NAT handling (kemi.core.nat).
A route with a gateway set is then dispatched by the shell (kemi.core.dispatch: no gateway
up -> 503 with Retry-After).
After a failed branch, RFC 3261 16.7: 408 and 5xx try the next destination; 6xx and other
4xx are final.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kemi.core.nat import NAT_OFF, Nat
from kemi.core.numbers import Rewrite, rewrite_user
from kemi.core.policy import (
    Address,
    Limit,
    Policy,
    Route,
    RouteKey,
    Tenant,
    Trunk,
    Vip,
    parse_address,
)


@dataclass(frozen=True, slots=True)
class InviteFacts:
    """What the shell reads from an initial INVITE, once."""

    local_address: str  # $Ri: the VIP it arrived on
    source: str  # $si
    ruri_user: str  # $rU
    ruri_domain: str  # $rd


@dataclass(frozen=True, slots=True)
class Reject:
    code: int
    reason: str
    retry_after: int | None = None
    why: str = ""  # for the log line and metrics label (low cardinality)


@dataclass(frozen=True, slots=True)
class Admit:
    vip: Vip
    tenant: Tenant | None
    trunk: Trunk | None
    route: Route
    media_flags: str
    limits: tuple[Limit, ...]
    nat: Nat = NAT_OFF  # the tenant's NAT handling (kemi.core.nat)
    nat_media_flags: str = ""  # media_flags for a sender behind NAT

    def flags_for(self, behind_nat: bool) -> str:
        return self.nat_media_flags if behind_nat else self.media_flags

    ruri_user: str = ""  # the R-URI user to relay (after the trunk's and route's rewrites)
    identity: tuple[Rewrite, ...] = ()  # rewrites that touch P-Asserted-Identity / Diversion


def vip_for(policy: Policy, local_address: str) -> Vip | None:
    """The VIP a message was received on (or sent from); None if that address is no VIP."""
    return policy.vip_by_address.get(local_address)


def identify(
    policy: Policy, source: Address | None, ruri_domain: str
) -> tuple[Trunk | None, Tenant | None]:
    """`source`: the parsed source address (parse_address; None: not an address)."""
    trunk = policy.trunk_by_source.lookup_parsed(source) if source is not None else None
    if trunk is not None and trunk.tenant is not None:
        return trunk, policy.tenants[trunk.tenant]
    tenant = policy.tenant_by_source.lookup_parsed(source) if source is not None else None
    if tenant is None:
        tenant = policy.tenant_by_domain.get(ruri_domain.lower())
    return trunk, tenant


def route_for(policy: Policy, tenant: str | None, ruri_user: str, ruri_domain: str) -> Route | None:
    domain = ruri_domain.lower()
    keys: tuple[RouteKey, ...] = ((tenant, domain), (tenant, None), (None, domain), (None, None))
    for key in keys if tenant is not None else keys[2:]:
        table = policy.routes.get(key)
        if table is None:
            continue
        for length in policy.route_prefix_lengths[key]:
            if length <= len(ruri_user):
                route = table.get(ruri_user[:length])
                if route is not None:
                    return route
    return None


def limits_for(policy: Policy, tenant: Tenant | None, trunk: Trunk | None) -> tuple[Limit, ...]:
    candidates = (
        policy.global_limit,
        tenant.limit if tenant else None,
        trunk.limit if trunk else None,
    )
    return tuple(limit for limit in candidates if limit is not None)


def decide_invite(policy: Policy, facts: InviteFacts) -> Admit | Reject:
    vip = policy.vip_by_address.get(facts.local_address)
    if vip is None:
        return Reject(500, "No Media Relay For This Address", why="no_vip")
    source = parse_address(facts.source)  # once, for the three tables
    trunk, tenant = identify(policy, source, facts.ruri_domain)
    if trunk is None and (source is None or policy.trusted.lookup_parsed(source) is None):
        return Reject(403, "Forbidden", why="untrusted_source")
    tenant_name = tenant.name if tenant else None
    user = facts.ruri_user
    inbound = trunk.rewrite if trunk is not None else None
    if inbound is not None:
        user = rewrite_user(user, inbound)
    route = route_for(policy, tenant_name, user, facts.ruri_domain)
    if route is None:
        return Reject(404, "No Route", why="no_route")
    if route.rewrite is not None:
        user = rewrite_user(user, route.rewrite)
    identity = ()
    if inbound is not None or route.rewrite is not None:
        identity = tuple(r for r in (inbound, route.rewrite) if r is not None and r.touches_headers)
    key = (vip.address, tenant_name)
    return Admit(
        vip, tenant, trunk, route, policy.media_flags[key], limits_for(policy, tenant, trunk),
        nat=policy.nat[tenant_name], nat_media_flags=policy.nat_media_flags[key],
        ruri_user=user, identity=identity,
    )  # fmt: skip


def over_limit(limits: Sequence[Limit], counts: Sequence[int]) -> Reject | None:
    """The first limit whose current count (`counts`, aligned with `limits`) leaves no room
    for one more call."""
    for limit, count in zip(limits, counts, strict=True):
        if count >= limit.max:
            return limit_refusal(limit)
    return None


def limit_refusal(limit: Limit) -> Reject:
    """The answer to a call that finds `limit` full."""
    return Reject(limit.code, limit.reason, limit.retry_after, why=f"limit_{limit.scope}")


def should_fail_over(status: int) -> bool:
    """RFC 3261 16.7 step 6: 408 and 5xx are worth another location; 6xx ends the search."""
    return status == 408 or 500 <= status <= 599


def next_destination(destinations: tuple[str, ...], tried: int, status: int) -> str | None:
    """The destination after index `tried`, if `status` allows failover and one is left."""
    if not should_fail_over(status):
        return None
    nxt = tried + 1
    return destinations[nxt] if nxt < len(destinations) else None


DMQ_NOTIFICATION_USER = "notification_peer"


def kdmq_accepted(
    policy: Policy, source: str, own_address: str, ruri_user: str, known_node: bool
) -> bool:
    """A KDMQ is handled only from a configured DMQ peer (or this node itself); beyond the
    notification that introduces a peer, it must also come from a node DMQ already knows."""
    if source != own_address and source not in policy.dmq_peer_hosts:
        return False
    return known_node or ruri_user == DMQ_NOTIFICATION_USER
