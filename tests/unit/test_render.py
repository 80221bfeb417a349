"""The cluster renderer: validation of the cluster file and the Corosync profiles."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from kemi.core import cdr
from kemi.core.node_spec import NodeConfigSpec
from kemi.core.structure import SpecError
from kemi.lab.drill import FENCE_AGENT, DrillNode, cluster_yaml, drill_policy
from kemi.lab.hanode import install_node
from kemi.ops.cdrstore import WRITE_ENDED_SHA, RedisAddress
from kemi.ops.nodecfg import DISPATCHER_LIST_NAME, render_dispatcher_list, render_node_cfg
from kemi.ops.render import (
    COROSYNC_PROFILES,
    corosync_conf,
    corosync_timer_problems,
    load_cluster,
    load_node_config,
    render,
)
from kemi.ops.stack import StackConfig
from kemi.policyfile import load_policy
from tests.cluster_files import cluster_file, example

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "cluster.example.yaml"


def test_example_cluster_loads() -> None:
    spec = load_cluster(EXAMPLE)
    assert [n.name for n in spec.nodes] == ["node1", "node2"]


def test_tuned_and_default_profiles() -> None:
    spec = load_cluster(EXAMPLE)
    tuned, default = corosync_conf(spec, "tuned"), corosync_conf(spec, "default")
    assert "token: 36\n" in tuned and "token_retransmits_before_loss_const: 1\n" in tuned
    assert "join: 40\n" in tuned and "consensus: 44\n" in tuned
    assert "knet_ping_interval: 50" in tuned and "knet_ping_timeout: 400" in tuned
    assert "token: 3000\n" in default and "knet_ping" not in default
    assert "two_node: 1" in tuned


@pytest.mark.parametrize("profile", sorted(COROSYNC_PROFILES))
def test_profiles_pass_corosync_runtime_checks(profile: str) -> None:
    """Corosync 3.1 refuses at start what `corosync -t` accepts (seen: token 30, consensus <
    join): the shipped profiles satisfy its run-time rules."""
    assert corosync_timer_problems(profile) == []


@pytest.mark.parametrize(
    ("timers", "problem"),
    [
        ({"token": 30}, "token retransmit 25.0 ms < 30 ms"),
        ({"join": 50}, "consensus 44 ms < join 50 ms"),
        ({"consensus": 40}, "consensus 40 ms < 1.2 x token 36 ms"),
    ],
)
def test_timer_rules_catch_what_corosync_refuses(
    monkeypatch: pytest.MonkeyPatch, timers: dict[str, int], problem: str
) -> None:
    monkeypatch.setitem(COROSYNC_PROFILES, "tuned", {**COROSYNC_PROFILES["tuned"], **timers})
    assert problem in corosync_timer_problems("tuned")


def test_two_links_carry_every_packet_on_both() -> None:
    """knet active mode with the tuned timers on each link: a lost link loses no token."""
    spec = load_cluster(EXAMPLE)
    one = corosync_conf(spec, "tuned")
    assert "link_mode" not in one and "ring1_addr" not in one
    nodes = tuple(dataclasses.replace(n, links=(f"10.99.2.{n.id}",)) for n in spec.nodes)
    two = corosync_conf(dataclasses.replace(spec, nodes=nodes), "tuned")
    assert "    link_mode: active\n" in two
    assert "ring0_addr: 10.99.1.1\n" in two and "ring1_addr: 10.99.2.1\n" in two
    for link in (0, 1):
        iface = two.split(f"linknumber: {link}\n")[1].split("}")[0]
        assert "knet_ping_interval: 50" in iface and "knet_ping_timeout: 400" in iface


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("prefer: node2", "prefer: node9"), "unknown node 'node9'"),
        (("id: 2,", "id: 1,"), "node names and ids must be unique"),
        (("vip: 10.99.1.100", "vip: 10.99.1.101"), "must differ"),
        (("address: 10.99.1.2,", "address: 10.99.1.x,"), "not an IP address"),
        (("cluster_name: kemi-ha", "cluster_nam: kemi-ha"), "unknown key"),
        (("netmask: 24", "tls_port: 5060"), "must differ from sip_port"),
        (("netmask: 24", "tls: {certificate: cert.pem}"), "must be an absolute path"),
    ],
)
def test_bad_cluster_files_are_refused(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    assert_refused_at_its_line(EXAMPLE.read_text(), change, message, tmp_path / "c.yaml",
                               load_cluster)  # fmt: skip


def assert_refused_at_its_line(
    text: str, change: tuple[str, str], message: str, bad: Path, load: Callable[[Path], object]
) -> None:
    """The changed file is refused with `message`, at the line of the change."""
    assert change[0] in text
    bad.write_text(text.replace(change[0], change[1], 1))
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if change[0] in ln)
    with pytest.raises(SpecError, match=message) as info:
        load(bad)
    assert any(m.startswith(f"{bad}:{line}:") for m in info.value.messages), info.value.messages


def three_nodes(tmp_path: Path) -> Path:
    """The example grown to three nodes and three VIPs (render must not assume two)."""
    text = (
        EXAMPLE.read_text()
        .replace(
            "  - {name: node2, id: 2, address: 10.99.1.2, interface: eth0}\n",
            "  - {name: node2, id: 2, address: 10.99.1.2, interface: eth0}\n"
            "  - {name: node3, id: 3, address: 10.99.1.3, interface: eth0}\n",
        )
        .replace(
            "  - {address: 10.99.1.102, prefer: node2, port_min: 35000, port_max: 39999}\n",
            "  - {address: 10.99.1.102, prefer: node2, port_min: 35000, port_max: 39999}\n"
            "  - {address: 10.99.1.103, prefer: node3, port_min: 40000, port_max: 44999}\n",
        )
    )
    return cluster_file(tmp_path, text, "cluster3.yaml")


@pytest.mark.parametrize("size", [2, 3])
def test_no_rendered_file_holds_a_path_of_the_rendering_machine(tmp_path: Path, size: int) -> None:
    cluster = example(tmp_path) if size == 2 else three_nodes(tmp_path)
    out = tmp_path / "out"
    written = render(cluster, out)
    assert {p.parent.name for p in written if p.parent != out} == {
        f"node{i}" for i in range(1, size + 1)
    }
    foreign = [str(REPO), str(tmp_path), str(Path.cwd()), str(Path(tempfile.gettempdir()))]
    for path in written:
        text = path.read_text()
        for root in foreign:
            assert root not in text, f"{path.relative_to(out)} holds {root}"
    cfg = (out / "node1" / "kemi-ha-node.cfg").read_text()
    assert 'import_file "/opt/kemi-ha/dmq/dmq.cfg"' in cfg
    assert '#!define KEMI_SCRIPT "/opt/kemi-ha/kemi/entry.py"' in cfg


def test_node_yaml_round_trips_into_the_launcher(tmp_path: Path) -> None:
    """The node.yaml render writes is what `kemi-ha run --node-config` reads, and the node cfg
    the launcher writes at start from it is the one render wrote (one code path)."""
    out = tmp_path / "out"
    render(three_nodes(tmp_path), out)
    policy = load_policy(out / "policy.yaml")
    for i in (1, 2, 3):
        node = load_node_config(out / f"node{i}" / "node.yaml")
        assert node.node_id == i and node.ready_check == "rpc"
        assert node.components == ["kamailio"] and node.policy == "/etc/kemi-ha/policy.yaml"
        config = StackConfig.from_node(node, Path("/opt/kemi-ha"))
        assert config.node_address == f"10.99.1.{i}" and config.components == ("kamailio",)
        assert config.run_dir == Path(node.run_dir) and config.log_dir == Path(node.log_dir)
        assert (
            render_node_cfg(policy, config.node_values(policy))
            == (out / f"node{i}" / "kemi-ha-node.cfg").read_text()
        )
        listed = (out / f"node{i}" / DISPATCHER_LIST_NAME).read_text()
        assert render_dispatcher_list(policy) == listed  # what the launcher writes at start
        cfg = (out / f"node{i}" / "kemi-ha-node.cfg").read_text()
        assert f'#!define DISPATCHER_LIST "{node.run_dir}/{DISPATCHER_LIST_NAME}"' in cfg
        # gateways are probed from the node's own address, never from a VIP another node holds
        assert f'"ds_default_socket", "udp:10.99.1.{i}:5090")' in cfg
        peers = {f'"sip:10.99.1.{j}:5090"' for j in (1, 2, 3) if j != i}
        assert {ln.split(", ")[-1][:-1] for ln in cfg.splitlines()
                if "notification_address" in ln} == peers  # fmt: skip


def test_from_node_carries_every_field() -> None:
    """A field added to the node model but not to the launcher would be silently ignored."""
    node = NodeConfigSpec(node_id=7, node_address="10.1.1.7", policy="/p.yaml", run_dir="/r",
                          log_dir="/l", sip_port=5062, tls_port=5063, tls_certificate="/c.pem",
                          tls_private_key="/k.pem", dmq_port=5092, http_address="10.1.1.7",
                          http_port=8092, components=["redis", "kamailio"],
                          ready_check="options", children=2, shm_mb=512, pkg_mb=32)  # fmt: skip
    config = StackConfig.from_node(node)
    mapped = {"policy": "policy_path"}
    for f in dataclasses.fields(NodeConfigSpec):
        if f.name == "fast_takeover":  # read by `kemi-ha run` itself (kemi.ops.vip_claim)
            continue
        got = getattr(config, mapped.get(f.name, f.name))
        want = getattr(node, f.name)
        if isinstance(got, Path):
            got = str(got)
        if isinstance(got, tuple):
            got = list(got)
        assert got == want, f.name


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("node_id: 1", "node_id: 16"), "node_id: must be 1..15"),
        (("node_address: 10.99.1.1", "node_address: node1"), "not an IP address"),
        (("- kamailio", "- asterisk"), "must be one of redis, rtpengine, kamailio"),
        (("ready_check: rpc", "ready_chek: rpc"), "unknown key"),
        (("tls_port: 5061", "tls_port: 5060"), "must differ from sip_port"),
        (("tls_certificate: /etc", "tls_certificate: etc"), "must be an absolute path"),
    ],
)
def test_bad_node_yaml_is_refused_with_its_line(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    render(example(tmp_path), tmp_path / "out")
    text = (tmp_path / "out" / "node1" / "node.yaml").read_text()
    assert_refused_at_its_line(text, change, message, tmp_path / "node.yaml", load_node_config)


def test_the_drill_installs_render_output_unchanged(tmp_path: Path) -> None:
    """docs/ha.md's install steps as the drill runs them: every file byte for byte."""
    out = tmp_path / "out"
    render(example(tmp_path), out)
    base = tmp_path / "node2"
    agents = {"kemi-ha/kamailio": REPO / "deploy" / "ocf" / "kamailio"}
    installed = install_node(out, "node2", base, agents)
    expected = {p.name for p in (out / "node2").iterdir()} | {"policy.yaml", "cib.xml"}
    assert {p.name for p in installed} == expected
    for path in installed:
        source = out / "node2" / path.name
        if path.name in ("policy.yaml", "cib.xml"):
            source = out / path.name
        assert path.read_bytes() == source.read_bytes(), path
        assert path.stat().st_mode & 0o777 == source.stat().st_mode & 0o777, path
    assert (base / "var-lib-pacemaker" / "cib" / "cib.xml").read_bytes() == (
        out / "cib.xml"
    ).read_bytes()
    assert (base / "etc-corosync" / "corosync.conf").is_file()
    # The operator's part (docs/security.md): the certificate node.yaml names, self-signed here.
    key = base / "etc-kemi-ha" / "tls" / "kemi-ha.key"
    assert (base / "etc-kemi-ha" / "tls" / "kemi-ha.crt").is_file()
    assert key.stat().st_mode & 0o777 == 0o600
    assert (base / "ocf" / "kemi-ha" / "kamailio").read_bytes() == agents[
        "kemi-ha/kamailio"
    ].read_bytes()


