"""The fake KSR must refuse what Kamailio refuses, or route tests prove nothing."""

from __future__ import annotations

import json

import pytest

from tests.fakes.ksr import API_FILE, FakeKSR, UnscriptedCall, load_api

API_FILE_6_0 = API_FILE.with_name("kemi_api-6.0.json")


def test_api_list_is_the_real_one() -> None:
    api = load_api()
    assert len(api) > 300
    assert api["rtpengine.set_rtpengine_set"] == ["int"]
    assert api["sl.sl_send_reply"] == ["int", "str"]
    assert api["tm.t_relay"] == []


def test_every_function_the_fake_offers_is_exported_alike_by_kamailio_6() -> None:
    """The fake is built from Kamailio 5.6.3's list (Debian 12); Debian 13 runs 6.0.1, whose
    list (kemi_api-6.0.json, `kemi-ha api-list` there) must hold each of them unchanged, or
    routes tested here could call what Debian 13's Kamailio does not export."""
    fake_api = json.loads(API_FILE.read_text())
    kamailio_6 = {(f["module"], f["name"]): f for f in json.loads(API_FILE_6_0.read_text())}
    changed = [f for f in fake_api if kamailio_6.get((f["module"], f["name"])) != f]
    assert not changed


def test_unknown_function_fails() -> None:
    ksr = FakeKSR()
    with pytest.raises(AttributeError):
        ksr.rtpengine.rtpengine_offer_invented("x")
    with pytest.raises(AttributeError):
        ksr.x.exit()  # there is no KSR.x.exit in app_python3


def test_wrong_arity_or_type_fails() -> None:
    ksr = FakeKSR(returns={"sl.sl_send_reply": 1})
    with pytest.raises(TypeError):
        ksr.sl.sl_send_reply(200)
    with pytest.raises(TypeError):
        ksr.sl.sl_send_reply("200", "OK")
    with pytest.raises(TypeError):
        ksr.rtpengine.rtpengine_offer()  # the 0-argument variant is rtpengine_offer0


def test_unscripted_return_and_unset_pv_fail() -> None:
    ksr = FakeKSR()
    with pytest.raises(UnscriptedCall):
        ksr.tm.t_relay()
    with pytest.raises(KeyError):
        ksr.pv.get("$ru")
    ksr.info("logging returns nothing and needs no script\n")
    assert ksr.names() == ["tm.t_relay", "pv.get", "info"]


@pytest.mark.parametrize("name", ["$content_type", "$dlgvar(x)", "$(ctype{s.len})", "rU", "$"])
def test_a_pv_kamailio_does_not_define_fails(name: str) -> None:
    """An invented PV class fails as Kamailio's parser would (a wrong but real one, e.g. $ct,
    the Contact, where the Content-Type $cT was meant, is for the integration tests)."""
    ksr = FakeKSR(pvs={name: "x"})
    with pytest.raises(ValueError, match="not a PV"):
        ksr.pv.get(name)
    with pytest.raises(ValueError, match="not a PV"):
        ksr.pv.sets(name, "x")


@pytest.mark.parametrize(
    "name",
    ["$cT", "$rU", "$dlg_var(kha_cdr)", "$avp(kha_vip)", "$sht(kha_ban=>x)", "$T_reply_code",
     "$jsonrpl(code)"],
)  # fmt: skip
def test_the_pvs_kamailio_defines_pass(name: str) -> None:
    ksr = FakeKSR(pvs={name: "x"})
    ksr.pv.sets(name, "y")
    assert ksr.pv.get(name) == "y"
    ksr.pvs["$rb"] = "v=0"
    assert ksr.pv.get("$(rb{s.encode.hexa})") == b"v=0".hex()
