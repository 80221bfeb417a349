"""An initial INVITE's plan: the decision and every value its route writes, computed once.

Inside Kamailio each Python function a message runs costs ~1-2 us of a worker's CPU (the
worker wakes with cold caches: measured per callback, docs/performance.md), so the INVITE
route must not rebuild per message what depends only on the policy and the INVITE's inputs.
`plan_invite` decides (kemi.core.decide) and precomputes the rest: the limits with their
dialog profiles, the flags to keep in the dialog (only where they differ from the VIP's), the
NAT values, the profile list, the destinations, the relay socket, the call record's constant
fields. `PlanCache` keeps plans per (VIP, source, R-URI user, R-URI domain) for one policy:
the endpoints of the operators we serve (intercoms, emergency lines, radio gateways) call the
same numbers over and over; a miss costs one `decide_invite`.
"""

from __future__ import annotations

from dataclasses import dataclass

from kemi.core import nat
from kemi.core.cdr import SetupTemplate
from kemi.core.decide import Admit, InviteFacts, Reject, decide_invite, limit_refusal
from kemi.core.policy import Limit, Policy, Vip
from kemi.core.takeover import profile_entries

PLANS_MAX = 4096  # entries per policy; the cache starts again empty when full


@dataclass(frozen=True, slots=True)
class LimitCheck:
    """One limit, the dialog profile that counts it (key None: the static global one), and
    the refusal when it is full (decide.over_limit's)."""

    limit: Limit
    profile: str
    key: str | None
    refusal: Reject


@dataclass(frozen=True, slots=True)
class InvitePlan:
    decision: Admit
    vip: Vip
    checks: tuple[LimitCheck, ...]
    ruri_user: str | None  # the R-URI user to set ($rU), None: unchanged
    callee: str  # $rU@$rd after the rewrites, for the call record
    dialog_flags: str | None  # media flags kept for the call, None: the VIP's (the default)
    nat_values: tuple[tuple[str, str], ...]  # (PV, value) pairs, empty when NAT is off
    profiles: str  # the valued profiles of the call ("" none)
    destinations: str  # the route's destinations, space separated ("" for a gateway set)
    first_hop: str | None  # destination 0 (None for a gateway set: dispatcher sets $du)
    socket: str | None  # the relay socket for first_hop's transport on the VIP
    setup: SetupTemplate  # the call record's facts but caller, callee and time


def plan_invite(
    policy: Policy,
    facts: InviteFacts,
    node: str,
    ports: dict[str, int],
    nat_pvs: tuple[str, str, str, str],
) -> InvitePlan | Reject:
    """`nat_pvs`: where the call's NAT handling and NAT media flags are kept (dialog var, AVP,
    dialog var, AVP: the shell's names)."""
    decision = decide_invite(policy, facts)
    if isinstance(decision, Reject):
        return decision
    vip = decision.vip
    tenant = decision.tenant.name if decision.tenant else None
    trunk = decision.trunk.name if decision.trunk else None
    checks = tuple(
        LimitCheck(limit, limit.profile, None if limit.scope == "global" else limit.key,
                   limit_refusal(limit))
        for limit in decision.limits
    )  # fmt: skip
    changed = decision.ruri_user != facts.ruri_user
    nat_values: tuple[tuple[str, str], ...] = ()
    if decision.nat.enabled:
        encoded, flags = decision.nat.encoded, decision.nat_media_flags
        nat_values = tuple(zip(nat_pvs, (encoded, encoded, flags, flags), strict=True))
    route = decision.route
    first_hop = None if route.gateway_set is not None else route.destinations[0]
    socket = None
    if first_hop is not None:
        socket = nat.send_socket(nat.uri_transport(first_hop), facts.local_address, ports)
    timers = policy.timers_for(tenant)
    return InvitePlan(
        decision=decision,
        vip=vip,
        checks=checks,
        ruri_user=decision.ruri_user if changed else None,
        callee=f"{decision.ruri_user}@{facts.ruri_domain}",
        dialog_flags=decision.media_flags if decision.media_flags != vip.media_flags else None,
        nat_values=nat_values,
        profiles=profile_entries(tenant, trunk),
        destinations="" if route.gateway_set is not None else " ".join(route.destinations),
        first_hop=first_hop,
        socket=socket,
        setup=SetupTemplate(
            tenant or "", trunk or "", vip.address, node, timers.media_timeout, timers.max_duration
        ),
    )


class PlanCache:
    """Plans (and refusals) of one policy, by the INVITE's inputs; emptied when the policy
    object changes (a reload) or when full."""

    __slots__ = ("plans", "policy")

    def __init__(self) -> None:
        self.policy: Policy | None = None
        self.plans: dict[tuple[str, str, str, str], InvitePlan | Reject] = {}

    def get(self, policy: Policy, key: tuple[str, str, str, str]) -> InvitePlan | Reject | None:
        """The plan for key (local address, source, R-URI user, R-URI domain), None: not yet."""
        if policy is not self.policy:
            self.policy, self.plans = policy, {}
        return self.plans.get(key)

    def add(self, key: tuple[str, str, str, str], plan: InvitePlan | Reject) -> InvitePlan | Reject:
        if len(self.plans) >= PLANS_MAX:
            self.plans = {}
        self.plans[key] = plan
        return plan
