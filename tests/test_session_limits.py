"""Limits the session enforces without any socket: batch size and in-flight
accounting, answers too large for the transport, output flow control, and
answering every request at shutdown. Each attack is fed as the peer would
send it; a second, well-behaved request on the same session is answered."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.logger import LogLevel

from mcp_twisted.jsonrpc import INTERNAL_ERROR, INVALID_REQUEST, RPCError
from mcp_twisted.protocol import SERVER_BUSY, SERVER_SHUTTING_DOWN
from mcp_twisted.server import Context, MCPServer
from mcp_twisted.testing import Peer
from tests.support import FakeHandler, Flow, error_code, find, result, waiting_route


def batch_peer(handler: Any = None, **options: Any) -> Peer:
    peer = Peer(handler if handler is not None else FakeHandler(), **options)
    peer.initialize("2025-03-26")
    return peer


# -- batches -------------------------------------------------------------------


def test_a_batch_over_the_item_limit_gets_one_error_and_runs_nothing(events) -> None:
    peer = batch_peer(max_batch_size=8)
    peer.send([{"jsonrpc": "2.0", "id": i, "method": "echo"} for i in range(1000)])
    (reply,) = peer.take()
    assert error_code(reply) == INVALID_REQUEST and reply["id"] is None
    assert reply["error"]["data"] == {"limit": 8}
    assert peer.handler.requests == []
    assert len(find(events, "Refused a batch")) == 1
    peer.request("echo", {"x": 1}, id="ok")  # the session carries on
    assert result(peer.take()[0]) == {"x": 1}


def test_a_batch_counts_against_the_in_flight_limit_and_logs_its_refusals_once(events) -> None:
    # Quick handlers free their slot at once, but their answers wait in the
    # batch: without counting the batch, one message could run any number.
    peer = batch_peer(max_in_flight=10, max_batch_size=100)
    peer.send([{"jsonrpc": "2.0", "id": i, "method": "echo", "params": {"i": i}} for i in range(100)])
    (replies,) = peer.take()
    assert len(replies) == 100
    answered = [r for r in replies if "result" in r]
    refused = [r for r in replies if "error" in r]
    assert [r["id"] for r in answered] == list(range(10))
    assert {error_code(r) for r in refused} == {SERVER_BUSY}
    assert len(refused) == 90
    (line,) = find(events, "Refused {count} request")
    assert line["count"] == 90


def test_an_id_whose_answer_waits_in_a_batch_is_still_in_use() -> None:
    # The client has no answer to it yet: a request reusing the id, in the
    # same batch or after it, would get a second answer under one id.
    route, deferreds = waiting_route()
    peer = batch_peer(FakeHandler({"wait": route}))
    peer.send([{"jsonrpc": "2.0", "id": 5, "method": "echo", "params": {"n": 1}},
               {"jsonrpc": "2.0", "id": 5, "method": "echo", "params": {"n": 2}},
               {"jsonrpc": "2.0", "id": 6, "method": "wait"}])
    peer.request("echo", {"n": 3}, id=5)
    (refused,) = peer.take()
    assert (refused["id"], error_code(refused)) == (5, INVALID_REQUEST)
    deferreds[0].callback("done")
    (replies,) = peer.take()
    assert [(r["id"], "error" in r) for r in replies] == [(5, False), (5, True), (6, False)]
    assert result(replies[0]) == {"n": 1}
    peer.request("echo", {"n": 4}, id=5)  # answered: the id is free again
    assert result(peer.take()[0]) == {"n": 4}


def test_refusals_at_the_in_flight_limit_are_logged_once_per_interval(events) -> None:
    route, _ = waiting_route()
    peer = Peer(FakeHandler({"wait": route}), max_in_flight=2)
    peer.initialize()
    for i in range(500):
        peer.request("wait", id=i)
    replies = peer.take()
    assert len(replies) == 498 and {error_code(r) for r in replies} == {SERVER_BUSY}
    assert len(find(events, "Refused {count} request")) == 1
    peer.clock.advance(10)  # the interval ends: the rest of the burst is reported, not lost
    assert [line["count"] for line in find(events, "Refused {count} request")] == [1, 497]
    peer.request("wait", id="late")
    assert len(find(events, "Refused {count} request")) == 2  # within the next interval: held
    peer.clock.advance(10)
    assert [line["count"] for line in find(events, "Refused {count} request")] == [1, 497, 1]


def test_error_responses_from_the_peer_are_logged_once_per_interval(events) -> None:
    # Error responses to no request of ours get no answer; a flood of them
    # (in one batch or one by one) is one line per interval, with a count.
    peer = batch_peer()
    error = {"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": "no"}}
    peer.send([error] * 64)
    for _ in range(1000):
        peer.send(error)
    assert peer.take() == []
    assert [line["count"] for line in find(events, "Peer reported an error")] == [1]
    peer.clock.advance(10)
    assert [line["count"] for line in find(events, "Peer reported an error")] == [1, 1063]


# -- answers too large to send ---------------------------------------------------


@pytest.mark.parametrize("asynchronous", [False, True])
def test_an_answer_over_the_message_limit_becomes_an_error_answer(asynchronous: bool, events) -> None:
    gate: Deferred[Any] = Deferred()
    big = {"text": "x" * 5000}
    route = (lambda request: gate) if asynchronous else (lambda request: big)
    peer = Peer(FakeHandler({"big": route}), max_message_size=1000)
    peer.initialize()
    peer.request("big", id=1)
    if asynchronous:
        gate.callback(big)
    (reply,) = peer.take()
    assert reply["id"] == 1 and error_code(reply) == INTERNAL_ERROR
    assert "too large" in reply["error"]["message"]
    assert reply["error"]["data"]["limit"] == 1000
    assert len(find(events, "Answer to {method} is {size} bytes")) == 1
    peer.request("echo", {"small": True}, id=2)  # the same session goes on
    assert result(peer.take()[0]) == {"small": True}


def test_a_request_whose_id_is_too_large_to_send_back_is_answered_without_it(events) -> None:
    # Every request gets one answer: over HTTP a POST left without one stays
    # open and pins its session.
    routed: list[tuple[Any, bool]] = []
    peer = Peer(FakeHandler(), max_message_size=1000)
    send = peer.session._send
    peer.session._send = lambda text, related=None, answer=False: (  # type: ignore[method-assign]
        routed.append((related, answer)), send(text, related, answer))
    peer.initialize()
    huge_id = "i" * 990
    # Refused (params as an array), with an error that would repeat the id.
    peer.send({"jsonrpc": "2.0", "id": huge_id, "method": "echo", "params": []})
    (reply,) = peer.take()
    assert reply["id"] is None and error_code(reply) == INTERNAL_ERROR
    assert "id alone" in reply["error"]["message"]
    assert routed[-1] == (huge_id, True)  # the transport still knows which request it ends
    # A handler's error answer (an unknown method) takes the same way.
    peer.send({"jsonrpc": "2.0", "id": huge_id, "method": "nope", "params": {}})
    (reply,) = peer.take()
    assert reply["id"] is None and "id alone" in reply["error"]["message"]
    peer.request("echo", {"small": True}, id=2)
    assert result(peer.take()[0]) == {"small": True}


def test_a_batch_too_large_in_all_loses_only_its_largest_answers() -> None:
    sizes = {1: 600, 2: 10, 3: 700, 4: 20}
    peer = batch_peer(FakeHandler({"make": lambda request: "y" * sizes[request.id]}), max_message_size=1000)
    peer.send([{"jsonrpc": "2.0", "id": i, "method": "make"} for i in sizes])
    (replies,) = peer.take()
    by_id = {r["id"]: r for r in replies}
    assert error_code(by_id[3]) == INTERNAL_ERROR  # the largest gave way
    assert result(by_id[1]) == "y" * 600
    assert result(by_id[2]) == "y" * 10 and result(by_id[4]) == "y" * 20


def test_a_notification_over_the_message_limit_is_dropped_not_sent() -> None:
    peer = Peer(FakeHandler(), max_message_size=1000)
    peer.initialize()
    peer.session.notify("notifications/message", {"level": "info", "data": "z" * 5000})
    assert peer.take() == []
    peer.session.notify("notifications/message", {"level": "info", "data": "fits"})
    assert peer.take()[0]["params"]["data"] == "fits"


# -- output flow -------------------------------------------------------------------


def progress_app() -> MCPServer:
    app = MCPServer("flow")

    @app.tool()
    async def count(n: int, ctx: Context) -> int:
        for i in range(1, n + 1):
            await ctx.report_progress(i, n)
            await ctx.log("info", f"step {i}")
        return n

    @app.tool()
    def spray(n: int, ctx: Context) -> int:
        """Reports progress without waiting: the flow must bound it anyway."""
        for i in range(1, n + 1):
            ctx.report_progress(i, n)
        return n

    return app


def test_progress_and_log_wait_for_a_slow_peer_and_resume() -> None:
    flow = Flow()
    peer = Peer(progress_app(), flow=flow)
    peer.initialize()
    peer.request("logging/setLevel", {"level": "info"}, id="level")
    peer.take()
    flow.full = True
    peer.request("tools/call", {"name": "count", "arguments": {"n": 3}, "_meta": {"progressToken": "t"}},
                 id=1)
    # While the peer is behind, the first progress is dropped (droppable) and
    # the handler waits for room instead of producing more.
    assert peer.take() == [] and len(flow.waiters) == 1
    flow.drain()  # the peer caught up: the handler runs on to the end
    sent = peer.take()
    assert [m["params"]["progress"] for m in sent if m.get("method") == "notifications/progress"] == [2, 3]
    assert [m["params"]["data"] for m in sent if m.get("method") == "notifications/message"] == [
        "step 1", "step 2", "step 3"]
    assert result(sent[-1])["content"][0]["text"] == "3"


def test_a_handler_that_does_not_wait_has_its_progress_dropped_while_congested(events) -> None:
    flow = Flow()
    peer = Peer(progress_app(), flow=flow)
    peer.initialize()
    flow.full = True
    peer.request("tools/call", {"name": "spray", "arguments": {"n": 10000}, "_meta": {"progressToken": 7}},
                 id=1)
    (answer,) = peer.take()  # no progress went out; the answer is never dropped
    assert answer["id"] == 1 and result(answer)["content"][0]["text"] == "10000"
    (line,) = find(events, "Dropped {count} progress")
    assert line["count"] == 1  # the first drop is logged; the rest are counted for the next line


# -- shutdown ----------------------------------------------------------------------


def test_abort_running_answers_every_running_request_once() -> None:
    route, waiting = waiting_route()
    peer = batch_peer(FakeHandler({"wait": route}))
    peer.request("wait", id=1)
    peer.send([{"jsonrpc": "2.0", "id": 2, "method": "wait"}, {"jsonrpc": "2.0", "id": 3, "method": "echo"}])
    assert peer.take() == []
    count = peer.session.abort_running(RPCError(SERVER_SHUTTING_DOWN, "shutting down"))
    assert count == 2
    single, batch = peer.take()
    assert single["id"] == 1 and error_code(single) == SERVER_SHUTTING_DOWN
    assert {r["id"]: r.get("error", {}).get("code") for r in batch} == {2: SERVER_SHUTTING_DOWN, 3: None}
    assert peer.session.in_flight == 0
    for d in waiting:  # a handler that fires late changes nothing
        if not d.called:
            d.callback("late")
    assert peer.take() == []


def test_a_failing_handler_is_logged_at_error_not_critical(events) -> None:
    def boom(request: Any) -> Any:
        raise RuntimeError("bug in the app")

    peer = Peer(FakeHandler({"boom": boom}))
    peer.initialize()
    peer.request("boom", id=1)
    (logged,) = [e for e in events if "error_id" in e]
    assert logged["log_level"] == LogLevel.error
