"""The policy document as operators write it: one dataclass per YAML mapping.

These classes are the single model: kemi.core.structure builds them from YAML data (unknown
keys, wrong types and missing fields are errors), kemi.core.schema derives the JSON Schema
committed in policies/, and kemi.core.compile turns a PolicySpec into the runtime Policy.
A field's `doc` metadata is its description in the schema and in docs/policies.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


def doc(text: str, default: Any = None, factory: Any = None) -> Any:
    """A dataclass field with a description (and a default, if it has one)."""
    if factory is not None:
        return field(default_factory=factory, metadata={"doc": text})
    if default is None:
        return field(default=None, metadata={"doc": text})
    return field(default=default, metadata={"doc": text})


def required(text: str) -> Any:
    return field(metadata={"doc": text})


@dataclass(frozen=True, slots=True)
class MediaSpec:
    """rtpengine flags for calls on a VIP or of a tenant (a tenant's fields override its VIP's)."""

    ice: Literal["remove", "force", "keep"] | None = doc(
        "ICE candidates: remove them (ICE=remove), force rtpengine's own (ICE=force) or keep them"
    )
    transport: Literal["RTP/AVP", "RTP/SAVP", "RTP/AVPF", "RTP/SAVPF"] | None = doc(
        "rewrite the transport protocol of the media (e.g. RTP/AVP to terminate SRTP)"
    )
    sdes: Literal["off", "nonew", "pad", "static", "prefer"] | None = doc(
        "SDES handling for SRTP offers (rtpengine flag SDES-<value>)"
    )
    dtmf: Literal["passthrough", "inject"] | None = doc(
        "DTMF: relay as it comes, or let rtpengine inject RFC 4733 events (inject-DTMF)"
    )
    codec_mask: list[str] | None = doc("codecs hidden from the callee (codec-mask-<name>)")
    codec_strip: list[str] | None = doc("codecs removed from the SDP (codec-strip-<name>)")
    codec_transcode: list[str] | None = doc("codecs rtpengine offers by transcoding")
    replace: list[Literal["origin", "session-connection"]] | None = doc(
        "SDP fields rewritten with rtpengine's address"
    )
    extra: list[str] | None = doc("further rtpengine flags, passed as they are")


@dataclass(frozen=True, slots=True)
class NatSpec:
    """NAT traversal for endpoints behind NAT (phones, PBXs): their Contact and their media."""

    mode: Literal["never", "detect", "always"] = doc(
        "never: no NAT handling; detect: a sender is behind NAT when nathelper's nat_uac_test "
        "says so (requests 19: private Contact, Via address or port not the source; replies "
        "1: private Contact); always: every sender of the call is treated as behind NAT",
        "never",
    )
    contact: Literal["alias", "rewrite"] = doc(
        "how a NATed sender's Contact is fixed: alias (set_contact_alias; in-dialog requests "
        "to it are sent back to the address and port it came from, handle_ruri_alias) or "
        "rewrite (fix_nated_contact: the Contact becomes the source address; UDP only)",
        "alias",
    )


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """A channel limit: concurrent calls counted cluster-wide from replicated dialogs."""

    max: int = required("maximum concurrent calls (0 refuses every call)")
    code: Literal[486, 503] = doc("SIP code of the refusal", 503)
    reason: str = doc("SIP reason phrase of the refusal", "Channel Limit Reached")
    retry_after: int | None = doc("seconds for a Retry-After header (503 only)")


@dataclass(frozen=True, slots=True)
class SdpSpec:
    """Bounds on what is sent to rtpengine; an SDP beyond them is answered 488."""

    max_streams: int = doc("most m= lines in one SDP", 16)
    max_bytes: int = doc("largest SDP body, in bytes", 16384)


# User-Agent substrings of well-known SIP scanners and attack tools (SIPVicious and its forks,
# sipcli, SIPScan, VaxSIP, iWar, sundayddr, smap, ...), matched case-insensitively.
SCANNER_USER_AGENTS = [
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipscan",
    "vaxsipuseragent",
    "iwar",
    "sundayddr",
    "smap",
    "pplsip",
    "sipsak-scan",
    "voip-scan",
    "sipptk",
]


@dataclass(frozen=True, slots=True)
class FloodSpec:
    """Flood and scanner protection: a source sending too fast, or a scanner, is banned on every
    node (the ban list is replicated over DMQ) for `ban_s`. Trusted peers, trunks, DMQ peers,
    loopback and `exempt` networks are never counted, refused nor banned."""

    enabled: bool = doc("count requests per source and ban floods and scanners", True)
    max_requests: int = doc(
        "most requests (any method) one source may send per window; the next one bans it", 100
    )
    window_s: int = doc("counting window, in seconds", 1)
    ban_s: int = doc("how long a ban lasts, in seconds (1..86400), cluster-wide", 600)
    exempt: list[str] = doc(
        "networks (CIDR) never counted nor banned, besides trusted_peers and trunks",
        factory=list,
    )
    scanner_user_agents: list[str] = doc(
        "User-Agent substrings (case-insensitive) of SIP scanners: their requests are dropped",
        factory=lambda: list(SCANNER_USER_AGENTS),
    )
    ban_scanners: bool = doc("a scanner's request also bans its source for ban_s", True)


@dataclass(frozen=True, slots=True)
class CallsSpec:
    """Call hygiene: dead calls released, long calls ended (BYE both ways, CDR with the reason).

    Policy-wide under `calls`, overridden per tenant (a field left out keeps the policy's)."""

    media_timeout: int | None = doc(
        "seconds without RTP in either direction before the call is ended (CDR reason "
        "media_timeout); 0 turns it off"
    )
    max_duration: int | None = doc(
        "longest answered call in seconds, then it is ended (CDR reason max_duration); 0: no limit"
    )


@dataclass(frozen=True, slots=True)
class VipSpec:
    """A cluster address: SIP and media of calls on it, served by its own rtpengine set."""

    address: str = required("the VIP: every node listens on it, one rtpengine set serves it")
    rtpengine: list[str] = required(
        "ng sockets of this VIP's rtpengine set, e.g. udp:10.0.0.1:2223"
    )
    media: MediaSpec | None = doc("rtpengine flags for calls on this VIP")


@dataclass(frozen=True, slots=True)
class TenantSpec:
    """A customer: its calls are recognised by source network or request domain."""

    name: str = required("tenant name, used by routes and limits")
    sources: list[str] = doc("source networks (CIDR) of this tenant's calls", factory=list)
    domains: list[str] = doc("request domains (R-URI host) of this tenant", factory=list)
    media: MediaSpec | None = doc("rtpengine flags overriding the VIP's for this tenant")
    nat: NatSpec | None = doc("NAT traversal for this tenant's calls (default: the policy's `nat`)")
    limit: LimitSpec | None = doc("this tenant's channel limit")
    calls: CallsSpec | None = doc("media timeout and maximum duration of this tenant's calls")


@dataclass(frozen=True, slots=True)
class RewriteSpec:
    """Number rewriting of a trunk's or a route's calls, on the R-URI user in this order:
    `strip`, E.164 normalisation, `plus`, `prefix`; P-Asserted-Identity and Diversion as told."""

    e164: bool = doc(
        "normalise to +E.164: international_prefix -> '+', national_prefix -> '+'country_code",
        False,
    )
    country_code: str | None = doc("country calling code for national numbers, e.g. '49'")
    national_prefix: str = doc("trunk prefix of national numbers", "0")
    international_prefix: str = doc("prefix of international numbers", "00")
    plus: Literal["keep", "strip"] = doc("after normalisation: keep or drop a leading '+'", "keep")
    strip: int = doc("characters removed from the start of the R-URI user (first)", 0)
    prefix: str = doc("prepended to the R-URI user (last)", "")
    pai: Literal["keep", "remove", "normalise"] = doc(
        "P-Asserted-Identity: keep it, remove it, or normalise its number (e164 and plus)", "keep"
    )
    diversion: Literal["keep", "remove", "normalise"] = doc(
        "Diversion: keep it, remove it, or normalise its number (e164 and plus)", "keep"
    )


@dataclass(frozen=True, slots=True)
class TrunkSpec:
    """A SIP peer carrying calls, recognised by its source networks."""

    name: str = required("trunk name")
    sources: list[str] = required("source networks (CIDR) of this trunk")
    tenant: str | None = doc("the tenant whose calls this trunk carries")
    limit: LimitSpec | None = doc("this trunk's channel limit")
    rewrite: RewriteSpec | None = doc(
        "numbers of calls from this trunk, rewritten before the route is chosen"
    )


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    """One gateway of a set, probed with OPTIONS by Kamailio's dispatcher on every node."""

    uri: str = required("SIP URI of the gateway, e.g. sip:10.0.0.1:5060")
    priority: int = doc(
        "higher first: a lower priority gets calls only when every gateway above is down or failed",
        0,
    )
    weight: int = doc("share of calls among the gateways of its priority (1-100)", 1)


@dataclass(frozen=True, slots=True)
class GatewaySetSpec:
    """Gateways a route spreads its calls over: by priority, then weight; dead ones skipped."""

    name: str = required("gateway set name, used by routes, status and metrics")
    gateways: list[GatewaySpec] = required("the gateways of this set")
    algorithm: Literal["relative-weight", "weight"] = doc(
        "dispatcher algorithm within a priority: relative-weight (11: shares among the gateways "
        "up) or weight (9: a dead gateway's share goes to the next one)",
        "relative-weight",
    )
    retry_after: int = doc("seconds in the Retry-After of the 503 when no gateway is up", 30)
    timeout_ms: int | None = doc(
        "no reply at all from a gateway within this: next gateway, and it is marked down "
        "(tm fr_timer of this set's branches; null: kamailio.cfg's 4000)"
    )


@dataclass(frozen=True, slots=True)
class ProbingSpec:
    """How each node probes the gateways (dispatcher modparams: a change needs a restart)."""

    interval: int = doc("seconds between OPTIONS probes (ds_ping_interval)", 10)
    threshold: int = doc("failed probes before a gateway is down (ds_probing_threshold)", 3)
    recover: int = doc("answered probes before it is up again (ds_inactive_threshold)", 1)
    reply_codes: list[str] = doc(
        "replies that count as alive besides 2xx: a code ('404') or a class ('4xx')",
        factory=lambda: ["404", "405", "488", "501"],
    )
    from_uri: str = doc("From of the probes (ds_ping_from)", "sip:kemi-ha@localhost")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """Where matching initial INVITEs go: fixed destinations in order, or a gateway set."""

    name: str = required("route name (logs, metrics)")
    destinations: list[str] = doc(
        "SIP URIs tried in order; next one on 408 or 5xx (or give gateway_set)", factory=list
    )
    gateway_set: str | None = doc("the gateway set this route's calls go to (or destinations)")
    prefix: str = doc("R-URI user prefix; the longest matching prefix wins", "")
    domain: str | None = doc("R-URI domain this route applies to")
    tenant: str | None = doc("tenant this route applies to")
    rewrite: RewriteSpec | None = doc("numbers of this route's calls, rewritten after the lookup")


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A kemi-ha policy file."""

    version: str = required("free text shown by status and metrics, e.g. a date or a commit")
    vips: list[VipSpec] = required("the cluster VIPs, in rtpengine set order (set 1 first)")
    routes: list[RouteSpec] = required("where initial INVITEs go")
    tenants: list[TenantSpec] = doc("tenants, by source network or request domain", factory=list)
    trunks: list[TrunkSpec] = doc("trunks, by source network", factory=list)
    global_limit: LimitSpec | None = doc("the cluster-wide channel limit")
    trusted_peers: list[str] = doc(
        "networks (CIDR) allowed to send initial INVITEs besides trunks; others get 403",
        factory=lambda: ["127.0.0.0/8"],
    )
    dmq_peers: list[str] = doc("SIP URIs of the other nodes' DMQ listeners", factory=list)
    sdp: SdpSpec = doc("bounds on SDP bodies sent to rtpengine (488 beyond)", factory=SdpSpec)
    floods: FloodSpec = doc(
        "flood and scanner bans, shared by every node (docs/security.md)", factory=FloodSpec
    )
    nat: NatSpec = doc("NAT traversal for calls of no tenant, and of tenants without `nat`",
                       factory=NatSpec)  # fmt: skip
    gateway_sets: list[GatewaySetSpec] = doc(
        "health-probed gateways routes point to (Kamailio dispatcher)", factory=list
    )
    probing: ProbingSpec = doc("OPTIONS probing of the gateways, per node", factory=ProbingSpec)
    calls: CallsSpec = doc(
        "media timeout and maximum duration of calls (tenants may override)", factory=CallsSpec
    )
