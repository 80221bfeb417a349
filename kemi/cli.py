"""The `kemi-ha` command: main(argv) -> exit code (0 ok, 1 failure, 2 usage)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import FrameType

import redis
import yaml

from kemi.core.compile import compile_policy
from kemi.core.schema import json_schema
from kemi.core.structure import SpecError
from kemi.ops import cdrstore
from kemi.ops.bans import (
    BanError,
    add_ban,
    as_json,
    exempt_note,
    list_bans,
    remove_ban,
    render_bans,
)
from kemi.ops.embedded_python import check_embedded_python
from kemi.ops.health import node_problems
from kemi.ops.httptoken import authorization
from kemi.ops.procs import StartError, reap
from kemi.ops.render import load_node_config, render
from kemi.ops.rpc import KamailioRpc, RpcError
from kemi.ops.stack import NODE_INFO, REPO_ROOT, Stack, StackConfig
from kemi.ops.status import collect, remove_orphans, render_status
from kemi.ops.vip_claim import VipClaimer
from kemi.policyfile import load_policy, parse_spec

DEFAULT_POLICY = REPO_ROOT / "policies" / "default.yaml"


class _Stop(BaseException):
    """SIGTERM/SIGINT in `kemi-ha run`: a BaseException, as KeyboardInterrupt is, so that no
    `except Exception` of whatever runs when the signal lands can swallow it."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def cmd_run(args: argparse.Namespace) -> int:
    config = StackConfig(
        run_dir=Path(args.run_dir),
        policy_path=Path(args.policy),
        sip_port=args.sip_port,
        tls_port=args.tls_port,
        redis_port=args.redis_port,
        children=args.children,
    )
    node = load_node_config(args.node_config) if args.node_config else None
    if node is not None:
        config = StackConfig.from_node(node)
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    stack = Stack(config)
    if "kamailio" in config.components:
        # Before anything starts: a foreign Python on PATH or a venv of another Python would
        # otherwise only show as Kamailio failing to load its script.
        check_embedded_python(stack.kamailio_env())
    claimer: VipClaimer | None = None
    for left in reap(stack.run_dir):  # a previous run killed before it could stop them
        print(f"kemi-ha: stopped {left}, left running by an earlier run", flush=True)
    try:
        stack.start()
        print(node_banner(stack) if args.node_config else banner(stack), flush=True)
        if node is not None and node.fast_takeover is not None:
            # Kamailio is up: from now on this node may take the peer's VIPs at once.
            claimer = VipClaimer(node.fast_takeover, log=lambda line: print(line, flush=True))
            claimer.start()
        while True:
            dead = stack.dead()
            if dead:
                for daemon in dead:
                    print(f"Error: {daemon.name} exited; log {daemon.log_path}:", file=sys.stderr)
                    print(daemon.log_tail(), file=sys.stderr)
                return 1
            time.sleep(0.5)
    except _Stop as stop:
        print(f"\n{stop}: stopping", flush=True)
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if claimer is not None:
            claimer.stop()
        stack.stop()
        print("kemi-ha: stopped (every process it started has exited)", flush=True)


def node_banner(stack: Stack) -> str:
    """A cluster node (under Pacemaker): what it runs, not how to place a test call."""
    cfg = stack.config
    return (
        f"kemi-ha node {cfg.node_id} ({cfg.node_address}) is running: "
        f"{', '.join(cfg.components)}; VIPs {', '.join(v.address for v in stack.policy.vips)}; "
        f"run dir {stack.run_dir}, logs {stack.log_dir}"
    )


