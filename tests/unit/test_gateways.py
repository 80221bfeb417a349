# ruff: noqa: E501  (expected messages are kept whole, one per line)
"""Gateway sets (issue 16): policy validation, dispatcher list, priorities and weights, number
rewriting, the DISPATCH/REWRITE steps and the gateway failover against the strict fake KSR."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from kemi.core import dispatch
from kemi.core.compile import percentages
from kemi.core.decide import Admit, InviteFacts, decide_invite
from kemi.core.numbers import Rewrite, header_action, rewrite_header, rewrite_user
from kemi.ops.status import render_gateways
from kemi.policyfile import parse_policy
from kemi.shell import routes
from kemi.shell.gateways import GatewayList
from kemi.shell.pv import Pv
from tests.fakes.ksr import FakeKSR
from tests.unit.test_policy_validation import errors_of
from tests.unit.test_routes import POLICY, make

GW = """\
version: t
vips:
  - address: 10.0.0.1
    rtpengine: ["udp:10.0.0.1:2223"]
routes:
  - name: out
    gateway_set: carriers
gateway_sets:
  - name: carriers
    gateways:
      - {uri: "sip:10.9.0.1:5060", priority: 10, weight: 50}
      - {uri: "sip:10.9.0.2:5060", priority: 10, weight: 25}
      - {uri: "sip:10.9.0.3:5060"}
