"""kemi.ops.resp against a scripted TCP server on loopback: replies split anywhere, errors,
AUTH/SELECT on connect, a server that closes or never answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from redis.connection import Connection

from kemi.ops.resp import FIRST_READ, RespClient, RespError, command

Handler = Callable[[socket.socket], None]


@pytest.fixture
def server() -> Iterator[Callable[[Handler], int]]:
    """Start a one-connection-at-a-time server running `handler` per connection; its port."""
    listeners: list[socket.socket] = []

    def start(handler: Handler) -> int:
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen()
        listeners.append(lsock)

        def serve() -> None:
            while True:
                try:
                    conn, _ = lsock.accept()
                except OSError:
                    return
                with conn:
                    handler(conn)

        threading.Thread(target=serve, daemon=True).start()
        return int(lsock.getsockname()[1])

    yield start
    for lsock in listeners:
        lsock.close()


def read_command(conn: socket.socket) -> list[bytes]:
    """One RESP array of bulk strings, read byte by byte (a test server, not a parser to keep)."""
    data = b""
    while not data.endswith(b"\r\n"):
        data += conn.recv(1)
    count = int(data[1:-2])
    args = []
    for _ in range(count):
        head = b""
        while not head.endswith(b"\r\n"):
            head += conn.recv(1)
        size = int(head[1:-2])
        body = b""
        while len(body) < size + 2:
            body += conn.recv(size + 2 - len(body))
        args.append(body[:-2])
    return args


def test_command_packs_what_redis_py_sends() -> None:
    args = ("EVALSHA", "f" * 40, "1", "kha:x", "Jürgen", "")
    assert command(*args) == b"".join(Connection().pack_command(*args))


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"+OK\r\n", "OK"),
        (b":42\r\n", 42),
        (b"$-1\r\n", None),
        (b"$0\r\n\r\n", ""),
        (b"$15\r\n1700000000000-0\r\n", "1700000000000-0"),
        (b"*-1\r\n", None),
        (b"*3\r\n$1\r\na\r\n:2\r\n*1\r\n$-1\r\n", ["a", 2, [None]]),
        (b"$7\r\nJ\xc3\xbcrg\r\n\r\n", "Jürg\r\n"),  # a bulk may hold CRLF
    ],
)
def test_every_reply_type_split_byte_by_byte(
    server: Callable[[Handler], int], reply: bytes, expected: object
) -> None:
    def handler(conn: socket.socket) -> None:
        while True:
            try:
                read_command(conn)
            except (OSError, ValueError):
                return
            for i in range(len(reply)):
                conn.sendall(reply[i : i + 1])
                time.sleep(0.001)

    client = RespClient("127.0.0.1", server(handler), timeout=1.0)
    assert client.call(command("PING")) == expected
    assert client.call(command("PING")) == expected  # the buffer is left in step


def test_a_reply_larger_than_the_first_read_sent_whole(server: Callable[[Handler], int]) -> None:
    big = "x" * (FIRST_READ * 3 + 7)

    def handler(conn: socket.socket) -> None:
        for _ in range(2):
            read_command(conn)
            conn.sendall(b"$%d\r\n%s\r\n" % (len(big), big.encode()))

    client = RespClient("127.0.0.1", server(handler), timeout=1.0)
    assert client.call(command("GET", "k")) == big
    assert client.call(command("GET", "k")) == big  # the buffer is left in step


def test_error_reply_raises_and_the_connection_stays_usable(
    server: Callable[[Handler], int],
) -> None:
    connections = []

    def handler(conn: socket.socket) -> None:
        connections.append(conn)
        read_command(conn)
        conn.sendall(b"-NOSCRIPT No matching script.\r\n")
        read_command(conn)
        conn.sendall(b"$3\r\n1-0\r\n")

    client = RespClient("127.0.0.1", server(handler), timeout=1.0)
    with pytest.raises(RespError, match=r"^NOSCRIPT"):
        client.call(command("EVALSHA", "x", "0"))
    assert client.call(command("EVAL", "return 1", "0")) == "1-0"
    assert len(connections) == 1


def test_auth_and_select_on_connect(server: Callable[[Handler], int]) -> None:
    seen: list[list[bytes]] = []

    def handler(conn: socket.socket) -> None:
        for reply in (b"+OK\r\n", b"+OK\r\n", b":1\r\n"):
            seen.append(read_command(conn))
            conn.sendall(reply)

    client = RespClient("127.0.0.1", server(handler), db=3, password="s3cret", timeout=1.0)
    assert client.call(command("EXISTS", "k")) == 1
    assert seen == [[b"AUTH", b"s3cret"], [b"SELECT", b"3"], [b"EXISTS", b"k"]]


def test_refused_auth_raises_and_closes(server: Callable[[Handler], int]) -> None:
    def handler(conn: socket.socket) -> None:
        read_command(conn)
        conn.sendall(b"-WRONGPASS invalid username-password pair\r\n")

    client = RespClient("127.0.0.1", server(handler), password="bad", timeout=1.0)
    with pytest.raises(RespError, match="WRONGPASS"):
        client.call(command("PING"))
    assert client.sock is None


def test_server_closing_raises_oserror_then_reconnects(server: Callable[[Handler], int]) -> None:
    served = []

    def handler(conn: socket.socket) -> None:
        served.append(1)
        read_command(conn)
        if len(served) == 1:
            return  # closed without an answer
        conn.sendall(b"+PONG\r\n")

    client = RespClient("127.0.0.1", server(handler), timeout=1.0)
    with pytest.raises(OSError):
        client.call(command("PING"))
    assert client.sock is None
    assert client.call(command("PING")) == "PONG"


def test_a_server_that_never_answers_costs_the_timeout(server: Callable[[Handler], int]) -> None:
    def handler(conn: socket.socket) -> None:
        read_command(conn)
        time.sleep(1.0)

    client = RespClient("127.0.0.1", server(handler), timeout=0.1)
    start = time.monotonic()
    with pytest.raises(OSError):
        client.call(command("PING"))
    assert time.monotonic() - start < 0.5
    assert client.sock is None


def test_garbage_is_a_protocol_error(server: Callable[[Handler], int]) -> None:
    def handler(conn: socket.socket) -> None:
        read_command(conn)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n")

    client = RespClient("127.0.0.1", server(handler), timeout=1.0)
    with pytest.raises(OSError, match="bad RESP reply"):
        client.call(command("PING"))
    assert client.sock is None


def test_nothing_listening_is_an_oserror() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(OSError):
        RespClient("127.0.0.1", port, timeout=0.2).call(command("PING"))
