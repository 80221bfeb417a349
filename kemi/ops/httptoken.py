"""The management HTTP token: a secret file in the run directory, mode 600.

The launcher creates it when absent (kemi-ha run), Kamailio reads it once at load
(kemi/entry.py), `kemi-ha policy reload` sends it. State-changing HTTP requests carry it as
`Authorization: Bearer <token>`; without it they get 403. GET /metrics needs none.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

TOKEN_FILE = "http-token"


def token_path(run_dir: Path) -> Path:
    return Path(run_dir) / TOKEN_FILE


def ensure_token(run_dir: Path) -> str:
    """The node's token; created (mode 600, never readable by others) if there is none."""
    path = token_path(run_dir)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return read_token(run_dir)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_urlsafe(32) + "\n")
    return read_token(run_dir)


def read_token(run_dir: Path) -> str:
    return token_path(run_dir).read_text().strip()


def authorization(run_dir: Path) -> dict[str, str]:
    """The header of a state-changing management request."""
    return {"Authorization": f"Bearer {read_token(run_dir)}"}
