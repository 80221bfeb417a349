"""Kamailio's route type while SL_REPLY runs.

tm runs its on_sl_reply callback (a reply no transaction matched) without setting the route
type (t_reply.c, 5.6 and 5.8 alike), and with no core reply route the core sets none for a
reply either: what is left is the last request's REQUEST_ROUTE, in which the dialog module
refuses to delete a profile entry (dlg_profile.c), so a takeover's orphan 487 could not free
its channels. SL_REPLY runs as the core reply route it replaces did: CORE_ONREPLY_ROUTE
(core/route.h) written into Kamailio's exported `route_type` for the callback, restored after.
Outside Kamailio (unit tests, the CLI) there is no such symbol and this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager

CORE_ONREPLY_ROUTE = 1 << 7


def kamailio_route_type() -> ctypes.c_int | None:
    """The core's `extern int route_type`, or None when this process is not Kamailio."""
    try:
        return ctypes.c_int.in_dll(ctypes.CDLL(None), "route_type")
    except (OSError, ValueError):
        return None


ROUTE_TYPE = kamailio_route_type()


@contextmanager
def as_core_reply_route() -> Iterator[None]:
    if ROUTE_TYPE is None:
        yield
        return
    before = ROUTE_TYPE.value
    ROUTE_TYPE.value = CORE_ONREPLY_ROUTE
    try:
        yield
    finally:
        ROUTE_TYPE.value = before
