"""SL_REPLY's route type: CORE_ONREPLY_ROUTE while it runs, the previous one restored after."""

from __future__ import annotations

import ctypes

import pytest

from kemi.shell import route_type


def test_outside_kamailio_there_is_no_route_type() -> None:
    assert route_type.kamailio_route_type() is None


def test_the_route_type_is_core_onreply_inside_and_restored_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    value = ctypes.c_int(1)  # REQUEST_ROUTE, left by the last request
    monkeypatch.setattr(route_type, "ROUTE_TYPE", value)
    with route_type.as_core_reply_route():
        assert value.value == route_type.CORE_ONREPLY_ROUTE
    assert value.value == 1
    with pytest.raises(RuntimeError), route_type.as_core_reply_route():
        raise RuntimeError("route failed")
    assert value.value == 1
