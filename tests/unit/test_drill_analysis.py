"""The drill's measurements, on synthetic data: a wrong gap would be a wrong promise."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest

from kemi.lab.drill import (
    CallResult,
    DrillCase,
    RunResult,
    distribution,
    events,
    gap_around,
    log_times,
    sipp_stats,
    takeover_mode,
)
from kemi.lab.drill_all import row

T0 = 1_000_000.0


def stream(start: float, end: float, step: float = 0.02) -> list[float]:
    n = round((end - start) / step)
    return [start + i * step for i in range(n + 1)]


def test_gap_across_the_failure_and_resumed_media() -> None:
    times = stream(T0 - 2, T0) + stream(T0 + 0.45, T0 + 3)  # last packet at T0, next at +450
    gap, resumed = gap_around(times, T0)
    assert abs(gap - 450) < 0.5
    assert resumed


def test_packets_in_flight_just_after_the_failure_do_not_hide_the_gap() -> None:
    times = stream(T0 - 1, T0 + 0.04) + stream(T0 + 1.2, T0 + 2)
    gap, resumed = gap_around(times, T0)
    assert 1159 < gap < 1161 and resumed


def test_media_that_never_came_back() -> None:
    gap, resumed = gap_around(stream(T0 - 1, T0), T0)
    assert gap == float("inf") and not resumed
    gap, resumed = gap_around([*stream(T0 - 1, T0), T0 + 5], T0)  # one stray packet
    assert not resumed


def test_sipp_final_counters() -> None:
    screen = (
        "  Successful call        |        0                  |       49                 \n"
        "  Failed call            |        0                  |        1                 \n"
    )
    assert sipp_stats(screen) == {"successful": 49, "failed": 1}


def test_log_times_takes_the_first_event_after_the_failure() -> None:
    now = datetime.now()
    stamp = now.strftime("%b %d %H:%M:%S")
    line = "drill2 pacemaker-controld notice: Result of start operation for vip1 on drill2: ok"
    text = f"{stamp}.100 {line}\n{stamp}.900 {line}\n"
    t_fail = datetime.strptime(f"{now.year} {stamp}.500", "%Y %b %d %H:%M:%S.%f").timestamp()
    ts = log_times(text, re.compile("start operation for vip1"), t_fail)
    assert ts is not None and abs((ts - t_fail) - 0.4) < 1e-3


@pytest.mark.parametrize("result", ["ok", "OK"], ids=["pacemaker-2.1", "3.0"])
def test_the_vip_start_is_found_in_each_pacemakers_log(result: str) -> None:
    patterns = {name: pattern for name, log, pattern in events(1) if log == "pacemaker"}
    line = f"Result of start operation for vip1 on drill2: {result}"
    assert patterns["VIP1 up"].search(line)
    assert not patterns["VIP1 up"].search("Result of start operation for vip1 on drill2: error")
    assert patterns["rtpengine promoted"].search(line.replace("start", "promote").replace(
        "vip1", "rtpengine1"))  # fmt: skip


def test_distribution_over_runs() -> None:
    text = distribution([400.0, 380.0, 1500.0, 390.0, 410.0, 420.0, 395.0, 385.0, 405.0, 415.0])
    assert "over 10 runs: median 402 ms, p90 420 ms, worst 1500 ms; runs over 1 s: 1" in text
    assert "p90 300 ms" in distribution([300.0])


def test_takeover_mode_from_the_agent_log(tmp_path: Path) -> None:
    log = tmp_path / "rtpengine.log"
    log.write_text("[100.0] kemi-ha: start (standby) own DB 18\n[100.5] INFO: [core] x\n"
                   "[200.2] kemi-ha: promoted: every call own (active)\n")  # fmt: skip
    assert takeover_mode(log, 200.0) == "hot standby (promoted 200 ms after the power-off)"
    assert takeover_mode(log, 50.0).startswith("cold restore")
    assert takeover_mode(log, 300.0) == "no promote logged"


def test_drill_all_row_counts_drops_and_keeps_the_observations() -> None:
    """One table row per case: drops summed over runs, gaps of the moved VIP's calls only, the
    scenario's observations kept, implied options shown (link-cut always has a quorum device)."""
    moved, still = "10.0.0.101", "10.0.0.102"
    calls = [
        CallResult("a", moved, 300.0, 14, True),
        CallResult("b", moved, 500.0, 24, True),
        CallResult("c", still, 40.0, 1, True),
        CallResult("d", moved, float("inf"), -1, False),
    ]
    run = RunResult(
        victim="drill1",
        failed_vip=moved,
        calls=calls,
        bye_ok=4,
        survivor_dialogs=0,
        survivor_channels=0,
        timeline_ms={},
        takeover="hot standby (promoted)",
        scenario="link-cut",
        observed=["quorum: drill1 Yes, drill2 No", "noise"],
    )
    line = row(DrillCase("link-cut", calls=4), [run], 1.5)
    assert "`link-cut` (2 nodes, qdevice)" in line
    assert "| 4 x 1 | **1** | 400 | 500 | 40 |" in line
    assert "quorum: drill1 Yes, drill2 No" in line and "noise" not in line
    assert "rtpengine: hot standby (promoted)" in line
