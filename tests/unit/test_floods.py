"""Floods and scanners (issue 17 part 3): the pure decisions, then the shell's htable calls
against the strict fake KSR (kha_ban is replicated over DMQ by htable itself)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from kemi.core import floods
from kemi.core.structure import SpecError
from kemi.policyfile import parse_policy
from tests.unit.test_routes import POLICY_TEXT, make

FLOOD_POLICY = parse_policy(
    POLICY_TEXT
    + """trunks:
  - {name: carrier, sources: ["198.51.100.0/24"]}
dmq_peers: ["sip:10.0.0.7:5090"]
floods:
  max_requests: 3
  ban_s: 60
  exempt: ["203.0.113.0/25"]
  scanner_user_agents: ["friendly-scanner", "SIPVicious"]
"""
)
GUARD = FLOOD_POLICY.floods
STRANGER = "203.0.113.200"


@pytest.mark.parametrize(
    "source",
    ["192.0.2.9", "198.51.100.3", "10.0.0.7", "203.0.113.5", "127.0.0.1", "::1"],
    ids=["trusted peer", "trunk", "DMQ peer", "floods.exempt", "loopback", "IPv6 loopback"],
)
def test_trusted_trunks_peers_and_exempt_networks_are_exempt(source: str) -> None:
    assert floods.is_exempt(GUARD, source)


@pytest.mark.parametrize("source", [STRANGER, "10.0.0.8", "not-an-address", ""])
def test_anyone_else_is_counted(source: str) -> None:
    assert not floods.is_exempt(GUARD, source)


@pytest.mark.parametrize(
    ("agent", "scanner"),
    [("friendly-scanner", True), ("sipvicious 0.3.4", True), ("X FRIENDLY-SCANNER/1", True),
     ("Asterisk PBX 18", False), ("", False)],
)  # fmt: skip
def test_scanner_user_agents_match_case_insensitively_as_substrings(
    agent: str, scanner: bool
) -> None:
    assert floods.is_scanner(GUARD, agent) is scanner


def test_default_policy_knows_the_well_known_scanners() -> None:
    guard = parse_policy(POLICY_TEXT).floods
    assert guard.enabled and guard.max_requests == 100 and guard.ban_s == 600
    for agent in ("friendly-scanner", "sipcli/v1.8", "VaxSIPUserAgent/3.1", "iWar", "sundayddr"):
        assert floods.is_scanner(guard, agent), agent


def test_an_empty_scanner_list_matches_nothing() -> None:
    guard = parse_policy(POLICY_TEXT + "floods: {scanner_user_agents: []}\n").floods
    assert guard.scanner_ua is None
    assert not floods.is_scanner(guard, "friendly-scanner")


def test_rate_window_and_ban_arithmetic() -> None:
    assert floods.window_key("10.0.0.8", 1000.9, 1) == "10.0.0.8/1000"
    assert floods.window_key("10.0.0.8", 1001.0, 2) == "10.0.0.8/500"
    assert [floods.over_rate(GUARD, n) for n in (3, 4, 5)] == [False, True, True]
    assert [floods.bans_now(GUARD, n) for n in (3, 4, 5)] == [False, True, False]
    assert floods.ban_active(1060, 1059.5) and not floods.ban_active(1060, 1060.0)
    assert not floods.ban_active(None, 0) and not floods.ban_active("x", 0)
    assert not floods.ban_active(True, 0)


def test_bans_from_an_htable_dump_keep_those_in_force() -> None:
    dump = [
        {"entry": 3, "size": 2, "slot": [
            {"item": {"name": "203.0.113.200", "value": 1100, "type": "int"}},
            {"item": {"name": "203.0.113.201", "value": 900, "type": "int"}},
        ]},
        {"entry": 7, "size": 1, "slot": {"item": {"name": "10.9.9.9", "value": "1200"}}},
    ]  # fmt: skip
    bans = floods.bans_from_dump(dump, 1000.0)
    assert bans == [floods.Ban("10.9.9.9", 1200, 200), floods.Ban("203.0.113.200", 1100, 100)]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("floods: {max_requests: 0}\n", "floods.max_requests: must be at least 1"),
        ("floods: {window_s: 0}\n", "floods.window_s: must be 1..60 seconds"),
        ("floods: {ban_s: 100000}\n", "floods.ban_s: must be 1..86400 seconds"),
        ("floods: {exempt: ['10.0.0.1/8']}\n", "floods.exempt[0]: bad CIDR"),
        ("floods: {scanner_user_agents: [' ']}\n", "floods.scanner_user_agents[0]: an empty"),
        ("floods: {ban_time: 5}\n", "floods.ban_time: unknown key (did you mean 'ban_s'?)"),
        ("floods: {enabled: 1}\n", "floods.enabled: must be true or false"),
        ("dmq_peers: ['sip:node2.example:5090']\n", "dmq_peers[0]: a DMQ peer is an IP"),
    ],
)
def test_bad_flood_fields_are_reported_with_their_line(text: str, where: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_policy(POLICY_TEXT + text, "p.yaml")
    line = POLICY_TEXT.count("\n") + 1
    assert any(m.startswith(f"p.yaml:{line}:") and where in m for m in err.value.messages), (
        err.value.messages
    )


# ----- the shell -----------------------------------------------------------------------


def flood_router(**returns: Any) -> Any:
    router, ksr = make(**returns)
    router.policies.policy = FLOOD_POLICY
    return router, ksr


def htable_calls(ksr: Any) -> list[tuple[str, tuple[Any, ...]]]:
    return [(c.name, c.args) for c in ksr.calls if c.name.startswith("htable.")]


def test_an_exempt_source_touches_no_htable() -> None:
    router, ksr = flood_router()
    ksr.pvs["$si"] = "198.51.100.3"  # the trunk
    router.ksr_request_route(None)
    assert htable_calls(ksr) == []
    assert ksr.called("tm.t_relay")


def test_a_stranger_is_counted_in_its_window_then_routed() -> None:
    router, ksr = flood_router()
    ksr.pvs["$si"] = STRANGER
    router.ksr_request_route(None)
    calls = htable_calls(ksr)
    assert calls[0] == ("htable.sht_get", ("kha_ban", STRANGER))
    name, (table, key) = calls[1]
    assert (name, table) == ("htable.sht_inc", "kha_rate") and key.startswith(f"{STRANGER}/")
    assert ksr.replies() == [(403, "Forbidden")]  # not trusted: the INVITE is refused


def test_the_request_past_the_rate_bans_the_source_and_is_dropped() -> None:
    router, ksr = flood_router(**{"htable.sht_inc": 4})
    ksr.pvs["$si"] = STRANGER
    before = time.time()
    router.ksr_request_route(None)
    (ban,) = [c for c in ksr.calls if c.name == "htable.sht_setxi"]
    table, source, until, seconds = ban.args
    assert (table, source, seconds) == ("kha_ban", STRANGER, 60)
    assert int(before) + 60 <= until <= int(time.time()) + 60
    assert ksr.replies() == [] and not ksr.called("maxfwd.process_maxfwd")


def test_a_ban_htable_refused_is_logged_as_an_error_and_the_request_still_dropped() -> None:
    router, ksr = flood_router(**{"htable.sht_inc": 4, "htable.sht_setxi": -1})
    ksr.pvs["$si"] = STRANGER
    router.ksr_request_route(None)
    errors = [c.args[0] for c in ksr.calls if c.name == "err"]
    assert any(f"could not ban source {STRANGER}" in e for e in errors), errors
    assert ksr.replies() == []


def test_requests_beyond_the_one_that_banned_are_dropped_without_banning_again() -> None:
    router, ksr = flood_router(**{"htable.sht_inc": 9})
    ksr.pvs["$si"] = STRANGER
    router.ksr_request_route(None)
    assert not ksr.called("htable.sht_setxi")
    assert ksr.replies() == [] and not ksr.called("tm.t_relay")


def test_a_banned_source_is_dropped_before_anything_else() -> None:
    router, ksr = flood_router(**{"htable.sht_get": int(time.time()) + 30})
    ksr.pvs["$si"] = STRANGER
    router.ksr_request_route(None)
    assert htable_calls(ksr) == [("htable.sht_get", ("kha_ban", STRANGER))]
    assert ksr.replies() == [] and not ksr.called("sanity.sanity_check")


def test_a_ban_whose_end_passed_no_longer_drops() -> None:
    router, ksr = flood_router(**{"htable.sht_get": int(time.time()) - 1})
    ksr.pvs["$si"] = STRANGER
    router.ksr_request_route(None)
    assert ksr.called("htable.sht_inc")
    assert ksr.replies() == [(403, "Forbidden")]


def test_a_scanner_is_dropped_and_banned_without_being_counted() -> None:
    router, ksr = flood_router()
    ksr.pvs.update({"$si": STRANGER, "$ua": "friendly-scanner"})
    router.ksr_request_route(None)
    assert ksr.called("htable.sht_setxi")
    assert not ksr.called("htable.sht_inc")
    assert ksr.replies() == []


def test_a_scanner_from_a_trusted_peer_is_not_banned() -> None:
    router, ksr = flood_router()
    ksr.pvs.update({"$si": "192.0.2.9", "$ua": "friendly-scanner"})
    router.ksr_request_route(None)
    assert htable_calls(ksr) == []


def test_disabled_floods_touch_no_htable() -> None:
    router, ksr = make()
    policy = parse_policy(POLICY_TEXT + "floods: {enabled: false}\n")
    router.policies.policy = policy
    ksr.pvs["$si"] = STRANGER
    router.ksr_request_route(None)
    assert htable_calls(ksr) == []


def test_the_scrape_counts_bans_in_force() -> None:
    now = int(time.time())
    dump = [{"slot": [{"item": {"name": "a", "value": now + 50}},
                      {"item": {"name": "b", "value": now - 5}}]}]  # fmt: skip
    router, _ = make()
    router.ban_dump = lambda: dump
    (gauge,) = [g for g in router.scrape_state() if g.name == "kemi_ha_banned_sources"]
    assert gauge.samples == [((), 1.0)]
