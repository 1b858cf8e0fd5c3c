"""Bounds found by review: answers held in batches count against the
in-flight limit across batches, an oversize answer to any request (even
initialize) becomes an error answer, and a burst of refusals is reported
in full once its interval ends."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger, globalLogPublisher

from mcp_twisted._lograte import RepeatedEventLog
from mcp_twisted.jsonrpc import INTERNAL_ERROR
from mcp_twisted.protocol import SERVER_BUSY
from mcp_twisted.server import MCPServer
from mcp_twisted.session import Role, Session
from tests.support import Flow


def session_for(app: MCPServer, **options: Any) -> tuple[Session, list[Any]]:
    sent: list[Any] = []
    session = Session(lambda data, *_: sent.append(json.loads(data)), role=Role.SERVER, handler=app,
                      clock=Clock(), **options)
    return session, sent


def initialize(session: Session, version: str = "2025-03-26") -> Any:
    session.receive(json.dumps({"jsonrpc": "2.0", "id": "i", "method": "initialize", "params": {
        "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}))
    session.receive(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))


def test_answers_waiting_in_batches_hold_their_slots_across_batches():
    app = MCPServer("held")
    gates: list[Deferred[str]] = []

    @app.tool()
    async def slow() -> str:
        gates.append(Deferred())
        return await gates[-1]

    @app.tool()
    def quick() -> str:
        return "q"

    session, sent = session_for(app, max_in_flight=4)
    initialize(session)
    sent.clear()

    def batch(first: int) -> str:
        calls = [{"jsonrpc": "2.0", "id": first, "method": "tools/call", "params": {"name": "slow"}}]
        calls += [{"jsonrpc": "2.0", "id": first + i, "method": "tools/call", "params": {"name": "quick"}}
                  for i in range(1, 4)]
        return json.dumps(calls)

    session.receive(batch(0))  # one running, three answers waiting for it: all four slots
    assert sent == [] and session.in_flight == 1
    session.receive(batch(10))  # nothing is free: the whole second batch is refused
    (refused,) = sent
    assert {r["error"]["code"] for r in refused} == {SERVER_BUSY}
    sent.clear()
    gates[0].callback("done")  # the first batch goes out and frees its slots
    (answers,) = sent
    assert sorted(r["id"] for r in answers) == [0, 1, 2, 3]
    session.receive(json.dumps([{"jsonrpc": "2.0", "id": 20, "method": "tools/call",
                                 "params": {"name": "quick"}}]))
    assert sent[-1][0]["result"]["content"][0]["text"] == "q"


def test_an_initialize_answer_over_the_limit_becomes_an_error_answer():
    app = MCPServer("big", instructions="x" * 5000)
    session, sent = session_for(app, max_message_size=1000)
    session.receive(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}))
    (reply,) = sent
    assert reply["id"] == 1 and reply["error"]["code"] == INTERNAL_ERROR
    assert "too large" in reply["error"]["message"]


def test_a_burst_is_reported_in_full_when_its_interval_ends():
    clock = Clock()
    lines: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_format", "").startswith("Burst"):
            lines.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        burst = RepeatedEventLog(Logger(), clock, "Burst ({count}) from {peer}", interval=10)
        for i in range(1000):
            burst(peer=f"p{i}")
        assert [(e["count"], e["peer"]) for e in lines] == [(1, "p0")]
        clock.advance(10)
        assert [(e["count"], e["peer"]) for e in lines] == [(1, "p0"), (999, "p999")]
        clock.advance(100)  # nothing pending: nothing more
        assert len(lines) == 2
    finally:
        globalLogPublisher.removeObserver(observe)


def test_change_notifications_wait_and_merge_while_the_peer_is_behind():
    app = MCPServer("changes")

    @app.resource("test://watched")
    def watched() -> str:
        return "w"

    @app.tool()
    def t() -> str:
        return "t"

    flow = Flow(full=True)
    session, sent = session_for(app, flow=flow)
    flow.full = False
    initialize(session, "2025-11-25")
    session.receive(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "resources/subscribe",
                                "params": {"uri": "test://watched"}}))
    sent.clear()
    flow.full = True
    for _ in range(20_000):
        app.notify_resource_updated("test://watched")
    for _ in range(200):
        app.remove_tool("t")
        app.add_tool(lambda: "t", "t")
    assert sent == []  # nothing piled up in the transport
    flow.drain()
    assert sorted(m["method"] for m in sent) == [
        "notifications/resources/updated", "notifications/tools/list_changed"]


def test_waiters_nobody_awaits_do_not_pile_up():
    # ctx.log() called without await while the peer is behind: each call
    # leaves a Deferred that nobody holds.
    import gc

    from mcp_twisted.hosting import WriteWaiters

    waiters = WriteWaiters()
    for _ in range(10_000):
        waiters.wait()
    gc.collect()
    assert len(waiters) == 0
    held = waiters.wait()
    fired: list[object] = []
    held.addCallback(fired.append)
    waiters.release()
    assert fired == [None]
