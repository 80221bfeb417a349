"""Renders kemi-ha-node.cfg: every node-specific value kamailio.cfg uses, in one file.

kamailio.cfg imports it from Kamailio's working directory (the run directory), so the same
kamailio.cfg serves every node and nobody edits it per node. Its values come from one place,
kemi.ops.stack.StackConfig.node_values(): `kemi-ha run` and `kemi-ha render` both call it, and
every path in it is a path of the node (kemi_root: where kemi-ha is installed there).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from kemi.core.cdr import ONCE_PREFIX, ONCE_TTL_S, STREAM, WRITE_ENDED_LUA
from kemi.core.dispatch import dispatcher_list
from kemi.core.policy import Policy

NODE_CFG_NAME = "kemi-ha-node.cfg"
DISPATCHER_LIST_NAME = "dispatcher.list"  # in the run dir; rewritten by a policy reload


@dataclass(frozen=True, slots=True)
class NodeValues:
    node_id: int
    sip_port: int
    run_dir: Path
    kemi_root: Path  # kamailio.cfg, kemi/entry.py and dmq/dmq.cfg are under it, on the node
    http_address: str = "127.0.0.1"
    http_port: int = 8090
    node_address: str = "127.0.0.1"
    dmq_port: int = 5090
    dmq_peers: tuple[str, ...] = ()  # SIP URIs of the other nodes' DMQ listeners
    nodes_max: int = 16  # h_id_step: room for this many nodes
    dialog_timeout_s: int = 43200
    rtpengine_disable_tout_s: int = 2
    tls_port: int = 5061
    tls_certificate: Path = Path("/etc/kemi-ha/tls/kemi-ha.crt")  # PEM, as the node sees it
    tls_private_key: Path = Path("/etc/kemi-ha/tls/kemi-ha.key")

    @property
    def dmq_enabled(self) -> bool:
        """DMQ runs when the policy names a peer other than this node."""
        return bool(dmq_notification_lines(self))


def rtpengine_sock_lines(policy: Policy) -> list[str]:
    """One rtpengine_sock modparam per VIP: set id = its position in the policy."""
    return [
        f'modparam("rtpengine", "rtpengine_sock", "{vip.set_id} == {" ".join(vip.rtpengine)}")'
        for vip in policy.vips
    ]


def dmq_notification_lines(node: NodeValues) -> list[str]:
    """The peers DMQ learns the cluster from (none for a node alone)."""
    peers = [p for p in node.dmq_peers if p != f"sip:{node.node_address}:{node.dmq_port}"]
    return [f'modparam("dmq", "notification_address", "{uri}")' for uri in peers]


def dmq_lines(node: NodeValues) -> list[str]:
    if not node.dmq_enabled:
        return ["# DMQ: no peers in the policy, this node runs alone (no replication).", ""]
    return [
        "# DMQ: this node's listener, its peers, unique dialog ids (dmq/dmq.cfg uses these).",
        f"listen=udp:{node.node_address}:{node.dmq_port}",
        f'#!define DMQ_SERVER_ADDRESS "sip:{node.node_address}:{node.dmq_port}"',
        f"#!define DLG_H_ID_START {node.node_id}",
        f"#!define DLG_H_ID_STEP {node.nodes_max}",
        f'import_file "{node.kemi_root / "dmq" / "dmq.cfg"}"',
        *dmq_notification_lines(node),
        "",
    ]


def listen_lines(policy: Policy, node: NodeValues) -> list[str]:
    """UDP, TCP and TLS on every VIP: a client may use any of them, and a call may change
    transport between its legs (rr's double Record-Route, kamailio.cfg)."""
    return [
        line
        for vip in policy.vips
        for line in (
            f"listen=udp:{vip.address}:{node.sip_port}",
            f"listen=tcp:{vip.address}:{node.sip_port}",
            f"listen=tls:{vip.address}:{node.tls_port}",
        )
    ]


def dispatcher_lines(policy: Policy, node: NodeValues) -> list[str]:
    """The gateway list file and the policy's probing as dispatcher modparams."""
    p = policy.probing
    lines = [
        "# Gateways (dispatcher): the list is rendered from the policy's gateway_sets into the",
        "# run dir (a policy reload rewrites it); every node probes them on its own.",
        f'#!define DISPATCHER_LIST "{node.run_dir / DISPATCHER_LIST_NAME}"',
        f'modparam("dispatcher", "ds_ping_interval", {p.interval})',
        f'modparam("dispatcher", "ds_probing_threshold", {p.threshold})',
        f'modparam("dispatcher", "ds_inactive_threshold", {p.recover})',
        f'modparam("dispatcher", "ds_ping_from", "{p.from_uri}")',
    ]
    if p.reply_codes:
        lines.append(f'modparam("dispatcher", "ds_ping_reply_codes", "{p.reply_codes}")')
    if node.dmq_enabled:
        # Probes from the node's own address: from a VIP (Kamailio's first socket) their
        # replies would go to whichever node holds that VIP (measured: the gateway stayed down
        # on the node without VIP1). Calls are still relayed from their VIP.
        own = f"udp:{node.node_address}:{node.dmq_port}"  # the DMQ listener
        lines.append(f'modparam("dispatcher", "ds_default_socket", "{own}")')
    return [*lines, ""]


def cdr_ended_head(node: NodeValues) -> str:
    """The constant start of kamailio.cfg's call record command (event_route[dialog:end]):
    WRITE_ENDED_LUA by its SHA1, the %s of the once key, the stream, this node, the marker's
    TTL, the %s of the facts and of the Call-ID (kemi.core.cdr.write_ended_command's order)."""
    sha = hashlib.sha1(WRITE_ENDED_LUA.encode()).hexdigest()
    return f"EVALSHA {sha} 2 %s {STREAM} {node.node_address} {ONCE_TTL_S} %s %s"


def render_dispatcher_list(policy: Policy) -> str:
    """What the node's dispatcher.list holds at start (kemi-ha run and kemi-ha render)."""
    return dispatcher_list(policy.dispatcher_sets)


def render_node_cfg(policy: Policy, node: NodeValues) -> str:
    run = node.run_dir
    lines = [
        "# Generated by kemi-ha: do not edit (re-rendered at every start).",
        f"#!define NODE_ID {node.node_id}",
        f"#!define DLG_DEFAULT_TIMEOUT {node.dialog_timeout_s}",
        f"#!define RTPENGINE_DISABLE_TOUT {node.rtpengine_disable_tout_s}",
        f"#!define RTPENGINE_SETID_DEFAULT {policy.vips[0].set_id}",
        f'#!define CTL_SOCKET "unix:{run}/kamailio-ctl.sock"',
        f'#!define JSONRPC_FIFO "{run}/kamailio-rpc.fifo"',
        f'#!define JSONRPC_REPLY_DIR "{run}/"',
        f'#!define KEMI_SCRIPT "{node.kemi_root / "kemi" / "entry.py"}"',
        f'#!define TLS_CERTIFICATE "{node.tls_certificate}"',
        f'#!define TLS_PRIVATE_KEY "{node.tls_private_key}"',
        f'#!define CDR_ENDED_HEAD "{cdr_ended_head(node)}"',
        f'#!define CDR_ONCE_PREFIX "{ONCE_PREFIX}"',
        "",
        "# Listen on every VIP of the cluster (ip_nonlocal_bind where a VIP is not local).",
        *listen_lines(policy, node),
        "# Management HTTP (xhttp): metrics, policy reload. Keep it on a private address.",
        f"listen=tcp:{node.http_address}:{node.http_port}",
        "",
        *dmq_lines(node),
        *dispatcher_lines(policy, node),
        "# One rtpengine set per VIP: media of a call goes to the set of the VIP it came in on.",
        *rtpengine_sock_lines(policy),
        "",
    ]
    return "\n".join(lines)
