"""Kamailio's RPC from inside a Kamailio process (KSR.jsonrpcs.exec): no FIFO round trip."""

from __future__ import annotations

import json
import logging
from typing import Any

from kemi.core.takeover import rpc_command
from kemi.shell.pv import Pv

log = logging.getLogger("kemi.rpc")

RPC_BODY = "$jsonrpl(body)"
RPC_CODE = "$jsonrpl(code)"


def rpc_list(ksr: Any, pv: Pv, method: str) -> list[Any] | None:
    """The `result` list of an RPC; None (logged) when it fails or answers no list."""
    ksr.jsonrpcs.exec(rpc_command(method))
    if pv.number(RPC_CODE) != 200:
        log.error("%s failed: %s", method, pv.text(RPC_BODY))
        return None
    try:
        body = json.loads(pv.text(RPC_BODY))
    except ValueError:
        log.error("%s answered no JSON", method)
        return None
    result = body.get("result") if isinstance(body, dict) else None
    return result if isinstance(result, list) else None
