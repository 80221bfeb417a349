"""N kemi-ha nodes (N >= 2) in network namespaces plus a client namespace, wired by DMQ.

Node i has address 10.99.0.i, holds VIP i (10.99.0.(100+i)) and runs that VIP's rtpengine;
every Kamailio listens on every VIP (ip_nonlocal_bind) and replicates dialogs to every other
node (DMQ full mesh). Used by the cluster tests and bench/dmq_lag.py; everything it creates is
removed on exit.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from kemi.lab.net import Host, Lab, lab_ns, sh
from kemi.lab.passwords import write_password
from kemi.lab.sipp import SippRun, sipp
from kemi.ops.cdrstore import read_cdrs
from kemi.ops.stack import Stack, StackConfig

NET = "10.99.0"
CLIENT, RACER = f"{NET}.10", f"{NET}.11"
UNLIMITED = f"{NET}.12"  # a trusted client of no tenant: only the global profile counts it
TRUSTED_CLIENTS = f"{NET}.0/28"  # nodes and the clients above, not FLOODER (flood tests)
FLOODER = f"{NET}.66"  # a stranger once trusted_peers is TRUSTED_CLIENTS
MAX_NODES = 9  # node addresses .1-.9 stay below the clients' .10
PREFIX = lab_ns("khat")  # namespaces khat-1..khat-N, khat-c (client), khat-sw (switch)
UAS_PORT = 5080
GATEWAY_PORT = 5085  # a gateway in the client namespace (prefix 8), probed by every node
DMQ_PORT = 5090
CDR_REDIS_PORT = 6390  # the CDR store in the client namespace: a stand-in for the Redis VIP


def node_address(i: int) -> str:
    return f"{NET}.{i}"


def vip_address(i: int) -> str:
    return f"{NET}.{100 + i}"


def node_ns(i: int, prefix: str = PREFIX) -> str:
    return f"{prefix}-{i}"


def client_ns(prefix: str = PREFIX) -> str:
    return f"{prefix}-c"


# The two-node names the tests and the bench were written against.
A_ADDR, B_ADDR = node_address(1), node_address(2)
VIP1, VIP2, VIP3 = vip_address(1), vip_address(2), vip_address(3)
NS_A, NS_B, NS_CLIENT = node_ns(1), node_ns(2), client_ns()


def policy_text(nodes: int, trusted: str = f"{NET}.0/24", extra: str = "") -> str:
    """The cluster policy: every VIP (ng socket on the VIP) and every node as a DMQ peer;
    `trusted` and `extra` (further top-level fields) let a test narrow or extend it."""
    numbers = range(1, nodes + 1)
    vips = "".join(
        f'  - address: {vip_address(i)}\n    rtpengine: ["udp:{vip_address(i)}:2223"]\n'
        for i in numbers
    )
    peers = ", ".join(f'"sip:{node_address(i)}:{DMQ_PORT}"' for i in numbers)
    return f"""\
version: cluster-1
vips:
{vips}tenants:
  - name: clients
    sources: ["{CLIENT}/32"]
    limit: {{max: 10, code: 486, reason: "Channels Busy"}}
  - name: racers
    sources: ["{RACER}/32"]
    limit: {{max: 20, code: 486, reason: "Channels Busy"}}
routes:
  - name: default
    destinations: ["sip:{CLIENT}:{UAS_PORT}"]
  - name: gateways
    prefix: "8"
    gateway_set: gateways
gateway_sets:
  - name: gateways
    gateways: [{{uri: "sip:{CLIENT}:{GATEWAY_PORT}"}}]
