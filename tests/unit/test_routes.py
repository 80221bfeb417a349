"""The KSR shell against the strict fake: order of calls, replies, rtpengine set per VIP."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from kemi.core import takeover
from kemi.policyfile import load_policy, parse_policy
from kemi.shell import log as kamailio_log
from kemi.shell import metrics, routes
from kemi.shell.policy_holder import PolicyHolder
from kemi.shell.routes import Router
from tests.fakes.ksr import FakeKSR

POLICY_TEXT = """
version: t
vips:
  - address: 10.0.0.1
    rtpengine: ["udp:10.0.0.1:2223"]
  - address: 10.0.0.2
    rtpengine: ["udp:10.0.0.2:2223"]
    media: {ice: remove, replace: [origin]}
routes:
  - name: default
    destinations: ["sip:gw1:5060", "sip:gw2:5060"]
  - name: carriers
    prefix: "9"
    gateway_set: carriers
    rewrite: {strip: 1, e164: true, country_code: "49", pai: normalise, diversion: remove}
trusted_peers: ["192.0.2.0/24"]
gateway_sets:
  - name: carriers
    timeout_ms: 800
    gateways:
      - {uri: "sip:carrier-a:5060", priority: 10, weight: 60}
      - {uri: "sip:carrier-b:5060", priority: 10, weight: 40}
      - {uri: "sip:backup:5060", priority: 1}
"""
POLICY = parse_policy(POLICY_TEXT)

# What a healthy Kamailio answers, stated once; each test overrides what it is about.
HAPPY: dict[str, Any] = {
    "maxfwd.process_maxfwd": 1,
    "sanity.sanity_check": 1,
    "is_ACK": False,  # only the exception guard asks (no 500 to an ACK); routes read $rm
    "is_BYE": False,  # the call record of a dialog:end (kemi.shell.hygiene)
    "is_myself_ruri": False,
    "siputils.has_totag": -1,
    "tmx.t_precheck_trans": -1,
    "tm.t_check_trans": -1,
    "textops.has_body": 1,
    "textops.has_body_type": 1,
    "rtpengine.set_rtpengine_set": 1,
    "rtpengine.rtpengine_offer": 1,
    "rtpengine.rtpengine_answer": 1,
    "rtpengine.rtpengine_delete0": 1,
    "dialog.dlg_manage": 1,
    "rr.record_route": 1,
    "rr.loose_route": 1,
    "setdsturi": True,
    "tm.t_on_branch": 1,
    "tm.t_on_reply": 1,
    "tm.t_on_failure": 1,
    "corex.set_send_socket": 1,
    "tm.t_relay": 1,
    "sl.sl_send_reply": 1,
    "sl.sl_reply_error": 1,
    "tm.t_send_reply": 1,
    "tm.t_is_canceled": -1,
    "pvx.shv_get": 0,
    "dialog.get_profile_size": 1,
    "dialog.get_profile_size_static": 1,
    "dialog.set_dlg_profile": 1,
    "dialog.set_dlg_profile_static": 1,
    "hdr.append_to_reply": 1,
    "xhttp.xhttp_reply": 1,
    "dialog.is_known_dlg": 1,
    "dialog.unset_dlg_profile": 1,
    "dialog.unset_dlg_profile_static": 1,
    "jsonrpcs.exec": 1,
    "forward": 1,
    "set_drop": None,
    "seturi": True,
    "htable.sht_get": None,  # no ban
    "htable.sht_inc": 1,  # first request of its window
    "htable.sht_setxi": 0,  # what 5.6.3 answers when it set the item
    "force_rport": True,
    "isdsturiset": False,
    "siputils.is_first_hop": 1,
    "nathelper.nat_uac_test": -1,
    "nathelper.set_contact_alias": 1,
    "nathelper.fix_nated_contact": 1,
    "nathelper.handle_ruri_alias": 2,
    "dispatcher.ds_select_dst": 1,
    "dispatcher.ds_next_dst": 1,
    "dispatcher.ds_mark_dst_state": 1,
    "hdr.remove": 1,
    "hdr.insert": 1,
    "textops.remove_hf_idx": 1,
    "tm.t_set_fr": 1,
    "tm.t_branch_timeout": 1,
    "tm.t_branch_replied": -1,
}
SDP_BODY = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
    "m=audio 4000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
)
NO_BODY = {"textops.has_body": -1, "textops.has_body_type": -1}  # what textops says then
MULTIPART_BODY = (  # an NG112 INVITE's body: the offer next to the caller's location
    "--b\r\nContent-Type: application/sdp\r\n\r\n"
    + SDP_BODY
    + "\r\n--b\r\nContent-Type: application/pidf+xml\r\n\r\n<presence/>\r\n--b--\r\n"
)
PVS = {"$stat(kha_cdr_written)": None, "$stat(kha_cdr_duplicate)": None, "$Ri": "10.0.0.2",
       "$Rp": 5060, "$pr": "udp", "$rU": "1000", "$rd": "10.0.0.2",
       "$ci": "call-1", "$si": "192.0.2.9", "$sp": 5060, "$dlg_var(kha_mflags)": None,
       "$avp(kha_mflags)": None, "$rm": "INVITE", "$var(kha_n)": 0, "$avp(kha_vip)": None,
       "$avp(kha_counted)": None, "$avp(kha_late)": None, "$rb": SDP_BODY,
       "$hdr(Authorization)": None, "$dlg(state)": "4", "$dlg_var(kha_late)": None,
       "$dlg_var(kha_prof)": None, "$ft": "ftag-1", "$tt": "ttag-1",
       "$jsonrpl(code)": "200", "$ua": "PBX/1.0", "$nh(u)": "sip:gw1:5060", "$fs": None,
       "$dlg_var(kha_nat)": None, "$dlg_var(kha_nmflags)": None, "$avp(kha_nat)": None,
       "$avp(kha_nmflags)": None, "$avp(kha_gws)": None, "$avp(kha_level)": None,
       "$hdr(P-Asserted-Identity)": None, "$hdr(Diversion)": None,
       "$dlg_var(kha_dst)": None, "$du": None, "$ru": "sip:1000@10.0.0.2",
       "$cT": "application/sdp"}  # fmt: skip


def make(**returns: Any) -> tuple[Router, FakeKSR]:
    ksr = FakeKSR(returns={**HAPPY, **returns}, pvs=dict(PVS))
    kamailio_log.install(ksr)
    holder = PolicyHolder(
        ksr, Path("/nonexistent/policy.yaml"), Path("/nonexistent"), POLICY, load=load_policy
    )
    return Router(ksr, holder, http_token=TOKEN), ksr


TOKEN = "s3cret"


def test_callback_names_are_router_methods() -> None:
    for name in (routes.MANAGE_REPLY, routes.MANAGE_BRANCH, routes.MANAGE_FAILURE):
        assert callable(getattr(Router, name))


def test_replies_of_transactions_run_no_core_reply_route() -> None:
    """A reply of a transaction runs only its MANAGE_REPLY; one no transaction matched runs
    SL_REPLY, which kamailio.cfg gives to tm's on_sl_reply."""
    cfg = (Path(__file__).resolve().parents[2] / "kamailio.cfg").read_text()
    assert re.search(r'^kemi\.reply_route_callback="none"$', cfg, re.M)
    (name,) = re.findall(r'^modparam\("tm", "on_sl_reply", "(\w+)"\)$', cfg, re.M)
    assert name == routes.SL_REPLY and callable(getattr(Router, name))


