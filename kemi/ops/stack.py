"""One node's processes: Redis, one rtpengine per VIP, Kamailio running kemi/.

Used by `kemi-ha run` and by the integration tests alike, so the tests exercise exactly
what an operator starts. Everything runs in the foreground as our child, in its own
process group, and is stopped by PID. Runtime files live in the run directory only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import redis

import kemi
from kemi.core.node_spec import NodeConfigSpec
from kemi.core.policy import Policy, Vip
from kemi.ops.cdrstore import RedisAddress, read_password
from kemi.ops.embedded_python import embedded_env, kamailio_failure, venv_site_packages
from kemi.ops.httptoken import ensure_token
from kemi.ops.netns import in_netns, netns_exec
from kemi.ops.ng import NgClient
from kemi.ops.nodecfg import (
    DISPATCHER_LIST_NAME,
    NODE_CFG_NAME,
    NodeValues,
    render_dispatcher_list,
    render_node_cfg,
)
from kemi.ops.procs import GROUPS_FILE, Daemon, NotReady, StartError, record_groups, wait_until
from kemi.ops.rpc import KamailioRpc
from kemi.ops.tlscert import ensure_self_signed, self_signed_paths
from kemi.policyfile import load_policy

REPO_ROOT = Path(kemi.__file__).resolve().parent.parent
NODE_INFO = "node.json"


def find_binary(name: str, *extra_dirs: str) -> str:
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *extra_dirs]))
    if path is None:
        raise StartError(f"{name} is not installed (run `make deps` as root)")
    return path


@dataclass
class StackConfig:
    """What one node runs and where; a cluster node's comes from its node.yaml (from_node)."""

    run_dir: Path
    policy_path: Path
    log_dir: Path | None = None  # None: the run directory
    node_id: int = 1
    sip_port: int = 5060
    tls_port: int = 5061
    # PEM files as the node sees them; None: a self-signed pair in the run dir (make run, tests)
    tls_certificate: Path | None = None
    tls_private_key: Path | None = None
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    rtp_port_base: int = 30000
    rtp_ports_per_vip: int = 1000
    cli_port_base: int = 9900
    http_address: str = "127.0.0.1"
    http_port: int = 8090
    node_address: str = "127.0.0.1"
    dmq_port: int = 5090
    netns: str | None = None  # run every process of the node inside this network namespace
    rtpengine_vips: tuple[str, ...] | None = None  # VIPs whose rtpengine runs here (None: all)
    components: tuple[str, ...] = ("redis", "rtpengine", "kamailio")  # what this stack runs
    # "options": Kamailio is ready when every VIP answers OPTIONS (one node holding every VIP);
    # "rpc": when its JSON-RPC answers (in a cluster, other nodes hold some VIPs).
    ready_check: Literal["rpc", "options"] = "options"
    # Sized for a 2-core node, reasoning and figures in docs/performance.md.
    children: int = 4
    tcp_children: int = 4
    shm_mb: int = 1024
    pkg_mb: int = 16
    kemi_root: Path = REPO_ROOT  # where kemi-ha is installed on the node
    # None: kemi_root/kamailio.cfg; another cfg only for bench-cpu's native reference
    kamailio_cfg: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    # CDR store (host:port/db): a cluster node's is the Redis VIP; None: this node's Redis, DB 0
    cdr_redis: str | None = None
    cdr_redis_password_file: str = ""  # its password (a cluster node: the cluster's redis.pass)
    # This stack's own Redis asks for the password in this file (a lab stand-in for the
    # cluster's Redis); empty: none (make run, the single-node tests: loopback only).
    redis_password_file: str = ""

    @classmethod
    def from_node(cls, node: NodeConfigSpec, kemi_root: Path = REPO_ROOT) -> StackConfig:
        """The launcher's view of a node.yaml (see kemi.core.node_spec)."""
        return cls(
            run_dir=Path(node.run_dir),
            policy_path=Path(node.policy),
            log_dir=Path(node.log_dir),
            node_id=node.node_id,
            node_address=node.node_address,
            sip_port=node.sip_port,
            tls_port=node.tls_port,
            tls_certificate=Path(node.tls_certificate) if node.tls_certificate else None,
            tls_private_key=Path(node.tls_private_key) if node.tls_private_key else None,
            dmq_port=node.dmq_port,
            http_address=node.http_address,
            http_port=node.http_port,
            components=tuple(node.components),
            ready_check=node.ready_check,
            children=node.children,
            tcp_children=node.tcp_children,
            shm_mb=node.shm_mb,
            pkg_mb=node.pkg_mb,
            kemi_root=kemi_root,
            cdr_redis=node.cdr_redis,
            cdr_redis_password_file=node.cdr_redis_password_file,
        )

    def node_values(self, policy: Policy) -> NodeValues:
        """The values of kemi-ha-node.cfg: the one place they are decided (run and render)."""
        return NodeValues(
            node_id=self.node_id,
            sip_port=self.sip_port,
            run_dir=self.run_dir,
            kemi_root=self.kemi_root,
            http_address=self.http_address,
            http_port=self.http_port,
            node_address=self.node_address,
            dmq_port=self.dmq_port,
            dmq_peers=policy.dmq_peers,
            tls_port=self.tls_port,
            tls_certificate=self.tls_pair[0],
            tls_private_key=self.tls_pair[1],
        )

    @property
    def tls_pair(self) -> tuple[Path, Path]:
        """The certificate and key of the TLS listeners (self-signed in the run dir if unset)."""
        if self.tls_certificate is not None and self.tls_private_key is not None:
            return self.tls_certificate, self.tls_private_key
        return self_signed_paths(self.run_dir)

    def redis_db(self, vip: Vip) -> int:
        return vip.set_id

    def rtp_ports(self, vip: Vip) -> tuple[int, int]:
        low = self.rtp_port_base + (vip.set_id - 1) * self.rtp_ports_per_vip
        return low, low + self.rtp_ports_per_vip - 1

    def cli_port(self, vip: Vip) -> int:
        return self.cli_port_base + vip.set_id


