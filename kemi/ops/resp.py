"""A minimal Redis (RESP2) client for the one command a SIP worker sends: the call record write.

redis-py costs a SIP worker ~200 us of CPU per record inside Kamailio (its connection pool,
socket-timeout polls and generic reply parser; measured with per-callback thread CPU, issue 18).
Here a command is one `sendall` and, nearly always, one `recv` on a blocking socket whose send
and receive timeouts are the kernel's (SO_SNDTIMEO/SO_RCVTIMEO: no poll before each call), and a
parser of the five RESP2 reply types. Everything else (reads, the CLI, tests) keeps redis-py.

Failures raise: OSError for the socket (refused, timed out, closed by the server), RespError for
an error reply (its text: NOSCRIPT, WRONGPASS, ...). After an OSError or a protocol error the
connection is closed; the next call connects again (and authenticates, selects its db).
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from kemi.core.cdr import resp_command as command  # one RESP packer, pure (kemi.core)

BUFFER = 65536
FIRST_READ = 4096  # a call record's reply (an entry ID or nil) is tens of bytes
CRLF = b"\r\n"


class RespError(Exception):
    """Redis answered an error reply (the exception's text is the reply's)."""


class ProtocolError(OSError):
    """Bytes that are not a RESP2 reply: the connection is closed."""


class RespClient:
    """One connection (made on first use: after Kamailio's fork); not thread-safe (a Kamailio
    worker is one thread)."""

    def __init__(
        self,
        host: str,
        port: int,
        db: int = 0,
        password: str | None = None,
        timeout: float = 0.1,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self.password = password
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buffer = bytearray()

    def call(self, packed: bytes) -> Any:
        """Send one packed command, return its reply (None for a nil reply)."""
        sock = self.sock or self.connect()
        try:
            sock.sendall(packed)
            if not self.buffer:  # a bulk string or nil received whole (the call record's)
                data = sock.recv(FIRST_READ)
                if data[:1] == b"$" and data[-2:] == CRLF:
                    head = data.find(CRLF)
                    size = int(data[1:head]) if data[1:head].isdigit() else -2
                    if size == -2 and data[1:head] == b"-1" and head + 2 == len(data):
                        return None
                    if size >= 0 and head + 2 + size + 2 == len(data):
                        return data[head + 2 : head + 2 + size].decode(errors="replace")
                if not data:
                    raise ConnectionResetError("Redis closed the connection")
                self.buffer += data
            return self.read_reply(sock)
        except OSError:
            self.close()
            raise

    def connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        try:
            sock.settimeout(None)  # blocking; the kernel enforces the timeouts below
            seconds = int(self.timeout)
            limit = struct.pack("ll", seconds, int((self.timeout - seconds) * 1_000_000))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock, self.buffer = sock, bytearray()
            if self.password:
                self.call(command("AUTH", self.password))
            if self.db:
                self.call(command("SELECT", str(self.db)))
        except BaseException:
            self.close()
            sock.close()
            raise
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, bytearray()

    # ----- replies ---------------------------------------------------------------------

    def read_reply(self, sock: socket.socket) -> Any:
        """One whole reply: an error reply is raised only after it was read whole, so the
        connection stays in step."""
        reply, end = self.parse(sock, 0)
        del self.buffer[:end]
        if isinstance(reply, RespError):
            raise reply
        return reply

    def fill(self, sock: socket.socket) -> None:
        data = sock.recv(BUFFER)
        if not data:
            raise ConnectionResetError("Redis closed the connection")
        self.buffer += data

    def line(self, sock: socket.socket, start: int) -> tuple[bytes, int]:
        while True:
            end = self.buffer.find(CRLF, start)
            if end >= 0:
                return bytes(self.buffer[start:end]), end + 2
            self.fill(sock)

    def parse(self, sock: socket.socket, start: int) -> tuple[Any, int]:
        head, pos = self.line(sock, start)
        kind, rest = head[:1], head[1:]
        try:
            if kind == b"+":
                return rest.decode(), pos
            if kind == b"-":
                return RespError(rest.decode(errors="replace")), pos
            if kind == b":":
                return int(rest), pos
            if kind == b"$":
                size = int(rest)
                if size < 0:
                    return None, pos
                while len(self.buffer) < pos + size + 2:
                    self.fill(sock)
                return bytes(self.buffer[pos : pos + size]).decode(errors="replace"), pos + size + 2
            if kind == b"*":
                count = int(rest)
                if count < 0:
                    return None, pos
                items = []
                for _ in range(count):
                    item, pos = self.parse(sock, pos)
                    items.append(item)
                return items, pos
        except ValueError as exc:
            raise ProtocolError(f"bad RESP reply {head[:40]!r}") from exc
        raise ProtocolError(f"bad RESP reply {head[:40]!r}")
