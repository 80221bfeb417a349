"""kemi.ops.procs.reap: the daemons of a killed `kemi-ha run` are stopped by PID, and only
those: not while their supervisor runs, not a process that reused a recorded PID."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kemi.ops import procs
from kemi.ops.procs import GROUPS_FILE, SUPERVISOR, Daemon


@pytest.fixture
def sleeper(tmp_path: Path) -> Iterator[Daemon]:
    daemon = Daemon("sleeper", ["sleep", "60"], tmp_path / "sleeper.log")
    daemon.start()
    yield daemon
    daemon.stop(timeout=1)


def test_reap_stops_what_a_dead_supervisor_recorded(tmp_path: Path, sleeper: Daemon) -> None:
    procs.record_groups(tmp_path, [sleeper])  # this process is the (dead-to-be) supervisor
    assert procs.reap(tmp_path) == [f"sleeper (pid {sleeper.pid})"]
    assert sleeper.proc is not None and sleeper.proc.wait(5) is not None
    assert not (tmp_path / GROUPS_FILE).exists()
    assert procs.reap(tmp_path) == []  # nothing recorded: nothing to do


def test_reap_leaves_daemons_whose_supervisor_still_runs(tmp_path: Path, sleeper: Daemon) -> None:
    supervisor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = procs.start_time(supervisor.pid)
        lines = [f"{SUPERVISOR} {supervisor.pid} {started}",
                 f"sleeper {sleeper.pid} {procs.start_time(sleeper.pid or 0)}"]  # fmt: skip
        (tmp_path / GROUPS_FILE).write_text("\n".join(lines) + "\n")
        assert procs.reap(tmp_path) == []
        assert sleeper.alive()
    finally:
        supervisor.kill()
        supervisor.wait()


def test_reap_never_signals_a_reused_pid(tmp_path: Path, sleeper: Daemon) -> None:
    """A recorded PID whose start time differs is another process now: left alone."""
    (tmp_path / GROUPS_FILE).write_text(f"sleeper {sleeper.pid} 1\ngarbage\n")
    assert procs.reap(tmp_path) == []
    assert sleeper.alive()
