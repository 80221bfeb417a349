"""The kemi-ha command without daemons: exit codes and messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from kemi.cli import DEFAULT_POLICY, banner, main
from kemi.ops.stack import Stack, StackConfig


def test_run_banner_says_where_to_send_calls(tmp_path: Path) -> None:
    text = banner(Stack(StackConfig(run_dir=tmp_path, policy_path=DEFAULT_POLICY)))
    assert "VIP1 sip:127.0.0.1:5060" in text and "VIP2 sip:127.0.0.2:5060" in text
    assert "route default: sip:127.0.0.1:5080" in text
    assert "tests/sipp/uac.xml" in text


def test_policy_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "check", str(DEFAULT_POLICY)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: x\nvips: []\nroutes: []\n")
    assert main(["policy", "check", str(bad)]) == 1
    assert f"{bad}:2:1: vips: at least one VIP is required" in capsys.readouterr().err


def test_status_without_a_node_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--run-dir", str(tmp_path)]) == 1
    assert "no running node" in capsys.readouterr().err


def test_ban_without_a_node_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["ban", "list", "--run-dir", str(tmp_path)]) == 1
    assert "no running node" in capsys.readouterr().err


def test_bans_on_one_screen() -> None:
    from kemi.core.floods import Ban
    from kemi.ops.bans import BanError, check_source, render_bans

    assert render_bans([]) == "no bans in force"
    text = render_bans([Ban("203.0.113.9", 1_800_000_000, 42)])
    assert "203.0.113.9" in text and "2027-01-15 08:00:00" in text and "42s" in text
    assert check_source("2001:db8::0:1") == "2001:db8::1"
    with pytest.raises(BanError, match="not an IP address"):
        check_source("example.net")
