"""SIP endpoints of our own over UDP (Python), where SIPp would need a request's headers kept
across transactions or checked for absence: a caller and a callee on 127.0.0.1."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable

from tests.integration.conftest import UAS_PORT
from tests.integration.streamuac import SipMessage, parse


class UdpUa:
    """One SIP endpoint on 127.0.0.1 over UDP (`port` 0: any)."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(5.0)
        self.port = self.sock.getsockname()[1]

    def __enter__(self) -> UdpUa:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()  # also when the test failed: the next one binds the same port

    def send(self, text: str, to: tuple[str, int]) -> None:
        self.sock.sendto(text.encode(), to)

    def recv(self, wanted: Callable[[SipMessage], bool]) -> tuple[SipMessage, tuple[str, int]]:
        """The next message `wanted` accepts (others, e.g. 100 Trying, skipped)."""
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            data, peer = self.sock.recvfrom(65535)
            message = parse(data)
            if wanted(message):
                return message, peer
        raise AssertionError("no such message within 5 s")


def is_request(method: str) -> Callable[[SipMessage], bool]:
    return lambda m: m.first_line.startswith(f"{method} ")


def is_reply(status: int, method: str) -> Callable[[SipMessage], bool]:
    return lambda m: m.status == status and m.one("CSeq").endswith(f" {method}")


def with_body(head: str, body: str = "") -> str:
    kind = "Content-Type: application/sdp\r\n" if body else ""
    return f"{head}{kind}Content-Length: {len(body)}\r\n\r\n{body}"


def reply(request: SipMessage, status: str, to_tag: str, extra: str = "", body: str = "") -> str:
    """The callee's reply: the request's Vias, From, Call-ID, CSeq and Record-Route."""
    lines = [f"SIP/2.0 {status}"]
    for name, value in request.headers:
        if name.lower() in ("via", "from", "call-id", "cseq", "record-route"):
            lines.append(f"{name}: {value}")
    to = request.one("To")
    lines.append(f"To: {to}" if ";tag=" in to else f"To: {to};tag={to_tag}")
    lines.append(f"Contact: <sip:callee@127.0.0.1:{UAS_PORT}>")
    return with_body("\r\n".join(lines) + "\r\n" + extra, body)


def initial_invite(call_id: str, port: int, vip: str, sip_port: int, extra: str = "") -> str:
    """The caller's INVITE to 1000 via `vip` (no SDP); `extra` header lines after Max-Forwards."""
    return with_body(
        f"INVITE sip:1000@{vip}:{sip_port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{call_id};rport\r\n"
        f"Max-Forwards: 70\r\n{extra}From: <sip:caller@127.0.0.1>;tag=caller-tag\r\n"
        f"To: <sip:1000@{vip}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n"
        f"Contact: <sip:caller@127.0.0.1:{port}>\r\n"
    )


def in_dialog(method: str, cseq: int, call_id: str, to: str, routed_by: SipMessage, port: int,
              extra: str = "", body: str = "") -> str:  # fmt: skip
    """A request of the caller in the dialog `routed_by` (a reply) set up: its Record-Route
    reversed as Route, its Contact as the Request-URI."""
    target = routed_by.one("Contact").strip("<>")
    routes = "".join(f"Route: {r}\r\n" for r in reversed(routed_by.all("Record-Route")))
    head = (
        f"{method} {target} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{uuid.uuid4().hex[:12]};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:caller@127.0.0.1>;tag=caller-tag\r\nTo: {to}\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{routes}"
        f"Contact: <sip:caller@127.0.0.1:{port}>\r\n{extra}"
    )
    return with_body(head, body)