def test_the_end_of_an_answered_call_runs_python_only_when_the_cfg_could_not_write() -> None:
    """No dialog event_callback (it runs at every state change); event_route[dialog:end], the
    only route in kamailio.cfg, writes the record itself and calls a Router method only on its
    fallback paths (no facts, the write failed)."""
    cfg = (Path(__file__).resolve().parents[2] / "kamailio.cfg").read_text()
    assert not re.search(r'^modparam\("dialog", "event_callback"', cfg, re.M)
    routes_in_cfg = re.findall(r"^(\w*route\[[^\]]*\])", cfg, re.M)
    assert routes_in_cfg == ["event_route[dialog:end]"]
    route = cfg.split("event_route[dialog:end] {", 1)[1].split("\n}\n", 1)[0]
    names = re.findall(r'python_exec\("(\w+)"\)', route)
    assert len(names) == 2 and set(names) == {routes.DIALOG_END}
    assert callable(getattr(Router, routes.DIALOG_END))
    assert re.search(r"if \(!redis_cmd\(.*\) \{\n\t\tpython_exec", route)


def test_metrics_add_what_kamailio_counted_itself() -> None:
    """Records kamailio.cfg wrote (its statistics) are in kemi_ha_cdr_writes_total."""
    router, ksr = make(**{"pvx.shv_get": 0})
    ksr.pvs.update({"$hu": "/metrics", "$rm": "GET", "$stat(kha_cdr_written)": 7,
                    "$stat(kha_cdr_duplicate)": 2})  # fmt: skip
    router.ksr_xhttp_event(None, "xhttp:request")
    code, _reason, _type, page = next(c.args for c in ksr.calls if c.name == "xhttp.xhttp_reply")
    assert code == 200
    assert 'kemi_ha_cdr_writes_total{result="written"} 7.0' in page
    assert 'kemi_ha_cdr_writes_total{result="duplicate"} 2.0' in page
    assert page.count("# TYPE kemi_ha_cdr_writes_total counter") == 1


def test_initial_invite_offers_on_its_vip_set_then_relays_from_that_vip() -> None:
    router, ksr = make()
    router.ksr_request_route(None)
    names = ksr.names()
    assert ksr.called("rtpengine.set_rtpengine_set", 2)
    assert ksr.called("rtpengine.rtpengine_offer", "replace-origin ICE=remove")
    order = ["rtpengine.rtpengine_offer", "dialog.dlg_manage", "hdr.remove", "rr.record_route",
             "tm.t_relay"]  # fmt: skip
    assert [n for n in names if n in order] == order
    assert ksr.called("hdr.remove", "Route")  # preloaded routes: the policy routes the call
    assert ksr.called("setdsturi", "sip:gw1:5060")
    assert ksr.called("tm.t_on_failure", routes.MANAGE_FAILURE)
    assert ksr.called("corex.set_send_socket", "udp:10.0.0.2:5060")
    assert ksr.pvs[routes.AVP_DESTINATIONS] == "sip:gw1:5060 sip:gw2:5060"
    assert ksr.replies() == []


def test_the_same_invite_after_a_policy_swap_follows_the_new_policy() -> None:
    """INVITE plans are kept per policy: the same VIP, source and R-URI planned under the old
    policy are planned again under the new one (new flags, new destinations)."""
    router, ksr = make()
    router.ksr_request_route(None)
    assert ksr.called("rtpengine.rtpengine_offer", "replace-origin ICE=remove")
    router.policies.policy = parse_policy(
        POLICY_TEXT.replace(
            "media: {ice: remove, replace: [origin]}", "media: {ice: force}"
        ).replace('["sip:gw1:5060", "sip:gw2:5060"]', '["sip:gw3:5070;transport=tcp"]')
    )
    ksr.calls.clear()
    router.ksr_request_route(None)
    assert ksr.called(
        "rtpengine.rtpengine_offer", "replace-origin replace-session-connection ICE=force"
    )
    assert ksr.called("setdsturi", "sip:gw3:5070;transport=tcp")
    assert ksr.called("corex.set_send_socket", "tcp:10.0.0.2:5060")
    assert ksr.pvs[routes.AVP_DESTINATIONS] == "sip:gw3:5070;transport=tcp"


def test_max_forwards_exhausted_gets_483_and_no_relay() -> None:
    router, ksr = make(**{"maxfwd.process_maxfwd": -1})
    router.ksr_request_route(None)
    assert ksr.replies() == [(483, "Too Many Hops")]
    assert not ksr.called("tm.t_relay")


def test_insane_request_is_answered_by_sanity_and_stops() -> None:
    router, ksr = make(**{"sanity.sanity_check": -1})
    router.ksr_request_route(None)
    assert ksr.replies() == []  # sanity already sent its 400
    assert not ksr.called("tm.t_relay")


def test_offer_refused_gets_503_before_any_dialog() -> None:
    router, ksr = make(**{"rtpengine.rtpengine_offer": -1})
    router.ksr_request_route(None)
    assert ksr.replies() == [(503, "Media Relay Unavailable")]
    assert not ksr.called("dialog.dlg_manage")
    assert not ksr.called("tm.t_relay")


def test_relay_failure_releases_media_and_answers() -> None:
    router, ksr = make(**{"tm.t_relay": -1})
    router.ksr_request_route(None)
    assert ksr.called("sl.sl_reply_error")
    assert ksr.called("rtpengine.rtpengine_delete0")


def test_untrusted_source_gets_403_before_media() -> None:
    router, ksr = make()
    ksr.pvs["$si"] = "198.51.100.7"
    router.ksr_request_route(None)
    assert ksr.replies() == [(403, "Forbidden")]
    assert not ksr.called("rtpengine.rtpengine_offer")


def test_message_on_unknown_address_gets_500_without_media() -> None:
    router, ksr = make()
    ksr.pvs["$Ri"] = "10.9.9.9"
    router.ksr_request_route(None)
    assert ksr.replies() == [(500, "No Media Relay For This Address")]
    assert not ksr.called("rtpengine.rtpengine_offer")


def test_options_to_the_proxy_get_200() -> None:
    router, ksr = make(is_myself_ruri=True)
    ksr.pvs["$rm"] = "OPTIONS"
    router.ksr_request_route(None)
    assert ksr.replies() == [(200, "OK")]


@pytest.mark.parametrize("method", ["MESSAGE", "SUBSCRIBE", "FOO", "INV\u0131TE"])
def test_other_out_of_dialog_methods_get_405(method: str) -> None:
    router, ksr = make()
    ksr.pvs["$rm"] = method
    router.ksr_request_route(None)
    assert ksr.replies() == [(405, "Method Not Allowed")]


@pytest.mark.parametrize("method", ["invite", "Invite", "INVITE"])
def test_method_names_are_compared_without_case_as_kamailio_does(method: str) -> None:
    router, ksr = make()
    ksr.pvs["$rm"] = method
    router.ksr_request_route(None)
    assert ksr.called("tm.t_relay") and ksr.replies() == []
    assert not any(n.startswith("is_") for n in ksr.names())  # $rm read once instead


def test_in_dialog_bye_deletes_media_and_relays() -> None:
    router, ksr = make(**{"siputils.has_totag": 1})
    ksr.pvs["$rm"] = "BYE"
    router.ksr_request_route(None)
    assert ksr.called("rr.loose_route")
    names = ksr.names()  # the set selected right before the command (for this message only)
    assert names.index("rtpengine.set_rtpengine_set") + 1 == names.index(
        "rtpengine.rtpengine_delete0"
    )
    assert ksr.called("rtpengine.set_rtpengine_set", 2)
    assert ksr.called("tm.t_relay")
    assert not ksr.called("textops.has_body")  # a BYE's body changes nothing


def test_in_dialog_reinvite_with_sdp_is_offered() -> None:
    router, ksr = make(**{"siputils.has_totag": 1})
    router.ksr_request_route(None)
    assert ksr.called("rtpengine.rtpengine_offer")
    assert ksr.called("tm.t_on_reply", routes.MANAGE_REPLY)
    assert not ksr.called("dialog.dlg_manage")


