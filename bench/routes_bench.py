"""Python of kemi-ha's routes per call, against a stub KSR: µs per call and KSR calls per message.

What `make bench-cpu` measures inside Kamailio is too noisy on a shared 2-core machine to see a
few percent; this times only the Python the routes run for one call, with Kamailio replaced by
a stub, so that two versions of kemi/shell/routes.py can be compared deterministically:
- the policy is bench/cpu_bench.py's (a tenant by source network with a channel limit and NAT
  detection, a global limit, a prefix route with a number rewrite and two destinations, floods
  on), the router is built as kemi/entry.py builds it (call records on, with a writer that
  stores nothing: the Redis round trip is I/O, not Python);
- a call is the callbacks Kamailio runs for it, in order, with what Kamailio would answer:
  SIP only: INVITE (request route, branch route if armed), 180 and 200 (MANAGE_REPLY: there
  is no core reply route; the 200's keeps the answer time), ACK, BYE (request route; its
  `dialog:end` writes the record in kamailio.cfg, no Python), 200 of the BYE (no callback);
  `--with-dialog-end` adds Python's `ksr_dialog_end` (kamailio.cfg's fallback); SDP: the same
  with an offer in the INVITE and an answer in the 200 (the 180 without SDP);
- first every call runs once against tests/fakes' strict fake KSR (it knows Kamailio's real KEMI
  export list and argument types, and records every call): the KSR calls per message; then
  the timed runs use a stub built from the same export list (a function per exported name that
  answers what the fake was scripted to: no recording, no checks): the time of each message's
  callbacks (the scripting of the stub between messages left out), median of the runs, and
  per message in the fastest run (the least disturbed by other work on the machine).

Before/after on the same machine state: export the other version (`git archive REV | tar -x -C
DIR`) and run it with PYTHONPATH=DIR (an installed checkout otherwise wins).

Run: make bench  (or .venv/bin/python bench/routes_bench.py [--calls N] [--runs N]);
--cold evicts the caches before each message (what a Kamailio worker sees), --floor times
bench/kemi_floor.py the same way.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kemi.core.cdr import Cdr
from kemi.policyfile import parse_policy
from kemi.shell import log as kamailio_log
from kemi.shell.hygiene import CallRecords
from kemi.shell.policy_holder import PolicyHolder
from kemi.shell.routes import Router

BENCH = Path(__file__).resolve().parent


def load(name: str, path: Path) -> Any:
    """A module of this checkout that is not installed (bench/, tests/), by its path."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


fakes = load("kemi_fake_ksr", BENCH.parent / "tests" / "fakes" / "ksr.py")
FakeKSR, API_FILE, load_api = fakes.FakeKSR, fakes.API_FILE, fakes.load_api


def bench_policy_text() -> str:
    """bench/cpu_bench.py's policy, the one `make bench-cpu` runs."""
    return str(load("cpu_bench", BENCH / "cpu_bench.py").POLICY)


SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 6000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n"
)

# What a healthy Kamailio answers (the failure/limit/ban branches are the unit tests' job).
RETURNS: dict[str, Any] = {
    "maxfwd.process_maxfwd": 1, "sanity.sanity_check": 1, "force_rport": 1,
    "is_KDMQ": False, "is_CANCEL": False, "is_ACK": False, "is_OPTIONS": False,
    "is_INVITE": False, "is_BYE": False, "is_UPDATE": False, "is_myself_ruri": False,
    "siputils.has_totag": -1, "tmx.t_precheck_trans": -1, "tm.t_check_trans": -1,
    "textops.has_body": -1, "textops.has_body_type": -1, "rtpengine.set_rtpengine_set": 1,
    "rtpengine.rtpengine_offer": 1, "rtpengine.rtpengine_answer": 1,
    "rtpengine.rtpengine_delete0": 1, "dialog.dlg_manage": 1, "hdr.remove": 1, "rr.record_route": 1,
    "rr.loose_route": 1, "setdsturi": 1, "tm.t_on_branch": 1, "tm.t_on_reply": 1,
    "tm.t_on_failure": 1, "corex.set_send_socket": 1, "corex.set_send_socket_name": 1,
    "tm.t_relay": 1, "pvx.shv_get": 0, "dialog.get_profile_size": 1,
    "dialog.get_profile_size_static": 1, "dialog.set_dlg_profile": 1,
    "dialog.set_dlg_profile_static": 1, "dialog.is_known_dlg": 1, "isdsturiset": -1,
    "siputils.is_first_hop": 1, "nathelper.nat_uac_test": -1,
    "nathelper.handle_ruri_alias": 1, "htable.sht_get": None, "htable.sht_inc": 1,
    "dialog.dlg_set_timeout": 1,
}  # fmt: skip

