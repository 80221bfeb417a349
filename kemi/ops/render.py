"""`kemi-ha render CLUSTER.yaml OUTDIR`: every deploy file of every node, from one description.

OUTDIR/
  policy.yaml                 the base policy with this cluster's VIPs and DMQ peers
  crm.txt                     Pacemaker configuration in crm shell syntax (for humans, crmsh)
  cib-resources.xml           the same as CIB XML: <configuration> for cibadmin --replace
  cib.xml                     a whole initial CIB with the nodes (seeds a fresh cluster; crm_verify)
  <node>/corosync.conf        the chosen profile; corosync-tuned.conf and corosync-default.conf
  <node>/sysctl-kemi-ha.conf  ip_nonlocal_bind (listen on VIPs held by the other node)
  <node>/redis.conf           one Redis per node; the ocf:heartbeat:redis agent sets replicaof;
                              keyspace events on (hot standby), a DB per (VIP, node)
  <node>/kemi-ha-node.cfg     Kamailio's node include (kamailio.cfg itself is never edited)
  <node>/rtpengine-<vip>.env  this node's rtpengine options per VIP (own DB, subscribed DBs)
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from pathlib import Path
from typing import Any

import yaml

from kemi import specfile
from kemi.core.cluster_resources import cluster_resources
from kemi.core.cluster_spec import ClusterSpec, NodeSpec
from kemi.core.compile import compile_policy
from kemi.core.node_spec import NodeConfigSpec, check_node
from kemi.core.pacemaker import to_cib, to_cib_configuration, to_crm
from kemi.core.rtpengine_dbs import cli_port, redis_databases, rtpengine_db, subscribed_dbs
from kemi.core.spec import PolicySpec, VipSpec
from kemi.core.structure import Problem
from kemi.ops.nodecfg import render_node_cfg
from kemi.ops.stack import StackConfig
from kemi.policyfile import parse_spec

COROSYNC_PROFILES = {
    # Fast detection (LAB-NOTES: token 50 needs retransmits 1; knet pings tuned or links flap).
    "tuned": {
        "token": 50,
        # Corosync adds token_coefficient (650 ms) per node beyond two to the token: with three
        # nodes detection took 520 ms instead of 30 in the drill. The token stays 50 ms.
        "token_coefficient": 0,
        "token_retransmits_before_loss_const": 1,
        "join": 50,
        "consensus": 60,  # Corosync's minimum, 1.2 x token: the new membership ~60 ms sooner
        "knet_ping_interval": 50,
        "knet_ping_timeout": 400,
    },
    # Corosync's defaults (what the reference design measured at ~10-11 s without audio).
    "default": {
        "token": 3000,
        "token_coefficient": None,  # Corosync's 650 ms per node beyond two
        "token_retransmits_before_loss_const": 10,
        "join": 50,
        "consensus": 3600,
        "knet_ping_interval": None,
        "knet_ping_timeout": None,
    },
}


def load_cluster(path: Path) -> ClusterSpec:
    """The cluster file, validated; SpecError lines are `file:line:col: field: reason`."""
    return specfile.load(ClusterSpec, path, check_cluster)


def load_node_config(path: str | Path) -> NodeConfigSpec:
    """A node.yaml (`kemi-ha run --node-config`), validated like every other file."""
    return specfile.load(NodeConfigSpec, path, check_node)


FENCE_AGENT = re.compile(r"fence_[a-z0-9_]+")
FENCE_PARAM = re.compile(r"[a-z][a-z0-9_]*")


def check_fencing(spec: ClusterSpec) -> list[Problem]:
    """Every node names a fence device or none does; agents and params are plain names."""
    problems: list[Problem] = []
    fenced = [n.fence is not None for n in spec.nodes]
    if any(fenced) and not all(fenced):
        for i, node in enumerate(spec.nodes):
            if node.fence is None:
                problems.append(Problem(("nodes", i, "fence"), "some nodes name a fence device: "
                                        "every node needs one (or none)"))  # fmt: skip
    for i, node in enumerate(spec.nodes):
        if node.fence is None:
            continue
        if not FENCE_AGENT.fullmatch(node.fence.agent):
            problems.append(
                Problem(
                    ("nodes", i, "fence", "agent"),
                    f"not a fence agent name (fence_...): {node.fence.agent!r}",
                )
            )
        for key in node.fence.params:
            if not FENCE_PARAM.fullmatch(key) or key == "pcmk_host_list":
                problems.append(
                    Problem(
                        ("nodes", i, "fence", "params", key),
                        "not a parameter name (pcmk_host_list is rendered)",
                    )
                )
    return problems


def check_cluster(spec: ClusterSpec) -> list[Problem]:
    """Rules a cluster file must meet beyond its types; each problem points at its field."""
    problems: list[Problem] = check_fencing(spec)
    if len(spec.nodes) < 2:
        problems.append(Problem(("nodes",), "a cluster needs at least two nodes"))
    if not spec.vips:
        problems.append(Problem(("vips",), "a cluster needs at least one VIP"))
    seen: dict[object, str] = {}
    for i, node in enumerate(spec.nodes):
        if not 1 <= node.id <= 15:
            problems.append(Problem(("nodes", i, "id"), "must be 1..15 (dialog h_id_step is 16)"))
        for key, value in (("name", node.name), ("id", node.id)):
            if (key, value) in seen:
                problems.append(Problem(("nodes", i, key), "node names and ids must be unique"))
            seen[(key, value)] = key
    links = len(spec.nodes[0].links) if spec.nodes else 0
    for i, node in enumerate(spec.nodes):
        if len(node.links) != links:
            problems.append(Problem(("nodes", i, "links"), f"every node names {links} links"))
    fields = [(("nodes", i, "address"), n.address) for i, n in enumerate(spec.nodes)]
    fields += [(("nodes", i, "links", k), a) for i, n in enumerate(spec.nodes)
               for k, a in enumerate(n.links)]  # fmt: skip
    fields += [(("vips", i, "address"), v.address) for i, v in enumerate(spec.vips)]
    fields += [(("redis", "vip"), spec.redis.vip)]
    if spec.quorum_device is not None:
        fields += [(("quorum_device", "address"), spec.quorum_device.address)]
    addresses: set[str] = set()
    for path, address in fields:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            problems.append(Problem(path, f"not an IP address: {address!r}"))
        if address in addresses:
            problems.append(
                Problem(path, f"{address}: node addresses, VIPs and the Redis VIP must differ")
            )
        addresses.add(address)
    ports = [spec.ng_port_of(i) for i in range(1, len(spec.vips) + 1)]
    for i, port in enumerate(ports):
        if port in ports[:i]:
            problems.append(Problem(("vips", i, "ng_port"), f"ng port {port} used by two VIPs"))
    names = {n.name for n in spec.nodes}
    for i, vip in enumerate(spec.vips):
        if vip.prefer not in names:
            problems.append(Problem(("vips", i, "prefer"), f"unknown node {vip.prefer!r}"))
        if not 1024 <= vip.port_min < vip.port_max <= 65535:
            problems.append(Problem(("vips", i, "port_min"), "RTP ports: 1024 <= min < max"))
    return problems


def cluster_policy(spec: ClusterSpec, base: Path) -> tuple[str, PolicySpec]:
    """The base policy with the cluster's VIPs (ng sockets on the VIPs) and DMQ peers."""
    base_spec = specfile.load(PolicySpec, base)
    media = {v.address: v.media for v in base_spec.vips}
    policy = dataclasses.replace(
        base_spec,
        # Each node's Kamailio talks to its own node's instance of the VIP's rtpengine, on
        # loopback: the active one where the VIP is (the only node its SIP reaches), whatever
        # the VIP's moves did to sockets bound to it; ng has no authentication either.
        vips=[
            VipSpec(v.address, [f"udp:127.0.0.1:{spec.ng_port_of(i)}"], media.get(v.address))
            for i, v in enumerate(spec.vips, start=1)
        ],
        dmq_peers=[f"sip:{n.address}:{spec.dmq_port}" for n in spec.nodes],
    )
    text = (
        "# yaml-language-server: $schema=policy.schema.json\n"
        f"# Rendered by kemi-ha render from {base.name} and the cluster description.\n"
        + yaml.safe_dump(without_nulls(dataclasses.asdict(policy)), sort_keys=False)
    )
    return text, parse_spec(text, "policy.yaml (rendered)")


