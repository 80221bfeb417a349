"""Issue 17 part 2 on one node: SIP over UDP, TCP and TLS on every VIP, a transport change
between the legs of a call (two Record-Routes), large SDPs over TCP, and requests of the callee
reaching a caller over its TCP connection.

Callers: SIPp over UDP and TCP (-t t1); over TLS our own (tests/integration/streamuac.py: the
packaged SIPp has no TLS). Callees: SIPp over UDP, and over TCP for routes with
;transport=tcp. The stack is `kemi-ha run`'s, with the policy below.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kemi.ops.stack import Stack
from tests.integration.calls import (
    assert_ok,
    knows_call,
    packets_of,
    start_uac,
    start_uas,
    wait_for,
)
from tests.integration.conftest import (
    NG_PORT,
    SIP_PORT,
    TLS_PORT,
    UAS_PORT,
    VIP1,
    VIP2,
    stack_config,
    two_vip_policy,
)
from tests.integration.streamuac import StreamUac

pytestmark = pytest.mark.integration

UAS_TCP_PORT = UAS_PORT + 100
TCP_SERVICE = "7100"  # routed to the callee over TCP
POLICY = (
    two_vip_policy(NG_PORT, UAS_PORT, "transports-1")
    + f"""\
  - name: tcp-callee
    prefix: "{TCP_SERVICE}"
    destinations: ["sip:127.0.0.1:{UAS_TCP_PORT};transport=tcp"]
"""
)
LARGE_SDP = 3000  # bytes: well past the 1300 a UDP datagram should carry (RFC 3261 18.1.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, require_root: None) -> Iterator[Stack]:
    """The loopback stack of the other modules, with a route to a callee over TCP."""
    with Stack(stack_config(tmp_path_factory.mktemp("run"), POLICY)) as running:
        yield running


def uas(log_dir: Path, transport: str, scenario: str = "uas.xml") -> None:
    if transport == "tcp":
        start_uas(log_dir, scenario, 1, UAS_TCP_PORT, "-t", "t1")
    else:
        start_uas(log_dir, scenario)


@pytest.mark.parametrize(
    ("caller", "callee"),
    [("tcp", "udp"), ("udp", "tcp"), ("tcp", "tcp")],
    ids=["tcp-to-udp", "udp-to-tcp", "tcp-to-tcp"],
)
def test_sipp_call_over_tcp_with_media(
    stack: Stack, log_dir: Path, caller: str, callee: str
) -> None:
    """SIPp call (INVITE/180/200/ACK, 3 s of RTP, BYE from the caller) with a TCP leg; the
    RTP crossed VIP1's rtpengine. A leg change needs both sockets in the Record-Route set:
    the ACK and BYE of the caller reach the callee over the callee's transport."""
    call_id = f"tcp-{caller}-{callee}-{time.monotonic_ns()}"
    uas(log_dir, callee)
    service = TCP_SERVICE if callee == "tcp" else "1000"
    extra = ("-t", "t1") if caller == "tcp" else ()
    uac = start_uac(log_dir, VIP1, call_id, "uac.xml", 3000, *extra, service=service)
    wait_for(lambda: packets_of(stack, 0, call_id) >= 50, what="RTP relayed by VIP1's rtpengine")
    assert not knows_call(stack, 1, call_id)
    assert_ok(uac)


def test_callee_reinvite_and_bye_reach_a_caller_over_its_tcp_connection(
    stack: Stack, log_dir: Path
) -> None:
    """A TCP caller's Contact gets an alias: the callee's re-INVITE and BYE are routed back to
    it through its own connection (it listens on no port a new connection could reach)."""
    call_id = f"tcp-callee-bye-{time.monotonic_ns()}"
    start_uas(log_dir, "uas_reinvite_bye.xml", 1, UAS_PORT, "-d", "2000")
    uac = start_uac(log_dir, VIP2, call_id, "uac_callee_hangs_up.xml", 0, "-t", "t1")
    wait_for(lambda: packets_of(stack, 1, call_id) >= 20, what="RTP relayed by VIP2's rtpengine")
    assert_ok(uac)


@pytest.mark.parametrize(
    ("transport", "callee", "sdp_size"),
    [("tls", "udp", 0), ("tls", "tcp", 0), ("tcp", "tcp", LARGE_SDP), ("tcp", "udp", LARGE_SDP),
     ("tls", "tcp", LARGE_SDP)],
    ids=["tls-to-udp", "tls-to-tcp", "tcp-to-tcp-large-sdp", "tcp-to-udp-large-sdp",
         "tls-to-tcp-large-sdp"],
)  # fmt: skip
def test_stream_caller_call_with_media_both_ways(
    stack: Stack, log_dir: Path, transport: str, callee: str, sdp_size: int
) -> None:
    """A caller over TLS or TCP (SDP up to LARGE_SDP bytes): 200 with the relay's SDP, two
    Record-Routes when the callee's transport differs (one when it is the same), RTP sent to
    the relay comes back from it (the callee echoes), BYE answered 200."""
    uas(log_dir, callee)
    port = TLS_PORT if transport == "tls" else SIP_PORT
    caller = StreamUac("127.0.0.1", (VIP1, port), transport)
    caller.connect()
    try:
        reply = caller.invite(TCP_SERVICE if callee == "tcp" else "1000", sdp_size)
        assert reply.status == 200, reply.first_line
        record_routes = reply.all("Record-Route")
        assert len(record_routes) == (1 if transport == callee else 2), record_routes
        assert caller.relay is not None and caller.relay[0] == VIP1
        echoed = caller.rtp_echoes(50)
        assert echoed >= 25, f"{echoed} of 50 RTP packets came back through the relay"
        assert caller.bye().status == 200
    finally:
        caller.close()
