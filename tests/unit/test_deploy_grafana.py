"""The dashboard and alert rules only use metric names kemi-ha exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
# Counters/histograms from kemi/shell/metrics.py, scrape-time gauges (DMQ peers among them) from
# kemi/shell/routes.py.
SOURCES = [REPO / "kemi" / "shell" / "metrics.py", REPO / "kemi" / "shell" / "routes.py"]


def exported() -> set[str]:
    names: set[str] = set()
    for path in SOURCES:
        names |= set(re.findall(r'"(kemi_ha_[a-z_]+)"', path.read_text()))
    return names


def used(text: str) -> set[str]:
    found = set(re.findall(r"\b(kemi_ha_[a-z_]+)", text))
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in found}


def test_dashboard_uses_exported_metrics() -> None:
    text = (REPO / "deploy" / "grafana" / "dashboard.json").read_text()
    json.loads(text)
    assert used(text) <= exported(), used(text) - exported()


def test_alert_rules_use_exported_metrics_and_cover_the_cases() -> None:
    text = (REPO / "deploy" / "grafana" / "alerts.yaml").read_text()
    rules = {r["alert"] for g in yaml.safe_load(text)["groups"] for r in g["rules"]}
    assert {"KemiHaChannelLimitNear", "KemiHaRtpengineDown", "KemiHaDmqPeerDown",
            "KemiHaPolicyRefused", "KemiHaSourceBanned", "KemiHaManyBans",
            "KemiHaGatewaySetDown"} <= rules  # fmt: skip
    assert used(text) <= exported(), used(text) - exported()
