"""SIPp runs for the tests, the benchmarks and the drill, with our scenarios (tests/sipp)."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kemi.ops.netns import netns_exec
from kemi.ops.stack import REPO_ROOT, find_binary

SCENARIOS = REPO_ROOT / "tests" / "sipp"


@dataclass
class SippRun:
    """One SIPp process; exit code 0 means every call of the run succeeded."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def sipp(
    name: str,
    scenario: str,
    log_dir: Path,
    local_ip: str,
    local_port: int,
    media_port: int,
    *args: str,
    target: str | None = None,
    netns: str | None = None,
    settle: float = 0.05,
) -> SippRun:
    argv = [
        find_binary("sipp"),
        "-sf",
        str(SCENARIOS / scenario),
        "-i",
        local_ip,
        "-p",
        str(local_port),
        "-mi",
        local_ip,
        "-mp",
        str(media_port),
        "-nostdin",
        "-trace_err",
        "-error_file",
        str(log_dir / f"{name}-errors.log"),
        *args,
    ]
    if target:
        argv.append(target)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            netns_exec(netns, argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=log_dir,
        )
    time.sleep(settle)  # a callee must be listening before its caller starts
    return SippRun(name, proc, log_path)
