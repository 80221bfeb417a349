"""The Pacemaker resources of a kemi-ha cluster, decided from its description in one place.

Rules:
- Redis is one promotable clone over all nodes; the Redis VIP follows the promoted instance and
  starts only after the promotion. The promoted Redis prefers the node of the first VIP, so losing
  that node exercises a promotion.
- Every VIP i has its own `vip{i}` (ocf:kemi-ha:vip: ip addr add + a backgrounded gratuitous ARP,
  ~5 ms where IPaddr2 took 46-164 ms on the takeover path), preferring `vip.prefer`, and a
  promotable clone `rtpengine{i}-clone` with an instance on every node (hot standby): the promoted
  instance (the active rtpengine) runs where the VIP is; the VIP decides, the active follows, with
  no order so that both happen at once on a takeover. Each instance has its own Redis DB and
  subscribes to the other nodes' DBs of the same VIP (kemi.core.rtpengine_dbs).
- Kamailio runs on every node (clone, interleaved): it listens on every VIP via ip_nonlocal_bind.
  A VIP stays only where Kamailio runs: a node whose Kamailio stops serving gives its VIPs up.
- A VIP gets `nic` only when every node names the same interface; otherwise the agent finds the
  interface from the route to the VIP's subnet on whichever node holds it.
- Fencing, when every node names a fence device: stonith-enabled=true and per node a
  `fence-<node>` stonith primitive (its agent and params, pcmk_host_list=<node>) kept off that
  node (-INFINITY: a node never fences itself). Two nodes without a quorum device can shoot each
  other at once when they lose each other: pcmk_delay_max=2s (a random delay up to 2 s) makes one
  of them go first; with a majority the partition without quorum fences nobody, so no delay.
  A `password_file` param becomes password_script="cat FILE": the secret stays out of the CIB.
- Two nodes have no majority (no-quorum-policy=ignore, Corosync two_node); three or more, or two
  with a quorum device (corosync-qnetd), do, so a partition without quorum stops its resources.
"""

from __future__ import annotations

from kemi.core.cluster_spec import ClusterSpec
from kemi.core.pacemaker import (
    Clone,
    Colocation,
    Constraint,
    Location,
    Op,
    Order,
    PacemakerConfig,
    Primitive,
    Resource,
    UnameRule,
)
from kemi.core.rtpengine_dbs import cli_port, dbs_param

PROMOTED, UNPROMOTED = "Promoted", "Unpromoted"
INFINITY, MANDATORY = "INFINITY", "Mandatory"
PREFER_SCORE = "50"


def _vip(rid: str, address: str, spec: ClusterSpec) -> Primitive:
    interfaces = {n.interface for n in spec.nodes}
    nic = (("nic", interfaces.pop()),) if len(interfaces) == 1 else ()
    return Primitive(
        rid, "ocf", "kemi-ha", "vip",
        (("ip", address), ("cidr_netmask", str(spec.netmask)), *nic),
        (Op("monitor", "10s", "10s", on_fail="restart"),),
    )  # fmt: skip


def _redis(spec: ClusterSpec) -> Clone:
    redis = Primitive(
        "redis", "ocf", "heartbeat", "redis",
        (
            ("bin", "/usr/bin/redis-server"),
            ("client_bin", "/usr/bin/redis-cli"),
            ("config", f"{spec.etc_dir}/redis.conf"),
            ("port", str(spec.redis.port)),
            ("rundir", f"{spec.run_dir}/redis"),
            # A fresh cluster has no last known master: promote one instead of waiting for it.
            ("wait_last_known_master", "false"),
        ),
        (
            Op("monitor", "1s", "5s", role=PROMOTED),
            Op("monitor", "2s", "5s", role=UNPROMOTED),
            Op("start", "0", "20s"),
            Op("stop", "0", "20s"),
            Op("promote", "0", "10s"),
            Op("demote", "0", "10s"),
            Op("notify", "0", "10s"),
        ),
    )  # fmt: skip
    meta = (
        ("promotable", "true"),
        ("notify", "true"),
        ("promoted-max", "1"),
        ("promoted-node-max", "1"),
        ("clone-max", str(len(spec.nodes))),
        ("clone-node-max", "1"),
    )
    return Clone("redis-clone", redis, meta)


def _kamailio(spec: ClusterSpec) -> Clone:
    kamailio = Primitive(
        "kamailio", "ocf", "kemi-ha", "kamailio",
        (
            ("kemi_ha", f"{spec.kemi_ha_root}/.venv/bin/kemi-ha"),
            ("node_config", f"{spec.etc_dir}/node.yaml"),
            ("logfile", f"{spec.log_dir}/kemi-ha-run.log"),
        ),
        (
            # Every second `kemi-ha run` is alive (it exits within 0.5 s of Kamailio's death); at
            # most every 5 s the agent also checks SIP on the VIPs held here (a frozen Kamailio).
            # One operation: two monitors would both fail on one crash, and their fail counts
            # add up against migration-threshold (2: the node was banned at once, seen).
            Op("monitor", "1s", "10s"),
            Op("start", "0", "60s"),
            Op("stop", "0", "30s"),
        ),
    )  # fmt: skip
    meta = (
        ("clone-max", str(len(spec.nodes))),
        ("clone-node-max", "1"),
        ("interleave", "true"),
    )
    return Clone("kamailio-clone", kamailio, meta)


