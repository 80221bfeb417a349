"""Daemons started in the foreground, each in its own session, stopped by PID (never by name)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

GROUPS_FILE = "process-groups"  # in a run dir: the daemons `kemi-ha run` started, by PID
SUPERVISOR = "supervisor"  # the line of the process that started them (and stops them)


class StartError(RuntimeError):
    """A daemon did not come up; the message says which and where its log is."""


class NotReady(StartError):
    """wait_until ran out of time (a StartError raised by the check itself is final)."""


class Daemon:
    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0  # where this start's output begins in the (appended) log

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.log_offset = log.seek(0, os.SEEK_END)
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,  # its own process group: stopped as a whole
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the daemon and its children (what a crash looks like)."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; the whole process group, by PID."""
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()
        # Children that outlived the leader (Kamailio workers) share its group.
        self.signal(signal.SIGKILL)

    def log_since_start(self) -> str:
        """The log as written since the last start() (earlier runs' errors are not causes)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self.log_offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_until(check: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except StartError:
            raise  # the check knows it is over (e.g. the daemon exited): do not wait on
        except Exception as exc:  # not ready yet: keep the reason for the error
            last = exc
        time.sleep(step)
    raise NotReady(f"{what}: not ready after {timeout:.0f} s" + (f" ({last})" if last else ""))


# ----- leftovers of a supervisor that was killed -------------------------------------------


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22): with the
    PID, what tells a daemon we started from a later process that reused its PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def record_groups(run_dir: Path, daemons: Sequence[Daemon]) -> None:
    """Write which process groups this run's daemons lead (`name pid start-time` per line),
    so that whoever had to KILL `kemi-ha run` can still stop them by PID (`reap`)."""
    lines = [f"{SUPERVISOR} {os.getpid()} {start_time(os.getpid())}\n"]
    for daemon in daemons:
        pid = daemon.pid
        started = start_time(pid) if pid else None
        if pid and started is not None:
            lines.append(f"{daemon.name} {pid} {started}\n")
    tmp = run_dir / f".{GROUPS_FILE}.tmp"
    tmp.write_text("".join(lines))
    tmp.rename(run_dir / GROUPS_FILE)


def reap(run_dir: Path, timeout: float = 5.0) -> list[str]:
    """Stop the daemons a killed `kemi-ha run` left (TERM to each recorded group whose leader
    is still the process it started, KILL after `timeout`); returns what it stopped. Nothing
    while their supervisor runs (it stops them itself); a group whose leader already died is
    not touched (its PID may belong to another process now)."""
    path = run_dir / GROUPS_FILE
    try:
        entries = [line.split() for line in path.read_text().splitlines()]
    except OSError:
        return []
    found: list[tuple[str, int]] = []
    for entry in entries:
        if len(entry) != 3 or not entry[1].isdigit() or start_time(int(entry[1])) != entry[2]:
            continue  # gone (or its PID reused)
        if entry[0] == SUPERVISOR:
            if int(entry[1]) != os.getpid() and not exited(int(entry[1])):
                return []  # still supervised
            continue
        found.append((entry[0], int(entry[1])))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for _name, pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
        deadline = time.monotonic() + timeout
        while sig == signal.SIGTERM and time.monotonic() < deadline:
            if all(exited(pid) for _name, pid in found):
                break
            time.sleep(0.05)
    path.unlink(missing_ok=True)
    return [f"{name} (pid {pid})" for name, pid in found]


def exited(pid: int) -> bool:
    """No such process, or a zombie (it has exited; its parent has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2 :].startswith("Z")
