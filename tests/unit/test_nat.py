# ruff: noqa: E501  (expected messages are kept whole, one per line)
"""NAT traversal and transport decisions (kemi.core.nat), their policy fields and checks."""

from __future__ import annotations

import pytest

from kemi.core import decide, nat
from kemi.core.decide import Admit, InviteFacts
from kemi.core.nat import ContactFix, Nat
from kemi.core.structure import SpecError
from kemi.policyfile import parse_policy

POLICY_TEXT = """\
version: t
vips:
  - address: 10.0.0.1
    rtpengine: ["udp:10.0.0.1:2223"]
tenants:
  - name: phones
    sources: ["198.51.100.0/24"]
    nat: {mode: detect}
  - name: pbx
    sources: ["203.0.113.0/24"]
    nat: {mode: always, contact: rewrite}
  - name: trunkish
    sources: ["192.0.2.0/24"]
routes:
  - name: default
    destinations: ["sip:10.9.0.1:5060"]
trusted_peers: ["0.0.0.0/0"]
"""


@pytest.mark.parametrize(
    ("mode", "detected", "expected"),
    [("never", True, False), ("never", False, False), ("detect", True, True),
     ("detect", False, False), ("always", False, True), ("always", True, True)],
)  # fmt: skip
def test_behind_nat_by_mode(mode: str, detected: bool, expected: bool) -> None:
    assert nat.behind_nat(Nat(mode), detected) is expected


@pytest.mark.parametrize(
    ("contact", "nated", "transport", "expected"),
    [
        ("alias", False, "udp", ContactFix.NONE),
        ("alias", True, "udp", ContactFix.ALIAS),
        ("rewrite", True, "udp", ContactFix.REWRITE),
        ("rewrite", False, "udp", ContactFix.NONE),
        # a connection is reused whatever the NAT mode, and rewriting would lose its transport
        ("alias", False, "tcp", ContactFix.ALIAS),
        ("rewrite", True, "tls", ContactFix.ALIAS),
        ("alias", False, "tls", ContactFix.ALIAS),
    ],
)
def test_contact_fix(contact: str, nated: bool, transport: str, expected: ContactFix) -> None:
    assert nat.contact_fix(Nat("detect", contact), nated, transport) is expected


def test_only_detect_asks_nathelper() -> None:
    assert [Nat(m).needs_test for m in nat.MODES] == [False, True, False]


@pytest.mark.parametrize(
    ("uri", "transport"),
    [("sip:10.0.0.9:5060", "udp"), ("sip:a@10.0.0.9;transport=TCP", "tcp"),
     ("sip:10.0.0.9;lr;transport=tls", "tls"), ("sips:a@example.net", "tls"),
     ("sips:a@example.net;transport=tcp", "tcp"), ("", "udp")],
)  # fmt: skip
def test_transport_of_a_uri(uri: str, transport: str) -> None:
    assert nat.uri_transport(uri) == transport


def test_send_socket_is_the_vip_with_the_next_hops_transport_and_port() -> None:
    ports = nat.listen_ports(5060, 5061)
    assert nat.send_socket("udp", "10.0.0.1", ports) == "udp:10.0.0.1:5060"
    assert nat.send_socket("tcp", "10.0.0.1", ports) == "tcp:10.0.0.1:5060"
    assert nat.send_socket("tls", "10.0.0.1", ports) == "tls:10.0.0.1:5061"
    assert nat.send_socket("tls", "2001:db8::1", ports) == "tls:[2001:db8::1]:5061"
    assert nat.send_socket("sctp", "10.0.0.1", ports) is None


def test_dialog_encoding_round_trips_and_unknown_is_never() -> None:
    for mode in nat.MODES:
        for contact in nat.CONTACT_FIXES:
            assert nat.decode(Nat(mode, contact).encoded) == Nat(mode, contact)
    assert nat.decode("") is nat.NAT_OFF
    assert nat.decode("garbage") is nat.NAT_OFF


def admit(source: str) -> Admit:
    decision = decide.decide_invite(
        parse_policy(POLICY_TEXT), InviteFacts("10.0.0.1", source, "1000", "10.0.0.1")
    )
    assert isinstance(decision, Admit)
    return decision


def test_each_tenant_gets_its_nat_and_both_flag_sets() -> None:
    phones, pbx, other = admit("198.51.100.7"), admit("203.0.113.9"), admit("192.0.2.1")
    assert phones.nat == Nat("detect", "alias")
    assert pbx.nat == Nat("always", "rewrite")
    assert other.nat == Nat("never", "alias")  # the policy's default
    base = "replace-origin replace-session-connection ICE=remove"
    assert phones.flags_for(False) == base
    assert phones.flags_for(True) == base + " SIP-source-address symmetric"
    assert "trust-address" not in phones.flags_for(True)


def test_policy_nat_is_the_default_of_tenants_without_one() -> None:
    policy = parse_policy(POLICY_TEXT + "nat: {mode: detect}\n")
    assert policy.nat["trunkish"] == Nat("detect") == policy.nat[None]
    assert policy.nat["pbx"] == Nat("always", "rewrite")


def test_nat_flags_are_added_once() -> None:
    assert nat.with_nat_flags("replace-origin ICE=remove") == (
        "replace-origin ICE=remove SIP-source-address symmetric replace-session-connection"
    )


def errors_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_policy(text, "p.yaml")
    return info.value.messages


def test_flags_that_undo_nat_are_refused_where_they_are_written() -> None:
    text = POLICY_TEXT.replace(
        "    nat: {mode: detect}\n",
        "    nat: {mode: detect}\n    media: {extra: [trust-address]}\n",
    )
    assert errors_of(text) == [
        "p.yaml:9:13: tenants[0].media.extra: trust-address would undo NAT traversal (tenants[0].nat.mode is detect)"
    ]
    vip = POLICY_TEXT.replace(
        '    rtpengine: ["udp:10.0.0.1:2223"]\n',
        '    rtpengine: ["udp:10.0.0.1:2223"]\n    media: {extra: [asymmetric]}\n',
    )
    assert errors_of(vip) == [
        "p.yaml:5:13: vips[0].media.extra: asymmetric would undo NAT traversal (tenants[0].nat.mode is detect)"
    ]


def test_trust_address_is_fine_where_nat_is_never() -> None:
    text = POLICY_TEXT.replace(
        '    sources: ["192.0.2.0/24"]\n',
        '    sources: ["192.0.2.0/24"]\n    media: {extra: [trust-address]}\n',
    )
    assert parse_policy(text).media_flags[("10.0.0.1", "trunkish")].endswith("trust-address")


@pytest.mark.parametrize(
    ("nat_text", "expected"),
    [("{mode: off}", "p.yaml:18:7: nat.mode: must be one of never, detect, always"),
     ("{mode: detect, contact: fix}", "p.yaml:18:21: nat.contact: must be one of alias, rewrite")],
)  # fmt: skip
def test_bad_nat_values_name_their_line(nat_text: str, expected: str) -> None:
    assert errors_of(POLICY_TEXT + f"nat: {nat_text}\n") == [expected]


def test_spec_literals_are_the_cores_modes() -> None:
    from typing import get_args, get_type_hints

    from kemi.core.spec import NatSpec

    hints = get_type_hints(NatSpec)
    assert get_args(hints["mode"]) == nat.MODES
    assert get_args(hints["contact"]) == nat.CONTACT_FIXES
