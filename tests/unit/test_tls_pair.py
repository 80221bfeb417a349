"""The TLS listeners' certificate: generated for a node that names none, required otherwise."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kemi.ops.procs import StartError
from kemi.ops.stack import REPO_ROOT, Stack, StackConfig
from kemi.ops.tlscert import self_signed_paths

POLICY = REPO_ROOT / "policies" / "default.yaml"


def test_a_node_naming_no_certificate_gets_a_self_signed_pair_once(tmp_path: Path) -> None:
    stack = Stack(StackConfig(run_dir=tmp_path, policy_path=POLICY))
    stack.check_tls_pair()
    cert, key = self_signed_paths(tmp_path)
    assert stack.config.tls_pair == (cert, key)
    assert key.stat().st_mode & 0o777 == 0o600
    text = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in", str(cert)],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "kemi-ha" in text
    before = cert.read_bytes()
    stack.check_tls_pair()
    assert cert.read_bytes() == before  # kept: clients that pinned it still match


def test_a_node_naming_missing_files_refuses_to_start_naming_them(tmp_path: Path) -> None:
    missing = {"tls_certificate": tmp_path / "no.crt", "tls_private_key": tmp_path / "no.key"}
    config = StackConfig(run_dir=tmp_path, policy_path=POLICY, **missing)  # type: ignore[arg-type]
    with pytest.raises(StartError, match=r"TLS certificate/key missing: .*no\.crt, .*no\.key"):
        Stack(config).check_tls_pair()
    assert not (tmp_path / "tls").exists()  # nothing generated in their place
