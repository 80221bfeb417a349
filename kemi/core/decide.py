"""Decisions on plain data, called by the KSR shell (kemi.shell.routes).

Each function answers one question the routing asks, in the order route_* asks it:
- which rtpengine set serves the address a message arrived on (every request, reply, failure
  and branch callback asks again: the choice lasts one message in Kamailio);
- where an initial INVITE goes;
- after a failed branch, whether to fail over and to which destination (RFC 3261 16.7: a
  proxy may try further locations on 408 and 5xx; 6xx and other 4xx are final).
"""

from __future__ import annotations

from kemi.core.policy import Policy, Route, Vip


def vip_for(policy: Policy, local_address: str) -> Vip | None:
    """The VIP a message was received on (or sent from); None if that address is no VIP."""
    return policy.vip_by_address.get(local_address)


def route_for(policy: Policy, ruri_user: str, ruri_domain: str) -> Route:
    """The route of an initial INVITE (the policy issue refines the match)."""
    del ruri_user, ruri_domain
    return policy.default_route


def should_fail_over(status: int) -> bool:
    """RFC 3261 16.7 step 6: 408 and 5xx are worth another location; 6xx ends the search."""
    return status == 408 or 500 <= status <= 599


def next_destination(destinations: tuple[str, ...], tried: int, status: int) -> str | None:
    """The destination after index `tried`, if `status` allows failover and one is left."""
    if not should_fail_over(status):
        return None
    nxt = tried + 1
    return destinations[nxt] if nxt < len(destinations) else None
