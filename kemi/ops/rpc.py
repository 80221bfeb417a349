"""JSON-RPC to a running Kamailio through the jsonrpcs FIFO (no HTTP, no extra daemon).

jsonrpcs writes each answer into a FIFO named by the request (`reply_name`) inside its
`fifo_reply_dir`; names with a dot are refused, so ours are plain words.
"""

from __future__ import annotations

import itertools
import json
import os
import select
import time
from pathlib import Path
from typing import Any

_seq = itertools.count(1)


class RpcError(RuntimeError):
    pass


class KamailioRpc:
    def __init__(self, fifo: Path, reply_dir: Path, timeout: float = 5.0) -> None:
        self.fifo = fifo
        self.reply_dir = reply_dir
        self.timeout = timeout

    def call(self, method: str, *params: Any) -> Any:
        name = f"kemiha_{os.getpid()}_{next(_seq)}"
        reply_path = self.reply_dir / name
        os.mkfifo(reply_path, 0o600)
        try:
            # Opened before asking, non-blocking, so Kamailio's open for writing never waits.
            rfd = os.open(reply_path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                request = {
                    "jsonrpc": "2.0",
                    "method": method,
                    "params": list(params),
                    "reply_name": name,
                    "id": 1,
                }
                wfd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
                try:
                    os.write(wfd, json.dumps(request).encode() + b"\n")
                finally:
                    os.close(wfd)
                raw = self._read_all(rfd)
            finally:
                os.close(rfd)
        finally:
            reply_path.unlink(missing_ok=True)
        reply = json.loads(raw)
        if "error" in reply:
            raise RpcError(f"{method}: {reply['error'].get('message', reply['error'])}")
        return reply.get("result")

    def _read_all(self, fd: int) -> bytes:
        chunks: list[bytes] = []
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RpcError(f"no answer from Kamailio on {self.fifo} in {self.timeout} s")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            data = os.read(fd, 65536)
            if data:
                chunks.append(data)
            elif chunks:
                return b"".join(chunks)
            else:
                time.sleep(0.005)  # readable with no writer yet: wait for Kamailio