probing: {{interval: 1, threshold: 2}}
trusted_peers: ["{trusted}"]
dmq_peers: [{peers}]
{extra}"""


_ports = itertools.count(6000, 10)


@dataclass
class Cluster:
    lab: Lab
    nodes: list[Stack]  # node i+1 holds vips[i]
    vips: list[str]
    client_ns: str
    log_dir: Path
    runs: list[SippRun] = field(default_factory=list)
    cdr_store: Stack | None = None  # start_cluster(cdr_store=True): every node's CDR store

    @property
    def a(self) -> Stack:
        return self.nodes[0]

    @property
    def b(self) -> Stack:
        return self.nodes[1]

    def stop_sipps(self) -> None:
        while self.runs:
            self.runs.pop().stop()

    def count(self, node: Stack, tenant: str = "clients") -> int:
        return int(node.rpc.call("dlg.profile_get_size", "kha_tenant", tenant))

    def counts(self, tenant: str = "clients") -> list[int]:
        """A tenant's channels as every node counts them, in node order."""
        return [self.count(node, tenant) for node in self.nodes]

    def count_all(self, node: Stack) -> int:
        return int(node.rpc.call("dlg.profile_get_size", "kha_global"))

    def move_vip(self, vip: str, src: str, dst: str) -> None:
        self.lab.del_address(src, vip)
        self.lab.add_address(dst, vip)

    def power_off_a_and_take_vip1(self, outage_s: float = 0.0) -> tuple[int, float]:
        """Copy VIP1's Redis DB to B (Redis replication's job: the harness runs one Redis per
        node without replication), power A off (link down, every process SIGKILLed), and
        `outage_s` later VIP1 and its rtpengine up on B (cold restore from Redis). Returns the
        number of keys copied and the time (monotonic) of the power-off."""
        a, b = self.a, self.b
        ns_a, ns_b = str(a.config.netns), str(b.config.netns)
        vip1 = a.policy.vips[0]
        with a.net():
            source = a.redis_client(vip1.set_id)
            saved = {key: source.dump(key) for key in source.scan_iter()}
        with b.net():
            target = b.redis_client(vip1.set_id)
            for key, value in saved.items():
                target.restore(key, 0, value, replace=True)
        self.lab.link(ns_a, up=False)
        a.kill_all()
        killed = time.monotonic()
        time.sleep(outage_s)  # what reaches VIP1 meanwhile is lost: UAs retransmit
        # In a cluster B's hot-standby rtpengine is ready before VIP1 arrives; here it is
        # started after (its ng socket is on VIP1): SIP to VIP1 waits until it answers.
        rule = ["INPUT", "-d", vip1.address, "-p", "udp", "--dport", "5060", "-j", "DROP"]
        sh("ip", "netns", "exec", ns_b, "iptables", "-I", *rule)
        try:
            self.lab.add_address(ns_b, vip1.address)
            b.start_rtpengine(vip1)
        finally:
            sh("ip", "netns", "exec", ns_b, "iptables", "-D", *rule)
        return len(saved), killed

    def cdr_records(self, since_ms: int) -> list[dict[str, str]]:
        """The CDR store's records of calls ended at or after `since_ms` (cdr_store=True)."""
        store = self.cdr_store
        assert store is not None, "a cluster started without cdr_store"
        with store.net():
            return list(read_cdrs(store.redis_client(0), since_ms, None))

    def revive_a(self) -> None:
        """A back with VIP1 (B's VIP1 relay stopped, its copy of VIP1's DB flushed)."""
        a, b = self.a, self.b
        vip1 = a.policy.vips[0]
        relay = b.rtpengines.pop(vip1.address, None)
        if relay is not None:
            relay.stop()
        with b.net():
            b.redis_client(vip1.set_id).flushdb()
        self.lab.del_address(str(b.config.netns), vip1.address)
        self.lab.del_address(str(a.config.netns), vip1.address)  # still on the powered-off A
        self.lab.link(str(a.config.netns), up=True)
        self.lab.add_address(str(a.config.netns), vip1.address)
        a.start()

    def uas(self, scenario: str = "uas.xml") -> SippRun:
        run = sipp(
            f"uas-{next(_ports)}", scenario, self.log_dir, CLIENT, UAS_PORT, UAS_PORT + 2,
            "-rtp_echo", netns=self.client_ns,
        )  # fmt: skip
        self.runs.append(run)
        return run

    def gateway(self) -> SippRun:
        """The policy's gateway: answers every node's OPTIONS probes and calls."""
        run = sipp(
            f"gw-{next(_ports)}", "uas_gateway.xml", self.log_dir, CLIENT, GATEWAY_PORT,
            GATEWAY_PORT + 2, "-rtp_echo", netns=self.client_ns,
        )  # fmt: skip
        self.runs.append(run)
        return run

    def uac(
        self, vip: str, calls: int, duration_ms: int, scenario: str = "uac.xml",
        rate: int = 50, source: str = CLIENT, settle: float = 0.05, extra: tuple[str, ...] = (),
        service: str = "1000",
    ) -> SippRun:  # fmt: skip
        port = next(_ports)
        run = sipp(
            f"uac-{port}", scenario, self.log_dir, source, port, port + 2,
            "-s", service, "-m", str(calls), "-r", str(rate), "-d", str(duration_ms),
            "-timeout", "90", "-timeout_error", "-recv_timeout", "15000", *extra,
            target=f"{vip}:5060", netns=self.client_ns, settle=settle,
        )  # fmt: skip
        self.runs.append(run)
        return run

    def flood(
        self, source: str, vip: str, rate: int, count: int, method: str = "INVITE",
        ua: str = "flood/1.0",
    ) -> SippRun:  # fmt: skip
        """`count` requests at `rate` per second from `source` (an address of the client
        namespace), each sent once and forgotten (tests/sipp/flood_*.xml)."""
        port = next(_ports)
        run = sipp(
            f"flood-{source}-{port}", f"flood_{method.lower()}.xml", self.log_dir, source, port,
            port + 2, "-s", "1000", "-r", str(rate), "-m", str(count), "-key", "ua", ua,
            target=f"{vip}:5060", netns=self.client_ns, settle=0,
        )  # fmt: skip
        self.runs.append(run)
        return run


