"""`python -m kemi.lab drill ...`: the failover drill (`make drill`), apart from the node's CLI."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from kemi.lab.drill import SCENARIOS, DrillCase, drill
from kemi.lab.drill_all import drill_all
from kemi.ops.render import COROSYNC_PROFILES


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kemi.lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    dr = sub.add_parser("drill", help="power nodes off under Corosync+Pacemaker, with calls up")
    dr.add_argument("--nodes", type=int, default=2, help="cluster size (one VIP per node)")
    dr.add_argument("--calls", type=int, default=10, help="calls per run, spread on every VIP")
    dr.add_argument("--profile", choices=sorted(COROSYNC_PROFILES), default="tuned")
    dr.add_argument("--repeat", type=int, default=1, help="runs; the node powered off rotates")
    dr.add_argument("--scenario", choices=SCENARIOS, default="power-off")
    dr.add_argument("--links", type=int, default=1, help="Corosync links (separate networks)")
    dr.add_argument(
        "--qdevice",
        action="store_true",
        help="a quorum device (corosync-qnetd in a namespace of its own)",
    )
    dr.add_argument(
        "--transient",
        type=int,
        default=0,
        help="also this many calls of each transient kind (ringing, answered-not-ACKed, "
        "being cancelled, hold re-INVITE before/during the outage, BYE during it) "
        "on the powered-off node's VIP at the fault",
    )
    dr.add_argument("--keep", action="store_true", help="keep the work directory (logs, pcap)")
    everything = sub.add_parser("drill-all", help="every scenario, larger; writes the table")
    everything.add_argument("--out", type=Path, default=Path("docs/drill-all.md"))
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the drill removes every namespace and process it made.
    signal.signal(signal.SIGTERM, _interrupt)
    if args.command == "drill-all":
        return drill_all(args.out)
    case = DrillCase(scenario=args.scenario, nodes=args.nodes, calls=args.calls,
                     repeat=args.repeat, profile=args.profile, links=args.links,
                     qdevice=args.qdevice, transient=args.transient)  # fmt: skip
    return drill(case, keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