def banner(stack: Stack) -> str:
    cfg = stack.config
    lines = ["kemi-ha is running (single node, loopback). Ctrl-C stops everything.", ""]
    for vip in stack.policy.vips:
        low, high = cfg.rtp_ports(vip)
        lines.append(
            f"  VIP{vip.set_id} sip:{vip.address}:{cfg.sip_port} (UDP, TCP), TLS port "
            f"{cfg.tls_port}  -> rtpengine set {vip.set_id}"
            f" ng {vip.rtpengine[0]} RTP {low}-{high} Redis db {cfg.redis_db(vip)}"
        )
    routes = [r for table in stack.policy.routes.values() for r in table.values()]
    lines += [
        *(f"  route {r.name}: {', '.join(r.destinations)}" for r in routes),
        f"  run dir (node cfg, RPC fifo): {stack.run_dir}, logs: {stack.log_dir}",
        f"  TLS certificate: {cfg.tls_pair[0]} (self-signed unless the node names one)",
        "",
        "Place a call (README, 'Test call'), from the repository root in a second shell:",
        "  sipp -sf tests/sipp/uas.xml -i 127.0.0.1 -p 5080 -mi 127.0.0.1 -mp 6000"
        " -rtp_echo -m 1 -bg",
        f"  sipp -sf tests/sipp/uac.xml -s 1000 {stack.policy.vips[0].address}:{cfg.sip_port}"
        " -i 127.0.0.1 -p 5070 -mi 127.0.0.1 -mp 7000 -m 1 -d 3000",
    ]
    return "\n".join(lines)


def cmd_api_list(args: argparse.Namespace) -> int:
    """Dump the KEMI export list of the installed Kamailio (the fake KSR's ground truth)."""
    with tempfile.TemporaryDirectory(prefix="kemi-ha-api-") as tmp:
        # A peer in the policy loads the dmq module, so its functions are listed too.
        policy = Path(tmp) / "policy.yaml"
        policy.write_text(DEFAULT_POLICY.read_text() + "dmq_peers: ['sip:127.0.0.2:25090']\n")
        config = StackConfig(
            run_dir=Path(tmp),
            policy_path=policy,
            sip_port=25060,
            tls_port=25061,
            redis_port=26379,
            rtp_port_base=45000,
            cli_port_base=29900,
            http_port=28090,
            dmq_port=25090,
            children=1,
        )
        with Stack(config) as stack:
            result = stack.rpc.call("app_python.api_list")
    methods = sorted((m["func"] for m in result["methods"]), key=lambda f: (f["module"], f["name"]))
    Path(args.output).write_text(json.dumps(methods, indent=1) + "\n")
    print(f"{len(methods)} KEMI functions written to {args.output}")
    return 0


