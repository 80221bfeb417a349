"""Issue 17 part 1: a caller behind a NAT (iptables masquerade), the callee on the node's side.

Namespaces made here (names from lab_ns): a switch with the node (Redis, rtpengine, Kamailio
on VIP 10.98.0.100, as `kemi-ha run` starts them), the NAT box and the callee; behind the NAT
box, on 192.168.77.0/24, the caller. The node has no route to the private network: a request
reaches the caller only through the NAT binding its own traffic opened.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kemi.cli import main as kemi_ha
from kemi.lab.net import Host, Lab, lab_ns
from kemi.lab.sipp import SippRun, sipp
from kemi.ops.ng import NgError, rtp_streams
from kemi.ops.stack import Stack, StackConfig
from tests.integration.calls import assert_ok, wait_for

pytestmark = pytest.mark.integration

PREFIX = lab_ns("khnat")
NODE, NAT_BOX, CALLEE = f"{PREFIX}-n", f"{PREFIX}-r", f"{PREFIX}-e"
CALLER = f"{PREFIX}-p"
NODE_ADDR, NAT_PUBLIC, CALLEE_ADDR, VIP = "10.98.0.1", "10.98.0.2", "10.98.0.3", "10.98.0.100"
CALLER_ADDR, NAT_PRIVATE = "192.168.77.10", "192.168.77.1"


def policy(mode: str) -> str:
    return f"""\
version: nat-{mode}
vips:
  - address: {VIP}
    rtpengine: ["udp:127.0.0.1:2223"]
tenants:
  - name: phones
    sources: ["{NAT_PUBLIC}/32"]
    nat: {{mode: {mode}}}
routes:
  - name: callee
    destinations: ["sip:{CALLEE_ADDR}:5080"]
trusted_peers: ["10.98.0.0/24"]
"""


@dataclass
class NatLab:
    lab: Lab
    node: Stack
    log_dir: Path

    def callee(self) -> SippRun:
        return sipp("callee", "uas_reinvite_bye.xml", self.log_dir, CALLEE_ADDR, 5080, 6000,
                    "-rtp_echo", "-m", "1", "-d", "3000", netns=CALLEE)  # fmt: skip

    def caller(self, call_id: str) -> SippRun:
        return sipp(
            "caller", "uac_callee_hangs_up.xml", self.log_dir, CALLER_ADDR, 5070, 7000,
            "-s", "1000", "-m", "1", "-cid_str", call_id, "-timeout", "40", "-timeout_error",
            target=f"{VIP}:5060", netns=CALLER,
        )  # fmt: skip

    def reload(self, mode: str) -> None:
        self.node.config.policy_path.write_text(policy(mode))
        with self.node.net():
            assert kemi_ha(["policy", "reload", "--run-dir", str(self.node.run_dir)]) == 0

    def rtp_streams(self, call_id: str) -> list[dict[str, object]]:
        with self.node.net():
            try:
                return list(rtp_streams(self.node.ng(self.node.policy.vips[0]).query(call_id)))
            except NgError:
                return []


@pytest.fixture(scope="module")
def nat_lab(tmp_path_factory: pytest.TempPathFactory, require_root: None) -> Iterator[NatLab]:
    base = tmp_path_factory.mktemp("nat")
    (base / "policy.yaml").write_text(policy("detect"))
    hosts = [Host(NODE, NODE_ADDR), Host(NAT_BOX, NAT_PUBLIC), Host(CALLEE, CALLEE_ADDR)]
    with Lab(PREFIX, hosts) as lab:
        lab.add_address(NODE, VIP)
        lab.add_behind_nat(CALLER, CALLER_ADDR, NAT_BOX, NAT_PRIVATE)
        config = StackConfig(run_dir=base / "node", policy_path=base / "policy.yaml",
                             netns=NODE, node_address=NODE_ADDR)  # fmt: skip
        with Stack(config) as node:
            yield NatLab(lab, node, base)


def test_a_natted_caller_gets_media_both_ways_and_the_callees_requests(
    nat_lab: NatLab,
) -> None:
    """Tenant `phones` with nat mode detect: the call is set up, RTP flows both ways through
    the VIP's rtpengine (the caller's stream from and to its NAT's public address), and the
    callee's re-INVITE (answered by the caller, its ACK) and BYE reach the caller."""
    call_id = f"nat-{time.monotonic_ns()}"
    callee = nat_lab.callee()
    caller = nat_lab.caller(call_id)

    def flowing() -> bool:
        streams = nat_lab.rtp_streams(call_id)
        return len(streams) >= 2 and all(int(s["stats"]["packets"]) > 20 for s in streams)  # type: ignore[index]

    wait_for(flowing, timeout=10, what="RTP both ways through the relay",
             state=lambda: str(nat_lab.rtp_streams(call_id)))  # fmt: skip
    endpoints = {s["endpoint"]["address"] for s in nat_lab.rtp_streams(call_id)}  # type: ignore[index]
    assert endpoints == {NAT_PUBLIC, CALLEE_ADDR}, endpoints
    assert_ok(callee, 40)  # its re-INVITE got the caller's 200, its BYE the caller's 200
    assert_ok(caller, 40)  # it received the re-INVITE, the ACK and the BYE


def test_b_without_nat_handling_the_callees_requests_do_not_reach_the_caller(
    nat_lab: NatLab,
) -> None:
    """The same call with the tenant's nat mode never: the caller's Contact (192.168.77.10) is
    left as it is and the callee's re-INVITE cannot be delivered (what test a relies on)."""
    nat_lab.reload("never")
    try:
        callee = nat_lab.callee()
        caller = nat_lab.caller(f"nat-off-{time.monotonic_ns()}")
        assert callee.wait(40) != 0, callee.output()[-2000:]
        caller.stop()
        errors = (nat_lab.log_dir / "callee-errors.log").read_text(errors="replace")
        assert "while expecting '200'" in errors, errors[-2000:]  # its re-INVITE failed
        log = (nat_lab.node.log_dir / "kamailio.log").read_text(errors="replace")
        assert f"dst: ({CALLER_ADDR}:5070)" in log  # sent to the private Contact, unreachable
    finally:
        nat_lab.reload("detect")
