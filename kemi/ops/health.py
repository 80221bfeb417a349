"""Is this node's Kamailio serving? What Pacemaker's monitor asks (`kemi-ha check`).

A PID is not enough: a Kamailio whose workers are stuck keeps its PID. Serving means its
JSON-RPC answers and every VIP this host holds right now answers SIP OPTIONS (the VIPs held by
other nodes are theirs to check).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from kemi.ops.rpc import KamailioRpc, RpcError
from kemi.ops.stack import NODE_INFO, sip_options_ok


def local_addresses() -> set[str]:
    """IPv4 addresses configured on this host's interfaces (iproute2's JSON output)."""
    out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    return {a["local"] for link in json.loads(out) for a in link.get("addr_info", [])}


def node_problems(run_dir: Path, timeout: float = 1.0) -> list[str]:
    """Why the node in `run_dir` is not serving ([] when it is)."""
    try:
        info = json.loads((run_dir / NODE_INFO).read_text())
    except (OSError, ValueError) as exc:
        return [f"no running node in {run_dir}: {exc}"]
    fifo = Path(info["rpc_fifo"])
    problems = []
    try:
        KamailioRpc(fifo, fifo.parent, timeout=timeout).call("core.uptime")
    except (OSError, RpcError) as exc:
        problems.append(f"JSON-RPC does not answer: {exc}")
    held = local_addresses()
    for vip in info["vips"]:
        if vip in held and not sip_options_ok(vip, int(info["sip_port"]), timeout):
            problems.append(f"no 200 to SIP OPTIONS on sip:{vip}:{info['sip_port']}")
    return problems
