"""Is an address local to this host (its network namespace) right now?

The sweep (kemi.shell.hygiene) acts only on calls whose VIP this node holds: the node with the
VIP is the one whose rtpengine relays the media (a hot standby's counters stand still) and the
one the endpoints reach. Pacemaker moves VIPs with `ip addr`, so the kernel's local routes are
the truth (`ip_nonlocal_bind`, set on cluster nodes, makes a bind test useless). They are read
from /proc (the namespace of the reading process), never by running `ip`: a fork from a
Kamailio process showed up as extra processes in Kamailio's own process list (core.psx).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
FIB_TRIE = Path("/proc/net/fib_trie")
IF_INET6 = Path("/proc/net/if_inet6")


def local_networks(fib_trie: str, if_inet6: str = "") -> list[Network]:
    """The `host LOCAL` entries of /proc/net/fib_trie (an address line, then `/N host LOCAL`)
    and the addresses of /proc/net/if_inet6."""
    out: list[Network] = []
    address = ""
    for line in fib_trie.splitlines():
        text = line.strip()
        if text.startswith("|--"):
            address = text[3:].strip()
        elif text.startswith("/") and text.endswith("host LOCAL") and address:
            try:
                out.append(ipaddress.ip_network(f"{address}{text.split()[0]}", strict=False))
            except ValueError:
                continue
    for line in if_inet6.splitlines():
        parts = line.split()
        if parts and len(parts[0]) == 32:
            try:
                out.append(ipaddress.ip_network(int(parts[0], 16).to_bytes(16, "big")))
            except ValueError:
                continue
    return out


def held(address: str, networks: list[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks if net.version == ip.version)


def current_local_networks() -> list[Network]:
    six = IF_INET6.read_text() if IF_INET6.exists() else ""
    return local_networks(FIB_TRIE.read_text(), six)
