"""A cluster node on one machine: Corosync and Pacemaker in their own network, UTS and mount
namespaces (LAB-NOTES: private /run and /dev/shm, per-node state directories bind-mounted over
the system ones), so that several stacks run side by side without seeing each other's IPC.

What the node runs is installed from `kemi-ha render` output exactly as docs/ha.md tells an
operator (install_node): the files are copied unchanged to the directories that the node's
mount namespace shows at /etc/kemi-ha, /etc/corosync, /var/lib/pacemaker/cib and the OCF root.
The lab only supplies what a real host has of its own: a hostname, /etc/hosts, empty /run.
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
from kemi.ops.cluster_status import parse_crm_mon
from kemi.ops.procs import Daemon, wait_until
from kemi.ops.render import load_node_config
from kemi.ops.tlscert import ensure_self_signed

OCF_ROOT = Path("/usr/lib/ocf/resource.d")

NODE_SCRIPT = """\
set -e
hostname "$NODE_NAME"
mkdir -p /etc/kemi-ha /var/log/kemi-ha
if [ -d "$BASE/sbin" ]; then
    # Fence agents: pacemaker-fenced runs stonith:fence_* from /usr/sbin; the lab's agent
    # powers a node (namespace) off through `ip netns`, which needs the host's /run/netns.
    mkdir -p "$BASE/netns"
    mount --rbind /run/netns "$BASE/netns"
    mount -t overlay overlay -o "lowerdir=$BASE/sbin:/usr/sbin" /usr/sbin
fi
mount -t tmpfs -o mode=755 tmpfs /run
if [ -d "$BASE/netns" ]; then
    mkdir -p /run/netns
    mount --rbind "$BASE/netns" /run/netns
fi
mkdir -p /run/crm /run/redis /run/kemi-ha
chown hacluster:haclient /run/crm && chmod 750 /run/crm
chown redis:redis /run/redis
mount --bind "$BASE/run-kemi-ha" /run/kemi-ha
mount -t tmpfs tmpfs /dev/shm
mount --bind "$BASE/etc-kemi-ha" /etc/kemi-ha
mount --bind "$BASE/log-kemi-ha" /var/log/kemi-ha
sysctl -q -p /etc/kemi-ha/sysctl-kemi-ha.conf
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
if grep -q "model: net" /etc/corosync/corosync.conf; then
    mkdir -p /run/corosync-qdevice
    corosync-qdevice -f &
