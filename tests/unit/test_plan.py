"""An INVITE's plan (kemi.core.plan) says exactly what decide_invite and the route's own rules
say, for any INVITE on the shipped example policies; the cache never outlives its policy."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from kemi.core import nat, plan, takeover
from kemi.core.cdr import SetupFacts, SetupTemplate
from kemi.core.decide import InviteFacts, Reject, decide_invite, over_limit
from kemi.core.policy import Policy
from kemi.policyfile import load_policy

EXAMPLES = Path(__file__).resolve().parents[2] / "policies" / "examples"
POLICIES = {name: load_policy(EXAMPLES / f"{name}.yaml") for name in ("multi-tenant", "gateways")}
PORTS = nat.listen_ports(5060, 5061)
NAT_PVS = ("$dlg_var(a)", "$avp(a)", "$dlg_var(b)", "$avp(b)")


def addresses(policy: Policy) -> st.SearchStrategy[str]:
    """VIPs, other local addresses, sources inside and outside every table."""
    vips = [v.address for v in policy.vips]
    return st.sampled_from(
        [*vips, "10.10.0.1", "192.168.10.7", "192.168.20.5", "203.0.113.3", "100.64.20.9",
         "198.51.100.1",
         "10.0.0.5", "::1", "not-an-address", ""]
    )  # fmt: skip


invites = st.sampled_from(sorted(POLICIES)).flatmap(
    lambda name: st.tuples(
        st.just(name),
        st.sampled_from([v.address for v in POLICIES[name].vips] + ["10.9.9.9"]),
        addresses(POLICIES[name]),
        st.sampled_from(["112", "7001", "9004930123", "0049301234", "030123", "+4930", "1000", ""]),
        st.sampled_from(["plant.example.net", "PLANT.example.net", "10.10.0.101", "x.org", ""]),
    )
)


@settings(max_examples=400, deadline=None)
@given(invites)
def test_plan_is_the_decision_and_what_the_route_writes_for_it(
    invite: tuple[str, str, str, str, str],
) -> None:
    name, local, source, user, domain = invite
    policy = POLICIES[name]
    facts = InviteFacts(local, source, user, domain)
    got = plan.plan_invite(policy, facts, "node-1", PORTS, NAT_PVS)
    decision = decide_invite(policy, facts)
    if isinstance(decision, Reject):
        assert got == decision
        return
    assert isinstance(got, plan.InvitePlan)
    assert got.decision == decision and got.vip is decision.vip
    assert [c.limit for c in got.checks] == list(decision.limits)
    for check in got.checks:
        assert check.profile == check.limit.profile
        assert check.key == (None if check.limit.scope == "global" else check.limit.key)
        assert check.refusal == over_limit([check.limit], [check.limit.max])
    changed = decision.ruri_user != user
    assert got.ruri_user == (decision.ruri_user if changed else None)
    assert got.callee == f"{decision.ruri_user}@{domain}"
    vip_flags = decision.vip.media_flags
    assert got.dialog_flags == (None if decision.media_flags == vip_flags else decision.media_flags)
    tenant = decision.tenant.name if decision.tenant else None
    trunk = decision.trunk.name if decision.trunk else None
    if decision.nat.enabled:
        values = (decision.nat.encoded,) * 2 + (decision.nat_media_flags,) * 2
        assert got.nat_values == tuple(zip(NAT_PVS, values, strict=True))
    else:
        assert got.nat_values == ()
    assert got.profiles == takeover.profile_entries(tenant, trunk)
    route = decision.route
    if route.gateway_set is not None:
        assert (got.destinations, got.first_hop, got.socket) == ("", None, None)
    else:
        assert got.destinations == " ".join(route.destinations)
        assert got.first_hop == route.destinations[0]
        assert got.socket == nat.send_socket(nat.uri_transport(route.destinations[0]), local,
                                             PORTS)  # fmt: skip
    timers = policy.timers_for(tenant)
    expected = SetupFacts(
        "from@x", got.callee, tenant or "", trunk or "", decision.vip.address, "node-1",
        1700000000123, timers.media_timeout, timers.max_duration,
    )  # fmt: skip
    assert got.setup.encode("from@x", got.callee, 1700000000123) == expected.encode()
    assert got.setup.max_duration == timers.max_duration


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


@given(text, text, text, text, text, text, st.integers(0, 2**53), st.integers(0, 10**6),
       st.integers(0, 10**6))  # fmt: skip
def test_setup_template_is_byte_equal_to_encode(
    caller: str, callee: str, tenant: str, trunk: str, vip: str, node: str, when: int,
    media_timeout: int, max_duration: int,
) -> None:  # fmt: skip
    facts = SetupFacts(caller, callee, tenant, trunk, vip, node, when, media_timeout, max_duration)
    template = SetupTemplate(tenant, trunk, vip, node, media_timeout, max_duration)
    assert template.encode(caller, callee, when) == facts.encode()
    assert SetupFacts.decode(template.encode(caller, callee, when)) == facts


def test_cache_keeps_a_plan_per_input_for_one_policy_only() -> None:
    policy, other = POLICIES["multi-tenant"], POLICIES["gateways"]
    cache = plan.PlanCache()
    key = ("10.10.0.101", "192.168.10.7", "7001", "x.org")
    assert cache.get(policy, key) is None
    made = cache.add(key, plan.plan_invite(policy, InviteFacts(*key), "n", PORTS, NAT_PVS))
    assert cache.get(policy, key) is made
    assert cache.get(other, key) is None  # another policy (a reload): nothing carried over
    assert cache.get(policy, key) is None  # and back: planned again, never a stale plan


def test_cache_starts_again_when_full() -> None:
    cache = plan.PlanCache()
    policy = POLICIES["multi-tenant"]
    refused = Reject(403, "Forbidden", why="untrusted_source")
    cache.get(policy, ("a", "b", "c", "d"))
    for i in range(plan.PLANS_MAX):
        cache.add(("l", str(i), "u", "d"), refused)
    assert len(cache.plans) == plan.PLANS_MAX
    cache.add(("l", "new", "u", "d"), refused)
    assert list(cache.plans) == [("l", "new", "u", "d")]


def test_nat_tables_are_the_rules() -> None:
    for mode in nat.MODES:
        for detected in (False, True):
            assert nat.BEHIND_NAT[mode, detected] == nat.behind_nat(nat.Nat(mode), detected)
        for contact in nat.CONTACT_FIXES:
            for nated in (False, True):
                for transport in ("udp", "tcp", "tls", "ws", "wss", "sctp"):
                    connection = transport in nat.CONNECTION_TRANSPORTS
                    expected = nat.contact_fix(nat.Nat(mode, contact), nated, transport)
                    assert nat.CONTACT_FIX[contact, nated, connection] is expected
    for encoded, decoded in nat.BY_ENCODED.items():
        assert nat.decode(encoded) is decoded and decoded.encoded == encoded
