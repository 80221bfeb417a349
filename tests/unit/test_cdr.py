"""kemi.core.cdr (records, reasons, the sweep's verdict) and kemi.shell.hygiene against the
strict fake KSR: who writes which record, how a dead or overlong call is ended."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kemi.core import cdr
from kemi.core.cdr import Cdr, EndReason, SetupFacts, SweepFacts
from kemi.ops import cdrstore, localaddr
from kemi.ops.cdrstore import RedisAddress, RedisCdrStore, Written
from kemi.policyfile import parse_policy
from kemi.shell import log as kamailio_log
from kemi.shell.hygiene import DLG_ANSWER, DLG_SETUP, CallRecords
from tests.fakes.ksr import FakeKSR

FACTS = SetupFacts(caller="alice@a.example", callee="1000@10.0.0.1", tenant="metro",
                   trunk="", vip="10.0.0.1", node="10.9.0.1", invite_ms=1_000_000,
                   media_timeout=10, max_duration=3600)  # fmt: skip
R = EndReason


# ----- core ------------------------------------------------------------------------------


def test_setup_facts_round_trip_and_refuse_foreign_values() -> None:
    assert SetupFacts.decode(FACTS.encode()) == FACTS
    for foreign in ("", "x", "{}", '{"caller": 1}', "[1]"):
        assert SetupFacts.decode(foreign) is None


def test_answered_record_duration_and_fields_round_trip() -> None:
    record = cdr.build_cdr(FACTS, "c1", "f1", "10.9.0.2", 1_065_500, R.BYE_CALLER, 200,
                           answer_ms=1_002_000)  # fmt: skip
    assert record.duration_s == 63.5
    assert (record.setup_node, record.end_node) == ("10.9.0.1", "10.9.0.2")
    assert Cdr.from_fields(record.fields()) == record
    assert tuple(record.fields()) == cdr.COLUMNS


def test_unanswered_record_has_no_duration() -> None:
    record = cdr.build_cdr(FACTS, "c1", "f1", "n", 1_005_000, R.CANCEL, 487)
    assert (record.answer_ms, record.duration_s) == (0, 0.0)


@pytest.mark.parametrize(
    ("bye_tag", "reason"), [("caller-tag", R.BYE_CALLER), ("callee-tag", R.BYE_CALLEE)]
)
def test_who_hung_up_is_the_bye_from_tag(bye_tag: str, reason: EndReason) -> None:
    assert cdr.bye_reason(bye_tag, "caller-tag") is reason


@pytest.mark.parametrize(
    ("status", "cancelled", "reason"),
    [(487, True, R.CANCEL), (487, False, R.CANCEL), (486, False, R.FAILED),
     (408, False, R.FAILED), (503, True, R.CANCEL)],
)  # fmt: skip
def test_failure_reason(status: int, cancelled: bool, reason: EndReason) -> None:
    assert cdr.failure_reason(status, cancelled) is reason


def test_reject_reason_keeps_limits_apart() -> None:
    assert cdr.reject_reason("limit_tenant") is R.LIMIT
    assert cdr.reject_reason("rtpengine") is R.REFUSED


@pytest.mark.parametrize(("var", "start_ts", "ms"),
                         [("1700000000123", 1700000000, 1700000000123), ("", 1700000000,
                          1700000000500), ("", 0, 0), ("junk", 5, 5500)])  # fmt: skip
def test_answer_time_prefers_the_ms_variable(var: str, start_ts: int, ms: int) -> None:
    assert cdr.answer_time_ms(var, start_ts) == ms


NOW = 1_700_000_000_000  # ms


@pytest.mark.parametrize(
    ("facts", "verdict"),
    [
        (SweepFacts(NOW - 3_600_000, 10, 3600, NOW / 1000), R.MAX_DURATION),
        (SweepFacts(NOW - 3_599_000, 10, 3600, NOW / 1000), None),
        (SweepFacts(NOW - 60_000, 10, 0, NOW / 1000 - 10), R.MEDIA_TIMEOUT),
        (SweepFacts(NOW - 60_000, 10, 0, NOW / 1000 - 9), None),
        (SweepFacts(NOW - 9_000, 10, 0, 0.0), None),  # no packet yet, answered 9 s ago
        (SweepFacts(NOW - 10_000, 10, 0, 0.0), R.MEDIA_TIMEOUT),  # counted from the answer
        (SweepFacts(NOW - 4_000, 10, 0, None), None),  # session not there yet: grace
        (SweepFacts(NOW - 6_000, 10, 0, None), R.MEDIA_TIMEOUT),  # session gone
        (SweepFacts(NOW - 600_000, 0, 0, None), None),  # both off
        (SweepFacts(0, 10, 10, None), None),  # not answered: never swept
    ],
)
def test_sweep_verdict(facts: SweepFacts, verdict: EndReason | None) -> None:
    assert cdr.sweep_verdict(facts, NOW) is verdict


def test_last_media_is_the_latest_packet_of_any_stream() -> None:
    query = {"result": "ok", "tags": {
        "a": {"medias": [{"streams": [{"last packet": 100}, {"last packet": 130}]}]},
        "b": {"medias": [{"streams": [{"last packet": 120}]}]}}}  # fmt: skip
    assert cdr.last_media_s(query) == 130.0
    assert cdr.last_media_s({"result": "ok", "tags": {}}) == 0.0
    assert cdr.last_media_s({"result": "error", "error-reason": "Unknown call-id"}) is None


def test_write_script_arguments_carry_the_marker_then_every_field() -> None:
    record = cdr.build_cdr(FACTS, "c1", "f1", "n2", 1_005_000, R.FAILED, 486)
    keys, argv = cdr.write_args(record, ttl_s=99)
    assert keys == ["kha:cdr:once:f1:c1", cdr.STREAM]
    assert argv[:2] == ["n2", "99"]
    assert dict(zip(argv[2::2], argv[3::2], strict=True)) == record.fields()


# ----- shell -----------------------------------------------------------------------------

POLICY = parse_policy("""
version: t
vips:
  - address: 10.0.0.1
    rtpengine: ["udp:127.0.0.1:2223"]
