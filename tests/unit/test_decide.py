from __future__ import annotations

import pytest

from kemi.core import decide
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
    assert decide.route_for(POLICY, "1000", "example.org").destinations == DESTS
