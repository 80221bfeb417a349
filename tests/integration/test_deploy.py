"""Issue 6, deploy files: rendered from one cluster file, checked by the tools that consume them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kemi.cli import main as kemi_ha
from kemi.lab.net import Host, Lab
from kemi.ops.procs import Daemon, wait_until
from kemi.policyfile import load_policy

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "cluster.example.yaml"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    assert kemi_ha(["render", str(EXAMPLE), str(out)]) == 0
    return out


def full_cib(rendered: Path, nodes: list[tuple[int, str]]) -> str:
    config = (rendered / "cib-resources.xml").read_text()
    body = config.removeprefix("<configuration>").removesuffix("</configuration>")
    node_xml = "".join(f'<node id="{i}" uname="{name}"/>' for i, name in nodes)
    body = body.replace("<resources>", f"<nodes>{node_xml}</nodes><resources>", 1)
    return (
        '<cib validate-with="pacemaker-3.9" epoch="1" '
        f'num_updates="0" admin_epoch="0"><configuration>{body}</configuration><status/></cib>'
    )


def test_every_node_gets_its_files(rendered: Path) -> None:
    for node in ("node1", "node2"):
        for name in ("corosync.conf", "corosync-tuned.conf", "corosync-default.conf",
                     "sysctl-kemi-ha.conf", "redis.conf", "kemi-ha-node.cfg", "node.yaml",
                     "rtpengine-10.99.1.101.env", "rtpengine-10.99.1.102.env"):  # fmt: skip
            assert (rendered / node / name).is_file(), f"{node}/{name}"
    policy = load_policy(rendered / "policy.yaml")
    assert [v.address for v in policy.vips] == ["10.99.1.101", "10.99.1.102"]
    assert policy.dmq_peers == ("sip:10.99.1.1:5090", "sip:10.99.1.2:5090")
    node2 = (rendered / "node2" / "kemi-ha-node.cfg").read_text()
    assert "#!define DLG_H_ID_START 2" in node2 and "sip:10.99.1.1:5090" in node2
    assert "ip_nonlocal_bind = 1" in (rendered / "node1" / "sysctl-kemi-ha.conf").read_text()


@pytest.mark.parametrize("profile", ["tuned", "default"])
def test_corosync_accepts_both_profiles(rendered: Path, profile: str, require_root: None) -> None:
    """`corosync -t` on node1's file, inside a namespace where node1's address exists."""
    with Lab("khtc", [Host("khtc-n1", "10.99.1.1")]):
        result = subprocess.run(
            ["ip", "netns", "exec", "khtc-n1", "corosync", "-t", "-c",
             str(rendered / "node1" / f"corosync-{profile}.conf")],
            capture_output=True, text=True,
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_pacemaker_accepts_the_cib(rendered: Path, tmp_path: Path) -> None:
    cib = tmp_path / "cib.xml"
    cib.write_text(full_cib(rendered, [(1, "node1"), (2, "node2")]))
    result = subprocess.run(["crm_verify", "--xml-file", str(cib)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    crm = (rendered / "crm.txt").read_text()
    assert "colocation rtpengine1-with-vip1 inf: rtpengine1 vip1" in crm
    assert "colocation redis-vip-with-master inf: redis-vip redis-clone:Promoted" in crm
    assert '<clone id="kamailio-clone">' in (rendered / "cib-resources.xml").read_text()


@pytest.fixture
def redis_16399(tmp_path: Path, require_root: None) -> Iterator[None]:
    daemon = Daemon(
        "redis", ["redis-server", "--port", "16399", "--save", "", "--dir", str(tmp_path)],
        tmp_path / "redis.log",
    )  # fmt: skip
    daemon.start()
    wait_until(lambda: b"PONG" in subprocess.run(["redis-cli", "-p", "16399", "ping"],
               capture_output=True).stdout, 10, "redis")  # fmt: skip
    yield
    daemon.stop()


def test_rtpengine_ocf_agent_passes_ocf_tester(tmp_path: Path, redis_16399: None) -> None:
    result = subprocess.run(
        ["ocf-tester", "-n", "rtp", "-o", "vip=127.0.0.1", "-o", "ng_port=17223",
         "-o", "port_min=17300", "-o", "port_max=17399", "-o", "redis=127.0.0.1:16399/1",
         "-o", f"rundir={tmp_path}", "-o", f"logdir={tmp_path}",
         str(REPO / "deploy" / "ocf" / "rtpengine")],
        capture_output=True, text=True, timeout=120, env={"OCF_ROOT": "/usr/lib/ocf",
                                                         "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed all tests" in result.stdout + result.stderr