routes: [{name: default, destinations: ["sip:gw1:5060"]}]
trusted_peers: ["192.0.2.0/24"]
calls: {media_timeout: 10}
tenants: [{name: metro, sources: ["192.0.2.0/28"], calls: {max_duration: 3600}}]
""")


POLICY_TEXT_LIMITS = """
version: t
vips:
  - {address: 10.0.0.2, rtpengine: ["udp:10.0.0.2:2223"]}
routes: [{name: default, destinations: ["sip:gw1:5060"]}]
trusted_peers: ["192.0.2.0/24"]
calls: {media_timeout: 30}
tenants: [{name: acme, sources: ["192.0.2.0/28"], calls: {max_duration: 600}}]
"""


@dataclass
class Writer:
    """Records what would go to the store; the first write of a call wins, like the script."""

    records: list[Cdr] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    last_error: str = ""
    ended_down: bool = False  # write_ended() answers None: write() decides

    def write(self, record: Cdr) -> str:
        key = cdr.once_key(record.call_id, record.from_tag)
        if key in self.keys:
            return "duplicate"
        self.keys.add(key)
        self.records.append(record)
        return "written"

    def write_ended(self, end: cdr.CallEnd) -> str | None:
        facts, call_id, from_tag, end_node, answer_ms, end_ms, reason, code = end
        """What the store's script does with the facts' JSON (None: not taken, or down)."""
        decoded = None if self.ended_down else SetupFacts.decode(facts)
        if decoded is None:
            return None
        return self.write(cdr.build_cdr(decoded, call_id, from_tag, end_node, end_ms, reason,
                                        code, answer_ms))  # fmt: skip

    def drain(self) -> tuple[int, int]:
        return 0, 0


def make(pvs: dict[str, Any], returns: dict[str, Any] | None = None,
         queries: dict[str, Any] | None = None) -> tuple[CallRecords, FakeKSR, Writer]:  # fmt: skip
    ksr = FakeKSR(returns=returns or {}, pvs=pvs)
    kamailio_log.install(ksr)
    writer = Writer()
    calls = CallRecords(ksr, "10.9.0.2", writer, lambda: POLICY,
                        vips_held=lambda: lambda address: address == "10.0.0.1",
                        media_query=lambda sock, call_id: (queries or {}).get(call_id),
                        media_delete=lambda sock, call_id: True,
                        clock_ms=lambda: NOW)  # fmt: skip
    return calls, ksr, writer


def test_dialog_end_by_the_callee_writes_one_record_with_its_answer_time() -> None:
    calls, _ksr, writer = make(
        {DLG_SETUP: FACTS.encode(), DLG_ANSWER: str(NOW - 30_000), "$dlg(callid)": "c1",
         "$dlg(from_tag)": "caller-tag", "$ft": "callee-tag", "$dlg(start_ts)": 0},
        {"is_BYE": True},
    )  # fmt: skip
    calls.dialog_ended()
    calls.dialog_ended()  # e.g. a replicated copy's timer elsewhere: no second record
    [record] = writer.records
    assert (record.reason, record.code, record.duration_s) == (R.BYE_CALLEE, 200, 30.0)
    assert (record.call_id, record.from_tag, record.end_node) == ("c1", "caller-tag", "10.9.0.2")


def test_dialog_end_without_a_bye_is_the_dialog_timeout() -> None:
    calls, _ksr, writer = make(
        {DLG_SETUP: FACTS.encode(), DLG_ANSWER: None, "$dlg(callid)": "c1",
         "$dlg(from_tag)": "f", "$dlg(start_ts)": (NOW - 5000) // 1000},
        {"is_BYE": False},
    )  # fmt: skip
    calls.dialog_ended()
    # no answer time in ms on this copy: the middle of its start_ts second (5 s ago)
    assert [(r.reason, r.duration_s) for r in writer.records] == [(R.DIALOG_TIMEOUT, 4.5)]


def test_dialog_end_goes_the_general_way_when_the_store_does_not_take_the_facts() -> None:
    """write_ended() None (facts the script refused, Redis down or paused): decoded here and
    written (spooled) by write(); facts that are not ours at all: no record, no exception."""
    pvs = {DLG_SETUP: FACTS.encode(), DLG_ANSWER: str(NOW - 2_000), "$dlg(callid)": "c2",
           "$dlg(from_tag)": "f", "$ft": "f", "$dlg(start_ts)": 0}  # fmt: skip
    calls, _ksr, writer = make(pvs, {"is_BYE": True})
    writer.ended_down = True
    calls.dialog_ended()
    assert [(r.call_id, r.reason, r.duration_s) for r in writer.records] == [
        ("c2", R.BYE_CALLER, 2.0)]  # fmt: skip
    for foreign in ("", "not json", '{"caller": 1}'):
        calls, _ksr, writer = make({**pvs, DLG_SETUP: foreign}, {"is_BYE": True})
        calls.dialog_ended()
        assert not writer.records


def test_the_ended_command_carries_the_facts_as_read() -> None:
    """The arguments kamailio.cfg's event_route[dialog:end] sends (kemi.ops.nodecfg's
    CDR_ENDED_HEAD, then answer, start_ts, end time as $TV(Sn), code, reason): the Python
    fallback sends the same, its answer already resolved (start_ts 0)."""
    command = cdr.write_ended_command("sha", (FACTS.encode(), "c1", "f1", "n2", NOW - 1500, NOW,
                                      R.BYE_CALLEE, 200))  # fmt: skip
    args = [
        b"EVALSHA",
        b"sha",
        b"2",
        cdr.once_key("c1", "f1").encode(),
        cdr.STREAM.encode(),
        b"n2",
        str(cdr.ONCE_TTL_S).encode(),
        FACTS.encode().encode(),
        b"c1",
        str(NOW - 1500).encode(),
        b"0",
        f"{NOW // 1000}.{NOW % 1000:03d}000".encode(),
        b"200",
        b"bye_callee",
    ]
    assert command == cdr.resp_command(*(a.decode() for a in args))
    unanswered = cdr.write_ended_command("s", ("{}", "c", "f", "n", 0, 1_765_000_000_007,
                                               R.CANCEL, 487), "EVAL")  # fmt: skip
    assert unanswered.startswith(b"*14\r\n$4\r\nEVAL\r\n")
    assert b"$17\r\n1765000000.007000\r\n" in unanswered


def test_store_write_ended_pauses_and_leaves_the_spool_to_write(tmp_path: Path) -> None:
    fake, clock = FakeRedis(), [0.0]
    store = RedisCdrStore(RedisAddress(), tmp_path / "spool", make_client=lambda: fake,
                          pause_s=5, clock=lambda: clock[0])  # fmt: skip
    args = ("c1", "f1", "n", NOW - 1000, NOW, R.BYE_CALLER, 200)
    assert store.write_ended((FACTS.encode(), *args)) is Written.WRITTEN
    assert store.write_ended((FACTS.encode(), *args)) is Written.DUPLICATE
    assert store.write_ended(("not ours", *args)) is None  # the caller decides
    fake.down = True
    assert store.write_ended((FACTS.encode(), "c2", *args[1:])) is None
    assert "ConnectionRefusedError" in store.last_error
    fake.down = False
    assert store.write_ended((FACTS.encode(), "c3", *args[1:])) is None  # paused
    assert [r["call_id"] for r in fake.stream] == ["c1"]
    assert fake.stream[0] == record("c1").fields() | {"end_node": "n", "from_tag": "f1"}


def test_an_answer_keeps_its_time_in_the_dialog() -> None:
    calls, ksr, writer = make({})
    calls.answered()
    assert ksr.pvs[DLG_ANSWER] == str(NOW)
    assert not writer.records


def test_failure_writes_the_record_from_the_dialog_facts() -> None:
    calls, _ksr, writer = make({DLG_SETUP: FACTS.encode(), "$ci": "c1", "$ft": "f1"})
    calls.failed(486, cancelled=False)
    calls.failed(487, cancelled=True)  # the same call: nothing more
    assert [(r.reason, r.code, r.tenant) for r in writer.records] == [(R.FAILED, 486, "metro")]


def dialog(call_id: str, answered_s_ago: int, state: int = 4,
           facts: SetupFacts = FACTS) -> dict[str, Any]:  # fmt: skip
    return {"h_entry": 7, "h_id": 42, "call-id": call_id, "state": state,
            "start_ts": (NOW // 1000) - answered_s_ago,
            "caller": {"tag": f"{call_id}-ft"}, "callee": {"tag": f"{call_id}-tt"},
            "variables": [{"kha_cdr": facts.encode()}, {"kha_ta": ""}]}  # fmt: skip


def sweep_with(dialogs: list[dict[str, Any]], queries: dict[str, Any]) -> tuple[FakeKSR, Writer]:
    pvs = {"$jsonrpl(code)": "200", "$jsonrpl(body)": json.dumps({"result": dialogs})}
    calls, ksr, writer = make(pvs, {"jsonrpcs.exec": 1, "dialog.dlg_get": 1,
                                    "dialog.dlg_bye": 1}, queries)  # fmt: skip
    calls.sweep()
    return ksr, writer


def with_vip(vip: str) -> SetupFacts:
    return SetupFacts(**{**{f: getattr(FACTS, f) for f in FACTS.__slots__}, "vip": vip})


def test_sweep_ends_dead_and_overlong_calls_on_held_vips_only() -> None:
    silent = {"result": "ok", "tags": {"a": {"medias": [{"streams": [
        {"last packet": NOW / 1000 - 30}]}]}}}  # fmt: skip
    live = {"result": "ok", "tags": {"a": {"medias": [{"streams": [
        {"last packet": NOW / 1000 - 1}]}]}}}  # fmt: skip
    entries = [
        dialog("dead", 60),
        dialog("alive", 60),
        dialog("long", 3601),  # start_ts counts from the middle of its second
        dialog("early", 60, state=2),
        dialog("elsewhere", 60, facts=with_vip("10.0.0.2")),  # a VIP another node holds
        dialog("unknown", 60),  # rtpengine did not answer: nothing decided
        dialog("dead-too", 60),  # same VIP: its rtpengine is not asked again in this sweep
        dialog("long-too", 3601),  # ... but the duration still counts
    ]
    ksr, writer = sweep_with(
        entries, {"dead": silent, "alive": live, "long": live, "dead-too": silent}
    )
    assert [(r.call_id, r.reason) for r in writer.records] == [
        ("dead", R.MEDIA_TIMEOUT), ("long", R.MAX_DURATION),
        ("long-too", R.MAX_DURATION)]  # fmt: skip
    # "dead-too" waits for the next sweep: rtpengine did not answer for "unknown" before it
    assert ksr.called("dialog.dlg_get", "dead", "dead-ft", "dead-tt")
    byes = [c.args for c in ksr.calls if c.name == "dialog.dlg_bye"]
    assert byes == [("callee",), ("caller",)] * 3  # callee first (Kamailio 5.6.3 race)


def test_sweep_does_nothing_when_no_timer_is_set() -> None:
    calls, ksr, _writer = make({})
    calls.policy = lambda: parse_policy(  # type: ignore[method-assign]
        "version: t\nvips: [{address: 10.0.0.1, rtpengine: ['udp:127.0.0.1:2223']}]\n"
        "routes: [{name: d, destinations: ['sip:gw:5060']}]\n"
    )
    assert calls.sweep() == 0
    assert not ksr.calls  # not even dlg.list


# ----- the store: exactly once, never blocking for long, never losing silently -------------


class FakeRedis:
    """WriteOnceClient's write_once(); does what WRITE_ONCE_LUA does."""

    def __init__(self) -> None:
        self.down = False
        self.markers: set[str] = set()
        self.stream: list[dict[str, str]] = []

    def write_once(self, record: Cdr) -> bool:
        if self.down:
            raise ConnectionRefusedError("Connection refused")
        keys, args = cdr.write_args(record)
        if keys[0] in self.markers:
            return False
        self.markers.add(keys[0])
        self.stream.append(dict(zip(args[2::2], args[3::2], strict=True)))
        return True

    def write_ended(self, end: cdr.CallEnd) -> bool | None:
        facts, call_id, from_tag, end_node, answer_ms, end_ms, reason, code = end
        decoded = SetupFacts.decode(facts)
        if self.down:
            raise ConnectionRefusedError("Connection refused")
        if decoded is None:
            return None
        return self.write_once(cdr.build_cdr(decoded, call_id, from_tag, end_node, end_ms,
                                             reason, code, answer_ms))  # fmt: skip


