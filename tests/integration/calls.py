"""Helpers shared by the integration tests: SIPp callers/callees, ng and RPC readings."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kemi.lab.sipp import SippRun, sipp
from kemi.ops.ng import NgError, rtp_streams
from kemi.ops.stack import Stack
from tests.integration.conftest import SIP_PORT, UAS_PORT, free_port_pair

STARTED: list[SippRun] = []  # stopped after every test (conftest), even when it fails


def start_uas(
    log_dir: Path, scenario: str = "uas.xml", calls: int | None = 1, port: int = UAS_PORT
) -> SippRun:
    """A callee; `calls=None` serves until stopped and writes its counters every second."""
    limit = ["-m", str(calls)] if calls else ["-trace_stat", "-fd", "1", "-stf", f"uas-{port}.csv"]
    run = sipp(f"uas-{port}", scenario, log_dir, "127.0.0.1", port, port + 2, "-rtp_echo", *limit)
    STARTED.append(run)
    return run


def start_uac(
    log_dir: Path,
    vip: str,
    call_id: str,
    scenario: str = "uac.xml",
    duration_ms: int = 2000,
    service: str = "1000",
) -> SippRun:
    port, media = free_port_pair()
    run = sipp(
        f"uac-{call_id}", scenario, log_dir, "127.0.0.1", port, media,
        "-s", service, "-m", "1", "-d", str(duration_ms), "-cid_str", call_id,
        "-timeout", "60", "-timeout_error", "-recv_timeout", "10000",
        target=f"{vip}:{SIP_PORT}",
    )  # fmt: skip
    STARTED.append(run)
    return run


def start_load(
    log_dir: Path, vip: str, rate: int, calls: int, duration_ms: int, scenario: str = "uac.xml"
) -> SippRun:
    """A caller placing `calls` calls at `rate` per second, each `duration_ms` long, with RTP."""
    port, media = free_port_pair()
    run = sipp(
        f"load-{port}", scenario, log_dir, "127.0.0.1", port, media,
        "-s", "1000", "-r", str(rate), "-m", str(calls), "-d", str(duration_ms),
        "-timeout", "120", "-timeout_error", "-recv_timeout", "10000",
        target=f"{vip}:{SIP_PORT}",
    )  # fmt: skip
    STARTED.append(run)
    return run


def next_call_works(log_dir: Path, vip: str, duration_ms: int = 300) -> None:
    """One short call through `vip` completes: the proxy is still healthy."""
    uas = start_uas(log_dir)
    uac = start_uac(log_dir, vip, f"after-{uuid.uuid4().hex[:8]}", duration_ms=duration_ms)
    assert_ok(uac)
    assert_ok(uas)


def uas_calls(log_dir: Path, port: int) -> int:
    """Calls a `start_uas(calls=None)` callee received, from its last counters line."""
    lines = (log_dir / f"uas-{port}.csv").read_text().strip().splitlines()
    header = lines[0].split(";")
    return int(lines[-1].split(";")[header.index("IncomingCall(C)")])


def assert_ok(run: SippRun, timeout: float = 60) -> None:
    rc = run.wait(timeout)
    assert rc == 0, f"{run.name} failed (rc={rc}):\n{run.output()[-3000:]}"


def wait_for(
    check: Callable[[], Any],
    timeout: float = 5.0,
    what: str = "condition",
    state: Callable[[], str] | None = None,
) -> Any:
    """Poll `check` until it is true; on timeout, say what and (if given) the state seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f" (now: {state()})" if state else ""
            raise AssertionError(f"timed out waiting for {what}{seen}")
        time.sleep(0.05)


def rtp_packets(query: dict[str, Any]) -> int:
    """RTP packets rtpengine relayed for a call, summed over every stream of every party."""
    return sum(int(s.get("stats", {}).get("packets", 0)) for s in rtp_streams(query))


def packets_of(stack: Stack, vip_index: int, call_id: str) -> int:
    """RTP packets of a call on one VIP's rtpengine; 0 if it does not know the call (yet)."""
    try:
        return rtp_packets(stack.ng(stack.policy.vips[vip_index]).query(call_id))
    except NgError:
        return 0


def knows_call(stack: Stack, vip_index: int, call_id: str) -> bool:
    try:
        stack.ng(stack.policy.vips[vip_index]).query(call_id)
    except NgError:
        return False
    return True


def active_dialogs(stack: Stack) -> int:
    return int(stack.rpc.call("dlg.stats_active")["all"])


def rtpengine_sessions(stack: Stack) -> int:
    return sum(len(stack.ng(vip).list_calls()) for vip in stack.policy.vips)


def kamailio_pids(stack: Stack) -> set[int]:
    """Every Kamailio process (main and children), from core.psx."""
    return {int(p["PID"]) for p in stack.rpc.call("core.psx")}


def leftovers(stack: Stack) -> dict[str, int]:
    """What a finished test must not leave: dialogs, channels (the global profile counts every
    admitted call), rtpengine sessions, Redis keys."""
    found = {
        "dialogs": active_dialogs(stack),
        "channels": int(stack.rpc.call("dlg.profile_get_size", "kha_global")),
        "rtpengine sessions": rtpengine_sessions(stack),
        "redis keys": sum(stack.redis_client(v.set_id).dbsize() for v in stack.policy.vips),
    }
    return {what: n for what, n in found.items() if n}


def send_raw(
    host: str,
    port: int,
    payload: str | bytes,
    timeout: float = 2.0,
    bind: str = "127.0.0.1",
    final: bool = False,
) -> str | None:
    """Send one raw SIP message over UDP (LPORT: our port); the first response line (the
    first final one if `final`), None if silent."""
    data = payload.encode() if isinstance(payload, str) else payload
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((bind, 0))
        sock.settimeout(timeout)
        local_port = sock.getsockname()[1]
        sock.sendto(data.replace(b"LPORT", str(local_port).encode()), (host, port))
        while True:
            try:
                line = sock.recv(65535).decode(errors="replace").split("\r\n", 1)[0]
            except TimeoutError:
                return None
            if not final or not line.startswith("SIP/2.0 1"):
                return line


def invite_text(host: str, **overrides: str) -> str:
    """A well-formed INVITE; `overrides` replace whole header lines by header name."""
    call_id = uuid.uuid4().hex
    headers = {
        "Via": f"SIP/2.0/UDP 127.0.0.1:LPORT;branch=z9hG4bK{call_id[:12]};rport",
        "Max-Forwards": "70",
        "From": f"<sip:malformed@127.0.0.1>;tag={call_id[:6]}",
        "To": f"<sip:1000@{host}>",
        "Call-ID": call_id,
        "CSeq": "1 INVITE",
        "Contact": "<sip:malformed@127.0.0.1:LPORT>",
        "Content-Length": "0",
    }
    headers.update({k.replace("_", "-"): v for k, v in overrides.items()})
    lines = [f"INVITE sip:1000@{host}:{SIP_PORT} SIP/2.0"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return "\r\n".join(lines) + "\r\n\r\n"
