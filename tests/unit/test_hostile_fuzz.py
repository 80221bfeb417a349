"""Property tests of the shell with the strict fake KSR: any bytes in every PV the routes read,
any answer from Kamailio's functions, any SDP body. The routes must never reach their
exception guard, and answer only with the codes the routing defines (never 500 Server
Internal Error)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from kemi.core.policy import SdpLimits
from kemi.core.sdp import sdp_refusal
from tests.unit.test_routes import HAPPY, MULTIPART_BODY, PVS, SDP_BODY, TOKEN, make

# Every string PV a route reads, with values that get a message deeper into the routes.
PLAUSIBLE: dict[str, list[Any]] = {
    "$Ri": ["10.0.0.1", "10.0.0.2"],
    "$si": ["192.0.2.9", "10.0.0.9"],
    "$rm": ["INVITE", "BYE", "ACK", "UPDATE", "POST", "GET"],
    "$rb": [SDP_BODY, MULTIPART_BODY],
    "$cT": ["application/sdp", "multipart/mixed;boundary=b", "multipart/related;boundary=b"],
    "$hu": ["/policy/reload", "/metrics"],
    "$hdr(Authorization)": [f"Bearer {TOKEN}"],
    "$avp(kha_dsts)": ["sip:gw1:5060 sip:gw2:5060"],
    "$avp(kha_tried)": [0, 1],
    "$avp(kha_gws)": ["carriers", None],
    "$avp(kha_level)": [0, 1, 7],
    "$rU": ["1000", "90301234"],
    "$hdr(P-Asserted-Identity)": ["<sip:0301@h>", '"x, y" <tel:0049301>', None],
    "$hdr(Diversion)": ["<sip:0301@h>;reason=user-busy"],
    "$var(kha_n)": [0, 3],
}
STRING_PVS = sorted({*PVS, "$hu", "$rb", "$cT", "$avp(kha_dsts)", "$avp(kha_tried)"} - {"$Rp"})
# KEMI functions whose int answer steers the routes: any of them may fail.
STEERING = [name for name, value in HAPPY.items() if isinstance(value, int | bool)]
STEERING.append("htable.sht_get")  # a ban's end (int), or no ban (None)
ENTRIES = ["ksr_request_route", "ksr_sl_reply", "ksr_onreply_manage", "ksr_branch_manage",
           "ksr_failure_manage", "ksr_xhttp_event"]  # fmt: skip
ANSWERS = {200, 400, 403, 404, 405, 422, 481, 483, 486, 488, 503}


# Read without Pv.text's guard (kemi.shell.routes: Router.get): what Kamailio formats itself
# (a peer picks its source address, never the bytes of $si) and what the routes wrote.
FORMATTED: dict[str, st.SearchStrategy[Any]] = {
    "$Ri": st.ip_addresses().map(str),
    "$si": st.ip_addresses().map(str),
    "$pr": st.sampled_from(["udp", "tcp", "tls", "ws", "wss", "sctp"]),
    "$fs": st.one_of(st.none(), st.sampled_from(["udp:10.0.0.2:5060", "tls:[::1]:5061"])),
    "$dlg_var(kha_nat)": st.one_of(st.none(), st.text(max_size=20),
                                   st.sampled_from(["detect/alias", "always/rewrite"])),
    "$avp(kha_nat)": st.one_of(st.none(), st.text(max_size=20)),
    "$avp(kha_vip)": st.one_of(st.none(), st.text(max_size=20)),
    "$var(kha_n)": st.one_of(st.none(), st.integers(0, 10**6)),
    "$avp(kha_mflags)": st.one_of(st.none(), st.text(max_size=40)),
    "$avp(kha_nmflags)": st.one_of(st.none(), st.text(max_size=40)),
    "$avp(kha_late)": st.one_of(st.none(), st.just(1)),
    "$dlg_var(kha_mflags)": st.one_of(st.none(), st.text(max_size=40)),
    "$dlg_var(kha_nmflags)": st.one_of(st.none(), st.text(max_size=40)),
}  # fmt: skip


def pv_value(name: str) -> st.SearchStrategy[Any]:
    formatted = FORMATTED.get(name)
    if formatted is not None:
        return st.one_of(formatted, st.sampled_from(PLAUSIBLE.get(name, ["10.0.0.2"])))
    return st.one_of(
        st.none(),
        st.binary(max_size=40),
        st.text(max_size=40),
        st.sampled_from(PLAUSIBLE.get(name, ["1000", "10.0.0.2"])),
    )


@settings(max_examples=400, deadline=None)
@given(
    entry=st.sampled_from(ENTRIES),
    pvs=st.fixed_dictionaries({name: pv_value(name) for name in STRING_PVS}),
    rs=st.integers(min_value=100, max_value=699),
    steering=st.dictionaries(st.sampled_from(STEERING), st.sampled_from([1, -1, 0])),
)
def test_no_pv_bytes_and_no_kamailio_answer_reach_the_exception_guard(
    entry: str, pvs: dict[str, Any], rs: int, steering: dict[str, int]
) -> None:
    extra = {"tm.t_get_status_code": rs, "dmq.is_from_node": 1, "dmq.handle_message": 1,
             "pvx.shv_seti": 1, "pvx.shv_sets": 1, "tm.t_is_canceled": -1}  # fmt: skip
    router, ksr = make(**{**extra, **steering})
    ksr.pvs.update(pvs)
    ksr.pvs.update({"$rs": rs, "$Rp": 5060})
    args = (None, "xhttp:request") if entry == "ksr_xhttp_event" else (None,)
    assert getattr(router, entry)(*args) == 1
    errors = [c.args[0] for c in ksr.calls if c.name == "err"]
    assert not [e for e in errors if "exception in" in e], errors
    for code, reason in ksr.replies():
        assert code in ANSWERS or (code, reason) == (500, "No Media Relay For This Address")
    http = [c.args[0] for c in ksr.calls if c.name == "xhttp.xhttp_reply"]
    assert all(code in ANSWERS for code in http), http


SDP_LINE = st.one_of(
    st.sampled_from(["v=0", "c=IN IP4 192.0.2.1", "m=audio 4000 RTP/AVP 8", "t=0 0", "a=x", ""]),
    st.builds(lambda k, v: f"{k}={v}", st.characters(), st.text(max_size=20)),
    st.text(max_size=30),
)


@settings(max_examples=500, deadline=None)
@given(lines=st.lists(SDP_LINE, max_size=40), sep=st.sampled_from(["\r\n", "\n"]))
def test_sdp_refusal_is_total_and_admits_only_bounded_sdp(lines: list[str], sep: str) -> None:
    body = sep.join(lines)
    limits = SdpLimits(max_streams=4, max_bytes=512)
    refusal = sdp_refusal(body, limits)
    if refusal is None:
        media = [line for line in body.splitlines() if line.startswith("m=")]
        assert 1 <= len(media) <= 4 and len(body) <= 512 and body.startswith("v=")
    else:
        assert refusal.code == 488
