"""The KSR shell: Kamailio's default routing, in Python, reading PVs and applying decisions.

Route order follows Kamailio's etc/kamailio.cfg so it reads at a glance:

    request_route: (KDMQ first) -> FLOODS (bans, scanners, rate per source: kemi.core.floods)
                   -> REQINIT -> NATDETECT (force_rport) -> CANCEL
                   -> WITHINDLG (known dialogs only, else 481; NATMANAGE, DLGURI)
                   -> (ACK absorbed) -> OPTIONS to us
                   -> INVITE (limits, DISPATCH to a gateway set, REWRITE numbers, SDP
                      bounds, NATMANAGE, rtpengine offer, dialog, record-route)
                   -> RELAY (from the VIP it came in on, with the next hop's transport)
    reply_route: a reply with a transaction: nothing (MANAGE_REPLY does the rest); one
                 without passes only for a known dialog (else dropped);
                 those (a dead node's transactions, after a takeover) go to TAKEOVER_REPLY:
                 rtpengine answer/offer on the VIP's set, or the end of the call, then the
                 core forwards them by Via (kemi.core.takeover)
    onreply (MANAGE_REPLY): NATMANAGE of the replying party, SDP of 1xx/2xx -> rtpengine
                            answer, or offer when the request had none (late offer: the
                            answer then comes in the ACK)
    branch (MANAGE_BRANCH, dispatched INVITEs only): the branch's gateway kept in the dialog
    failure (MANAGE_FAILURE): failover (next destination, or next gateway of the set, then of
                              the next priority) or rtpengine delete

Every PV is read through kemi.shell.pv (any bytes; not UTF-8 -> Garbled, refused 400 where the
grammar allows no such bytes); every SDP goes through kemi.core.sdp before rtpengine (488).

NAT traversal and TCP/TLS connection reuse follow kemi.core.nat (the call's tenant chooses
the NAT handling, kept in the dialog); a call whose legs use different transports gets rr's
double Record-Route, and in-dialog requests leave from the socket loose_route() chose.

The rtpengine set is chosen from the VIP the message arrived on, right before each rtpengine
command: Kamailio keeps that choice for one message only. Each ksr_* entry is guarded: an
exception is logged with the Call-ID and answered 500 (requests) or dropped (replies).

Hot path (issue 18, bench/routes_bench.py): each PV is read once per message and passed down
($rm once instead of one is_*() per test, $si, $Ri); a callback that has nothing to do for a
message does nothing (no branch route for fixed destinations, nothing in reply_route for a
reply with a transaction, the policy looked at in MANAGE_REPLY only for a reply with SDP);
nothing is written that reads back as its default (media flags equal to the VIP's, failover
index 0); KSR ints are compared with `> 0` in place where hot. Inside Kamailio each Python
frame costs a cold worker ~1.5-2 us (docs/performance.md), so the hottest paths are written
flat: an initial INVITE applies its plan (kemi.core.plan: computed once per VIP, source and
R-URI for the policy), the request route's body is ksr_request_route's, the guard of the
request, reply and dialog event entries is their own try/except, counters are incremented on
their cached slot, and PVs that Kamailio formats ($Ri, $si, $pr, $fs) or that these routes
wrote are read with KSR.pv.get directly (wire PVs fall back to Pv.text on bytes that are not
UTF-8).
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import logging
import time
import traceback
from bisect import bisect_left
from collections.abc import Callable, Mapping
from time import perf_counter
from typing import Any, Literal

from kemi.core import decide, dispatch, floods, nat, takeover
from kemi.core.body import sdp_in_body
from kemi.core.decide import Admit, InviteFacts, Reject
from kemi.core.nat import Nat
from kemi.core.numbers import header_action, rewrite_header
from kemi.core.plan import PlanCache, plan_invite
from kemi.core.policy import FloodGuard, GatewaySet, Policy, Vip
from kemi.core.sdp import sdp_refusal
from kemi.shell import local_rpc, metrics
from kemi.shell.dmq_resync import DmqResync
from kemi.shell.hygiene import CallRecords
from kemi.shell.policy_holder import GEN_SHV, PolicyHolder
from kemi.shell.procmetrics import CounterChild
from kemi.shell.pv import Garbled, Pv
from kemi.shell.route_type import as_core_reply_route

log = logging.getLogger("kemi.routes")
ROUTE_SECONDS = metrics.REQUEST_ROUTE_SECONDS

# KEMI callback names given to t_on_* (and SL_REPLY to tm's on_sl_reply in kamailio.cfg):
# methods of Router, checked by a unit test.
SL_REPLY = "ksr_sl_reply"
MANAGE_REPLY = "ksr_onreply_manage"
MANAGE_BRANCH = "ksr_branch_manage"
MANAGE_FAILURE = "ksr_failure_manage"
DIALOG_END = "ksr_dialog_end"  # kamailio.cfg: event_route[dialog:end] runs it (python_exec)

# Transaction-persistent AVPs carrying the failover state of an initial INVITE.
AVP_DESTINATIONS = "$avp(kha_dsts)"
AVP_TRIED = "$avp(kha_tried)"
AVP_MEDIA_FLAGS = "$avp(kha_mflags)"  # for MANAGE_REPLY of this transaction
AVP_VIP = "$avp(kha_vip)"  # set on initial INVITEs only, removed once their result is counted
AVP_LATE = "$avp(kha_late)"  # the INVITE of this transaction had no SDP: the reply offers
AVP_GATEWAYS = "$avp(kha_gws)"  # the gateway set of this INVITE (dispatcher failover)
AVP_LEVEL = "$avp(kha_level)"  # index of the priority (dispatcher set) being tried
IDENTITY_HEADERS: tuple[tuple[Literal["pai", "diversion"], str], ...] = (
    ("pai", "P-Asserted-Identity"),
    ("diversion", "Diversion"),
)
PV_PROFILE_SIZE = "$var(kha_n)"
PROFILE_GLOBAL, PROFILE_TENANT, PROFILE_TRUNK = "kha_global", "kha_tenant", "kha_trunk"
INDIALOG_METHODS = frozenset({"ACK", "BYE", "INVITE", "UPDATE", "INFO", "PRACK", "NOTIFY", "REFER"})
DLG_MEDIA_FLAGS = "$dlg_var(kha_mflags)"  # for re-INVITEs/UPDATEs of the dialog
DLG_LATE = "$dlg_var(kha_late)"  # "1": the initial INVITE had no SDP (for an orphan 2xx)
DLG_PROFILES = "$dlg_var(kha_prof)"  # valued profiles of the call (to free an orphan's channels)
DLG_STATE = "$dlg(state)"
DLG_NAT = "$dlg_var(kha_nat)"  # the call's NAT handling (Nat.encoded); unset: off
DLG_NAT_FLAGS = "$dlg_var(kha_nmflags)"  # media flags for a sender behind NAT
AVP_NAT = "$avp(kha_nat)"  # the same two for MANAGE_REPLY of this transaction
AVP_NAT_FLAGS = "$avp(kha_nmflags)"
NAT_PVS = (DLG_NAT, AVP_NAT, DLG_NAT_FLAGS, AVP_NAT_FLAGS)  # in the order route_invite sets them
DLG_GATEWAY = "$dlg_var(kha_dst)"  # the gateway a dispatched INVITE's branch went to
MISSING = object()
SEND_SOCKETS_MAX = 4096  # (VIP, next hop) -> listen socket text: next hops seen lately
EXEMPT_CACHE_MAX = 4096  # sources whose flood exemption is kept
# $rm as Kamailio's method tests see it: it parses the name without case (parse_method_name)
METHODS = {m: m for m in ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "INFO", "PRACK",
                          "NOTIFY", "REFER", "KDMQ", "REGISTER", "SUBSCRIBE", "MESSAGE",
                          "PUBLISH")}  # fmt: skip

MAX_FORWARDS = 10
SANITY_MFLAGS = 17895  # Kamailio's default: URI, required headers, CSeq, Content-Length...
SANITY_UFLAGS = 7
SDP = "application/sdp"
AUTHORIZATION = "$hdr(Authorization)"  # management HTTP: "Bearer <token>" for state changes
JSON = "application/json"
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def request_method(text: str) -> str:
    """A request's method ($rm) as Kamailio's is_INVITE() and friends compare it: known names
    without case (ASCII only); read once per request instead of one KSR call per test."""
    known = METHODS.get(text)
    if known is not None:
        return known
    return text.upper() if text.isascii() else text


def rtp_set_label(set_id: int) -> str:
    """The `set` label of the rtpengine counters: the set's id, "none" without a VIP (-1)."""
    return str(set_id) if set_id >= 0 else "none"