def test_in_dialog_request_without_route_gets_404() -> None:
    router, ksr = make(**{"siputils.has_totag": 1, "rr.loose_route": -1})
    router.ksr_request_route(None)
    assert ksr.replies() == [(404, "Not here")]


def test_cancel_is_relayed_to_its_transaction() -> None:
    router, ksr = make(**{"tm.t_check_trans": 1})
    ksr.pvs["$rm"] = "CANCEL"
    router.ksr_request_route(None)
    assert ksr.called("tm.t_relay")
    assert not any(n.startswith("rtpengine.") for n in ksr.names())  # MANAGE_FAILURE's job


def test_reply_with_sdp_is_answered_on_the_vip_set() -> None:
    router, ksr = make()
    ksr.pvs["$rs"] = 200
    router.ksr_onreply_manage(None)
    names = ksr.names()
    assert ksr.called("rtpengine.set_rtpengine_set", 2)
    assert names.index("rtpengine.set_rtpengine_set") + 1 == names.index(
        "rtpengine.rtpengine_answer"
    )
    assert not ksr.called("rtpengine.rtpengine_offer")
    assert ksr.called("rtpengine.rtpengine_answer", "replace-origin ICE=remove")


@pytest.mark.parametrize("status", [183, 200])
def test_reply_whose_sdp_rtpengine_refused_is_dropped_not_relayed(status: int) -> None:
    """Relayed with the callee's own SDP, its media would go around the relay."""
    router, ksr = make(**{"rtpengine.rtpengine_answer": -1})
    ksr.pvs["$rs"] = status
    router.ksr_onreply_manage(None)
    assert ksr.called("rtpengine.rtpengine_answer")
    assert ksr.called("set_drop")


def test_reply_rtpengine_answered_is_relayed() -> None:
    router, ksr = make()
    ksr.pvs["$rs"] = 200
    router.ksr_onreply_manage(None)
    assert not ksr.called("set_drop")


def test_reply_answer_uses_the_flags_chosen_for_the_invite() -> None:
    router, ksr = make()
    ksr.pvs["$rs"] = 183
    ksr.pvs[routes.AVP_MEDIA_FLAGS] = "ICE=remove transport-protocol=RTP/AVP"
    router.ksr_onreply_manage(None)
    assert ksr.called("rtpengine.rtpengine_answer", "ICE=remove transport-protocol=RTP/AVP")


def test_no_branch_route_for_fixed_destinations() -> None:
    """A branch route only keeps a dispatched INVITE's gateway (tests/unit/test_gateways.py);
    nothing in a branch talks to rtpengine."""
    router, ksr = make()
    router.ksr_request_route(None)
    assert not ksr.called("tm.t_on_branch")
    assert ksr.called("tm.t_on_reply", routes.MANAGE_REPLY)


@pytest.mark.parametrize(("status", "next_hop"), [(503, "sip:gw2:5060"), (408, "sip:gw2:5060")])
def test_failure_route_fails_over(status: int, next_hop: str) -> None:
    router, ksr = make(**{"tm.t_get_status_code": status})
    ksr.pvs[routes.AVP_DESTINATIONS] = "sip:gw1:5060 sip:gw2:5060"
    ksr.pvs[routes.AVP_TRIED] = 0
    ksr.pvs["$ru"] = "sip:1000@10.0.0.2"
    ksr.returns["seturi"] = True
    router.ksr_failure_manage(None)
    assert ksr.called("setdsturi", next_hop)
    # the R-URI marked new (unchanged), or tm forwards no branch from a failure route
    assert ksr.called("seturi", "sip:1000@10.0.0.2")
    assert ksr.names().index("seturi") < ksr.names().index("tm.t_relay")
    assert ksr.pvs[routes.AVP_TRIED] == 1
    assert not ksr.called("rtpengine.rtpengine_delete0")


@pytest.mark.parametrize("status", [486, 603])
def test_failure_route_final_answer_releases_media(status: int) -> None:
    router, ksr = make(**{"tm.t_get_status_code": status})
    ksr.pvs[routes.AVP_DESTINATIONS] = "sip:gw1:5060 sip:gw2:5060"
    ksr.pvs[routes.AVP_TRIED] = 0
    router.ksr_failure_manage(None)
    assert ksr.called("rtpengine.rtpengine_delete0")
    assert not ksr.called("tm.t_relay")


def test_cancelled_transaction_releases_media() -> None:
    router, ksr = make(**{"tm.t_is_canceled": 1})
    router.ksr_failure_manage(None)
    assert ksr.called("rtpengine.rtpengine_delete0")
    assert not ksr.called("tm.t_relay")


def test_exception_in_request_route_is_logged_and_answered_500() -> None:
    def boom() -> int:
        raise RuntimeError("boom")

    router, ksr = make(**{"dialog.dlg_manage": boom})
    assert router.ksr_request_route(None) == 1
    assert ksr.replies() == [(500, "Server Internal Error")]
    errors = [c.args[0] for c in ksr.calls if c.name == "err"]
    assert any("call-1" in line and "boom" in line and "Traceback" in line for line in errors)


def test_exception_in_reply_route_drops_the_reply() -> None:
    router, ksr = make()
    del ksr.pvs["$Ri"]  # reading it raises in the fake
    router.ksr_onreply_manage(None)
    assert ksr.called("set_drop")
    assert any("exception in reply route" in c.args[0] for c in ksr.calls if c.name == "err")


def test_reload_of_a_broken_file_is_refused_over_http(tmp_path: Path) -> None:
    router, ksr = make()
    bad = tmp_path / "policy.yaml"
    bad.write_text("version: x\nvips: []\nroutes: []\n")
    router.policies.policy_path = bad
    ksr.pvs["$hu"], ksr.pvs["$rm"] = "/policy/reload", "POST"
    ksr.pvs["$hdr(Authorization)"] = f"Bearer {TOKEN}"
    router.ksr_xhttp_event(None, "xhttp:request")
    (code, reason, ctype, body) = next(c.args for c in ksr.calls if c.name == "xhttp.xhttp_reply")
    assert (code, reason, ctype) == (422, "Policy Refused", "application/json")
    assert "at least one VIP is required" in body
    assert not ksr.called("pvx.shv_seti")
    assert router.policies.current() is POLICY


def test_reload_publishes_a_generation_every_worker_picks_up(tmp_path: Path) -> None:
    router, ksr = make(**{"pvx.shv_seti": 1, "pvx.shv_sets": 1})
    good = tmp_path / "policy.yaml"
    good.write_text(POLICY_TEXT.replace("version: t", "version: t2"))
    router.policies.policy_path = good
    router.policies.snapshot_dir = tmp_path
    assert router.policies.reload()[0]
    assert ksr.called("pvx.shv_seti", "kha_policy_gen", 1)
    # another worker: same snapshot dir, sees generation 1 before its next message
    other, _ = make(**{"pvx.shv_get": 1})
    other.policies.snapshot_dir = tmp_path
    assert other.policies.current().version == "t2"


LIMITED = parse_policy(
    POLICY_TEXT + "global_limit: {max: 2, code: 503, retry_after: 7}\n"
    "tenants: [{name: acme, sources: ['192.0.2.0/28'], limit: {max: 5, code: 486}}]\n"
)


def make_limited(global_count: int, tenant_count: int) -> tuple[Router, FakeKSR]:
    router, ksr = make()
    router.policies.policy = LIMITED

    def size(*args: Any) -> int:
        ksr.pvs["$var(kha_n)"] = global_count if len(args) == 2 else tenant_count
        return 1

    ksr.returns["dialog.get_profile_size_static"] = size
    ksr.returns["dialog.get_profile_size"] = size
    return router, ksr


