"""deploy/fence/fence_kemiha_netns speaks the fence-agents protocol (what pacemaker-fenced uses)."""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "deploy" / "fence" / "fence_kemiha_netns"


def agent(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AGENT), *args], input=stdin, capture_output=True, text=True,
                          timeout=10)  # fmt: skip


@pytest.mark.parametrize("how", [("-o", "metadata"), ("--action=metadata",), ()])
def test_metadata_is_fence_agents_xml(how: tuple[str, ...]) -> None:
    result = agent(*how, stdin="action=metadata\n" if not how else "")
    assert result.returncode == 0, result.stderr
    root = ET.fromstring(result.stdout)
    assert root.tag == "resource-agent" and root.attrib["name"] == "fence_kemiha_netns"
    params = {p.attrib["name"] for p in root.iter("parameter")}
    assert {"action", "plug", "port"} <= params
    actions = {a.attrib["name"] for a in root.iter("action")}
    assert {"on", "off", "reboot", "status", "monitor", "list", "metadata",
            "validate-all"} <= actions  # fmt: skip
    if shutil.which("xmllint"):
        lint = subprocess.run(["xmllint", "--noout", "-"], input=result.stdout, text=True,
                              capture_output=True)  # fmt: skip
        assert lint.returncode == 0, lint.stderr


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (("-o", "validate-all"), ""),  # no namespace named
        (("-o", "off", "-n", "a b"), ""),  # not a namespace name
        ((), "action=off\nplug=;rm\n"),
        (("-o", "dance", "-n", "x"), ""),
        (("--bogus",), ""),
    ],
)
def test_bad_requests_fail_with_1(args: tuple[str, ...], stdin: str) -> None:
    assert agent(*args, stdin=stdin).returncode == 1
