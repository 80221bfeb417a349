"""Issue 2, a-f: the single-node call path with real Kamailio, rtpengine, Redis and SIPp."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kemi.ops.stack import Stack
from tests.integration.calls import (
    active_dialogs,
    assert_ok,
    invite_text,
    knows_call,
    next_call_works,
    packets_of,
    rtpengine_sessions,
    send_raw,
    start_uac,
    start_uas,
    wait_for,
)
from tests.integration.conftest import SIP_PORT, VIP1, VIP2

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("vip_index", "vip"), [(0, VIP1), (1, VIP2)], ids=["VIP1", "VIP2"])
def test_call_media_crosses_only_its_vip_rtpengine_and_redis(
    stack: Stack, log_dir: Path, vip_index: int, vip: str
) -> None:
    """a + b + c: call completes; RTP crossed its own VIP's rtpengine; Redis key lifecycle."""
    other = 1 - vip_index
    call_id = f"path-{vip_index}-{time.monotonic_ns()}"
    uas = start_uas(log_dir)
    uac = start_uac(log_dir, vip, call_id, duration_ms=3000)

    wait_for(lambda: knows_call(stack, vip_index, call_id), what="call known to its rtpengine")
    wait_for(lambda: packets_of(stack, vip_index, call_id) >= 50, what="RTP relayed")
    assert not knows_call(stack, other, call_id), "the other VIP's rtpengine saw the call"
    assert stack.redis_client(vip_index + 1).exists(call_id) == 1
    assert stack.redis_client(other + 1).exists(call_id) == 0

    assert_ok(uac)
    assert_ok(uas)
    wait_for(lambda: stack.redis_client(vip_index + 1).exists(call_id) == 0, what="key deleted")
    assert not knows_call(stack, vip_index, call_id)
    assert active_dialogs(stack) == 0


def test_rtpengine_killed_mid_call_restores_from_redis(stack: Stack, log_dir: Path) -> None:
    """d: kill -9 of the VIP1 rtpengine, restart: media resumes, the BYE completes."""
    vip = stack.policy.vips[0]
    call_id = f"restore-{time.monotonic_ns()}"
    uas = start_uas(log_dir)
    uac = start_uac(log_dir, VIP1, call_id, duration_ms=5000)
    wait_for(lambda: packets_of(stack, 0, call_id) >= 40, what="RTP relayed")

    stack.rtpengines[vip.address].kill()
    time.sleep(0.3)
    stack.start_rtpengine(vip)

    assert knows_call(stack, 0, call_id), "the restarted rtpengine did not restore the call"
    before = packets_of(stack, 0, call_id)
    wait_for(
        lambda: packets_of(stack, 0, call_id) >= before + 40,
        what="RTP relayed again after restore",
    )
    assert_ok(uac)
    assert_ok(uas)
    wait_for(lambda: not knows_call(stack, 0, call_id), what="session deleted at BYE")
    assert stack.redis_client(1).exists(call_id) == 0


@pytest.mark.parametrize(
    ("uac_scenario", "uas_scenario"),
    [("uac_cancel.xml", "uas_ring.xml"), ("uac_busy.xml", "uas_busy.xml")],
    ids=["cancel-while-ringing", "486-busy"],
)
def test_unanswered_calls_release_media_and_dialog(
    stack: Stack, log_dir: Path, uac_scenario: str, uas_scenario: str
) -> None:
    """e: CANCEL and 486 leave no rtpengine session and no dialog behind."""
    assert rtpengine_sessions(stack) == 0
    for n in range(3):
        uas = start_uas(log_dir, uas_scenario)
        uac = start_uac(log_dir, VIP1 if n % 2 == 0 else VIP2, f"unanswered-{n}", uac_scenario)
        assert_ok(uac, 30)
        assert_ok(uas, 30)
    wait_for(lambda: rtpengine_sessions(stack) == 0, what="rtpengine sessions back to 0")
    wait_for(lambda: active_dialogs(stack) == 0, what="dialogs back to 0")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"CSeq": "abc INVITE"}, "SIP/2.0 400"),
        ({"Max-Forwards": "0"}, "SIP/2.0 483"),
        ({"Content-Length": "999"}, None),  # truncated body: Kamailio drops it, no answer
    ],
    ids=["bad-cseq", "max-forwards-0", "bad-content-length"],
)
def test_malformed_request_is_refused_and_next_call_works(
    stack: Stack, log_dir: Path, overrides: dict[str, str], expected: str | None
) -> None:
    """f: a malformed request gets a 4xx (or is dropped), and the proxy serves the next call."""
    answer = send_raw(VIP1, SIP_PORT, invite_text(VIP1, **overrides))
    if expected is None:
        assert answer is None or answer.startswith("SIP/2.0 4"), answer
    else:
        assert answer is not None and answer.startswith(expected), answer
    next_call_works(log_dir, VIP1, duration_ms=500)


def test_garbage_datagram_does_not_stop_the_proxy(stack: Stack, log_dir: Path) -> None:
    assert send_raw(VIP2, SIP_PORT, "\x00\xffnot sip at all\r\n\r\n", timeout=0.5) is None
    next_call_works(log_dir, VIP2, duration_ms=500)