def test_limit_reached_refuses_before_any_media_with_retry_after() -> None:
    router, ksr = make_limited(global_count=2, tenant_count=0)
    router.ksr_request_route(None)
    assert ksr.called("hdr.append_to_reply", "Retry-After: 7\r\n")
    assert ksr.replies() == [(503, "Channel Limit Reached")]
    assert not ksr.called("rtpengine.rtpengine_offer")
    assert not ksr.called("dialog.dlg_manage")


def test_tenant_limit_uses_its_own_code() -> None:
    router, ksr = make_limited(global_count=0, tenant_count=5)
    router.ksr_request_route(None)
    assert ksr.replies() == [(486, "Channel Limit Reached")]


def test_admitted_call_is_counted_in_its_profiles() -> None:
    router, ksr = make_limited(global_count=1, tenant_count=4)
    router.ksr_request_route(None)
    assert ksr.called("dialog.set_dlg_profile_static", "kha_global")
    assert ksr.called("dialog.set_dlg_profile", "kha_tenant", "acme")
    assert ksr.called("tm.t_relay")


@pytest.mark.parametrize(
    ("source", "user", "known", "accepted"),
    [
        ("10.0.0.9", "dialog", True, True),  # configured peer, known to DMQ
        ("10.0.0.9", "notification_peer", False, True),  # a peer introducing itself
        ("10.0.0.9", "dialog", False, False),  # configured, but not (yet) a DMQ node
        ("198.51.100.1", "dialog", True, False),  # not a configured peer
        ("127.0.0.1", "notification_peer", False, True),  # this node, alone
    ],
)
def test_kdmq_only_from_configured_peers(
    source: str, user: str, known: bool, accepted: bool
) -> None:
    router, ksr = make(**{"dmq.is_from_node": 1 if known else -1, "dmq.handle_message": 1})
    ksr.pvs["$rm"] = "KDMQ"
    router.policies.policy = parse_policy(POLICY_TEXT + "dmq_peers: ['sip:10.0.0.9:5090']\n")
    ksr.pvs["$si"], ksr.pvs["$rU"] = source, user
    router.ksr_request_route(None)
    assert ksr.called("dmq.handle_message") is accepted
    assert ksr.replies() == ([] if accepted else [(403, "Forbidden")])
    assert not ksr.called("dialog.dlg_manage")


# ----- hostile and unusual SIP (issue 12) ---------------------------------------------------


@pytest.mark.parametrize(
    ("pvs", "reply"),
    [
        ({"$rU": b"1\xff00"}, (400, "Bad Request-URI")),
        ({"$rd": b"ex\xc3\x28ample.com"}, (400, "Bad Request-URI")),
        ({"$rU": "1000\u00e9"}, None),  # valid UTF-8 (though not legal SIP): routed as text
        ({"$rb": SDP_BODY.replace("m=audio 4000 RTP/AVP 8\r\n", "")}, (488, "Not Acceptable Here")),
        ({"$rb": SDP_BODY + "m=audio 4002 RTP/AVP 8\r\n" * 16}, (488, "Not Acceptable Here")),
        ({"$rb": b"v=0\r\n\xff\xfe"}, (488, "Not Acceptable Here")),
    ],
    ids=["ruri-user-bytes", "ruri-domain-bytes", "ruri-utf8", "sdp-no-m", "sdp-17-m", "sdp-bytes"],
)
def test_hostile_initial_invite_is_refused_before_media(
    pvs: dict[str, Any], reply: tuple[int, str] | None
) -> None:
    router, ksr = make()
    ksr.pvs.update(pvs)
    router.ksr_request_route(None)
    assert not any("exception in" in c.args[0] for c in ksr.calls if c.name == "err")
    if reply is None:
        assert ksr.called("tm.t_relay")
        return
    assert ksr.replies() == [reply]
    assert not ksr.called("rtpengine.rtpengine_offer")
    assert not ksr.called("dialog.dlg_manage")
    assert "rtpengine" not in str(ksr.calls[-1])


def test_offer_refused_deletes_what_rtpengine_kept() -> None:
    router, ksr = make(**{"rtpengine.rtpengine_offer": -1})
    router.ksr_request_route(None)
    assert ksr.called("rtpengine.rtpengine_delete0")


def test_late_offer_invite_marks_the_transaction_and_the_2xx_offers() -> None:
    router, ksr = make(**NO_BODY)
    router.ksr_request_route(None)
    assert not ksr.called("rtpengine.rtpengine_offer")
    assert ksr.pvs[routes.AVP_LATE] == 1 and ksr.called("tm.t_relay")
    router, ksr = make()
    ksr.pvs.update({"$rs": 200, routes.AVP_LATE: 1})
    router.ksr_onreply_manage(None)
    assert ksr.called("rtpengine.rtpengine_offer", "replace-origin ICE=remove")
    assert not ksr.called("rtpengine.rtpengine_answer")


@pytest.mark.parametrize(
    ("content_type", "body", "offered", "late", "refused"),
    [
        ("multipart/mixed;boundary=b", MULTIPART_BODY, True, False, None),
        ('multipart/mixed; boundary="b"', MULTIPART_BODY, True, False, None),
        # SIP-I: the ISUP alone, no SDP: a late offer like an INVITE without body
        ("multipart/mixed;boundary=b",
         "--b\r\nContent-Type: application/isup\r\n\r\n\\x01\\x00\r\n--b--\r\n",
         False, True, None),
        ("application/isup", "\\x01\\x00", False, True, None),
        # an SDP rtpengine's module would not find: refused, never relayed past the relay
        ("multipart/alternative;boundary=b", MULTIPART_BODY, False, False, 488),
        ("multipart/mixed;boundary=b", MULTIPART_BODY.replace("c=IN IP4 192.0.2.9", "c=x"),
         False, False, 488),
    ],
    ids=["mixed", "mixed-quoted-boundary", "mixed-isup-only", "isup", "alternative",
         "mixed-bad-sdp-part"],
)  # fmt: skip
def test_initial_invite_finds_its_sdp_in_a_multipart_body(
    content_type: str, body: str, offered: bool, late: bool, refused: int | None
) -> None:
    """RFC 5621: the offer may be a part of a multipart/mixed body (NG112's location, SIP-I's
    ISUP); rtpengine's module rewrites that part, so it is offered like a plain SDP."""
    router, ksr = make(**{"textops.has_body_type": -1})  # a body, but not application/sdp
    ksr.pvs.update({"$cT": content_type, "$rb": body})
    router.ksr_request_route(None)
    assert ksr.called("rtpengine.rtpengine_offer", "replace-origin ICE=remove") is offered
    assert (ksr.pvs.get(routes.AVP_LATE) == 1) is late
    if refused is None:
        assert ksr.replies() == [] and ksr.called("tm.t_relay")
    else:
        assert [code for code, _ in ksr.replies()] == [refused]
        assert not ksr.called("tm.t_relay") and not ksr.called("dialog.dlg_manage")


def test_reply_with_sdp_in_a_multipart_body_is_answered() -> None:
    router, ksr = make(**{"textops.has_body_type": -1})
    ksr.pvs.update({"$rs": 200, "$cT": "multipart/mixed;boundary=b", "$rb": MULTIPART_BODY})
    router.ksr_onreply_manage(None)
    assert ksr.called("rtpengine.rtpengine_answer", "replace-origin ICE=remove")
    assert not ksr.called("set_drop")


