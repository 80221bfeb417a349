"""Call records and call hygiene in the KSR shell: CDRs at the end of every call attempt, dead
and overlong calls ended (kemi.core.cdr decides, this applies; docs/cdr.md).

Where each record is written (by the node that ends the call; the store writes a call once):
- INVITE refused after the policy admitted it (channel limit, SDP bounds, media): at once;
- final failure or CANCEL of the INVITE: MANAGE_FAILURE (the dialog context is set there);
  a dead node's INVITE failing after a takeover: TAKEOVER_REPLY's end of the call;
- answered call: `dialog:end`, run where the BYE passes (reason from its From-tag), or where
  the dialog module's own timer ends it. kamailio.cfg's event_route writes it itself (ndb_redis,
  WRITE_ENDED_LUA: no Python per call end) and calls `ksr_dialog_end` (dialog_ended, below)
  only when that did not work: Redis down or disabled, NOSCRIPT, facts the script refuses.
  Kamailio 5.6 runs no event on a replicated copy when another node ends the call
  (dlg_dmq.c), and the store drops a second record of the same call;
- dead or overlong call: the sweep (Kamailio timer process, `ksr_hygiene_timer`), on the node
  that holds the call's VIP, writes the record (media_timeout, max_duration) and ends the
  dialog with `dlg.end_dlg` (BYE both ways, then `dialog:end`, whose record is a duplicate).

The store is handed in (kemi.entry: kemi.ops.cdrstore): `write(cdr)` answers written /
duplicate / spooled / lost and never raises; `drain()` retries the spool from the timer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from kemi.core import cdr
from kemi.core.cdr import CallEnd, Cdr, EndReason, SetupFacts, SetupTemplate, SweepFacts
from kemi.core.decide import Admit, Reject
from kemi.core.policy import Policy
from kemi.core.takeover import DLG_CONFIRMED
from kemi.shell import metrics
from kemi.shell.local_rpc import rpc_list
from kemi.shell.pv import Pv

log = logging.getLogger("kemi.cdr")

DLG_SETUP = "$dlg_var(kha_cdr)"  # SetupFacts of the call (replicated with the dialog)
DLG_ANSWER = "$dlg_var(kha_ta)"  # unix ms of the answer, where the 200 passed
# The dialog timer stays a backstop behind the sweep's maximum duration (no BYE from it on a
# replicated copy: kamailio #4938).
MAX_DURATION_BACKSTOP_S = 60


class CdrWriter(Protocol):
    def write(self, record: Cdr) -> Any: ...  # an enum whose .value is the result label

    def write_ended(self, end: CallEnd) -> Any:
        """An answered call's end (kemi.core.cdr.CallEnd); None: not written, write() decides."""

    def drain(self) -> tuple[int, int]: ...


def ok(rc: Any) -> bool:
    return rc is not None and rc is not False and int(rc) > 0


def leg_tag(entry: Mapping[str, Any], leg: str) -> str:
    side = entry.get(leg) or {}
    return str(side.get("tag", "")) if isinstance(side, dict) else ""


def now_ms() -> int:
    return int(time.time() * 1000)


