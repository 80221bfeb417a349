"""The dispatcher list in step with the policy in force (a policy reload rewrites it).

The worker that validates a reload calls publish() before the new policy is announced to the
others: the list file is written (atomic rename) with the gateways dispatcher sees down now kept
down (kemi.core.dispatch), then dispatcher reloads it (KSR.dispatcher.ds_reload, shared memory:
once per node). A list dispatcher refuses is put back and the reload refused, so the policy and
the gateways in force always belong together.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kemi.core import dispatch
from kemi.core.policy import Policy

log = logging.getLogger("kemi.gateways")


class GatewayList:
    def __init__(
        self, ksr: Any, path: Path, listing: Callable[[], Mapping[str, Any]] = dict
    ) -> None:
        self.ksr = ksr
        self.path = path
        self.listing = listing  # RPC dispatcher.list of this node

    def publish(self, old: Policy, new: Policy) -> str | None:
        """Make `new`'s gateways the ones dispatcher uses; a reason if it refused them."""
        try:
            down = dispatch.down_uris(dispatch.gateway_states(old, self.listing()))
        except Exception as exc:  # the states are a nicety; the list itself is what matters
            log.warning("gateway states unknown before the reload (%s): every gateway up", exc)
            down = frozenset()
        text = dispatch.dispatcher_list(new.dispatcher_sets, down)
        try:
            previous = self.path.read_text()
        except OSError:
            previous = None
        if previous == text:
            return None
        self._write(text)
        if self.ksr.dispatcher.ds_reload() > 0:
            log.info("dispatcher list reloaded: %d sets", len(new.dispatcher_sets))
            return None
        if previous is not None:
            self._write(previous)
            self.ksr.dispatcher.ds_reload()
        return f"dispatcher refused the gateway list {self.path} (see Kamailio's log)"

    def _write(self, text: str) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        tmp.rename(self.path)