fi
exec pacemakerd
"""


# What `kemi-ha render` wrote -> where docs/ha.md installs it (paths as the node sees them).
# `{node}` is the node's own directory of the output; the OCF agents come from deploy/ocf.
INSTALL = (
    ("{node}/*", "/etc/kemi-ha/"),
    ("policy.yaml", "/etc/kemi-ha/policy.yaml"),
    ("{node}/corosync.conf", "/etc/corosync/corosync.conf"),
    ("cib.xml", "/var/lib/pacemaker/cib/cib.xml"),
)
# Node path -> the lab directory under the node's base that its mount namespace shows there.
MOUNTS = {
    "/etc/kemi-ha/": "etc-kemi-ha",
    "/etc/corosync/": "etc-corosync",
    "/var/lib/pacemaker/": "var-lib-pacemaker",
}


def install_node(rendered: Path, name: str, base: Path, agents: dict[str, Path],
                 fence_agents: Sequence[Path] = ()) -> list[Path]:  # fmt: skip
    """Copy the render output for node `name` where the node will see it; files unchanged.
    Fence agents go to the directory the node sees over /usr/sbin.

    Returns the installed files (a test compares each with what render wrote).
    """
    installed: list[Path] = []
    for source, target in INSTALL:
        prefix = next(p for p in MOUNTS if target.startswith(p))
        dest = base / MOUNTS[prefix] / target.removeprefix(prefix)
        pattern = source.format(node=name)
        sources = sorted(rendered.glob(pattern)) if "*" in pattern else [rendered / pattern]
        for src in sources:
            out = dest / src.name if target.endswith("/") else dest
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out)
            out.chmod(src.stat().st_mode & 0o777)  # render's mode: 600/640 where the password is
            if src.name == "redis.conf":  # ocf:heartbeat:redis starts redis-server as redis
                shutil.chown(out, group="redis")
            installed.append(out)
    install_tls_pair(rendered / name / "node.yaml", base)
    for key, agent in agents.items():  # /usr/lib/ocf/resource.d/<provider>/<type>
        target = base / "ocf" / key
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(agent, target)
        target.chmod(0o755)
    for agent in fence_agents:  # /usr/sbin/fence_*
        target = base / "sbin" / agent.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(agent, target)
        target.chmod(0o755)
    return installed


def install_tls_pair(node_yaml: Path, base: Path) -> None:
    """What an operator installs besides render's output (docs/security.md): the certificate
    and key node.yaml names, here a self-signed pair made where the node will see it."""
    node = load_node_config(node_yaml)
    paths = [node.tls_certificate, node.tls_private_key]
    lab_paths = []
    for path in paths:
        prefix = next((p for p in MOUNTS if path and path.startswith(p)), None)
        if path is None or prefix is None:
            raise ValueError(f"{node_yaml}: TLS file {path} is outside what the lab mounts")
        lab_paths.append(base / MOUNTS[prefix] / path.removeprefix(prefix))
    ensure_self_signed(lab_paths[0], lab_paths[1])


class HaNode:
    def __init__(self, name: str, netns: str, base: Path, hosts: dict[str, str]) -> None:
        self.name = name
        self.netns = netns
        self.base = base  # install_node() has filled it
        self.hosts = hosts  # node name -> address: ocf:heartbeat:redis replicates by node name
        self.daemon: Daemon | None = None

    def prepare(self) -> None:
        b = self.base
        for d in ("etc-corosync", "var-lib-corosync", "log-corosync", "ocf/heartbeat",
                  "etc-kemi-ha", "log-kemi-ha", "run-kemi-ha", "log-pacemaker"):  # fmt: skip
            (b / d).mkdir(parents=True, exist_ok=True)
        for d in ("cib", "pengine", "blackbox", "cores"):
            (b / "var-lib-pacemaker" / d).mkdir(parents=True, exist_ok=True)
        (b / "hosts").write_text(
            "127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in self.hosts.items())
        )
        for d in ("var-lib-pacemaker", "log-pacemaker"):
            sh("chown", "-R", "hacluster:haclient", str(b / d))
            sh("chmod", "-R", "u+rwX,g+rwX,o-rwx", str(b / d))

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
            # -r: the node's root too (the same / on a host; inside a chroot, without it the
            # paths would resolve outside the node's mounts: its /dev/shm, /run).
            ["nsenter", "-t", str(self.pid), "-m", "-u", "-n", "-r", *argv],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.daemon is None or not self.daemon.alive():
                raise RuntimeError(
                    f"node {self.name} exited: {self.daemon and self.daemon.log_tail()}"
                )
            # What `crm_mon -s` called OK (Pacemaker 3.0 has no -s): a DC, every node online.
            shown = self.run(["crm_mon", "-1", "--output-as=xml"])
            if shown.returncode != 0:
                return False
            state = parse_crm_mon(shown.stdout)
            return state["dc"] is not None and all(n["online"] for n in state["nodes"])

        wait_until(ready, timeout, f"pacemaker on {self.name}", step=0.2)

    def located(self, resource: str) -> str:
        """The node a resource runs on ('' if stopped), from crm_resource."""
        out = self.run(["crm_resource", "--locate", "-r", resource, "-Q"]).stdout.strip()
        return out.splitlines()[0].strip() if out else ""

    def promoted(self, resource: str) -> str:
        """The node where a promotable clone's instance is promoted ('' if none)."""
        out = self.run(["crm_resource", "--locate", "-r", resource]).stdout
        for line in out.splitlines():
            if line.rstrip().endswith(" Promoted"):
                return line.rstrip().removesuffix(" Promoted").rsplit(" ", 1)[-1]
        return ""


def kill_netns(netns: str) -> list[int]:
    """SIGKILL every process in a network namespace (a power cut), by PID."""
    pids = [int(p) for p in sh("ip", "netns", "pids", netns, check=False).stdout.split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.05)
    return pids
