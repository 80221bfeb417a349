"""A cluster node on one machine: Corosync and Pacemaker in their own network, UTS and mount
namespaces (LAB-NOTES: private /run and /dev/shm, per-node state directories bind-mounted over
the system ones), so that two stacks run side by side without seeing each other's IPC.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from kemi.lab.net import sh
from kemi.ops.procs import Daemon, wait_until

OCF_ROOT = Path("/usr/lib/ocf/resource.d")

NODE_SCRIPT = """\
set -e
hostname "$NODE_NAME"
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/crm /run/redis /run/kemi-ha
chown hacluster:haclient /run/crm && chmod 750 /run/crm
chown redis:redis /run/redis
[ -f "$BASE/node.yaml" ] && cp "$BASE/node.yaml" /run/kemi-ha/node.yaml
mount -t tmpfs tmpfs /dev/shm
mount --bind "$BASE/etc-corosync" /etc/corosync
mount --bind "$BASE/var-lib-corosync" /var/lib/corosync
mount --bind "$BASE/var-lib-pacemaker" /var/lib/pacemaker
mount --bind "$BASE/log-pacemaker" /var/log/pacemaker
mount --bind "$BASE/log-corosync" /var/log/corosync
mount --bind "$BASE/hosts" /etc/hosts
mount --bind "$OCF_HEARTBEAT" "$BASE/ocf/heartbeat"
mount --rbind "$BASE/ocf" "$OCF_ROOT"
corosync -f &
until corosync-cfgtool -s >/dev/null 2>&1; do sleep 0.05; done
exec pacemakerd
"""


class HaNode:
    def __init__(self, name: str, netns: str, base: Path, corosync_conf: str, cib: str,
                 ocf_agents: dict[str, Path], hosts: dict[str, str]) -> None:  # fmt: skip
        self.name = name
        self.netns = netns
        self.base = base
        self.corosync_conf = corosync_conf
        self.cib = cib
        self.ocf_agents = ocf_agents  # "provider/type" -> agent file
        self.hosts = hosts  # node name -> address: ocf:heartbeat:redis replicates by node name
        self.daemon: Daemon | None = None

    def prepare(self) -> None:
        b = self.base
        for d in ("etc-corosync", "var-lib-corosync", "log-corosync", "ocf/heartbeat"):
            (b / d).mkdir(parents=True, exist_ok=True)
        for d in ("cib", "pengine", "blackbox", "cores"):
            (b / "var-lib-pacemaker" / d).mkdir(parents=True, exist_ok=True)
        (b / "log-pacemaker").mkdir(exist_ok=True)
        (b / "etc-corosync" / "corosync.conf").write_text(self.corosync_conf)
        (b / "hosts").write_text(
            "127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in self.hosts.items())
        )
        # A seeded CIB (nodes, properties, resources) saves the ~20 s of an empty-CIB election.
        (b / "var-lib-pacemaker" / "cib" / "cib.xml").write_text(self.cib)
        for key, agent in self.ocf_agents.items():
            target = b / "ocf" / key
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(agent, target)
            target.chmod(0o755)
        sh(
            "chown",
            "-R",
            "hacluster:haclient",
            str(b / "var-lib-pacemaker"),
            str(b / "log-pacemaker"),
        )
        sh(
            "chmod",
            "-R",
            "u+rwX,g+rwX,o-rwx",
            str(b / "var-lib-pacemaker"),
            str(b / "log-pacemaker"),
        )

    def start(self) -> None:
        self.prepare()
        script = self.base / "node.sh"
        script.write_text(NODE_SCRIPT)
        env = {
            "NODE_NAME": self.name, "BASE": str(self.base), "OCF_ROOT": str(OCF_ROOT),
            "OCF_HEARTBEAT": str(OCF_ROOT / "heartbeat"),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        }  # fmt: skip
        self.daemon = Daemon(
            f"node-{self.name}",
            ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--mount",
             "--propagation", "private", "--", "bash", str(script)],
            self.base / "node.log", env=env,
        )  # fmt: skip
        self.daemon.start()

    @property
    def pid(self) -> int:
        assert self.daemon is not None and self.daemon.pid is not None
        return self.daemon.pid

    def run(self, argv: Sequence[str], timeout: float = 10) -> subprocess.CompletedProcess[str]:
        """A command inside the node (its network, UTS and mount namespaces)."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-u", "-n", *argv],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.daemon is None or not self.daemon.alive():
                raise RuntimeError(
                    f"node {self.name} exited: {self.daemon and self.daemon.log_tail()}"
                )
            return self.run(["crm_mon", "-1", "-s"]).returncode == 0

        wait_until(ready, timeout, f"pacemaker on {self.name}", step=0.2)

    def located(self, resource: str) -> str:
        """The node a resource runs on ('' if stopped), from crm_resource."""
        out = self.run(["crm_resource", "--locate", "-r", resource, "-Q"]).stdout.strip()
        return out.splitlines()[0].strip() if out else ""


def kill_netns(netns: str) -> list[int]:
    """SIGKILL every process in a network namespace (a power cut), by PID."""
    pids = [int(p) for p in sh("ip", "netns", "pids", netns, check=False).stdout.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.05)
    return pids
