"""Issue 12: hostile and unusual SIP against the real stack (loopback).

Every test here also runs under conftest's stack_left_clean: Kamailio PIDs unchanged, no
Traceback / "exception in" logged, and 0 dialogs, rtpengine sessions and Redis keys after.
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path

import pytest

from kemi.ops.httptoken import authorization
from kemi.ops.stack import Stack
from tests.integration.calls import (
    assert_ok,
    invite_text,
    next_call_works,
    packets_of,
    rtpengine_sessions,
    send_raw,
    start_uac,
    start_uas,
    wait_for,
)
from tests.integration.conftest import SIP_PORT, UAS_PORT, VIP1, VIP2

pytestmark = pytest.mark.integration

SDP_HEAD = "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
AUDIO = "m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"


def log_since(stack: Stack, start: int) -> str:
    with (stack.log_dir / "kamailio.log").open("rb") as log:
        log.seek(start)
        return log.read().decode(errors="replace")


def log_size(stack: Stack) -> int:
    return (stack.log_dir / "kamailio.log").stat().st_size


def with_sdp(invite: str, body: str) -> str:
    head = invite.replace("Content-Length: 0\r\n", "Content-Type: application/sdp\r\n")
    return head.replace("\r\n\r\n", f"\r\nContent-Length: {len(body)}\r\n\r\n", 1) + body


# ----- 2: offers by direction ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("uac_scenario", "uas_scenario"),
    [("uac_offers.xml", "uas_offers.xml"), ("uac.xml", "uas_early_media.xml")],
    ids=["late-offer-reinvite-without-sdp-update", "183-with-sdp-then-200"],
)
def test_every_offer_and_answer_goes_through_the_vip_rtpengine(
    stack: Stack, log_dir: Path, uac_scenario: str, uas_scenario: str
) -> None:
    start = log_size(stack)
    call_id = f"offers-{time.monotonic_ns()}"
    uas = start_uas(log_dir, uas_scenario)
    uac = start_uac(log_dir, VIP2, call_id, uac_scenario, duration_ms=3000)
    wait_for(lambda: packets_of(stack, 1, call_id) >= 50, 10, "RTP relayed by VIP2's rtpengine")
    assert packets_of(stack, 0, call_id) == 0
    assert_ok(uac)
    assert_ok(uas)
    log = log_since(stack, start)
    assert "rtpengine" not in log or " failed" not in log, log[-2000:]


# ----- 1: bytes that are not UTF-8 ---------------------------------------------------------


def test_non_utf8_request_uri_gets_400_without_traceback(stack: Stack, log_dir: Path) -> None:
    for user in (b"1\xff00", b"\xc3\x28", b"\xed\xa0\x80"):
        invite = invite_text(VIP1).encode().replace(b"sip:1000@", b"sip:" + user + b"@", 1)
        answer = send_raw(VIP1, SIP_PORT, invite)
        assert answer is not None and answer.startswith("SIP/2.0 400"), answer
    bad_from = invite_text(VIP1).encode().replace(b"<sip:malformed", b'"\xff\xfe" <sip:bad', 1)
    answer = send_raw(VIP1, SIP_PORT, bad_from, final=True)
    assert answer is None or not answer.startswith("SIP/2.0 5"), answer
    next_call_works(log_dir, VIP1)


# ----- 3, 5: SDP rtpengine must not see ------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        SDP_HEAD,
        "not sdp at all\r\n",
        SDP_HEAD + AUDIO.format(port=40000) * 400,
        SDP_HEAD.replace("IP4 127.0.0.1\r\nt=", "IP4 no.such.address\r\nt=")
        + AUDIO.format(port=40000),
    ],
    ids=["no-m-line", "not-sdp", "400-streams", "bad-c-address"],
)
def test_bad_sdp_gets_488_fast_and_leaves_no_session(
    stack: Stack, log_dir: Path, body: str
) -> None:
    began = time.monotonic()
    answer = send_raw(VIP1, SIP_PORT, with_sdp(invite_text(VIP1), body), final=True)
    assert answer is not None and answer.startswith("SIP/2.0 488"), answer
    assert time.monotonic() - began < 0.5, "a worker was held"
    assert rtpengine_sessions(stack) == 0
    next_call_works(log_dir, VIP1)  # the rtpengine set is still available


# ----- 4: in-dialog requests of no dialog ----------------------------------------------------


@pytest.mark.parametrize("method", ["BYE", "INVITE", "UPDATE", "INFO"])
def test_in_dialog_request_of_no_dialog_gets_481_and_no_media(
    stack: Stack, log_dir: Path, method: str
) -> None:
    text = invite_text(
        VIP1,
        To=f"<sip:1000@{VIP1}>;tag=forged",
        CSeq=f"2 {method}",
    ).replace(f"INVITE sip:1000@{VIP1}:{SIP_PORT}", f"{method} sip:callee@127.0.0.1:{UAS_PORT}")
    text = text.replace("Max-Forwards", f"Route: <sip:{VIP1}:{SIP_PORT};lr>\r\nMax-Forwards")
    if method in ("INVITE", "UPDATE"):
        text = with_sdp(text, SDP_HEAD + AUDIO.format(port=40000))
    answer = send_raw(VIP1, SIP_PORT, text)
    assert answer is not None and answer.startswith("SIP/2.0 481"), answer
    assert rtpengine_sessions(stack) == 0


# ----- 6: stray replies ---------------------------------------------------------------------


@pytest.mark.parametrize("top_via", [f"{VIP1}:{SIP_PORT}", "192.0.2.66:5060"])
def test_stray_reply_is_not_reflected(stack: Stack, top_via: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as victim:
        victim.bind(("127.0.0.1", 0))
        victim.settimeout(1.0)
        call_id = uuid.uuid4().hex
        reply = (
            "SIP/2.0 200 OK\r\n"
            f"Via: SIP/2.0/UDP {top_via};branch=z9hG4bKstray{call_id[:8]}\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{victim.getsockname()[1]};branch=z9hG4bKv\r\n"
            f"From: <sip:a@{VIP1}>;tag=1\r\nTo: <sip:b@{VIP1}>;tag=2\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
        assert send_raw(VIP1, SIP_PORT, reply, timeout=0.2) is None
        with pytest.raises(TimeoutError):
            victim.recv(65535)


# ----- 7: management HTTP -------------------------------------------------------------------


def http_status(
    stack: Stack, method: str, path: bytes, headers: dict[str, str] | None = None
) -> int:
    """One raw HTTP/1.1 request (raw: the path may hold any bytes); the status code."""
    lines = [method.encode() + b" " + path + b" HTTP/1.1", b"Host: kemi-ha"]
    lines += [f"{name}: {value}".encode() for name, value in (headers or {}).items()]
    request = b"\r\n".join([*lines, b"Content-Length: 0", b"Connection: close", b"", b""])
    address = (stack.config.http_address, stack.config.http_port)
    with socket.create_connection(address, timeout=5) as conn:
        conn.sendall(request)
        return int(conn.recv(65535).split(b" ", 2)[1])


def test_management_http_state_changes_need_the_token(stack: Stack) -> None:
    token_file = stack.run_dir / "http-token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert http_status(stack, "POST", b"/policy/reload") == 403
    assert http_status(stack, "POST", b"/policy/reload", {"Authorization": "Bearer nope"}) == 403
    assert http_status(stack, "POST", b"/policy/reload", authorization(stack.run_dir)) == 200
    assert http_status(stack, "GET", b"/metrics") == 200
    assert http_status(stack, "GET", b"/m\xffetrics") == 404


# ----- the rest of each class: RFC 4475 torture messages -------------------------------------

TORTURE = {
    # 3.1.2.4 scalarlg: overlarge scalar fields
    "scalarlg": invite_text(VIP1, CSeq="36893488147419103232 INVITE", Max_Forwards="300"),
    # 3.1.2.6 quotbal: unterminated quoted display name
    "quotbal": invite_text(VIP1, From='"Mr. J. User <sip:j.user@example.com>;tag=93334'),
    # 3.1.2.7 ltgtruri: <> around the Request-URI
    "ltgtruri": invite_text(VIP1)
    .replace("INVITE sip:1000@", "INVITE <sip:1000@", 1)
    .replace(" SIP/2.0\r\n", "> SIP/2.0\r\n", 1),
    # 3.1.2.9 lwsruri: spaces inside the Request-URI
    "lwsruri": invite_text(VIP1).replace("sip:1000@", "sip:10 00@", 1),
    # 3.1.2.11 mismatch01: CSeq method does not match the request's
    "mismatch01": invite_text(VIP1, CSeq="1 OPTIONS"),
    # 3.1.2.2 clerr / 3.1.2.3 ncl: Content-Length larger than the body, negative
    "clerr": invite_text(VIP1, Content_Length="9999"),
    "ncl": invite_text(VIP1, Content_Length="-999"),
    # 3.1.2.16 bext01-like: unknown SIP version
    "badvers": invite_text(VIP1).replace("SIP/2.0\r\n", "SIP/7.0\r\n", 1),
    # 3.3.x insuf: required headers missing (no Call-ID, no From)
    "insuf": "\r\n".join(
        line for line in invite_text(VIP1).split("\r\n") if not line.startswith(("Call-ID", "From"))
    ),
    # NUL and raw bytes in a header value
    "nul": invite_text(VIP1, Subject="a\x00b\xff"),
    # a reply to nothing, sent as if it were a request
    "unknown-method-with-totag": invite_text(VIP1, To=f"<sip:1000@{VIP1}>;tag=x").replace(
        "INVITE sip", "FOO sip", 1
    ),
}


@pytest.mark.parametrize("name", sorted(TORTURE))
def test_torture_message_gets_4xx_or_silence(stack: Stack, log_dir: Path, name: str) -> None:
    payload = TORTURE[name].encode("latin-1", errors="replace")
    answer = send_raw(VIP1, SIP_PORT, payload, timeout=1.0, final=True)
    assert answer is None or answer[8:9] == "4" or answer.startswith("SIP/2.0 505"), answer
    assert rtpengine_sessions(stack) == 0


def test_healthy_after_torture(stack: Stack, log_dir: Path) -> None:
    for payload in TORTURE.values():
        send_raw(VIP2, SIP_PORT, payload.encode("latin-1", errors="replace"), timeout=0.05)
    next_call_works(log_dir, VIP2)


# ----- SDP inside a multipart body (NG112 location, SIP-I ISUP) ----------------------------


def test_multipart_offer_goes_through_the_vip_rtpengine(stack: Stack, log_dir: Path) -> None:
    """The SDP part of a multipart/mixed INVITE is the offer (RFC 5621): rtpengine's module
    rewrites that part; the callee gets the location part untouched (uas_multipart.xml)."""
    call_id = f"multipart-{time.monotonic_ns()}"
    uas = start_uas(log_dir, "uas_multipart.xml")
    uac = start_uac(log_dir, VIP2, call_id, "uac_multipart.xml", duration_ms=3000)
    wait_for(lambda: packets_of(stack, 1, call_id) >= 50, 10, "RTP relayed by VIP2's rtpengine")
    assert packets_of(stack, 0, call_id) == 0
    assert_ok(uac)
    assert_ok(uas)


def test_sdp_where_rtpengine_would_not_find_it_gets_488(stack: Stack, log_dir: Path) -> None:
    """An SDP inside a multipart kind rtpengine's module does not read (here alternative) would
    reach the callee unrewritten, its media past the relay: refused, no session made."""
    body = (f"--b\r\nContent-Type: application/sdp\r\n\r\n{SDP_HEAD}{AUDIO.format(port=40000)}"
            "\r\n--b--\r\n")  # fmt: skip
    invite = with_sdp(invite_text(VIP1), body).replace(
        "Content-Type: application/sdp\r\n", "Content-Type: multipart/alternative;boundary=b\r\n", 1
    )
    answer = send_raw(VIP1, SIP_PORT, invite, final=True)
    assert answer is not None and answer.startswith("SIP/2.0 488"), answer
    assert rtpengine_sessions(stack) == 0
