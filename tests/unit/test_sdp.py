"""kemi.core.sdp: what may be sent to rtpengine, table-driven."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kemi.core.policy import SdpLimits
from kemi.core.sdp import accept_pattern, refusal_by_lines, sdp_refusal

HEAD = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n"
AUDIO = "m=audio 4000 RTP/AVP 8\r\n"
LIMITS = SdpLimits(max_streams=4, max_bytes=1024)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (HEAD + "c=IN IP4 192.0.2.1\r\nt=0 0\r\n" + AUDIO, None),
        (HEAD + "t=0 0\r\n" + AUDIO + "c=IN IP4 192.0.2.1\r\n", None),  # c= per stream
        (HEAD + "c=IN IP4 192.0.2.1\r\n" + AUDIO.replace("4000", "4000/2"), None),
        (HEAD.replace("\r\n", "\n") + "c=IN IP4 192.0.2.1\n" + AUDIO, None),  # bare LF
        ("", "sdp_malformed"),
        ("hello world", "sdp_malformed"),
        (HEAD + "c=IN IP4 192.0.2.1\r\nt=0 0\r\n", "sdp_no_media"),
        (HEAD + "t=0 0\r\n" + AUDIO, "sdp_no_connection"),
        (HEAD + "t=0 0\r\n" + AUDIO + AUDIO + "c=IN IP4 192.0.2.1\r\n", "sdp_no_connection"),
        (HEAD + "c=IN IP4 192.0.2.1\r\nm=audio port RTP/AVP 8\r\n", "sdp_malformed"),
        (HEAD + "c=IN IP4 192.0.2.1\r\nm=audio 70000 RTP/AVP 8\r\n", "sdp_malformed"),
        (HEAD + "c=IN IP4 192.0.2.1\r\nm=audio 4000\r\n", "sdp_malformed"),
        (HEAD + "c=IN IP4 192.0.2.1\r\ngarbage line\r\n" + AUDIO, "sdp_malformed"),
        (HEAD + "c=IN IP4 192.0.2.1\r\n" + AUDIO * 5, "sdp_too_many_streams"),
        (HEAD + "c=IN IP6 2001:db8::1\r\n" + AUDIO, None),
        (HEAD + "c=IN IP4 not.an.address\r\n" + AUDIO, "sdp_bad_connection"),
        (HEAD + "c=IN IP4 2001:db8::1\r\n" + AUDIO, "sdp_bad_connection"),
        (HEAD + "c=IN XX 192.0.2.1\r\n" + AUDIO, "sdp_bad_connection"),
        (HEAD + "c=IN IP4 192.0.2.1\r\n" + AUDIO + "a=x\r\n" * 300, "sdp_too_large"),
    ],
)
def test_sdp_refusal(body: str, why: str | None) -> None:
    refusal = sdp_refusal(body, LIMITS)
    if why is None:
        assert refusal is None
    else:
        assert refusal is not None and (refusal.code, refusal.why) == (488, why)


@pytest.mark.parametrize("where", ["before", "inside"])
def test_a_blank_line_is_malformed(where: str) -> None:
    """RFC 4566 has no blank line: one before `v=` (found by hypothesis) or between lines is
    refused; the line end after the last line is not a blank line."""
    good = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n"
    media = "m=audio 4000 RTP/AVP 0\r\n"
    body = "\r\n" + good + media if where == "before" else good + "\r\n" + media
    refused = sdp_refusal(body, SdpLimits())
    assert refused is not None and refused.why == "sdp_malformed"
    assert sdp_refusal(good + media, SdpLimits()) is None


# ----- the fast path (issue 18) answers what the line-by-line checks answer -----------------

LINE = st.one_of(
    st.sampled_from(["v=0", "o=- 1 1 IN IP4 192.0.2.1", "s=-", "t=0 0", "a=rtpmap:8 PCMA/8000",
                     "m=audio 4000 RTP/AVP 8", "m=video 4002/2 RTP/AVP 96", "m=audio x RTP 8",
                     "c=IN IP4 192.0.2.1", "c=IN IP4 192.0.2.1/127", "c=IN IP6 ::1",
                     "c=IN IP4 01.2.3.4", "c=IN IP4 256.1.1.1", "c=IN IP6 192.0.2.1",
                     "c=IN IP4 ::1", "é=x", "²=x", "=x", "x", "", "\r"]),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from("mcvaboéZ1_"), st.text(max_size=24)),
    st.text(max_size=20),
)  # fmt: skip
ADDRESS = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[0-9]{1,4}(\.[0-9]{1,4}){0,4}", fullmatch=True),
    st.text(max_size=15),
).filter(lambda a: len(a.split()) == 1 and a == a.strip() and "/" not in a)


@settings(max_examples=800, deadline=None)
@given(lines=st.lists(LINE, max_size=12), sep=st.sampled_from(["\r\n", "\n"]),
       tail=st.sampled_from(["", "\r\n", "\n\n"]))  # fmt: skip
def test_fast_path_answers_what_the_line_by_line_checks_answer(
    lines: list[str], sep: str, tail: str
) -> None:
    body = sep.join(lines) + tail
    got = sdp_refusal(body, LIMITS)
    if len(body) > LIMITS.max_bytes:
        assert got is not None and got.why == "sdp_too_large"
        return
    text = body.replace("\r\n", "\n").rstrip("\n")
    assert got == refusal_by_lines(text.split("\n"), LIMITS)


@given(ADDRESS, st.sampled_from(["IP4", "IP6"]))
def test_connection_address_check_is_ipaddress(address: str, family: str) -> None:
    try:
        expected = ipaddress.ip_address(address).version == int(family[2])
    except ValueError:
        expected = False
    body = f"v=0\nc=IN {family} {address}\nm=audio 4000 RTP/AVP 8"
    assert (sdp_refusal(body, LIMITS) is None) == expected


# ----- the one-regex accept (issue 18) accepts only what the checks accept -----------------

GOOD_IPV4 = st.ip_addresses(v=4).map(str)
ODD_IPV4 = st.builds(lambda *o: ".".join(o), *[st.sampled_from(["0", "255", "256", "01", "300",
                                                                 "2555", "00"])] * 4)  # fmt: skip
GOOD_PORT = st.integers(0, 65535).map(str)
ODD_PORT = st.sampled_from(["65536", "70000", "99999", "004000", "4000/2", "4000/x", "x",
                            "\u00b2", "4000/", "065535"])  # fmt: skip
OTHER = st.sampled_from(["o=- 1 1 IN IP4 192.0.2.1", "s=-", "t=0 0", "a=rtpmap:8 PCMA/8000",
                         "v=0", "a=sendrecv", "b=AS:64"])  # fmt: skip
ODD = st.sampled_from(["c=IN IP6 ::1", "m=audio  4000 RTP/AVP 0", "c=IN  IP4 192.0.2.1", "x=",
                       "\u00e9=x", "a=x\ry", "", "m=audio 4000 RTP/AVP 0 ", "c=IN IP4 1.2.3.4 ",
                       "m=audio 4000 RTP/AVP", "c=IN IP4", "m=audio 4000 RTP/AVP 0"])  # fmt: skip


@st.composite
def shaped_sdp(draw: st.DrawFn) -> list[str]:
    """Mostly what the regex is meant to accept (session lines, a c= at session level or per
    stream, streams), now and then with an odd address, port or line for the exact checks."""

    def connection() -> str:
        odd = draw(st.integers(0, 5)) == 0
        suffix = draw(st.sampled_from(["", "", "/127", "/127/3", "/"]))
        return f"c=IN IP4 {draw(ODD_IPV4 if odd else GOOD_IPV4)}{suffix}"

    def media() -> str:
        odd = draw(st.integers(0, 5)) == 0
        formats = draw(st.sampled_from([" 0", " 8", " 0 8 101"]))
        return f"m=audio {draw(ODD_PORT if odd else GOOD_PORT)} RTP/AVP{formats}"

    session_c = draw(st.booleans())
    lines = draw(st.lists(OTHER, max_size=3))
    if session_c:
        lines.insert(draw(st.integers(0, len(lines))), connection())
    for _ in range(draw(st.integers(0, 3))):
        lines.append(media())
        if not session_c or draw(st.booleans()):
            lines.append(connection())
        lines += draw(st.lists(OTHER, max_size=2))
    if draw(st.integers(0, 3)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(ODD))
    return lines


@settings(max_examples=2000, deadline=None)
@given(lines=shaped_sdp(), sep=st.sampled_from(["\r\n", "\n"]),
       tail=st.sampled_from(["", "\r\n", "\n\n"]), streams=st.sampled_from([1, 2, 16]))  # fmt: skip
def test_regex_accept_only_accepts_what_the_checks_accept(
    lines: list[str], sep: str, tail: str, streams: int
) -> None:
    body = sep.join(["v=0", *lines]) + tail
    limits = SdpLimits(max_streams=streams)
    text = body.replace("\r\n", "\n").rstrip("\n")
    exact = refusal_by_lines(text.split("\n"), limits)
    if accept_pattern(streams).fullmatch(body) is not None:
        assert exact is None
    assert sdp_refusal(body, limits) == exact


@pytest.mark.parametrize(
    "body",
    [
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 6000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\n",  # SIPp's
        "v=0\r\no=- 1545997027 1 IN IP4 198.51.100.1\r\ns=tester\r\nt=0 0\r\n"
        "m=audio 30000 RTP/AVP 0 8 101\r\nc=IN IP4 198.51.100.1\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\na=rtcp:30001\r\n"
        "m=video 30002 RTP/AVP 96\r\nc=IN IP4 198.51.100.1\r\na=rtpmap:96 H264/90000\r\n",
    ],
)
def test_common_sdps_take_the_regex(body: str) -> None:
    assert accept_pattern(16).fullmatch(body) is not None
    assert sdp_refusal(body, SdpLimits()) is None
