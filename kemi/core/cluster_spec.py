"""The cluster description (`kemi-ha render CLUSTER.yaml OUTDIR`): nodes, VIPs, Redis VIP.

One file describes the whole cluster; every per-node file (Corosync, Pacemaker, sysctl, Redis,
Kamailio, rtpengine) is rendered from it, so no node has a hand-edited copy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kemi.core.spec import doc, required

REDIS_PASSWORD_NAME = "redis.pass"  # render's copy of redis.password_file, per node


@dataclass(frozen=True, slots=True)
class FenceSpec:
    """The node's fence device: a fence-agents agent that other nodes run to power it off."""

    agent: str = required("fence agent in /usr/sbin of every node, e.g. fence_ipmilan")
    params: dict[str, str] = doc(
        "the agent's options (`fence_ipmilan -o metadata`), e.g. ip, username; "
        'password_file: PATH becomes password_script="cat PATH" (no secret in the CIB)',
        factory=dict,
    )


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A cluster node."""

    name: str = required("host name (Corosync/Pacemaker node name)")
    id: int = required("Corosync nodeid, also Kamailio's node id (1..15)")
    address: str = required(
        "the node's own address: Corosync ring 0, DMQ, Redis; a private address (never a VIP)"
    )
    interface: str = doc("interface carrying the VIPs", "eth0")
    links: list[str] = doc(
        "the node's addresses on further, separate networks: Corosync knet links 1, 2, ... "
        "(link 0 is `address`); every node names as many",
        factory=list,
    )
    fence: FenceSpec | None = doc(
        "how the other nodes power this node off (every node names one, or none does)"
    )


@dataclass(frozen=True, slots=True)
class ClusterVipSpec:
    """A VIP with its Kamailio/rtpengine pair."""

    address: str = required("the VIP")
    prefer: str = required("the node that holds it when both are up")
    ng_port: int | None = doc(
        "rtpengine ng port on each node's loopback, distinct per VIP (default 2222 + the VIP's "
        "position): each node's Kamailio talks to its own instance of this VIP's rtpengine"
    )
    port_min: int = doc("first RTP port of this VIP's rtpengine", 30000)
    port_max: int = doc("last RTP port of this VIP's rtpengine", 39999)


@dataclass(frozen=True, slots=True)
class RedisSpec:
    """Redis: one per node, replicating; the VIP follows the master."""

    vip: str = required("address of the Redis master (a VIP that follows it); a private address")
    password_file: str = required(
        "file holding the Redis password (one line, 16+ of A-Z a-z 0-9 . _ ~ -; mode 600, never "
        "committed): absolute, or relative to this cluster file. Render writes it into every "
        "node's redis.conf (requirepass, masterauth: ocf:heartbeat:redis reads it there) and "
        "redis.pass, which rtpengine's agent reads"
    )
    port: int = doc("Redis port", 6379)


@dataclass(frozen=True, slots=True)
class TlsSpec:
    """The certificate of the SIP over TLS listeners on every VIP (the same on every node: a
    client reconnecting after a failover must meet the same identity)."""

    certificate: str = doc(
        "PEM certificate (with its chain) as installed on every node; its names should cover "
        "the VIPs' DNS names",
        "/etc/kemi-ha/tls/kemi-ha.crt",
    )
    private_key: str = doc(
        "PEM private key of the certificate on every node (root, mode 600)",
        "/etc/kemi-ha/tls/kemi-ha.key",
    )


@dataclass(frozen=True, slots=True)
class QuorumDeviceSpec:
    """A Corosync quorum device (corosync-qnetd on a third host): the tie-breaker that lets
    exactly one partition of a two-node cluster keep quorum when the nodes lose each other."""

    address: str = required("address of the host running corosync-qnetd")
    algorithm: Literal["ffsplit", "lms"] = doc(
        "ffsplit: exactly one partition of a split keeps quorum; lms: last man standing", "ffsplit"
    )
    port: int = doc("corosync-qnetd port", 5403)
    tls: bool = doc(
        "TLS between qdevice and qnetd (certificates: docs/ha.md); off only where the network "
        "between them is trusted",
        True,
    )
    timeout_ms: int | None = doc(
        "qdevice `timeout` (ms; Corosync's default 10000): qnetd drops a dead node's connection "
        "after 1.2 x this, and until then the survivor waits for its vote"
    )


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """A kemi-ha cluster."""

    cluster_name: str = required("Corosync cluster name")
    nodes: list[NodeSpec] = required("the nodes (two, or more with a quorum node)")
    vips: list[ClusterVipSpec] = required("one VIP per Kamailio/rtpengine pair")
    redis: RedisSpec = required("the Redis VIP")
    policy: str = required(
        "base policy (routes, tenants, limits); VIPs and DMQ peers come from here"
    )
    netmask: int = doc("prefix length of the VIPs", 24)
    sip_port: int = doc("SIP port on every VIP (UDP and TCP)", 5060)
    tls_port: int = doc("SIP over TLS port on every VIP", 5061)
    tls: TlsSpec = doc("certificate and key of the TLS listeners (docs/security.md)",
                       factory=TlsSpec)  # fmt: skip
    dmq_port: int = doc("DMQ port on every node address", 5090)
    corosync_profile: Literal["tuned", "default"] = doc(
        "profile in corosync.conf (both are rendered)", "tuned"
    )
    kemi_ha_root: str = doc("where kemi-ha is installed on the nodes", "/opt/kemi-ha")
    run_dir: str = doc("runtime directory on the nodes", "/run/kemi-ha")
    etc_dir: str = doc("where the rendered files are installed on the nodes", "/etc/kemi-ha")
    log_dir: str = doc("log directory on the nodes (Kamailio, rtpengine)", "/var/log/kemi-ha")
    quorum_device: QuorumDeviceSpec | None = doc(
        "a quorum device: a partition without quorum then stops its resources"
    )
    fast_takeover: bool = doc(
        "two nodes without fencing or quorum device: the survivor claims the VIPs when Corosync "
        "forms the membership without its peer (~100-170 ms before Pacemaker would start "
        "them; Pacemaker confirms, docs/ha.md); ignored where Pacemaker alone can decide",
        True,
    )

    @property
    def fast_takeover_applies(self) -> bool:
        """Only where Pacemaker's transition can place the VIPs nowhere but on the survivor."""
        fenced = any(n.fence is not None for n in self.nodes)
        return (
            self.fast_takeover
            and len(self.nodes) == 2
            and self.quorum_device is None
            and not fenced
        )

    @property
    def redis_password_path(self) -> str:
        """Where the nodes' rtpengine agent reads the password (render installs it there)."""
        return f"{self.etc_dir}/{REDIS_PASSWORD_NAME}"

    def ng_port_of(self, position: int) -> int:
        """The ng port of the VIP at `position` (1-based)."""
        return self.vips[position - 1].ng_port or 2222 + position
