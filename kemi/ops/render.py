"""`kemi-ha render CLUSTER.yaml OUTDIR`: every deploy file of every node, from one description.

OUTDIR/
  policy.yaml                 the base policy with this cluster's VIPs and DMQ peers
  crm.txt                     Pacemaker configuration in crm shell syntax (for humans, crmsh)
  cib-resources.xml           the same as CIB XML (cibadmin, crm_verify, the drill)
  <node>/corosync.conf        the chosen profile; corosync-tuned.conf and corosync-default.conf
  <node>/sysctl-kemi-ha.conf  ip_nonlocal_bind (listen on VIPs held by the other node)
  <node>/redis.conf           one Redis per node; the ocf:heartbeat:redis agent sets replicaof
  <node>/kemi-ha-node.cfg     Kamailio's node include (kamailio.cfg itself is never edited)
  <node>/rtpengine-<vip>.env  the rtpengine options per VIP (OCF agent or rtpengine@.service)
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import yaml

from kemi import specfile
from kemi.core.cluster_spec import ClusterSpec, ClusterVipSpec, NodeSpec
from kemi.core.compile import compile_policy
from kemi.core.node_spec import NodeConfigSpec, check_node
from kemi.core.spec import PolicySpec, VipSpec
from kemi.core.structure import Problem
from kemi.ops.nodecfg import render_node_cfg
from kemi.ops.stack import StackConfig
from kemi.policyfile import parse_spec

COROSYNC_PROFILES = {
    # Fast detection (LAB-NOTES: token 50 needs retransmits 1; knet pings tuned or links flap).
    "tuned": {
        "token": 50,
        "token_retransmits_before_loss_const": 1,
        "join": 50,
        "consensus": 120,
        "knet_ping_interval": 50,
        "knet_ping_timeout": 400,
    },
    # Corosync's defaults (what the reference design measured at ~10-11 s without audio).
    "default": {
        "token": 3000,
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


def check_cluster(spec: ClusterSpec) -> list[Problem]:
    """Rules a cluster file must meet beyond its types; each problem points at its field."""
    problems: list[Problem] = []
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
    fields = [(("nodes", i, "address"), n.address) for i, n in enumerate(spec.nodes)]
    fields += [(("vips", i, "address"), v.address) for i, v in enumerate(spec.vips)]
    fields += [(("redis", "vip"), spec.redis.vip)]
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
        vips=[
            VipSpec(v.address, [f"udp:{v.address}:{v.ng_port}"], media.get(v.address))
            for v in spec.vips
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
    p = COROSYNC_PROFILES[profile]
    iface = ""
    if p["knet_ping_interval"] is not None:
        iface = (
            "    interface {\n        linknumber: 0\n"
            f"        knet_ping_interval: {p['knet_ping_interval']}\n"
            f"        knet_ping_timeout: {p['knet_ping_timeout']}\n    }}\n"
        )
    nodes = "".join(
        f"    node {{\n        name: {n.name}\n        nodeid: {n.id}\n"
        f"        ring0_addr: {n.address}\n    }}\n"
        for n in spec.nodes
    )
    two_node = "    two_node: 1\n" if len(spec.nodes) == 2 else ""
    return (
        f"# Rendered by kemi-ha render ({profile} profile). Do not edit: edit the cluster file.\n"
        "totem {\n    version: 2\n"
        f"    cluster_name: {spec.cluster_name}\n    transport: knet\n"
        f"    token: {p['token']}\n"
        f"    token_retransmits_before_loss_const: {p['token_retransmits_before_loss_const']}\n"
        f"    join: {p['join']}\n    consensus: {p['consensus']}\n"
        "    crypto_cipher: none\n    crypto_hash: none\n"
        f"{iface}}}\n\n"
        "logging {\n    to_logfile: yes\n    logfile: /var/log/corosync/corosync.log\n"
        "    to_stderr: yes\n    timestamp: hires\n    debug: off\n}\n\n"
        f"quorum {{\n    provider: corosync_votequorum\n{two_node}}}\n\n"
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
    )


def rtpengine_env(spec: ClusterSpec, vip: ClusterVipSpec, set_id: int) -> str:
    return (
        "# Rendered by kemi-ha render: options of the rtpengine serving this VIP.\n"
        f"VIP={vip.address}\nNG_PORT={vip.ng_port}\nPORT_MIN={vip.port_min}\n"
        f"PORT_MAX={vip.port_max}\nREDIS=127.0.0.1:{spec.redis.port}/{set_id}\n"
        f"REDIS_WRITE={spec.redis.vip}:{spec.redis.port}/{set_id}\n"
        f'OPTIONS="--table=-1 --interface={vip.address} --listen-ng={vip.address}:{vip.ng_port} '
        f"--port-min={vip.port_min} --port-max={vip.port_max} "
        f'--redis={spec.redis.vip}:{spec.redis.port}/{set_id} --delete-delay=0"\n'
    )


def crm_config(spec: ClusterSpec, ocf_root: str = "kemi-ha") -> str:
    first = spec.nodes[0].interface
    lines = [
        "# Rendered by kemi-ha render. Load with: crm configure load update crm.txt",
        "property cib-bootstrap-options: stonith-enabled=false no-quorum-policy=ignore "
        "dc-deadtime=2s cluster-recheck-interval=30s",
        "rsc_defaults rsc-options: resource-stickiness=100 migration-threshold=2",
        f"primitive redis ocf:heartbeat:redis params bin=/usr/bin/redis-server "
        f"client_bin=/usr/bin/redis-cli config=/etc/kemi-ha/redis.conf port={spec.redis.port} "
        "op monitor interval=1s role=Promoted timeout=5s "
        "op monitor interval=2s role=Unpromoted timeout=5s "
        "op start timeout=20s op stop timeout=20s op promote timeout=10s op demote timeout=10s",
        "clone redis-clone redis meta promotable=true notify=true promoted-max=1 "
        "promoted-node-max=1 clone-max=2 clone-node-max=1",
        f"primitive redis-vip ocf:heartbeat:IPaddr2 params ip={spec.redis.vip} "
        f"cidr_netmask={spec.netmask} nic={first} "
        "op monitor interval=20s timeout=10s on-fail=restart",
        "colocation redis-vip-with-master inf: redis-vip redis-clone:Promoted",
        "order redis-vip-after-promote Mandatory: redis-clone:promote redis-vip:start",
        f"location redis-promoted-prefers redis-clone rule role=Promoted 50: "
        f"#uname eq {spec.vips[0].prefer}",
    ]
    for i, vip in enumerate(spec.vips, start=1):
        node = next(n for n in spec.nodes if n.name == vip.prefer)
        lines += [
            f"primitive vip{i} ocf:heartbeat:IPaddr2 params ip={vip.address} "
            f"cidr_netmask={spec.netmask} nic={node.interface} "
            "op monitor interval=20s timeout=10s on-fail=restart",
            f"primitive rtpengine{i} ocf:{ocf_root}:rtpengine params vip={vip.address} "
            f"ng_port={vip.ng_port} port_min={vip.port_min} port_max={vip.port_max} "
            f"redis=127.0.0.1:{spec.redis.port}/{i} "
            f"redis_write={spec.redis.vip}:{spec.redis.port}/{i} "
            "op monitor interval=2s timeout=5s op start timeout=30s op stop timeout=10s",
            # No order after the VIP: with ip_nonlocal_bind rtpengine binds the VIP before it is
            # up, so both start at once on a takeover (start returns once the VIP answers).
            f"colocation rtpengine{i}-with-vip{i} inf: rtpengine{i} vip{i}",
            f"location vip{i}-prefers-{node.name} vip{i} 50: {node.name}",
        ]
    lines += [
        "primitive kamailio ocf:heartbeat:anything params "
        f"binfile={spec.kemi_ha_root}/.venv/bin/kemi-ha "
        f'cmdline_options="run --node-config /etc/kemi-ha/node.yaml" '
        "op monitor interval=5s timeout=10s",
        "clone kamailio-clone kamailio meta clone-max=2 clone-node-max=1 interleave=true",
    ]
    return "\n".join(lines) + "\n"


def nvpairs(prefix: str, params: dict[str, str]) -> str:
    return "".join(
        f'<nvpair id="{prefix}-{k}" name="{k}" value={quoteattr(v)}/>' for k, v in params.items()
    )


def op(
    rid: str,
    name: str,
    interval: str,
    timeout: str,
    role: str | None = None,
    on_fail: str | None = None,
) -> str:
    extra = (f' role="{role}"' if role else "") + (f' on-fail="{on_fail}"' if on_fail else "")
    oid = f"{rid}-{name}-{interval}" + (f"-{role}" if role else "")
    return f'<op id="{oid}" name="{name}" interval="{interval}" timeout="{timeout}"{extra}/>'


def primitive(
    rid: str, cls: str, provider: str | None, typ: str, params: dict[str, str], ops: list[str]
) -> str:
    prov = f' provider="{provider}"' if provider else ""
    return (
        f'<primitive id="{rid}" class="{cls}"{prov} type="{typ}">'
        f'<instance_attributes id="{rid}-params">{nvpairs(rid, params)}</instance_attributes>'
        f"<operations>{''.join(ops)}</operations></primitive>"
    )


def cib_resources(
    spec: ClusterSpec,
    ocf_provider: str,
    redis_conf_path: str,
    redis_dir: str,
    kamailio: bool = True,
) -> str:
    """The <configuration> for cibadmin: what crm.txt says, in CIB XML."""
    nic = spec.nodes[0].interface
    res = [
        '<clone id="redis-clone"><meta_attributes id="redis-clone-meta">'
        + nvpairs(
            "redis-clone",
            {
                "promotable": "true",
                "notify": "true",
                "promoted-max": "1",
                "promoted-node-max": "1",
                "clone-max": str(len(spec.nodes)),
                "clone-node-max": "1",
            },
        )
        + "</meta_attributes>"
        + primitive(
            "redis",
            "ocf",
            "heartbeat",
            "redis",
            {
                "bin": "/usr/bin/redis-server",
                "client_bin": "/usr/bin/redis-cli",
                "config": redis_conf_path,
                "port": str(spec.redis.port),
                "rundir": redis_dir,
                "wait_last_known_master": "false",
            },
            [
                op("redis", "monitor", "1s", "5s", "Promoted"),
                op("redis", "monitor", "2s", "5s", "Unpromoted"),
                op("redis", "start", "0", "20s"),
                op("redis", "stop", "0", "20s"),
                op("redis", "promote", "0", "10s"),
                op("redis", "demote", "0", "10s"),
                op("redis", "notify", "0", "10s"),
            ],
        )
        + "</clone>",
        primitive(
            "redis-vip",
            "ocf",
            "heartbeat",
            "IPaddr2",
            {"ip": spec.redis.vip, "cidr_netmask": str(spec.netmask), "nic": nic},
            [op("redis-vip", "monitor", "20s", "10s", on_fail="restart")],
        ),
    ]
    first_pref = spec.vips[0].prefer
    cons = [
        # The Redis master starts where VIP1 does: losing that node exercises the promotion.
        f'<rsc_location id="redis-promoted-prefers" rsc="redis-clone"><rule '
        f'id="redis-promoted-prefers-rule" role="Promoted" score="50"><expression '
        f'id="redis-promoted-prefers-expr" attribute="#uname" operation="eq" '
        f'value="{first_pref}"/></rule></rsc_location>',
        '<rsc_colocation id="redis-vip-with-master" rsc="redis-vip" with-rsc="redis-clone" '
        'with-rsc-role="Promoted" score="INFINITY"/>',
        '<rsc_order id="redis-vip-after-promote" first="redis-clone" first-action="promote" '
        'then="redis-vip" then-action="start" kind="Mandatory"/>',
    ]
    for i, vip in enumerate(spec.vips, start=1):
        res.append(
            primitive(
                f"vip{i}",
                "ocf",
                "heartbeat",
                "IPaddr2",
                {"ip": vip.address, "cidr_netmask": str(spec.netmask), "nic": nic},
                [op(f"vip{i}", "monitor", "20s", "10s", on_fail="restart")],
            )
        )
        res.append(
            primitive(
                f"rtpengine{i}",
                "ocf",
                ocf_provider,
                "rtpengine",
                {
                    "vip": vip.address,
                    "ng_port": str(vip.ng_port),
                    "port_min": str(vip.port_min),
                    "port_max": str(vip.port_max),
                    "redis": f"127.0.0.1:{spec.redis.port}/{i}",
                    "redis_write": f"{spec.redis.vip}:{spec.redis.port}/{i}",
                },
                [
                    op(f"rtpengine{i}", "monitor", "2s", "5s"),
                    op(f"rtpengine{i}", "start", "0", "30s"),
                    op(f"rtpengine{i}", "stop", "0", "10s"),
                ],
            )
        )
        cons += [
            f'<rsc_colocation id="rtpengine{i}-with-vip{i}" rsc="rtpengine{i}" '
            f'with-rsc="vip{i}" score="INFINITY"/>',
            f'<rsc_location id="vip{i}-prefers" rsc="vip{i}" node="{vip.prefer}" score="50"/>',
        ]
    props = {
        "stonith-enabled": "false",
        "no-quorum-policy": "ignore",
        "dc-deadtime": "2s",
        "cluster-recheck-interval": "30s",
    }
    defaults = {"resource-stickiness": "100", "migration-threshold": "2"}
    return (
        '<configuration><crm_config><cluster_property_set id="cib-bootstrap-options">'
        + nvpairs("cib-bootstrap-options", props)
        + "</cluster_property_set></crm_config>"
        + '<rsc_defaults><meta_attributes id="rsc-options">'
        + nvpairs("rsc-options", defaults)
        + "</meta_attributes></rsc_defaults>"
        + "<resources>"
        + (kamailio_clone(spec) if kamailio else "")
        + "".join(res)
        + "</resources>"
        "<constraints>" + "".join(cons) + "</constraints></configuration>"
    )


def node_config(spec: ClusterSpec, node: NodeSpec) -> NodeConfigSpec:
    """`kemi-ha run --node-config`: Kamailio only (Pacemaker runs Redis and rtpengine)."""
    return NodeConfigSpec(
        node_id=node.id,
        node_address=node.address,
        policy="/etc/kemi-ha/policy.yaml",
        run_dir=spec.run_dir,
        sip_port=spec.sip_port,
        dmq_port=spec.dmq_port,
        components=["kamailio"],
        ready_check="rpc",  # the other nodes hold some of the VIPs
    )


def node_yaml(config: NodeConfigSpec) -> str:
    return (
        "# Rendered by kemi-ha render: this node's values for `kemi-ha run --node-config`\n"
        "# (fields: kemi.core.node_spec). Install as /etc/kemi-ha/node.yaml.\n"
        + yaml.safe_dump(dataclasses.asdict(config), sort_keys=False)
    )


def kamailio_clone(spec: ClusterSpec) -> str:
    """Kamailio on every node (active-active): `kemi-ha run` with the node's rendered node.yaml.

    Through kemi-ha (Stack), never kamailio directly: Stack pins Kamailio's embedded Python to
    Debian's whatever PATH the agent runs with (kemi/ops/embedded_python.py).
    """
    agent = primitive(
        "kamailio", "ocf", "heartbeat", "anything",
        {"binfile": f"{spec.kemi_ha_root}/.venv/bin/kemi-ha",
         "cmdline_options": "run --node-config /etc/kemi-ha/node.yaml",
         "logfile": f"{spec.run_dir}/kemi-ha-run.log"},
        [op("kamailio", "monitor", "5s", "10s")],
    )  # fmt: skip
    meta = nvpairs("kamailio-clone", {"clone-max": str(len(spec.nodes)), "clone-node-max": "1",
                                       "interleave": "true"})  # fmt: skip
    return (
        f'<clone id="kamailio-clone"><meta_attributes id="kamailio-clone-meta">{meta}'
        f"</meta_attributes>{agent}</clone>"
    )


def render(cluster_file: Path, outdir: Path, kamailio_in_cib: bool = True) -> list[Path]:
    """Write every file; `kamailio_in_cib=False` leaves Kamailio to the caller (the drill)."""
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
    write(outdir / "crm.txt", crm_config(spec))
    write(
        outdir / "cib-resources.xml",
        cib_resources(
            spec,
            "kemi-ha",
            "/etc/kemi-ha/redis.conf",
            "/run/kemi-ha/redis",
            kamailio=kamailio_in_cib,
        ),
    )
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
            write(d / f"rtpengine-{vip.address}.env", rtpengine_env(spec, vip, i))
    return written
