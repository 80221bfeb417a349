"""Counters and a histogram that cost one memory store per event: no lock, no syscall.

prometheus-client's multiprocess values take a lock, build a key and pack two doubles into the
mmap on every `inc` (~2.5 us each, ~40 % of kemi-ha's Python overhead per call, issue 18). Here
each process owns one file in PROMETHEUS_MULTIPROC_DIR in the same format (so the unchanged
`MultiProcessCollector` sums them at scrape time, whichever worker answers), and an event is
`values[slot] += 1` on a memoryview of that file's mapping:
- a sample's slot is created the first time its labels are seen in this process (the only
  slow path: one key appended to the file), then cached in a dict keyed by the label tuple;
- Kamailio workers are single-threaded and each writes only its own file: no lock is needed;
  an aligned 8-byte store is atomic on the platforms Kamailio runs on, so a scrape reading
  another process's file never sees a torn value;
- the file is opened lazily in the process that first counts (after Kamailio's fork), named
  `<type>_kha<pid>.db` so that no prometheus-client value of the same process shares it.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Sequence

from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.utils import floatToGoString

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREALLOCATED = 1 << 20  # room for ~6,000 samples per process before the file grows


class ProcessFile:
    """One process's file of samples: slots appended once, then written through a memoryview."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.pid = -1
        self.store: MmapedDict | None = None
        self.mapped: object = None
        self.view = memoryview(bytearray(8)).cast("d")
        self.memory: dict[str, int] = {}  # without a multiprocess dir: key -> index

    def slot(self, key: str) -> tuple[memoryview, int]:
        """The doubles view and index of `key`'s value in this process's file (slow path)."""
        pid = os.getpid()
        if self.pid != pid:  # first use in this process: its own file
            self.open(pid)
        store = self.store
        if store is None:  # counts visible to this process only (unit tests, tools)
            index = self.memory.setdefault(key, len(self.memory))
            if index >= len(self.view):
                raise RuntimeError("too many metric samples in one process")
            return self.view, index
        if key not in store._positions:
            store._init_value(key)  # appends the key with 0.0 (the file may grow)
        if store._m is not self.mapped:  # the file grew: a new mapping, same offsets
            self.mapped = store._m
            self.view = memoryview(store._m).cast("d")
        return self.view, store._positions[key] // 8

    def open(self, pid: int) -> None:
        directory = os.environ.get(MULTIPROC_ENV)
        self.pid, self.store, self.memory = pid, None, {}
        if not directory:
            self.view = memoryview(bytearray(PREALLOCATED)).cast("d")
            return
        path = os.path.join(directory, f"{self.kind}_kha{pid}.db")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.truncate(PREALLOCATED)
        self.store = MmapedDict(path)
        self.mapped = self.store._m
        self.view = memoryview(self.store._m).cast("d")


COUNTERS = ProcessFile("counter")
HISTOGRAMS = ProcessFile("histogram")


class CounterChild:
    __slots__ = ("index", "view")

    def __init__(self, view: memoryview, index: int) -> None:
        self.view = view
        self.index = index

    def inc(self, amount: float = 1) -> None:
        self.view[self.index] += amount

    def get(self) -> float:
        return float(self.view[self.index])


_ALL: list[Counter | Histogram] = []


def after_fork() -> None:
    """Forget what the parent process cached: this process counts into its own file.

    Called from child_init (Kamailio forks in C: Python's at-fork hooks do not run); the
    hot path never asks for the PID (getpid is a syscall)."""
    for metric in _ALL:
        metric.forget()
    COUNTERS.pid = HISTOGRAMS.pid = -1  # (re)opened, for this PID, at the next first count


class Counter:
    """`Counter(name, help, labels)`; `.labels(*values).inc()` as in prometheus-client."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.children: dict[tuple[str, ...], CounterChild] = {}
        _ALL.append(self)

    def forget(self) -> None:
        self.children = {}

    def labels(self, *values: str) -> CounterChild:
        child = self.children.get(values)
        if child is None:
            child = self._child(values)
        return child

    def _child(self, values: tuple[str, ...]) -> CounterChild:
        key = mmap_key(self.name, self.name + "_total", self.labelnames, list(values),
                       self.documentation)  # fmt: skip
        child = CounterChild(*COUNTERS.slot(key))
        self.children[values] = child
        return child


class Histogram:
    """An unlabelled histogram: `observe(seconds)` is a bisect and two stores."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = [float(b) for b in buckets] + [float("inf")]
        self.view: memoryview | None = None
        self.slots: list[int] = []
        self.sum_slot = 0
        _ALL.append(self)

    def forget(self) -> None:
        self.view = None

    def observe(self, amount: float) -> None:
        view = self.view
        if view is None:
            view = self._open()
        view[self.slots[bisect.bisect_left(self.bounds, amount)]] += 1
        view[self.sum_slot] += amount

    def _open(self) -> memoryview:
        self.slots = []
        for bound in self.bounds:
            key = mmap_key(self.name, self.name + "_bucket", ["le"], [floatToGoString(bound)],
                           self.documentation)  # fmt: skip
            self.view, index = HISTOGRAMS.slot(key)
            self.slots.append(index)
        key = mmap_key(self.name, self.name + "_sum", [], [], self.documentation)
        self.view, self.sum_slot = HISTOGRAMS.slot(key)
        return self.view
