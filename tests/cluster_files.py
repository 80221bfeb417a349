"""Cluster files for tests: a deploy example (or any text) written to a temporary directory with
its base policy path made absolute and a fresh Redis password file beside it (redis.pass, mode
600): the examples name one, and none is committed."""

from __future__ import annotations

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