def cmd_policy_check(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        try:
            policy = load_policy(path)
        except SpecError as exc:
            failed += 1
            for line in exc.messages:
                print(line, file=sys.stderr)
            continue
        routes = sum(map(len, policy.routes.values()))
        print(f"{path}: ok (version {policy.version}, {len(policy.vips)} VIPs, "
              f"{len(policy.tenants)} tenants, {routes} routes, "
              f"{len(policy.gateway_sets)} gateway sets)")  # fmt: skip
    return 1 if failed else 0


def cmd_policy_show(args: argparse.Namespace) -> int:
    spec = parse_spec(Path(args.policy).read_text(encoding="utf-8"), args.policy)
    print(yaml.safe_dump(dataclasses.asdict(spec), sort_keys=False), end="")
    policy = compile_policy(spec)
    print("# rtpengine flags in force, per VIP and tenant:")
    for (vip, tenant), flags in policy.media_flags.items():
        print(f"#   {vip} {tenant or '(no tenant)'}: {flags}")
    return 0


def cmd_policy_schema(args: argparse.Namespace) -> int:
    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.output == "-":
        print(text, end="")
    else:
        Path(args.output).write_text(text)
    return 0


def node_info(run_dir: str) -> dict[str, object]:
    path = Path(run_dir) / NODE_INFO
    try:
        return dict(json.loads(path.read_text()))
    except OSError as exc:
        raise StartError(f"no running node in {run_dir} ({path}: {exc.strerror})") from exc


def cmd_policy_reload(args: argparse.Namespace) -> int:
    """Ask the running Kamailio to validate and apply its policy file (every worker)."""
    info = node_info(args.run_dir)
    url = f"{info['http_url']}/policy/reload"
    try:
        headers = authorization(Path(args.run_dir))
    except OSError as exc:
        print(f"Error: no management token in {args.run_dir}: {exc.strerror}", file=sys.stderr)
        return 1
    request = urllib.request.Request(url, data=b"", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            reply = json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        reply = json.loads(exc.read() or b"{}")
    except OSError as exc:
        print(f"Error: cannot reach Kamailio at {url}: {exc}", file=sys.stderr)
        return 1
    accepted = bool(reply.get("accepted"))
    stream = sys.stdout if accepted else sys.stderr
    print(
        "policy reload " + ("accepted" if accepted else "REFUSED (old policy stays)"), file=stream
    )
    for line in reply.get("messages", []):
        print(f"  {line}", file=stream)
    return 0 if accepted else 1


def cmd_render(args: argparse.Namespace) -> int:
    written = render(Path(args.cluster), Path(args.outdir))
    print(f"{len(written)} files written to {args.outdir}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 if the node serves (JSON-RPC, OPTIONS on the VIPs it holds): Pacemaker's monitor."""
    run_dir = Path(args.run_dir)
    if args.node_config:
        run_dir = Path(load_node_config(args.node_config).run_dir)
    problems = node_problems(run_dir)
    for problem in problems:
        print(f"Error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def cmd_reap(args: argparse.Namespace) -> int:
    """Stop by PID the daemons a killed `kemi-ha run` left (what the agent's stop does after
    a KILL): a node must never keep Kamailio, rtpengine or Redis running unsupervised."""
    run_dir = Path(args.run_dir)
    if args.node_config:
        run_dir = Path(load_node_config(args.node_config).run_dir)
    for left in reap(run_dir):
        print(f"stopped {left}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    try:
        status = collect(node_info(args.run_dir))
    except (RpcError, OSError) as exc:
        print(f"Error: cannot read the node in {args.run_dir}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=1) if args.json else render_status(status))
    if args.remove_orphans:
        deleted = remove_orphans(status)
        print(f"removed {len(deleted)} orphan rtpengine sessions: {' '.join(deleted)}")
    return 0


def cmd_ban(args: argparse.Namespace) -> int:
    """The cluster-wide ban list (htable kha_ban, replicated over DMQ): list, add, remove."""
    info = node_info(args.run_dir)
    rpc = KamailioRpc(Path(str(info["rpc_fifo"])), Path(str(info["rpc_fifo"])).parent)
    try:
        policy = load_policy(str(info["policy"]))
    except (SpecError, OSError):
        policy = None
    try:
        if args.ban_command == "list":
            bans = list_bans(rpc)
            print(json.dumps(as_json(bans), indent=1) if args.json else render_bans(bans))
        elif args.ban_command == "add":
            seconds = args.seconds or (policy.floods.ban_s if policy else 600)
            until = add_ban(rpc, args.source, seconds)
            print(f"{args.source} banned on every node for {seconds} s (until {until})")
            note = exempt_note(policy, args.source)
            if note:
                print(note, file=sys.stderr)
        elif remove_ban(rpc, args.source):
            print(f"ban on {args.source} lifted on every node")
        else:
            print(f"{args.source} was not banned")
    except BanError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    except (RpcError, OSError) as exc:
        print(f"Error: cannot reach the node in {args.run_dir}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_cdr(args: argparse.Namespace) -> int:
    """Export call records ended in [--from, --to) from the CDR store."""
    address, password_file = args.redis, args.password_file
    if args.node_config:
        node = load_node_config(args.node_config)
        address = address or node.cdr_redis
        password_file = password_file or node.cdr_redis_password_file
    try:
        start = cdrstore.parse_time_ms(args.start) if args.start else 0
        end = cdrstore.parse_time_ms(args.end) if args.end else None
        password = cdrstore.read_password(password_file)
    except (ValueError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    target = cdrstore.RedisAddress.parse(address or "127.0.0.1:6379/0")
    rows = cdrstore.read_cdrs(cdrstore.client(target, 5.0, password), start, end)
    try:
        if args.output == "-":
            count = cdrstore.export(rows, args.format, sys.stdout)
        else:
            with open(args.output, "w", newline="") as out:
                count = cdrstore.export(rows, args.format, out)
    except (redis.RedisError, OSError) as exc:
        print(f"Error: cannot read CDRs from {target}: {exc}", file=sys.stderr)
        return 1
    print(f"kemi-ha cdr: {count} records", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kemi-ha", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one node in the foreground (Redis, rtpengines, Kamailio)")
    run.add_argument("--run-dir", default="run", help="runtime files and logs (default: ./run)")
    run.add_argument("--policy", default=str(DEFAULT_POLICY), help="policy YAML")
    run.add_argument("--sip-port", type=int, default=5060)
    run.add_argument("--tls-port", type=int, default=5061)
    run.add_argument("--redis-port", type=int, default=6379)
    run.add_argument("--children", type=int, default=4, help="Kamailio UDP workers per VIP")
    run.add_argument("--node-config", help="a node.yaml rendered by `kemi-ha render`")
    run.set_defaults(func=cmd_run)

    policy = sub.add_parser("policy", help="check, show, reload policies")
    psub = policy.add_subparsers(dest="policy_command", required=True)
    check = psub.add_parser("check", help="validate policy files (exit 0 if all are good)")
    check.add_argument("files", nargs="+")
    check.set_defaults(func=cmd_policy_check)
    show = psub.add_parser("show", help="print the effective policy (defaults filled in)")
    show.add_argument("--policy", default=str(DEFAULT_POLICY))
    show.set_defaults(func=cmd_policy_show)
    reload = psub.add_parser("reload", help="make the running Kamailio apply its policy file")
    reload.add_argument("--run-dir", default="run")
    reload.set_defaults(func=cmd_policy_reload)
    schema = psub.add_parser("schema", help="write the JSON Schema of policy files")
    schema.add_argument("output", nargs="?", default="-")
    schema.set_defaults(func=cmd_policy_schema)

    status = sub.add_parser("status", help="one screen about the running node (over JSON-RPC)")
    status.add_argument("--run-dir", default="run")
    status.add_argument("--json", action="store_true", help="machine-readable")
    status.add_argument(
        "--remove-orphans",
        action="store_true",
        help="delete rtpengine sessions with no dialog, older than 60 s",
    )
    status.set_defaults(func=cmd_status)

    ban = sub.add_parser(
        "ban", help="the cluster-wide ban list (floods, scanners): list|add|remove"
    )
    bsub = ban.add_subparsers(dest="ban_command", required=True)
    blist = bsub.add_parser("list", help="sources banned now (the same on every node)")
    blist.add_argument("--json", action="store_true", help="machine-readable")
    badd = bsub.add_parser("add", help="ban a source on every node")
    badd.add_argument("source", help="IP address")
    badd.add_argument("--seconds", type=int, help="ban length (default: the policy's floods.ban_s)")
    brm = bsub.add_parser("remove", help="lift a ban on every node")
    brm.add_argument("source", help="IP address")
    for p in (blist, badd, brm):
        p.add_argument("--run-dir", default="run")
        p.set_defaults(func=cmd_ban)

    chk = sub.add_parser("check", help="exit 0 if the node serves (Pacemaker's monitor)")
    chk.add_argument("--run-dir", default="run")
    chk.add_argument("--node-config", help="the node.yaml the node runs with (gives its run dir)")
    chk.set_defaults(func=cmd_check)

    rp = sub.add_parser("reap", help="stop the daemons a killed `kemi-ha run` left, by PID")
    rp.add_argument("--run-dir", default="run")
    rp.add_argument("--node-config", help="the node.yaml the node runs with (gives its run dir)")
    rp.set_defaults(func=cmd_reap)

    rend = sub.add_parser("render", help="render every node's deploy files from a cluster file")
    rend.add_argument("cluster")
    rend.add_argument("outdir")
    rend.set_defaults(func=cmd_render)

    cdr = sub.add_parser("cdr", help="export call records (CSV or JSON lines) for a time range")
    cdr.add_argument("--redis", help="the CDR store, host:port/db (default: --node-config's "
                     "cdr_redis, else 127.0.0.1:6379/0)")  # fmt: skip
    cdr.add_argument("--node-config", help="a node.yaml: its cdr_redis is the store")
    cdr.add_argument("--password-file", help="the store's password (default: --node-config's "
                     "cdr_redis_password_file, else none)")  # fmt: skip
    cdr.add_argument("--from", dest="start", help="calls ended at or after (unix s or ISO 8601)")
    cdr.add_argument("--to", dest="end", help="calls ended before (unix s or ISO 8601)")
    cdr.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    cdr.add_argument("--output", default="-", help="file (default: stdout)")
    cdr.set_defaults(func=cmd_cdr)

    api = sub.add_parser("api-list", help="dump Kamailio's KEMI export list as JSON")
    api.add_argument("output")
    api.set_defaults(func=cmd_api_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except SpecError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except StartError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
