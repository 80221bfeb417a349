"""kemi.core.sdp: what may be sent to rtpengine, table-driven."""

from __future__ import annotations

import pytest

from kemi.core.policy import SdpLimits
from kemi.core.sdp import sdp_refusal

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
