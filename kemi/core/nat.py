"""NAT traversal and connection reuse: which Contact fix and which media flags a message gets.

Rules (Kamailio's default configuration, its NATDETECT and NATMANAGE routes, chosen per tenant
by the policy's `nat`):
1. every request gets `force_rport()`: replies go back to the address and port it came from;
2. a sender is behind NAT when the call's mode is `always`, or `detect` and nathelper's
   `nat_uac_test` says so (REQUEST_TESTS for requests, REPLY_TESTS for replies; `never`:
   never). (Not off/force: YAML reads a bare off as false.)
3. the Contact of a sender behind NAT, and of any sender over a connection (TCP, TLS: a new
   connection towards it would not reach it), is fixed only when that sender is the first hop
   (one Via: the Contact is its own): an alias (`set_contact_alias`) that WITHINDLG turns back
   into the destination (`handle_ruri_alias`), or, for `contact: rewrite` over UDP, the
   source address written into it (`fix_nated_contact`);
4. the SDP of a sender behind NAT goes to rtpengine with NAT_MEDIA_FLAGS: media to and from
   the address its SIP came from, learnt from its first packets (symmetric), the SDP's
   addresses replaced, and never `trust-address`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# nathelper nat_uac_test flags: 1 Contact holds an RFC 1918/6598 address, 2 the top Via's
# address is not the source address, 16 the top Via's port is not the source port.
REQUEST_TESTS = 1 | 2 | 16
# A reply's top Via is ours: only its Contact tells.
REPLY_TESTS = 1
NAT_MEDIA_FLAGS = ("SIP-source-address", "symmetric", "replace-origin",
                   "replace-session-connection")  # fmt: skip
# Flags that would undo NAT_MEDIA_FLAGS: refused by the policy check for a tenant with NAT.
CONFLICTING_FLAGS = frozenset({"trust-address", "asymmetric"})
CONNECTION_TRANSPORTS = frozenset({"tcp", "tls", "ws", "wss"})


class ContactFix(Enum):
    NONE = "none"
    ALIAS = "alias"  # set_contact_alias()
    REWRITE = "rewrite"  # fix_nated_contact()


@dataclass(frozen=True, slots=True)
class Nat:
    """The NAT handling of a call, chosen by its tenant; kept in the dialog as `encoded`."""

    mode: str = "never"  # never | detect | always
    contact: str = "alias"  # alias | rewrite

    @property
    def encoded(self) -> str:
        return f"{self.mode}/{self.contact}"

    @property
    def enabled(self) -> bool:
        """Anything to keep in the dialog (mode never: nothing, the default)."""
        return self.mode != "never"

    @property
    def needs_test(self) -> bool:
        """Only `detect` asks nathelper (one call per message)."""
        return self.mode == "detect"


NAT_OFF = Nat()
MODES, CONTACT_FIXES = ("never", "detect", "always"), ("alias", "rewrite")  # as in NatSpec
_MODES = {f"{m}/{c}": Nat(m, c) for m in MODES for c in CONTACT_FIXES}


def decode(text: str) -> Nat:
    """A dialog's `encoded` value back (anything else, e.g. a dialog of an older policy: never)."""
    return _MODES.get(text, NAT_OFF)


def behind_nat(nat: Nat, detected: bool) -> bool:
    """Rule 2; `detected` is nat_uac_test's answer (False when it was not asked)."""
    return nat.mode == "always" or (nat.mode == "detect" and detected)


def contact_fix(nat: Nat, nated: bool, transport: str) -> ContactFix:
    """Rule 3 for the sender of this message (`transport`: $pr, lowercase); the shell applies
    it only when the sender is the first hop."""
    connection = transport in CONNECTION_TRANSPORTS
    if nated and not connection and nat.contact == "rewrite":
        return ContactFix.REWRITE
    if nated or connection:
        return ContactFix.ALIAS
    return ContactFix.NONE


# The rules above as tables, derived from them at import, for the hot path (a dict lookup
# where a Kamailio worker would pay a Python call per message: issue 18).
BY_ENCODED = _MODES  # Nat.encoded -> Nat (decode() without the call)
BEHIND_NAT = {(m, d): behind_nat(Nat(m), d) for m in MODES for d in (False, True)}
CONTACT_FIX = {
    (contact, nated, connection): contact_fix(Nat("never", contact), nated,
                                              "tcp" if connection else "udp")
    for contact in CONTACT_FIXES for nated in (False, True) for connection in (False, True)
}  # fmt: skip


def with_nat_flags(flags: str) -> str:
    """Rule 4: `flags` (a VIP's and tenant's) with NAT_MEDIA_FLAGS, none twice. At load time."""
    words = flags.split()
    return " ".join([*words, *(f for f in NAT_MEDIA_FLAGS if f not in words)])


def uri_transport(uri: str) -> str:
    """The transport a request to `uri` uses (RFC 3263 without DNS): its `transport`
    parameter, else tls for sips:, else udp. Lowercase."""
    scheme, _, rest = uri.partition(":")
    for param in rest.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "transport" and value:
            return value.strip().lower()
    return "tls" if scheme.strip().lower() == "sips" else "udp"


def listen_ports(sip_port: int, tls_port: int) -> dict[str, int]:
    """The node's SIP port per transport (kemi-ha-node.cfg listens on these on every VIP)."""
    return {"udp": sip_port, "tcp": sip_port, "tls": tls_port}


def send_socket(transport: str, local_address: str, ports: dict[str, int]) -> str | None:
    """The socket a request leaves from: the VIP it came in on, with the next hop's transport
    (`ports`: the node's port per transport). None for a transport we do not listen on."""
    port = ports.get(transport)
    if port is None:
        return None
    if ":" in local_address:
        local_address = f"[{local_address}]"
    return f"{transport}:{local_address}:{port}"
