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
    limit: LimitSpec | None = doc("this tenant's channel limit")
    calls: CallsSpec | None = doc("media timeout and maximum duration of this tenant's calls")


@dataclass(frozen=True, slots=True)
class TrunkSpec:
    """A SIP peer carrying calls, recognised by its source networks."""

    name: str = required("trunk name")
    sources: list[str] = required("source networks (CIDR) of this trunk")
    tenant: str | None = doc("the tenant whose calls this trunk carries")
    limit: LimitSpec | None = doc("this trunk's channel limit")


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """Where matching initial INVITEs go, in failover order."""

    name: str = required("route name (logs, metrics)")
    destinations: list[str] = required("SIP URIs tried in order; next one on 408 or 5xx")
    prefix: str = doc("R-URI user prefix; the longest matching prefix wins", "")
    domain: str | None = doc("R-URI domain this route applies to")
    tenant: str | None = doc("tenant this route applies to")


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
    calls: CallsSpec = doc(
        "media timeout and maximum duration of calls (tenants may override)", factory=CallsSpec
    )