def record(call_id: str) -> Cdr:
    return cdr.build_cdr(FACTS, call_id, "f1", "n", NOW, R.BYE_CALLER, 200, NOW - 1000)


def test_store_writes_once_spools_when_down_and_drains_in_order(tmp_path: Path) -> None:
    fake, clock = FakeRedis(), [0.0]
    store = RedisCdrStore(RedisAddress(), tmp_path / "spool", make_client=lambda: fake,
                          pause_s=5, clock=lambda: clock[0])  # fmt: skip
    assert store.write(record("a")) is Written.WRITTEN
    assert store.write(record("a")) is Written.DUPLICATE
    fake.down = True
    assert store.write(record("b")) is Written.SPOOLED
    assert "ConnectionRefusedError" in store.last_error
    fake.down = False
    assert store.write(record("c")) is Written.SPOOLED  # paused: no Redis try for 5 s
    assert store.drain() == (0, 2)
    clock[0] = 6.0
    assert store.drain() == (2, 0)
    assert [r["call_id"] for r in fake.stream] == ["a", "b", "c"]
    assert store.drain() == (0, 0)
    assert store.write(record("b")) is Written.DUPLICATE  # a replay writes nothing twice


def test_store_that_cannot_even_spool_says_lost(tmp_path: Path) -> None:
    fake = FakeRedis()
    fake.down = True
    blocker = tmp_path / "file"
    blocker.write_text("")
    store = RedisCdrStore(RedisAddress(), blocker / "spool", make_client=lambda: fake)
    assert store.write(record("a")) is Written.LOST