"""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GW.replace("gateway_set: carriers", "gateway_set: nobody"),
         "p.yaml:7:5: routes[0].gateway_set: unknown gateway set 'nobody'"),
        (GW.replace("gateway_set: carriers", "gateway_set: carriers\n    destinations: ['sip:x']"),
         "p.yaml:7:5: routes[0].gateway_set: give destinations or a gateway_set, not both"),
        (GW.replace("    gateway_set: carriers\n", ""),
         "p.yaml:6:5: routes[0].destinations: a route needs at least one destination (or a gateway_set)"),
        (GW.replace("weight: 50", "weight: 0"),
         "p.yaml:11:50: gateway_sets[0].gateways[0].weight: must be 1-100 (got 0)"),
        (GW.replace("priority: 10, weight: 25", "priority: -1, weight: 25"),
         "p.yaml:12:36: gateway_sets[0].gateways[1].priority: must not be negative (got -1)"),
        (GW.replace('"sip:10.9.0.3:5060"', '"10.9.0.3"'),
         "p.yaml:13:10: gateway_sets[0].gateways[2].uri: not a SIP URI: '10.9.0.3'"),
        (GW.replace('"sip:10.9.0.2:5060"', '"sip:10.9.0.1:5060"'),
         "p.yaml:12:10: gateway_sets[0].gateways[1].uri: sip:10.9.0.1:5060 twice in this set"),
        (GW + "  - name: carriers\n    gateways: []\n",
         "p.yaml:14:5: gateway_sets[1].name: duplicate gateway set name 'carriers'"),
        (GW + "  - name: empty\n    gateways: []\n",
         "p.yaml:15:5: gateway_sets[1].gateways: a gateway set needs at least one gateway"),
        (GW.replace("algorithm", "x") + "    algorithm: round-robin\n",
         "p.yaml:14:5: gateway_sets[0].algorithm: must be one of relative-weight, weight"),
        (GW.replace("gateways:", "timeout_ms: 50\n    gateways:", 1),
         "p.yaml:10:5: gateway_sets[0].timeout_ms: must be 100-60000 (got 50)"),
        (GW + "probing: {interval: 0}\n", "p.yaml:14:11: probing.interval: must be at least 1 (got 0)"),
        (GW + "probing: {reply_codes: ['404', '4x']}\n",
         "p.yaml:14:32: probing.reply_codes[1]: a code like '404' or a class like '4xx' (got '4x')"),
        (GW.replace("gateway_set: carriers", "gateway_set: carriers\n    rewrite: {e164: true}"),
         "p.yaml:8:5: routes[0].rewrite.country_code: e164 needs a country code of 1-3 digits"),
        (GW.replace("gateway_set: carriers", "gateway_set: carriers\n    rewrite: {prefix: 'a b'}"),
         "p.yaml:8:15: routes[0].rewrite.prefix: not a user prefix: 'a b'"),
        (GW.replace("gateway_set: carriers", "gateway_set: carriers\n    rewrite: {pai: drop}"),
         "p.yaml:8:15: routes[0].rewrite.pai: must be one of keep, remove, normalise"),
        (GW.replace("routes:", "trunks:\n  - {name: t, sources: [10.1.0.0/16], rewrite: {strip: -1}}\nroutes:"),
         "p.yaml:6:49: trunks[0].rewrite.strip: must not be negative"),
    ],
)  # fmt: skip
def test_gateway_fields_errors_name_file_line_field_and_reason(text: str, expected: str) -> None:
    assert any(line.startswith(expected) for line in errors_of(text)), errors_of(text)


def test_one_dispatcher_set_per_priority_highest_first() -> None:
    policy = parse_policy(GW)
    gws = policy.gateway_sets["carriers"]
    assert gws.levels == (1, 2) and gws.algorithm == 11 and gws.retry_after == 30
    assert [(d.set_id, d.priority, d.gateways) for d in policy.dispatcher_sets] == [
        (1, 10, (("sip:10.9.0.1:5060", 50), ("sip:10.9.0.2:5060", 25))),
        (2, 0, (("sip:10.9.0.3:5060", 1),)),
    ]
    assert gws.first_uri == "sip:10.9.0.1:5060"


def test_weight_algorithm_gets_shares_of_100() -> None:
    policy = parse_policy(GW.replace("gateways:", "algorithm: weight\n    gateways:", 1))
    assert policy.gateway_sets["carriers"].algorithm == 9
    assert policy.dispatcher_sets[0].gateways == (
        ("sip:10.9.0.1:5060", 67),
        ("sip:10.9.0.2:5060", 33),
    )
    assert percentages([1, 1, 1]) == [34, 33, 33]
    assert sum(percentages([7, 3, 90, 13])) == 100


def test_dispatcher_list_file_keeps_gateways_known_down() -> None:
    policy = parse_policy(GW)
    text = dispatch.dispatcher_list(policy.dispatcher_sets, frozenset({"sip:10.9.0.2:5060"}))
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        "1 sip:10.9.0.1:5060 0 10 weight=50;rweight=50",
        "1 sip:10.9.0.2:5060 9 10 weight=25;rweight=25",
        "2 sip:10.9.0.3:5060 0 0 weight=1;rweight=1",
    ]


def test_probing_renders_reply_codes() -> None:
    policy = parse_policy(GW + "probing: {interval: 2, reply_codes: ['4xx', '501']}\n")
    assert policy.probing.interval == 2
    assert policy.probing.reply_codes == "class=4;code=501"


LISTING = {"NRSETS": 2, "RECORDS": [
    {"SET": {"ID": 1, "TARGETS": [
        {"DEST": {"URI": "sip:10.9.0.1:5060", "FLAGS": "AP", "PRIORITY": 10,
                  "LATENCY": {"AVG": 1.5, "STD": 0.1, "EST": 1.4, "MAX": 3, "TIMEOUT": 0}}},
        {"DEST": {"URI": "sip:10.9.0.2:5060", "FLAGS": "IP", "PRIORITY": 10}}]}},
    {"SET": {"ID": 2, "TARGETS": [{"DEST": {"URI": "sip:10.9.0.3:5060", "FLAGS": "TX"}}]}},
]}  # fmt: skip


def test_gateway_states_from_dispatcher_list() -> None:
    policy = parse_policy(GW)
    states = dispatch.gateway_states(policy, LISTING)
    assert [(g.uri, g.state, g.probing, g.latency_ms) for g in states] == [
        ("sip:10.9.0.1:5060", "up", True, 1.5),
        ("sip:10.9.0.2:5060", "down", True, None),
        ("sip:10.9.0.3:5060", "trying", False, None),
    ]
    assert dispatch.sets_up(policy, states) == {"carriers": 2}
    assert dispatch.down_uris(states) == {"sip:10.9.0.2:5060"}
    unknown = dispatch.gateway_states(policy, {})
    assert {g.state for g in unknown} == {"unknown"}
    assert dispatch.sets_up(policy, unknown) == {"carriers": 0}


DE = Rewrite(e164=True, country_code="49")


@pytest.mark.parametrize(
    ("user", "rewrite", "expected"),
    [
        ("03012345", DE, "+493012345"),
        ("004412345", DE, "+4412345"),
        ("+4412345", DE, "+4412345"),
        ("12345", DE, "12345"),  # neither national nor international: as it is
        ("alice", DE, "alice"),
        ("03012345", Rewrite(e164=True, country_code="49", strip_plus=True), "493012345"),
        ("03012345", Rewrite(strip=1, prefix="0049"), "00493012345"),
        ("903012345", Rewrite(strip=1, e164=True, country_code="49", prefix="77#"), "77#+493012345"),
        ("+493012345", Rewrite(strip_plus=True, prefix="1#"), "1#493012345"),
    ],
)  # fmt: skip
def test_rewrite_user(user: str, rewrite: Rewrite, expected: str) -> None:
    assert rewrite_user(user, rewrite) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<sip:03012345@pbx.example;user=phone>", "<sip:+493012345@pbx.example;user=phone>"),
        ('"Desk, 1" <tel:0049301>;x=1', '"Desk, 1" <tel:+49301>;x=1'),
        ("<sip:0301@h>;reason=busy,<sip:0302@h>", "<sip:+49301@h>;reason=busy,<sip:+49302@h>"),
        ("<sip:pbx.example>", "<sip:pbx.example>"),
        ("sip:0301@h", "sip:+49301@h"),
    ],
)
def test_identity_headers_are_normalised(value: str, expected: str) -> None:
    rule = Rewrite(e164=True, country_code="49", pai="normalise")
    assert rewrite_header(value, (rule,), "pai") == expected


def test_header_action_remove_wins() -> None:
    keep, norm, drop = Rewrite(), Rewrite(pai="normalise"), Rewrite(pai="remove")
    assert header_action((keep,), "pai") == "keep"
    assert header_action((norm, keep), "pai") == "normalise"
    assert header_action((norm, drop), "pai") == "remove"


def test_trunk_rewrite_comes_before_the_route_lookup_and_route_rewrite_after() -> None:
    text = GW.replace(
        "routes:",
        """trunks:
  - name: pbx
    sources: [10.1.0.0/16]
    rewrite: {e164: true, country_code: "49", pai: normalise}
