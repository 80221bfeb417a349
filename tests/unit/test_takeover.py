"""kemi.core.takeover: what a node does with a dead node's transactions, as a table."""

from __future__ import annotations

import json

import pytest

from kemi.core.takeover import (
    OrphanAction,
    OrphanReply,
    ack_confirms,
    bye_confirms,
    confirm_command,
    end_commands,
    invite_passed_here,
    orphan_reply_action,
    parse_profile_entries,
    profile_entries,
    removed_copy_message,
    unknown_dialog_answer,
)

A = OrphanAction


def reply(method: str = "INVITE", status: int = 200, sdp: bool = True, refused: bool = False,
          late: bool = False, state: int = 2) -> OrphanReply:  # fmt: skip
    return OrphanReply(method, status, sdp, refused, late, state)


@pytest.mark.parametrize(
    ("case", "action"),
    [
        (reply(), A.ANSWER),  # the 200 of a ringing call, and its retransmissions
        (reply(status=183), A.ANSWER),  # early media
        (reply(status=180, sdp=False), A.FORWARD),
        (reply(status=100, sdp=False), A.DROP),  # hop-by-hop
        (reply(late=True), A.OFFER),  # late offer: the 2xx carries the offer
        (reply(late=True, state=4), A.ANSWER),  # confirmed: a re-INVITE's 2xx answers it
        (reply(refused=True), A.DROP),  # its media would bypass the relay
        (reply(status=487, sdp=False), A.END),  # after an orphan CANCEL
        (reply(status=486, sdp=False, state=1), A.END),
        (reply(status=491, sdp=False, state=4), A.FORWARD),  # a re-INVITE failed: call stays
        (reply(method="CANCEL", sdp=False), A.FORWARD),  # the 200 to the CANCEL
        (reply(method="BYE", sdp=False, state=4), A.FORWARD),
    ],
)
def test_orphan_reply_action(case: OrphanReply, action: OrphanAction) -> None:
    assert orphan_reply_action(case) is action


@pytest.mark.parametrize(("state", "confirm"), [(1, True), (2, True), (3, False), (4, False),
                                                (5, False), (0, False)])  # fmt: skip
def test_an_ack_confirms_only_an_unconfirmed_copy(state: int, confirm: bool) -> None:
    assert ack_confirms(state) is confirm


def test_rpc_commands_are_kamailio_56_signatures() -> None:
    """dlg.set_state <callid> <from-tag> <to-tag> <state> (checked with kamcmd on 5.6.3)."""
    confirm = json.loads(confirm_command("c1", "f1", "t1"))
    assert (confirm["method"], confirm["params"]) == ("dlg.set_state", ["c1", "f1", "t1", 4])
    confirm_first, delete = (json.loads(c) for c in end_commands("c1", "f1", "t1"))
    assert confirm_first["params"] == ["c1", "f1", "t1", 4]  # only this stamps its end time
    assert delete["params"] == ["c1", "f1", "t1", 5]
    assert confirm["jsonrpc"] == "2.0" and "id" in confirm


def test_profile_entries_round_trip() -> None:
    assert profile_entries(None, None) == ""
    text = profile_entries("acme", "t1")
    assert parse_profile_entries(text) == (("kha_tenant", "acme"), ("kha_trunk", "t1"))
    assert parse_profile_entries("junk kha_global=x kha_tenant= =y") == ()


@pytest.mark.parametrize(("state", "passed_here", "confirm"), [
    (2, False, True), (1, False, True),  # a copy early at its BYE: its ACK reached no live node
    (2, True, False),  # a caller's BYE on an early dialog of our own INVITE: Kamailio's rules
    (3, False, False), (4, False, False), (5, False, False), (0, False, False),
])  # fmt: skip
def test_a_bye_confirms_only_an_early_copy_without_its_invite_here(
    state: int, passed_here: bool, confirm: bool
) -> None:
    assert bye_confirms(state, passed_here) is confirm


def test_an_invite_passed_here_only_through_this_node_since_this_kamailio_started() -> None:
    assert invite_passed_here("10.0.0.1", 2_000, "10.0.0.1", 1_000)
    assert not invite_passed_here("10.0.0.2", 2_000, "10.0.0.1", 1_000)  # another node's call
    assert not invite_passed_here("10.0.0.1", 999, "10.0.0.1", 1_000)  # before a restart here


def test_the_end_sent_to_the_peers_is_the_dialog_modules_dmq_remove() -> None:
    """dlg_dmq.c (5.6): action 3 = DLG_DMQ_RM, the dialog by h_entry/h_id."""
    assert json.loads(removed_copy_message(1016, 166673)) == {
        "action": 3, "h_entry": 1016, "h_id": 166673}  # fmt: skip


def test_an_unknown_dialog_gets_481_but_in_the_first_seconds_after_a_restart_with_dmq() -> None:
    assert unknown_dialog_answer(dmq=False, now_ms=1_000, started_ms=0)  # a single node: at once
    assert not unknown_dialog_answer(dmq=True, now_ms=9_999, started_ms=0)  # peers' dialogs due
    assert unknown_dialog_answer(dmq=True, now_ms=10_000, started_ms=0)