def without_nulls(data: Any) -> Any:
    """asdict() output without the unset optional fields (the rendered file stays readable)."""
    if isinstance(data, dict):
        return {k: without_nulls(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [without_nulls(v) for v in data]
    return data


def corosync_conf(spec: ClusterSpec, profile: str) -> str:
    """Link 0 is each node's `address`, links 1.. its `links`. knet's active mode sends every
    packet on every link up: losing a link loses no packet, so no token is lost while knet takes
    its ping timeout to declare the link down (in passive mode a 50 ms token was lost first and a
    membership change moved VIPs: docs/ha.md, one-link-lost)."""
    p = COROSYNC_PROFILES[profile]
    count = 1 + len(spec.nodes[0].links)
    ifaces = ""
    for link in range(count):
        tuned = (
            f"        knet_ping_interval: {p['knet_ping_interval']}\n"
            f"        knet_ping_timeout: {p['knet_ping_timeout']}\n"
            if p["knet_ping_interval"] is not None
            else ""
        )
        if tuned:
            ifaces += f"    interface {{\n        linknumber: {link}\n{tuned}    }}\n"
    nodes = "".join(
        f"    node {{\n        name: {n.name}\n        nodeid: {n.id}\n"
        + "".join(f"        ring{k}_addr: {a}\n" for k, a in enumerate([n.address, *n.links]))
        + "    }\n"
        for n in spec.nodes
    )
    two_node = "    two_node: 1\n" if len(spec.nodes) == 2 and not spec.quorum_device else ""
    device = ""
    if spec.quorum_device is not None:
        q = spec.quorum_device
        device = (
            "    device {\n        model: net\n        votes: 1\n"
            + (f"        timeout: {q.timeout_ms}\n" if q.timeout_ms else "")
            + "        net {\n"
            f"            host: {q.address}\n            port: {q.port}\n"
            f"            algorithm: {q.algorithm}\n            tls: {'on' if q.tls else 'off'}\n"
            "        }\n    }\n"
        )
    coefficient = p["token_coefficient"]
    token_coefficient = f"    token_coefficient: {coefficient}\n" if coefficient is not None else ""
    link_mode = "    link_mode: active\n" if count > 1 else ""
    return (
        f"# Rendered by kemi-ha render ({profile} profile). Do not edit: edit the cluster file.\n"
        "totem {\n    version: 2\n"
        f"    cluster_name: {spec.cluster_name}\n    transport: knet\n{link_mode}"
        f"    token: {p['token']}\n{token_coefficient}"
        f"    token_retransmits_before_loss_const: {p['token_retransmits_before_loss_const']}\n"
        f"    join: {p['join']}\n    consensus: {p['consensus']}\n"
        "    crypto_cipher: none\n    crypto_hash: none\n"
        f"{ifaces}}}\n\n"
        "logging {\n    to_logfile: yes\n    logfile: /var/log/corosync/corosync.log\n"
        "    to_stderr: yes\n    timestamp: hires\n    debug: off\n}\n\n"
        f"quorum {{\n    provider: corosync_votequorum\n{two_node}{device}}}\n\n"
        f"nodelist {{\n{nodes}}}\n"
    )


def redis_conf(spec: ClusterSpec) -> str:
    return (
        "# Rendered by kemi-ha render. One Redis per node; ocf:heartbeat:redis promotes one and\n"
        "# makes the others replicate it (replicaof); the Redis VIP follows the master.\n"
        "bind 0.0.0.0\n"
        f"port {spec.redis.port}\n"
        'protected-mode no\nsave ""\nappendonly no\n'
        "replica-read-only yes\nreplica-serve-stale-data yes\n"
        "repl-diskless-sync yes\nrepl-diskless-sync-delay 0\nrepl-timeout 5\n"
        "# Hot standby: a DB per (VIP, node) (kemi.core.rtpengine_dbs); every standby rtpengine\n"
        "# learns the active's calls from keyspace notifications, which a replica emits too.\n"
        f"databases {redis_databases(spec)}\n"
        "notify-keyspace-events Kg$\n"
    )


def rtpengine_env(spec: ClusterSpec, vip_no: int, node: NodeSpec) -> str:
    """The options of `node`'s rtpengine for VIP `vip_no` (what the OCF agent passes)."""
    vip = spec.vips[vip_no - 1]
    port, ng = spec.redis.port, spec.ng_port_of(vip_no)
    own = rtpengine_db(vip_no, node.id)
    subscribed = subscribed_dbs(spec, vip_no, node.name)
    if own in subscribed:  # kemi.core.rtpengine_dbs rules it out; a wrong render must not ship
        raise ValueError(f"{node.name}: rtpengine DB {own} subscribed to by its own instance")
    return (
        "# Rendered by kemi-ha render: this node's rtpengine for this VIP (active where the VIP\n"
        "# is, hot standby elsewhere). ocf:kemi-ha:rtpengine builds the same DBs and sockets\n"
        "# from its parameters (dbs, cli), adding its Redis timeouts.\n"
        f"VIP={vip.address}\nNG_PORT={ng}\nPORT_MIN={vip.port_min}\n"
        f"PORT_MAX={vip.port_max}\nCLI=127.0.0.1:{cli_port(vip_no)}\n"
        f"REDIS=127.0.0.1:{port}/{own}\nREDIS_WRITE={spec.redis.vip}:{port}/{own}\n"
        f'SUBSCRIBE_KEYSPACE="{" ".join(map(str, subscribed))}"\n'
        f'OPTIONS="--table=-1 --interface={vip.address} --listen-ng=127.0.0.1:{ng} '
        f"--listen-cli=127.0.0.1:{cli_port(vip_no)} "
        f"--port-min={vip.port_min} --port-max={vip.port_max} "
        f"--redis=127.0.0.1:{port}/{own} --redis-write={spec.redis.vip}:{port}/{own} "
        + "".join(f"--subscribe-keyspace={db} " for db in subscribed)
        + '--delete-delay=0"\n'
    )


def node_config(spec: ClusterSpec, node: NodeSpec) -> NodeConfigSpec:
    """`kemi-ha run --node-config`: Kamailio only (Pacemaker runs Redis and rtpengine)."""
    return NodeConfigSpec(
        node_id=node.id,
        node_address=node.address,
        policy=f"{spec.etc_dir}/policy.yaml",
        run_dir=spec.run_dir,
        log_dir=spec.log_dir,
        sip_port=spec.sip_port,
        dmq_port=spec.dmq_port,
        components=["kamailio"],
        ready_check="rpc",  # the other nodes hold some of the VIPs
        cdr_redis=f"{spec.redis.vip}:{spec.redis.port}/0",  # the master, wherever it is
    )


def node_yaml(config: NodeConfigSpec) -> str:
    return (
        "# Rendered by kemi-ha render: this node's values for `kemi-ha run --node-config`\n"
        "# (fields: kemi.core.node_spec), installed in the cluster's etc_dir.\n"
        + yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
    )


def render(cluster_file: Path, outdir: Path) -> list[Path]:
    """Write every file."""
    spec = load_cluster(cluster_file)
    base = (cluster_file.parent / spec.policy).resolve()
    policy_text, policy_spec = cluster_policy(spec, base)
    policy = compile_policy(policy_spec)
    written: list[Path] = []

    def write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)

    write(outdir / "policy.yaml", policy_text)
    model = cluster_resources(spec)
    write(outdir / "crm.txt", to_crm(model))
    write(outdir / "cib-resources.xml", to_cib_configuration(model))
    write(outdir / "cib.xml", to_cib(model, [(n.id, n.name) for n in spec.nodes]))
    for node in spec.nodes:
        d = outdir / node.name
        for profile in COROSYNC_PROFILES:
            write(d / f"corosync-{profile}.conf", corosync_conf(spec, profile))
        write(d / "corosync.conf", corosync_conf(spec, spec.corosync_profile))
        write(d / "sysctl-kemi-ha.conf", "net.ipv4.ip_nonlocal_bind = 1\n")
        write(d / "redis.conf", redis_conf(spec))
        config = node_config(spec, node)
        write(d / "node.yaml", node_yaml(config))
        # What `kemi-ha run --node-config` writes at start, shown here for review: same code.
        values = StackConfig.from_node(config, Path(spec.kemi_ha_root)).node_values(policy)
        write(d / "kemi-ha-node.cfg", render_node_cfg(policy, values))
        for i, vip in enumerate(spec.vips, start=1):
            write(d / f"rtpengine-{vip.address}.env", rtpengine_env(spec, i, node))
    return written
