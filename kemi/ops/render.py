"""`kemi-ha render CLUSTER.yaml OUTDIR`: every deploy file of every node, from one description.

OUTDIR/
  policy.yaml                 the base policy with this cluster's VIPs and DMQ peers
  crm.txt                     Pacemaker configuration in crm shell syntax (for humans, crmsh)
  cib-resources.xml           the same as CIB XML: <configuration> for cibadmin --replace
  cib.xml                     a whole initial CIB with the nodes (seeds a fresh cluster; crm_verify)
  <node>/corosync.conf        the chosen profile; corosync-tuned.conf and corosync-default.conf
  <node>/sysctl-kemi-ha.conf  ip_nonlocal_bind (listen on VIPs held by the other node)
  <node>/redis.conf           one Redis per node; the ocf:heartbeat:redis agent sets replicaof;
                              keyspace events on (hot standby), a DB per (VIP, node); binds
                              loopback, the node's address and the Redis VIP only; protected
                              mode; requirepass/masterauth from redis.password_file (mode 640:
                              it holds the password, install it root:redis)
  <node>/redis.pass           the Redis password (mode 600) for rtpengine's agent and kemi-ha
  <node>/kemi-ha-node.cfg     Kamailio's node include (kamailio.cfg itself is never edited)
  <node>/dispatcher.list      the gateways (dispatcher sets) `kemi-ha run` writes at start
  <node>/rtpengine-<vip>.env  this node's rtpengine options per VIP (own DB, subscribed DBs), with
                              no password: the Redis URLs with it are in rtpengine-<vip>.conf
  <node>/rtpengine-<vip>.conf rtpengine's config file: the Redis URLs, PW@HOST:PORT/DB (mode 600)

Files holding the password are written mode 600 (640 for redis.conf): the output directory is as
secret as the password file itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import re
from pathlib import Path
from typing import Any

import yaml

from kemi import specfile
from kemi.core.cluster_resources import cluster_resources
from kemi.core.cluster_spec import REDIS_PASSWORD_NAME, ClusterSpec, NodeSpec
from kemi.core.compile import compile_policy
from kemi.core.node_spec import ClaimedVipSpec, FastTakeoverSpec, NodeConfigSpec, check_node
from kemi.core.pacemaker import to_cib, to_cib_configuration, to_crm
from kemi.core.rtpengine_dbs import cli_port, redis_databases, rtpengine_db, subscribed_dbs
from kemi.core.spec import PolicySpec, VipSpec
from kemi.core.structure import Problem
from kemi.ops.nodecfg import DISPATCHER_LIST_NAME, render_dispatcher_list, render_node_cfg
from kemi.ops.stack import StackConfig
from kemi.policyfile import parse_spec

COROSYNC_PROFILES = {
    # Fast detection (LAB-NOTES: a small token needs retransmits 1; knet pings tuned or links
    # flap). The smallest timers Corosync 3.1 starts with (its runtime checks, which `corosync
    # -t` skips; MIN_COROSYNC_TIMEOUT_MS): token_retransmit = token / (retransmits + 0.2) >= 30,
    # so token >= 36; consensus >= 1.2 x token and >= join; join >= 30. Measured (docs/ha.md):
    # token 50 / consensus 60 formed the new membership ~95 ms after a power-off, 36 / 44 ~68.
    "tuned": {
        "token": 36,
        # Corosync adds token_coefficient (650 ms) per node beyond two to the token: with three
        # nodes detection took 520 ms instead of 30 in the drill. The token stays as set.
        "token_coefficient": 0,
        "token_retransmits_before_loss_const": 1,
        "join": 40,
        "consensus": 44,
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


MIN_COROSYNC_TIMEOUT_MS = 30  # Corosync's MINIMUM_TIMEOUT (3 ticks at HZ 100), totemconfig.c


def corosync_timer_problems(profile: str) -> list[str]:
    """Why Corosync would refuse the profile's timers at start ("parse error in config"):
    rules it checks only at run time, so `corosync -t` passes a config that cannot start."""
    p = COROSYNC_PROFILES[profile]
    token, join, consensus = p["token"], p["join"], p["consensus"]
    retransmit = token / (p["token_retransmits_before_loss_const"] + 0.2)
    problems = []
    if retransmit < MIN_COROSYNC_TIMEOUT_MS:
        problems.append(f"token retransmit {retransmit:.1f} ms < {MIN_COROSYNC_TIMEOUT_MS} ms")
    if join < MIN_COROSYNC_TIMEOUT_MS:
        problems.append(f"join {join} ms < {MIN_COROSYNC_TIMEOUT_MS} ms")
    if consensus < 1.2 * token:
        problems.append(f"consensus {consensus} ms < 1.2 x token {token} ms")
    if consensus < join:
        problems.append(f"consensus {consensus} ms < join {join} ms")
    return problems


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


PASSWORD = re.compile(r"[A-Za-z0-9._~-]{16,256}")  # nothing rtpengine's PW@HOST URL splits on


def read_password(spec: ClusterSpec, base: Path) -> tuple[str, list[Problem]]:
    """redis.password_file's password (relative to the cluster file's directory `base`)."""
    path = Path(spec.redis.password_file)
    path = path if path.is_absolute() else base / path
    where = ("redis", "password_file")
    try:
        mode = path.stat().st_mode
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        return "", [Problem(where, f"cannot read {path}: {getattr(exc, 'strerror', exc)}")]
    problems: list[Problem] = []
    if mode & 0o077:
        problems.append(Problem(where, f"{path} is readable by others (mode {mode & 0o777:o}): "
                                "chmod 600 it"))  # fmt: skip
    password = lines[0].strip() if len(lines) == 1 else ""
    if not PASSWORD.fullmatch(password):
        problems.append(Problem(where, f"{path} must hold one line of 16 to 256 characters "
                                "A-Z a-z 0-9 . _ ~ - (e.g. `openssl rand -hex 32`)"))  # fmt: skip
    return password, problems


def check_private(spec: ClusterSpec) -> list[Problem]:
    """What must never face the internet: DMQ listens on the node address, Redis on it and on
    the Redis VIP (rtpengine's ng sockets are rendered on loopback). Public addresses refused."""
    fields = [(("nodes", i, "address"), n.address) for i, n in enumerate(spec.nodes)]
    fields += [(("redis", "vip"), spec.redis.vip)]
    problems: list[Problem] = []
    for path, address in fields:
        with contextlib.suppress(ValueError):  # not an address: reported by check_cluster
            ip = ipaddress.ip_address(address)
            if not ip.is_private or ip.is_unspecified:
                problems.append(Problem(path, f"{address} is a public address: DMQ and Redis "
                                        "listen here, keep them on a private network"))  # fmt: skip
    return problems


def check_cluster(spec: ClusterSpec) -> list[Problem]:
    """Rules a cluster file must meet beyond its types; each problem points at its field."""
    problems: list[Problem] = check_fencing(spec) + check_private(spec)
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
    for name in ("certificate", "private_key"):
        if not getattr(spec.tls, name).startswith("/"):
            problems.append(Problem(("tls", name), "must be an absolute path (on the nodes)"))
    if spec.tls_port == spec.sip_port:
        problems.append(Problem(("tls_port",), "must differ from sip_port (TCP listens there)"))
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


def redis_conf(spec: ClusterSpec, node: NodeSpec, password: str) -> str:
    return (
        "# Rendered by kemi-ha render. One Redis per node; ocf:heartbeat:redis promotes one and\n"
        "# makes the others replicate it (replicaof); the Redis VIP follows the master.\n"
        "# Listens on loopback, this node's address and the Redis VIP (ip_nonlocal_bind: it may\n"
        "# be on another node) only. Every client authenticates: requirepass is also what\n"
        "# ocf:heartbeat:redis reads here for its own redis-cli, masterauth what a replica sends.\n"
        f"bind 127.0.0.1 {node.address} {spec.redis.vip}\n"
        f"port {spec.redis.port}\n"
        "protected-mode yes\n"
        f"requirepass {password}\nmasterauth {password}\n"
        'save ""\nappendonly no\n'
        "replica-read-only yes\nreplica-serve-stale-data yes\n"
        "repl-diskless-sync yes\nrepl-diskless-sync-delay 0\nrepl-timeout 5\n"
        "# Hot standby: a DB per (VIP, node) (kemi.core.rtpengine_dbs); every standby rtpengine\n"
        "# learns the active's calls from keyspace notifications, which a replica emits too.\n"
        f"databases {redis_databases(spec)}\n"
        "notify-keyspace-events Kg$\n"
    )


def rtpengine_urls(spec: ClusterSpec, vip_no: int, node: NodeSpec) -> tuple[str, str]:
    """`--redis` and `--redis-write` of `node`'s rtpengine for VIP `vip_no`, without password."""
    own, port = rtpengine_db(vip_no, node.id), spec.redis.port
    return f"127.0.0.1:{port}/{own}", f"{spec.redis.vip}:{port}/{own}"


def rtpengine_conf(spec: ClusterSpec, vip_no: int, node: NodeSpec, password: str) -> str:
    """rtpengine's config file with the Redis URLs (PW@HOST:PORT/DB): out of its argv, which
    every local user can read. ocf:kemi-ha:rtpengine writes the same from redis_password_file."""
    read, write = rtpengine_urls(spec, vip_no, node)
    return (
        "# Rendered by kemi-ha render (mode 600: it holds the Redis password).\n"
        "# rtpengine --config-file=THIS; the other options are in rtpengine-<vip>.env.\n"
        f"[rtpengine]\nredis = {password}@{read}\nredis-write = {password}@{write}\n"
    )


def rtpengine_env(spec: ClusterSpec, vip_no: int, node: NodeSpec) -> str:
    """The options of `node`'s rtpengine for VIP `vip_no` (what the OCF agent passes)."""
    vip = spec.vips[vip_no - 1]
    ng = spec.ng_port_of(vip_no)
    own = rtpengine_db(vip_no, node.id)
    read, write = rtpengine_urls(spec, vip_no, node)
    subscribed = subscribed_dbs(spec, vip_no, node.name)
    if own in subscribed:  # kemi.core.rtpengine_dbs rules it out; a wrong render must not ship
        raise ValueError(f"{node.name}: rtpengine DB {own} subscribed to by its own instance")
    return (
        "# Rendered by kemi-ha render: this node's rtpengine for this VIP (active where the VIP\n"
        "# is, hot standby elsewhere). ocf:kemi-ha:rtpengine builds the same DBs and sockets\n"
        "# from its parameters (dbs, cli), adding its Redis timeouts.\n"
        f"VIP={vip.address}\nNG_PORT={ng}\nPORT_MIN={vip.port_min}\n"
        f"PORT_MAX={vip.port_max}\nCLI=127.0.0.1:{cli_port(vip_no)}\n"
        f"REDIS={read}\nREDIS_WRITE={write}\n"
        f"REDIS_PASSWORD_FILE={spec.redis_password_path}\n"
        f"CONFIG_FILE={spec.etc_dir}/rtpengine-{vip.address}.conf\n"
        f'SUBSCRIBE_KEYSPACE="{" ".join(map(str, subscribed))}"\n'
        "# --redis/--redis-write (with the password) come from CONFIG_FILE.\n"
        f'OPTIONS="--table=-1 --interface={vip.address} --listen-ng=127.0.0.1:{ng} '
        f"--listen-cli=127.0.0.1:{cli_port(vip_no)} "
        f"--port-min={vip.port_min} --port-max={vip.port_max} "
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
        tls_port=spec.tls_port,
        tls_certificate=spec.tls.certificate,
        tls_private_key=spec.tls.private_key,
        dmq_port=spec.dmq_port,
        components=["kamailio"],
        ready_check="rpc",  # the other nodes hold some of the VIPs
        cdr_redis=f"{spec.redis.vip}:{spec.redis.port}/0",  # the master, wherever it is
        cdr_redis_password_file=spec.redis_password_path,
        fast_takeover=FastTakeoverSpec(
            node_name=node.name,
            vips=[
                ClaimedVipSpec(f"vip{i}", v.address, spec.netmask, node.interface)
                for i, v in enumerate(spec.vips, start=1)
            ],
        )
        if spec.fast_takeover_applies
        else None,
    )


def node_yaml(config: NodeConfigSpec) -> str:
    return (
        "# Rendered by kemi-ha render: this node's values for `kemi-ha run --node-config`\n"
        "# (fields: kemi.core.node_spec), installed in the cluster's etc_dir.\n"
        + yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
    )


def load_for_render(cluster_file: Path) -> tuple[ClusterSpec, str]:
    """The cluster file and its Redis password; every problem as `file:line:col: field: ...`."""
    found: list[str] = []

    def check(spec: ClusterSpec) -> list[Problem]:
        password, problems = read_password(spec, cluster_file.parent)
        found.append(password)
        return check_cluster(spec) + problems

    spec = specfile.load(ClusterSpec, cluster_file, check)
    return spec, found[0]


def render(cluster_file: Path, outdir: Path) -> list[Path]:
    """Write every file."""
    spec, password = load_for_render(cluster_file)
    base = (cluster_file.parent / spec.policy).resolve()
    policy_text, policy_spec = cluster_policy(spec, base)
    policy = compile_policy(policy_spec)
    written: list[Path] = []

    def write(path: Path, text: str, mode: int = 0o644) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # never wider, not once
        with os.fdopen(fd, "w") as out:
            out.write(text)
        path.chmod(mode)  # whatever the umask
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
        write(d / "redis.conf", redis_conf(spec, node, password), 0o640)
        write(d / REDIS_PASSWORD_NAME, password + "\n", 0o600)
        config = node_config(spec, node)
        write(d / "node.yaml", node_yaml(config))
        # What `kemi-ha run --node-config` writes at start, shown here for review: same code.
        values = StackConfig.from_node(config, Path(spec.kemi_ha_root)).node_values(policy)
        write(d / "kemi-ha-node.cfg", render_node_cfg(policy, values))
        write(d / DISPATCHER_LIST_NAME, render_dispatcher_list(policy))
        for i, vip in enumerate(spec.vips, start=1):
            write(d / f"rtpengine-{vip.address}.env", rtpengine_env(spec, i, node))
            write(d / f"rtpengine-{vip.address}.conf", rtpengine_conf(spec, i, node, password),
                  0o600)  # fmt: skip
    return written
