"""Management HTTP access: a private listener (node.yaml) and the run dir's token file."""

from __future__ import annotations

from pathlib import Path

import pytest

from kemi.core.node_spec import NodeConfigSpec, check_node
from kemi.ops.httptoken import authorization, ensure_token, token_path


@pytest.mark.parametrize(
    ("address", "refused"),
    [("127.0.0.1", False), ("10.1.1.7", False), ("192.168.3.4", False), ("fd00::1", False),
     ("0.0.0.0", True), ("1.1.1.1", True), ("8.8.8.8", True)],
)  # fmt: skip
def test_management_http_stays_on_a_private_address(address: str, refused: bool) -> None:
    node = NodeConfigSpec(node_id=1, node_address="10.1.1.7", policy="/p.yaml",
                          http_address=address)  # fmt: skip
    problems = [p for p in check_node(node) if p.path == ("http_address",)]
    assert bool(problems) is refused


def test_token_is_created_once_with_mode_600(tmp_path: Path) -> None:
    first = ensure_token(tmp_path)
    assert len(first) >= 32
    assert token_path(tmp_path).stat().st_mode & 0o777 == 0o600
    token_path(tmp_path).chmod(0o644)
    assert ensure_token(tmp_path) == first  # kept across restarts, mode repaired
    assert token_path(tmp_path).stat().st_mode & 0o777 == 0o600
    assert authorization(tmp_path) == {"Authorization": f"Bearer {first}"}
