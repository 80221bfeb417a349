"""ocf:kemi-ha:rtpengine as a hot standby, its actions run directly (no Pacemaker).

Two nodes in namespaces (khs-n1, khs-n2) and a client (khs-c) on a private switch; each node has
its Redis (n2 replicates n1, the Redis VIP on the master) and the agent's instance for one VIP with
its own DB (n1: 17, n2: 18), subscribed to the other's. Calls are ng offer/answer from the client;
sessions are counted with rtpengine-ctl, keys with redis-cli. A node "dies" by SIGKILL of its
processes and the loss of its addresses, as in the drill.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kemi.lab.net import Host, Lab, lab_ns, sh
from kemi.ops.procs import Daemon, wait_until

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "deploy" / "ocf" / "rtpengine"
PYTHON = REPO / ".venv" / "bin" / "python"
OCF_SUCCESS, OCF_ERR_CONFIGURED, OCF_NOT_RUNNING, OCF_RUNNING_MASTER = 0, 6, 7, 8

NODES = {"n1": "10.96.0.1", "n2": "10.96.0.2", "n3": "10.96.0.3"}  # n3: three-node tests
CLIENT = "10.96.0.9"
VIP, REDIS_VIP = "10.96.0.100", "10.96.0.200"
DBS = {"n1": 17, "n2": 18, "n3": 19}  # VIP 1: 16 * 1 + node id (kemi.core.rtpengine_dbs)
REDIS_PORT, CLI = 6379, "127.0.0.1:9901"
CALLS = [f"standby-call-{k}" for k in range(100)]

# Runs in the client's namespace: python -c MAKE_CALLS VIP CLIENT CALL...
MAKE_CALLS = """
import sys
from kemi.ops.ng import NgClient
ng, client = NgClient(sys.argv[1], 2223), sys.argv[2]
def sdp(port):
    return (f"v=0\\r\\no=- 1 1 IN IP4 {client}\\r\\ns=-\\r\\nc=IN IP4 {client}\\r\\n"
            f"t=0 0\\r\\nm=audio {port} RTP/AVP 0\\r\\n")
for k, call in enumerate(sys.argv[3:]):
    ng.command("offer", **{"call-id": call, "from-tag": "a", "sdp": sdp(6000 + 4 * k)})
    answer = ng.command("answer", **{"call-id": call, "from-tag": "a", "to-tag": "b",
                                     "sdp": sdp(7000 + 4 * k)})
    print(answer["sdp"].split("m=audio ")[1].split()[0])  # where the caller sends its RTP
"""

# Runs in the client's namespace: python -c RTP_THROUGH VIP CLIENT PORT...; prints how many
# calls relayed one RTP packet from the caller (6000 + 4k) to the callee (7000 + 4k).
RTP_THROUGH = """
import socket, struct, sys
vip, client, relayed = sys.argv[1], sys.argv[2], 0
for k, port in enumerate(sys.argv[3:]):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \\
         socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        a.bind((client, 6000 + 4 * k))
        b.bind((client, 7000 + 4 * k))
        b.settimeout(1)
        a.sendto(struct.pack("!BBHII", 0x80, 0, k, 160 * k, 0x1234) + bytes(160), (vip, int(port)))
        try:
            b.recvfrom(2048)
            relayed += 1
        except TimeoutError:
            pass
print(relayed)
"""


def synced(db: int) -> str:
    """The agent's log line once every call is in `db` and the other DBs are flushed."""
    return f"sync: {len(CALLS)} own calls in DB {db} "


def ns(node: str) -> str:
    return lab_ns(f"khs-{node}")


def run_in(node: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns(node), *argv], capture_output=True,
                          text=True, timeout=60)  # fmt: skip


