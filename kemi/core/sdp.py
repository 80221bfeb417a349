"""What may be sent to rtpengine: a bounded, well-formed SDP (RFC 4566), checked before media.

rtpengine answers an SDP it cannot rewrite with an error the rtpengine module reports exactly
like a dead relay, and an SDP with hundreds of m= lines made rtpengine's ng reply slow and
large enough for the module to time out and mark the whole set unavailable. So the shell asks
sdp_refusal() first; a refusal is the caller's fault: 488 (RFC 3261 21.4.26), the relay's
health is not touched and no session is made.

Checks, in order: size (max_bytes), starts with v=, every line is <letter>=<value>, at least
one m= line and at most max_streams, each m= line is `m=<media> <port>[/<n>] <proto> <fmt>...`
with a numeric port, and a connection address (c=IN IP4|IP6 <address>) at session level or in
every stream.
"""

from __future__ import annotations

import ipaddress
import re

from kemi.core.decide import Reject
from kemi.core.policy import SdpLimits

NOT_ACCEPTABLE = 488, "Not Acceptable Here"


def _refuse(why: str) -> Reject:
    return Reject(*NOT_ACCEPTABLE, why=why)


def _media_line_ok(value: str) -> bool:
    parts = value.split()
    if len(parts) < 4:
        return False
    port = parts[1].split("/", 1)
    return all(p.isascii() and p.isdigit() for p in port) and int(port[0]) <= 65535


def _connection_ok(value: str) -> bool:
    parts = value.split()
    if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
        return False
    address = parts[2].split("/", 1)[0]
    if parts[1] == "IP4":  # what ipaddress accepts as IPv4, without its Python per SDP
        return _IPV4.fullmatch(address) is not None
    try:
        return ipaddress.ip_address(address).version == 6
    except ValueError:
        return False


_OCTET = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_TEXT = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_IPV4 = re.compile(_IPV4_TEXT)
# A body whose lines are all <ASCII letter>=<value>, v= first, none blank (normalised to \n):
# the common case, whose m= and c= lines alone need a look (issue 18: a worker pays for every
# line of Python); any other body goes through the exact line-by-line checks.
_PLAIN_SDP = re.compile(r"v=[^\n]*(?:\n[A-Za-z]=[^\n]*)*")
_MEDIA_OR_CONNECTION = re.compile(r"^[mc]=.*$", re.MULTILINE)

# The shapes nearly every SDP has, accepted by one regex (C, one pass, no line of Python):
# ASCII lines, single spaces, a c= with an IPv4 address at session level or in every stream,
# 1..max_streams m= lines with a port of at most 65535. Anything else (IPv6, extra spaces,
# other bytes, a refusal) goes through the checks above: this only ever accepts what they
# accept (tests/unit/test_sdp.py checks it on generated bodies).
# Possessive repeats (`*+`, `++`: Python 3.11) wherever what follows cannot start inside the
# repeat (a line's rest before its line end, lines other than c=/m= before a c= or m=): the
# same matches without the marks backtracking would need (issue 18: ~20 % of the regex's
# time from cold caches, the state a Kamailio worker runs it in). A possessive repeat only
# ever matches less, never more.
_NL = r"\r?\n"
_OTHER = r"[abd-lnoq-zA-Z]=[^\r\n]*+"  # any line but c= and m=
_CONNECTION = rf"c=IN IP4 {_IPV4_TEXT}(?:/[0-9]+)*+"
_PORT = r"(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_MEDIA = rf"m=[!-~]++ {_PORT}(?:/[0-9]+)? [!-~]++(?: [!-~]++)++"
_ANY = rf"(?:{_OTHER}|{_CONNECTION})"


def accept_pattern(max_streams: int) -> re.Pattern[str]:
    """The one-regex accept for `max_streams` (compiled once per value)."""
    pattern = _ACCEPT.get(max_streams)
    if pattern is not None:
        return pattern
    streams = f"{{1,{max_streams}}}"
    # a c= before the first m= (then anywhere), or none there and one in every stream
    session_c = rf"(?:{_NL}{_OTHER})*+{_NL}{_CONNECTION}(?:{_NL}{_ANY})*+"
    session_c += rf"(?:{_NL}{_MEDIA}(?:{_NL}{_ANY})*+){streams}"
    stream_c = rf"(?:{_NL}{_OTHER})*+"
    stream_c += rf"(?:{_NL}{_MEDIA}(?:{_NL}{_OTHER})*+{_NL}{_CONNECTION}(?:{_NL}{_ANY})*+){streams}"
    pattern = re.compile(rf"v=[^\r\n]*+(?:{session_c}|{stream_c})(?:{_NL})*+")
    _ACCEPT[max_streams] = pattern
    return pattern


_ACCEPT: dict[int, re.Pattern[str]] = {}  # max_streams -> its pattern, compiled once


def sdp_refusal(body: str, limits: SdpLimits) -> Reject | None:
    """None when the SDP may go to rtpengine, else the 488 to answer."""
    if len(body) > limits.max_bytes:
        return _refuse("sdp_too_large")
    accept = _ACCEPT.get(limits.max_streams) or accept_pattern(limits.max_streams)
    if accept.fullmatch(body) is not None:
        return None
    # RFC 4566: `v=` first, no blank line (trailing line ends are tolerated)
    text = body.replace("\r\n", "\n").rstrip("\n")
    if _PLAIN_SDP.fullmatch(text) is None:
        return refusal_by_lines(text.split("\n"), limits)
    return _lines_refusal(_MEDIA_OR_CONNECTION.findall(text), limits)


def refusal_by_lines(lines: list[str], limits: SdpLimits) -> Reject | None:
    """sdp_refusal line by line, for any body (its fast path must give the same answer)."""
    if not lines[0].startswith("v=") or "" in lines:
        return _refuse("sdp_malformed")
    return _lines_refusal(lines, limits)


def _lines_refusal(lines: list[str], limits: SdpLimits) -> Reject | None:
    """Every line <letter>=<value>; the streams (m=) and their connections (c=), in order."""
    streams = 0
    session_c = False
    stream_c = True  # every stream seen so far has a c= (or the session has one)
    for line in lines:
        if len(line) < 2 or line[1] != "=" or not line[0].isalpha():
            return _refuse("sdp_malformed")
        kind = line[0]
        if kind == "m":
            if not stream_c:
                return _refuse("sdp_no_connection")
            streams += 1
            if streams > limits.max_streams:
                return _refuse("sdp_too_many_streams")
            if not _media_line_ok(line[2:]):
                return _refuse("sdp_malformed")
            stream_c = session_c
        elif kind == "c":
            if not _connection_ok(line[2:]):
                return _refuse("sdp_bad_connection")
            if streams == 0:
                session_c = True
            stream_c = True
    if streams == 0:
        return _refuse("sdp_no_media")
    if not stream_c:
        return _refuse("sdp_no_connection")
    return None
