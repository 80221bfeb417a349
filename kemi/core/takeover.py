"""Calls caught mid-setup by a takeover: messages whose transaction died with another node.

When a node dies, its tm transactions die with it. The node that takes its VIP over holds the
dialog (replicated over DMQ: state, profiles and dialog variables) and, through the VIP's
rtpengine, the media session; it has no transaction. What reaches it then:

1. a reply to the dead node's INVITE (180/183/200, retransmitted 200s): the core forwards it
   statelessly by its Via; its SDP must first go through rtpengine (answer, or offer for a late
   offer) with the flags chosen at the INVITE, or the media would bypass the relay. A 100 is
   hop-by-hop (RFC 3261 16.7 step 3): dropped. A reply to anything else passes unchanged.
2. a final failure of that INVITE (the 487 after a CANCEL, a 486...): forwarded, and the call
   is over: media deleted, channels freed, dialog ended.
3. the ACK of an orphan 2xx: the replicated copy is still early (Kamailio 5.6 replicates no
   "confirmed" from an ACK it did not see, kamailio #2423), so it is confirmed by RPC
   (dlg.set_state ... 4); otherwise the early copy is cleaned after `early_timeout` with its
   channel count, and its BYE finds no confirmed dialog.
4. a CANCEL, or the ACK of a negative reply: no transaction to follow and their Request-URI is
   the proxy itself, so they are forwarded statelessly to the destination the policy routes the
   call to (its first one: a failover to a later destination is not known here).
5. a BYE on a copy still early: the 2xx passed a node that died (or a Kamailio that crashed and
   came back) and its ACK reached no live node (sent during the outage; an ACK is never
   retransmitted). Kamailio ignores a BYE in an early dialog, so the copy would keep its
   channels until the dialog module's early timeout, and the call would get no record: it is
   confirmed by RPC before the BYE passes, which then ends it as any answered call.

A call ended here by RPC (2.) is not told to the other nodes by Kamailio 5.6 (dlg.set_state
replicates nothing): their copies, early too, would keep the call's channels until their own
early timeout. The dialog module's own DMQ "remove" is sent to them.

Only pure decisions live here; kemi.shell.routes applies them.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

# Kamailio dialog states (modules/dialog/dlg_hash.h).
DLG_UNCONFIRMED, DLG_EARLY, DLG_CONFIRMED_NA, DLG_CONFIRMED, DLG_DELETED = 1, 2, 3, 4, 5


class OrphanAction(enum.Enum):
    FORWARD = "forward"  # unchanged, stateless by Via
    ANSWER = "answer"  # rtpengine answer on the VIP's set, then forward
    OFFER = "offer"  # late offer: the reply carries the offer
    END = "end"  # final failure: delete the media, free the channels, end the dialog, forward
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class OrphanReply:
    """What the shell reads from a reply that matched no transaction, of a known dialog."""

    method: str  # the CSeq method
    status: int
    has_sdp: bool
    sdp_refused: bool  # kemi.core.sdp refused its SDP: rtpengine must not see it
    late_offer: bool  # the initial INVITE carried no SDP (dialog variable)
    dlg_state: int  # the dialog's state on this node


def unconfirmed(dlg_state: int) -> bool:
    return dlg_state in (DLG_UNCONFIRMED, DLG_EARLY)


def bye_confirms(dlg_state: int, invite_passed_here: bool) -> bool:
    """A BYE on a dialog this node holds early (5. above). Not when the INVITE's transaction may
    still be here: a caller may end an early dialog with a BYE (RFC 3261 15), which Kamailio
    leaves to the INVITE's own outcome."""
    return unconfirmed(dlg_state) and not invite_passed_here


def invite_passed_here(set_up_by: str, invite_ms: int, this_node: str, started_ms: int) -> bool:
    """Could this Kamailio hold the call's INVITE transaction: set up by this node, after this
    Kamailio started (a restarted one has lost its transactions)."""
    return set_up_by == this_node and invite_ms >= started_ms


# After this Kamailio starts with DMQ peers, their dialogs arrive over the next seconds
# (Kamailio's sync at start, kemi-ha's request 3 s after a peer turns active).
RESYNC_WINDOW_MS = 10_000


