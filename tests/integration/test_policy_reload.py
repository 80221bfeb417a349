"""Issue 3: hot reload under load (20 cps), with real Kamailio, rtpengine, Redis and SIPp.

A route change applied mid-run moves the later calls to the new destination with no failed
call; a broken file is refused (logged with its reason), the old policy stays, no call fails.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kemi.cli import main as kemi_ha
from kemi.ops.stack import Stack
from tests.integration.calls import assert_ok, start_load, start_uas, uas_calls
from tests.integration.conftest import TEST_POLICY, UAS_PORT, VIP1

pytestmark = pytest.mark.integration

UAS_B = UAS_PORT + 10


def test_route_change_and_broken_file_under_load(
    stack: Stack, log_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy_file = Path(stack.config.policy_path)
    run_dir = str(stack.run_dir)
    uas_a = start_uas(log_dir, calls=None, port=UAS_PORT)
    uas_b = start_uas(log_dir, calls=None, port=UAS_B)
    load = start_load(log_dir, VIP1, rate=20, calls=400, duration_ms=1000)
    try:
        time.sleep(6)
        policy_file.write_text(
            TEST_POLICY.replace("version: test-1", "version: test-2").replace(
                f"127.0.0.1:{UAS_PORT}", f"127.0.0.1:{UAS_B}"
            )
        )
        assert kemi_ha(["policy", "reload", "--run-dir", run_dir]) == 0
        assert "accepted" in capsys.readouterr().out
        time.sleep(6)
        b_before_broken = uas_calls(log_dir, UAS_B)
        assert b_before_broken > 0, "no call followed the new route"

        policy_file.write_text(TEST_POLICY.replace("destinations:", "destination:"))
        assert kemi_ha(["policy", "reload", "--run-dir", run_dir]) == 1
        refused = capsys.readouterr().err
        assert "REFUSED" in refused and "unknown key (did you mean 'destinations'?)" in refused
        assert_ok(load, 90)
    finally:
        policy_file.write_text(TEST_POLICY)
    time.sleep(2.5)  # the callees write their counters every second
    a_calls, b_calls = uas_calls(log_dir, UAS_PORT), uas_calls(log_dir, UAS_B)
    assert a_calls + b_calls == 400, (a_calls, b_calls)
    assert b_calls > b_before_broken, "after the refused reload calls must still take the new route"
    log = (stack.run_dir / "kamailio.log").read_text(errors="replace")
    assert "policy reload refused, test-2 stays in force" in log
    assert "unknown key" in log
    uas_a.stop()
    uas_b.stop()
