"""The floor: kemi-ha's KSR calls for bench/cpu_bench.py's call, straight-line, nothing else.

A KEMI script with no policy object, no metrics, no guard and no call record write (the
record's facts are read and decoded, the Redis write is left out): what Python costs inside
Kamailio when it does only the KSR calls kemi-ha's routes make for the bench policy (listed by
bench/routes_bench.py against the strict fake), hard-coded for that policy (VIP 127.0.0.1, set
1, tenant "bench", two destinations). Run in kemi-ha's place:
    make bench-cpu BENCH_CPU_ARGS="--kemi-script bench/kemi_floor.py --only sip --ramp ''"
It relays the bench's calls; it is not a router (no checks, one VIP).
"""

from __future__ import annotations

import json
import time
from typing import Any

import KSR  # type: ignore[import-not-found]  # inside Kamailio only

FLAGS = "replace-origin replace-session-connection ICE=remove"
NAT_FLAGS = FLAGS + " SIP-source-address symmetric"
SDP = "application/sdp"
SOCKET = "udp:127.0.0.1:5060"
FACTS = ('{"caller":"%s@%s","callee":"49000@%s","tenant":"bench","trunk":"","vip":"127.0.0.1",'
         '"node":"127.0.0.1","invite_ms":%d,"media_timeout":0,"max_duration":0}')  # fmt: skip


class Floor:
    def child_init(self, rank: int) -> int:
        return 0

    def ksr_request_route(self, msg: Any) -> int:
        pv = KSR.pv
        KSR.pvx.shv_get("kha_policy_gen")
        method = pv.get("$rm")
        pv.get("$si")
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.sl_send_reply(483, "Too Many Hops")
            return 1
        if KSR.sanity.sanity_check(17895, 7) < 0:
            return 1
        KSR.force_rport()
        if method == "CANCEL":
            if KSR.tm.t_check_trans() > 0:
                KSR.tm.t_relay()
            return 1
        if KSR.siputils.has_totag() > 0:
            return self.in_dialog(method)
        if method == "ACK":
            if KSR.tm.t_check_trans() > 0:
                KSR.tm.t_relay()
            return 1
        if method == "OPTIONS":
            KSR.sl.sl_send_reply(200, "OK")
            return 1
        if method != "INVITE":
            KSR.sl.sl_send_reply(405, "Method Not Allowed")
            return 1
        if KSR.tmx.t_precheck_trans() > 0:
            KSR.tm.t_check_trans()
            return 1
        return self.invite()

    def in_dialog(self, method: str) -> int:
        pv = KSR.pv
        if KSR.rr.loose_route() < 0:
            if method == "ACK" and KSR.tm.t_check_trans() > 0:
                KSR.tm.t_relay()
            return 1
        if KSR.dialog.is_known_dlg() < 0:
            KSR.sl.sl_send_reply(481, "Call/Transaction Does Not Exist")
            return 1
        pv.get("$dlg_var(kha_nat)")
        KSR.nathelper.nat_uac_test(19)
        pv.get("$pr")
        pv.get("$Ri")
        if method == "BYE":
            KSR.rtpengine.set_rtpengine_set(1)
            KSR.rtpengine.rtpengine_delete0()
        elif method == "ACK":
            KSR.textops.has_body()
        if KSR.isdsturiset() < 0:
            KSR.nathelper.handle_ruri_alias()
        pv.get("$fs")
        pv.get("$nh(u)")
        KSR.corex.set_send_socket(SOCKET)
        KSR.tm.t_relay()
        return 1

    def invite(self) -> int:
        pv = KSR.pv
        pv.get("$Ri")
        user = pv.get("$rU")
        domain = pv.get("$rd")
        KSR.dialog.get_profile_size_static("kha_global", "$var(kha_n)")
        pv.get("$var(kha_n)")
        KSR.dialog.get_profile_size("kha_tenant", "bench", "$var(kha_n)")
        pv.get("$var(kha_n)")
        pv.sets("$rU", "49" + user[1:])
        KSR.nathelper.nat_uac_test(19)
        pv.get("$pr")
        if KSR.textops.has_body() > 0 and KSR.textops.has_body_type(SDP) > 0:
            pv.get("$rb")
            KSR.rtpengine.set_rtpengine_set(1)
            KSR.rtpengine.rtpengine_offer(FLAGS)
        else:
            pv.seti("$avp(kha_late)", 1)
        KSR.dialog.dlg_manage()
        facts = FACTS % (pv.get("$fU"), pv.get("$fd"), domain, int(time.time() * 1000))
        pv.sets("$dlg_var(kha_cdr)", facts)
        KSR.dialog.set_dlg_profile_static("kha_global")
        KSR.dialog.set_dlg_profile("kha_tenant", "bench")
        KSR.hdr.remove("Route")
        KSR.rr.record_route()
        pv.sets("$dlg_var(kha_nat)", "detect/alias")
        pv.sets("$avp(kha_nat)", "detect/alias")
        pv.sets("$dlg_var(kha_nmflags)", NAT_FLAGS)
        pv.sets("$avp(kha_nmflags)", NAT_FLAGS)
        pv.sets("$dlg_var(kha_prof)", "kha_tenant=bench")
        pv.sets("$avp(kha_vip)", "127.0.0.1")
        pv.sets("$avp(kha_dsts)", "sip:127.0.0.1:5080 sip:127.0.0.1:5081")
        KSR.setdsturi("sip:127.0.0.1:5080")
        KSR.tm.t_on_reply("ksr_onreply_manage")
        KSR.tm.t_on_failure("ksr_failure_manage")
        KSR.corex.set_send_socket(SOCKET)
        KSR.tm.t_relay()
        return 1

    def ksr_sl_reply(self, msg: Any, evname: str = "") -> int:
        if KSR.dialog.is_known_dlg() < 0:
            KSR.set_drop()
        return 1

    def ksr_onreply_manage(self, msg: Any) -> int:
        pv = KSR.pv
        status = pv.geti("$rs")
        if 200 <= status < 300 and pv.get("$avp(kha_vip)"):
            pv.unset("$avp(kha_vip)")
            pv.sets("$dlg_var(kha_ta)", str(int(time.time() * 1000)))
        pv.get("$avp(kha_nat)")
        KSR.nathelper.nat_uac_test(1)
        pv.get("$pr")
        if KSR.textops.has_body() > 0:
            pv.get("$Ri")
            KSR.textops.has_body_type(SDP)
            pv.get("$rb")
            KSR.rtpengine.set_rtpengine_set(1)
            KSR.rtpengine.rtpengine_answer(FLAGS)
        return 1

    def ksr_failure_manage(self, msg: Any) -> int:
        KSR.rtpengine.set_rtpengine_set(1)
        KSR.rtpengine.rtpengine_delete0()
        return 1

    def ksr_branch_manage(self, msg: Any) -> int:
        return 1

    def ksr_dialog_end(self, msg: Any) -> int:
        pv = KSR.pv
        json.loads(pv.get("$dlg_var(kha_cdr)"))
        for name in ("$dlg(callid)", "$dlg(from_tag)", "$ft", "$dlg_var(kha_ta)"):
            pv.get(name)
        KSR.is_BYE()
        KSR.info("kemi-ha: cdr written reason=bye_caller code=200\n")
        return 1

    def ksr_hygiene_timer(self, msg: Any, evname: str = "") -> int:
        return 1

    def ksr_xhttp_event(self, msg: Any, evname: str = "") -> int:
        return 1


def mod_init() -> Floor:
    return Floor()