def ok(rc: Any) -> bool:
    """KEMI functions return ints: > 0 is success, 0 stops, < 0 is failure."""
    return rc is not None and rc is not False and int(rc) > 0


def guarded(kind: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Never let an exception escape a route silently: log it, answer 500 or drop the reply."""

    def wrap(func: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(func)
        def entry(self: Router, *args: Any) -> int:
            try:
                return func(self, *args)
            except Exception as exc:
                self.on_exception(kind, exc)
                return 1

        return entry

    return wrap


class Router:
    """The object app_python3 calls (mod_init() returns it); one per Kamailio process."""

    def __init__(
        self,
        ksr: Any,
        policies: PolicyHolder,
        node_address: str = "127.0.0.1",
        dmq: bool = True,
        dmq_nodes: Callable[[], list[dict[str, Any]]] = list,
        rtpengine_alive: Callable[[str], bool] = lambda socket_spec: False,
        http_token: str = "",
        ban_dump: Callable[[], list[dict[str, Any]]] = list,
        ports: dict[str, int] | None = None,
        gateway_listing: Callable[[], Mapping[str, Any]] = dict,
        calls: CallRecords | None = None,
        resync: DmqResync | None = None,
    ) -> None:
        self.ksr = ksr
        # SIP port per transport on every VIP: RELAY picks the socket of the next hop's one.
        self.ports = ports if ports is not None else nat.listen_ports(5060, 5061)
        self.pv = Pv(ksr)
        # PVs that hold only what Kamailio formats ($Ri, $si, $pr, $fs) or what this module
        # wrote (our AVPs and dialog variables) are read without Pv.text's guard against bytes
        # that are not UTF-8: a frame less per read on the hot path (issue 18).
        self.get = ksr.pv.get
        # Without a token no state-changing HTTP request is accepted at all.
        self.http_authorization = f"Bearer {http_token}".encode() if http_token else b""
        self.node_address = node_address
        # This Kamailio's start (mod_init, before the fork): a call set up before it has no
        # transaction here, even when this node set it up (a restart after a crash).
        self.started_ms = int(time.time() * 1000)
        self.dmq = dmq
        self.dmq_nodes = dmq_nodes  # what DMQ knows of its peers (RPC dmq.list_nodes)
        self.rtpengine_alive = rtpengine_alive  # ng ping of one socket, for the scrape only
        self.ban_dump = ban_dump  # kha_ban as RPC htable.dump answers it, for the scrape only
        self.gateway_listing = gateway_listing  # RPC dispatcher.list, for the scrape only
        self.policies = policies
        self._policy = policies.current
        self.calls = calls  # CDRs, dead and overlong calls (kemi.shell.hygiene); None: off
        self.resync = resync  # dialogs and bans asked again from a DMQ peer back (None: no DMQ)
        self.send_sockets: dict[tuple[str, str], str | None] = {}  # (VIP, next hop) -> socket
        self.plans = PlanCache()  # initial INVITEs' plans (kemi.core.plan), per policy
        self.exempt: dict[str, bool] = {}  # flood exemption per source, for self.exempt_policy
        self.exempt_policy: Policy | None = None
        # The hot counters' children in this process, by the key the routes have at hand: a
        # dict of the router's and a str or a small tuple, not the module's counter, its
        # label tuple and its hash (~5 us less per event from cold caches: docs/performance.md).
        self.indialog_counts: dict[str, CounterChild] = {}  # by method label
        self.rtp_counts: dict[tuple[int, str], CounterChild] = {}  # by (set id, command)
        self.invite_counts: dict[tuple[str, int], CounterChild] = {}  # by (VIP, status // 100)

    def child_init(self, rank: int) -> int:
        metrics.after_fork()  # this process counts into its own metrics file
        for counts in (self.indialog_counts, self.rtp_counts, self.invite_counts):
            counts.clear()  # children of the parent's file
        return 0

    # ----- request_route -------------------------------------------------------------

    def ksr_request_route(self, msg: Any) -> int:
        """request_route; its time goes to the route-time histogram (guarded() inline: an
        exception is logged and answered 500, without a wrapper frame per request)."""
        start = perf_counter()
        try:
            ksr = self.ksr
            holder = self.policies  # holder.current(), inline: one read of the generation
            generation = ksr.pvx.shv_get(GEN_SHV)
            if generation != holder.generation:
                holder.current()
            policy = holder.policy
            try:
                method = self.get("$rm")
            except UnicodeDecodeError:  # not UTF-8: Pv.text's Garbled text
                method = self.pv.text("$rm")
            method = METHODS.get(method) or request_method(method or "")
            if method == "KDMQ":
                self.route_kdmq(policy)
                return 1
            source = ""
            if policy.floods.enabled:
                source = self.get("$si")
                if policy is not self.exempt_policy:
                    self.exempt_policy, self.exempt = policy, {}
                exempt = self.exempt.get(source)
                if exempt is None:
                    exempt = self.remember_exempt(policy.floods, source)
                if not exempt and not self.route_floods(policy.floods, source):
                    return 1
            # REQINIT
            if not ksr.maxfwd.process_maxfwd(MAX_FORWARDS) > 0:
                ksr.sl.sl_send_reply(483, "Too Many Hops")
                return 1
            if not ksr.sanity.sanity_check(SANITY_MFLAGS, SANITY_UFLAGS) > 0:
                log.warning("malformed request from %s:%s dropped", self.pv.text("$si"),
                            self.pv.text("$sp"))  # fmt: skip
                return 1
            ksr.force_rport()  # NATDETECT: replies go where the request came from (RFC 3581)
            if method == "CANCEL":
                self.route_cancel(policy)
                return 1
            if ksr.siputils.has_totag() > 0:
                self.route_withindlg(policy, method)
                return 1
            if method == "ACK":
                # An ACK with no To-tag belongs to a negative reply tm already absorbed.
                if ksr.tm.t_check_trans() > 0:
                    self.route_relay(self.get("$Ri"))
                return 1
            if method == "OPTIONS" and ksr.is_myself_ruri():
                ksr.sl.sl_send_reply(200, "OK")
                return 1
            if method != "INVITE":
                ksr.sl.sl_send_reply(405, "Method Not Allowed")
                return 1
            if ksr.tmx.t_precheck_trans() > 0:
                ksr.tm.t_check_trans()  # a retransmission: tm resends the last reply
                return 1
            self.route_invite(policy, source)
            return 1
        except Exception as exc:
            self.on_exception("request", exc)
        finally:
            seconds = perf_counter() - start
            histogram = ROUTE_SECONDS  # its observe(), inline once the process's file is open
            view = histogram.view
            if view is None:
                histogram.observe(seconds)
            else:
                view[histogram.slots[bisect_left(histogram.bounds, seconds)]] += 1
                view[histogram.sum_slot] += seconds
        return 1

    def remember_exempt(self, guard: FloodGuard, source: str) -> bool:
        """Is `source` exempt from the flood checks (kept per source for this policy)."""
        exempt = floods.is_exempt(guard, source)
        if len(self.exempt) >= EXEMPT_CACHE_MAX:
            self.exempt = {}
        self.exempt[source] = exempt
        return exempt

    def route_kdmq(self, policy: Policy) -> None:
        """KDMQ first: only configured peers may touch replicated dialog state; others get 403."""
        ksr = self.ksr
        source = self.pv.text("$si")
        if not self.dmq:
            why = "this node runs without DMQ peers"
        elif not decide.kdmq_accepted(
            policy, source, self.node_address, self.pv.text("$rU"),
            ok(ksr.dmq.is_from_node()),
        ):  # fmt: skip
            why = "not a configured DMQ peer"
        else:
            metrics.KDMQ.labels("accepted").inc()
            ksr.dmq.handle_message()
            return
        log.warning("KDMQ from %s refused: %s", source, why)
        metrics.KDMQ.labels("refused").inc()
        ksr.sl.sl_send_reply(403, "Forbidden")

    def route_floods(self, guard: FloodGuard, source: str) -> bool:
        """FLOODS for a source that is not exempt: a banned source, a scanner or a source over
        its rate is dropped without an answer (kemi.core.floods gives the order). A ban is set
        in kha_ban, which DMQ replicates: every node drops the source from then on."""
        ksr = self.ksr
        now = time.time()
        if floods.ban_active(ksr.htable.sht_get(floods.BAN_TABLE, source), now):
            metrics.FLOOD_DROPS.labels("banned").inc()
            return False
        if guard.scanner_ua is not None and floods.is_scanner(guard, self.pv.text("$ua")):
            metrics.FLOOD_DROPS.labels("scanner").inc()
            if guard.ban_scanners:
                self.ban(source, floods.ban_end(now, guard.ban_s), guard.ban_s, "scanner")
            return False
        count = ksr.htable.sht_inc(
            floods.RATE_TABLE, floods.window_key(source, now, guard.window_s)
        )
        if not floods.over_rate(guard, int(count)):
            return True
        metrics.FLOOD_DROPS.labels("rate").inc()
        if floods.bans_now(guard, int(count)):
            self.ban(source, floods.ban_end(now, guard.ban_s), guard.ban_s, "flood")
        return False

    def ban(self, source: str, until: int, seconds: int, reason: str) -> None:
        """One ban, replicated by htable over DMQ (the value is its end, epoch seconds)."""
        rc = self.ksr.htable.sht_setxi(floods.BAN_TABLE, source, until, seconds)
        if rc is not None and int(rc) >= 0:  # 5.6.3 answers 0 when it set the item (measured)
            metrics.BANS.labels(reason).inc()
            log.warning("source %s banned for %d s: %s", source, seconds, reason)
        else:
            log.error("could not ban source %s (%s): rc %s", source, reason, rc)

    def route_cancel(self, policy: Policy) -> None:
        """CANCEL: relayed statefully to the branches of its INVITE; failure route cleans up
        (the media too: nothing in the CANCEL's own route talks to rtpengine).

        No INVITE transaction but a known (early) dialog: the INVITE went through a node that
        died; forwarded statelessly to the callee, whose 487 ends the call (TAKEOVER_REPLY)."""
        ksr = self.ksr
        if ksr.tm.t_check_trans() > 0:
            self.route_relay(self.pv.text("$Ri"))
        elif ok(ksr.dialog.is_known_dlg()):
            self.forward_orphan(policy, "CANCEL")
        # Otherwise there is nothing to cancel.

    def route_withindlg(self, policy: Policy, method: str) -> None:
        """WITHINDLG: follow Record-Route; keep the media session in step with the dialog."""
        ksr = self.ksr
        if method == "BYE" and self.dmq:
            self.confirm_early_copy()  # before loose_route(): the dialog module ends it there
        if not ksr.rr.loose_route() > 0:
            if method == "ACK":
                if ksr.tm.t_check_trans() > 0:
                    self.route_relay(self.pv.text("$Ri"))
                else:
                    # the ACK of a negative reply whose INVITE transaction died with its node
                    self.forward_orphan(policy, method)
                return
            ksr.sl.sl_send_reply(404, "Not here")
            return
        if not ksr.dialog.is_known_dlg() > 0:
            # A To-tag and our Route, but no such dialog (here or replicated over DMQ): no
            # media session and no relay for it (RFC 3261 12.2.2). An ACK gets no answer, nor
            # anything in the first seconds after a restart, while the peers' dialogs come.
            now_ms = int(time.time() * 1000)
            if not takeover.unknown_dialog_answer(self.dmq, now_ms, self.started_ms):
                log.info("in-dialog %s for a dialog not known yet (restarted %d ms ago): "
                         "dropped, its retransmission may find it", method,
                         now_ms - self.started_ms)  # fmt: skip
                return
            log.info("in-dialog %s for no known dialog refused", method)
            if method != "ACK":
                ksr.sl.sl_send_reply(481, "Call/Transaction Does Not Exist")
            return
        label = method if method in INDIALOG_METHODS else "other"
        child = self.indialog_counts.get(label)
        if child is None:
            child = self.indialog_counts[label] = metrics.INDIALOG.labels(label)
        child.view[child.index] += 1.0  # .inc(), inline
        # Only a DMQ copy can still be early at its ACK (the 2xx passed another node).
        if method == "ACK" and self.dmq and takeover.ack_confirms(self.pv.number(DLG_STATE)):
            self.confirm_dialog()
        call_nat = nat.BY_ENCODED.get(self.get(DLG_NAT), nat.NAT_OFF)
        nated = self.route_natmanage(call_nat, nat.REQUEST_TESTS)
        local = self.get("$Ri")
        vip = policy.vip_by_address.get(local)
        if method == "BYE":
            self.rtp_command(vip, "delete", ksr.rtpengine.rtpengine_delete0)
        elif method == "INVITE" or method == "UPDATE" or method == "PRACK":
            sdp = self.message_sdp() if ksr.textops.has_body() > 0 else None
            if sdp is not None:
                refused = sdp_refusal(sdp, policy.sdp_limits)
                if refused is not None:
                    log.info("in-dialog %s refused: %s", method, refused.why)
                    ksr.sl.sl_send_reply(refused.code, refused.reason)
                    return
            if sdp is not None and method == "PRACK" and self.get(DLG_LATE) == "1":
                # RFC 3262 5: a late offer's first reliable 1xx carried the offer (MANAGE_REPLY
                # sent it as one), its PRACK the answer; any other PRACK's SDP is an offer.
                if vip is not None:
                    self.rtp_command(vip, "answer", ksr.rtpengine.rtpengine_answer,
                                     self.dialog_media_flags(vip, nated))  # fmt: skip
            elif sdp is not None:
                self.keep_nat_for_replies(call_nat)
                ksr.pv.sets(AVP_MEDIA_FLAGS, self.dialog_media_flags(vip))
                flags = self.dialog_media_flags(vip, nated)
                if vip is not None and not self.rtp_command(
                    vip, "offer", ksr.rtpengine.rtpengine_offer, flags
                ):
                    log.error("rtpengine offer failed on %s (set %d)", method, vip.set_id)
                ksr.tm.t_on_reply(MANAGE_REPLY)
            elif method == "INVITE":
                self.keep_nat_for_replies(call_nat)
                ksr.pv.seti(AVP_LATE, 1)  # re-INVITE without SDP: the 2xx offers
                ksr.pv.sets(AVP_MEDIA_FLAGS, self.dialog_media_flags(vip))
                ksr.tm.t_on_reply(MANAGE_REPLY)
        elif (
            method == "ACK"
            and vip is not None
            and ksr.textops.has_body() > 0
            and (sdp := self.message_sdp()) is not None
            and sdp_refusal(sdp, policy.sdp_limits) is None
        ):
            # late offer: the SDP answer is in the ACK
            self.rtp_command(vip, "answer", ksr.rtpengine.rtpengine_answer,
                             self.dialog_media_flags(vip, nated))  # fmt: skip
        # DLGURI: an R-URI carrying our Contact alias goes back to the address, port and
        # transport (connection) its owner used; a destination already set stays.
        if not ksr.isdsturiset() > 0:
            ksr.nathelper.handle_ruri_alias()
        self.route_relay(local, in_dialog=True)

    def keep_nat_for_replies(self, call_nat: Nat) -> None:
        """The call's NAT handling for MANAGE_REPLY of this transaction (none: nothing kept)."""
        if call_nat.enabled:
            ksr = self.ksr
            ksr.pv.sets(AVP_NAT, call_nat.encoded)
            ksr.pv.sets(AVP_NAT_FLAGS, self.pv.text(DLG_NAT_FLAGS))

    def route_natmanage(self, call_nat: Nat, tests: int) -> bool:
        """NATMANAGE for the sender of this message (kemi.core.nat): is it behind NAT (asks
        nathelper only in `detect` mode), and its Contact fixed when it is the first hop."""
        ksr = self.ksr
        mode = call_nat.mode  # nat.behind_nat and nat.contact_fix, as their tables
        nated = nat.BEHIND_NAT[mode, mode == "detect" and ksr.nathelper.nat_uac_test(tests) > 0]
        connection = self.get("$pr") in nat.CONNECTION_TRANSPORTS
        fix = nat.CONTACT_FIX[call_nat.contact, nated, connection]
        if fix is not nat.ContactFix.NONE and ok(ksr.siputils.is_first_hop()):
            if fix is nat.ContactFix.ALIAS:
                done = ksr.nathelper.set_contact_alias()
            else:
                done = ksr.nathelper.fix_nated_contact()
            if not ok(done):  # e.g. a BYE without Contact: nothing to fix, as in Kamailio's cfg
                log.debug("no contact %s for %s %s", fix.value, self.pv.text("$rm"),
                          self.pv.text("$si"))  # fmt: skip
        return nated

    def message_sdp(self) -> str | None:
        """The SDP of a message with a body (textops.has_body), None if it carries none: the
        body, or the SDP part of a multipart body (kemi.core.body: an NG112 call's location,
        SIP-I's ISUP), which rtpengine's module rewrites in place. Not UTF-8: Garbled."""
        if self.ksr.textops.has_body_type(SDP) > 0:  # no Content-Type counts as SDP (textops)
            try:
                return self.get("$rb") or ""
            except UnicodeDecodeError:  # refused by sdp_refusal
                return self.pv.text("$rb")
        return sdp_in_body(self.pv.text("$cT"), self.pv.text("$rb"))

    def route_invite(self, policy: Policy, source: str) -> None:
        """Initial INVITE: decide, then media first (nothing to undo if it fails), dialog, RR.

        The decision and what it writes come from the INVITE's plan (kemi.core.plan: computed
        once per VIP, source and R-URI for this policy). Nothing is written that reads back as
        its default: the media flags when they are the VIP's (MANAGE_REPLY and WITHINDLG fall
        back to the VIP's), the failover index 0; the rtpengine set is selected only before an
        rtpengine command."""
        ksr = self.ksr
        pv = self.pv
        local = self.get("$Ri")
        try:
            ruri_user, ruri_domain = self.get("$rU") or "", self.get("$rd") or ""
        except UnicodeDecodeError:  # bytes that are not UTF-8: Pv.text says which, Garbled
            ruri_user, ruri_domain = pv.text("$rU"), pv.text("$rd")
        if isinstance(ruri_user, Garbled) or isinstance(ruri_domain, Garbled):
            # RFC 3261 25.1: a SIP URI holds ASCII (escaped otherwise); these bytes are not UTF-8.
            self.send_reject(Reject(400, "Bad Request-URI", why="ruri_bytes"), local)
            return
        key = (local, source or self.get("$si"), ruri_user, ruri_domain)
        plans = self.plans  # plans.get(policy, key), inline
        plan = plans.plans.get(key) if policy is plans.policy else plans.get(policy, key)
        if plan is None:
            plan = self.plans.add(key, plan_invite(policy, InviteFacts(*key), self.node_address,
                                                   self.ports, NAT_PVS))  # fmt: skip
        if isinstance(plan, Reject):
            self.send_reject(plan, local)
            return
        decision = plan.decision
        vip = plan.vip
        callee = f"{ruri_user}@{ruri_domain}"  # $rU@$rd for the call record
        refused = None  # decide.over_limit, inline: the first limit with no room left
        for check in plan.checks:
            if check.key is None:
                ksr.dialog.get_profile_size_static(check.profile, PV_PROFILE_SIZE)
            else:
                ksr.dialog.get_profile_size(check.profile, check.key, PV_PROFILE_SIZE)
            if refused is None and (self.get(PV_PROFILE_SIZE) or 0) >= check.limit.max:
                refused = check.refusal
        if refused is not None:
            metrics.LIMIT_REJECTIONS.labels(refused.why.removeprefix("limit_"),
                                            self.limit_key(decision, refused)).inc()  # fmt: skip
            self.send_reject(refused, local)
            self.record_refusal(policy, decision, refused, callee)
            return
        gateways = decision.route.gateway_set
        level = 0
        if gateways is not None:
            found = self.route_dispatch(gateways)
            if found is None:
                metrics.NO_GATEWAY.labels(gateways.name).inc()
                self.send_reject(Reject(503, "No Gateway Available", gateways.retry_after,
                                        why="no_gateway"), vip.address)  # fmt: skip
                return
            level = found
            if gateways.timeout_ms:
                ksr.tm.t_set_fr(0, gateways.timeout_ms)  # this transaction's branches only
        # REWRITE
        if plan.ruri_user is not None:
            callee = plan.callee
            ksr.pv.sets("$rU", plan.ruri_user)
        if decision.identity:
            self.route_identity(decision)
        nated = self.route_natmanage(decision.nat, nat.REQUEST_TESTS)
        sdp = self.message_sdp() if ksr.textops.has_body() > 0 else None
        late = sdp is None
        if late:
            ksr.pv.seti(AVP_LATE, 1)  # late offer: the 2xx carries it, the ACK the answer
        else:
            refused = sdp_refusal(sdp, policy.sdp_limits)
            if refused is not None:
                self.send_reject(refused, vip.address)
                self.record_refusal(policy, decision, refused, callee)
                return
            flags = decision.nat_media_flags if nated else decision.media_flags
            if not self.rtp_command(vip, "offer", ksr.rtpengine.rtpengine_offer, flags):
                log.error("rtpengine set %d (VIP %s) refused the offer", vip.set_id, vip.address)
                ksr.rtpengine.rtpengine_delete0()  # whatever half a session it kept
                refused = Reject(503, "Media Relay Unavailable", why="rtpengine")
                self.send_reject(refused, vip.address)
                self.record_refusal(policy, decision, refused, callee)
                return
        ksr.dialog.dlg_manage()
        if self.calls is not None:
            self.calls.dialog_planned(plan.setup, callee)
        ksr.dialog.set_dlg_profile_static(PROFILE_GLOBAL)  # the call's channels
        if decision.tenant is not None:
            ksr.dialog.set_dlg_profile(PROFILE_TENANT, decision.tenant.name)
        if decision.trunk is not None:
            ksr.dialog.set_dlg_profile(PROFILE_TRUNK, decision.trunk.name)
        # Preloaded Route headers removed (RFC 3261 8.1.2: a phone's outbound proxy, often this
        # VIP): the policy routes the call; left in, the next hop would follow them (back to
        # the VIP: a loop; elsewhere: around the policy).
        ksr.hdr.remove("Route")
        ksr.rr.record_route()
        if plan.dialog_flags is not None:
            ksr.pv.sets(DLG_MEDIA_FLAGS, plan.dialog_flags)
        for name, value in plan.nat_values:
            ksr.pv.sets(name, value)
        if late:
            ksr.pv.sets(DLG_LATE, "1")
        if plan.profiles:
            ksr.pv.sets(DLG_PROFILES, plan.profiles)
        if plan.dialog_flags is not None:
            ksr.pv.sets(AVP_MEDIA_FLAGS, plan.dialog_flags)
        ksr.pv.sets(AVP_VIP, vip.address)  # its final result is counted once (count_final)
        if gateways is not None:  # dispatcher set $du and keeps the set's other gateways
            ksr.pv.sets(AVP_GATEWAYS, gateways.name)
            if level:
                ksr.pv.seti(AVP_LEVEL, level)
            ksr.tm.t_on_branch(MANAGE_BRANCH)  # keeps each branch's gateway in the dialog
            ksr.tm.t_on_reply(MANAGE_REPLY)
            ksr.tm.t_on_failure(MANAGE_FAILURE)
            relayed = self.route_relay(local)
        else:
            ksr.pv.sets(AVP_DESTINATIONS, plan.destinations)
            ksr.setdsturi(plan.first_hop)  # AVP_TRIED unset: destination 0 tried
            ksr.tm.t_on_reply(MANAGE_REPLY)
            ksr.tm.t_on_failure(MANAGE_FAILURE)
            if plan.socket is not None:  # RELAY from the VIP, for the next hop's transport
                ksr.corex.set_send_socket(plan.socket)
            relayed = ksr.tm.t_relay() > 0
            if not relayed:
                ksr.sl.sl_reply_error()
        if not relayed:
            metrics.INVITES.labels(vip.address, "5xx").inc()
            self.rtp_command(vip, "delete", ksr.rtpengine.rtpengine_delete0)
            self.record_failure(500, cancelled=False)

    def route_dispatch(self, gateways: GatewaySet, after: int = -1) -> int | None:
        """DISPATCH: the first priority (after index `after`) with a gateway up; dispatcher
        picks one by weight and sets $du. None: no gateway up in any priority."""
        select = self.ksr.dispatcher.ds_select_dst
        for index in range(after + 1, len(gateways.levels)):
            if ok(select(gateways.levels[index], gateways.algorithm)):
                return index
        return None

    def route_identity(self, decision: Admit) -> None:
        """REWRITE of the identity headers: removed or normalised (the first header of each
        name, every entry of its list)."""
        ksr = self.ksr
        for key, name in IDENTITY_HEADERS:
            action = header_action(decision.identity, key)
            if action == "keep":
                continue
            value = self.pv.text(f"$hdr({name})")
            if not value or isinstance(value, Garbled):
                continue  # nothing to change, or bytes we must not rewrite
            if action == "remove":
                ksr.hdr.remove(name)
                continue
            new = rewrite_header(value, decision.identity, key)
            if new != value:
                ksr.textops.remove_hf_idx(name, 0)
                ksr.hdr.insert(f"{name}: {new}\r\n")

    @staticmethod
    def limit_key(decision: Admit, refused: Reject) -> str:
        if refused.why == "limit_tenant" and decision.tenant:
            return decision.tenant.name
        if refused.why == "limit_trunk" and decision.trunk:
            return decision.trunk.name
        return "all"

    def send_reject(self, reject: Reject, vip: str) -> None:
        ksr = self.ksr
        log.info("decision=reject code=%d reason=%s", reject.code, reject.why)
        metrics.INVITES.labels(vip, metrics.code_class(reject.code)).inc()
        if reject.retry_after is not None:
            ksr.hdr.append_to_reply(f"Retry-After: {reject.retry_after}\r\n")
        ksr.sl.sl_send_reply(reject.code, reject.reason)

    def arm_transaction(self, dispatched: bool) -> None:
        """The transaction's callbacks; a branch route only for a dispatched INVITE (it keeps
        the gateway of each branch), where Kamailio then runs one per branch."""
        ksr = self.ksr
        if dispatched:
            ksr.tm.t_on_branch(MANAGE_BRANCH)
        ksr.tm.t_on_reply(MANAGE_REPLY)
        ksr.tm.t_on_failure(MANAGE_FAILURE)

    def route_relay(self, local: str, next_hop: str | None = None, in_dialog: bool = False) -> bool:
        """RELAY: out of the VIP the request came in on (`local`, $Ri), with the transport of
        the next hop (`next_hop` when the route just set it, else $nh(u)); a different one than
        the request's gives two Record-Routes. In a dialog, loose_route() has already chosen
        the socket when the Route set held both of ours: it stays."""
        ksr = self.ksr
        if not (in_dialog and self.get("$fs")):
            if next_hop is None:
                try:
                    next_hop = self.get("$nh(u)") or ""
                except UnicodeDecodeError:  # bytes that are not UTF-8 in the R-URI
                    next_hop = self.pv.text("$nh(u)")
            socket = self.send_sockets.get((local, next_hop), MISSING)
            if socket is MISSING:
                self.send_from_vip(next_hop, local)
            elif socket is not None:
                ksr.corex.set_send_socket(socket)
        if ksr.tm.t_relay() > 0:
            return True
        ksr.sl.sl_reply_error()
        return False

    def send_from_vip(self, next_hop: str, local: str) -> None:
        """Send from the VIP the message came in on (`local`), with the transport of
        `next_hop` (the socket's text kept per VIP and next hop: the hops seen lately)."""
        key = (local, next_hop)
        sockets = self.send_sockets
        if key in sockets:
            socket = sockets[key]
        else:
            socket = nat.send_socket(nat.uri_transport(next_hop), local, self.ports)
            if len(sockets) >= SEND_SOCKETS_MAX:
                self.send_sockets = sockets = {}
            sockets[key] = socket
        if socket is not None:
            self.ksr.corex.set_send_socket(socket)

    # ----- replies, branches, failures -------------------------------------------------

    def ksr_sl_reply(self, msg: Any, evname: str = "") -> int:
        """SL_REPLY (tm's on_sl_reply): a reply no transaction matched. One of a transaction
        never comes here: MANAGE_REPLY (armed by its request) handles it, and there is no core
        reply route (kamailio.cfg), so such a reply runs no Python of its own.

        Without a transaction the core forwards it statelessly to its second Via: only one we
        can vouch for passes (our own Via on top: core `check_via=1`, and a dialog this node
        knows, replicated ones included: the takeover of a dead node's calls needs it); any
        other is dropped, never reflected."""
        try:
            ksr = self.ksr
            if not ok(ksr.dialog.is_known_dlg()):
                log.info("stray %s reply from %s dropped", self.pv.text("$rs"), self.pv.text("$si"))
                ksr.set_drop()
                return 1
            with as_core_reply_route():  # else the dialog module frees no channel here
                self.route_takeover_reply(self._policy())
        except Exception as exc:  # what guarded("reply") does, without its frame per reply
            self.on_exception("reply", exc)
        return 1

    def route_takeover_reply(self, policy: Policy) -> None:
        """TAKEOVER_REPLY: a reply of a known dialog whose transaction died with another node
        (this node took its VIP over). MANAGE_REPLY will not run (no transaction): the media
        is handled here, then the core forwards the reply by its Via."""
        ksr = self.ksr
        vip = decide.vip_for(policy, self.pv.text("$Ri"))
        status = int(ksr.pv.geti("$rs"))
        sdp = self.message_sdp() if ok(ksr.textops.has_body()) else None
        reply = takeover.OrphanReply(
            method=self.pv.text("$rm"),
            status=status,
            has_sdp=sdp is not None,
            sdp_refused=sdp is not None and sdp_refusal(sdp, policy.sdp_limits) is not None,
            late_offer=self.pv.text(DLG_LATE) == "1",
            dlg_state=self.pv.number(DLG_STATE),
        )
        action = takeover.orphan_reply_action(reply)
        log.info("takeover reply %d %s: %s", status, reply.method, action.value)
        metrics.TAKEOVER_REPLIES.labels(action.value).inc()
        if action is takeover.OrphanAction.DROP:
            ksr.set_drop()
        elif action is takeover.OrphanAction.END:
            self.record_failure(status, cancelled=status == 487)
            self.end_orphan_call(vip)
        elif action is not takeover.OrphanAction.FORWARD:
            flags = self.dialog_media_flags(vip)
            if action is takeover.OrphanAction.OFFER:
                command, call = "offer", ksr.rtpengine.rtpengine_offer
            else:
                command, call = "answer", ksr.rtpengine.rtpengine_answer
            if vip is None or not self.rtp_command(vip, command, call, flags):
                log.error("rtpengine %s failed on orphan %d: reply dropped, the callee resends",
                          command, status)  # fmt: skip
                ksr.set_drop()

    def end_orphan_call(self, vip: Vip | None) -> None:
        """The final failure of an INVITE whose transaction died: delete the media, free the
        channels (profiles), mark the dialog deleted; the reply itself is forwarded."""
        ksr = self.ksr
        self.rtp_command(vip, "delete", ksr.rtpengine.rtpengine_delete0)
        ksr.dialog.unset_dlg_profile_static(PROFILE_GLOBAL)
        for name, value in takeover.parse_profile_entries(self.pv.text(DLG_PROFILES)):
            ksr.dialog.unset_dlg_profile(name, value)
        removal = takeover.removed_copy_message(self.pv.number("$dlg(h_entry)"),
                                                self.pv.number("$dlg(h_id)"))  # fmt: skip
        if self.dialog_rpc(takeover.end_commands(*self.dialog_ids()), "end") and self.dmq:
            # dlg.set_state tells no peer: their copies would keep the call's channels
            rc = ksr.dmq.bcast_message("dialog", removal, JSON)
            if not ok(rc):
                log.error("the end of an orphan call not sent to the DMQ peers (rc %s)", rc)

    def confirm_early_copy(self) -> None:
        """A BYE on a call this node holds early and whose INVITE did not pass this Kamailio
        (kemi.core.takeover, 5.): confirmed first, so that this BYE ends it."""
        state = self.pv.number(DLG_STATE)
        if not takeover.unconfirmed(state):
            return  # every BYE of a call that was answered here or confirmed by its ACK
        facts = self.calls.setup_facts() if self.calls is not None else None
        here = facts is not None and takeover.invite_passed_here(
            facts.node, facts.invite_ms, self.node_address, self.started_ms
        )
        if takeover.bye_confirms(state, here):
            log.warning("BYE on a call still early here (its ACK reached no live node): "
                        "confirmed, this BYE ends it")  # fmt: skip
            self.confirm_dialog()

    def dialog_ids(self) -> tuple[str, str, str]:
        return self.pv.text("$ci"), self.pv.text("$ft"), self.pv.text("$tt")

    def confirm_dialog(self) -> None:
        """Kamailio 5.6 does not confirm a replicated early dialog on its ACK (#2423, fixed in
        6.1 only): confirm it by RPC, or it is cleaned as early and its BYE ends nothing."""
        self.dialog_rpc((takeover.confirm_command(*self.dialog_ids()),), "confirm")
        if self.calls is not None:
            self.calls.answered_here()  # no MANAGE_REPLY saw this answer anywhere

    def dialog_rpc(self, commands: tuple[str, ...], what: str) -> bool:
        """The dialog's RPC commands in order, until one fails; counted once."""
        ksr = self.ksr
        for command in commands:
            ksr.jsonrpcs.exec(command)
            code = self.pv.number(local_rpc.RPC_CODE)
            if code != 200:
                metrics.TAKEOVER_DIALOGS.labels(what, "error").inc()
                log.error("dialog %s by RPC failed (code %s): %s", what, code, command)
                return False
        metrics.TAKEOVER_DIALOGS.labels(what, "ok").inc()
        return True

    def forward_orphan(self, policy: Policy, method: str) -> None:
        """A CANCEL or a negative reply's ACK with no transaction: stateless, from the VIP it
        came in on, to the gateway its INVITE went to (kept in the dialog), else to the
        destination the policy routes the call to (first one)."""
        ksr = self.ksr
        pv = self.pv
        local = pv.text("$Ri")
        facts = InviteFacts(
            local_address=local, source=pv.text("$si"),
            ruri_user=pv.text("$rU"), ruri_domain=pv.text("$rd"),
        )  # fmt: skip
        decision = decide.decide_invite(policy, facts)
        if isinstance(decision, Reject):
            log.info("orphan %s not forwarded: %s", method, decision.why)
            return
        target = pv.text(DLG_GATEWAY) or decision.route.first_hop
        ksr.setdsturi(target)
        self.send_from_vip(target, local)
        log.info("orphan %s forwarded statelessly to %s", method, target)
        if not ok(ksr.forward()):
            log.error("stateless forward of an orphan %s failed", method)

    def ksr_onreply_manage(self, msg: Any) -> int:
        """MANAGE_REPLY: the SDP of a 1xx/2xx goes to the VIP's rtpengine set: an answer to the
        request's offer, or the offer itself when the request had no SDP (late offer). The
        policy and the set are looked at only for a reply with SDP."""
        try:
            ksr = self.ksr
            status = ksr.pv.geti("$rs")
            if 200 <= status < 300:
                self.count_final(status)
            if not 100 < status < 300:
                return 1
            call_nat = nat.BY_ENCODED.get(self.get(AVP_NAT), nat.NAT_OFF)
            nated = self.route_natmanage(call_nat, nat.REPLY_TESTS)
            if not ksr.textops.has_body() > 0:
                return 1
            holder = self.policies  # holder.current(), inline
            if ksr.pvx.shv_get(GEN_SHV) != holder.generation:
                holder.current()
            policy = holder.policy
            vip = policy.vip_by_address.get(self.get("$Ri"))
            if vip is None:
                return 1
            sdp = self.message_sdp()
            if sdp is None:
                return 1
            if sdp_refusal(sdp, policy.sdp_limits) is not None:
                # Relayed as it is, its media would bypass the relay: drop it (the callee resends).
                log.warning("reply %d with an SDP rtpengine must not see dropped", status)
                ksr.set_drop()
                return 1
            get = self.get  # AVPs this transaction's request route wrote
            flags = (nated and get(AVP_NAT_FLAGS)) or get(AVP_MEDIA_FLAGS) or vip.media_flags
            if get(AVP_LATE):
                command, call = "offer", ksr.rtpengine.rtpengine_offer
            else:
                command, call = "answer", ksr.rtpengine.rtpengine_answer
            if not self.rtp_command(vip, command, call, flags):
                # Relayed unchanged, its SDP would send the media around the relay for the whole
                # call: drop it; the callee retransmits a 2xx (and a reliable 1xx) until it passes,
                # e.g. once a VIP's rtpengine is back after a takeover.
                log.error("rtpengine %s failed on %d (set %d): reply dropped, the callee resends",
                          command, status, vip.set_id)  # fmt: skip
                ksr.set_drop()
            return 1
        except Exception as exc:  # what guarded("reply") does, without its frame per reply
            self.on_exception("reply", exc)
        return 1

    @guarded("branch")
    def ksr_branch_manage(self, msg: Any) -> int:
        """MANAGE_BRANCH, armed for dispatched INVITEs only: the gateway of this branch kept in
        the dialog (replicated), where a CANCEL or ACK forwarded after a takeover must go."""
        self.ksr.pv.sets(DLG_GATEWAY, self.pv.text("$du"))
        return 1

    @guarded("failure")
    def ksr_failure_manage(self, msg: Any) -> int:
        """MANAGE_FAILURE: next destination on 408/5xx, otherwise release the media session."""
        ksr = self.ksr
        policy = self._policy()
        local = self.pv.text("$Ri")
        vip = policy.vip_by_address.get(local)
        if ksr.tm.t_is_canceled() > 0:
            self.count_final(487)
            self.rtp_command(vip, "delete", ksr.rtpengine.rtpengine_delete0)
            self.record_failure(487, cancelled=True)
            return 1
        status = int(ksr.tm.t_get_status_code())
        gateways = self.pv.text(AVP_GATEWAYS)
        next_hop = None  # a gateway: dispatcher set $du
        if gateways:
            moved = self.failover_gateway(policy, gateways, status)
        else:
            next_hop = self.failover_destination(status)
            moved = next_hop is not None
        if not moved:
            self.count_final(status)
            self.rtp_command(vip, "delete", ksr.rtpengine.rtpengine_delete0)
            self.record_failure(int(status), cancelled=False)
            return 1
        self.arm_transaction(dispatched=bool(gateways))
        if not self.route_relay(local, next_hop):
            self.count_final(500)
            self.rtp_command(vip, "delete", ksr.rtpengine.rtpengine_delete0)
            self.record_failure(500, cancelled=False)
        return 1

    def failover_destination(self, status: int) -> str | None:
        """The route's next fixed destination after 408/5xx, now set; None when none is left."""
        destinations = tuple(self.pv.text(AVP_DESTINATIONS).split())
        tried = self.pv.number(AVP_TRIED)
        target = decide.next_destination(destinations, tried, status)
        if target is None:
            return None
        log.info("failover after %s: trying %s", status, target)
        self.ksr.pv.seti(AVP_TRIED, tried + 1)
        self.ksr.setdsturi(target)
        # tm adds a branch in a failure route only for an R-URI marked new; $du alone is not
        # ("no branches for forwarding", 500 to the caller: measured on 5.6.3). Same R-URI.
        self.ksr.seturi(self.pv.text("$ru"))
        return target

    def failover_gateway(self, policy: Policy, name: str, status: int) -> bool:
        """After 408/5xx: the next gateway of the same priority (ds_next_dst), then the next
        priority with one up. No answer at all (tm's 408) marks the gateway down at once."""
        ksr = self.ksr
        gateways = policy.gateway_sets.get(name)
        if gateways is None or not decide.should_fail_over(status):
            return False  # a reload removed the set meanwhile, or a final answer
        timed_out, replied = ok(ksr.tm.t_branch_timeout()), ok(ksr.tm.t_branch_replied())
        if dispatch.marks_down(status, timed_out, replied):
            ksr.dispatcher.ds_mark_dst_state("ip")
            metrics.GATEWAY_MARKED_DOWN.labels(name).inc()
        if ok(ksr.dispatcher.ds_next_dst()):
            log.info("failover after %s: next gateway of set %s", status, name)
            return True
        level = self.route_dispatch(gateways, after=self.pv.number(AVP_LEVEL))
        if level is None:
            return False
        log.info("failover after %s: set %s, priority index %d", status, name, level)
        ksr.pv.seti(AVP_LEVEL, level)
        return True

    # ----- call records and hygiene (kemi.shell.hygiene) ---------------------------------

    def ksr_dialog_end(self, msg: Any) -> int:
        """event_route[dialog:end] (kamailio.cfg, python_exec): an answered call ended, with
        the dialog's context set: its call record."""
        if self.calls is not None:
            try:
                self.calls.dialog_ended()
            except Exception as exc:  # what guarded("event") does, without its frame per call
                self.on_exception("event", exc)
        return 1

    def ksr_hygiene_timer(self, msg: Any, evname: str = "") -> int:
        """rtimer (its own process): retry spooled CDRs, end dead and overlong calls, ask a
        DMQ peer that came back for its dialogs and bans. One failing does not stop the other."""
        for job in (self.calls, self.resync):
            if job is not None:
                try:
                    job.tick()
                except Exception as exc:
                    self.on_exception("event", exc)
        return 1

    def record_refusal(self, policy: Policy, decision: Admit, refused: Reject, callee: str) -> None:
        if self.calls is not None:
            self.calls.refused(policy, decision, refused, callee)

    def record_failure(self, status: int, cancelled: bool) -> None:
        if self.calls is not None:
            self.calls.failed(status, cancelled)

    # ----- management HTTP (xhttp) ------------------------------------------------------

    @guarded("http")
    def ksr_xhttp_event(self, msg: Any, evname: str = "") -> int:
        """Management HTTP on the node's private listener: metrics for anyone who reaches it,
        policy reload (any state change) only with the run dir's token, else 403."""
        ksr = self.ksr
        path = self.pv.text("$hu").split("?", 1)[0]
        method = self.pv.text("$rm")
        if method not in ("GET", "HEAD") and not self.http_authorized():
            log.warning("management %s %s without a valid token refused", method, path)
            ksr.xhttp.xhttp_reply(403, "Forbidden", "text/plain", "token required\n")
            return 1
        if path == "/policy/reload" and method == "POST":
            accepted, messages = self.policies.reload()
            body = json.dumps({"accepted": accepted, "messages": messages}) + "\n"
            code, reason = (200, "OK") if accepted else (422, "Policy Refused")
            ksr.xhttp.xhttp_reply(code, reason, JSON, body)
            return 1
        if path == "/metrics" and method == "GET":
            page = metrics.metrics_page(self.scrape_state, self.kamailio_counts()).decode()
            ksr.xhttp.xhttp_reply(200, "OK", METRICS_TYPE, page)
            return 1
        ksr.xhttp.xhttp_reply(404, "Not Found", "text/plain", f"no such resource: {path}\n")
        return 1

    def kamailio_counts(self) -> dict[tuple[metrics.Counter, tuple[str, ...]], float]:
        """What Kamailio counted itself (kamailio.cfg, statistics module) for our counters (a
        value that is not a count, which Kamailio never gives, reads as 0: a scrape answers)."""
        number = self.pv.number
        return {key: float(number(f"$stat({stat})"))
                for key, stat in metrics.KAMAILIO_COUNTS.items()}  # fmt: skip

    def http_authorized(self) -> bool:
        given = self.pv.text(AUTHORIZATION).strip().encode()
        return bool(self.http_authorization) and hmac.compare_digest(given, self.http_authorization)

    def scrape_state(self) -> list[metrics.Gauge]:
        """Gauges read at scrape time from Kamailio itself (dialog profiles) and the ng sockets."""
        policy = self._policy()
        active = metrics.Gauge("kemi_ha_active_calls", "Active dialogs per channel profile",
                               ("profile", "key"))  # fmt: skip
        limits = metrics.Gauge("kemi_ha_channel_limit", "Configured channel limit per profile",
                               ("profile", "key"))  # fmt: skip
        active.samples.append((("global", "all"), self.profile_size(PROFILE_GLOBAL, None)))
        if policy.global_limit:
            limits.samples.append((("global", "all"), policy.global_limit.max))
        for scope, items in (("tenant", policy.tenants), ("trunk", policy.trunks)):
            for name, item in items.items():
                size = self.profile_size(f"kha_{scope}", name)
                active.samples.append(((scope, name), size))
                if item.limit is not None:
                    limits.samples.append(((scope, name), item.limit.max))
        up = metrics.Gauge("kemi_ha_rtpengine_up", "1 if the VIP's rtpengine answers an ng ping",
                           ("set", "vip"))  # fmt: skip
        for vip in policy.vips:
            up.samples.append(
                ((str(vip.set_id), vip.address), float(self.rtpengine_alive(vip.rtpengine[0])))
            )
        info = metrics.Gauge("kemi_ha_policy_info", "The policy in force (value 1)",
                             ("version", "generation"))  # fmt: skip
        info.samples.append(((policy.version, str(self.policies.generation)), 1.0))
        gauges = [active, limits, up, info, self.ban_gauge()]
        if self.calls is not None:
            gauges += self.calls.gauges()
        if self.dmq:
            gauges.append(self.dmq_peer_gauge(policy))
        if policy.gateway_sets:
            gauges += self.gateway_gauges(policy)
        return gauges

    def ban_gauge(self) -> metrics.Gauge:
        """Sources banned now (the replicated list: the same on every node)."""
        gauge = metrics.Gauge("kemi_ha_banned_sources", "Sources banned now, cluster-wide")
        try:
            bans = floods.bans_from_dump(self.ban_dump(), time.time())
        except Exception as exc:  # a scrape must still answer
            log.warning("cannot read the ban list: %s", exc)
            return gauge
        gauge.samples.append(((), float(len(bans))))
        return gauge

    def gateway_gauges(self, policy: Policy) -> list[metrics.Gauge]:
        """Every gateway as this node's dispatcher sees it, and gateways up per set."""
        try:
            listing = self.gateway_listing()
        except Exception as exc:  # a scrape must still answer
            log.warning("cannot read the dispatcher list: %s", exc)
            listing = {}
        states = dispatch.gateway_states(policy, listing)
        labels = ("gateway_set", "priority", "gateway")
        up = metrics.Gauge("kemi_ha_gateway_up",
                           "1 if this node's dispatcher routes to the gateway (probes answered)",
                           labels)  # fmt: skip
        probing = metrics.Gauge("kemi_ha_gateway_probing", "1 if the gateway is being probed",
                                labels)  # fmt: skip
        latency = metrics.Gauge("kemi_ha_gateway_latency_seconds",
                                "Average OPTIONS round trip to the gateway", labels)  # fmt: skip
        for gw in states:
            key = (gw.gateway_set, str(gw.priority), gw.uri)
            up.samples.append((key, float(gw.up)))
            probing.samples.append((key, float(gw.probing)))
            if gw.latency_ms is not None:
                latency.samples.append((key, gw.latency_ms / 1000))
        per_set = metrics.Gauge("kemi_ha_gateway_set_up", "Gateways up per gateway set",
                                ("gateway_set",))  # fmt: skip
        for name, count in dispatch.sets_up(policy, states).items():
            per_set.samples.append(((name,), float(count)))
        return [up, probing, latency, per_set]

    def dmq_peer_gauge(self, policy: Policy) -> metrics.Gauge:
        """1 per configured peer DMQ reports active; 0 if inactive or unknown to DMQ."""
        gauge = metrics.Gauge("kemi_ha_dmq_peer_up", "1 if DMQ sees the peer node active",
                              ("peer",))  # fmt: skip
        try:
            nodes = self.dmq_nodes()
        except Exception as exc:  # a scrape must still answer
            log.warning("cannot read DMQ nodes: %s", exc)
            nodes = []
        state = {f"{n.get('host')}:{n.get('port')}": n.get("status") for n in nodes}
        own = f"{self.node_address}:"
        for uri in policy.dmq_peers:
            peer = uri.split(":", 1)[1].split(";", 1)[0]
            if peer.startswith(own):
                continue
            gauge.samples.append(((peer,), 1.0 if state.get(peer) == "active" else 0.0))
        return gauge

    def profile_size(self, profile: str, key: str | None) -> float:
        ksr = self.ksr
        if key is None:
            ksr.dialog.get_profile_size_static(profile, PV_PROFILE_SIZE)
        else:
            ksr.dialog.get_profile_size(profile, key, PV_PROFILE_SIZE)
        return float(self.pv.number(PV_PROFILE_SIZE))

    # ----- helpers -------------------------------------------------------------------

    def rtp_command(
        self, vip: Vip | None, command: str, call: Callable[..., Any], *args: Any
    ) -> bool:
        """Select the VIP's rtpengine set (Kamailio keeps it for this message only, so right
        before each command), send the command, count it per set (errors too)."""
        if vip is not None:
            set_id = vip.set_id
            self.ksr.rtpengine.set_rtpengine_set(set_id)
        else:
            set_id = -1
        key = (set_id, command)
        child = self.rtp_counts.get(key)
        if child is None:
            child = self.rtp_counts[key] = metrics.RTPENGINE_CALLS.labels(
                rtp_set_label(set_id), command
            )
        child.view[child.index] += 1.0  # .inc(), inline
        rc = call(*args)
        if rc is not None and rc > 0:  # ok(), inline
            return True
        metrics.RTPENGINE_ERRORS.labels(rtp_set_label(set_id), command).inc()
        return False

    def count_final(self, status: int) -> None:
        """Count the final result of an initial INVITE transaction, once: AVP_VIP is set on
        initial INVITEs only, and removed when counted. A 2xx also keeps the answer time (what
        a dialog:start callback would do; the first 2xx's, even one dropped below)."""
        vip = self.get(AVP_VIP)
        if not vip:
            return
        self.ksr.pv.unset(AVP_VIP)
        if status < 300 and self.calls is not None:
            self.calls.answered()
        key = (vip, status // 100)
        child = self.invite_counts.get(key)
        if child is None:
            child = self.invite_counts[key] = metrics.INVITES.labels(
                vip, metrics.code_class(status)
            )
        child.view[child.index] += 1.0  # .inc(), inline

    def dialog_media_flags(self, vip: Vip | None, nated: bool = False) -> str:
        """The flags chosen at the initial INVITE (tenant-specific), kept as dialog vars: for
        a sender behind NAT (`nated`) or not."""
        flags = (nated and self.get(DLG_NAT_FLAGS)) or self.get(DLG_MEDIA_FLAGS)  # ours
        if flags:
            return str(flags)
        return vip.media_flags if vip is not None else ""

    def on_exception(self, kind: str, exc: Exception) -> None:
        ksr = self.ksr
        metrics.EXCEPTIONS.labels(kind).inc()
        call_id = "?"
        with contextlib.suppress(Exception):
            call_id = self.pv.text("$ci")
        log.error(
            "exception in %s route, Call-ID %s: %s\n%s",
            kind,
            call_id,
            exc,
            traceback.format_exc(),
        )
        try:
            if kind == "reply":
                ksr.set_drop()
            elif kind == "http":
                ksr.xhttp.xhttp_reply(500, "Server Internal Error", "text/plain", "error\n")
            elif kind == "failure":
                ksr.tm.t_send_reply(500, "Server Internal Error")
            elif kind == "request" and not ksr.is_ACK():
                ksr.sl.sl_send_reply(500, "Server Internal Error")
        except Exception:
            log.error("could not answer after exception, Call-ID %s", call_id)