@dataclass
class Pair:
    lab: Lab
    tmp: Path
    redis: dict[str, Daemon]
    nodes: list[str]
    rtp_ports: list[str] = field(default_factory=list)

    # ----- the agent --------------------------------------------------------------------------

    def agent(
        self, node: str, action: str, params: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "OCF_ROOT": "/usr/lib/ocf", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "OCF_RESOURCE_INSTANCE": "rtpengine1", "__OCF_ACTION": action,
            "OCF_RESKEY_CRM_meta_on_node": node, "OCF_RESKEY_vip": VIP,
            "OCF_RESKEY_ng_port": "2223", "OCF_RESKEY_cli": CLI,
            "OCF_RESKEY_port_min": "40000", "OCF_RESKEY_port_max": "40999",
            "OCF_RESKEY_redis": f"127.0.0.1:{REDIS_PORT}",
            "OCF_RESKEY_redis_write": f"{REDIS_VIP}:{REDIS_PORT}",
            "OCF_RESKEY_dbs": " ".join(f"{n}:{DBS[n]}" for n in self.nodes),
            "OCF_RESKEY_rundir": str(self.tmp / node / "run"),
            "OCF_RESKEY_logdir": str(self.tmp / node / "log"),
        } | {f"OCF_RESKEY_{k}": v for k, v in (params or {}).items()}  # fmt: skip
        argv = ["ip", "netns", "exec", ns(node), "env", "-i",
                *(f"{k}={v}" for k, v in env.items()), str(AGENT), action]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    def log(self, node: str) -> str:
        path = self.tmp / node / "log" / f"rtpengine-{VIP}.log"
        return path.read_text() if path.exists() else ""

    def sessions(self, node: str) -> dict[str, int]:
        out = run_in(node, "rtpengine-ctl", "-ip", CLI, "list", "numsessions").stdout
        return {k: int(v) for k, v in re.findall(r"Current sessions (own|foreign): (\d+)", out)}

    def wait_sessions(self, node: str, own: int, foreign: int, timeout: float = 10) -> None:
        want = {"own": own, "foreign": foreign}
        wait_until(lambda: self.sessions(node) == want, timeout,
                   f"{node}: {want} (has {self.sessions(node)})")  # fmt: skip

    # ----- Redis, VIPs, calls, failures ------------------------------------------------------

    def redis_cli(self, node: str, *args: str) -> str:
        return run_in(node, "redis-cli", "-p", str(REDIS_PORT), *args).stdout.strip()

    def keys(self, node: str, db: int) -> set[str]:
        return set(self.redis_cli(node, "-n", str(db), "--scan").split())

    def start_redis(self, node: str, master: str | None) -> None:
        d = self.tmp / node
        d.mkdir(exist_ok=True)
        self.redis[node] = Daemon(
            f"redis-{node}",
            ["ip", "netns", "exec", ns(node), "redis-server", "--port", str(REDIS_PORT),
             "--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", str(d),
             "--repl-diskless-sync-delay", "0", "--databases", "48",
             "--notify-keyspace-events", "Kg$"],
            d / "redis.log",
        )  # fmt: skip
        self.redis[node].start()
        wait_until(lambda: self.redis_cli(node, "ping") == "PONG", 10, f"redis on {node}")
        if master:
            self.redis_cli(node, "replicaof", NODES[master], str(REDIS_PORT))
            wait_until(lambda: "master_link_status:up" in self.redis_cli(node, "info"), 10,
                       f"redis on {node} in sync with {master}")  # fmt: skip

    def make_calls(self, calls: list[str]) -> None:
        result = run_in("c", str(PYTHON), "-c", MAKE_CALLS, VIP, CLIENT, *calls)
        assert result.returncode == 0, result.stderr
        self.rtp_ports = result.stdout.split()

    def rtp_relayed(self) -> int:
        """Calls whose caller's RTP reaches the callee through the VIP (one packet each)."""
        result = run_in("c", str(PYTHON), "-c", RTP_THROUGH, VIP, CLIENT, *self.rtp_ports)
        assert result.returncode == 0, result.stderr
        return int(result.stdout)

    def kill(self, node: str) -> None:
        """A power cut: rtpengine and Redis SIGKILLed, the node's addresses gone."""
        pid = (self.tmp / node / "run" / f"rtpengine-{VIP}.pid").read_text().strip()
        sh("kill", "-KILL", pid, check=False)
        self.redis[node].signal(signal.SIGKILL)
        self.lab.del_address(ns(node), VIP)
        self.lab.del_address(ns(node), REDIS_VIP)

    def start_active(self, node: str) -> None:
        """The VIP on `node`, its instance started there and promoted."""
        self.lab.add_address(ns(node), VIP)
        assert self.agent(node, "start").returncode == OCF_SUCCESS, self.log(node)
        assert self.agent(node, "promote").returncode == OCF_SUCCESS, self.log(node)
        assert self.agent(node, "monitor").returncode == OCF_RUNNING_MASTER, self.log(node)


def lab_of(nodes: list[str], tmp: Path) -> Iterator[Pair]:
    """`nodes` (n1 first, its Redis the master with the Redis VIP) and the client."""
    hosts = [Host(ns(n), NODES[n]) for n in nodes] + [Host(ns("c"), CLIENT)]
    with Lab(lab_ns("khs"), hosts) as lab:
        p = Pair(lab, tmp, {}, nodes)
        try:
            p.start_redis("n1", None)
            p.lab.add_address(ns("n1"), REDIS_VIP)
            for node in nodes[1:]:
                p.start_redis(node, "n1")
            yield p
        finally:
            for node in nodes:
                p.agent(node, "stop")
            for daemon in p.redis.values():
                daemon.kill()