@pytest.mark.parametrize(
    ("method", "sdp", "late", "command"),
    [
        ("INVITE", True, False, "rtpengine.rtpengine_offer"),  # re-INVITE with an offer
        ("INVITE", False, True, None),  # re-INVITE without SDP: the 2xx offers
        ("UPDATE", True, False, "rtpengine.rtpengine_offer"),
        ("UPDATE", False, False, None),
        ("ACK", True, False, "rtpengine.rtpengine_answer"),  # the answer of a late offer
        ("BYE", False, False, "rtpengine.rtpengine_delete0"),
        ("PRACK", True, False, "rtpengine.rtpengine_offer"),  # the 1xx answered: a new offer
        ("PRACK", False, False, None),
    ],
)
def test_in_dialog_offer_answer_by_direction(
    method: str, sdp: bool, late: bool, command: str | None
) -> None:
    router, ksr = make(
        **{
            "siputils.has_totag": 1,
            "textops.has_body": 1 if sdp else -1,
            "textops.has_body_type": 1 if sdp else -1,
        },
    )
    ksr.pvs["$rm"] = method
    router.ksr_request_route(None)
    rtp = [n for n in ksr.names() if n.startswith("rtpengine.rtpengine_")]
    assert rtp == ([command] if command else [])
    assert (ksr.pvs.get(routes.AVP_LATE) == 1) is late
    assert ksr.called("tm.t_relay")
    if command == "rtpengine.rtpengine_offer":  # its 2xx answers: MANAGE_REPLY armed
        assert ksr.called("tm.t_on_reply", routes.MANAGE_REPLY)


def test_prack_of_a_late_offer_answers_the_reliable_1xx_offer() -> None:
    """RFC 3262 5: the INVITE had no SDP, so its first reliable 1xx offered (MANAGE_REPLY sent
    that SDP to rtpengine as the offer) and the PRACK's SDP is the answer."""
    router, ksr = make(**{"siputils.has_totag": 1})
    ksr.pvs.update({"$rm": "PRACK", routes.DLG_LATE: "1"})
    router.ksr_request_route(None)
    assert [n for n in ksr.names() if n.startswith("rtpengine.rtpengine_")] == [
        "rtpengine.rtpengine_answer"
    ]
    assert ksr.called("rtpengine.set_rtpengine_set", 2) and ksr.called("tm.t_relay")
    assert not ksr.called("tm.t_on_reply")  # its 200 carries no SDP to answer


def test_prack_with_an_sdp_rtpengine_must_not_see_gets_488() -> None:
    router, ksr = make(**{"siputils.has_totag": 1})
    ksr.pvs.update({"$rm": "PRACK", routes.DLG_LATE: "1", "$rb": "v=0\r\nc=IN IP4 192.0.2.1\r\n"})
    router.ksr_request_route(None)
    assert [code for code, _ in ksr.replies()] == [488]
    assert not ksr.called("tm.t_relay")
    assert not [n for n in ksr.names() if n.startswith("rtpengine.rtpengine_")]


NO_DIALOG = (481, "Call/Transaction Does Not Exist")


@pytest.mark.parametrize(
    ("method", "replies"), [("BYE", [NO_DIALOG]), ("INVITE", [NO_DIALOG]), ("ACK", [])]
)
def test_in_dialog_request_of_no_known_dialog_gets_481_without_media(
    method: str, replies: list[tuple[int, str]]
) -> None:
    router, ksr = make(**{"siputils.has_totag": 1, "dialog.is_known_dlg": -1})
    router.started_ms -= takeover.RESYNC_WINDOW_MS  # up for a while: the peers' dialogs are in
    ksr.pvs["$rm"] = method
    router.ksr_request_route(None)
    assert ksr.replies() == replies
    assert not any(n.startswith("rtpengine.") for n in ksr.names())
    assert not ksr.called("tm.t_relay")


@pytest.mark.parametrize(("dmq", "replies"), [(True, []), (False, [NO_DIALOG])])
def test_right_after_a_restart_with_dmq_an_unknown_dialogs_bye_waits_for_its_retransmission(
    dmq: bool, replies: list[tuple[int, str]]
) -> None:
    """Its dialog may still be on its way from a peer (drill kamailio-crash: BYEs and
    re-INVITEs sent during the restart got 481 and their calls' dialogs stayed up)."""
    router, ksr = make(**{"siputils.has_totag": 1, "dialog.is_known_dlg": -1})
    router.dmq = dmq
    ksr.pvs["$rm"] = "BYE"
    router.ksr_request_route(None)
    assert ksr.replies() == replies
    assert not ksr.called("tm.t_relay") and not ksr.called("rtpengine.rtpengine_delete0")


@pytest.mark.parametrize(("known", "dropped"), [(1, False), (-1, True)],
                         ids=["stray-known-dialog", "stray-unknown"])  # fmt: skip
def test_reply_without_transaction_passes_only_for_a_known_dialog(
    known: int, dropped: bool
) -> None:
    router, ksr = make(**{"dialog.is_known_dlg": known})
    ksr.pvs["$rs"] = 200
    router.ksr_sl_reply(None, "on_sl_reply")
    assert ksr.called("set_drop") is dropped
    # a known dialog's orphan: its SDP answered on the VIP's set here
    assert ksr.called("rtpengine.set_rtpengine_set") is not dropped


def test_reply_with_sdp_rtpengine_must_not_see_is_dropped() -> None:
    router, ksr = make()
    ksr.pvs.update({"$rs": 200, "$rb": "v=0\r\nc=IN IP4 192.0.2.1\r\n"})
    router.ksr_onreply_manage(None)
    assert ksr.called("set_drop")
    assert not ksr.called("rtpengine.rtpengine_answer")


@pytest.mark.parametrize(
    ("method", "path", "authorization", "code"),
    [
        ("POST", "/policy/reload", None, 403),
        ("POST", "/policy/reload", "Bearer wrong", 403),
        ("POST", "/policy/reload", b"Bearer \xff", 403),
        ("DELETE", "/metrics", None, 403),
        ("GET", "/metrics", None, 200),
        ("GET", b"/m\xffetrics", None, 404),
    ],
)
def test_management_http_needs_the_token_to_change_state(
    method: str, path: str | bytes, authorization: str | bytes | None, code: int
) -> None:
    router, ksr = make(**{"pvx.shv_get": 0})
    ksr.pvs.update({"$hu": path, "$rm": method, "$hdr(Authorization)": authorization})
    router.ksr_xhttp_event(None, "xhttp:request")
    assert next(c.args for c in ksr.calls if c.name == "xhttp.xhttp_reply")[0] == code
    assert not any("exception in" in c.args[0] for c in ksr.calls if c.name == "err")


def test_without_a_token_no_state_change_is_accepted() -> None:
    router, ksr = make()
    router.http_authorization = b""
    ksr.pvs.update({"$hu": "/policy/reload", "$rm": "POST", "$hdr(Authorization)": "Bearer "})
    router.ksr_xhttp_event(None, "xhttp:request")
    assert next(c.args for c in ksr.calls if c.name == "xhttp.xhttp_reply")[0] == 403


# ----- calls caught mid-setup by a takeover (issue 13) --------------------------------------

ORPHAN = {"dialog.is_known_dlg": 1, "dmq.bcast_message": 1}


def make_orphan_reply(status: int, method: str = "INVITE", state: str = "2",
                      **returns: Any) -> tuple[Router, FakeKSR]:  # fmt: skip
    router, ksr = make(**{**ORPHAN, **returns})
    ksr.pvs.update({"$rs": status, "$rm": method, "$dlg(state)": state,
                    "$dlg(h_entry)": "7", "$dlg(h_id)": "1"})  # fmt: skip
    return router, ksr