routes:
  - name: germany
    prefix: "+49"
    gateway_set: carriers
    rewrite: {plus: strip, prefix: "77#", diversion: remove}""",
    )
    policy = parse_policy(text)
    decision = decide_invite(policy, InviteFacts("10.0.0.1", "10.1.2.3", "03012345", "x"))
    assert isinstance(decision, Admit)
    assert decision.route.name == "germany"
    assert decision.ruri_user == "77#493012345"
    assert header_action(decision.identity, "pai") == "normalise"
    assert header_action(decision.identity, "diversion") == "remove"
    plain = decide_invite(policy, InviteFacts("10.0.0.1", "127.0.0.1", "1000", "x"))
    assert isinstance(plain, Admit) and plain.ruri_user == "1000" and plain.identity == ()


# ----- the shell, against the strict fake KSR (tests.unit.test_routes.POLICY) ---------------

CARRIER = {"$rU": "90301234", "$hdr(P-Asserted-Identity)": "<sip:0301@pbx>",
           "$hdr(Diversion)": "<sip:0302@pbx>"}  # fmt: skip


def invite(**returns: Any) -> Any:
    router, ksr = make(**returns)
    ksr.pvs.update(CARRIER)
    router.ksr_request_route(None)
    return ksr


def test_invite_to_a_gateway_set_is_dispatched_rewritten_then_relayed() -> None:
    ksr = invite()
    carriers = POLICY.gateway_sets["carriers"]
    assert ksr.called("dispatcher.ds_select_dst", carriers.levels[0], 11)
    assert not ksr.called("setdsturi")  # dispatcher set $du
    assert ksr.called("tm.t_set_fr", 0, 800)  # the set's own branch timeout
    assert ksr.pvs["$rU"] == "+49301234"
    assert ksr.called("textops.remove_hf_idx", "P-Asserted-Identity", 0)
    assert ksr.called("hdr.insert", "P-Asserted-Identity: <sip:+49301@pbx>\r\n")
    assert ksr.called("hdr.remove", "Diversion")
    assert ksr.pvs[routes.AVP_GATEWAYS] == "carriers"
    assert Pv(ksr).number(routes.AVP_LEVEL) == 0  # not written: unset reads as 0
    assert ksr.called("tm.t_on_branch", routes.MANAGE_BRANCH)  # keeps each branch's gateway
    names = ksr.names()
    order = ["dispatcher.ds_select_dst", "rtpengine.rtpengine_offer", "tm.t_relay"]
    assert [n for n in names if n in order] == order


def test_highest_priority_all_down_goes_to_the_next_priority() -> None:
    ksr = invite(**{"dispatcher.ds_select_dst": lambda s, alg: 1 if s == 2 else -1})
    assert [c.args for c in ksr.calls if c.name == "dispatcher.ds_select_dst"] == [(1, 11), (2, 11)]
    assert ksr.pvs[routes.AVP_LEVEL] == 1
    assert ksr.called("tm.t_relay")


def test_no_gateway_up_is_503_with_retry_after_at_once_before_any_media() -> None:
    ksr = invite(**{"dispatcher.ds_select_dst": -1})
    assert ksr.replies() == [(503, "No Gateway Available")]
    assert ksr.called("hdr.append_to_reply", "Retry-After: 30\r\n")
    assert not ksr.called("rtpengine.rtpengine_offer")
    assert not ksr.called("dialog.dlg_manage")
    assert not ksr.called("tm.t_relay")


def failure(status: int, level: int = 0, **returns: Any) -> Any:
    router, ksr = make(**{"tm.t_get_status_code": status, **returns})
    ksr.pvs.update({routes.AVP_GATEWAYS: "carriers", routes.AVP_LEVEL: level})
    router.ksr_failure_manage(None)
    return ksr


def test_timeout_marks_the_gateway_down_and_tries_the_next_of_its_priority() -> None:
    ksr = failure(408)
    names = ksr.names()
    assert names.index("dispatcher.ds_mark_dst_state") < names.index("dispatcher.ds_next_dst")
    assert ksr.called("dispatcher.ds_mark_dst_state", "ip")
    assert ksr.called("tm.t_relay")
    assert not ksr.called("dispatcher.ds_select_dst")


def test_a_408_the_gateway_sent_is_an_answer_it_is_not_marked_down() -> None:
    ksr = failure(408, **{"tm.t_branch_replied": 1})
    assert not ksr.called("dispatcher.ds_mark_dst_state")
    assert ksr.called("dispatcher.ds_next_dst") and ksr.called("tm.t_relay")
    assert dispatch.marks_down(408, timed_out=True, replied=False)
    assert not dispatch.marks_down(408, timed_out=False, replied=False)
    assert not dispatch.marks_down(503, timed_out=True, replied=False)


def test_5xx_fails_over_without_marking_then_next_priority_when_the_set_is_spent() -> None:
    ksr = failure(503, **{"dispatcher.ds_next_dst": -1})
    assert not ksr.called("dispatcher.ds_mark_dst_state")
    assert ksr.called("dispatcher.ds_select_dst", 2, 11)
    assert ksr.pvs[routes.AVP_LEVEL] == 1
    assert ksr.called("tm.t_relay")


def test_last_priority_spent_or_final_answer_ends_with_media_deleted() -> None:
    for ksr in (failure(500, level=1, **{"dispatcher.ds_next_dst": -1}), failure(486)):
        assert not ksr.called("tm.t_relay")
        assert ksr.called("rtpengine.rtpengine_delete0")


# ----- reload: the dispatcher list follows the policy -------------------------------------


def test_reload_writes_the_list_keeps_down_gateways_down_and_reloads_dispatcher(
    tmp_path: Path,
) -> None:
    ksr = FakeKSR(returns={"dispatcher.ds_reload": 1})
    path = tmp_path / "dispatcher.list"
    old = parse_policy(GW)
    new = parse_policy(GW.replace("weight: 25", "weight: 40"))
    assert GatewayList(ksr, path, lambda: LISTING).publish(old, new) is None
    assert "1 sip:10.9.0.2:5060 9 10 weight=40;rweight=40" in path.read_text()
    assert ksr.names() == ["dispatcher.ds_reload"]
    # the same list again: nothing to reload
    assert GatewayList(ksr, path, lambda: LISTING).publish(new, new) is None
    assert ksr.names() == ["dispatcher.ds_reload"]


def test_a_list_dispatcher_refuses_is_put_back_and_the_reload_refused(tmp_path: Path) -> None:
    ksr = FakeKSR(returns={"dispatcher.ds_reload": -1})
    path = tmp_path / "dispatcher.list"
    path.write_text("# the list in force\n")
    problem = GatewayList(ksr, path, dict).publish(POLICY, parse_policy(GW))
    assert problem is not None and "refused the gateway list" in problem
    assert path.read_text() == "# the list in force\n"
    router, _ = make()
    router.policies.publish = lambda old, new: "dispatcher refused"
    router.policies.policy_path = tmp_path / "p.yaml"
    router.policies.policy_path.write_text(GW)
    assert router.policies.reload() == (False, ["dispatcher refused"])
    assert router.policies.current() is POLICY


# ----- status and metrics ----------------------------------------------------------------


def test_scrape_shows_every_gateway_and_gateways_up_per_set() -> None:
    router, _ = make()
    router.policies.policy = parse_policy(GW)
    router.gateway_listing = lambda: LISTING
    gauges = {g.name: g for g in router.scrape_state()}
    up = dict(gauges["kemi_ha_gateway_up"].samples)
    assert up[("carriers", "10", "sip:10.9.0.2:5060")] == 0.0
    assert up[("carriers", "0", "sip:10.9.0.3:5060")] == 1.0
    assert gauges["kemi_ha_gateway_set_up"].samples == [(("carriers",), 2.0)]
    assert gauges["kemi_ha_gateway_latency_seconds"].samples == [
        (("carriers", "10", "sip:10.9.0.1:5060"), 0.0015)
    ]
    router.gateway_listing = lambda: 1 / 0  # RPC down: the scrape still answers, 0 up
    gauges = {g.name: g for g in router.scrape_state()}
    assert gauges["kemi_ha_gateway_set_up"].samples == [(("carriers",), 0.0)]


def test_status_lists_gateways_and_sets_with_none_up() -> None:
    states = dispatch.gateway_states(parse_policy(GW), LISTING)
    lines = render_gateways([dataclasses.asdict(g) for g in states], [])
    assert lines[2].split() == ["sip:10.9.0.1:5060", "(carriers,", "10)", "up", "P", "1.5ms"]
    assert lines[3].split()[-3:] == ["down", "P", "-"]
    assert lines[-1] == "gateway sets with no gateway up: none"
    assert render_gateways([], []) == []


def test_a_dispatched_branch_keeps_its_gateway_for_a_forward_after_takeover() -> None:
    router, ksr = make()
    ksr.pvs.update({routes.AVP_GATEWAYS: "carriers", "$du": "sip:carrier-b:5060"})
    router.ksr_branch_manage(None)
    assert ksr.pvs[routes.DLG_GATEWAY] == "sip:carrier-b:5060"
    cancel, ksr = make()  # on the node that took the VIP over
    ksr.pvs.update({**CARRIER, "$rm": "CANCEL", routes.DLG_GATEWAY: "sip:carrier-b:5060"})
    cancel.ksr_request_route(None)
    assert ksr.called("setdsturi", "sip:carrier-b:5060") and ksr.called("forward")
    plain, ksr = make()  # no gateway kept: the route's first
    ksr.pvs.update({**CARRIER, "$rm": "CANCEL"})
    plain.ksr_request_route(None)
    assert ksr.called("setdsturi", "sip:carrier-a:5060")
