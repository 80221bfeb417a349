from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kemi.core import decide
from kemi.core.policy import parse_address
from kemi.policyfile import parse_policy

POLICY = parse_policy(
    """
version: t
vips:
  - address: 10.0.0.1
    rtpengine: ["udp:10.0.0.1:2223"]
  - address: 10.0.0.2
    rtpengine: ["udp:10.0.0.2:2223"]
routes:
  - name: default
    destinations: ["sip:a", "sip:b", "sip:c"]
"""
)
DESTS = ("sip:a", "sip:b", "sip:c")


@pytest.mark.parametrize(
    ("address", "set_id"), [("10.0.0.1", 1), ("10.0.0.2", 2), ("10.0.0.3", None)]
)
def test_rtp_set_follows_the_vip(address: str, set_id: int | None) -> None:
    vip = decide.vip_for(POLICY, address)
    assert (vip.set_id if vip else None) == set_id


@pytest.mark.parametrize(
    ("tried", "status", "expected"),
    [
        (0, 408, "sip:b"),
        (0, 503, "sip:b"),
        (1, 500, "sip:c"),
        (2, 503, None),  # nothing left
        (0, 486, None),  # busy is the callee's answer, not a failure of the destination
        (0, 404, None),
        (0, 603, None),  # 6xx: global failure, stop searching (RFC 3261 16.7)
        (0, 487, None),
    ],
)
def test_failover_only_on_408_and_5xx(tried: int, status: int, expected: str | None) -> None:
    assert decide.next_destination(DESTS, tried, status) == expected


def test_default_route() -> None:
    route = decide.route_for(POLICY, None, "1000", "example.org")
    assert route is not None and route.destinations == DESTS


# ----- tenants, routes, limits and media flags on the shipped multi-tenant example -----

from pathlib import Path  # noqa: E402

from kemi.core.decide import Admit, InviteFacts, Reject, decide_invite, over_limit  # noqa: E402
from kemi.policyfile import load_policy  # noqa: E402

EXAMPLE = load_policy(Path(__file__).resolve().parents[2] / "policies/examples/multi-tenant.yaml")
VIP_A = "10.10.0.101"


@pytest.mark.parametrize(
    ("source", "user", "domain", "tenant", "trunk", "route", "limits"),
    [
        ("192.168.10.5", "7001", "x", "metro", None, "metro-intercoms", ["global", "tenant"]),
        ("192.168.10.5", "1125", "x", "metro", None, "emergency", ["global", "tenant"]),
        ("192.168.10.5", "5000", "x", "metro", None, "default", ["global", "tenant"]),
        ("203.0.113.3", "7001", "x", "metro", "carrier-a", "metro-intercoms",
         ["global", "tenant", "trunk"]),
        ("10.1.2.3", "7001", "PLANT.example.net", "plant", None, "default", ["global", "tenant"]),
        ("10.1.2.3", "112", "other", None, None, "emergency", ["global"]),
        ("10.1.2.3", "11", "other", None, None, "default", ["global"]),
    ],
)  # fmt: skip
def test_invite_decisions(
    source: str, user: str, domain: str, tenant: str | None, trunk: str | None, route: str,
    limits: list[str],
) -> None:  # fmt: skip
    d = decide_invite(EXAMPLE, InviteFacts(VIP_A, source, user, domain))
    assert isinstance(d, Admit)
    assert (d.tenant.name if d.tenant else None) == tenant
    assert (d.trunk.name if d.trunk else None) == trunk
    assert d.route.name == route
    assert [limit.scope for limit in d.limits] == limits


@pytest.mark.parametrize(
    ("facts", "code"),
    [
        (InviteFacts(VIP_A, "198.51.100.1", "7001", "x"), 403),  # not trusted, no trunk
        (InviteFacts("10.10.0.199", "192.168.10.5", "7001", "x"), 500),  # not a VIP
    ],
)
def test_invite_rejections(facts: InviteFacts, code: int) -> None:
    d = decide_invite(EXAMPLE, facts)
    assert isinstance(d, Reject) and d.code == code


def test_no_route_is_404() -> None:
    policy = parse_policy(
        "version: t\nvips: [{address: 10.0.0.1, rtpengine: ['udp:10.0.0.1:2223']}]\n"
        "routes: [{name: r, prefix: '9', destinations: ['sip:a']}]\ntrusted_peers: [0.0.0.0/0]\n"
    )
    d = decide_invite(policy, InviteFacts("10.0.0.1", "1.2.3.4", "1000", "x"))
    assert isinstance(d, Reject) and (d.code, d.reason) == (404, "No Route")


def test_media_flags_per_vip_and_tenant() -> None:
    plant = decide_invite(EXAMPLE, InviteFacts(VIP_A, "10.1.2.3", "1", "plant.example.net"))
    nobody = decide_invite(EXAMPLE, InviteFacts(VIP_A, "10.1.2.3", "1", "x"))
    assert isinstance(plant, Admit) and isinstance(nobody, Admit)
    assert nobody.media_flags == "replace-origin replace-session-connection ICE=remove"
    assert plant.media_flags == (
        "replace-origin replace-session-connection ICE=remove "
        "transport-protocol=RTP/AVP SDES-off codec-mask-opus"
    )


def test_over_limit_picks_the_first_exhausted_limit_with_its_code() -> None:
    d = decide_invite(EXAMPLE, InviteFacts(VIP_A, "203.0.113.3", "7001", "x"))
    assert isinstance(d, Admit)
    assert [limit.scope for limit in d.limits] == ["global", "tenant", "trunk"]
    assert over_limit(d.limits, [199, 10, 29]) is None
    refused = over_limit(d.limits, [10, 60, 30])
    assert refused == Reject(503, "Metro Channels Busy", 30, why="limit_tenant")


def test_example_phones_tenant_has_nat_detection() -> None:
    decision = decide_invite(EXAMPLE, InviteFacts(VIP_A, "100.64.20.7", "5551234", "x"))
    assert isinstance(decision, Admit) and decision.tenant and decision.tenant.name == "phones"
    assert (decision.nat.mode, decision.nat.contact) == ("detect", "alias")
    assert "SIP-source-address" in decision.flags_for(True)
    assert "SIP-source-address" not in decision.flags_for(False)


def ipaddress_answer(text: str) -> tuple[int, int] | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip.version, int(ip)


@given(st.one_of(st.ip_addresses().map(str), st.text(alphabet="0123456789.:abcdef%x ", max_size=20),
                 st.text(max_size=12)))  # fmt: skip
def test_parse_address_answers_what_ipaddress_answers(text: str) -> None:
    assert parse_address(text) == ipaddress_answer(text)


EDGES = ["01.2.3.4", "1.2.3.256", "1.2.3", "1.2.3.4.5", "\u0661.2.3.4", " 1.2.3.4", "1.2.3.4\n",
         "0.0.0.0", "255.255.255.255", "::1"]  # fmt: skip


@pytest.mark.parametrize("text", EDGES)
def test_parse_address_edge_cases_match_ipaddress(text: str) -> None:
    assert parse_address(text) == ipaddress_answer(text)
