"""kemi.core.body: the SDP of a multipart body, where rtpengine's module finds it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kemi.core.body import UNREACHABLE, parts, sdp_in_body

SDP = (
    "v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
    "m=audio 4 RTP/AVP 8\r\n"
)
PIDF = '<?xml version="1.0"?>\r\n<presence entity="pres:a@example.com"/>\r\n'


def multipart(boundary: str, *parts: tuple[str, str], nl: str = "\r\n") -> str:
    body = "".join(f"--{boundary}{nl}{head}{nl}{nl}{content}{nl}" for head, content in parts)
    return f"{body}--{boundary}--{nl}"


@pytest.mark.parametrize(
    ("content_type", "body", "expected"),
    [
        # NG112: the offer first, then the location; or the location first
        ("multipart/mixed;boundary=x", multipart("x", ("Content-Type: application/sdp", SDP),
                                                 ("Content-Type: application/pidf+xml", PIDF)),
         SDP),
        ('Multipart/Mixed; Boundary="a b"', multipart("a b", ("Content-Type: application/pidf+xml",
                                                               PIDF),
                                                       ("content-type: Application/SDP", SDP)),
         SDP),
        # a preamble, a part with two headers, SIP's compact form, bare LF line ends
        ("multipart/mixed;boundary=x", "preamble\r\n" + multipart(
            "x", ("Content-ID: <a@b>\r\nc: application/sdp;charset=utf-8", SDP)), SDP),
        ("multipart/mixed;boundary=x",
         multipart("x", ("Content-Type: application/sdp", SDP.replace("\r\n", "\n")), nl="\n"),
         SDP.replace("\r\n", "\n")),
        # no SDP in the body: none to relay (SIP-I's ISUP alone, an empty multipart)
        ("multipart/mixed;boundary=x", multipart("x", ("Content-Type: application/isup",
                                                       "\\x01\\x00")), None),
        ("multipart/mixed;boundary=x", "", None),
        ("application/isup", "application/sdp", None),  # not multipart: not ours to look into
        ("", SDP, None),
        # an SDP rtpengine's module would not find: another kind, nested, no boundary, after
        # the close delimiter, in a part without headers (text/plain)
        ("multipart/alternative;boundary=x", multipart("x", ("Content-Type: application/sdp",
                                                             SDP)), UNREACHABLE),
        ("multipart/mixed;boundary=x", multipart(
            "x", ("Content-Type: multipart/mixed;boundary=y",
                  multipart("y", ("Content-Type: application/sdp", SDP)))), UNREACHABLE),
        ("multipart/mixed", multipart("x", ("Content-Type: application/sdp", SDP)), UNREACHABLE),
        ("multipart/mixed;boundary=x", multipart("x") + multipart(
            "x", ("Content-Type: application/sdp", SDP)), UNREACHABLE),
        ("multipart/mixed;boundary=x", "--x\r\n\r\napplication/sdp\r\n--x--\r\n", UNREACHABLE),
    ],
    ids=["sdp-first", "sdp-second-quoted-boundary", "preamble-compact-form", "lf", "isup-only",
         "empty", "not-multipart", "no-content-type", "alternative", "nested", "no-boundary",
         "after-close", "headerless-part"],
)  # fmt: skip
def test_sdp_in_body(content_type: str, body: str, expected: str | None) -> None:
    assert sdp_in_body(content_type, body) == expected


def test_parts_keep_their_content_whole() -> None:
    body = multipart("x", ("Content-Type: application/isup", "a\r\n--not-the-boundary\r\nb"),
                     ("Content-Type: text/plain", ""))  # fmt: skip
    assert parts(body, "x") == [("application/isup", "a\r\n--not-the-boundary\r\nb"),
                                ("text/plain", "")]  # fmt: skip


TYPES = st.sampled_from(["application/sdp", "application/pidf+xml", "application/isup",
                         "multipart/mixed;boundary=x", "text/plain", ""])  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(["multipart/mixed", "multipart/related", "application/isup"]),
    heads=st.lists(TYPES, max_size=4),
    noise=st.text(max_size=30),
)
def test_an_sdp_in_a_multipart_body_is_never_missed(
    kind: str, heads: list[str], noise: str
) -> None:
    """Whenever a multipart body mentions application/sdp, the answer is its SDP part or
    UNREACHABLE (refused): never None, which would relay an SDP past rtpengine."""
    body = multipart("x", *((f"Content-Type: {head}" if head else "", noise) for head in heads))
    found = sdp_in_body(f"{kind};boundary=x", body)
    if kind.startswith("multipart/") and "application/sdp" in body.lower():
        assert found is not None
    if found:
        assert found in body
