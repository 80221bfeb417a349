"""Two kemi-ha nodes in network namespaces (node A, node B, a client), wired by DMQ.

A holds VIP1 and runs its rtpengine, B holds VIP2 and runs its rtpengine; both Kamailios listen
on both VIPs (ip_nonlocal_bind) and replicate dialogs over DMQ. Used by the cluster tests and
bench/dmq_lag.py; everything it creates is removed on exit.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kemi.lab.net import Host, Lab
from kemi.lab.sipp import SippRun, sipp
from kemi.ops.stack import Stack, StackConfig

NET = "10.99.0"
A_ADDR, B_ADDR, CLIENT, RACER = f"{NET}.1", f"{NET}.2", f"{NET}.10", f"{NET}.11"
UNLIMITED = f"{NET}.12"  # a trusted client of no tenant: only the global profile counts it
VIP1, VIP2 = f"{NET}.101", f"{NET}.102"
NS_A, NS_B, NS_CLIENT = "khat-a", "khat-b", "khat-c"
UAS_PORT = 5080

POLICY = f"""\
version: cluster-1
vips:
  - address: {VIP1}
    rtpengine: ["udp:{VIP1}:2223"]
  - address: {VIP2}
    rtpengine: ["udp:{VIP2}:2223"]
tenants:
  - name: clients
    sources: ["{CLIENT}/32"]
    limit: {{max: 10, code: 486, reason: "Channels Busy"}}
  - name: racers
    sources: ["{RACER}/32"]
    limit: {{max: 20, code: 486, reason: "Channels Busy"}}
routes:
  - name: default
    destinations: ["sip:{CLIENT}:{UAS_PORT}"]
trusted_peers: ["{NET}.0/24"]
dmq_peers: ["sip:{A_ADDR}:5090", "sip:{B_ADDR}:5090"]
"""

_ports = itertools.count(6000, 10)


@dataclass
class Cluster:
    lab: Lab
    a: Stack
    b: Stack
    log_dir: Path
    runs: list[SippRun] = field(default_factory=list)

    def stop_sipps(self) -> None:
        while self.runs:
            self.runs.pop().stop()

    def count(self, node: Stack, tenant: str = "clients") -> int:
        return int(node.rpc.call("dlg.profile_get_size", "kha_tenant", tenant))

    def count_all(self, node: Stack) -> int:
        return int(node.rpc.call("dlg.profile_get_size", "kha_global"))

    def move_vip(self, vip: str, src: str, dst: str) -> None:
        self.lab.del_address(src, vip)
        self.lab.add_address(dst, vip)

    def uas(self, scenario: str = "uas.xml") -> SippRun:
        run = sipp(
            f"uas-{next(_ports)}", scenario, self.log_dir, CLIENT, UAS_PORT, UAS_PORT + 2,
            "-rtp_echo", netns=NS_CLIENT,
        )  # fmt: skip
        self.runs.append(run)
        return run

    def uac(
        self, vip: str, calls: int, duration_ms: int, scenario: str = "uac.xml",
        rate: int = 50, source: str = CLIENT, settle: float = 0.05,
    ) -> SippRun:  # fmt: skip
        port = next(_ports)
        run = sipp(
            f"uac-{port}", scenario, self.log_dir, source, port, port + 2,
            "-s", "1000", "-m", str(calls), "-r", str(rate), "-d", str(duration_ms),
            "-timeout", "90", "-timeout_error", "-recv_timeout", "15000",
            target=f"{vip}:5060", netns=NS_CLIENT, settle=settle,
        )  # fmt: skip
        self.runs.append(run)
        return run


def node_config(run_dir: Path, node_id: int, ns: str, address: str, vip: str) -> StackConfig:
    return StackConfig(
        run_dir=run_dir,
        policy_path=run_dir.parent / "policy.yaml",
        node_id=node_id,
        netns=ns,
        node_address=address,
        rtpengine_vips=(vip,),
        rtp_port_base=10000,  # 4000 ports (1000 calls) per VIP, below the ephemeral range
        rtp_ports_per_vip=4000,
        children=4,
    )


def start_cluster(base: Path) -> Iterator[Cluster]:
    (base / "policy.yaml").write_text(POLICY)
    lab = Lab("khat", [Host(NS_A, A_ADDR), Host(NS_B, B_ADDR), Host(NS_CLIENT, CLIENT)])
    with lab:
        lab.add_address(NS_A, VIP1)
        lab.add_address(NS_B, VIP2)
        lab.add_address(NS_CLIENT, RACER)
        lab.add_address(NS_CLIENT, UNLIMITED)
        a = Stack(node_config(base / "a", 1, NS_A, A_ADDR, VIP1))
        b = Stack(node_config(base / "b", 2, NS_B, B_ADDR, VIP2))
        with a, b:
            cluster = Cluster(lab, a, b, base)
            try:
                yield cluster
            finally:
                cluster.stop_sipps()
