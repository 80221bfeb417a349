"""Kamailio's embedded Python: the launcher's environment, its pre-flight check, and the
one-line cause read from kamailio.log when the KEMI script does not load."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kemi.cli import DEFAULT_POLICY
from kemi.ops.embedded_python import (
    SYSTEM_PATH,
    check_embedded_python,
    kamailio_failure,
    system_python,
)
from kemi.ops.procs import Daemon, StartError, wait_until
from kemi.ops.stack import REPO_ROOT, Stack, StackConfig

PYENV_SSL_LOG = """\
 0(10475) INFO: rr [rr_mod.c:188]: mod_init(): outbound module not available
 0(10475) ERROR: app_python3 [python_support.c:156]: python_handle_exception(): mod_init: \
Unhandled exception in the Python code:
Traceback (most recent call last):
  File "/work/kemi/entry.py", line 15, in <module>
    from kemi import metrics
  File "/root/.pyenv/versions/3.11.7/lib/python3.11/ssl.py", line 100, in <module>
    import _ssl             # if we can't import it, let the error propagate
    ^^^^^^^^^^^
ImportError: /root/.pyenv/versions/3.11.7/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-\
linux-gnu.so: undefined symbol: _PyModule_Add
 0(10475) ERROR: app_python3 [app_python3_mod.c:169]: mod_init(): failed to load python script
 0(10475) ERROR: <core> [core/sr_module.c:974]: init_mod(): Error while initializing module \
app_python3 (/usr/lib/x86_64-linux-gnu/kamailio/modules/app_python3.so)
ERROR: error while initializing modules
"""

FOREIGN_PREFIX_LOG = """\
Python path configuration:
  PYTHONHOME = (not set)
  sys.prefix = '/tmp/foreign'
Fatal Python error: init_fs_encoding: failed to get the Python codec of the filesystem encoding
Python runtime state: core initialized
ModuleNotFoundError: No module named 'encodings'

Current thread 0x00007f7dc5f5a740 (most recent call first):
  <no Python frame>
"""


def test_cause_of_a_foreign_stdlib_is_the_import_error() -> None:
    cause = kamailio_failure(PYENV_SSL_LOG)
    assert cause is not None and "\n" not in cause
    assert cause.startswith("ImportError: /root/.pyenv/versions/3.11.7/lib/python3.11/")
    assert "undefined symbol: _PyModule_Add" in cause
    assert cause.endswith("(app_python3 failed to load the KEMI script)")


def test_cause_of_a_foreign_prefix_is_the_fatal_error() -> None:
    assert kamailio_failure(FOREIGN_PREFIX_LOG) == (
        "Fatal Python error: init_fs_encoding: failed to get the Python codec of the filesystem"
        " encoding; ModuleNotFoundError: No module named 'encodings'"
    )


def test_cause_without_python_is_kamailios_first_error() -> None:
    log = (
        " 0(7) INFO: <core> [main.c:2000]: starting\n"
        " 0(7) ERROR: <core> [core/socket_info.c:1]: bind: Address already in use\n"
        " 0(7) ERROR: <core> [main.c:1]: exiting\n"
    )
    assert (
        kamailio_failure(log)
        == "ERROR: <core> [core/socket_info.c:1]: bind: Address already in use"
    )
    assert kamailio_failure(" 0(7) INFO: fine\n") is None


def test_kamailio_env_ignores_the_callers_path_and_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", f"{tmp_path}:/root/.pyenv/shims:{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONHOME", str(tmp_path))
    monkeypatch.setenv("PYTHONSTARTUP", str(tmp_path / "x.py"))
    env = Stack(StackConfig(run_dir=tmp_path, policy_path=DEFAULT_POLICY)).kamailio_env()
    assert env["PATH"] == SYSTEM_PATH
    assert env["PYTHONHOME"].split(":")[0] == system_python().prefix
    assert "PYTHONSTARTUP" not in env
    repo, site = env["PYTHONPATH"].split(os.pathsep)
    assert repo == str(REPO_ROOT) and Path(site, "yaml").is_dir()
    check_embedded_python(env)  # Debian's python3 with that env imports what entry.py does


def test_check_names_a_python3_that_is_not_debians(tmp_path: Path) -> None:
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\necho /opt/foreign /opt/foreign 3.99\n")
    fake.chmod(0o755)
    env = {"PATH": str(tmp_path), "PYTHONPATH": str(REPO_ROOT)}
    with pytest.raises(StartError, match=r"would be 3\.99 from /opt/foreign, not /usr/bin/python3"):
        check_embedded_python(env)


def test_a_check_raising_starterror_ends_the_wait_at_once() -> None:
    def exited() -> bool:
        raise StartError("kamailio exited with 255")

    with pytest.raises(StartError, match="exited with 255"):
        wait_until(exited, 30, "kamailio")  # not 30 s: the test would time out otherwise


def test_log_since_start_skips_earlier_runs(tmp_path: Path) -> None:
    log = tmp_path / "d.log"
    log.write_text("old run: ImportError: stale\n")
    daemon = Daemon("d", ["/bin/echo", "new run"], log)
    daemon.start()
    assert daemon.proc is not None and daemon.proc.wait() == 0
    assert daemon.log_since_start() == "new run\n"