@pytest.fixture
def pair(tmp_path: Path, require_root: None) -> Iterator[Pair]:
    yield from lab_of(["n1", "n2"], tmp_path)


@pytest.fixture
def trio(tmp_path: Path, require_root: None) -> Iterator[Pair]:
    yield from lab_of(["n1", "n2", "n3"], tmp_path)


def test_standby_without_nonlocal_bind_refuses_and_leaves_the_keys(pair: Pair) -> None:
    """LAB-NOTES trap: such a standby cannot bind the VIP's ports and, on the failed restore,
    deletes the active's keys. The agent refuses to start and touches nothing."""
    pair.start_active("n1")
    pair.make_calls(CALLS)
    wait_until(lambda: pair.keys("n2", DBS["n1"]) == set(CALLS), 5, "calls replicated to n2")
    run_in("n2", "sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=0")
    refused = pair.agent("n2", "start")
    assert refused.returncode == OCF_ERR_CONFIGURED, refused.stdout + refused.stderr
    assert "ip_nonlocal_bind" in refused.stdout + refused.stderr
    assert pair.agent("n2", "monitor").returncode == OCF_NOT_RUNNING
    assert pair.keys("n1", DBS["n1"]) == set(CALLS)
    assert pair.keys("n2", DBS["n1"]) == set(CALLS)
    pair.wait_sessions("n1", own=len(CALLS), foreign=0)


def test_a_standby_keeps_its_calls_past_the_media_timeouts(pair: Pair) -> None:
    """No media reaches a standby: rtpengine's media timeouts must not end its foreign calls (they
    do not: measured with 1 s each; only --final-timeout, an age limit off by default and the
    same on the active, ends them, and deletes the active's keys with them)."""
    pair.start_active("n1")
    defaults = re.search(r'options_default="([^"]*)"', AGENT.read_text())
    assert defaults
    impatient = f"{defaults[1]} --timeout=1 --silent-timeout=1 --offer-timeout=1"
    assert pair.agent("n2", "start", {"options": impatient}).returncode == OCF_SUCCESS
    pair.make_calls(CALLS)
    pair.wait_sessions("n2", own=0, foreign=len(CALLS))
    time.sleep(4)
    assert pair.sessions("n2") == {"own": 0, "foreign": len(CALLS)}
    assert pair.keys("n1", DBS["n1"]) == set(CALLS)


def test_cold_path_restart_of_the_active_restores_its_calls_as_own(pair: Pair) -> None:
    """The active's process dies and is started again where the VIP is: its own DB is its own."""
    pair.start_active("n1")
    assert pair.agent("n2", "start").returncode == OCF_SUCCESS, pair.log("n2")
    pair.make_calls(CALLS)
    pair.wait_sessions("n2", own=0, foreign=len(CALLS))
    pid = (pair.tmp / "n1" / "run" / f"rtpengine-{VIP}.pid").read_text().strip()
    sh("kill", "-KILL", pid)
    wait_until(lambda: pair.agent("n1", "monitor").returncode == OCF_NOT_RUNNING, 5, "n1 dead")
    assert pair.agent("n1", "start").returncode == OCF_SUCCESS, pair.log("n1")
    pair.wait_sessions("n1", own=len(CALLS), foreign=0)
    assert pair.keys("n1", DBS["n1"]) == set(CALLS)
    pair.wait_sessions("n2", own=0, foreign=len(CALLS))


