"""Call records and call hygiene on one node (issue 15): real Kamailio, rtpengine, Redis, SIPp.

One record per call attempt in the Redis stream, with the right reason and code; a call whose
caller vanished (SIPp killed) is ended by the media timeout (BYE to the callee, channel freed);
a call over the tenant's maximum duration is ended; every channel count returns to 0.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kemi.cli import main
from kemi.core import cdr
from kemi.core.cdr import EndReason, SetupFacts
from kemi.ops.cdrstore import RedisAddress, RedisCdrStore, Written, read_cdrs
from kemi.ops.stack import Stack
from kemi.ops.status import media_reconciliation, remove_orphans
from tests.integration.calls import (
    active_dialogs,
    assert_ok,
    start_uac,
    start_uas,
    wait_for,
)
from tests.integration.conftest import NG_PORT, UAS_PORT, VIP1, VIP2, loopback_stack

MEDIA_TIMEOUT = 5
UNAVAILABLE_PORT = UAS_PORT + 40  # a first destination answering 503
MAX_DURATION = 3
# VIP1's calls are tenant "metro" (R-URI domain 127.0.0.1): one channel, media timeout;
# VIP2's are tenant "short": a maximum duration, no media timeout.
POLICY = f"""\
version: cdr-1
vips:
  - address: {VIP1}
    rtpengine: ["udp:{VIP1}:{NG_PORT}"]
  - address: {VIP2}
    rtpengine: ["udp:{VIP2}:{NG_PORT}"]
tenants:
  - name: metro
    domains: ["{VIP1}"]
    limit: {{max: 1, code: 486, reason: Channels Busy}}
    calls: {{media_timeout: {MEDIA_TIMEOUT}}}
  - name: short
    domains: ["{VIP2}"]
    calls: {{max_duration: {MAX_DURATION}}}
routes:
  - name: default
    destinations: ["sip:127.0.0.1:{UAS_PORT}"]
  - name: failover
    prefix: "2"
    destinations: ["sip:127.0.0.1:{UNAVAILABLE_PORT}", "sip:127.0.0.1:{UAS_PORT}"]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, require_root: None) -> Iterator[Stack]:
    with loopback_stack(tmp_path_factory, POLICY) as running:
        yield running


def cdrs(stack: Stack, call_id: str) -> list[dict[str, str]]:
    return [r for r in read_cdrs(stack.redis_client(0), 0, None) if r["call_id"] == call_id]


def one_cdr(stack: Stack, call_id: str, timeout: float = 10) -> dict[str, str]:
    wait_for(lambda: bool(cdrs(stack, call_id)), timeout, f"the CDR of {call_id}")
    time.sleep(0.5)  # a second record would come now
    found = cdrs(stack, call_id)
    assert len(found) == 1, found
    return found[0]


def channels(stack: Stack) -> dict[str, int]:
    rpc = stack.rpc
    return {
        "global": int(rpc.call("dlg.profile_get_size", "kha_global")),
        "metro": int(rpc.call("dlg.profile_get_size", "kha_tenant", "metro")),
        "short": int(rpc.call("dlg.profile_get_size", "kha_tenant", "short")),
    }


@pytest.fixture(autouse=True)
def channels_back_to_zero(stack: Stack) -> Iterator[None]:
    """Counts that never leak: after every call type, every channel profile is 0 again."""
    yield
    wait_for(lambda: not any(channels(stack).values()), 20, "channel counts back to 0",
             lambda: str(channels(stack)))  # fmt: skip