@pytest.mark.parametrize("retransmission", [1, 2, 3])
def test_orphan_200_is_answered_on_the_vip_set_with_the_dialog_flags(retransmission: int) -> None:
    """Each (re)transmitted 200 of a dead node's INVITE: the same answer, forwarded by Via."""
    router, ksr = make_orphan_reply(200)
    ksr.pvs[routes.DLG_MEDIA_FLAGS] = "ICE=remove trust-address"
    for _ in range(retransmission):
        router.ksr_sl_reply(None, "on_sl_reply")
    answers = [c for c in ksr.calls if c.name == "rtpengine.rtpengine_answer"]
    assert answers == [answers[0]] * retransmission
    assert answers[0].args == ("ICE=remove trust-address",)
    assert ksr.called("rtpengine.set_rtpengine_set", 2)
    assert not ksr.called("set_drop")
    assert not ksr.called("tm.t_relay")  # the core forwards it statelessly


def test_orphan_2xx_of_a_late_offer_offers() -> None:
    router, ksr = make_orphan_reply(200)
    ksr.pvs[routes.DLG_LATE] = "1"
    router.ksr_sl_reply(None, "on_sl_reply")
    assert ksr.called("rtpengine.rtpengine_offer", "replace-origin ICE=remove")
    assert not ksr.called("rtpengine.rtpengine_answer")


def test_orphan_reply_whose_answer_failed_is_dropped() -> None:
    router, ksr = make_orphan_reply(200, **{"rtpengine.rtpengine_answer": -1})
    router.ksr_sl_reply(None, "on_sl_reply")
    assert ksr.called("set_drop")


def test_orphan_reply_of_an_unknown_dialog_is_dropped_without_media() -> None:
    router, ksr = make_orphan_reply(200, **{"dialog.is_known_dlg": -1})
    router.ksr_sl_reply(None, "on_sl_reply")
    assert ksr.called("set_drop")
    assert not any(n.startswith("rtpengine.") for n in ksr.names())


def test_orphan_180_without_sdp_is_forwarded_untouched() -> None:
    router, ksr = make_orphan_reply(180, **NO_BODY)
    router.ksr_sl_reply(None, "on_sl_reply")
    assert not ksr.called("set_drop")
    assert not ksr.called("rtpengine.rtpengine_answer")


def test_orphan_487_ends_the_call_media_channels_and_dialog() -> None:
    router, ksr = make_orphan_reply(487, **NO_BODY)
    ksr.pvs[routes.DLG_PROFILES] = "kha_tenant=acme"
    router.ksr_sl_reply(None, "on_sl_reply")
    assert ksr.called("rtpengine.rtpengine_delete0")
    assert ksr.called("dialog.unset_dlg_profile_static", "kha_global")
    assert ksr.called("dialog.unset_dlg_profile", "kha_tenant", "acme")
    confirm, delete = [c.args[0] for c in ksr.calls if c.name == "jsonrpcs.exec"]
    assert '"dlg.set_state"' in confirm and '["call-1", "ftag-1", "ttag-1", 4]' in confirm
    assert '"dlg.set_state"' in delete and '["call-1", "ftag-1", "ttag-1", 5]' in delete
    assert not ksr.called("set_drop")  # the caller gets its 487


@pytest.mark.parametrize(("dmq", "code", "told"), [(True, "200", True), (False, "200", False),
                                                   (True, "500", False)])  # fmt: skip
def test_an_orphan_call_ended_here_is_ended_on_the_peers_too(
    dmq: bool, code: str, told: bool
) -> None:
    """dlg.set_state replicates nothing: the peers get the dialog module's own "remove"."""
    router, ksr = make_orphan_reply(487, **NO_BODY)
    router.dmq = dmq
    ksr.pvs.update({"$dlg(h_entry)": "1016", "$dlg(h_id)": "166673", "$jsonrpl(code)": code})
    router.ksr_sl_reply(None, "on_sl_reply")
    sent = [c.args for c in ksr.calls if c.name == "dmq.bcast_message"]
    assert sent == ([("dialog", '{"action":3,"h_entry":1016,"h_id":166673}',
                      "application/json")] if told else [])  # fmt: skip


def test_orphan_200_to_a_cancel_is_forwarded_untouched() -> None:
    router, ksr = make_orphan_reply(200, method="CANCEL", **NO_BODY)
    router.ksr_sl_reply(None, "on_sl_reply")
    assert not any(n.startswith("rtpengine.rtpengine_") for n in ksr.names())
    assert not ksr.called("jsonrpcs.exec") and not ksr.called("set_drop")


def in_dialog_ack(state: str, **returns: Any) -> tuple[Router, FakeKSR]:
    router, ksr = make(**{"siputils.has_totag": 1, **NO_BODY, **returns})
    ksr.pvs.update({"$rm": "ACK", "$dlg(state)": state})
    return router, ksr


@pytest.mark.parametrize(("state", "confirmed"), [("2", True), ("1", True), ("4", False)])
def test_ack_on_an_early_copy_confirms_it_by_rpc_then_relays(state: str, confirmed: bool) -> None:
    router, ksr = in_dialog_ack(state)
    router.ksr_request_route(None)
    commands = [c.args[0] for c in ksr.calls if c.name == "jsonrpcs.exec"]
    assert len(commands) == (1 if confirmed else 0)
    if confirmed:
        assert '"params": ["call-1", "ftag-1", "ttag-1", 4]' in commands[0]
    assert ksr.called("tm.t_relay")


def in_dialog_bye(state: str, **returns: Any) -> tuple[Router, FakeKSR]:
    router, ksr = make(**{"siputils.has_totag": 1, **NO_BODY, **returns})
    ksr.pvs.update({"$rm": "BYE", "$dlg(state)": state})
    return router, ksr


@pytest.mark.parametrize(("state", "dmq", "confirmed"), [("2", True, True), ("1", True, True),
                                                         ("4", True, False), ("3", True, False),
                                                         ("2", False, False)])  # fmt: skip
def test_bye_on_an_early_copy_confirms_it_before_loose_route(
    state: str, dmq: bool, confirmed: bool
) -> None:
    """Its ACK reached no live node: confirmed first, so that the dialog module (at loose_route)
    ends it on this BYE; a single node never reads the state for a BYE."""
    router, ksr = in_dialog_bye(state)
    router.dmq = dmq
    router.ksr_request_route(None)
    names = ksr.names()
    commands = [c.args[0] for c in ksr.calls if c.name == "jsonrpcs.exec"]
    assert len(commands) == (1 if confirmed else 0)
    if confirmed:
        assert '"params": ["call-1", "ftag-1", "ttag-1", 4]' in commands[0]
        assert names.index("jsonrpcs.exec") < names.index("rr.loose_route")
    assert ksr.called("rtpengine.rtpengine_delete0") and ksr.called("tm.t_relay")


@pytest.mark.parametrize(("node", "invite_after_start", "confirmed"), [
    ("n", True, False),  # this node's call since this Kamailio started: its INVITE may be here
    ("n", False, True),  # this node's call from before a restart: its transaction is gone
    ("other", True, True),  # another node's call
])  # fmt: skip
def test_bye_on_an_early_dialog_of_our_own_invite_follows_kamailio(
    node: str, invite_after_start: bool, confirmed: bool
) -> None:
    from kemi.shell.hygiene import DLG_SETUP, CallRecords
    from tests.unit.test_cdr import FACTS, Writer

    router, ksr = in_dialog_bye("2")
    router.calls = CallRecords(ksr, "n", Writer(), router._policy, clock_ms=lambda: 0)
    router.node_address = "n"
    facts = dataclasses.replace(FACTS, node=node)
    router.started_ms = facts.invite_ms + (-1 if invite_after_start else 1)
    ksr.pvs[DLG_SETUP] = facts.encode()
    router.ksr_request_route(None)
    assert ksr.called("jsonrpcs.exec") is confirmed


def test_failed_confirmation_is_logged_and_the_ack_still_relayed() -> None:
    router, ksr = in_dialog_ack("2")
    ksr.pvs["$jsonrpl(code)"] = "500"
    router.ksr_request_route(None)
    assert any("dialog confirm by RPC failed" in c.args[0] for c in ksr.calls if c.name == "err")
    assert ksr.called("tm.t_relay")