def node_config(
    run_dir: Path,
    node_id: int,
    ns: str,
    address: str,
    vip: str,
    cdr_redis: str | None = None,
    cdr_password_file: str = "",
) -> StackConfig:
    return StackConfig(
        cdr_redis=cdr_redis,
        cdr_redis_password_file=cdr_password_file,
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


def start_cluster(
    base: Path,
    nodes: int = 2,
    prefix: str = PREFIX,
    policy: str | None = None,
    client_addresses: tuple[str, ...] = (),
    cdr_store: bool = False,
    policy_extra: str = "",
) -> Iterator[Cluster]:
    """Nodes 1..`nodes` started in order; a distinct `prefix` lets two clusters coexist.
    `policy` replaces policy_text(nodes); `client_addresses` are added to the client namespace.
    `cdr_store`: one Redis in the client namespace is every node's CDR store (it survives the
    death of any node, as the cluster's Redis behind its VIP does). `policy_extra`: YAML lines
    appended to the policy (e.g. `calls:`)."""
    if not 2 <= nodes <= MAX_NODES:
        raise ValueError(f"a cluster has 2 to {MAX_NODES} nodes, not {nodes}")
    numbers = range(1, nodes + 1)
    text = policy if policy is not None else policy_text(nodes)
    (base / "policy.yaml").write_text(text + policy_extra)
    hosts = [Host(node_ns(i, prefix), node_address(i)) for i in numbers]
    lab = Lab(prefix, [*hosts, Host(client_ns(prefix), CLIENT)])
    with lab, ExitStack() as running:
        for i in numbers:
            lab.add_address(node_ns(i, prefix), vip_address(i))
        lab.add_address(client_ns(prefix), RACER)
        lab.add_address(client_ns(prefix), UNLIMITED)
        for address in client_addresses:
            lab.add_address(client_ns(prefix), address)
        store = None
        password_file = ""
        if cdr_store:  # locked as the cluster's Redis is (docs/security.md)
            password_file = str(base / "cdr-store.pass")
            write_password(Path(password_file))
            store = running.enter_context(Stack(StackConfig(
                run_dir=base / "cdr-store", policy_path=base / "policy.yaml",
                netns=client_ns(prefix), redis_host=CLIENT, redis_port=CDR_REDIS_PORT,
                components=("redis",), redis_password_file=password_file,
            )))  # fmt: skip
        cdr_redis = f"{CLIENT}:{CDR_REDIS_PORT}/0" if cdr_store else None
        stacks = [
            running.enter_context(Stack(node_config(
                base / f"node{i}", i, node_ns(i, prefix), node_address(i), vip_address(i),
                cdr_redis, password_file,
            )))
            for i in numbers
        ]  # fmt: skip
        cluster = Cluster(lab, stacks, [vip_address(i) for i in numbers], client_ns(prefix), base,
                          cdr_store=store)  # fmt: skip
        try:
            yield cluster
        finally:
            cluster.stop_sipps()