def test_answered_call_has_one_cdr(stack: Stack, log_dir: Path) -> None:
    uas = start_uas(log_dir)
    t0 = time.time()
    uac = start_uac(log_dir, VIP1, "cdr-answered", duration_ms=2000)
    assert_ok(uac)
    t1 = time.time()
    assert_ok(uas)
    cdr = one_cdr(stack, "cdr-answered")
    assert cdr["reason"] == "bye_caller"
    assert cdr["code"] == "200"
    assert (cdr["tenant"], cdr["trunk"], cdr["vip"]) == ("metro", "", VIP1)
    assert cdr["caller"] == "sipp@127.0.0.1"
    assert cdr["callee"] == f"1000@{VIP1}"
    assert cdr["setup_node"] == cdr["end_node"] == "127.0.0.1"
    invite, answer, end = int(cdr["invite_ms"]), int(cdr["answer_ms"]), int(cdr["end_ms"])
    assert t0 * 1000 - 50 <= invite <= answer <= end <= t1 * 1000 + 50
    # the answer time kept where the 200 passed (ms), not the dialog's start second
    assert answer - invite < 200, (invite, answer)
    assert 1.8 <= float(cdr["duration_s"]) <= 3.0  # SIPp: 2 s of RTP, then BYE


def test_call_failed_over_to_its_second_destination_has_one_cdr(
    stack: Stack, log_dir: Path
) -> None:
    unavailable = start_uas(log_dir, "uas_unavailable.xml", port=UNAVAILABLE_PORT)
    uas = start_uas(log_dir)
    assert_ok(start_uac(log_dir, VIP1, "cdr-failover", duration_ms=1000, service="2000"))
    assert_ok(unavailable)
    assert_ok(uas)
    cdr = one_cdr(stack, "cdr-failover")
    assert (cdr["reason"], cdr["code"], cdr["callee"]) == ("bye_caller", "200", f"2000@{VIP1}")
    assert int(cdr["answer_ms"]) > int(cdr["invite_ms"])