def test_takeover_return_and_failback_keep_every_call_without_ghosts(pair: Pair) -> None:
    """(c) takeover by promote, (d) the old active returns as a standby, (e) failback."""
    pair.start_active("n1")
    assert pair.agent("n2", "start").returncode == OCF_SUCCESS, pair.log("n2")
    assert pair.agent("n2", "monitor").returncode == OCF_SUCCESS
    pair.make_calls(CALLS)
    pair.wait_sessions("n1", own=len(CALLS), foreign=0)
    pair.wait_sessions("n2", own=0, foreign=len(CALLS))
    assert pair.rtp_relayed() == len(CALLS)

    # (c) n1 dies: the VIP and the promote on n2 at once; the Redis promotion comes later.
    pair.kill("n1")
    pair.lab.add_address(ns("n2"), VIP)
    # Media needs no promote: the standby relays its foreign calls once the VIP is here.
    assert pair.rtp_relayed() == len(CALLS)
    assert pair.agent("n2", "promote").returncode == OCF_SUCCESS, pair.log("n2")
    assert pair.sessions("n2") == {"own": len(CALLS), "foreign": 0}
    assert pair.agent("n2", "monitor").returncode == OCF_RUNNING_MASTER
    assert pair.rtp_relayed() == len(CALLS)
    pair.redis_cli("n2", "replicaof", "no", "one")
    pair.lab.add_address(ns("n2"), REDIS_VIP)
    wait_until(lambda: pair.keys("n2", DBS["n2"]) == set(CALLS), 30,
               "calls written to n2's DB")  # fmt: skip
    wait_until(lambda: not pair.keys("n2", DBS["n1"]), 10, "n1's DB cleaned")
    wait_until(lambda: synced(18) in pair.log("n2"), 5, "n2's sync done")
    pair.wait_sessions("n2", own=len(CALLS), foreign=0)

    # (d) n1 comes back: a fresh Redis replicating n2, its instance a standby without ghosts.
    pair.start_redis("n1", "n2")
    assert pair.agent("n1", "start").returncode == OCF_SUCCESS, pair.log("n1")
    assert pair.agent("n1", "monitor").returncode == OCF_SUCCESS
    pair.wait_sessions("n1", own=0, foreign=len(CALLS))
    assert not pair.keys("n2", DBS["n1"])
    pair.wait_sessions("n2", own=len(CALLS), foreign=0)

    # (e) failback: demote n2 (standby), the VIP back to n1, promote n1.
    assert pair.agent("n2", "demote").returncode == OCF_SUCCESS, pair.log("n2")
    assert pair.agent("n2", "monitor").returncode == OCF_SUCCESS
    pair.lab.del_address(ns("n2"), VIP)
    pair.lab.add_address(ns("n1"), VIP)
    assert pair.agent("n1", "promote").returncode == OCF_SUCCESS, pair.log("n1")
    assert pair.sessions("n1") == {"own": len(CALLS), "foreign": 0}
    wait_until(lambda: pair.keys("n2", DBS["n1"]) == set(CALLS), 30,
               "calls written to n1's DB")  # fmt: skip
    wait_until(lambda: not pair.keys("n2", DBS["n2"]), 10, "n2's DB cleaned")
    wait_until(lambda: synced(17) in pair.log("n1"), 5, "n1's sync done")
    assert pair.rtp_relayed() == len(CALLS)
    pair.wait_sessions("n1", own=len(CALLS), foreign=0)
    pair.wait_sessions("n2", own=0, foreign=len(CALLS))


def test_three_nodes_a_second_takeover_finds_the_third_standby_ready(trio: Pair) -> None:
    """n1 dies, n2 takes over; n3's standby keeps every call through n2's move of the calls into
    DB 18 and its deletes in DB 17 (a DEL destroys a foreign call whatever its DB), so that when
    n2 dies too, n3 relays them at once."""
    p = trio
    p.start_active("n1")
    for node in ("n2", "n3"):
        assert p.agent(node, "start").returncode == OCF_SUCCESS, p.log(node)
    p.make_calls(CALLS)
    for node in ("n2", "n3"):
        p.wait_sessions(node, own=0, foreign=len(CALLS))

    p.kill("n1")
    p.lab.add_address(ns("n2"), VIP)
    assert p.agent("n2", "promote").returncode == OCF_SUCCESS, p.log("n2")
    # As ocf:heartbeat:redis does: promote n2's Redis, point n3's at it, then the Redis VIP.
    p.redis_cli("n2", "replicaof", "no", "one")
    p.redis_cli("n3", "replicaof", NODES["n2"], str(REDIS_PORT))
    wait_until(lambda: "master_link_status:up" in p.redis_cli("n3", "info"), 10, "n3 synced")
    p.lab.add_address(ns("n2"), REDIS_VIP)
    wait_until(lambda: synced(18) in p.log("n2"), 30, "n2's sync done")
    assert p.keys("n3", DBS["n3"]) == set() and p.keys("n3", DBS["n1"]) == set()
    assert p.keys("n3", DBS["n2"]) == set(CALLS)
    p.wait_sessions("n3", own=0, foreign=len(CALLS))
    assert p.rtp_relayed() == len(CALLS)

    p.kill("n2")
    p.lab.add_address(ns("n3"), VIP)
    assert p.rtp_relayed() == len(CALLS)
    assert p.agent("n3", "promote").returncode == OCF_SUCCESS, p.log("n3")
    p.wait_sessions("n3", own=len(CALLS), foreign=0)
    assert p.rtp_relayed() == len(CALLS)
