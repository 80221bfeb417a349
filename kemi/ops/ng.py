"""A small client for rtpengine's ng control protocol (bencode over UDP)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

Bencodable = int | str | bytes | list[Any] | dict[str, Any]


def bencode(value: Bencodable) -> bytes:
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted(value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes) -> Any:
    value, end = _decode(data, 0)
    if end != len(data):
        raise ValueError("trailing bytes after bencoded value")
    return value


def _decode(data: bytes, i: int) -> tuple[Any, int]:
    c = data[i : i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    if c == b"l":
        i += 1
        items = []
        while data[i : i + 1] != b"e":
            item, i = _decode(data, i)
            items.append(item)
        return items, i + 1
    if c == b"d":
        i += 1
        out: dict[str, Any] = {}
        while data[i : i + 1] != b"e":
            key, i = _decode(data, i)
            out[key], i = _decode(data, i)
        return out, i + 1
    colon = data.index(b":", i)
    size = int(data[i:colon])
    raw = data[colon + 1 : colon + 1 + size]
    try:
        return raw.decode(), colon + 1 + size
    except UnicodeDecodeError:
        return raw, colon + 1 + size


def rtp_streams(query: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The RTP streams (not RTCP) of an ng `query` reply, over every party and media."""
    for tag in query.get("tags", {}).values():
        for media in tag.get("medias", []):
            for stream in media.get("streams", []):
                if "RTP" in stream.get("flags", []):
                    yield stream


class NgError(RuntimeError):
    pass


class NgClient:
    def __init__(self, host: str, port: int, timeout: float = 1.0) -> None:
        self.address = (host, port)
        self.timeout = timeout

    @classmethod
    def from_socket(cls, spec: str, timeout: float = 1.0) -> NgClient:
        """From Kamailio's notation, e.g. 'udp:127.0.0.1:2223'."""
        proto, host, port = spec.split(":")
        if proto != "udp":
            raise NgError(f"only udp ng sockets are supported, got {spec!r}")
        return cls(host, int(port), timeout)

    def command(self, command: str, **args: Bencodable) -> dict[str, Any]:
        cookie = os.urandom(6).hex()
        payload = cookie.encode() + b" " + bencode({"command": command, **args})
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(self.timeout)
            sock.sendto(payload, self.address)
            while True:
                data, _ = sock.recvfrom(65535)
                got, _, body = data.partition(b" ")
                if got.decode() == cookie:
                    break
        reply = bdecode(body)
        if not isinstance(reply, dict):
            raise NgError(f"unexpected ng reply {reply!r}")
        if reply.get("result") == "error":
            raise NgError(str(reply.get("error-reason", "error")))
        return reply

    def ping(self) -> bool:
        return self.command("ping").get("result") == "pong"

    def list_calls(self) -> list[str]:
        return [str(c) for c in self.command("list").get("calls", [])]

    def query(self, call_id: str) -> dict[str, Any]:
        return self.command("query", **{"call-id": call_id})
