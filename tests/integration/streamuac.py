"""A SIP caller over TCP or TLS (SIPp 3.6.1 as packaged has no TLS), with RTP of its own.

One call: INVITE with an SDP offer (padded to any size), ACK, RTP to the relay and back
(the callee echoes), BYE; in-dialog requests follow the Record-Route set. It behaves like a
phone on a connection: an RFC 5626 CRLF keepalive tells it the connection is gone, and it
then connects again to the same address (after a failover, the node that took the VIP).
"""

from __future__ import annotations

import re
import socket
import ssl
import struct
import time
import uuid
from dataclasses import dataclass, field

from kemi.ops.netns import in_netns


@dataclass
class SipMessage:
    first_line: str
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.first_line.split()[1]) if self.first_line.startswith("SIP/2.0") else 0

    def all(self, name: str) -> list[str]:
        """Every value of a header, comma-separated values split (Record-Route)."""
        out: list[str] = []
        for key, value in self.headers:
            if key.lower() == name.lower():
                out += [v.strip() for v in re.split(r",(?=\s*<)", value)]
        return out

    def one(self, name: str) -> str:
        values = self.all(name)
        return values[0] if values else ""


def parse(data: bytes) -> SipMessage:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode(errors="replace").split("\r\n")
    headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:])]
    return SipMessage(lines[0], headers, body)


def sdp_offer(address: str, port: int, size: int = 0) -> str:
    """An audio offer (PCMA); `size` > 0 pads it with attribute lines to at least that many
    bytes (a large SDP, e.g. many codecs or ICE candidates)."""
    sdp = (
        f"v=0\r\no=caller 1 1 IN IP4 {address}\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=ptime:20\r\n"
    )
    n = 0
    while len(sdp) < size:
        sdp += f"a=x-kemi-ha-padding:{n:04d} {'p' * 60}\r\n"
        n += 1
    return sdp