def test_redis_address_parse() -> None:
    assert RedisAddress.parse("10.0.0.9:6380/3") == RedisAddress("10.0.0.9", 6380, 3)
    assert RedisAddress.parse("10.0.0.9") == RedisAddress("10.0.0.9", 6379, 0)
    assert str(RedisAddress.parse("h:1/2")) == "h:1/2"


FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.0.0.1
        /32 host LOCAL
     |-- 127.0.0.0
        /8 host LOCAL
     |-- 10.0.0.0
        /24 link UNICAST
"""


def test_local_addresses_from_proc() -> None:
    networks = localaddr.local_networks(FIB_TRIE, "00000000000000000000000000000001 01 80 10 80 lo")
    assert localaddr.held("10.0.0.1", networks)
    assert localaddr.held("127.0.0.2", networks)
    assert not localaddr.held("10.0.0.2", networks)  # a VIP another node holds
    assert localaddr.held("::1", networks)
    assert not localaddr.held("not an address", networks)


@pytest.mark.parametrize(("text", "ms"), [("1700000000", 1_700_000_000_000),
                                          ("2023-11-14T22:13:20Z", 1_700_000_000_000),
                                          ("2023-11-14T23:13:20+01:00", 1_700_000_000_000),
                                          ("2023-11-14", 1_699_920_000_000)])  # fmt: skip
def test_cli_times(text: str, ms: int) -> None:
    assert cdrstore.parse_time_ms(text) == ms


def test_cli_time_refused_with_its_text() -> None:
    with pytest.raises(ValueError, match="yesterday"):
        cdrstore.parse_time_ms("yesterday")


def test_export_csv_and_json_lines() -> None:
    rows = [record("a").fields(), record("b").fields()]
    out = io.StringIO()
    assert cdrstore.export(rows, "csv", out) == 2
    lines = out.getvalue().splitlines()
    assert lines[0] == ",".join(cdr.COLUMNS)
    assert list(csv.DictReader(io.StringIO(out.getvalue()))) == rows
    out = io.StringIO()
    cdrstore.export(rows, "jsonl", out)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == rows


# ----- the routes' hooks ----------------------------------------------------------------


def test_a_limit_refusal_is_recorded_once_with_its_code() -> None:
    from tests.unit.test_routes import make_limited

    router, ksr = make_limited(global_count=2, tenant_count=0)
    writer = Writer()
    ksr.pvs.update({"$fU": "alice", "$fd": "a.example"})
    router.calls = CallRecords(ksr, "10.9.0.1", writer, router._policy, clock_ms=lambda: NOW)
    router.ksr_request_route(None)
    [record] = writer.records
    assert (record.reason, record.code, record.call_id, record.from_tag) == (
        R.LIMIT, 503, "call-1", "ftag-1")  # fmt: skip
    assert (record.caller, record.callee, record.tenant) == ("alice@a.example",
                                                             "1000@10.0.0.2", "acme")  # fmt: skip


def test_an_admitted_call_carries_its_facts_and_the_duration_backstop() -> None:
    from tests.unit.test_routes import make_limited

    router, ksr = make_limited(global_count=0, tenant_count=0)
    ksr.pvs.update({"$fU": "alice", "$fd": "a.example"})
    ksr.returns["dialog.dlg_set_timeout"] = 1
    router.policies.policy = parse_policy(POLICY_TEXT_LIMITS)
    router.calls = CallRecords(ksr, "10.9.0.1", Writer(), router._policy, clock_ms=lambda: NOW)
    router.ksr_request_route(None)
    facts = SetupFacts.decode(ksr.pvs[DLG_SETUP])
    assert facts is not None
    assert (facts.tenant, facts.media_timeout, facts.max_duration) == ("acme", 30, 600)
    assert ksr.called("dialog.dlg_set_timeout", 660)
    names = ksr.names()
    assert names.index("dialog.dlg_manage") < names.index("dialog.dlg_set_timeout")


def test_the_dialog_end_and_timer_entries_never_raise() -> None:
    from tests.unit.test_routes import make

    router, ksr = make()
    router.calls = CallRecords(ksr, "n", Writer(), router._policy, clock_ms=lambda: NOW)
    ksr.pvs.update({DLG_SETUP: FACTS.encode(), "$dlg(callid)": "c", "$dlg(from_tag)": "f"})
    ksr.returns["is_BYE"] = lambda: 1 / 0  # a bug of ours: logged, not raised into Kamailio
    assert router.ksr_dialog_end(None) == 1
    assert ksr.called("is_BYE")
    assert router.ksr_hygiene_timer(None, "rtimer") == 1


def test_a_takeover_confirmation_keeps_an_answer_time_once() -> None:
    calls, ksr, _writer = make({DLG_ANSWER: None})
    calls.answered_here()
    assert ksr.pvs[DLG_ANSWER] == str(NOW)
    ksr.pvs[DLG_ANSWER] = "123"
    calls.answered_here()
    assert ksr.pvs[DLG_ANSWER] == "123"


# ----- dialogs against media sessions (kemi-ha status) --------------------------------------


def test_reconcile_orphans_and_dialogs_without_media() -> None:
    from kemi.core.reconcile import reconcile

    report = reconcile(
        "10.0.0.1",
        {"up": True, "ringing": False, "dead": True},
        {"up": 100.0, "ringing": 100.0, "old-orphan": 100.0, "young": 195.0},
        now_s=200.0,
        min_age_s=60,
    )
    assert report.orphan_sessions == ("old-orphan",)  # "young" may be a call being set up
    assert report.dialogs_without_media == ("dead",)  # an early one may have no answer yet
    assert (report.dialogs, report.sessions, report.consistent) == (3, 4, False)
    silent = reconcile("10.0.0.1", {"up": True}, None, now_s=200.0)
    assert (silent.sessions, silent.consistent) == (None, True)


def test_setup_facts_encode_as_the_dataclass_fields_in_order_and_round_trip() -> None:
    assert FACTS.encode() == json.dumps(dataclasses.asdict(FACTS), separators=(",", ":"))
    assert SetupFacts.decode(FACTS.encode()) == FACTS
    assert SetupFacts.decode('{"caller": "x"}') is None  # a dialog of another version


def test_evalsha_command_is_what_redis_py_sends() -> None:
    """The one-pass packer (kemi.core.cdr.evalsha_command) writes the bytes redis-py's own
    packer writes for the same EVALSHA, non-ASCII values included."""
    from redis.connection import Connection

    from kemi.core.cdr import evalsha_command

    keys = ["kha:cdr:once:abc@h:ft", "kha:cdr"]
    argv = ["node1", "86400", "caller", "Jürgen <sip:+4930@x>", "empty", ""]
    packed = b"".join(Connection().pack_command("EVALSHA", "f" * 40, 2, *keys, *argv))
    assert evalsha_command("f" * 40, keys, argv) == packed


def test_write_once_command_is_evalsha_of_write_args() -> None:
    """The prebuilt packer gives the bytes of the generic one for the same record (non-ASCII
    and empty values included), and EVAL carries the script's text in the SHA's place."""
    from kemi.core.cdr import evalsha_command, write_once_command

    odd = dataclasses.replace(record("ä-call"), caller="Jürgen <sip:+4930@x>", trunk="")
    for rec in (record("a"), odd):
        keys, argv = cdr.write_args(rec)
        assert write_once_command(rec, "f" * 40) == evalsha_command("f" * 40, keys, argv)
    eval_bytes = write_once_command(odd, cdr.WRITE_ONCE_LUA, "EVAL")
    assert eval_bytes.startswith(b"*37\r\n$4\r\nEVAL\r\n$%d\r\n" % len(cdr.WRITE_ONCE_LUA))


@settings(max_examples=300, deadline=None)
@given(facts=st.text(max_size=40), call_id=st.text(max_size=20), from_tag=st.text(max_size=10),
       node=st.sampled_from(["10.0.0.1", "n\u00e9"]), answer=st.integers(0, 10**13),
       verb=st.sampled_from(["EVALSHA", "EVAL"]))  # fmt: skip
def test_the_ended_command_is_resp_for_any_text(
    facts: str, call_id: str, from_tag: str, node: str, answer: int, verb: str
) -> None:
    """What resp_command packs, for any text."""
    command = cdr.write_ended_command("s", (facts, call_id, from_tag, node, answer, NOW,
                                            R.BYE_CALLER, 200), verb)  # fmt: skip
    ended = f"{NOW // 1000}.{NOW % 1000:03d}000"  # Kamailio's $TV(Sn)
    assert command == cdr.resp_command(
        verb, "s", "2", cdr.once_key(call_id, from_tag), cdr.STREAM, node, str(cdr.ONCE_TTL_S),
        facts, call_id, str(answer), "0", ended, "200", "bye_caller",
    )  # fmt: skip
