"""Issue 5: /metrics served by Kamailio, aggregated over all workers, against what was done.

Counters must equal the calls made (whichever worker handled them), gauges must equal what the
dialog module reports over RPC, counters survive a policy reload, and `kemi-ha status --json`
agrees with both.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kemi.cli import main as kemi_ha
from kemi.ops.stack import Stack
from tests.integration.calls import (
    active_dialogs,
    assert_ok,
    start_load,
    start_uac,
    start_uas,
    wait_for,
)
from tests.integration.conftest import TEST_POLICY, VIP1, VIP2

pytestmark = pytest.mark.integration

POLICY = TEST_POLICY + "tenants: [{name: loop, sources: ['127.0.0.0/8'], limit: {max: 50}}]\n"


@pytest.fixture(scope="module")
def stack(stack: Stack) -> Iterator[Stack]:
    """The module's stack, with a tenant and a limit so that channel gauges exist."""
    policy_file = Path(stack.config.policy_path)
    policy_file.write_text(POLICY)
    assert kemi_ha(["policy", "reload", "--run-dir", str(stack.run_dir)]) == 0
    yield stack
    policy_file.write_text(TEST_POLICY)


def scrape(stack: Stack) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{stack.http_url}/metrics", timeout=5) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def status_json(stack: Stack, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert kemi_ha(["status", "--run-dir", str(stack.run_dir), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_counters_gauges_status_agree(
    stack: Stack, log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = scrape(stack)
    ok_vip1 = value(before, "kemi_ha_initial_invites_total", vip=VIP1, result="2xx")
    ok_vip2 = value(before, "kemi_ha_initial_invites_total", vip=VIP2, result="2xx")
    busy = value(before, "kemi_ha_initial_invites_total", vip=VIP1, result="4xx")

    uas = start_uas(log_dir, calls=None)
    assert_ok(start_load(log_dir, VIP1, rate=10, calls=6, duration_ms=300))
    assert_ok(start_load(log_dir, VIP2, rate=10, calls=4, duration_ms=300))
    uas.stop()
    busy_uas = start_uas(log_dir, "uas_busy.xml", calls=2)
    assert_ok(start_load(log_dir, VIP1, rate=10, calls=2, duration_ms=0, scenario="uac_busy.xml"))
    assert_ok(busy_uas)

    after = scrape(stack)
    assert value(after, "kemi_ha_initial_invites_total", vip=VIP1, result="2xx") == ok_vip1 + 6
    assert value(after, "kemi_ha_initial_invites_total", vip=VIP2, result="2xx") == ok_vip2 + 4
    assert value(after, "kemi_ha_initial_invites_total", vip=VIP1, result="4xx") == busy + 2
    assert value(after, "kemi_ha_indialog_requests_total", method="BYE") >= 10
    assert value(after, "kemi_ha_rtpengine_commands_total", set="1", command="offer") >= 8
    assert value(after, "kemi_ha_rtpengine_commands_total", set="2", command="offer") >= 4
    assert value(after, "kemi_ha_request_route_seconds_count") > 30
    assert value(after, "kemi_ha_rtpengine_up", set="1", vip=VIP1) == 1

    # one call up: the gauge, the dialog module over RPC and status agree
    uas = start_uas(log_dir)
    uac = start_uac(log_dir, VIP1, "metrics-long", duration_ms=3000)
    wait_for(lambda: active_dialogs(stack) == 1, what="one dialog up")
    live = scrape(stack)
    rpc_global = int(stack.rpc.call("dlg.profile_get_size", "kha_global"))
    rpc_tenant = int(stack.rpc.call("dlg.profile_get_size", "kha_tenant", "loop"))
    assert rpc_global == rpc_tenant == 1
    assert value(live, "kemi_ha_active_calls", profile="global", key="all") == rpc_global
    assert value(live, "kemi_ha_active_calls", profile="tenant", key="loop") == rpc_tenant
    assert value(live, "kemi_ha_channel_limit", profile="tenant", key="loop") == 50
    status = status_json(stack, capsys)
    channels = {(c["profile"], c["key"]): c for c in status["channels"]}
    assert channels[("global", "all")]["active"] == rpc_global
    assert channels[("tenant", "loop")] == {"profile": "tenant", "key": "loop", "active": 1,
                                            "limit": 50}  # fmt: skip
    assert status["metrics_url"] == f"{stack.http_url}/metrics"
    assert [s["up"] for s in status["rtpengine_sets"]] == [True, True]
    assert_ok(uac)
    assert_ok(uas)

    # a reload does not reset counters; status and metrics show the new version
    reloads = value(live, "kemi_ha_policy_reloads_total", result="accepted")
    Path(stack.config.policy_path).write_text(POLICY.replace("test-1", "test-metrics"))
    assert kemi_ha(["policy", "reload", "--run-dir", str(stack.run_dir)]) == 0
    final = scrape(stack)
    assert value(final, "kemi_ha_initial_invites_total", vip=VIP1, result="2xx") == ok_vip1 + 7
    assert value(final, "kemi_ha_policy_reloads_total", result="accepted") == reloads + 1
    assert status_json(stack, capsys)["policy"]["version"] == "test-metrics"
    wait_for(lambda: active_dialogs(stack) == 0, what="no dialog left")
    assert value(scrape(stack), "kemi_ha_active_calls", profile="global", key="all") == 0
