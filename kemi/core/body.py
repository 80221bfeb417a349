"""Where a SIP message's SDP is when its body is not application/sdp: a multipart body.

RFC 5621 lets a SIP body be multipart/mixed with the SDP as one part: an NG112/NG911 emergency
call carries the caller's location next to it (RFC 6442), a SIP-I/SIP-T trunk the ISUP message.
Kamailio's rtpengine module finds the first application/sdp part of a multipart/mixed body
(RFC 2046 delimiters) and rewrites that part in place, so such an SDP goes through the VIP's
rtpengine like any other; the shell checks that part's bounds (kemi.core.sdp) first. An SDP
the module would not find (another multipart kind, a nested multipart, a body without its
boundary) must not pass by the relay: UNREACHABLE, which the caller refuses (488).
"""

from __future__ import annotations

import re

SDP_TYPE = "application/sdp"
MIXED = "multipart/mixed"
UNREACHABLE = ""  # an SDP is in the body, but not where rtpengine's module looks for one
_BOUNDARY = re.compile(r"""(?i);\s*boundary\s*=\s*(?:"([^"]+)"|([^\s;"]+))""")


def sdp_in_body(content_type: str, body: str) -> str | None:
    """The SDP of a body whose Content-Type (`content_type`, the header's value) is not
    application/sdp: the first application/sdp part of a multipart/mixed body; UNREACHABLE for
    an SDP elsewhere in a multipart body; None when the body carries no SDP."""
    media = content_type.partition(";")[0].strip().lower()
    if not media.startswith("multipart/"):
        return None  # e.g. application/isup alone: no SDP
    match = _BOUNDARY.search(content_type) if media == MIXED else None
    if match is not None:
        for part_type, content in parts(body, match.group(1) or match.group(2)):
            if part_type == SDP_TYPE:
                return content
    return UNREACHABLE if SDP_TYPE in body.lower() else None


def parts(body: str, boundary: str) -> list[tuple[str, str]]:
    """(media type, content) of each part of a multipart body up to its close delimiter; a
    part without a Content-Type is text/plain (RFC 2046 5.1), one without headers too."""
    found = []
    delimiter = re.compile(r"\r?\n--" + re.escape(boundary))
    pieces = delimiter.split("\n" + body)  # the first delimiter may open the body
    for piece in pieces[1:]:  # pieces[0]: the preamble
        if piece.startswith("--"):
            break  # the close delimiter: the epilogue follows
        _padding, newline, part = piece.partition("\n")
        if not newline:
            continue
        head, content = split_part(part)
        found.append((part_type(head), content))
    return found


def split_part(part: str) -> tuple[str, str]:
    """A part's headers and content (a blank line between; none: headers only)."""
    if part.startswith(("\r\n", "\n")):
        return "", part.split("\n", 1)[1]
    for blank in ("\r\n\r\n", "\n\n"):
        head, sep, content = part.partition(blank)
        if sep:
            return head, content
    return part, ""


def part_type(head: str) -> str:
    """The media type a part's Content-Type (or SIP's compact `c`) names, lowercase."""
    for line in head.replace("\r\n", "\n").split("\n"):
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() in ("content-type", "c"):
            return value.partition(";")[0].strip().lower()
    return "text/plain"
