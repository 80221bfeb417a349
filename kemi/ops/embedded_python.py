"""The Python that Kamailio's app_python3 embeds, isolated from the caller's PATH and Python.

app_python3 links Debian's libpython, which takes its prefix from the first `python3` on PATH
(measured on Kamailio 5.6.3): with pyenv, conda or a foreign venv first on PATH it loads that
installation's stdlib and extension modules, and `import ssl` fails with `undefined symbol`.
Either a PATH of system directories or PYTHONHOME = /usr/bin/python3's prefix fixed it alone;
Kamailio gets both, and PYTHONPATH = repository root + this venv's site-packages.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from dataclasses import dataclass

from kemi.ops.procs import StartError

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's: the interpreter whose libpython Kamailio links
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # no /usr/local: source-built Pythons live there
_INFO = "import sys; print(sys.prefix, sys.exec_prefix, '%d.%d' % sys.version_info[:2])"
# What entry.py imports, minus KSR: the stdlib (ssl) and the venv's packages must both load.
_PROBE = "import kemi.shell.routes, kemi.policyfile; " + _INFO


@dataclass(frozen=True)
class PythonInfo:
    prefix: str
    exec_prefix: str
    version: str  # "3.11"

    @property
    def home(self) -> str:
        """PYTHONHOME's value: `prefix` or `prefix:exec_prefix`."""
        if self.prefix == self.exec_prefix:
            return self.prefix
        return f"{self.prefix}:{self.exec_prefix}"


def _parse_info(text: str) -> PythonInfo:
    prefix, exec_prefix, version = text.split()
    return PythonInfo(prefix, exec_prefix, version)


@functools.cache
def system_python() -> PythonInfo:
    """/usr/bin/python3's prefix and version, asked once (-I: no PYTHON* variable applies)."""
    try:
        out = subprocess.run(
            [SYSTEM_PYTHON, "-I", "-c", _INFO],
            capture_output=True, text=True, check=True, timeout=30, env={"PATH": SYSTEM_PATH},
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as exc:
        raise StartError(f"cannot run {SYSTEM_PYTHON} (run `make deps` as root): {exc}") from exc
    return _parse_info(out.stdout)


def venv_site_packages() -> str:
    """Site-packages of the interpreter running kemi-ha (the venv's: its shebang, not PATH)."""
    return sysconfig.get_paths()["purelib"]


def embedded_env(base: Mapping[str, str], pythonpath: list[str]) -> dict[str, str]:
    """`base` without any inherited PYTHON* variable, with Debian's Python pinned for Kamailio."""
    env = {k: v for k, v in base.items() if not k.startswith("PYTHON")}
    env["PATH"] = SYSTEM_PATH
    env["PYTHONHOME"] = system_python().home
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    return env


def check_embedded_python(env: Mapping[str, str]) -> None:
    """Raise a one-line StartError unless Kamailio, given `env`, would run Debian's Python.

    Two checks: kemi-ha itself runs on a venv of /usr/bin/python3 (else the venv's compiled
    packages are for another Python), and `python3` found and run the way Kamailio does
    (env's PATH and PYTHONHOME) has Debian's prefix and imports what entry.py imports.
    """
    debian = system_python()
    here = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if (os.path.realpath(sys.base_prefix), here) != (
        os.path.realpath(debian.prefix),
        debian.version,
    ):
        raise StartError(
            f"kemi-ha runs on Python {here} from {sys.base_prefix}, but Kamailio embeds "
            f"{SYSTEM_PYTHON} ({debian.version}, {debian.prefix}): rebuild the venv from it "
            "(rm -rf .venv && make venv)"
        )
    # Without the metrics directory: importing kemi.metrics there would write files into it.
    probe_env = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    probe = subprocess.run(
        ["python3", "-c", _PROBE],  # looked up on env's PATH, like Kamailio's libpython does
        env=probe_env, cwd="/", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"]
        raise StartError(f"Kamailio's Python environment is broken: {lines[-1]}")
    got = _parse_info(probe.stdout)
    if (got.prefix, got.version) != (debian.prefix, debian.version):
        raise StartError(
            f"Kamailio's Python would be {got.version} from {got.prefix}, not "
            f"{SYSTEM_PYTHON}'s {debian.version} from {debian.prefix} (check PATH/PYTHONHOME)"
        )


_LOG_LINE = re.compile(r"^\s*\d+\(\d+\)\s+")  # Kamailio's " 0(1234) " prefix with -E


def kamailio_failure(log: str) -> str | None:
    """Why Kamailio did not start, in one line, from its log of that start (None: unknown).

    In order: a fatal Python error, the last line of the last Python traceback (with
    app_python3's "failed to load" note), else Kamailio's first ERROR/CRITICAL line.
    """
    lines = log.splitlines()
    loaded = any("failed to load python script" in line for line in lines)
    note = " (app_python3 failed to load the KEMI script)" if loaded else ""
    for i, line in enumerate(lines):
        if line.startswith("Fatal Python error:"):
            after = [x for x in lines[i + 1 : i + 4] if re.match(r"^\w+(Error|Exception): ", x)]
            return "; ".join([line.strip(), *after[:1]]) + note
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call")]
    if starts:
        tail = lines[starts[-1] + 1 :]
        ends = [x for x in tail if x.strip() and not x[0].isspace() and not _LOG_LINE.match(x)]
        if ends:
            return ends[0].strip() + note
    for line in lines:
        if re.search(r"\b(ERROR|CRITICAL):", line):
            return _LOG_LINE.sub("", line).strip()
    return None
