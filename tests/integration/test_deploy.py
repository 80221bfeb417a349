"""Issue 6, deploy files: rendered from one cluster file, checked by the tools that consume them."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kemi.cli import main as kemi_ha
from kemi.lab.net import Host, Lab, lab_ns
from kemi.ops.netns import in_netns
from kemi.ops.ng import NgClient
from kemi.ops.procs import Daemon, wait_until
from kemi.policyfile import load_policy
from tests.cluster_files import cluster_file, example, installed_agent
from tests.pacemaker_shape import cib_shape

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

KHTC_N1, KHTR_N1 = lab_ns("khtc-n1"), lab_ns("khtr-n1")
KHTV_N1, KHFT_1 = lab_ns("khtv-n1"), lab_ns("khft-1")
EXAMPLE = REPO / "deploy" / "cluster.example.yaml"
EXAMPLE_3 = REPO / "deploy" / "cluster.3nodes.example.yaml"
EXAMPLE_FENCING = REPO / "deploy" / "cluster.fencing.example.yaml"


def render_example(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example rendered as an operator does, with a password file beside the cluster file."""
    out = tmp_path_factory.mktemp("rendered")
    assert kemi_ha(["render", str(example(tmp_path_factory.mktemp("cluster"), source)),
                    str(out)]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_example(EXAMPLE, tmp_path_factory)


@pytest.fixture(
    scope="module",
    params=[EXAMPLE, EXAMPLE_3, EXAMPLE_FENCING],
    ids=["2-nodes", "3-nodes", "2-nodes-fencing"],
)
def each_example(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both cluster examples rendered: what Pacemaker and crmsh are asked about."""
    return render_example(request.param, tmp_path_factory)


def test_every_node_gets_its_files(rendered: Path) -> None:
    for node in ("node1", "node2"):
        for name in ("corosync.conf", "corosync-tuned.conf", "corosync-default.conf",
                     "sysctl-kemi-ha.conf", "redis.conf", "kemi-ha-node.cfg", "node.yaml",
                     "dispatcher.list", "rtpengine-10.99.1.101.env",
                     "rtpengine-10.99.1.102.env"):  # fmt: skip
            assert (rendered / node / name).is_file(), f"{node}/{name}"
    policy = load_policy(rendered / "policy.yaml")
    assert [v.address for v in policy.vips] == ["10.99.1.101", "10.99.1.102"]
    assert policy.dmq_peers == ("sip:10.99.1.1:5090", "sip:10.99.1.2:5090")
    node2 = (rendered / "node2" / "kemi-ha-node.cfg").read_text()
    assert "#!define DLG_H_ID_START 2" in node2 and "sip:10.99.1.1:5090" in node2
    assert "ip_nonlocal_bind = 1" in (rendered / "node1" / "sysctl-kemi-ha.conf").read_text()


@pytest.mark.parametrize("profile", ["tuned", "default"])
def test_corosync_accepts_every_node_file(
    each_example: Path, profile: str, require_root: None
) -> None:
    """`corosync -t` on every node's file, inside a namespace where that node's address exists."""
    nodes = sorted(p.name for p in each_example.iterdir() if p.is_dir())
    for i, node in enumerate(nodes, start=1):
        with Lab(lab_ns("khtc"), [Host(KHTC_N1, f"10.99.1.{i}")]):
            result = subprocess.run(
                ["ip", "netns", "exec", KHTC_N1, "corosync", "-t", "-c",
                 str(each_example / node / f"corosync-{profile}.conf")],
                capture_output=True, text=True,
            )  # fmt: skip
        assert result.returncode == 0, f"{node}: {result.stdout}{result.stderr}"


def test_kamailio_parses_every_node_cfg(tmp_path: Path, require_root: None) -> None:
    """Kamailio's own parser (`kamailio -c`) on kamailio.cfg with each rendered node include.

    Rendered with the repository as `kemi_ha_root` (a field of the cluster file), so that the
    include's paths (dmq/dmq.cfg, kemi/entry.py) exist here as they do on a node.
    """
    cluster = cluster_file(tmp_path, EXAMPLE_3.read_text() + f"kemi_ha_root: {REPO}\n")
    out = tmp_path / "out"
    assert kemi_ha(["render", str(cluster), str(out)]) == 0
    for node in ("node1", "node2", "node3"):
        result = subprocess.run(
            ["kamailio", "-c", "-f", str(REPO / "kamailio.cfg"), "-A", "WITH_DMQ"],
            cwd=out / node, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, f"{node}: {result.stdout}{result.stderr}"
        assert "config file ok" in result.stdout + result.stderr


def redis_cli(ns: str, *args: str, password: str = "") -> str:
    env = os.environ | ({"REDISCLI_AUTH": password} if password else {})
    result = subprocess.run(["ip", "netns", "exec", ns, "redis-cli", *args], capture_output=True,
                            text=True, env=env, timeout=10)  # fmt: skip
    return (result.stdout + result.stderr).strip()


def test_rendered_redis_refuses_strangers_and_serves_rtpengine_with_the_password(
    rendered: Path, tmp_path: Path, require_root: None
) -> None:
    """node1's rendered redis.conf in a namespace holding node1's address, the Redis VIP and
    VIP1: no answer without the password (loopback included), nothing on another address of the
    node; node1's rtpengine for VIP1 started with the rendered options and config file writes a
    call into its DB through the Redis VIP with the password."""
    secret = (rendered / "node1" / "redis.pass").read_text().strip()
    with Lab(lab_ns("khtr"), [Host(KHTR_N1, "10.99.1.1")]) as lab:
        for address in ("10.99.1.100", "10.99.1.101", "10.99.1.50"):  # Redis VIP, VIP1, other
            lab.add_address(KHTR_N1, address)
        redis = Daemon("redis", ["ip", "netns", "exec", KHTR_N1, "redis-server",
                                 str(rendered / "node1" / "redis.conf"), "--dir", str(tmp_path)],
                       tmp_path / "redis.log")  # fmt: skip
        redis.start()
        rtpengine: Daemon | None = None
        try:
            wait_until(lambda: redis_cli(KHTR_N1, "ping", password=secret) == "PONG", 10,
                       "redis with the rendered conf")  # fmt: skip
            for host in ("127.0.0.1", "10.99.1.1", "10.99.1.100"):
                assert redis_cli(KHTR_N1, "-h", host, "ping").startswith("NOAUTH"), host
                assert redis_cli(KHTR_N1, "-h", host, "ping", password=secret) == "PONG", host
            assert "refused" in redis_cli(KHTR_N1, "-h", "10.99.1.50", "ping").lower()
            assert "WRONGPASS" in redis_cli(KHTR_N1, "ping", password="not-" + secret)
            env = dict(
                line.split("=", 1) for line in
                (rendered / "node1" / "rtpengine-10.99.1.101.env").read_text().splitlines()
                if "=" in line and not line.startswith("#")
            )  # fmt: skip
            conf = rendered / "node1" / "rtpengine-10.99.1.101.conf"
            options = shlex.split(env["OPTIONS"].strip('"'))
            argv = ["rtpengine", f"--config-file={conf}", "--foreground", "--log-stderr",
                    "--log-level=6", f"--pidfile={tmp_path}/rtpengine.pid", *options]  # fmt: skip
            rtpengine = Daemon("rtpengine", ["ip", "netns", "exec", KHTR_N1, *argv],
                               tmp_path / "rtpengine.log")  # fmt: skip
            rtpengine.start()
            ng_port = int(env["NG_PORT"])
            with in_netns(KHTR_N1):
                wait_until(NgClient("127.0.0.1", ng_port).ping, 10, "rtpengine ng")
                NgClient("127.0.0.1", ng_port).command(
                    "offer", **{"call-id": "deploy-redis-auth", "from-tag": "a", "sdp": SDP}
                )
            own_db = rtpengine_urls_db(env["REDIS_WRITE"])
            wait_until(lambda: "deploy-redis-auth" in redis_cli(
                KHTR_N1, "-n", str(own_db), "--scan", password=secret), 10,
                "the call's key written through the Redis VIP")  # fmt: skip
            log = (tmp_path / "rtpengine.log").read_text(errors="replace")
            assert "NOAUTH" not in log and "WRONGPASS" not in log, log[-2000:]
            assert rtpengine.proc is not None
            assert secret.encode() not in Path(f"/proc/{rtpengine.proc.pid}/cmdline").read_bytes()
        finally:
            if rtpengine is not None:
                rtpengine.stop()
            redis.stop()


def rtpengine_urls_db(url: str) -> int:
    return int(url.rsplit("/", 1)[1])


SDP = ("v=0\r\no=- 1 1 IN IP4 10.99.1.9\r\ns=-\r\nc=IN IP4 10.99.1.9\r\nt=0 0\r\n"
       "m=audio 4000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n")  # fmt: skip


def test_pacemaker_accepts_the_cib(each_example: Path, tmp_path: Path) -> None:
    """crm_verify on the rendered whole CIB (rc 0, nothing printed). Every node is shown online
    in <status>: with fencing on, nodes never seen would be scheduled for fencing (a warning)."""
    cib = each_example / "cib.xml"
    text = cib.read_text()
    states = "".join(
        f'<node_state id="{m[1]}" uname="{m[2]}" in_ccm="true" crmd="online" join="member" '
        'expected="member"/>'
        for m in re.finditer(r'<node id="(\d+)" uname="([^"]+)"/>', text)
    )
    assert states
    up = tmp_path / "cib-up.xml"
    up.write_text(text.replace("<status/>", f"<status>{states}</status>"))
    result = subprocess.run(["crm_verify", "--xml-file", str(up)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert cib_shape(cib.read_text()) == cib_shape((each_example / "cib-resources.xml").read_text())


def test_crmsh_loads_crm_txt_into_the_same_cib(each_example: Path, tmp_path: Path) -> None:
    """The real crmsh turns crm.txt into the CIB we render as XML (tests/pacemaker_shape.py).

    crmsh works offline on a CIB file: `cibadmin --empty` writes one, and with `CIB_file` set
    every cibadmin call crmsh makes reads and writes that file instead of a live cluster (another
    cluster on this machine is never touched). crmsh checks each primitive against its agent's
    meta-data, which it gets from `crm_resource --show-metadata`; Pacemaker looks agents up only
    in its compiled-in OCF root (/usr/lib/ocf/resource.d; OCF_ROOT in the environment and a
    temporary OCF root are ignored), so ocf:kemi-ha:* agents, not installed there, are errors
    that stop the commit. `-o core.check_mode=relaxed` commits anyway while still printing
    every problem, and the test then allows only the "no meta-data"/"no such resource agent"
    errors about ocf:kemi-ha agents: an unknown parameter of a heartbeat agent still fails.
    The comparison ignores the ids crmsh makes up (op, nvpair and set ids).
    """
    empty = subprocess.run(["cibadmin", "--empty"], capture_output=True, text=True, check=True)
    cib = tmp_path / "cib.xml"
    # Quorum as a running cluster has it: without, crmsh's check of a 3-node CIB
    # (no-quorum-policy=stop) reports "resource management disabled due to lack of quorum".
    cib.write_text(empty.stdout.replace("<cib ", '<cib have-quorum="1" ', 1))
    result = subprocess.run(
        ["crm", "-o", "core.check_mode=relaxed", "configure", "load", "update",
         str(each_example / "crm.txt")],
        capture_output=True, text=True, env=os.environ | {"CIB_file": str(cib)}, timeout=60,
    )  # fmt: skip
    output = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout + result.stderr)
    assert result.returncode == 0, output
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    unknown_agent = re.compile(r"ERROR: ocf:kemi-ha:\w+: (got no meta-data|no such resource agent)")
    assert all(unknown_agent.match(line) for line in errors), output
    loaded = cib_shape(cib.read_text())
    assert loaded == cib_shape((each_example / "cib-resources.xml").read_text())
    assert loaded["resources"] and loaded["constraints"]


REDIS_16399_PASSWORD = "ocf-tester-password-0123"


@pytest.fixture
def redis_16399(tmp_path: Path, require_root: None) -> Iterator[Path]:
    """A Redis with a password on 16399; yields the password file the agent is given."""
    secret = tmp_path / "redis.pass"
    secret.write_text(REDIS_16399_PASSWORD + "\n")
    secret.chmod(0o600)
    daemon = Daemon(
        "redis", ["redis-server", "--port", "16399", "--save", "", "--dir", str(tmp_path),
                  "--requirepass", REDIS_16399_PASSWORD],
        tmp_path / "redis.log",
    )  # fmt: skip
    daemon.start()
    wait_until(lambda: b"PONG" in subprocess.run(
        ["redis-cli", "-p", "16399", "ping"], capture_output=True,
        env=os.environ | {"REDISCLI_AUTH": REDIS_16399_PASSWORD}).stdout, 10, "redis")  # fmt: skip
    yield secret
    daemon.stop()


def test_rtpengine_ocf_agent_passes_ocf_tester(tmp_path: Path, redis_16399: Path) -> None:
    """start, monitor, promote/demote twice, stop; outside a cluster the node is `uname -n`.
    Redis wants a password: the agent reads it from redis_password_file."""
    with installed_agent("rtpengine") as agent:
        result = subprocess.run(
            ["ocf-tester", "-n", "rtp", "-o", "vip=127.0.0.1", "-o", "ng_port=17223",
             "-o", "port_min=17300", "-o", "port_max=17399", "-o", "redis=127.0.0.1:16399",
             "-o", f"redis_password_file={redis_16399}",
             "-o", f"dbs={os.uname().nodename}:17 other:18", "-o", "cli=127.0.0.1:17901",
             "-o", f"rundir={tmp_path}", "-o", f"logdir={tmp_path}", str(agent)],
            capture_output=True, text=True, timeout=120,
            env={"OCF_ROOT": "/usr/lib/ocf", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed all tests" in result.stdout + result.stderr


def test_vip_ocf_agent_passes_ocf_tester(require_root: None) -> None:
    """Inside a namespace of its own: the agent adds and removes a real address."""
    with Lab(lab_ns("khtv"), [Host(KHTV_N1, "10.99.7.1")]), installed_agent("vip") as agent:
        result = subprocess.run(
            ["ip", "netns", "exec", KHTV_N1, "ocf-tester", "-n", "vip",
             "-o", "ip=10.99.7.100", "-o", "cidr_netmask=24", str(agent)],
            capture_output=True, text=True, timeout=120,
            env={"OCF_ROOT": "/usr/lib/ocf", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed all tests" in result.stdout + result.stderr


def test_pacemaker_promotes_the_standby_where_the_vip_goes(
    each_example: Path, tmp_path: Path
) -> None:
    """crm_simulate (offline, agents not run) on the rendered CIB: every VIP's rtpengine is promoted
    beside its VIP, a standby everywhere else; the preferred node of VIP1 fails and its survivor
    starts VIP1 and promotes its rtpengine1 in the same transition; moving VIP1 back demotes
    before it promotes (failback)."""
    cib = (each_example / "cib.xml").read_text().replace("<cib ", '<cib have-quorum="1" ', 1)
    (tmp_path / "cib.xml").write_text(cib)
    nodes = re.findall(r'<node id="\d+" uname="([^"]+)"/>', cib)
    up = tmp_path / "up.xml"

    def simulate(xml: Path, *args: str) -> str:
        result = subprocess.run(["crm_simulate", "-x", str(xml), "-S", *args],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    started = simulate(tmp_path / "cib.xml", *(f"--node-up={n}" for n in nodes), "-O", str(up))
    vips = len(re.findall(r"Clone Set: rtpengine\d+-clone", started)) // 2
    assert vips >= 2
    for i in range(1, vips + 1):
        promoted = re.findall(rf"rtpengine{i}-clone .*?Promoted: \[ (\S+) \]", started, re.S)
        assert promoted and promoted[-1] in nodes
        locate = subprocess.run(["crm_resource", "--locate", "-r", f"vip{i}", "-Q"],
                                capture_output=True, text=True,
                                env=os.environ | {"CIB_file": str(up)})  # fmt: skip
        assert locate.stdout.strip() == promoted[-1], f"vip{i}"
    first = re.findall(r"rtpengine1-clone .*?Promoted: \[ (\S+) \]", started, re.S)[-1]
    takeover = simulate(up, f"--node-fail={first}")
    summary = takeover.split("Executing Cluster Transition")[0]
    # Start, or with fencing Move (the fenced node's stop is implied by the fence).
    survivor = re.search(r"(?:Start|Move)\s+vip1\s+\((?:\s*\S+ ->)?\s*(\S+)\s*\)", summary)
    assert survivor, summary
    if 'stonith-enabled" value="true' in cib:  # the VIP starts only once the node is fenced
        assert f"Fence (reboot) {first} " in summary, summary
        executed = takeover.split("Executing Cluster Transition")[1]
        assert executed.index(f"Fencing {first} ") < executed.index("vip1            start on")
    assert re.search(
        rf"Promote\s+rtpengine1:\d+\s+\(\s*Unpromoted -> Promoted {survivor[1]}", summary
    )
    moved = tmp_path / "moved.xml"
    moved.write_bytes(up.read_bytes())
    other = next(n for n in nodes if n != first)
    subprocess.run(["crm_resource", "--move", "-r", "vip1", "-N", other], capture_output=True,
                   env=os.environ | {"CIB_file": str(moved)}, check=True)  # fmt: skip
    actions = simulate(moved).split("Executing Cluster Transition")[1]
    assert actions.index(f"rtpengine1      demote on {first}") < actions.index(
        f"rtpengine1      promote on {other}"
    )


def test_lab_fence_agent_powers_a_namespace_off_and_on(require_root: None) -> None:
    """fence_kemiha_netns as pacemaker-fenced calls it (options on stdin): off = links down and
    nothing left running; status 2; on = links up without the run-time (secondary) addresses."""
    agent = str(REPO / "deploy" / "fence" / "fence_kemiha_netns")
    lab = Lab(lab_ns("khft"), [Host(KHFT_1, "10.96.9.1")])
    with lab:
        lab.add_address(KHFT_1, "10.96.9.101")  # a VIP it held
        sleeper = subprocess.Popen(["ip", "netns", "exec", KHFT_1, "sleep", "60"])
        try:
            pids = ["ip", "netns", "pids", KHFT_1]
            wait_until(lambda: subprocess.run(pids, capture_output=True).stdout != b"", 5, "sleep")

            def fence(action: str) -> int:
                stdin = f"action={action}\nplug={KHFT_1}\nnodename=drill1\n"
                return subprocess.run([agent], input=stdin, text=True, timeout=10).returncode

            assert fence("status") == 0
            assert fence("off") == 0
            assert sleeper.wait(5) == -9
            assert fence("status") == 2
            assert fence("on") == 0
            addresses = subprocess.run(["ip", "-n", KHFT_1, "-o", "-4", "addr"],
                                       capture_output=True, text=True).stdout  # fmt: skip
            assert "10.96.9.1/" in addresses and "10.96.9.101" not in addresses
            assert fence("status") == 0
        finally:
            sleeper.kill()


def test_pacemaker_reads_the_lab_fence_agents_metadata(tmp_path: Path, require_root: None) -> None:
    """pacemaker's own stonith_admin finds fence_kemiha_netns in /usr/sbin (overlaid there in a
    private mount namespace, as the drill does per node) and reads its metadata."""
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    agent = sbin / "fence_kemiha_netns"
    agent.write_bytes((REPO / "deploy" / "fence" / "fence_kemiha_netns").read_bytes())
    agent.chmod(0o755)
    script = (f"mount -t overlay overlay -o lowerdir={sbin}:/usr/sbin /usr/sbin && "
              "stonith_admin --metadata --agent fence_kemiha_netns")  # fmt: skip
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert '<resource-agent name="fence_kemiha_netns"' in result.stdout
    assert not Path("/usr/sbin/fence_kemiha_netns").exists()  # the host's /usr/sbin untouched
