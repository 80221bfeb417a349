"""A DMQ peer that becomes active is asked for its dialogs once, a little later (issue: a
partition's calls were never replicated; Kamailio 5.6 asks only at start)."""

from __future__ import annotations

import json
from typing import Any

from kemi.core import dmq_resync
from kemi.core.dmq_resync import ResyncWatch, active_peers
from kemi.shell.dmq_resync import DmqResync
from tests.fakes.ksr import FakeKSR


def node(host: str, status: str = "active", local: int = 0, port: str = "5090") -> dict[str, Any]:
    """One entry as Kamailio 5.6.3's RPC dmq.list_nodes answers it (dmq.c)."""
    return {"host": host, "port": port, "proto": "udp", "resolved_ip": host, "status": status,
            "last_notification": 0, "local": local}  # fmt: skip


def test_active_peers_are_the_other_nodes_dmq_reports_active() -> None:
    nodes = [node("10.0.0.1", local=1), node("10.0.0.2"), node("10.0.0.3", "pending"),
             node("10.0.0.4", "disabled"), node("10.0.0.5", "timeout"), "garbage",
             {"host": "10.0.0.6", "status": "active", "local": 0}]  # fmt: skip
    assert active_peers(nodes) == {"10.0.0.2:5090"}


def test_a_peer_first_seen_is_asked_once_after_the_delay() -> None:
    watch = ResyncWatch(delay_s=3)
    assert watch.step(100.0, frozenset({"b:5090"})) == []
    assert watch.step(102.0, frozenset({"b:5090"})) == []
    assert watch.step(103.0, frozenset({"b:5090"})) == ["b:5090"]
    assert watch.step(200.0, frozenset({"b:5090"})) == []  # still active: not asked again


def test_a_peer_back_from_a_partition_is_asked_again() -> None:
    watch = ResyncWatch(delay_s=0)
    assert watch.step(1.0, frozenset({"b:5090"})) == ["b:5090"]
    assert watch.step(2.0, frozenset()) == []
    assert watch.step(3.0, frozenset({"b:5090"})) == ["b:5090"]


def test_a_peer_gone_again_before_its_turn_waits_for_its_next_return() -> None:
    watch = ResyncWatch(delay_s=3)
    watch.step(0.0, frozenset({"b:5090", "c:5090"}))
    assert watch.step(1.0, frozenset({"c:5090"})) == []
    assert watch.step(3.0, frozenset({"c:5090"})) == ["c:5090"]
    assert watch.step(4.0, frozenset({"b:5090", "c:5090"})) == []
    assert watch.step(7.0, frozenset({"b:5090", "c:5090"})) == ["b:5090"]


def test_the_requests_are_the_modules_own_sync_messages() -> None:
    requests = {module: json.loads(body) for module, body in dmq_resync.SYNC_REQUESTS}
    assert requests == {"dialog": {"action": 4}, "htable": {"action": 1}}  # *_DMQ_SYNC


def resync(nodes: Any, code: str = "200", sent: int = 1) -> tuple[DmqResync, FakeKSR, list]:
    body = json.dumps({"jsonrpc": "2.0", "result": nodes, "id": 1})
    ksr = FakeKSR(returns={"jsonrpcs.exec": 1, "dmq.send_message": sent},
                  pvs={"$jsonrpl(code)": code, "$jsonrpl(body)": body})  # fmt: skip
    clock = [0.0]
    return DmqResync(ksr, ResyncWatch(delay_s=3), clock=lambda: clock[0]), ksr, clock


def test_the_shell_asks_the_peer_through_dmq_with_kamailios_functions() -> None:
    job, ksr, clock = resync([node("10.0.0.1", local=1), node("10.0.0.2")])
    job.tick()
    assert not ksr.called("dmq.send_message")
    clock[0] = 3.0
    job.tick()
    sent = [c.args for c in ksr.calls if c.name == "dmq.send_message"]
    json_type = "application/json"
    assert sent == [("dialog", "sip:10.0.0.2:5090", '{"action":4}', json_type),
                    ("htable", "sip:10.0.0.2:5090", '{"action":1}', json_type)]  # fmt: skip
    (command, *_) = [json.loads(c.args[0]) for c in ksr.calls if c.name == "jsonrpcs.exec"]
    assert command["method"] == "dmq.list_nodes"


def test_an_unreadable_node_list_changes_nothing() -> None:
    job, ksr, clock = resync([node("10.0.0.2")])
    job.tick()
    ksr.pvs["$jsonrpl(code)"] = "500"
    clock[0] = 3.0
    job.tick()  # nothing learnt: the peer stays due, not forgotten
    assert not ksr.called("dmq.send_message")
    ksr.pvs["$jsonrpl(code)"] = "200"
    job.tick()
    assert ksr.called("dmq.send_message")


def test_a_request_dmq_refuses_is_counted_and_not_raised() -> None:
    job, ksr, clock = resync([node("10.0.0.2")], sent=-1)
    job.tick()
    clock[0] = 5.0
    job.tick()  # logged as an error, counted: no exception out of the timer
    assert ksr.called("dmq.send_message")


def test_the_hygiene_timer_runs_the_resync_even_when_the_sweep_fails() -> None:
    from tests.unit.test_routes import make

    router, _ = make()

    class Broken:
        def tick(self) -> None:
            raise RuntimeError("a bug of the sweep")

    job, ksr, clock = resync([node("10.0.0.2")])
    router.calls, router.resync = Broken(), job  # type: ignore[assignment]
    assert router.ksr_hygiene_timer(None, "rtimer") == 1
    clock[0] = 3.0
    assert router.ksr_hygiene_timer(None, "rtimer") == 1
    assert ksr.called("dmq.send_message")
