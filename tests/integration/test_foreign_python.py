"""Issue 19: the stack starts and answers with a foreign `python3` first on PATH.

Kamailio's libpython takes its prefix from the first `python3` on PATH. Two foreign ones:
- "installed": a symlink to a pyenv Python (same minor version as Debian's if there is one),
  which made Kamailio load pyenv's `_ssl` and fail with `undefined symbol: _PyModule_Add`;
- "stub": a fake installation (bin/python3 printing a wrong prefix + the lib/python3.X/os.py
  landmark libpython looks for), so machines without pyenv test it too; unprotected, Kamailio
  died with `Fatal Python error: init_fs_encoding` (no `encodings` there).
Own ports, so a `make run` or the other integration tests on this machine do not collide.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kemi.ops.embedded_python import check_embedded_python, system_python
from kemi.ops.stack import Stack, sip_options_ok
from tests.integration.conftest import VIP1, VIP2, loopback_config, two_vip_policy

pytestmark = pytest.mark.integration

SIP_PORT, TLS_PORT = 25260, 25261
NG_PORT = 22323


def pyenv_python3() -> Path | None:
    """A pyenv python3, preferring Debian's minor version (the one that fails subtly)."""
    found = sorted(Path("/root/.pyenv/versions").glob("*/bin/python3"))
    same = [p for p in found if p.parent.parent.name.startswith(system_python().version + ".")]
    return (same or found or [None])[0]


def foreign_bin(kind: str, tmp: Path) -> Path:
    """A directory whose `python3` is not Debian's."""
    bin_dir = tmp / "foreign" / "bin"
    bin_dir.mkdir(parents=True)
    if kind == "installed":
        target = pyenv_python3()
        if target is None:
            pytest.skip("no pyenv Python on this machine (the stub case still runs)")
        (bin_dir / "python3").symlink_to(target)
        return bin_dir
    stub = bin_dir / "python3"
    stub.write_text(f"#!/bin/sh\necho {tmp / 'foreign'}\n")
    stub.chmod(0o755)
    landmark = tmp / "foreign" / "lib" / f"python{system_python().version}" / "os.py"
    landmark.parent.mkdir(parents=True)
    landmark.touch()
    return bin_dir


@pytest.fixture(params=["installed", "stub"])
def foreign_stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    require_root: None,
) -> Iterator[Stack]:
    monkeypatch.setenv("PATH", f"{foreign_bin(request.param, tmp_path)}:{os.environ['PATH']}")
    (tmp_path / "run").mkdir()
    config = loopback_config(
        tmp_path / "run",
        two_vip_policy(NG_PORT, uas_port=25280, version="foreign-python-1"),
        sip_port=SIP_PORT,
        tls_port=TLS_PORT,
        redis_port=26479,
        rtp_port_base=46000,
        cli_port_base=29990,
        http_port=28190,
        dmq_port=25290,
        children=1,
    )
    with Stack(config) as running:
        yield running


def test_kamailio_starts_and_answers_with_a_foreign_python3_first_on_path(
    foreign_stack: Stack,
) -> None:
    assert os.environ["PATH"].split(":")[0].endswith("/foreign/bin")
    assert foreign_stack.rpc.call("core.uptime")["uptime"] >= 0
    for vip in (VIP1, VIP2):
        assert sip_options_ok(vip, SIP_PORT, timeout=2), f"no 200 to OPTIONS on {vip}"
    check_embedded_python(foreign_stack.kamailio_env())  # what `kemi-ha run` checks first
