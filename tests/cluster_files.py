"""Cluster files for tests: a deploy example (or any text) written to a temporary directory with
its base policy path made absolute and a fresh Redis password file beside it (redis.pass, mode
600): the examples name one, and none is committed."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from kemi.lab.drill import REDIS_PASSWORD_FILE
from kemi.lab.passwords import write_password

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "cluster.example.yaml"


def cluster_file(directory: Path, text: str, name: str = "cluster.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(text.replace("../policies/", f"{REPO}/policies/"))
    if not (directory / REDIS_PASSWORD_FILE).exists():
        write_password(directory / REDIS_PASSWORD_FILE)
    return path


def example(directory: Path, source: Path = EXAMPLE) -> Path:
    return cluster_file(directory, source.read_text(), source.name)


def password(directory: Path) -> str:
    return (directory / REDIS_PASSWORD_FILE).read_text().strip()


@contextlib.contextmanager
def installed_agent(name: str) -> Iterator[Path]:
    """deploy/ocf/NAME copied where any user can run it, as an operator installs it: ocf-tester
    runs meta-data as `nobody` (resource-agents 4.16, Debian 13), which cannot reach a checkout
    under /root or pytest's 0700 temporary directories."""
    directory = Path(tempfile.mkdtemp(prefix=f"kemi-ha-ocf-{name}-"))
    try:
        directory.chmod(0o755)
        agent = directory / name
        shutil.copy(REPO / "deploy" / "ocf" / name, agent)
        agent.chmod(0o755)
        yield agent
    finally:
        shutil.rmtree(directory, ignore_errors=True)
