"""The TLS certificate of a node's SIP listeners (Kamailio's tls module, every VIP).

A cluster names its certificate and key in the cluster YAML (`tls`), rendered into each
node.yaml; the operator installs them (docs/security.md). A node started without them
(`make run`, the tests) gets a self-signed pair generated once in its run directory, the key
mode 600: TLS then works, but no client can verify it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SELF_SIGNED_DIR = "tls"
CERT_NAME, KEY_NAME = "self-signed.crt", "self-signed.key"


def self_signed_paths(run_dir: Path) -> tuple[Path, Path]:
    return run_dir / SELF_SIGNED_DIR / CERT_NAME, run_dir / SELF_SIGNED_DIR / KEY_NAME


def ensure_self_signed(cert: Path, key: Path, common_name: str = "kemi-ha") -> None:
    """Generate a self-signed RSA pair at `cert`/`key` unless both exist (key mode 600)."""
    if cert.is_file() and key.is_file():
        return
    cert.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
             "-days", "3650", "-subj", f"/CN={common_name}",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
    finally:
        os.umask(old_umask)
    key.chmod(0o600)
    cert.chmod(0o644)
