"""One node as `kemi-ha run --node-config node.yaml` runs it (`kemi-ha render` writes the file).

The one node model: render writes it, the launcher reads it (through kemi.specfile, so errors
are `file:line:col: field: reason`), the drill installs what render wrote. On a cluster node
Pacemaker runs Redis and the rtpengines, so `components` is just Kamailio there; `make run`
(one node alone) runs all three.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass
from typing import Literal

from kemi.core.spec import doc, required
from kemi.core.structure import Problem

Component = Literal["redis", "rtpengine", "kamailio"]


@dataclass(frozen=True, slots=True)
class ClaimedVipSpec:
    """A VIP the fast-takeover watcher may claim (the same address Pacemaker's vipN holds)."""

    resource: str = required("its Pacemaker resource id (vipN)")
    address: str = required("the IPv4 address")
    prefix: int = doc("prefix length", 24)
    nic: str = doc("interface it goes on", "eth0")


@dataclass(frozen=True, slots=True)
class FastTakeoverSpec:
    """Two-node clusters without fencing or quorum device: claim the peer's VIPs as soon as
    Corosync forms the membership without it (kemi.core.vip_claim); Pacemaker confirms."""

    node_name: str = required("this node's name in Corosync and Pacemaker")
    vips: list[ClaimedVipSpec] = required("every VIP of the cluster")


@dataclass(frozen=True, slots=True)
class NodeConfigSpec:
    """A kemi-ha node: what it runs, where its files are, its identity in the cluster."""

    node_id: int = required("Kamailio's node id (1..15): unique dialog ids, DMQ identity")
    node_address: str = required("the node's own address: DMQ listener, peers reach it here")
    policy: str = required("the policy file (VIPs, routes, limits, DMQ peers)")
    run_dir: str = doc("runtime files: node cfg, RPC FIFO, control socket", "/run/kemi-ha")
    log_dir: str = doc("log files of what this node runs (Kamailio, ...)", "/var/log/kemi-ha")
    sip_port: int = doc("SIP port on every VIP (UDP and TCP)", 5060)
    tls_port: int = doc("SIP over TLS port on every VIP", 5061)
    tls_certificate: str | None = doc(
        "PEM certificate of the TLS listeners (with its chain); unset: a self-signed pair is "
        "generated in run_dir/tls (tests, make run)"
    )
    tls_private_key: str | None = doc("PEM private key of tls_certificate (mode 600)")
    dmq_port: int = doc("DMQ port on the node address", 5090)
    http_address: str = doc(
        "management HTTP (metrics, policy reload): keep it private", "127.0.0.1"
    )
    http_port: int = doc("management HTTP port", 8090)
    components: list[Component] = doc(
        "what `kemi-ha run` starts here (a cluster node: kamailio; Pacemaker runs the rest)",
        factory=lambda: ["kamailio"],
    )
    ready_check: Literal["rpc", "options"] = doc(
        "when Kamailio counts as started: its JSON-RPC answers (rpc), or every VIP answers "
        "SIP OPTIONS from this host (options: a node holding every VIP, e.g. make run)",
        "rpc",
    )
    # Sizing for a 2-core node: docs/performance.md (measured with make bench-cpu).
    children: int = doc("Kamailio UDP workers per listener (each VIP is a listener)", 4)
    tcp_children: int = doc("Kamailio TCP workers (SIP over TCP/TLS, management HTTP)", 4)
    shm_mb: int = doc("Kamailio shared memory (MB): transactions, dialogs", 1024)
    pkg_mb: int = doc("Kamailio private memory per process (MB)", 16)
    cdr_redis: str = doc(
        "the CDR store, host:port/db: the cluster's Redis master (its VIP), DB 0",
        "127.0.0.1:6379/0",
    )
    cdr_redis_password_file: str = doc(
        "file holding the CDR store's password (the cluster's redis.pass); empty: none", ""
    )
    fast_takeover: FastTakeoverSpec | None = doc(
        "claim the peer's VIPs at the membership change (two nodes, no fencing, no quorum "
        "device: kemi-ha render sets it); unset: Pacemaker alone moves them"
    )


def check_node(spec: NodeConfigSpec) -> list[Problem]:
    problems: list[Problem] = []
    if not 1 <= spec.node_id <= 15:
        problems.append(Problem(("node_id",), "must be 1..15 (dialog h_id_step is 16)"))
    for name in ("node_address", "http_address"):
        try:
            ipaddress.ip_address(getattr(spec, name))
        except ValueError:
            problems.append(Problem((name,), f"not an IP address: {getattr(spec, name)!r}"))
    with contextlib.suppress(ValueError):
        node = ipaddress.ip_address(spec.node_address)
        if not node.is_private or node.is_unspecified:
            problems.append(Problem(("node_address",), "DMQ listens here: it must be a loopback "
                                    "or private address"))  # fmt: skip
    with contextlib.suppress(ValueError):
        http = ipaddress.ip_address(spec.http_address)
        if not (http.is_loopback or http.is_private) or http.is_unspecified:
            problems.append(Problem(("http_address",), "management HTTP must stay on a "
                                    "loopback or private address"))  # fmt: skip
    if (spec.tls_certificate is None) != (spec.tls_private_key is None):
        problems.append(Problem(("tls_private_key",), "tls_certificate and tls_private_key "
                                "go together"))  # fmt: skip
    for name in ("tls_certificate", "tls_private_key"):
        value = getattr(spec, name)
        if value is not None and not value.startswith("/"):
            problems.append(Problem((name,), "must be an absolute path"))
    if spec.tls_port == spec.sip_port:
        problems.append(Problem(("tls_port",), "must differ from sip_port (TCP listens there)"))
    for name in ("sip_port", "tls_port", "dmq_port", "http_port"):
        if not 1 <= getattr(spec, name) <= 65535:
            problems.append(Problem((name,), "must be a port (1..65535)"))
    if not spec.components:
        problems.append(Problem(("components",), "names nothing to run"))
    if len(set(spec.components)) != len(spec.components):
        problems.append(Problem(("components",), "names a component twice"))
    for name in ("run_dir", "log_dir", "policy"):
        if not getattr(spec, name).startswith("/"):
            problems.append(Problem((name,), "must be an absolute path"))
    return problems
