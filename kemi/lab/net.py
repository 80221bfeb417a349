"""Network namespaces for multi-node tests and the drill: a private switch, one namespace per
node and one for the clients, each with its own addresses. Nothing touches the machine's own
network: the bridge lives in a namespace of its own, veth ends are created directly inside the
namespaces, and destroy() removes every namespace it made (their links go with them).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def lab_ns(name: str) -> str:
    """`name` behind $KEMI_HA_LAB_TAG: two checkouts' suites and drills then run side by side on
    one machine, each in namespaces of its own."""
    return os.environ.get("KEMI_HA_LAB_TAG", "") + name


@dataclass
class Host:
    name: str  # namespace name
    address: str  # its own address on the switch (/24)
    iface: str = "eth0"
    extra: list[str] = field(default_factory=list)  # addresses added later (VIPs)
    links: list[str] = field(default_factory=list)  # its addresses on networks 1, 2, ... (eth1..)


class Lab:
    """A switch namespace with a bridge, and hosts plugged into it."""

    def __init__(self, prefix: str, hosts: Sequence[Host], prefixlen: int = 24) -> None:
        self.prefix = prefix
        self.switch = f"{prefix}-sw"
        self.hosts = {h.name: h for h in hosts}
        self.prefixlen = prefixlen
        self.created: list[str] = []

    def create(self) -> None:
        """Network 0 is the bridge in `<prefix>-sw` (hosts' eth0); network k >= 1, for hosts
        with links, a bridge in `<prefix>-sw<k>` (their eth<k>): separate networks, as for
        redundant Corosync links."""
        try:
            networks = 1 + max((len(h.links) for h in self.hosts.values()), default=0)
            for net in range(networks):
                switch = self.switch_of(net)
                self._add_ns(switch)
                sh("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
                sh("ip", "-n", switch, "link", "set", "br0", "up")
            for i, host in enumerate(self.hosts.values()):
                self._add_ns(host.name)
                sh("ip", "-n", host.name, "link", "set", "lo", "up")
                for net, address in enumerate([host.address, *host.links]):
                    self._plug(host, i, net, address)
                sh("ip", "netns", "exec", host.name, "sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1")
        except BaseException:
            self.destroy()
            raise

    def switch_of(self, net: int) -> str:
        return self.switch if net == 0 else f"{self.switch}{net}"

    def iface_of(self, host: Host, net: int) -> str:
        return host.iface if net == 0 else f"eth{net}"

    def _plug(self, host: Host, index: int, net: int, address: str) -> None:
        switch, iface, port = self.switch_of(net), self.iface_of(host, net), f"p{index}"
        sh("ip", "link", "add", iface, "netns", host.name, "type", "veth",
           "peer", "name", port, "netns", switch)  # fmt: skip
        sh("ip", "-n", switch, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", host.name, "addr", "add", f"{address}/{self.prefixlen}", "dev", iface)
        sh("ip", "-n", host.name, "link", "set", iface, "up")

    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "del", name, check=False)  # a leftover from a killed run
        sh("ip", "netns", "add", name)
        self.created.append(name)

    def destroy(self) -> None:
        for name in reversed(self.created):
            sh("ip", "netns", "del", name, check=False)
        self.created.clear()

    def __enter__(self) -> Lab:
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # ----- hosts behind NAT -------------------------------------------------------------

    def add_behind_nat(self, name: str, address: str, router: str, router_address: str) -> None:
        """A host `name` on a private network of its own (`address`/24, iface eth0) whose
        only way out is `router` (a host of the lab, `router_address` on its iface lan0),
        which masquerades it behind its own address on the switch: a phone behind a NAT box."""
        self._add_ns(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        sh("ip", "link", "add", "eth0", "netns", name, "type", "veth",
           "peer", "name", "lan0", "netns", router)  # fmt: skip
        for ns, iface, addr in ((name, "eth0", address), (router, "lan0", router_address)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", iface)
            sh("ip", "-n", ns, "link", "set", iface, "up")
        sh("ip", "-n", name, "route", "add", "default", "via", router_address)
        sh("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        out = self.hosts[router].iface
        sh("ip", "netns", "exec", router, "iptables", "-t", "nat", "-A", "POSTROUTING",
           "-s", f"{address}/32", "-o", out, "-j", "MASQUERADE")  # fmt: skip

    # ----- VIPs and failures -------------------------------------------------------------

    def add_address(self, host: str, address: str) -> None:
        h = self.hosts[host]
        sh("ip", "-n", h.name, "addr", "add", f"{address}/{self.prefixlen}", "dev", h.iface)
        # Gratuitous ARP so that neighbours stop sending to the old owner at once.
        sh("ip", "netns", "exec", h.name, "arping", "-q", "-U", "-c", "1", "-I", h.iface, address,
           check=False)  # fmt: skip

    def del_address(self, host: str, address: str) -> None:
        h = self.hosts[host]
        sh("ip", "-n", h.name, "addr", "del", f"{address}/{self.prefixlen}", "dev", h.iface,
           check=False)  # fmt: skip

    def link(self, host: str, up: bool, net: int = 0) -> None:
        h = self.hosts[host]
        sh("ip", "-n", h.name, "link", "set", self.iface_of(h, net), "up" if up else "down")

    def partition(self, host: str, other: str, cut: bool) -> None:
        """Lose (or stop losing) every packet between two hosts, links and processes up: a
        broken interconnect. Dropped on arrival in each namespace, so a send succeeds and is
        lost as through a dead switch (dropped on the way out, it fails at once, EPERM)."""
        pair = (self.hosts[host], self.hosts[other])
        for receiver, sender in (pair, pair[::-1]):
            sh("ip", "netns", "exec", receiver.name, "iptables", "-I" if cut else "-D", "INPUT",
               "-s", sender.address, "-j", "DROP")  # fmt: skip

    def links(self, host: str, up: bool) -> None:
        """Every interface of the host: a power cut or a pulled set of cables."""
        for net in range(1 + len(self.hosts[host].links)):
            self.link(host, up, net)