def ng_address(vip: Vip) -> tuple[str, int]:
    _proto, host, port = vip.rtpengine[0].split(":")
    return host, int(port)


class Stack:
    """Start with start(), stop with stop() (or use it as a context manager)."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config = dataclasses.replace(config, run_dir=config.run_dir.resolve())
        self.run_dir = config.run_dir
        self.log_dir = (config.log_dir or config.run_dir).resolve()
        self.policy: Policy = load_policy(config.policy_path)
        self.redis_daemon: Daemon | None = None
        self.rtpengines: dict[str, Daemon] = {}
        self.kamailio: Daemon | None = None
        self.rpc = KamailioRpc(self.run_dir / "kamailio-rpc.fifo", self.run_dir)

    # ----- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            parts = self.config.components
            if "redis" in parts:
                self.start_redis()
            for vip in self.policy.vips if "rtpengine" in parts else ():
                if self.config.rtpengine_vips is None or vip.address in self.config.rtpengine_vips:
                    self.start_rtpengine(vip)
            if "kamailio" in parts:
                self.start_kamailio()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kamailio first (no new calls), then media, then Redis."""
        if self.kamailio is not None:
            self.kamailio.stop()
        for daemon in self.rtpengines.values():
            daemon.stop()
        if self.redis_daemon is not None:
            self.redis_daemon.stop()
        (self.run_dir / GROUPS_FILE).unlink(missing_ok=True)

    def kill_all(self) -> None:
        """SIGKILL every process of the node at once: what a power cut does to them."""
        for daemon in self.daemons():
            daemon.signal(9)
        for daemon in self.daemons():
            if daemon.proc is not None:
                daemon.proc.wait()

    def net(self) -> contextlib.AbstractContextManager[None]:
        """Open sockets inside the node's network namespace (a no-op on loopback)."""
        return in_netns(self.config.netns)

    def daemon(self, name: str, argv: list[str], log: Path, **kw: Any) -> Daemon:
        return Daemon(name, netns_exec(self.config.netns, argv), log, **kw)

    def daemons(self) -> list[Daemon]:
        out = [d for d in [self.redis_daemon, *self.rtpengines.values(), self.kamailio] if d]
        return out

    def dead(self) -> list[Daemon]:
        return [d for d in self.daemons() if not d.alive()]

    # ----- Redis -----------------------------------------------------------------------

    def redis_client(self, db: int = 0) -> redis.Redis:
        cfg = self.config
        return redis.Redis(host=cfg.redis_host, port=cfg.redis_port, db=db,
                           password=read_password(cfg.redis_password_file))  # fmt: skip

    def start_redis(self) -> None:
        cfg = self.config
        daemon = self.daemon(
            "redis",
            [
                find_binary("redis-server"),
                "--bind",
                cfg.redis_host,
                "--port",
                str(cfg.redis_port),
                "--dir",
                str(self.run_dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                # One node alone (make run, the tests): loopback only, no password; a cluster
                # node's Redis runs under Pacemaker from the rendered, locked redis.conf.
                "--protected-mode",
                "yes",
                # A lab stand-in for the cluster's Redis (kemi.lab.cluster's CDR store).
                *(["--requirepass", pw] if (pw := read_password(cfg.redis_password_file)) else []),
            ],
            self.log_dir / "redis.log",
        )
        daemon.start()
        self.redis_daemon = daemon
        record_groups(self.run_dir, self.daemons())  # before any wait: procs.reap
        self._wait(daemon, lambda: bool(self.redis_client().ping()), 10)

    # ----- rtpengine -------------------------------------------------------------------

    def rtpengine_argv(self, vip: Vip) -> list[str]:
        cfg = self.config
        host, port = ng_address(vip)
        low, high = cfg.rtp_ports(vip)
        return [
            find_binary("rtpengine", "/usr/sbin"),
            "--config-file=none",
            "--foreground",
            "--log-stderr",
            "--log-level=6",
            "--table=-1",
            f"--interface={vip.address}",
            f"--listen-ng={host}:{port}",
            f"--listen-cli={cfg.redis_host}:{cfg.cli_port(vip)}",
            f"--port-min={low}",
            f"--port-max={high}",
            f"--redis={cfg.redis_host}:{cfg.redis_port}/{cfg.redis_db(vip)}",
            "--delete-delay=0",
            "--timeout=60",
            f"--pidfile={self.run_dir}/rtpengine-{vip.set_id}.pid",
        ]

    def ng(self, vip: Vip) -> NgClient:
        host, port = ng_address(vip)
        return NgClient(host, port)

    def start_rtpengine(self, vip: Vip) -> Daemon:
        daemon = self.daemon(
            f"rtpengine-{vip.set_id}",
            self.rtpengine_argv(vip),
            self.log_dir / f"rtpengine-{vip.set_id}.log",
        )
        daemon.start()
        self.rtpengines[vip.address] = daemon
        record_groups(self.run_dir, self.daemons())  # before any wait: procs.reap
        self._wait(daemon, self.ng(vip).ping, 10)
        return daemon

    # ----- Kamailio --------------------------------------------------------------------

    def kamailio_env(self) -> dict[str, str]:
        """Our environment, but with Debian's Python pinned: never the caller's PATH or venv."""
        env = embedded_env(os.environ, [str(self.config.kemi_root), venv_site_packages()])
        env["KEMI_HA_POLICY"] = str(Path(self.config.policy_path).resolve())
        env["KEMI_HA_RUN_DIR"] = str(self.run_dir)
        env["KEMI_HA_NODE_ADDRESS"] = self.config.node_address
        env["KEMI_HA_DMQ"] = "1" if self.dmq_enabled else "0"
        env["KEMI_HA_SIP_PORT"] = str(self.config.sip_port)
        env["KEMI_HA_TLS_PORT"] = str(self.config.tls_port)
        cfg = self.config
        env["KEMI_HA_CDR_REDIS"] = cfg.cdr_redis or f"{cfg.redis_host}:{cfg.redis_port}/0"
        env["KEMI_HA_CDR_REDIS_PASSWORD_FILE"] = (
            cfg.cdr_redis_password_file if cfg.cdr_redis else cfg.redis_password_file
        )
        # kamailio.cfg's ndb_redis server for the same store (its password: in the environment,
        # which only root reads, not in a file or argv)
        password = read_password(env["KEMI_HA_CDR_REDIS_PASSWORD_FILE"])
        env["KEMI_HA_CDR_REDIS_SERVER"] = RedisAddress.parse(
            env["KEMI_HA_CDR_REDIS"]
        ).ndb_redis_server(password)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        env.update(self.config.extra_env)
        return env

    def start_kamailio(self) -> None:
        cfg = self.config
        node = cfg.node_values(self.policy)
        self.write_node_info()
        ensure_token(self.run_dir)  # management HTTP: state changes need it (mode 600)
        self.check_tls_pair()
        (self.run_dir / NODE_CFG_NAME).write_text(render_node_cfg(self.policy, node))
        (self.run_dir / DISPATCHER_LIST_NAME).write_text(render_dispatcher_list(self.policy))
        # Prometheus multiprocess files: emptied at every start (stale PIDs would add up).
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        self.metrics_dir.mkdir(parents=True)
        pid_file = self.run_dir / "kamailio.pid"
        pid_file.unlink(missing_ok=True)  # a stale pid file stops Kamailio from starting
        (self.run_dir / "kamailio-rpc.fifo").unlink(missing_ok=True)
        daemon = self.daemon(
            "kamailio",
            [
                find_binary("kamailio", "/usr/sbin"),
                "-DD",
                "-E",
                "-f",
                str(cfg.kamailio_cfg or cfg.kemi_root / "kamailio.cfg"),
                "-x",
                "tlsf",
                "-m",
                str(cfg.shm_mb),
                "-M",
                str(cfg.pkg_mb),
                "-n",
                str(cfg.children),
                "-N",
                str(cfg.tcp_children),
                "-Y",
                str(self.run_dir),
                "-P",
                str(pid_file),
                *(["-A", "WITH_DMQ"] if self.dmq_enabled else []),
            ],
            self.log_dir / "kamailio.log",
            cwd=self.run_dir,
            env=self.kamailio_env(),
        )
        daemon.start()
        self.kamailio = daemon
        record_groups(self.run_dir, self.daemons())  # before any wait: procs.reap
        if cfg.netns is None and cfg.ready_check == "options":
            for vip in self.policy.vips:
                self._wait(
                    daemon,
                    lambda v=vip: sip_options_ok(v.address, cfg.sip_port),
                    20,
                    kamailio_failure,
                )
        else:  # the VIPs may be held by other nodes: ask Kamailio itself
            self._wait(
                daemon, lambda: self.rpc.call("core.uptime") is not None, 20, kamailio_failure
            )
        # Module processes (rtimer's, then TCP) are forked after the UDP workers answer: a
        # caller comparing Kamailio's process list before and after (or calling over TCP) must
        # see the whole list: the TCP main process runs, and the list has settled.
        self._wait(daemon, self.tcp_main_started, 20, kamailio_failure)
        seen: list[frozenset[int]] = []

        def settled() -> bool:
            seen.append(frozenset(int(p["PID"]) for p in self.rpc.call("core.psx")))
            if len(seen) < 2 or seen[-1] != seen[-2]:
                time.sleep(0.3)
                return False
            return True

        self._wait(daemon, settled, 20, kamailio_failure)

    def tcp_main_started(self) -> bool:
        return any(p.get("DSC") == "tcp main process" for p in self.rpc.call("core.psx") or [])

    def check_tls_pair(self) -> None:
        """The TLS listeners' files: generated when the node names none, else they must exist
        (Kamailio's tls module would refuse to start, less clearly)."""
        cert, key = self.config.tls_pair
        if self.config.tls_certificate is None or self.config.tls_private_key is None:
            ensure_self_signed(cert, key)
            return
        missing = [str(p) for p in (cert, key) if not p.is_file()]
        if missing:
            raise StartError(
                f"TLS certificate/key missing: {', '.join(missing)} "
                "(node.yaml tls_certificate/tls_private_key; docs/security.md)"
            )

    @property
    def dmq_enabled(self) -> bool:
        return self.config.node_values(self.policy).dmq_enabled

    @property
    def metrics_dir(self) -> Path:
        return self.run_dir / "metrics"

    @property
    def http_url(self) -> str:
        return f"http://{self.config.http_address}:{self.config.http_port}"

    def write_node_info(self) -> None:
        """run/node.json: where tools (policy reload, status) find this node."""
        info = {
            "node_id": self.config.node_id,
            "http_url": self.http_url,
            "metrics_url": f"{self.http_url}/metrics",
            "rpc_fifo": str(self.run_dir / "kamailio-rpc.fifo"),
            "policy": str(Path(self.config.policy_path).resolve()),
            "policy_version_at_start": self.policy.version,
            "vips": [v.address for v in self.policy.vips],
            "sip_port": self.config.sip_port,
            "tls_port": self.config.tls_port,
        }
        (self.run_dir / NODE_INFO).write_text(json.dumps(info, indent=1) + "\n")

    # ----- helpers ---------------------------------------------------------------------

    def _wait(
        self,
        daemon: Daemon,
        check: Callable[[], object],
        timeout: float,
        explain: Callable[[str], str | None] | None = None,
    ) -> None:
        """Wait for `check`; on failure name the cause in one line when `explain` finds it."""

        def failed(how: str) -> StartError:
            cause = explain(daemon.log_since_start()) if explain else None
            if cause:
                return StartError(f"{daemon.name} {how}: {cause} (log {daemon.log_path})")
            return StartError(f"{daemon.name} {how}; see {daemon.log_path}:\n{daemon.log_tail()}")

        def ready() -> bool:
            if not daemon.alive():
                raise failed(f"exited with {daemon.proc.returncode if daemon.proc else '?'}")
            with self.net():
                return bool(check())

        try:
            wait_until(ready, timeout, daemon.name)
        except NotReady as exc:
            raise failed(str(exc).removeprefix(f"{daemon.name}: ")) from None


def sip_options_ok(host: str, port: int, timeout: float = 0.5, source: str = "127.0.0.1") -> bool:
    """Send one OPTIONS to the proxy itself and expect a 200 (what a monitor would do)."""
    call_id = uuid.uuid4().hex
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        lport = sock.getsockname()[1]
        msg = (
            f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch=z9hG4bK{call_id[:16]};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:monitor@127.0.0.1>;tag={call_id[:8]}\r\n"
            f"To: <sip:{host}:{port}>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        sock.sendto(msg.encode(), (host, port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65535)
            except TimeoutError:
                return False
            if call_id.encode() in data:
                return data.startswith(b"SIP/2.0 200")
    return False