def unknown_dialog_answer(dmq: bool, now_ms: int, started_ms: int) -> bool:
    """An in-dialog request (our Route, a To-tag) for a dialog this node does not know: 481,
    except in the first seconds after a (re)start with DMQ peers, when its dialog may not have
    arrived yet: then silence, and the sender's retransmission (up to 32 s) finds it."""
    return not dmq or now_ms - started_ms >= RESYNC_WINDOW_MS


DMQ_RM = 3  # the dialog module's DMQ actions (dlg_dmq.h): NONE, UPDATE, STATE, RM, SYNC


def removed_copy_message(h_entry: int, h_id: int) -> str:
    """The dialog module's DMQ "remove" of dialog [h_entry:h_id], as a node sends it when it
    destroys a dialog: a peer drops its copy with the call's channels (dlg_dmq_handle_msg,
    Kamailio 5.6)."""
    return json.dumps({"action": DMQ_RM, "h_entry": h_entry, "h_id": h_id}, separators=(",", ":"))


def orphan_reply_action(reply: OrphanReply) -> OrphanAction:
    """Checked in order: method, 100, final failure, no SDP, SDP refused, offer or answer."""
    if reply.method != "INVITE":
        return OrphanAction.FORWARD  # 200 to a CANCEL, replies to BYE...
    if reply.status < 101:
        return OrphanAction.DROP
    if reply.status >= 300:
        # the initial INVITE failed: the call is over; a re-INVITE's failure leaves the call up
        return OrphanAction.END if unconfirmed(reply.dlg_state) else OrphanAction.FORWARD
    if not reply.has_sdp:
        return OrphanAction.FORWARD
    if reply.sdp_refused:
        return OrphanAction.DROP  # the callee retransmits a 2xx; its media must not bypass us
    if reply.late_offer and unconfirmed(reply.dlg_state):
        return OrphanAction.OFFER
    return OrphanAction.ANSWER


def ack_confirms(dlg_state: int) -> bool:
    """An ACK (with our Route) on a dialog this node still holds unconfirmed: the 2xx went
    through a node that died (or its state 3 was never replicated): confirm it here."""
    return unconfirmed(dlg_state)


def rpc_command(method: str, *params: str | int) -> str:
    """A JSON-RPC 2.0 request, as KSR.jsonrpcs.exec takes it."""
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": list(params), "id": 1})


def confirm_command(call_id: str, from_tag: str, to_tag: str) -> str:
    """dlg.set_state <callid> <from-tag> <to-tag> <state> (Kamailio 5.6 RPC; an early copy
    with no callee tag matches any to-tag)."""
    return rpc_command("dlg.set_state", call_id, from_tag, to_tag, DLG_CONFIRMED)


def end_commands(call_id: str, from_tag: str, to_tag: str) -> tuple[str, str]:
    """Mark an unconfirmed dialog deleted: dlg.end_dlg/terminate_dlg refuse non-confirmed ones
    in 5.6. Through "confirmed": only that step of dlg.set_state stamps the end time, without
    which the dialog module's clean timer never frees a deleted dialog (dlg_clean_run: it would
    stay in memory and in dlg.list for good). Deleted, it leaves the active counts at once."""
    return confirm_command(call_id, from_tag, to_tag), rpc_command(
        "dlg.set_state", call_id, from_tag, to_tag, DLG_DELETED
    )


PROFILE_SEPARATOR = " "


def profile_entries(tenant: str | None, trunk: str | None) -> str:
    """The valued profiles a call is counted in, kept as a dialog variable so that the node that
    ends an orphan call can unset them ("kha_tenant=acme kha_trunk=t1")."""
    parts = []
    if tenant:
        parts.append(f"kha_tenant={tenant}")
    if trunk:
        parts.append(f"kha_trunk={trunk}")
    return PROFILE_SEPARATOR.join(parts)


def parse_profile_entries(text: str) -> tuple[tuple[str, str], ...]:
    out = []
    for part in text.split():
        name, sep, value = part.partition("=")
        if sep and name in ("kha_tenant", "kha_trunk") and value:
            out.append((name, value))
    return tuple(out)