class CallRecords:
    """One per Kamailio process; the Router calls it at the points listed above."""

    def __init__(
        self,
        ksr: Any,
        node: str,
        writer: CdrWriter,
        policy: Callable[[], Policy],
        vips_held: Callable[[], Callable[[str], bool]] = lambda: lambda address: True,
        media_query: Callable[[str, str], Mapping[str, Any] | None] = lambda s, c: None,
        media_delete: Callable[[str, str], bool] = lambda s, c: False,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self.ksr = ksr
        self.pv = Pv(ksr)
        self.node = node
        self.writer = writer
        self.policy = policy
        self.vips_held = vips_held  # one reading of the local addresses per sweep
        self.media_query = media_query  # (ng socket, Call-ID) -> ng query; None: no answer
        # (ng socket, Call-ID) -> deleted: the BYEs dlg.end_dlg sends pass no route of ours
        self.media_delete = media_delete
        self.clock_ms = clock_ms
        # Every call reads the clock three times in a SIP worker: time.time_ns is C (no Python
        # frame; now_ms is two), a clock handed in (tests) is wrapped.
        self.clock_ns: Callable[[], int] = (
            time.time_ns if clock_ms is now_ms else lambda: clock_ms() * 1_000_000
        )
        self.labels: dict[object, str] = {}  # the writer's results as metric labels
        self.log_info = log.isEnabledFor(logging.INFO)  # kemi.shell.log sets it once, at start

    # ----- writing -------------------------------------------------------------------

    def store(self, record: Cdr) -> None:
        self.count(self.writer.write(record), record.call_id, record.reason, record.code)

    def count(self, result: object, call_id: str, reason: EndReason, code: int) -> None:
        """A write's result in the metrics and the log (every call)."""
        label = self.labels.get(result)
        if label is None:  # once per kind of result and process
            label = self.labels[result] = getattr(result, "value", str(result))
        child = metrics.CDR_WRITES.children.get((label,)) or metrics.CDR_WRITES.labels(label)
        child.view[child.index] += 1  # .inc(), inline (every call)
        if label in ("spooled", "lost"):
            log.error("cdr %s for %s (reason %s): %s", label, call_id, reason.value,
                      getattr(self.writer, "last_error", ""))  # fmt: skip
        elif self.log_info:  # every call: straight to Kamailio's log (issue 18)
            self.ksr.info(f"kemi-ha: cdr {label} reason={reason._value_} code={code}\n")

    def setup_facts(self) -> SetupFacts | None:
        return SetupFacts.decode(self.pv.text(DLG_SETUP))

    def ids(self) -> tuple[str, str]:
        return self.pv.text("$ci"), self.pv.text("$ft")

    # ----- the routes' hooks -----------------------------------------------------------

    def facts_of(self, policy: Policy, decision: Admit, callee: str | None = None) -> SetupFacts:
        """`callee`: $rU@$rd as the route already read (and maybe rewrote) them; None: read."""
        pv = self.pv
        tenant = decision.tenant.name if decision.tenant else ""
        timers = policy.timers_for(tenant or None)
        return SetupFacts(
            caller=f"{pv.text('$fU')}@{pv.text('$fd')}",
            callee=callee if callee is not None else f"{pv.text('$rU')}@{pv.text('$rd')}",
            tenant=tenant,
            trunk=decision.trunk.name if decision.trunk else "",
            vip=decision.vip.address,
            node=self.node,
            invite_ms=self.clock_ms(),
            media_timeout=timers.media_timeout,
            max_duration=timers.max_duration,
        )

    def dialog_planned(self, setup: SetupTemplate, callee: str) -> None:
        """dialog_created for a planned INVITE (kemi.core.plan): the same dialog variable, its
        constant fields encoded once per plan."""
        ksr = self.ksr
        try:
            caller = f"{ksr.pv.get('$fU') or ''}@{ksr.pv.get('$fd') or ''}"
        except UnicodeDecodeError:  # bytes that are not UTF-8: Pv.text's Garbled text
            caller = f"{self.pv.text('$fU')}@{self.pv.text('$fd')}"
        ksr.pv.sets(DLG_SETUP, setup.encode(caller, callee, self.clock_ns() // 1_000_000))
        if setup.max_duration:
            ksr.dialog.dlg_set_timeout(setup.max_duration + MAX_DURATION_BACKSTOP_S)

    def dialog_created(self, policy: Policy, decision: Admit, callee: str | None = None) -> None:
        """After dlg_manage: the facts the node that ends the call needs, and the backstop."""
        facts = self.facts_of(policy, decision, callee)
        self.ksr.pv.sets(DLG_SETUP, facts.encode())
        if facts.max_duration:
            self.ksr.dialog.dlg_set_timeout(facts.max_duration + MAX_DURATION_BACKSTOP_S)

    def refused(
        self, policy: Policy, decision: Admit, reject: Reject, callee: str | None = None
    ) -> None:
        """Refused before any dialog (limit, SDP bounds, media relay): recorded at once."""
        call_id, from_tag = self.ids()
        now = self.clock_ms()
        facts = self.facts_of(policy, decision, callee)
        self.store(cdr.build_cdr(facts, call_id, from_tag, self.node, now,
                                 cdr.reject_reason(reject.why), reject.code))  # fmt: skip

    def failed(self, status: int, cancelled: bool) -> None:
        """The INVITE's final failure (MANAGE_FAILURE, or an orphan's end after a takeover)."""
        facts = self.setup_facts()
        if facts is None:
            return
        call_id, from_tag = self.ids()
        reason = cdr.failure_reason(status, cancelled)
        code = 487 if reason is EndReason.CANCEL else status
        now = self.clock_ms()
        self.store(cdr.build_cdr(facts, call_id, from_tag, self.node, now, reason, code))

    def answered(self) -> None:
        """The 2xx of the call's INVITE passed here (MANAGE_REPLY, once per call): its time."""
        self.ksr.pv.sets(DLG_ANSWER, str(self.clock_ns() // 1_000_000))

    def answered_here(self) -> None:
        """A dead node's call confirmed here on its ACK (TAKEOVER): its 200 passed statelessly,
        so no MANAGE_REPLY kept its time and the copy may have no start_ts: the ACK's stands in."""
        if not self.pv.text(DLG_ANSWER):
            self.ksr.pv.sets(DLG_ANSWER, str(self.clock_ms()))

    def dialog_ended(self) -> None:
        """The record of an answered call that kamailio.cfg could not write itself: the facts'
        JSON goes to the store as the dialog holds it (WRITE_ENDED_LUA decodes it in Redis;
        EVAL loads it again after a NOSCRIPT); facts the script does not take, and a store that
        failed, take the general path (decoded here, spooled)."""
        ksr = self.ksr
        get = ksr.pv.get
        facts = get(DLG_SETUP) or ""  # ours: JSON, ASCII
        if not facts:
            log.warning("dialog ended without call facts: no CDR (set up by an older version?)")
            return
        try:
            call_id = get("$dlg(callid)") or ""
            from_tag = get("$dlg(from_tag)") or ""
            bye_from_tag = (get("$ft") or "") if ksr.is_BYE() else None
        except UnicodeDecodeError:  # bytes that are not UTF-8: Pv.text's Garbled text
            call_id, from_tag = self.pv.text("$dlg(callid)"), self.pv.text("$dlg(from_tag)")
            bye_from_tag = self.pv.text("$ft") if ksr.is_BYE() else None
        if bye_from_tag is None:  # no BYE passed: the dialog module's timer (or an RPC)
            reason = EndReason.DIALOG_TIMEOUT
        elif bye_from_tag == from_tag:  # cdr.bye_reason(), inline
            reason = EndReason.BYE_CALLER
        else:
            reason = EndReason.BYE_CALLEE
        answer_var = get(DLG_ANSWER) or ""  # ms, where the 200 passed: cdr.answer_from_var()
        answer = int(answer_var) if answer_var.isdigit() else 0
        if answer <= 0:  # a replicated copy: the dialog's start second
            answer = cdr.answer_time_ms("", self.pv.number("$dlg(start_ts)"))
        now = self.clock_ns() // 1_000_000
        result = self.writer.write_ended((facts, call_id, from_tag, self.node, answer, now,
                                          reason, 200))  # fmt: skip
        if result is not None:
            self.count(result, call_id, reason, 200)
            return
        decoded = SetupFacts.decode(facts)
        if decoded is None:
            log.warning("dialog ended with call facts that are not ours: no CDR")
            return
        self.store(cdr.build_cdr(decoded, call_id, from_tag, self.node, now, reason, 200,
                                 answer))  # fmt: skip

    def gauges(self) -> list[metrics.Gauge]:
        spooled = getattr(self.writer, "spooled", list)
        gauge = metrics.Gauge("kemi_ha_cdr_spooled", "Call records waiting in this node's "
                              "spool for Redis (not lost; retried every timer tick)")  # fmt: skip
        gauge.samples.append(((), float(len(spooled()))))
        return [gauge]

    # ----- the timer: spool and sweep ----------------------------------------------------

    def tick(self) -> None:
        written, left = self.writer.drain()
        if written:
            log.info("cdr spool: %d records written, %d left", written, left)
        self.sweep()

    def sweep(self) -> int:
        """End the confirmed calls on VIPs held here whose media died or that ran too long."""
        policy = self.policy()
        if not any(t.media_timeout or t.max_duration for t in policy.call_timers.values()):
            return 0
        dialogs = self.dialogs()
        if not dialogs:
            return 0
        is_held = self.vips_held()
        now = self.clock_ms()
        ended = 0
        silent: set[str] = set()  # VIPs whose rtpengine did not answer in this sweep
        for entry in dialogs:
            if int(entry.get("state", 0)) != DLG_CONFIRMED:
                continue
            variables = cdr.dialog_variables(entry)
            facts = SetupFacts.decode(variables.get("kha_cdr", ""))
            if facts is None or not (facts.media_timeout or facts.max_duration):
                continue
            vip = policy.vip_by_address.get(facts.vip)
            if vip is None or not is_held(vip.address):
                continue
            answer = cdr.answer_time_ms(variables.get("kha_ta", ""),
                                        int(entry.get("start_ts", 0) or 0))  # fmt: skip
            last: float | None = 0.0
            media_timeout = facts.media_timeout
            if media_timeout:
                call_id = str(entry.get("call-id", ""))
                query = None if vip.address in silent else self.media_query(vip.rtpengine[0],
                                                                            call_id)  # fmt: skip
                if query is None:  # rtpengine did not answer: no evidence about the media (and
                    silent.add(vip.address)  # no second wait for it in this sweep); the
                    media_timeout = 0  # duration still counts
                else:
                    last = cdr.last_media_s(query)
            verdict = cdr.sweep_verdict(
                SweepFacts(answer, media_timeout, facts.max_duration, last), now
            )
            if verdict is not None and self.end_call(entry, facts, answer, verdict, now):
                ended += 1
                if not self.media_delete(vip.rtpengine[0], str(entry.get("call-id", ""))):
                    log.warning("rtpengine delete failed after ending a call (set %d)", vip.set_id)
        return ended

    def end_call(
        self, entry: Mapping[str, Any], facts: SetupFacts, answer: int, reason: EndReason,
        now: int,
    ) -> bool:  # fmt: skip
        """Record, then BYE the callee, then the caller. Not `dlg.end_dlg`: in Kamailio 5.6.3
        dlg_bye_all() BYEs the caller first and, when its 200 is handled by another process
        before the callee's BYE leaves (loopback: seen), send_bye() refuses the callee's BYE
        (the dialog is already deleted; fixed upstream later with `enforce`). The callee (the
        trunk side, which bills and holds a channel) is sent its BYE first; the caller's BYE
        can still lose that race, then it is logged."""
        call_id = str(entry.get("call-id", ""))
        from_tag, to_tag = leg_tag(entry, "caller"), leg_tag(entry, "callee")
        log.warning("ending call %s: %s", call_id, reason.value)
        self.store(cdr.build_cdr(facts, call_id, from_tag, self.node, now, reason, 200, answer))
        dialog = self.ksr.dialog
        if not ok(dialog.dlg_get(call_id, from_tag, to_tag)):
            metrics.CALLS_ENDED.labels(reason.value, "error").inc()
            log.error("dialog of %s not found to end it", call_id)
            return False
        callee = ok(dialog.dlg_bye("callee"))
        caller = ok(dialog.dlg_bye("caller"))
        metrics.CALLS_ENDED.labels(reason.value, "ok" if callee else "error").inc()
        if not (callee and caller):
            log.error("BYE for %s not sent to%s%s", call_id, "" if callee else " the callee",
                      "" if caller else " the caller")  # fmt: skip
        return callee or caller

    def dialogs(self) -> list[dict[str, Any]]:
        result = rpc_list(self.ksr, self.pv, "dlg.list") or []
        return [d for d in result if isinstance(d, dict)]
