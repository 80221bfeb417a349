"""Real processes on loopback: Redis, one rtpengine per VIP, Kamailio, SIPp.

The stack is started by kemi.ops.stack, the same code as `make run`, on test ports so that a
`make run` on the same machine does not collide with it.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from kemi.ops.stack import Stack, StackConfig

VIP1, VIP2 = "127.0.0.1", "127.0.0.2"
# Every loopback port below moves by this much (e.g. -5000), so that a second checkout's suite
# can run on the same machine at the same time without sharing a port.
SHIFT = int(os.environ.get("KEMI_HA_TEST_PORT_SHIFT", "0"))
SIP_PORT = 15060 + SHIFT
TLS_PORT = 15061 + SHIFT
UAS_PORT = 15080 + SHIFT
NG_PORT = 12223 + SHIFT
REDIS_PORT = 16379 + SHIFT


def two_vip_policy(ng_port: int, uas_port: int, version: str = "test-1") -> str:
    """VIP1 and VIP2 on loopback, one rtpengine each, every call to one UAS."""
    return f"""\
version: {version}
vips:
  - address: {VIP1}
    rtpengine: ["udp:{VIP1}:{ng_port}"]
  - address: {VIP2}
    rtpengine: ["udp:{VIP2}:{ng_port}"]
routes:
  - name: default
    destinations: ["sip:127.0.0.1:{uas_port}"]
"""


def loopback_config(run_dir: Path, policy_text: str, **ports: int) -> StackConfig:
    """A StackConfig on `ports` with `policy_text` as run_dir/policy.yaml."""
    policy = run_dir / "policy.yaml"
    policy.write_text(policy_text)
    return StackConfig(run_dir=run_dir, policy_path=policy, **ports)  # type: ignore[arg-type]


# Probing values are module parameters (a restart to change): fast ones for every test stack, so
# that a module can reload gateway sets into it (tests/integration/test_gateways.py).
TEST_POLICY = two_vip_policy(NG_PORT, UAS_PORT) + "probing: {interval: 1, threshold: 2}\n"

# Below Linux's ephemeral range (32768+), away from the fixed ports above and from the
# rtpengine ranges (22000-23999): SIPp's own sockets then never steal a relay port.
_ports = itertools.count(24000 + SHIFT, 10)


def free_port_pair() -> tuple[int, int]:
    """A SIP port and a media port for one SIPp, distinct across the session."""
    base = next(_ports)
    return base, base + 2


@pytest.fixture(scope="session")
def require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests run real daemons and need root (make test as root)")


def stack_config(run_dir: Path, policy_text: str = TEST_POLICY) -> StackConfig:
    """The loopback stack of the integration tests (test ports), with `policy_text`."""
    return loopback_config(
        run_dir,
        policy_text,
        sip_port=SIP_PORT,
        tls_port=TLS_PORT,
        redis_port=REDIS_PORT,
        rtp_port_base=22000 + SHIFT,
        cli_port_base=19900 + SHIFT,
        http_port=18090 + SHIFT,
        dmq_port=15070 + SHIFT,
        children=4,
    )


def loopback_stack(tmp_path_factory: pytest.TempPathFactory, policy_text: str) -> Stack:
    """The test stack (not started) on the test ports with `policy_text`."""
    return Stack(stack_config(tmp_path_factory.mktemp("run"), policy_text))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, require_root: None) -> Iterator[Stack]:
    with Stack(stack_config(tmp_path_factory.mktemp("run"))) as running:
        yield running


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path


LOG_PROBLEMS = re.compile(rb"Traceback|exception in")


@pytest.fixture(autouse=True)
def stack_left_clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """After every test on the `stack`: same Kamailio processes, no traceback logged since the
    test started, and once its calls are over nothing left: 0 dialogs, 0 rtpengine sessions,
    0 Redis keys. (Torn down after stop_sipps: a test's calls end first.)"""
    if "stack" not in request.fixturenames:
        yield
        return
    from tests.integration.calls import kamailio_pids, leftovers, wait_for

    stack: Stack = request.getfixturevalue("stack")
    pids = kamailio_pids(stack)
    log = stack.log_dir / "kamailio.log"
    start = log.stat().st_size
    yield
    wait_for(lambda: not leftovers(stack), 20, "nothing left behind",
             lambda: str(leftovers(stack)))  # fmt: skip
    assert kamailio_pids(stack) == pids, "a Kamailio process died or was replaced"
    with log.open("rb") as text:
        text.seek(start)
        problems = [line for line in text if LOG_PROBLEMS.search(line)]
    assert not problems, b"".join(problems[:5]).decode(errors="replace")


@pytest.fixture(autouse=True)
def stop_sipps() -> Iterator[None]:
    """No SIPp outlives its test: a failed test must not hold ports for the next one."""
    from tests.integration.calls import STARTED

    yield
    while STARTED:
        STARTED.pop().stop()