def test_cli_exports_the_records_of_a_time_range(
    stack: Stack, log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"127.0.0.1:{stack.config.redis_port}/0"
    since = time.time()
    uas = start_uas(log_dir)
    assert_ok(start_uac(log_dir, VIP1, "cdr-exported", duration_ms=500))
    assert_ok(uas)
    one_cdr(stack, "cdr-exported")
    capsys.readouterr()
    assert main(["cdr", "--redis", store, "--format", "jsonl", "--from", str(since)]) == 0
    out = capsys.readouterr().out
    assert [json.loads(line)["call_id"] for line in out.splitlines()] == ["cdr-exported"]
    assert main(["cdr", "--redis", store, "--to", str(since)]) == 0
    assert "cdr-exported" not in capsys.readouterr().out


def test_store_writes_a_call_once_and_spools_fast_when_redis_is_down(
    stack: Stack, tmp_path: Path
) -> None:
    """The write script against the real Redis; a store that does not answer costs one
    connect timeout (100 ms), then nothing while paused, and the record waits in the spool."""
    facts = SetupFacts("a@x", "b@y", "", "", VIP1, "n1", int(time.time() * 1000), 0, 0)
    record = cdr.build_cdr(facts, "cdr-store-once", "f1", "n1", facts.invite_ms, EndReason.CANCEL,
                           487)  # fmt: skip
    up = RedisCdrStore(RedisAddress("127.0.0.1", stack.config.redis_port), tmp_path / "up")
    assert up.write(record) is Written.WRITTEN
    assert up.write(record) is Written.DUPLICATE
    assert len(cdrs(stack, "cdr-store-once")) == 1
    stack.redis_client().script_flush()  # a restarted or new master: EVALSHA gets NOSCRIPT
    flushed = dataclasses.replace(record, call_id="cdr-store-noscript")
    assert up.write(flushed) is Written.WRITTEN  # EVAL of the text, which caches it again
    assert up.write(flushed) is Written.DUPLICATE
    assert len(cdrs(stack, "cdr-store-noscript")) == 1
    down = RedisCdrStore(RedisAddress("127.0.0.2", stack.config.redis_port), tmp_path / "down")
    again = dataclasses.replace(record, call_id="cdr-store-spooled")
    start = time.perf_counter()
    assert down.write(again) is Written.SPOOLED
    assert down.write(again) is Written.SPOOLED  # paused: not even a connect
    assert time.perf_counter() - start < 0.5
    down.address = up.address
    down._make_client = up._make_client
    down._pid = -1  # a new client on the next use (as after a fork)
    down._paused_until = 0.0
    assert down.drain() == (2, 0)  # both spooled copies: one written, one a duplicate
    assert len(cdrs(stack, "cdr-store-spooled")) == 1


ODD_FACTS = [
    SetupFacts("a@x", "b@y", "", "", VIP1, "n1", 1_765_000_000_123, 0, 0),
    # the largest times the ended script takes (its answer and end too: below 2^53 ms)
    SetupFacts(
        'é "q" \\ /@x', "\u263a\x00\t@y", "t-1", "trunk 2", VIP2, "n2", 2**53 - 10**5, 30, 600
    ),
    SetupFacts("\\x80garbled@x", "1000@10.0.0.1", "acme", "", VIP1, "n1", -5, 0, 0),
]


@pytest.mark.parametrize("facts", ODD_FACTS)
def test_the_ended_script_stores_what_the_record_script_stores(
    stack: Stack, tmp_path: Path, facts: SetupFacts
) -> None:
    """dialog:end sends the facts' JSON as the dialog holds them and Redis decodes them
    (WRITE_ENDED_LUA): its entry is the one WRITE_ONCE_LUA writes for the same record."""
    store = RedisCdrStore(RedisAddress("127.0.0.1", stack.config.redis_port), tmp_path)
    tag = f"ended-{facts.invite_ms}"
    for answer in (0, facts.invite_ms + 1234):
        end = facts.invite_ms + 99_999
        assert (
            store.write(
                cdr.build_cdr(
                    facts, f"{tag}-once-{answer}", "f", "n9", end, EndReason.BYE_CALLEE, 200, answer
                )
            )
            is Written.WRITTEN
        )
        assert store.write_ended((facts.encode(), f"{tag}-ended-{answer}", "f", "n9", answer, end,
                                  EndReason.BYE_CALLEE, 200)) is Written.WRITTEN  # fmt: skip
        assert store.write_ended((facts.encode(), f"{tag}-ended-{answer}", "f", "n9", answer, end,
                                  EndReason.BYE_CALLER, 200)) is Written.DUPLICATE  # fmt: skip
        [once] = cdrs(stack, f"{tag}-once-{answer}")
        [ended] = cdrs(stack, f"{tag}-ended-{answer}")
        assert ended == once | {"call_id": f"{tag}-ended-{answer}"}
        assert cdr.Cdr.from_fields(ended).caller == facts.caller


@pytest.mark.parametrize("text", [
    "", "x", "[1]", "{}", '{"caller": 1}', SetupFacts("a", "b", "", "", VIP1, "n", 1, 0, 0)
    .encode().replace('"invite_ms":1', '"invite_ms":1.5'),
    SetupFacts("a", "b", "", "", VIP1, "n", 1, 0, 0).encode().replace('"max_duration":0',
                                                                      '"max_duration":"0"'),
    SetupFacts("a", "b", "", "", VIP1, "n", 2**60, 0, 0).encode(),
])  # fmt: skip
def test_the_ended_script_refuses_facts_it_cannot_store_exactly(
    stack: Stack, tmp_path: Path, text: str
) -> None:
    """Nothing written, no marker set: the node decodes them itself (SetupFacts.decode)."""
    store = RedisCdrStore(RedisAddress("127.0.0.1", stack.config.redis_port), tmp_path)
    call_id = f"ended-bad-{abs(hash(text))}"
    assert store.write_ended((text, call_id, "f", "n", 0, 1, EndReason.CANCEL, 487)) is None
    assert store.available()  # not a store failure: no pause
    assert not cdrs(stack, call_id)
    assert not stack.redis_client().exists(cdr.once_key(call_id, "f"))


def test_the_ended_script_is_loaded_again_after_a_script_flush(
    stack: Stack, tmp_path: Path
) -> None:
    store = RedisCdrStore(RedisAddress("127.0.0.1", stack.config.redis_port), tmp_path)
    stack.redis_client().script_flush()
    facts = ODD_FACTS[0].encode()
    args = ("f", "n", 1, 2, EndReason.BYE_CALLER, 200)
    assert store.write_ended((facts, "ended-noscript", *args)) is Written.WRITTEN
    assert store.write_ended((facts, "ended-noscript", *args)) is Written.DUPLICATE
    assert len(cdrs(stack, "ended-noscript")) == 1


def test_cancelled_and_busy_calls_have_one_cdr(stack: Stack, log_dir: Path) -> None:
    for uac_scenario, uas_scenario, call_id in (
        ("uac_cancel.xml", "uas_ring.xml", "cdr-cancel"),
        ("uac_busy.xml", "uas_busy.xml", "cdr-busy"),
    ):
        uas = start_uas(log_dir, uas_scenario)
        uac = start_uac(log_dir, VIP2, call_id, uac_scenario)
        assert_ok(uac, 30)
        assert_ok(uas, 30)
    cancel, busy = one_cdr(stack, "cdr-cancel"), one_cdr(stack, "cdr-busy")
    assert (cancel["reason"], cancel["code"], cancel["answer_ms"]) == ("cancel", "487", "0")
    assert (busy["reason"], busy["code"], busy["answer_ms"]) == ("failed", "486", "0")
    assert busy["tenant"] == cancel["tenant"] == "short"
    assert float(busy["duration_s"]) == 0.0


def test_limit_refusal_has_one_cdr(stack: Stack, log_dir: Path) -> None:
    uas = start_uas(log_dir)
    first = start_uac(log_dir, VIP1, "cdr-holds-the-channel", duration_ms=3000)
    wait_for(lambda: active_dialogs(stack) == 1, what="the first call up")
    second = start_uac(log_dir, VIP1, "cdr-refused", "uac_limited.xml", duration_ms=500)
    assert_ok(second)
    assert_ok(first)
    assert_ok(uas)
    refused = one_cdr(stack, "cdr-refused")
    assert (refused["reason"], refused["code"], refused["tenant"]) == ("limit", "486", "metro")
    assert one_cdr(stack, "cdr-holds-the-channel")["reason"] == "bye_caller"


def test_caller_killed_is_ended_by_the_media_timeout(stack: Stack, log_dir: Path) -> None:
    """The caller vanishes (kill -9 of its SIPp): no RTP either way (the callee echoes); the
    node ends the call within media_timeout + 5 s: BYE to the callee, channel freed."""
    uas = start_uas(log_dir)
    uac = start_uac(log_dir, VIP1, "cdr-dead-caller", duration_ms=60000)
    wait_for(lambda: active_dialogs(stack) == 1, what="the call up")
    time.sleep(1)
    uac.proc.kill()
    killed = time.time()
    assert_ok(uas, MEDIA_TIMEOUT + 10)  # it got its BYE
    ended = time.time() - killed
    cdr = one_cdr(stack, "cdr-dead-caller")
    assert cdr["reason"] == "media_timeout"
    assert ended <= MEDIA_TIMEOUT + 5, ended
    assert int(cdr["end_ms"]) / 1000 - killed <= MEDIA_TIMEOUT + 5
    wait_for(lambda: active_dialogs(stack) == 0, what="the dialog gone")


def test_max_duration_ends_the_call(stack: Stack, log_dir: Path) -> None:
    uas = start_uas(log_dir)
    start_uac(log_dir, VIP2, "cdr-too-long", duration_ms=30000)
    assert_ok(uas, MAX_DURATION + 10)  # the callee got the node's BYE
    cdr = one_cdr(stack, "cdr-too-long")
    assert cdr["reason"] == "max_duration"
    assert MAX_DURATION <= float(cdr["duration_s"]) <= MAX_DURATION + 3
    wait_for(lambda: active_dialogs(stack) == 0, what="the dialog gone")


def test_status_finds_and_removes_an_orphan_session(
    stack: Stack, log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An rtpengine session with no dialog (offered behind Kamailio's back) is an orphan; a
    call up is consistent; `--remove-orphans` deletes the orphan (and its Redis key)."""
    vip1 = stack.policy.vips[0]
    sdp = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           "m=audio 40000 RTP/AVP 8\r\n")  # fmt: skip
    stack.ng(vip1).command("offer", sdp=sdp, **{"call-id": "cdr-orphan", "from-tag": "o1"})
    uas = start_uas(log_dir)
    uac = start_uac(log_dir, VIP1, "cdr-consistent", duration_ms=3000)
    wait_for(lambda: active_dialogs(stack) == 1, what="the call up")
    dialogs = list(stack.rpc.call("dlg.list") or [])
    [vip] = [m for m in media_reconciliation(stack.policy, dialogs, min_age_s=0)
             if m["vip"] == VIP1]  # fmt: skip
    assert list(vip["orphan_sessions"]) == ["cdr-orphan"]
    assert not vip["dialogs_without_media"]
    assert (vip["dialogs"], vip["sessions"]) == (1, 2)
    assert remove_orphans({"media": [vip]}) == ["cdr-orphan"]
    assert stack.ng(vip1).list_calls() == ["cdr-consistent"]
    assert_ok(uac)
    assert_ok(uas)
    capsys.readouterr()
    assert main(["status", "--run-dir", str(stack.run_dir)]) == 0
    assert "media per VIP" in capsys.readouterr().out


def kamailio_count(stack: Stack, name: str) -> int:
    """A Kamailio statistic (kamailio.cfg counts the records it writes itself)."""
    for line in stack.rpc.call("stats.get_statistics", name) or []:
        stat, _, value = str(line).partition(" = ")
        if stat.rsplit(":", 1)[-1] == name:
            return int(value)
    raise AssertionError(f"no statistic {name}")


def test_kamailio_cfg_writes_an_answered_calls_record_itself(stack: Stack, log_dir: Path) -> None:
    """event_route[dialog:end] writes it with one EVALSHA (no Python): counted in Kamailio's
    statistics, shown in kemi_ha_cdr_writes_total; the entry is the one Python would write."""
    stack.redis_client().script_load(cdr.WRITE_ENDED_LUA)  # else its first NOSCRIPT goes to Python
    before = kamailio_count(stack, "kha_cdr_written")
    uas = start_uas(log_dir)
    assert_ok(start_uac(log_dir, VIP1, "cdr-by-cfg", duration_ms=1500))
    assert_ok(uas)
    record = one_cdr(stack, "cdr-by-cfg")
    assert kamailio_count(stack, "kha_cdr_written") == before + 1
    assert (record["reason"], record["code"], record["end_node"]) == ("bye_caller", "200",
                                                                     "127.0.0.1")  # fmt: skip
    answer, end = int(record["answer_ms"]), int(record["end_ms"])
    assert 0 < int(record["invite_ms"]) <= answer < end
    assert record["duration_s"] == str(cdr.answered_seconds(answer, end))
    assert 1.4 <= float(record["duration_s"]) <= 2.5
    page = urllib.request.urlopen(f"{stack.http_url}/metrics", timeout=5).read().decode()
    written = re.search(r'^kemi_ha_cdr_writes_total\{result="written"\} (\S+)$', page, re.M)
    assert written and float(written[1]) >= before + 1


@pytest.mark.parametrize("ms", [0, 1, 5, 10, 99, 100, 101, 120, 999, 1000, 1001, 1010, 1500,
                                12_345, 60_000, 86_400_007, 1_209_600_000])  # fmt: skip
def test_the_ended_script_works_out_times_as_python_does(stack: Stack, ms: int) -> None:
    """What kamailio.cfg sends (answer as the dialog variable holds it, or start_ts; the end
    as $TV(Sn)): answer, end and duration as kemi.core.cdr computes them."""
    client = stack.redis_client()
    sha = client.script_load(cdr.WRITE_ENDED_LUA)
    facts = ODD_FACTS[0].encode()
    end_ms = 1_765_000_000_000 + ms
    tv = f"{end_ms // 1000}.{end_ms % 1000:03d}{ms % 1000:03d}"  # sub-ms digits are dropped
    for how, answer_var, start_ts in (("var", "1765000000000", "1764999999"),
                                      ("start", "", "1765000000"), ("none", "0", "0")):  # fmt: skip
        call_id = f"times-{ms}-{how}"
        keys = [cdr.once_key(call_id, "t:a:g"), cdr.STREAM]
        args = ["n1", str(cdr.ONCE_TTL_S), facts, call_id, answer_var, start_ts, tv, "200",
                "bye_callee"]  # fmt: skip
        assert client.evalsha(sha, 2, *keys, *args)
        [entry] = cdrs(stack, call_id)
        answer = cdr.answer_time_ms(answer_var, int(start_ts))
        assert (entry["from_tag"], entry["answer_ms"], entry["end_ms"]) == ("t:a:g", str(answer),
                                                                           str(end_ms))  # fmt: skip
        assert entry["duration_s"] == str(cdr.answered_seconds(answer, end_ms))


@pytest.mark.parametrize(("key", "tv", "answer"), [
    ("kha:cdr:once:f:other-call", "1765000000.000000", "0"),  # the key is not this call's
    ("kha:cdr:once:f:times-bad", "1765000000.5", "0"),  # not $TV(Sn)
    ("kha:cdr:once:f:times-bad", "9007199254741.000000", "0"),  # past 2^53 ms
    ("kha:cdr:once:f:times-bad", "1765000000.000000", "9007199254740993"),
])  # fmt: skip
def test_the_ended_script_refuses_arguments_it_cannot_store_exactly(
    stack: Stack, key: str, tv: str, answer: str
) -> None:
    client = stack.redis_client()
    sha = client.script_load(cdr.WRITE_ENDED_LUA)
    args = ["n1", "60", ODD_FACTS[0].encode(), "times-bad", answer, "0", tv, "200", "bye_caller"]
    with pytest.raises(redis.ResponseError, match=cdr.BAD_ARGS):
        client.evalsha(sha, 2, key, cdr.STREAM, *args)
    assert not client.exists(key) and not cdrs(stack, "times-bad")


def test_a_call_ending_while_redis_is_down_is_recorded_once_it_is_back(
    stack: Stack, log_dir: Path
) -> None:
    """Last in this file (it restarts Redis): the cfg's write fails, Python's store spools the
    record, the timer writes it when Redis answers again. Nothing lost, nothing twice."""
    uas = start_uas(log_dir)
    uac = start_uac(log_dir, VIP1, "cdr-redis-down", duration_ms=3000)
    wait_for(lambda: active_dialogs(stack) == 1, 10, "the call up")
    assert stack.redis_daemon is not None
    stack.redis_daemon.stop()
    try:
        assert_ok(uac)
        assert_ok(uas)
        log = stack.log_dir / "kamailio.log"
        wait_for(lambda: b"cdr spooled" in log.read_bytes(), 10, "the record spooled")
        assert not list(stack.run_dir.glob("cdr-spool/.*.tmp"))
        assert list(stack.run_dir.glob("cdr-spool/*.json"))
    finally:
        stack.start_redis()
    record = one_cdr(stack, "cdr-redis-down", timeout=20)  # the timer drains every 2 s
    assert (record["reason"], record["code"]) == ("bye_caller", "200")
    wait_for(lambda: not list(stack.run_dir.glob("cdr-spool/*.json")), 10, "the spool empty")