def test_orphan_cancel_is_forwarded_statelessly_to_the_routed_destination() -> None:
    router, ksr = make()
    ksr.pvs["$rm"] = "CANCEL"
    ksr.pvs["$pr"] = "tcp"  # it came over TCP: it leaves with the destination's transport
    router.ksr_request_route(None)
    assert ksr.called("setdsturi", "sip:gw1:5060")
    assert ksr.called("corex.set_send_socket", "udp:10.0.0.2:5060")
    assert ksr.called("forward")
    assert not ksr.called("tm.t_relay") and ksr.replies() == []


def test_cancel_of_no_transaction_and_no_dialog_is_ignored() -> None:
    router, ksr = make(**{"dialog.is_known_dlg": -1})
    ksr.pvs["$rm"] = "CANCEL"
    router.ksr_request_route(None)
    assert not ksr.called("forward") and not ksr.called("tm.t_relay")


def test_orphan_cancel_from_an_untrusted_source_is_not_forwarded() -> None:
    router, ksr = make()
    ksr.pvs.update({"$rm": "CANCEL", "$si": "198.51.100.7"})
    router.ksr_request_route(None)
    assert not ksr.called("forward")


def test_ack_of_a_negative_reply_without_transaction_is_forwarded_statelessly() -> None:
    router, ksr = in_dialog_ack("5", **{"rr.loose_route": -1})
    router.ksr_request_route(None)
    assert ksr.called("setdsturi", "sip:gw1:5060")
    assert ksr.called("forward")
    assert not ksr.called("jsonrpcs.exec")


def test_initial_invite_keeps_late_offer_and_profiles_in_the_dialog() -> None:
    router, ksr = make_limited(global_count=0, tenant_count=0)
    ksr.returns["textops.has_body"] = ksr.returns["textops.has_body_type"] = -1
    router.ksr_request_route(None)
    assert ksr.pvs[routes.DLG_LATE] == "1"
    assert ksr.pvs[routes.DLG_PROFILES] == "kha_tenant=acme"


# ----- NAT traversal and transports (issue 17) ------------------------------------------

NAT_POLICY = parse_policy(
    POLICY_TEXT
    + 'tenants:\n  - name: phones\n    sources: ["192.0.2.0/28"]\n    nat: {mode: detect}\n'
    + '  - name: pbx\n    sources: ["192.0.2.16/28"]\n    nat: {mode: always, contact: rewrite}\n'
)


def make_nat(source: str = "192.0.2.9", **returns: Any) -> tuple[Router, FakeKSR]:
    router, ksr = make(**returns)
    router.policies.policy = NAT_POLICY
    ksr.pvs["$si"] = source
    return router, ksr


def test_every_request_gets_rport_forced() -> None:
    router, ksr = make(is_myself_ruri=True)
    ksr.pvs["$rm"] = "OPTIONS"
    router.ksr_request_route(None)
    assert ksr.called("force_rport")


def test_natted_caller_gets_a_contact_alias_and_nat_media_flags() -> None:
    router, ksr = make_nat(**{"nathelper.nat_uac_test": 1})
    router.ksr_request_route(None)
    assert ksr.called("nathelper.nat_uac_test", 19)
    assert ksr.called("nathelper.set_contact_alias")
    nat_flags = "replace-origin ICE=remove SIP-source-address symmetric replace-session-connection"
    assert ksr.called("rtpengine.rtpengine_offer", nat_flags)
    assert ksr.pvs[routes.DLG_NAT] == "detect/alias"
    assert ksr.pvs[routes.DLG_NAT_FLAGS] == nat_flags
    # the other party's: the VIP's own, so not written (read back as the VIP's)
    assert ksr.pvs[routes.DLG_MEDIA_FLAGS] is None
    assert router.dialog_media_flags(NAT_POLICY.vips[1]) == "replace-origin ICE=remove"


def test_caller_not_natted_keeps_its_contact_and_the_plain_flags() -> None:
    router, ksr = make_nat()
    router.ksr_request_route(None)
    assert ksr.called("nathelper.nat_uac_test", 19)
    assert not ksr.called("nathelper.set_contact_alias")
    assert ksr.called("rtpengine.rtpengine_offer", "replace-origin ICE=remove")


def test_a_contact_is_fixed_only_by_its_first_hop() -> None:
    router, ksr = make_nat(**{"nathelper.nat_uac_test": 1, "siputils.is_first_hop": -1})
    router.ksr_request_route(None)
    assert not ksr.called("nathelper.set_contact_alias")


def test_always_mode_rewrites_the_contact_without_asking_nathelper() -> None:
    router, ksr = make_nat("192.0.2.20")
    router.ksr_request_route(None)
    assert not ksr.called("nathelper.nat_uac_test")
    assert ksr.called("nathelper.fix_nated_contact")
    assert not ksr.called("nathelper.set_contact_alias")


def test_never_mode_asks_nothing_over_udp_but_a_tcp_caller_gets_an_alias() -> None:
    router, ksr = make()
    router.ksr_request_route(None)
    assert not ksr.called("nathelper.nat_uac_test")
    assert not ksr.called("nathelper.set_contact_alias")
    assert not ksr.called("siputils.is_first_hop")
    router, ksr = make()
    ksr.pvs["$pr"] = "tcp"
    router.ksr_request_route(None)
    assert not ksr.called("nathelper.nat_uac_test")
    assert ksr.called("nathelper.set_contact_alias")


@pytest.mark.parametrize(
    ("next_hop", "socket"),
    [("sip:gw1:5060", "udp:10.0.0.2:5060"), ("sip:gw1:5060;transport=tcp", "tcp:10.0.0.2:5060"),
     ("sip:gw1;transport=tls", "tls:10.0.0.2:5061"), ("sips:gw1", "tls:10.0.0.2:5061")],
)  # fmt: skip
def test_relay_leaves_the_vip_with_the_next_hops_transport(next_hop: str, socket: str) -> None:
    router, ksr = make()
    router.policies.policy = parse_policy(POLICY_TEXT.replace("sip:gw1:5060", next_hop))
    ksr.pvs["$pr"] = "tls"  # whatever it came in on: a leg change gets two Record-Routes
    router.ksr_request_route(None)  # the initial INVITE: its next hop is the one it just set
    assert ksr.called("setdsturi", next_hop)
    assert [c.args for c in ksr.calls if c.name == "corex.set_send_socket"] == [(socket,)]
    router, ksr = in_dialog()  # in a dialog: the next hop Kamailio computed ($nh(u))
    ksr.pvs["$nh(u)"] = next_hop
    router.ksr_request_route(None)
    assert [c.args for c in ksr.calls if c.name == "corex.set_send_socket"] == [(socket,)]


def in_dialog(method: str = "BYE", **returns: Any) -> tuple[Router, FakeKSR]:
    router, ksr = make_nat(**{"siputils.has_totag": 1, **returns})
    ksr.pvs["$rm"] = method
    return router, ksr


def test_in_dialog_socket_chosen_by_loose_route_stays() -> None:
    router, ksr = in_dialog()
    ksr.pvs["$fs"] = "tcp:10.0.0.2:5060"  # the second of our two Route headers
    router.ksr_request_route(None)
    assert not ksr.called("corex.set_send_socket")
    assert ksr.called("tm.t_relay")


def test_in_dialog_request_to_an_aliased_contact_goes_back_through_it() -> None:
    router, ksr = in_dialog()
    router.ksr_request_route(None)
    names = ksr.names()
    assert names.index("rr.loose_route") < names.index("nathelper.handle_ruri_alias")
    assert names.index("nathelper.handle_ruri_alias") < names.index("tm.t_relay")
    router, ksr = in_dialog(isdsturiset=True)  # a destination is set already: it stays
    router.ksr_request_route(None)
    assert not ksr.called("nathelper.handle_ruri_alias")


