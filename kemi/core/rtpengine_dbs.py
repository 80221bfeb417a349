"""Where each rtpengine keeps its calls in Redis: one DB per (VIP, node), never shared.

Rules (hot standby, LAB-NOTES "rtpengine hot standby works"):
- Every node runs, for every VIP i, one rtpengine: the active one where vip{i} is, a hot standby
  elsewhere. The instance of VIP i on node n writes its own calls to DB `16 * i + n` (node ids
  are 1..15, so DB 16 * i is never used and no two (VIP, node) pairs share a DB).
- It subscribes to the DBs of VIP i of every *other* node, never to its own: an instance whose
  own DB is a subscribed one destroys the active's keys.
- The Redis DB count covers the highest VIP: `16 * (vips + 1)`.
- Each instance has a CLI port on 127.0.0.1 (rtpengine-ctl active/standby): one per VIP.
"""

from __future__ import annotations

from kemi.core.cluster_spec import ClusterSpec

DBS_PER_VIP = 16  # node ids are 1..15 (Kamailio's dialog h_id_step is 16)
CLI_PORT_BASE = 9900


def rtpengine_db(vip_no: int, node_id: int) -> int:
    """The Redis DB of VIP `vip_no`'s (1-based) rtpengine on node `node_id` (1..15)."""
    if vip_no < 1 or not 1 <= node_id < DBS_PER_VIP:
        raise ValueError(f"no rtpengine DB for VIP {vip_no} on node id {node_id}")
    return DBS_PER_VIP * vip_no + node_id


def redis_databases(spec: ClusterSpec) -> int:
    """`databases` in redis.conf: enough for the highest VIP's DBs."""
    return DBS_PER_VIP * (len(spec.vips) + 1)


def vip_dbs(spec: ClusterSpec, vip_no: int) -> tuple[tuple[str, int], ...]:
    """(node name, DB) of VIP `vip_no` on every node, in node order."""
    return tuple((n.name, rtpengine_db(vip_no, n.id)) for n in spec.nodes)


def dbs_param(spec: ClusterSpec, vip_no: int) -> str:
    """The agent's `dbs` parameter: "node1:17 node2:18" (its own entry by node name)."""
    return " ".join(f"{name}:{db}" for name, db in vip_dbs(spec, vip_no))


def subscribed_dbs(spec: ClusterSpec, vip_no: int, node_name: str) -> tuple[int, ...]:
    """The DBs an instance subscribes to: VIP `vip_no`'s DBs of every other node."""
    return tuple(db for name, db in vip_dbs(spec, vip_no) if name != node_name)


def cli_port(vip_no: int) -> int:
    """rtpengine's --listen-cli port (on 127.0.0.1) of VIP `vip_no`'s instance, on every node."""
    return CLI_PORT_BASE + vip_no