def test_a_quorum_device_gives_two_nodes_a_majority(tmp_path: Path) -> None:
    cluster = cluster_file(
        tmp_path, EXAMPLE.read_text() + "quorum_device: {address: 10.99.1.50, tls: false}\n"
    )
    out = tmp_path / "out"
    render(cluster, out)
    conf = (out / "node1" / "corosync.conf").read_text()
    assert "two_node" not in conf
    assert "model: net" in conf and "host: 10.99.1.50" in conf and "algorithm: ffsplit" in conf
    assert "tls: off" in conf and "timeout:" not in conf.split("device {")[1]
    cluster.write_text(cluster.read_text().replace("tls: false}", "tls: false, timeout_ms: 2000}"))
    render(cluster, tmp_path / "timed")
    timed = (tmp_path / "timed" / "node1" / "corosync.conf").read_text()
    assert "        timeout: 2000\n" in timed.split("device {")[1]
    assert 'name="no-quorum-policy" value="stop"' in (out / "cib.xml").read_text()
    plain = tmp_path / "plain"
    render(example(tmp_path), plain)
    assert 'name="no-quorum-policy" value="ignore"' in (plain / "cib.xml").read_text()
    assert "two_node: 1" in (plain / "node1" / "corosync.conf").read_text()


FENCING = REPO / "deploy" / "cluster.fencing.example.yaml"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("agent: fence_ipmilan", "agent: ipmilan"), "not a fence agent name"),
        (("    fence:\n      agent: fence_ipmilan\n      params: {ip: 10.99.2.2", "    x:\n"
          "      agent: fence_ipmilan\n      params: {ip: 10.99.2.2"), "unknown key"),
        (("params: {ip: 10.99.2.1,", "params: {pcmk_host_list: x, ip: 10.99.2.1,"),
         "pcmk_host_list is rendered"),
    ],
)  # fmt: skip
def test_bad_fencing_is_refused(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    text = FENCING.read_text()
    assert change[0] in text
    bad = tmp_path / "c.yaml"
    bad.write_text(text.replace(change[0], change[1], 1))
    with pytest.raises(SpecError, match=message):
        load_cluster(bad)


def test_fencing_on_some_nodes_only_is_refused(tmp_path: Path) -> None:
    text = FENCING.read_text()
    start = text.index("    fence:", text.index("name: node2"))
    bad = tmp_path / "c.yaml"
    bad.write_text(text[:start] + text[text.index("vips:") :])
    with pytest.raises(SpecError, match=r"nodes\[?.?1.*every node needs one") as info:
        load_cluster(bad)
    assert len(info.value.messages) == 1


def test_the_drills_fencing_is_rendered_like_any_fence_agent(tmp_path: Path) -> None:
    """The drill's cluster file names fence_kemiha_netns per node (no lab patch of the CIB);
    install_node puts the agent where the node sees /usr/sbin."""
    nodes = DrillNode.build(2)
    (tmp_path / "policy-base.yaml").write_text(drill_policy())
    out = tmp_path / "out"
    render(cluster_file(tmp_path, cluster_yaml(nodes, "tuned", fencing=True)), out)
    cib = (out / "cib.xml").read_text()
    assert 'name="stonith-enabled" value="true"' in cib
    for n in nodes:
        assert f'<primitive id="fence-{n.name}" class="stonith" type="fence_kemiha_netns">' in cib
        assert f'value="{n.name}:{n.netns}"' in cib  # pcmk_host_map: node -> its namespace
    install_node(out, "drill1", tmp_path / "drill1", {}, [FENCE_AGENT])
    sbin = tmp_path / "drill1" / "sbin" / "fence_kemiha_netns"
    assert sbin.read_bytes() == FENCE_AGENT.read_bytes() and sbin.stat().st_mode & 0o111
    plain = tmp_path / "plain.yaml"
    plain.write_text(cluster_yaml(nodes, "tuned"))
    assert "fence" not in plain.read_text()


def test_every_vip_listens_on_udp_tcp_and_tls_with_the_clusters_certificate(
    tmp_path: Path,
) -> None:
    """The cluster's certificate paths go to node.yaml and kemi-ha-node.cfg; every VIP gets a
    UDP, a TCP and a TLS listener on every node."""
    tls = "tls_port: 5071\ntls: {certificate: /srv/pki/sip.crt, private_key: /srv/pki/sip.key}\n"
    cluster = cluster_file(tmp_path, EXAMPLE.read_text() + tls)
    out = tmp_path / "out"
    render(cluster, out)
    for node in ("node1", "node2"):
        config = load_node_config(out / node / "node.yaml")
        assert (config.tls_port, config.tls_certificate, config.tls_private_key) == (
            5071, "/srv/pki/sip.crt", "/srv/pki/sip.key")  # fmt: skip
        cfg = (out / node / "kemi-ha-node.cfg").read_text()
        assert '#!define TLS_CERTIFICATE "/srv/pki/sip.crt"' in cfg
        assert '#!define TLS_PRIVATE_KEY "/srv/pki/sip.key"' in cfg
        listens = [ln for ln in cfg.splitlines() if ln.startswith("listen=") and "10.99.1.10" in ln]
        sockets = (("udp", 5060), ("tcp", 5060), ("tls", 5071))
        assert listens == [f"listen={proto}:10.99.1.{v}:{port}" for v in (101, 102)
                           for proto, port in sockets]  # fmt: skip


@pytest.mark.parametrize(
    ("cluster", "applies"),
    [
        ("cluster.example.yaml", True),
        ("cluster.3nodes.example.yaml", False),  # Pacemaker chooses among the survivors
        ("cluster.fencing.example.yaml", False),  # Pacemaker moves nothing before the fence
    ],
)
def test_fast_takeover_only_where_pacemaker_can_only_agree(
    tmp_path: Path, cluster: str, applies: bool
) -> None:
    """node.yaml carries the fast-takeover watcher's VIPs on two-node clusters without fencing
    or quorum device, and nothing elsewhere (kemi.core.vip_claim)."""
    out = tmp_path / "out"
    spec = load_cluster(example(tmp_path, REPO / "deploy" / cluster))
    render(tmp_path / cluster, out)
    for node in spec.nodes:
        fast = load_node_config(out / node.name / "node.yaml").fast_takeover
        if not applies:
            assert fast is None
            continue
        assert fast is not None and fast.node_name == node.name
        assert [(v.resource, v.address, v.prefix, v.nic) for v in fast.vips] == [
            (f"vip{i}", v.address, spec.netmask, node.interface)
            for i, v in enumerate(spec.vips, start=1)
        ]


def test_fast_takeover_off_or_with_a_quorum_device(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    off = tmp_path / "off"
    render(cluster_file(off, text + "fast_takeover: false\n"), off / "out")
    assert load_node_config(off / "out" / "node1" / "node.yaml").fast_takeover is None
    qdev = tmp_path / "qdev"
    device = "quorum_device: {address: 10.99.0.50}\n"
    render(cluster_file(qdev, text + device), qdev / "out")
    assert load_node_config(qdev / "out" / "node1" / "node.yaml").fast_takeover is None


def test_each_node_writes_its_call_records_with_the_script_its_store_loads(
    tmp_path: Path,
) -> None:
    """kamailio.cfg's event_route[dialog:end] sends CDR_ENDED_HEAD: WRITE_ENDED_LUA by the SHA1
    the Python store loads it under (NOSCRIPT sends the call to Python, which loads it), the
    node's own address as the end node, the stream and TTL of kemi.core.cdr."""
    out = tmp_path / "out"
    render(cluster_file(tmp_path, EXAMPLE.read_text()), out)
    for node in ("node1", "node2"):
        address = load_node_config(out / node / "node.yaml").node_address
        cfg = (out / node / "kemi-ha-node.cfg").read_text()
        head = f"EVALSHA {WRITE_ENDED_SHA} 2 %s {cdr.STREAM} {address} {cdr.ONCE_TTL_S} %s %s"
        assert f'#!define CDR_ENDED_HEAD "{head}"' in cfg
        assert f'#!define CDR_ONCE_PREFIX "{cdr.ONCE_PREFIX}"' in cfg
        assert "pass=" not in cfg  # the password reaches Kamailio in its environment only


def test_the_cdr_store_reaches_ndb_redis_as_the_python_store_reads_it() -> None:
    address = RedisAddress.parse("10.99.1.5:6380/2")
    assert address.ndb_redis_server(None) == "name=cdr;addr=10.99.1.5;port=6380;db=2"
    assert address.ndb_redis_server("abc-123_x.y~z").endswith(";db=2;pass=abc-123_x.y~z")
    for bad in ("a;b", "a=b", "a b", "ä"):
        with pytest.raises(ValueError, match="password"):
            address.ndb_redis_server(bad)