def test_in_dialog_offer_of_a_natted_sender_uses_the_dialogs_nat_flags() -> None:
    router, ksr = in_dialog("INVITE", **{"nathelper.nat_uac_test": 1})
    ksr.pvs.update({routes.DLG_NAT: "detect/alias", routes.DLG_NAT_FLAGS: "nat-flags",
                    routes.DLG_MEDIA_FLAGS: "plain-flags"})  # fmt: skip
    router.ksr_request_route(None)
    assert ksr.called("rtpengine.rtpengine_offer", "nat-flags")
    assert ksr.called("nathelper.set_contact_alias")
    assert ksr.pvs[routes.AVP_MEDIA_FLAGS] == "plain-flags"  # the answerer's own test decides
    assert ksr.pvs[routes.AVP_NAT] == "detect/alias"


def test_in_dialog_offer_of_a_dialog_without_nat_never_asks_nathelper() -> None:
    router, ksr = in_dialog("INVITE")
    ksr.pvs[routes.DLG_MEDIA_FLAGS] = "plain-flags"
    router.ksr_request_route(None)
    assert not ksr.called("nathelper.nat_uac_test")
    assert ksr.called("rtpengine.rtpengine_offer", "plain-flags")


@pytest.mark.parametrize(("detected", "flags"), [(1, "nat-flags"), (-1, "plain-flags")])
def test_reply_of_a_natted_party_is_answered_with_nat_flags_and_aliased(
    detected: int, flags: str
) -> None:
    router, ksr = make(**{"nathelper.nat_uac_test": detected})
    ksr.pvs.update({"$rs": 200, routes.AVP_NAT: "detect/alias", routes.AVP_NAT_FLAGS: "nat-flags",
                    routes.AVP_MEDIA_FLAGS: "plain-flags"})  # fmt: skip
    router.ksr_onreply_manage(None)
    assert ksr.called("nathelper.nat_uac_test", 1)
    assert ksr.called("rtpengine.rtpengine_answer", flags)
    assert ksr.called("nathelper.set_contact_alias") is (detected > 0)


def test_a_call_without_nat_handling_keeps_nothing_of_it_in_the_dialog() -> None:
    router, ksr = make()
    router.ksr_request_route(None)
    assert routes.DLG_NAT not in ksr.pvs or ksr.pvs[routes.DLG_NAT] is None
    assert routes.AVP_NAT not in ksr.pvs or ksr.pvs[routes.AVP_NAT] is None


# ----- hot path (issue 18): nothing written or read that changes nothing ------------------


def in_dialog_request(method: str, local: str = "10.0.0.2") -> tuple[Router, FakeKSR]:
    router, ksr = make(**{"siputils.has_totag": 1})
    ksr.pvs.update({"$rm": method, "$Ri": local})
    return router, ksr


def test_hot_counters_count_under_their_labels() -> None:
    """The routes' own children of the hot counters (issue 18) count the same samples as
    .labels(...).inc(): the method label (an unknown method: "other"), the rtpengine set
    ("none" off a VIP)."""
    bye, other = metrics.INDIALOG.labels("BYE"), metrics.INDIALOG.labels("other")
    on_vip = metrics.RTPENGINE_CALLS.labels("2", "delete")
    off_vip = metrics.RTPENGINE_CALLS.labels("none", "delete")
    before = [c.get() for c in (bye, other, on_vip, off_vip)]
    router, ksr = in_dialog_request("BYE")
    router.ksr_request_route(None)
    router.ksr_request_route(None)
    ksr.pvs["$rm"] = "FOO"
    router.ksr_request_route(None)
    router, ksr = in_dialog_request("BYE", local="10.9.9.9")
    router.ksr_request_route(None)
    after = [c.get() for c in (bye, other, on_vip, off_vip)]
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 1, 2, 1]


def test_a_forked_process_counts_into_its_own_store() -> None:
    """child_init drops what the router kept of the parent's metric file: what a Kamailio
    child counts is its own (metrics.after_fork), the route-time histogram included."""
    router, _ = in_dialog_request("BYE")
    router.ksr_request_route(None)
    router.child_init(1)  # as Kamailio calls it in each child after the fork
    router.ksr_request_route(None)
    router.ksr_request_route(None)
    assert metrics.INDIALOG.labels("BYE").get() == 2
    assert metrics.RTPENGINE_CALLS.labels("2", "delete").get() == 2
    histogram = routes.ROUTE_SECONDS
    assert histogram.view is not None  # reopened for this process
    assert sum(histogram.view[slot] for slot in histogram.slots) == 2


def test_the_final_result_of_an_initial_invite_is_counted_once() -> None:
    router, ksr = make()
    router.ksr_request_route(None)  # the initial INVITE marks its transaction (kha_vip)
    counter = metrics.INVITES.labels("10.0.0.2", "2xx")
    before = counter.get()
    ksr.pvs["$rs"] = 200
    router.ksr_onreply_manage(None)
    router.ksr_onreply_manage(None)  # a retransmitted or forked 2xx
    assert counter.get() == before + 1
    assert ksr.pvs[routes.AVP_VIP] is None  # the marker removed, nothing else written


def test_the_answer_time_is_kept_at_the_initial_invites_2xx_only() -> None:
    """No dialog:start callback (kamailio.cfg): MANAGE_REPLY keeps it, once per call."""
    from kemi.shell.hygiene import DLG_ANSWER, CallRecords
    from tests.unit.test_cdr import Writer

    router, ksr = make()
    now = [1_000_000_000_000]
    router.calls = CallRecords(ksr, "n", Writer(), router._policy, clock_ms=lambda: now[0])
    ksr.pvs.update({"$fU": "alice", "$fd": "a.example", "$rs": 180})
    router.ksr_request_route(None)
    router.ksr_onreply_manage(None)
    assert ksr.pvs.get(DLG_ANSWER) is None  # a provisional reply: not answered
    ksr.pvs["$rs"] = 200
    now[0] += 1234
    router.ksr_onreply_manage(None)
    now[0] += 1000
    router.ksr_onreply_manage(None)  # a retransmitted 2xx: the first answer stays
    assert ksr.pvs[DLG_ANSWER] == "1000000001234"
    ksr.pvs[DLG_ANSWER] = None
    ksr.returns["siputils.has_totag"] = 1  # a re-INVITE: its 2xx is not the answer
    router.ksr_request_route(None)
    router.ksr_onreply_manage(None)
    assert ksr.called("rr.loose_route") and ksr.pvs[DLG_ANSWER] is None


def test_a_tenants_own_media_flags_are_kept_for_the_dialog_and_the_replies() -> None:
    router, ksr = make()
    router.policies.policy = parse_policy(
        POLICY_TEXT + "tenants: [{name: acme, sources: ['192.0.2.0/28'],"
        " media: {codec_mask: [opus]}}]\n"
    )
    router.ksr_request_route(None)
    flags = ksr.pvs[routes.DLG_MEDIA_FLAGS]
    assert flags and flags != router.policies.policy.vips[1].media_flags
    assert ksr.pvs[routes.AVP_MEDIA_FLAGS] == flags


def test_an_ack_on_a_node_without_dmq_peers_does_not_read_the_dialog_state() -> None:
    router, ksr = in_dialog_ack("2")
    router.dmq = False  # only a DMQ copy can be early at its ACK
    router.ksr_request_route(None)
    assert not ksr.called("pv.get", routes.DLG_STATE)
    assert not ksr.called("jsonrpcs.exec") and ksr.called("tm.t_relay")
