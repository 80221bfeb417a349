"""ocf:kemi-ha:kamailio: Pacemaker's view of a node's Kamailio is SIP, not a PID.

The agent runs `kemi-ha run --node-config` with a node.yaml (here one node alone on loopback,
every component, on ports of its own) and its monitor is `kemi-ha check`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kemi.ops import procs
from kemi.ops.procs import GROUPS_FILE, SUPERVISOR
from tests.cluster_files import installed_agent

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
AGENT = REPO / "deploy" / "ocf" / "kamailio"
KEMI_HA = REPO / ".venv" / "bin" / "kemi-ha"
OCF_RUNNING, OCF_ERR_GENERIC, OCF_NOT_RUNNING = 0, 1, 7

POLICY = """\
version: agent-test
vips:
  - address: 127.0.0.1
    rtpengine: ["udp:127.0.0.1:32223"]
routes:
  - name: default
    destinations: ["sip:127.0.0.1:35080"]
"""


@pytest.fixture
def node_yaml(tmp_path: Path, require_root: None) -> Iterator[Path]:
    (tmp_path / "policy.yaml").write_text(POLICY)
    node = tmp_path / "node.yaml"
    # Ports below the kernel's ephemeral range (32768-60999): a client socket of the node's own
    # Redis or rtpengine may hold any port in it, and Kamailio's bind then fails (seen once in CI).
    node.write_text(
        f"node_id: 1\nnode_address: 127.0.0.1\npolicy: {tmp_path}/policy.yaml\n"
        f"run_dir: {tmp_path}/run\nlog_dir: {tmp_path}/log\nsip_port: 24060\ntls_port: 24061\n"
        "dmq_port: 24090\n"
        "http_port: 27090\ncomponents: [redis, rtpengine, kamailio]\nready_check: options\n"
        "children: 2\n"
    )
    yield node
    agent("stop", node, tmp_path)


def agent(action: str, node: Path, tmp: Path,
          check_level: int = 10) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = {
        "OCF_CHECK_LEVEL": str(check_level),
        "OCF_ROOT": "/usr/lib/ocf", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "OCF_RESOURCE_INSTANCE": "kamailio", "__OCF_ACTION": action,
        "OCF_RESKEY_kemi_ha": str(KEMI_HA), "OCF_RESKEY_node_config": str(node),
        "OCF_RESKEY_logfile": str(tmp / "log" / "kemi-ha-run.log"),
        "OCF_RESKEY_pidfile": str(tmp / "kemi-ha-run.pid"),
    }  # fmt: skip
    return subprocess.run([str(AGENT), action], env=env, capture_output=True, text=True,
                          timeout=90)  # fmt: skip


def test_agent_passes_ocf_tester(node_yaml: Path, tmp_path: Path) -> None:
    with installed_agent("kamailio") as agent:
        result = subprocess.run(
            ["ocf-tester", "-n", "kamailio", "-o", f"kemi_ha={KEMI_HA}",
             "-o", f"node_config={node_yaml}", "-o", f"logfile={tmp_path}/log/kemi-ha-run.log",
             "-o", f"pidfile={tmp_path}/kemi-ha-run.pid", str(agent)],
            capture_output=True, text=True, timeout=300,
            env={"OCF_ROOT": "/usr/lib/ocf", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed all tests" in result.stdout + result.stderr


def test_monitor_fails_when_kamailio_stops_answering_sip(node_yaml: Path, tmp_path: Path) -> None:
    """SIGSTOP freezes Kamailio with its PID alive: only the SIP/RPC check notices. The
    every-second monitor runs it at most every 5 s (else `kemi-ha run`'s PID only), depth 10
    always."""
    assert agent("start", node_yaml, tmp_path).returncode == OCF_RUNNING
    assert agent("monitor", node_yaml, tmp_path).returncode == OCF_RUNNING
    assert agent("monitor", node_yaml, tmp_path, check_level=0).returncode == OCF_RUNNING
    pid = int((tmp_path / "run" / "kamailio.pid").read_text())
    group = os.getpgid(pid)
    os.killpg(group, signal.SIGSTOP)
    try:
        shallow = agent("monitor", node_yaml, tmp_path, check_level=0)  # checked < 5 s ago
        time.sleep(5.0)
        throttled = agent("monitor", node_yaml, tmp_path, check_level=0)  # its turn now
        frozen = agent("monitor", node_yaml, tmp_path)
    finally:
        os.killpg(group, signal.SIGCONT)
    assert shallow.returncode == OCF_RUNNING, shallow.stdout + shallow.stderr
    assert throttled.returncode == OCF_ERR_GENERIC, throttled.stdout + throttled.stderr
    assert frozen.returncode == OCF_ERR_GENERIC, frozen.stdout + frozen.stderr
    assert "does not serve" in frozen.stdout + frozen.stderr
    assert agent("monitor", node_yaml, tmp_path).returncode == OCF_RUNNING
    assert agent("stop", node_yaml, tmp_path).returncode == OCF_RUNNING
    assert agent("monitor", node_yaml, tmp_path).returncode == OCF_NOT_RUNNING
    assert agent("monitor", node_yaml, tmp_path, check_level=0).returncode == OCF_NOT_RUNNING
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stop took Kamailio down with kemi-ha run


def test_stop_after_kemi_ha_run_was_killed_stops_what_it_left(
    node_yaml: Path, tmp_path: Path
) -> None:
    """`kemi-ha run` SIGKILLed (OOM killer, a stop timeout): its Kamailio, rtpengine and Redis
    run on unsupervised, holding the node's ports. The agent's stop ends them by the PIDs the
    run recorded, and the node starts again."""
    assert agent("start", node_yaml, tmp_path).returncode == OCF_RUNNING
    supervisor = int((tmp_path / "kemi-ha-run.pid").read_text())
    recorded = (tmp_path / "run" / GROUPS_FILE).read_text().split("\n")
    daemons = [
        int(line.split()[1]) for line in recorded if line and not line.startswith(SUPERVISOR)
    ]
    assert len(daemons) == 3, recorded  # redis, rtpengine, kamailio
    os.kill(supervisor, signal.SIGKILL)
    for pid in daemons:
        os.kill(pid, 0)  # orphaned, alive
    stopped = agent("stop", node_yaml, tmp_path)
    assert stopped.returncode == OCF_RUNNING, stopped.stdout + stopped.stderr
    for pid in daemons:
        assert procs.exited(pid), pid
    assert agent("start", node_yaml, tmp_path).returncode == OCF_RUNNING  # ports free again
    assert agent("stop", node_yaml, tmp_path).returncode == OCF_RUNNING