def _rtpengine(spec: ClusterSpec, i: int) -> Clone:
    """VIP i's rtpengine on every node: promoted = active (where the VIP is), else hot standby."""
    vip = spec.vips[i - 1]
    rtpengine = Primitive(
        f"rtpengine{i}", "ocf", "kemi-ha", "rtpengine",
        (
            ("vip", vip.address),
            ("ng_address", "127.0.0.1"),
            ("ng_port", str(spec.ng_port_of(i))),
            ("port_min", str(vip.port_min)),
            ("port_max", str(vip.port_max)),
            ("cli", f"127.0.0.1:{cli_port(i)}"),
            ("redis", f"127.0.0.1:{spec.redis.port}"),
            ("redis_write", f"{spec.redis.vip}:{spec.redis.port}"),
            ("redis_password_file", spec.redis_password_path),
            ("dbs", dbs_param(spec, i)),
            ("rundir", spec.run_dir),
            ("logdir", spec.log_dir),
        ),
        (
            Op("monitor", "1s", "5s", role=PROMOTED),
            Op("monitor", "2s", "5s", role=UNPROMOTED),
            Op("start", "0", "30s"),
            Op("stop", "0", "10s"),
            Op("promote", "0", "10s"),
            Op("demote", "0", "10s"),
        ),
    )  # fmt: skip
    meta = (
        ("promotable", "true"),
        ("promoted-max", "1"),
        ("promoted-node-max", "1"),
        ("clone-max", str(len(spec.nodes))),
        ("clone-node-max", "1"),
    )
    return Clone(f"rtpengine{i}-clone", rtpengine, meta)


FENCE_RACE_DELAY = "2s"


def _fence_params(params: dict[str, str]) -> tuple[tuple[str, str], ...]:
    out = []
    for key, value in params.items():
        if key == "password_file":
            out.append(("password_script", f"cat {value}"))
        else:
            out.append((key, value))
    return tuple(out)


def fencing(spec: ClusterSpec) -> tuple[list[Resource], list[Constraint]]:
    """One stonith device per node, kept off its own node; nothing when no node has one."""
    if not all(n.fence for n in spec.nodes):
        return [], []
    race = len(spec.nodes) == 2 and spec.quorum_device is None
    resources: list[Resource] = []
    constraints: list[Constraint] = []
    for node in spec.nodes:
        assert node.fence is not None
        params = (*_fence_params(node.fence.params), ("pcmk_host_list", node.name))
        if race:
            params += (("pcmk_delay_max", FENCE_RACE_DELAY),)
        rid = f"fence-{node.name}"
        resources.append(Primitive(rid, "stonith", None, node.fence.agent, params,
                                   (Op("monitor", "60s", "20s"),)))  # fmt: skip
        constraints.append(Location(f"{rid}-not-on-{node.name}", rid, f"-{INFINITY}",
                                    node=node.name))  # fmt: skip
    return resources, constraints


def cluster_resources(spec: ClusterSpec) -> PacemakerConfig:
    """Everything Pacemaker runs for `spec`: the one source of crm.txt and the CIB."""
    promoted_rule = UnameRule(PROMOTED, spec.vips[0].prefer)
    resources: list[Resource] = [_redis(spec), _vip("redis-vip", spec.redis.vip, spec)]
    constraints: list[Constraint] = [
        Colocation("redis-vip-with-master", "redis-vip", "redis-clone", INFINITY, PROMOTED),
        Order("redis-vip-after-promote", "redis-clone", "promote", "redis-vip", "start", MANDATORY),
        Location("redis-promoted-prefers", "redis-clone", PREFER_SCORE, rule=promoted_rule),
    ]
    for i, vip in enumerate(spec.vips, start=1):
        resources += [_vip(f"vip{i}", vip.address, spec), _rtpengine(spec, i)]
        constraints += [
            # The VIP decides, the active follows. No order: with ip_nonlocal_bind the standby
            # has bound the VIP's ports long before, so promote and the VIP's start run at once.
            Colocation(
                f"rtpengine{i}-active-with-vip{i}",
                f"rtpengine{i}-clone",
                f"vip{i}",
                INFINITY,
                rsc_role=PROMOTED,
            ),
            Location(f"vip{i}-prefers", f"vip{i}", PREFER_SCORE, node=vip.prefer),
            # A node whose Kamailio fails (monitor: SIP on the VIPs it holds) gives its VIPs up.
            Colocation(f"vip{i}-with-kamailio", f"vip{i}", "kamailio-clone", INFINITY),
        ]
    resources.append(_kamailio(spec))
    fence_resources, fence_constraints = fencing(spec)
    resources += fence_resources
    constraints += fence_constraints
    properties = (
        ("stonith-enabled", "true" if fence_resources else "false"),
        # Two nodes alone have no majority: quorum is ignored (and a split holds every VIP
        # twice). A quorum device or a third node gives one: a partition without quorum stops.
        ("no-quorum-policy", "stop" if spec.quorum_device or len(spec.nodes) > 2 else "ignore"),
        ("dc-deadtime", "2s"),
        ("cluster-recheck-interval", "30s"),
        # Pacemaker 2.1's controller sleeps 1 s (blocking) when the scheduler's CIB query is
        # answered while the DC's own node-loss updates are still pending ("Re-asking for the
        # CIB"); delaying the transition 50 ms lets those updates land first (LAB-NOTES).
        ("transition-delay", "50ms"),
        # In its first 30 s the controller allows node-action-limit/2 parallel actions (2 on
        # 2 cores): rtpengine's start then queued behind Redis notifies.
        ("node-action-limit", "16"),
    )
    defaults = (("resource-stickiness", "100"), ("migration-threshold", "2"))
    return PacemakerConfig(properties, defaults, tuple(resources), tuple(constraints))
