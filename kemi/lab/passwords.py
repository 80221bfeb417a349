"""Redis passwords for the lab: a fresh one per cluster, as an operator makes it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_password(path: Path) -> None:
    """A fresh Redis password, mode 600 from the start (render refuses a wider mode)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(secrets.token_hex(32) + "\n")