CALL_PVS: dict[str, Any] = {
    "$Ri": "127.0.0.1", "$Rp": 5060, "$pr": "udp", "$si": "127.0.0.1", "$sp": 5070,
    "$rU": "1000", "$rd": "127.0.0.1", "$ru": "sip:1000@127.0.0.1:5060", "$fU": "sipp",
    "$fd": "127.0.0.1", "$ci": "1-bench@127.0.0.1", "$ft": "1SIPpTag001", "$tt": "",
    "$ua": "SIPp", "$rb": "", "$nh(u)": "sip:127.0.0.1:5080", "$fs": None, "$du": None,
    "$var(kha_n)": 0, "$hdr(P-Asserted-Identity)": None, "$hdr(Diversion)": None,
    "$dlg(state)": "1", "$dlg(callid)": "1-bench@127.0.0.1", "$dlg(from_tag)": "1SIPpTag001",
    "$dlg(start_ts)": "1700000000", "$jsonrpl(code)": "200",
    **{f"$avp(kha_{n})": None for n in ("dsts", "tried", "mflags", "vip", "counted", "late",
                                        "gws", "level", "nat", "nmflags")},
    **{f"$dlg_var(kha_{n})": None for n in ("mflags", "late", "prof", "nat", "nmflags", "dst",
                                            "cdr", "ta")},
}  # fmt: skip

Step = tuple[str, tuple[Any, ...]]  # Router method, its arguments


class Message:
    """One SIP message of the call: the callbacks Kamailio runs for it and what it answers."""

    def __init__(self, name: str, steps: list[Step], pvs: dict[str, Any],
                 returns: dict[str, Any]) -> None:  # fmt: skip
        self.name, self.steps, self.pvs, self.returns = name, steps, pvs, returns


def request(method: str, sdp: bool, in_dialog: bool, ends_dialog: bool = False) -> Message:
    steps: list[Step] = [("ksr_request_route", (None,))]
    if method == "INVITE" and not in_dialog:
        steps.append(("ksr_branch_manage", (None,)))  # run only if the route armed it
    if ends_dialog:  # kamailio.cfg's dialog:end fallback, inside the BYE's loose_route
        steps.append(("ksr_dialog_end", (None,)))
    pvs = {"$rm": method, "$rb": SDP if sdp else "", "$tt": "2SIPpTag" if in_dialog else "",
           "$dlg(state)": "3" if method == "ACK" else "4"}  # fmt: skip
    returns = {f"is_{method}": True, "siputils.has_totag": 1 if in_dialog else -1,
               "textops.has_body": 1 if sdp else -1,
               "textops.has_body_type": 1 if sdp else -1}  # fmt: skip
    return Message(method, steps, pvs, returns)


def reply(status: int, method: str, sdp: bool, manage: bool) -> Message:
    # A reply of a transaction: only the MANAGE_REPLY its request armed (no core reply route;
    # SL_REPLY runs for replies no transaction matched, none here; no dialog event: the 2xx's
    # MANAGE_REPLY keeps the answer time).
    steps: list[Step] = [("ksr_onreply_manage", (None,))] if manage else []
    pvs = {"$rs": status, "$rm": method, "$rb": SDP if sdp else "", "$tt": "2SIPpTag"}
    returns = {"textops.has_body": 1 if sdp else -1, "textops.has_body_type": 1 if sdp else -1}
    return Message(f"{status} {method}", steps, pvs, returns)


