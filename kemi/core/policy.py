"""The compiled policy: immutable, plain Python types, built once at load time.

Rules:
- every VIP owns exactly one rtpengine set; set ids are 1-based positions in `vips`, and the
  same numbering is rendered into Kamailio's `rtpengine_sock` modparams (kemi.ops.nodecfg);
- a route holds an ordered list of destinations: the first is tried, the next ones only on
  failover (408 or 5xx);
- lookups used per message are dicts prepared here, never list scans.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_MEDIA_FLAGS = "replace-origin replace-session-connection ICE=remove"


@dataclass(frozen=True, slots=True)
class Vip:
    """A cluster address: SIP is received on it, its media goes to its own rtpengine set."""

    address: str
    set_id: int
    rtpengine: tuple[str, ...]
    media_flags: str = DEFAULT_MEDIA_FLAGS


@dataclass(frozen=True, slots=True)
class Route:
    """Where initial INVITEs go: destinations in failover order."""

    name: str
    destinations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    version: str
    vips: tuple[Vip, ...]
    default_route: Route
    vip_by_address: Mapping[str, Vip] = field(default_factory=lambda: MappingProxyType({}))

    @staticmethod
    def build(
        version: str,
        vips: tuple[Vip, ...],
        default_route: Route,
    ) -> Policy:
        """The only constructor callers use: it prepares the per-message lookup tables."""
        index = MappingProxyType({vip.address: vip for vip in vips})
        return Policy(version=version, vips=vips, default_route=default_route, vip_by_address=index)
