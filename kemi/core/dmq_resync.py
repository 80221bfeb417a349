"""When to ask a DMQ peer for its dialogs (and its ban list) again.

Kamailio 5.6's dialog module asks its peers for their dialogs once, when DMQ first answers at
start (dlg_dmq.c's init callback; again only if every peer was deleted, which never happens to a
`notification_address`). So:

- a node that comes back from a partition (a cut DMQ link, both nodes up) never learns the
  calls its peers set up meanwhile: their KDMQ updates timed out. It under-counts the channels
  of those calls and, if it later takes over their VIP, answers their BYE or re-INVITE with 481
  ("no known dialog"): a call in progress dropped at the next failover;
- at start, that one request can race the peer's own view of this node (seen once in CI: the
  restarted node never counted the peer's call).

The shell polls DMQ's node list (hygiene timer) and, `delay_s` after a peer becomes active (or
is first seen active), asks that peer for its dialogs (KDMQ `dialog`, `{"action":4}`: the
peer sends every dialog it holds as an update, which is idempotent for dialogs already known
here: same state, same profiles). The htable module's ban list (`kha_ban`) has the same gap
(htable's `dmq_init_sync` asks once, at start): its sync request goes to the same peer at the
same time (`{"action":1}`: the peer sends its replicated tables to this node only). Only pure
decisions live here; kemi.shell.dmq_resync applies them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# (DMQ peer a module registers, its own sync request), in the order they are sent:
# dialog: DLG_DMQ_SYNC (modules/dialog/dlg_dmq.h: NONE, UPDATE, STATE, RM, SYNC);
# htable: HT_DMQ_SYNC (modules/htable/ht_dmq.h: NONE, SYNC, SET_CELL, ...).
SYNC_REQUESTS: tuple[tuple[str, str], ...] = (
    ("dialog", json.dumps({"action": 4}, separators=(",", ":"))),
    ("htable", json.dumps({"action": 1}, separators=(",", ":"))),
)
CONTENT_TYPE = "application/json"  # what both modules send their own messages as
ACTIVE = "active"


def active_peers(nodes: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """`host:port` of every peer DMQ reports active (RPC dmq.list_nodes), this node left out."""
    peers = set()
    for node in nodes:
        if not isinstance(node, Mapping) or str(node.get("local", "0")) not in ("0", "False"):
            continue
        if node.get("status") == ACTIVE and node.get("host") and node.get("port"):
            peers.add(f"{node['host']}:{node['port']}")
    return frozenset(peers)


def peer_uri(peer: str) -> str:
    """The node URI DMQ finds a peer by (dmq.send_message's `to`)."""
    return f"sip:{peer}"


@dataclass
class ResyncWatch:
    """Peers seen active at the last poll, and when each newly active one is to be asked."""

    delay_s: float = 3.0
    active: frozenset[str] = frozenset()
    due: dict[str, float] = field(default_factory=dict)

    def step(self, now: float, active: frozenset[str]) -> list[str]:
        """The peers to ask for their dialogs now (sorted); remembers what it saw."""
        for peer in active - self.active:  # back from a partition, or first seen at start
            self.due[peer] = now + self.delay_s
        for peer in list(self.due):
            if peer not in active:  # gone again before its turn: asked when it is back
                del self.due[peer]
        self.active = active
        ask = sorted(peer for peer, when in self.due.items() if when <= now)
        for peer in ask:
            del self.due[peer]
        return ask
