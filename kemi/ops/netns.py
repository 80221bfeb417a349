"""Running a node's processes inside a network namespace (what the drill and cluster tests use
to give each node its own addresses; on a real host the namespace is None and nothing changes).
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


@contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the block (sockets it opens) inside namespace `name`; None = where we are."""
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({name}) failed")
        try:
            yield
        finally:
            if _libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back failed")
    finally:
        os.close(own)
        os.close(target)


def netns_exec(name: str | None, argv: Sequence[str]) -> list[str]:
    return list(argv) if name is None else ["ip", "netns", "exec", name, *argv]
