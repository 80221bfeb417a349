"""Ask a DMQ peer for its dialogs and bans again when it comes back (kemi.core.dmq_resync
says when).

Runs in the hygiene timer's process (rtimer, every 2 s): one `dmq.list_nodes` through
KSR.jsonrpcs.exec (in-process, no FIFO round trip), and for each peer due the `dialog` and
`htable` modules' sync requests through KSR.dmq.send_message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kemi.core import dmq_resync
from kemi.core.dmq_resync import ResyncWatch
from kemi.shell import metrics
from kemi.shell.local_rpc import rpc_list
from kemi.shell.pv import Pv

log = logging.getLogger("kemi.dmq")


class DmqResync:
    """One per Kamailio process; only the hygiene timer's process ticks it."""

    def __init__(
        self,
        ksr: Any,
        watch: ResyncWatch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ksr = ksr
        self.pv = Pv(ksr)
        self.watch = watch or ResyncWatch()
        self.clock = clock

    def tick(self) -> None:
        nodes = rpc_list(self.ksr, self.pv, "dmq.list_nodes")
        if nodes is None:  # DMQ's list unreadable: nothing learnt, nothing forgotten
            return
        for peer in self.watch.step(self.clock(), dmq_resync.active_peers(nodes)):
            self.ask(peer)

    def ask(self, peer: str) -> None:
        """Each module's sync request to `peer` (its dialogs, its ban list)."""
        dmq = self.ksr.dmq
        for module, request in dmq_resync.SYNC_REQUESTS:
            rc = dmq.send_message(
                module, dmq_resync.peer_uri(peer), request, dmq_resync.CONTENT_TYPE
            )
            sent = rc is not None and int(rc) > 0
            metrics.DMQ_RESYNCS.labels(module, "sent" if sent else "error").inc()
            if sent:
                log.info("DMQ peer %s became active: its %s state requested", peer, module)
            else:
                log.error("DMQ peer %s became active: %s sync request not sent (rc %s)", peer,
                          module, rc)  # fmt: skip
