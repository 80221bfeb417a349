"""Every Prometheus object of kemi-ha, and the /metrics page.

Rules:
- counters and the latency histogram are recorded by each Kamailio process into its own file in
  prometheus-client's multiprocess format (kemi.shell.procmetrics: one memory store per event,
  no lock, no syscall): the launcher empties PROMETHEUS_MULTIPROC_DIR at start and sets it in
  Kamailio's environment; /metrics sums the files of every process, so a scrape answered by one
  worker shows all;
- the objects are created once per process, when this module is first imported (a KEMI reload
  re-runs the script, not this module, so nothing is registered twice);
- gauges of the running state are computed at scrape time (ScrapeState), not stored;
- labels are low-cardinality only: VIP, rtpengine set, tenant, trunk, code class, method.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from kemi.shell.procmetrics import Counter, Histogram
from kemi.shell.procmetrics import after_fork as after_fork  # for the router's child_init

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

INVITES = Counter(
    "kemi_ha_initial_invites_total",
    "Initial INVITEs by final result (class of the final response sent upstream)",
    ["vip", "result"],
)
LIMIT_REJECTIONS = Counter(
    "kemi_ha_limit_rejections_total",
    "Initial INVITEs refused by a channel limit",
    ["limit", "key"],
)
INDIALOG = Counter("kemi_ha_indialog_requests_total", "In-dialog requests routed", ["method"])
RTPENGINE_CALLS = Counter(
    "kemi_ha_rtpengine_commands_total", "rtpengine commands sent, per set", ["set", "command"]
)
RTPENGINE_ERRORS = Counter(
    "kemi_ha_rtpengine_errors_total", "rtpengine commands that failed, per set", ["set", "command"]
)
KDMQ = Counter("kemi_ha_kdmq_requests_total", "KDMQ requests received", ["result"])
DMQ_RESYNCS = Counter(
    "kemi_ha_dmq_resync_requests_total",
    "Sync requests to a DMQ peer that became active (start, end of a partition), per module",
    ["module", "result"],
)
TAKEOVER_REPLIES = Counter(
    "kemi_ha_takeover_replies_total",
    "Replies of a known dialog with no transaction (a dead node's calls), by action",
    ["action"],
)
TAKEOVER_DIALOGS = Counter(
    "kemi_ha_takeover_dialog_rpcs_total",
    "Dialogs confirmed or ended by RPC for a dead node's calls, by result",
    ["what", "result"],
)
BANS = Counter(
    "kemi_ha_bans_total", "Sources banned by this node (flood or scanner), cluster-wide", ["reason"]
)
FLOOD_DROPS = Counter(
    "kemi_ha_flood_drops_total",
    "Requests dropped unanswered: source banned, scanner User-Agent, or over its rate",
    ["reason"],
)
NO_GATEWAY = Counter(
    "kemi_ha_no_gateway_total",
    "Initial INVITEs answered 503 because no gateway of their set was up",
    ["gateway_set"],
)
GATEWAY_MARKED_DOWN = Counter(
    "kemi_ha_gateway_marked_down_total",
    "Gateways marked down by a call that got no answer (408), per set",
    ["gateway_set"],
)
POLICY_RELOADS = Counter(
    "kemi_ha_policy_reloads_total", "Policy reloads asked, by result", ["result"]
)
EXCEPTIONS = Counter(
    "kemi_ha_route_exceptions_total", "Exceptions caught in KEMI routes", ["route"]
)
CDR_WRITES = Counter(
    "kemi_ha_cdr_writes_total",
    "Call records by result: written, duplicate (another writer was first), spooled (Redis "
    "did not take it: retried from the node's spool), lost (not even spooled)",
    ["result"],
)
CALLS_ENDED = Counter(
    "kemi_ha_calls_ended_total",
    "Calls this node ended itself (dead media, maximum duration), by result of dlg.end_dlg",
    ["reason", "result"],
)
REQUEST_ROUTE_SECONDS = Histogram(
    "kemi_ha_request_route_seconds",
    "Time spent in the KEMI request route, per SIP request",
    buckets=(25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1),
)

CODE_CLASSES = {n: f"{n}xx" for n in range(1, 7)}


def code_class(code: int) -> str:
    return CODE_CLASSES.get(code // 100, "other")


@dataclass
class Gauge:
    name: str
    help: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple[str, ...], float]] = field(default_factory=list)


class ScrapeState:
    """Collects the gauges a scrape asks for, from a callable reading the live system."""

    def __init__(self, read: Callable[[], Iterable[Gauge]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        for gauge in self.read():
            family = GaugeMetricFamily(gauge.name, gauge.help, labels=list(gauge.labels))
            for values, value in gauge.samples:
                family.add_metric(list(values), value)
            yield family


# Counts Kamailio keeps itself (statistics module), added to our counters' samples at scrape:
# (counter, label values) -> Kamailio statistic. kamailio.cfg's event_route[dialog:end] writes
# answered calls' records without Python.
KAMAILIO_COUNTS: dict[tuple[Counter, tuple[str, ...]], str] = {
    (CDR_WRITES, ("written",)): "kha_cdr_written",
    (CDR_WRITES, ("duplicate",)): "kha_cdr_duplicate",
}
Added = Mapping[tuple[Counter, tuple[str, ...]], float]  # what to add to which sample


class CountersPlusKamailio:
    """Every process's counters (prometheus-client's multiprocess files), with the counts
    Kamailio's own statistics hold added to the same samples."""

    def __init__(self, added: Added) -> None:
        self.added = added
        self.processes = MultiProcessCollector(None) if os.environ.get(MULTIPROC_ENV) else None

    def collect(self) -> Iterator[Metric]:
        left = {}  # (sample name, its labels sorted) -> (counter, labels, value)
        for (counter, values), value in self.added.items():
            labels = dict(zip(counter.labelnames, values, strict=True))
            if value:
                left[(f"{counter.name}_total", tuple(sorted(labels.items())))] = (
                    counter, labels, value)  # fmt: skip
        families = list(self.processes.collect()) if self.processes else []
        for family in families:
            for i, sample in enumerate(family.samples):
                added = left.pop((sample.name, tuple(sorted(sample.labels.items()))), None)
                if added is not None:
                    family.samples[i] = sample._replace(value=sample.value + added[2])
        by_name = {family.name: family for family in families}
        for (name, _), (counter, labels, value) in left.items():  # no process counted it yet
            family = by_name.get(counter.name)
            if family is None:
                family = by_name[counter.name] = CounterMetricFamily(
                    counter.name, counter.documentation, labels=counter.labelnames
                )
                families.append(family)
            family.add_sample(name, labels, value)
        yield from families


def metrics_page(
    read_state: Callable[[], Iterable[Gauge]],
    kamailio_counts: Added | None = None,
) -> bytes:
    """The text exposition: all processes' counters (plus what Kamailio counted itself) and
    the gauges read now."""
    registry = CollectorRegistry()
    registry.register(CountersPlusKamailio(kamailio_counts or {}))  # type: ignore[arg-type]
    registry.register(ScrapeState(read_state))  # type: ignore[arg-type]
    return generate_latest(registry)
