"""Reliable provisional responses (RFC 3262) against the real stack: the offer and answer a
PRACK carries go through the VIP's rtpengine like any other.

A caller and a callee of our own (UDP, Python) where SIPp would need the INVITE's headers kept
across the PRACK transaction. Runs under conftest's stack_left_clean (no Traceback, 0 dialogs,
0 rtpengine sessions after).
"""

from __future__ import annotations

import json
import re
import socket
import struct
import time
import uuid

import pytest

from kemi.ops.stack import Stack
from tests.integration.conftest import SIP_PORT, UAS_PORT, VIP2
from tests.integration.streamuac import sdp_offer
from tests.integration.udpua import UdpUa, in_dialog, initial_invite, is_reply, is_request, reply

pytestmark = pytest.mark.integration

CALLER_MEDIA, CALLEE_MEDIA = 40100, 40200  # the parties' RTP ports (their SDPs name them)


def media_address(sdp: bytes) -> tuple[str, int]:
    """Where an SDP asks for RTP: its c= address and first m= port."""
    text = sdp.decode()
    address = re.search(r"^c=IN IP4 (\S+)", text, re.M)
    port = re.search(r"^m=audio (\d+) ", text, re.M)
    assert address and port, text
    return address.group(1), int(port.group(1))


def rtp_flows(sender: socket.socket, to: tuple[str, int], receiver: socket.socket) -> bool:
    """A few G.711 packets from `sender` to `to` (the relay): does `receiver` get one?"""
    for seq in range(10):
        header = struct.pack("!BBHII", 0x80, 8, seq, seq * 160, 0x4B454D49)
        sender.sendto(header + b"\xd5" * 160, to)
        time.sleep(0.02)
    try:
        return len(receiver.recv(2048)) > 12
    except TimeoutError:
        return False


def media_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.settimeout(1.0)
    return sock


@pytest.mark.parametrize("sdp_in_200", [False, True], ids=["200-without-sdp", "200-repeats-183"])
def test_late_offer_answered_in_the_prack_goes_through_the_vip_rtpengine(
    stack: Stack, sdp_in_200: bool
) -> None:
    """INVITE without SDP, 183 with 100rel carrying the callee's offer (RFC 3262 5), PRACK
    with the caller's answer: both SDPs reach the other side rewritten by VIP2's rtpengine,
    which learns both parties' media addresses; then 200 (without SDP, or repeating the 183's,
    as some gateways do), ACK: RTP flows both ways through the relay; BYE."""
    call_id = f"prack-{uuid.uuid4().hex[:12]}"
    caller, callee = UdpUa(), UdpUa(UAS_PORT)
    caller_rtp, callee_rtp = media_socket(CALLER_MEDIA), media_socket(CALLEE_MEDIA)
    vip = (VIP2, SIP_PORT)
    caller.send(initial_invite(call_id, caller.port, VIP2, SIP_PORT, "Supported: 100rel\r\n"), vip)
    invite, proxy = callee.recv(is_request("INVITE"))
    offer = sdp_offer("127.0.0.1", CALLEE_MEDIA)
    callee.send(reply(invite, "183 Session Progress", "callee-tag",
                      "Require: 100rel\r\nRSeq: 1\r\n", offer), proxy)  # fmt: skip
    progress, _ = caller.recv(is_reply(183, "INVITE"))
    assert "c=IN IP4 127.0.0.2" in progress.body.decode(), progress.body  # the late offer
    to = progress.one("To")
    answer = sdp_offer("127.0.0.1", CALLER_MEDIA)
    caller.send(in_dialog("PRACK", 2, call_id, to, progress, caller.port, "RAck: 1 1 INVITE\r\n",
                          answer), vip)  # fmt: skip
    prack, _ = callee.recv(is_request("PRACK"))
    relayed = prack.body.decode()
    assert "c=IN IP4 127.0.0.2" in relayed and f"m=audio {CALLER_MEDIA} " not in relayed, relayed
    callee.send(reply(prack, "200 OK", "callee-tag"), proxy)
    caller.recv(is_reply(200, "PRACK"))
    media = json.dumps(stack.ng(stack.policy.vips[1]).query(call_id))
    assert str(CALLER_MEDIA) in media and str(CALLEE_MEDIA) in media, media  # both parties
    callee.send(reply(invite, "200 OK", "callee-tag", body=offer if sdp_in_200 else ""), proxy)
    answered, _ = caller.recv(is_reply(200, "INVITE"))
    caller.send(in_dialog("ACK", 1, call_id, to, answered, caller.port), vip)
    callee.recv(is_request("ACK"))
    relay_for_caller = media_address(answered.body if sdp_in_200 else progress.body)
    assert relay_for_caller[0] == VIP2
    assert rtp_flows(caller_rtp, relay_for_caller, callee_rtp), "caller -> callee"
    assert rtp_flows(callee_rtp, media_address(prack.body), caller_rtp), "callee -> caller"
    caller.send(in_dialog("BYE", 3, call_id, to, answered, caller.port), vip)
    bye, _ = callee.recv(is_request("BYE"))
    callee.send(reply(bye, "200 OK", "callee-tag"), proxy)
    caller.recv(is_reply(200, "BYE"))
    caller_rtp.close()
    callee_rtp.close()
