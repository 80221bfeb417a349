"""The script app_python3 loads (modparam "load"): builds the Router Kamailio calls.

Kamailio runs mod_init() once in its main process, before forking the workers, so the policy
is read and compiled here, once, never on the message path. The policy path and the other
node values come from the environment the launcher (kemi-ha run) sets.
"""

from __future__ import annotations

import os
from pathlib import Path

import KSR  # type: ignore[import-not-found]  # provided by app_python3 inside Kamailio

from kemi.core.floods import BAN_TABLE
from kemi.core.nat import listen_ports
from kemi.ops.httptoken import read_token
from kemi.ops.ng import NgClient, NgError
from kemi.ops.nodecfg import DISPATCHER_LIST_NAME
from kemi.ops.rpc import KamailioRpc
from kemi.policyfile import load_policy
from kemi.shell import log as kamailio_log
from kemi.shell import metrics
from kemi.shell.gateways import GatewayList
from kemi.shell.policy_holder import PolicyHolder
from kemi.shell.routes import Router

POLICY_ENV = "KEMI_HA_POLICY"
RUN_DIR_ENV = "KEMI_HA_RUN_DIR"
NODE_ADDRESS_ENV = "KEMI_HA_NODE_ADDRESS"
DMQ_ENV = "KEMI_HA_DMQ"  # "1" when the policy names DMQ peers (the dmq module is loaded)
SIP_PORT_ENV, TLS_PORT_ENV = "KEMI_HA_SIP_PORT", "KEMI_HA_TLS_PORT"  # the VIPs' SIP ports


def mod_init() -> Router:
    kamailio_log.install(KSR)
    policy_path = Path(os.environ[POLICY_ENV])
    run_dir = Path(os.environ[RUN_DIR_ENV])
    # Scrape-time reads of what KEMI does not export go through our own JSON-RPC FIFO,
    # served by Kamailio's jsonrpcs process (never the worker asking).
    rpc = KamailioRpc(run_dir / "kamailio-rpc.fifo", run_dir, timeout=1.0)
    gateways = GatewayList(KSR, run_dir / DISPATCHER_LIST_NAME, lambda: rpc.call("dispatcher.list"))
    holder = PolicyHolder(
        KSR,
        policy_path,
        run_dir,
        load_policy(policy_path),
        load=load_policy,
        on_reload=lambda accepted: metrics.POLICY_RELOADS.labels(
            "accepted" if accepted else "refused"
        ).inc(),
        publish=gateways.publish,
    )
    return Router(
        KSR,
        holder,
        node_address=os.environ.get(NODE_ADDRESS_ENV, "127.0.0.1"),
        dmq=os.environ.get(DMQ_ENV) == "1",
        dmq_nodes=lambda: list(rpc.call("dmq.list_nodes")),
        rtpengine_alive=ng_alive,
        http_token=http_token(run_dir),
        ban_dump=lambda: list(rpc.call("htable.dump", BAN_TABLE) or []),
        ports=listen_ports(
            int(os.environ.get(SIP_PORT_ENV, "5060")), int(os.environ.get(TLS_PORT_ENV, "5061"))
        ),
        gateway_listing=lambda: rpc.call("dispatcher.list"),
    )


def http_token(run_dir: Path) -> str:
    """The management token the launcher wrote; none: every state-changing request gets 403."""
    try:
        return read_token(run_dir)
    except OSError:
        KSR.warn("kemi-ha: no management token in the run dir: HTTP state changes refused\n")
        return ""


def ng_alive(socket_spec: str) -> bool:
    """One ng ping with a short timeout: a scrape must answer even when rtpengine is down."""
    try:
        return NgClient.from_socket(socket_spec, timeout=0.2).ping()
    except (OSError, NgError):
        return False