@dataclass
class StreamUac:
    """A caller at `local_ip` (in `netns`) calling `target` (VIP, port) over tcp or tls."""

    local_ip: str
    target: tuple[str, int]
    transport: str = "tcp"
    netns: str | None = None
    media_port: int = 0
    call_id: str = field(default_factory=lambda: f"stream-{uuid.uuid4().hex[:12]}")
    timeout: float = 10.0

    def __post_init__(self) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.cseq = 1
        self.conn: socket.socket | None = None
        self.buffer = b""
        with in_netns(self.netns):
            self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.rtp.bind((self.local_ip, self.media_port))
        self.rtp.settimeout(0.2)
        self.media_port = self.rtp.getsockname()[1]
        self.to = ""
        self.routes: list[str] = []
        self.remote_target = ""
        self.relay: tuple[str, int] | None = None

    # ----- connection --------------------------------------------------------------------

    def connect(self) -> None:
        with in_netns(self.netns):
            raw = socket.create_connection(self.target, timeout=self.timeout,
                                           source_address=(self.local_ip, 0))  # fmt: skip
        if self.transport == "tls":
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE  # the lab's certificate is self-signed
            raw = context.wrap_socket(raw)
        raw.settimeout(self.timeout)
        self.conn, self.buffer = raw, b""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.rtp.close()

    def alive(self) -> bool:
        """RFC 5626 keepalive: CRLFCRLF, the server answers CRLF; a reset or EOF: gone."""
        assert self.conn is not None
        try:
            self.conn.sendall(b"\r\n\r\n")
            self.conn.settimeout(2.0)
            data = self.conn.recv(2)
        except OSError:
            return False
        finally:
            if self.conn is not None:
                self.conn.settimeout(self.timeout)
        if not data:
            return False
        self.buffer += data.lstrip(b"\r\n")
        return True

    @property
    def local_port(self) -> int:
        assert self.conn is not None
        return int(self.conn.getsockname()[1])

    # ----- messages ----------------------------------------------------------------------

    def send(self, text: str) -> None:
        assert self.conn is not None
        self.conn.sendall(text.encode())

    def receive(self) -> SipMessage:
        assert self.conn is not None
        while True:
            self.buffer = self.buffer.lstrip(b"\r\n")  # keepalive pongs
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end >= 0:
                head = parse(self.buffer[: head_end + 4])
                length = int(head.one("Content-Length") or head.one("l") or 0)
                end = head_end + 4 + length
                if len(self.buffer) >= end:
                    message = parse(self.buffer[:end])
                    self.buffer = self.buffer[end:]
                    return message
            data = self.conn.recv(65535)
            if not data:
                raise ConnectionError("connection closed by the proxy")
            self.buffer += data

    def final(self, method: str) -> SipMessage:
        """The final response to our last request (provisional ones skipped)."""
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            message = self.receive()
            if message.status >= 200 and method in message.one("CSeq"):
                return message
        raise TimeoutError(f"no final response to {method}")

    def request(self, method: str, uri: str, routes: list[str], cseq: int, body: str = "",
                to: str = "") -> str:  # fmt: skip
        proto = self.transport.upper()
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/{proto} {self.local_ip}:{self.local_port};"
            f"branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
            "Max-Forwards: 70",
            f"From: <sip:stream@{self.local_ip}>;tag={self.tag}",
            f"To: {to or f'<{uri}>'}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:stream@{self.local_ip}:{self.local_port};transport={self.transport}>",
            *(f"Route: {r}" for r in routes),
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        text = "\r\n".join(lines) + "\r\n\r\n" + body
        self.send(text)
        return text

    # ----- the call ----------------------------------------------------------------------

    def invite(self, user: str = "1000", sdp_size: int = 0) -> SipMessage:
        """INVITE with an offer; on 200, ACK it and learn the dialog (route set, target)."""
        uri = f"sip:{user}@{self.target[0]}:{self.target[1]}"
        self.request("INVITE", uri, [], 1, sdp_offer(self.local_ip, self.media_port, sdp_size))
        reply = self.final("INVITE")
        if reply.status != 200:
            return reply
        self.to = reply.one("To")
        self.routes = list(reversed(reply.all("Record-Route")))
        contact = reply.one("Contact")
        self.remote_target = contact[contact.index("<") + 1 : contact.index(">")]
        self.relay = relay_address(reply.body.decode(errors="replace"))
        self.request("ACK", self.remote_target, self.routes, 1, to=self.to)
        return reply

    def bye(self) -> SipMessage:
        self.cseq += 1
        self.request("BYE", self.remote_target, self.routes, self.cseq, to=self.to)
        return self.final("BYE")

    def rtp_echoes(self, packets: int = 50) -> int:
        """Send `packets` RTP packets (20 ms apart) to the relay; count those that come back
        from the relay's address (the callee echoes them through it)."""
        assert self.relay is not None
        received = 0
        ssrc = 0x4B454D49
        for seq in range(packets):
            header = struct.pack("!BBHII", 0x80, 8, seq, seq * 160, ssrc)
            self.rtp.sendto(header + b"\xd5" * 160, self.relay)
            deadline = time.monotonic() + 0.02
            while time.monotonic() < deadline:
                try:
                    _data, source = self.rtp.recvfrom(2048)
                except TimeoutError:
                    break
                received += source == self.relay
                self.rtp.settimeout(max(0.001, deadline - time.monotonic()))
            self.rtp.settimeout(0.2)
        return received


def relay_address(sdp: str) -> tuple[str, int]:
    """The (address, port) of the first audio stream of an SDP (the relay's, after rtpengine)."""
    address = re.search(r"^c=IN IP4 (\S+)", sdp, re.M)
    port = re.search(r"^m=audio (\d+)", sdp, re.M)
    if not address or not port:
        raise ValueError(f"no audio stream in SDP: {sdp!r}")
    return address.group(1), int(port.group(1))
