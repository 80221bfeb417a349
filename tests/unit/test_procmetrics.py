"""Per-process metrics (kemi.shell.procmetrics): the unchanged prometheus-client multiprocess
collector reads what every process counted, immediately, names and labels as before."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from kemi.shell import metrics, procmetrics


def scrape(directory: Path) -> dict[str, float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))
    samples = {}
    for line in generate_latest(registry).decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_counts_of_every_process_are_summed_at_scrape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(procmetrics.MULTIPROC_ENV, str(tmp_path))
    counter = procmetrics.Counter("t_calls_total", "calls", ["vip", "result"])
    histogram = procmetrics.Histogram("t_seconds", "time", buckets=(0.001, 0.01))
    procmetrics.after_fork()
    counter.labels("10.0.0.1", "2xx").inc()
    counter.labels("10.0.0.1", "2xx").inc()
    histogram.observe(0.0005)
    pid = os.fork()
    if pid == 0:  # a second Kamailio process: its own file
        try:
            procmetrics.after_fork()
            counter.labels("10.0.0.1", "2xx").inc(3)
            counter.labels("10.0.0.2", "4xx").inc()
            histogram.observe(0.5)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    samples = scrape(tmp_path)
    assert samples['t_calls_total{result="2xx",vip="10.0.0.1"}'] == 5
    assert samples['t_calls_total{result="4xx",vip="10.0.0.2"}'] == 1
    assert samples['t_seconds_bucket{le="0.001"}'] == 1
    assert samples['t_seconds_bucket{le="+Inf"}'] == 2
    assert samples["t_seconds_count"] == 2
    assert samples["t_seconds_sum"] == pytest.approx(0.5005)
    assert len(list(tmp_path.glob("counter_kha*.db"))) == 2


def test_without_a_multiprocess_dir_counts_stay_in_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(procmetrics.MULTIPROC_ENV, raising=False)
    procmetrics.after_fork()  # as in a fresh process
    counter = procmetrics.Counter("t_local_total", "local", ["k"])
    counter.labels("a").inc()
    counter.labels("a").inc()
    assert counter.labels("a").get() == 2


def test_kamailios_own_counts_are_added_to_the_same_samples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kamailio.cfg counts the records it writes in Kamailio's statistics; the page shows one
    counter: the processes' counts plus Kamailio's, a label only Kamailio counted included."""
    monkeypatch.setenv(procmetrics.MULTIPROC_ENV, str(tmp_path))
    counter = procmetrics.Counter("t_writes_total", "writes", ["result", "store"])
    procmetrics.after_fork()
    counter.labels("written", "a").inc(2)
    added = {(counter, ("written", "a")): 7.0, (counter, ("duplicate", "a")): 1.0,
             (counter, ("lost", "a")): 0.0}  # fmt: skip
    registry = CollectorRegistry()
    registry.register(metrics.CountersPlusKamailio(added))  # type: ignore[arg-type]
    page = generate_latest(registry).decode()
    assert 't_writes_total{result="written",store="a"} 9.0' in page
    assert 't_writes_total{result="duplicate",store="a"} 1.0' in page
    assert "lost" not in page
    assert page.count("# TYPE t_writes_total counter") == 1
