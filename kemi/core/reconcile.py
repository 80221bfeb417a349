"""Dialogs against media sessions, per VIP: what `kemi-ha status` reports and may clean.

Rules:
- a call's VIP is the one in its dialog's call facts (kemi.core.cdr.SetupFacts); a dialog
  without them (set up by an older version) counts for no VIP;
- an **orphan session** is an rtpengine session of a VIP with no dialog on this node, older
  than `min_age_s` (a session is created at the offer, a moment before the dialog: younger
  ones may be calls being set up). Orphans hold ports and a Redis key and count as calls on the
  rtpengine; `kemi-ha status --remove-orphans` deletes them;
- a **dialog without media** is a confirmed dialog whose VIP's rtpengine does not know the
  call: dead media the sweep ends when its tenant has a media timeout (docs/cdr.md);
- a VIP whose rtpengine did not answer is reported as such, with no verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

ORPHAN_MIN_AGE_S = 60


@dataclass(frozen=True, slots=True)
class VipReconciliation:
    vip: str
    dialogs: int
    sessions: int | None  # None: its rtpengine did not answer
    orphan_sessions: tuple[str, ...]  # Call-IDs
    dialogs_without_media: tuple[str, ...]  # Call-IDs

    @property
    def consistent(self) -> bool:
        return not self.orphan_sessions and not self.dialogs_without_media


def reconcile(
    vip: str,
    dialogs: Mapping[str, bool],  # Call-ID -> confirmed, of the dialogs whose call is on `vip`
    sessions: Mapping[str, float] | None,  # Call-ID -> created (unix s); None: no answer
    now_s: float,
    min_age_s: float = ORPHAN_MIN_AGE_S,
) -> VipReconciliation:
    if sessions is None:
        return VipReconciliation(vip, len(dialogs), None, (), ())
    orphans = tuple(
        sorted(c for c, created in sessions.items() if c not in dialogs
               and now_s - created >= min_age_s)
    )  # fmt: skip
    no_media = tuple(sorted(c for c, confirmed in dialogs.items() if confirmed
                            and c not in sessions))  # fmt: skip
    return VipReconciliation(vip, len(dialogs), len(sessions), orphans, no_media)
