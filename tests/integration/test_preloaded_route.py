"""An initial INVITE's preloaded Route headers (RFC 3261 8.1.2) are removed: the policy routes
the call. A phone whose outbound proxy is the VIP sends `Route: <sip:VIP;lr>`; left in the
INVITE, the next hop would route it back to the VIP (a loop) or, for a foreign Route, around
the policy (a trunk used as an open relay). The call then works as any other, and its
in-dialog requests follow the Record-Route. Runs under conftest's stack_left_clean.
"""

from __future__ import annotations

import uuid

import pytest

from kemi.ops.stack import Stack
from tests.integration.conftest import SIP_PORT, UAS_PORT, VIP2
from tests.integration.udpua import UdpUa, in_dialog, initial_invite, is_reply, is_request, reply

pytestmark = pytest.mark.integration

PRELOADED = {
    "outbound-proxy": f"Route: <sip:{VIP2}:{SIP_PORT};lr>\r\n",
    # 192.0.2.66 (TEST-NET-1) is never contacted: the policy's destination is the callee
    "foreign": f"Route: <sip:{VIP2}:{SIP_PORT};lr>\r\nRoute: <sip:192.0.2.66;lr>\r\n",
}


@pytest.mark.parametrize("case", sorted(PRELOADED))
def test_preloaded_routes_are_removed_and_the_call_works(stack: Stack, case: str) -> None:
    call_id = f"route-{case}-{uuid.uuid4().hex[:12]}"
    with UdpUa() as caller, UdpUa(UAS_PORT) as callee:
        vip = (VIP2, SIP_PORT)
        caller.send(initial_invite(call_id, caller.port, VIP2, SIP_PORT, PRELOADED[case]), vip)
        invite, proxy = callee.recv(is_request("INVITE"))
        assert invite.all("Route") == [], invite.headers
        assert len(invite.all("Record-Route")) == 1, invite.headers  # ours, from the VIP
        callee.send(reply(invite, "200 OK", "callee-tag"), proxy)
        answered, _ = caller.recv(is_reply(200, "INVITE"))
        to = answered.one("To")
        caller.send(in_dialog("ACK", 1, call_id, to, answered, caller.port), vip)
        callee.recv(is_request("ACK"))
        caller.send(in_dialog("BYE", 2, call_id, to, answered, caller.port), vip)
        bye, _ = callee.recv(is_request("BYE"))
        assert bye.all("Route") == [], bye.headers  # the VIP's Record-Route consumed by the proxy
        callee.send(reply(bye, "200 OK", "callee-tag"), proxy)
        caller.recv(is_reply(200, "BYE"))
