"""Each OCF agent's meta-data runs nothing: Pacemaker asks for it before every start (and as
`nobody` in ocf-tester). A backquote in its unquoted here-document once ran `kemi-ha run` there."""

from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
AGENTS = sorted((REPO / "deploy" / "ocf").iterdir())


@pytest.mark.parametrize("agent", AGENTS, ids=lambda p: p.name)
def test_meta_data_is_xml_and_runs_no_command(agent: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("kemi-ha", "kamailio", "rtpengine", "redis-cli", "ip"):  # would leave a mark
        fake = bin_dir / name
        fake.write_text(f'#!/bin/sh\necho {name} "$@" >> {marker}\n')
        fake.chmod(0o755)
    result = subprocess.run(
        [str(agent), "meta-data"], capture_output=True, text=True, timeout=30,
        env={"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
             "OCF_ROOT": "/usr/lib/ocf"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), marker.read_text()
    root = ET.fromstring(result.stdout)
    assert root.tag == "resource-agent" and root.find("longdesc") is not None
    assert "not found" not in result.stderr, result.stderr