def call(sdp: bool, dialog_end: bool = False) -> list[Message]:
    return [
        request("INVITE", sdp, in_dialog=False),
        reply(180, "INVITE", sdp=False, manage=True),
        reply(200, "INVITE", sdp=sdp, manage=True),
        request("ACK", sdp=False, in_dialog=True),
        request("BYE", sdp=False, in_dialog=True, ends_dialog=dialog_end),
        reply(200, "BYE", sdp=False, manage=False),
    ]


class NullWriter:
    """A CDR store that keeps nothing (the Redis write is I/O, not the routes' Python)."""

    class Result:
        value = "written"

    def write(self, record: Cdr) -> Any:
        return self.Result

    def write_ended(self, end: Any) -> Any:
        return self.Result

    def drain(self) -> tuple[int, int]:
        return 0, 0


class StubKSR:
    """KSR with a plain function per exported name (nothing else resolves): answers from
    `returns`, PVs from `pvs`; no recording, no argument checks (the fake did those)."""

    def __init__(self, pvs: dict[str, Any], returns: dict[str, Any]) -> None:
        self.pvs, self.returns = pvs, returns
        modules: dict[str, dict[str, Callable[..., Any]]] = {}
        for qualified in load_api(API_FILE):
            module, _, name = qualified.rpartition(".")
            function = self._function(qualified)
            if module:
                modules.setdefault(module, {})[name] = function
            else:
                setattr(self, name, function)
        for module, functions in modules.items():
            setattr(self, module, type(module, (), {k: staticmethod(v)
                                                    for k, v in functions.items()}))  # fmt: skip

    def _function(self, qualified: str) -> Callable[..., Any]:
        pvs, returns = self.pvs, self.returns
        if qualified in ("pv.get", "pv.geti", "pv.gete", "pv.getw", "pv.getvs"):
            return pvs.__getitem__
        if qualified in ("pv.sets", "pv.seti"):
            return pvs.__setitem__
        if qualified == "pv.unset":
            return lambda name: pvs.__setitem__(name, None)

        def answer(*args: Any) -> Any:
            value = returns.get(qualified)
            return value(*args) if callable(value) else value

        return answer


def build_router(ksr: Any) -> Router:
    """As kemi.entry.mod_init builds it."""
    kamailio_log.install(ksr)
    lean = getattr(kamailio_log, "lean_records", None)  # None: a version before it (A/B runs)
    if lean is not None:
        lean()
    policy = parse_policy(bench_policy_text())
    holder = PolicyHolder(ksr, Path("/nonexistent/policy.yaml"), Path("/nonexistent"), policy,
                          load=lambda path: policy)  # fmt: skip
    calls = CallRecords(ksr, "127.0.0.1", NullWriter(), holder.current)
    return Router(ksr, holder, node_address="127.0.0.1", dmq=False, calls=calls)


def run_call(router: Any, ksr: Any, messages: list[Message],
             per_message: Callable[[str], None] | None = None,
             seconds: dict[str, float] | None = None,
             before: Callable[[], None] | None = None) -> None:  # fmt: skip
    """One call through the router; the PVs of the call carry from one message to the next
    (AVPs and dialog variables written by one callback are read by the next). `seconds`: the
    time of each message's callbacks added in (the stub's scripting between them left out);
    `before`: run ahead of each message, untimed (--cold: the caches evicted)."""
    clock = time.perf_counter
    pvs, returns = ksr.pvs, ksr.returns
    pvs.clear()
    pvs.update(CALL_PVS)
    armed: list[str] = []

    def arm_branch(name: str) -> int:
        armed.append(name)
        return 1

    for message in messages:
        returns.clear()
        returns.update(RETURNS)
        returns.update(message.returns)
        returns["tm.t_on_branch"] = arm_branch
        pvs.update(message.pvs)
        if before is not None:
            before()
        start = clock()
        for method, args in message.steps:
            if method == "ksr_branch_manage" and not armed:
                continue  # Kamailio runs a branch route only where t_on_branch() armed one
            getattr(router, method)(*args)
        if seconds is not None:
            seconds[message.name] = seconds.get(message.name, 0.0) + clock() - start
        if per_message is not None:
            per_message(message.name)


