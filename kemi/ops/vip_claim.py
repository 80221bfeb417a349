"""The fast-takeover watcher of a cluster node (kemi.core.vip_claim decides; this acts).

Runs as threads of `kemi-ha run` (root, on every node, alive exactly where the Kamailio clone
runs, with which every VIP is colocated): one reads `corosync-quorumtool -m` (a report per
membership change, within a few ms of Corosync forming it), one refreshes what Pacemaker allows
this node every 2 s (`crm_mon`), one per claim checks that Pacemaker confirmed it.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable

from kemi.core.node_spec import FastTakeoverSpec
from kemi.core.vip_claim import (
    NOT_KNOWN,
    Eligibility,
    Membership,
    confirmation,
    located_on,
    lost_peers,
    parse_eligibility,
    parse_membership,
    quorumtool_blocks,
    vips_to_claim,
)

ELIGIBILITY_EVERY_S = 2.0
CONFIRM_TIMEOUT_S = 30.0  # Pacemaker's transition, its 1 s stall and a slow start included
NOT_RUNNING_GRACE_S = 15.0  # Pacemaker says the VIP runs nowhere for this long: release

# The same gratuitous ARP bursts as ocf:kemi-ha:vip ($1 interface, $2 address).
GARP = 'arping -q -U -c 1 -I "$1" "$2"; sleep 0.2; arping -q -U -c 2 -I "$1" "$2"'

Log = Callable[[str], None]


def run_cmd(argv: list[str], timeout: float = 10.0) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return done.returncode, done.stdout + done.stderr


class VipClaimer:
    """Claims the peer's VIPs at the membership change; Pacemaker confirms or they go."""

    def __init__(self, spec: FastTakeoverSpec, log: Log, run: Callable[..., tuple[int, str]]
                 = run_cmd) -> None:  # fmt: skip
        self.spec = spec
        self.vips = {v.resource: v.address for v in spec.vips}
        self.prefix = {v.address: (v.prefix, v.nic) for v in spec.vips}
        self.log = log
        self.run = run
        self.eligibility = NOT_KNOWN
        self.stopping = threading.Event()
        self.proc: subprocess.Popen[str] | None = None
        self.members: frozenset[str] = frozenset()

    # ----- threads ----------------------------------------------------------------------
    def start(self) -> None:
        for target in (self.watch_membership, self.refresh_eligibility):
            threading.Thread(target=target, name=f"kha-{target.__name__}", daemon=True).start()

    def stop(self) -> None:
        self.stopping.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def refresh_eligibility(self) -> None:
        while not self.stopping.is_set():
            rc, out = self.run(["crm_mon", "-1", "--output-as=xml"])
            self.eligibility = (
                parse_eligibility(out, self.spec.node_name, self.vips)
                if rc == 0
                else Eligibility(False, True, frozenset(), f"crm_mon failed ({rc})")
            )
            self.stopping.wait(ELIGIBILITY_EVERY_S)

    def watch_membership(self) -> None:
        """Follow `corosync-quorumtool -m` (restarted if it exits, e.g. Corosync restarting)."""
        while not self.stopping.is_set():
            try:
                # stdbuf: the tool's stdout is a pipe here, fully buffered without it. Its stdin
                # stays open (it quits on "q" or EOF).
                self.proc = subprocess.Popen(
                    ["stdbuf", "-oL", "corosync-quorumtool", "-m"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                    text=True,
                )  # fmt: skip
            except OSError as exc:
                self.log(f"fast takeover: cannot run corosync-quorumtool: {exc}")
                self.stopping.wait(5)
                continue
            assert self.proc.stdout is not None
            started = time.monotonic()
            before: Membership | None = None
            for block in quorumtool_blocks(self.proc.stdout):
                after = parse_membership(block)
                if after is None:
                    continue
                self.on_membership(before, after)
                before = after
            rc = self.proc.wait()
            if not self.stopping.is_set():
                quick = time.monotonic() - started < 5
                self.log(f"fast takeover: corosync-quorumtool -m exited ({rc}); following the "
                         f"membership again in {5 if quick else 1} s")  # fmt: skip
                self.stopping.wait(5 if quick else 1)

    # ----- decisions and actions ----------------------------------------------------------
    def on_membership(self, before: Membership | None, after: Membership) -> None:
        seen = time.time()
        self.members = after.members
        lost = lost_peers(before, after)
        if not lost:
            return
        claim, why = vips_to_claim(lost, after, self.eligibility, self.vips)
        if not claim:
            self.log(f"fast takeover: {', '.join(sorted(lost))} left; nothing claimed: {why}")
            return
        for rid in claim:
            self.claim(rid, ", ".join(sorted(lost)), seen)

    def claim(self, rid: str, lost: str, seen: float) -> None:
        address = self.vips[rid]
        prefix, nic = self.prefix[address]
        rc, out = self.run(["ip", "addr", "add", f"{address}/{prefix}", "dev", nic], 2.0)
        if rc != 0:
            # The VIP was here already (this node's own): iproute2 says "Address already
            # assigned" (6.x) or "File exists" (older).
            if "already assigned" not in out and "File exists" not in out:
                self.log(f"fast takeover: {rid} {address}: ip addr add failed: {out.strip()}")
            return
        subprocess.Popen(
            ["sh", "-c", GARP, "garp", nic, address],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        now = time.time()
        self.log(f"[{now:.3f}] kemi-ha: fast takeover: {rid} {address} claimed ({lost} left the "
                 f"membership; report read {1000 * (now - seen):.0f} ms earlier); Pacemaker to "
                 "confirm")  # fmt: skip
        threading.Thread(target=self.confirm, args=(rid,), name=f"kha-confirm-{rid}",
                         daemon=True).start()  # fmt: skip

    def confirm(self, rid: str) -> None:
        """Keep the claim once Pacemaker runs the VIP here; release it if Pacemaker runs it on
        another live node or nowhere for long (it decided otherwise: the claim must not outlive
        that). The lost node's stale status does not count."""
        start = time.monotonic()
        nowhere_since: float | None = None
        while not self.stopping.is_set():
            now = time.monotonic()
            rc, out = self.run(["crm_resource", "--locate", "--resource", rid], 5.0)
            nodes = located_on(out) if rc == 0 else []
            state = confirmation(nodes, self.spec.node_name, self.members)
            if state == "confirmed":
                self.log(f"fast takeover: {rid} confirmed by Pacemaker after {now - start:.1f} s")
                return
            if state == "elsewhere":
                self.release(rid, f"Pacemaker runs it on {', '.join(nodes)}")
                return
            nowhere_since = nowhere_since if nowhere_since is not None else now
            if now - nowhere_since > NOT_RUNNING_GRACE_S or now - start > CONFIRM_TIMEOUT_S:
                self.release(rid, f"Pacemaker has not started it here in {now - start:.0f} s")
                return
            self.stopping.wait(0.5)

    def release(self, rid: str, why: str) -> None:
        address = self.vips[rid]
        prefix, nic = self.prefix[address]
        rc, out = self.run(["ip", "addr", "del", f"{address}/{prefix}", "dev", nic], 2.0)
        done = "released" if rc == 0 else f"NOT released ({out.strip()})"
        self.log(f"fast takeover: {rid} {address} {done}: {why}")