def count_calls(messages: list[Message]) -> dict[str, Counter[str]]:
    """KSR calls per message against the strict fake (which also checks names and types)."""
    fake = FakeKSR(returns=dict(RETURNS), pvs=dict(CALL_PVS))
    router = build_router(fake)
    counts: dict[str, Counter[str]] = {}
    seen = 0

    def per_message(name: str) -> None:
        nonlocal seen
        made = fake.calls[seen:]
        seen = len(fake.calls)
        counts[name] = Counter(c.name for c in made)
        errors = [c.args[0] for c in made if c.name in ("err", "warn")]
        if errors:
            raise SystemExit(f"routes_bench: {name} logged: {errors}")

    run_call(router, fake, messages, per_message)
    return counts


class Evict:
    """Inside Kamailio a worker takes every fourth message of its socket, rtpengine and the
    kernel running in between: its Python starts each callback from cold caches, ~15x the
    warm loop's time (docs/performance.md). --cold copies EVICT_BYTES (beyond this machine's
    L2 and its L3 share) before each message, untimed, to measure that regime."""

    EVICT_BYTES = 32 << 20

    def __init__(self) -> None:
        self.source = bytearray(self.EVICT_BYTES)
        self.target = bytearray(self.EVICT_BYTES)

    def __call__(self) -> None:
        self.target[:] = self.source


def floor_router(ksr: Any) -> Any:
    """bench/kemi_floor.py (the same KSR calls, straight-line) on this stub."""
    sys.modules["KSR"] = ksr
    return load("kemi_floor", BENCH / "kemi_floor.py").Floor()


def time_calls(messages: list[Message], calls: int, runs: int, cold: bool = False,
               floor: bool = False) -> list[dict[str, float]]:  # fmt: skip
    """µs of Python per message of a call (its callbacks), one dict per run."""
    ksr = StubKSR({}, {})
    router = floor_router(ksr) if floor else build_router(ksr)
    for _ in range(200):  # warm the caches (metric slots, method lookups)
        run_call(router, ksr, messages)
    before = Evict() if cold else None
    out = []
    for _ in range(runs):
        seconds: dict[str, float] = {}
        for _ in range(calls):
            run_call(router, ksr, messages, seconds=seconds, before=before)
        out.append({name: total / calls * 1e6 for name, total in seconds.items()})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--calls", type=int, default=2000, help="calls per timed run")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--verbose", action="store_true", help="KSR calls per message, by name")
    ap.add_argument(
        "--cold",
        action="store_true",
        help="caches evicted before each message (Kamailio's regime; use --calls 300)",
    )
    ap.add_argument(
        "--floor",
        action="store_true",
        help="time bench/kemi_floor.py too, under the same stub and caches",
    )
    ap.add_argument(
        "--with-dialog-end",
        action="store_true",
        help="the BYE also runs ksr_dialog_end (kamailio.cfg's fallback when its write failed)",
    )
    args = ap.parse_args(argv)
    regime = "cold" if args.cold else "warm"
    for label, sdp in (("sip-only", False), ("sdp", True)):
        messages = call(sdp, args.with_dialog_end)
        counts = count_calls(messages)
        per_call = sum(sum(c.values()) for c in counts.values())
        runs = time_calls(messages, args.calls, args.runs, args.cold)
        times = [sum(run.values()) for run in runs]
        best = min(runs, key=lambda run: sum(run.values()))
        print(f"routes-bench {label} ({regime}): {statistics.median(times):.1f} us of Python per "
              f"call (runs {min(times):.1f}-{max(times):.1f}), {per_call} KSR calls per call; per "
              "message (KSR calls, us in the fastest run): "
              + ", ".join(f"{name} {sum(c.values())} {best[name]:.1f}"
                          for name, c in counts.items()),
              flush=True)  # fmt: skip
        if args.floor:
            floor = [
                sum(run.values())
                for run in time_calls(messages, args.calls, args.runs, args.cold, floor=True)
            ]
            print(
                f"routes-bench {label} ({regime}): floor {statistics.median(floor):.1f} us "
                f"(runs {min(floor):.1f}-{max(floor):.1f}), kemi-ha/floor "
                f"{statistics.median(times) / statistics.median(floor):.2f}",
                flush=True,
            )
        if args.verbose:
            for name, c in counts.items():
                print(f"  {name}: " + " ".join(f"{k}x{v}" for k, v in sorted(c.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
