"""The sans-IO session: lifecycle, batches, concurrency, cancellation, timeouts,
progress, outgoing requests, the client role, and server-to-client requests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import LogLevel

from mcp_twisted import jsonrpc
from mcp_twisted.jsonrpc import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    LocalProtocolError,
    Request,
    RPCError,
)
from mcp_twisted.protocol import (
    LATEST_PROTOCOL_VERSION,
    REQUEST_TIMEOUT,
    SERVER_BUSY,
    SERVER_SHUTTING_DOWN,
    SUPPORTED_PROTOCOL_VERSIONS,
    CapabilityError,
)
from mcp_twisted.server import Context, MCPServer
from mcp_twisted.session import (
    SLOW,
    ConnectionLost,
    IncomingRequest,
    RequestTimedOut,
    Role,
    State,
)
from mcp_twisted.testing import Peer, failure_of, result_of
from tests.support import FakeHandler, error_code, find, result, waiting_route

# -- lifecycle -------------------------------------------------------------------


@pytest.mark.parametrize("version", SUPPORTED_PROTOCOL_VERSIONS)
def test_initialize_echoes_a_supported_version(version: str) -> None:
    peer = Peer(FakeHandler())
    peer.request("initialize", {"protocolVersion": version, "capabilities": {"roots": {}},
                                "clientInfo": {"name": "c", "version": "9"}}, id=1)
    (reply,) = peer.take()
    assert reply["id"] == 1
    assert result(reply) == {"protocolVersion": version, "capabilities": {"tools": {}},
                             "serverInfo": {"name": "fake", "version": "1"}}
    assert peer.session.protocol_version == version
    assert peer.session.state is State.INITIALIZING
    assert peer.session.peer_capabilities == {"roots": {}}
    assert peer.session.peer_info == {"name": "c", "version": "9"}


@pytest.mark.parametrize("version", ["1999-01-01", "2026-07-28", "2025-11-26", ""])
def test_initialize_offers_the_latest_version_for_unknown_ones(version: str) -> None:
    peer = Peer(FakeHandler())
    peer.request("initialize", {"protocolVersion": version}, id=1)
    (reply,) = peer.take()
    assert result(reply)["protocolVersion"] == "2025-11-25" == LATEST_PROTOCOL_VERSION
    assert peer.session.protocol_version == "2025-11-25"


def test_ping_is_answered_before_and_after_initialize() -> None:
    peer = Peer(FakeHandler())
    peer.request("ping", id="p1")
    assert peer.take() == [{"jsonrpc": "2.0", "id": "p1", "result": {}}]
    peer.initialize()
    peer.request("ping", id=0)
    assert peer.take() == [{"jsonrpc": "2.0", "id": 0, "result": {}}]
    assert peer.handler.requests == []


@pytest.mark.parametrize("method", ["echo", "tools/list", "nope"])
def test_requests_before_initialize_are_refused(method: str) -> None:
    peer = Peer(FakeHandler())
    peer.request(method, {}, id=5)
    (reply,) = peer.take()
    assert reply["id"] == 5
    assert error_code(reply) == INVALID_REQUEST
    assert peer.handler.requests == []


def test_notifications_before_initialize_do_not_reach_the_handler() -> None:
    peer = Peer(FakeHandler())
    peer.notify("notifications/roots/list_changed")
    peer.notify("notifications/initialized")  # no initialize yet: ignored
    assert peer.session.state is State.NEW
    assert peer.handler.notifications == []
    assert peer.handler.ready == []
    assert peer.take() == []


def test_second_initialize_is_refused() -> None:
    peer = Peer(FakeHandler())
    peer.request("initialize", {"protocolVersion": "2025-06-18"}, id=1)
    peer.request("initialize", {"protocolVersion": "2024-11-05"}, id=2)  # before initialized
    peer.notify("notifications/initialized")
    peer.request("initialize", {"protocolVersion": "2024-11-05"}, id=3)  # after
    first, second, third = peer.take()
    assert result(first)["protocolVersion"] == "2025-06-18"
    assert (second["id"], error_code(second)) == (2, INVALID_REQUEST)
    assert (third["id"], error_code(third)) == (3, INVALID_REQUEST)
    assert peer.session.protocol_version == "2025-06-18"


def test_initialized_notification_makes_the_session_ready() -> None:
    peer = Peer(FakeHandler())
    peer.request("initialize", {"protocolVersion": "2025-06-18"}, id=1)
    assert peer.handler.ready == []
    peer.notify("notifications/initialized")
    assert peer.session.state is State.READY
    assert peer.handler.ready == [peer.session]
    peer.notify("notifications/initialized")  # a repeat changes nothing
    assert peer.handler.ready == [peer.session]
    peer.request("echo", {"a": 1}, id=2)
    assert result(peer.take()[-1]) == {"a": 1}


@pytest.mark.parametrize("params", [
    None, [], {}, {"protocolVersion": 20250618}, {"protocolVersion": None},
    {"protocolVersion": "2025-06-18", "capabilities": []},
    {"protocolVersion": "2025-06-18", "capabilities": None},
    {"protocolVersion": "2025-06-18", "clientInfo": "me"},
])
def test_bad_initialize_params_are_invalid_params(params: Any) -> None:
    peer = Peer(FakeHandler())
    peer.request("initialize", params, id=1)
    (reply,) = peer.take()
    assert (reply["id"], error_code(reply)) == (1, INVALID_PARAMS)
    assert peer.session.state is State.NEW
    peer.request("initialize", {"protocolVersion": "2025-06-18"}, id=2)  # a good one still works
    assert result(peer.take()[0])["protocolVersion"] == "2025-06-18"


def test_initialize_with_the_real_server() -> None:
    server = MCPServer("real", "2.0", instructions="Be nice.", title="Real")

    @server.tool()
    def add(a: int, b: int) -> int:
        return a + b

    peer = Peer(server)
    assert peer.initialize("2025-06-18") == {
        "protocolVersion": "2025-06-18",
        "capabilities": {"logging": {}, "tools": {"listChanged": True}},
        "serverInfo": {"name": "real", "version": "2.0", "title": "Real"},
        "instructions": "Be nice.",
    }
    assert server.sessions == [peer.session]
    peer.request("tools/call", {"name": "add", "arguments": {"a": 2, "b": 3}}, id=2)
    assert result(peer.take()[0])["content"] == [{"type": "text", "text": "5"}]
    peer.session.close()
    assert server.sessions == []


def test_array_params_are_refused_before_the_handler() -> None:
    peer = Peer(FakeHandler())
    peer.initialize()
    peer.request("echo", [1, 2], id=1)
    (reply,) = peer.take()
    assert (reply["id"], error_code(reply)) == (1, INVALID_PARAMS)
    assert peer.handler.requests == []


def test_handler_errors_become_error_responses() -> None:
    def crash(request: IncomingRequest) -> Any:
        raise ZeroDivisionError

    def refuse(request: IncomingRequest) -> Any:
        raise RPCError(-32602, "no", {"why": "because"})

    peer = Peer(FakeHandler({"crash": crash, "refuse": refuse}))
    peer.initialize()
    peer.request("crash", id=1)
    peer.request("refuse", id=2)
    peer.request("missing", id=3)
    crashed, refused, missing = peer.take()
    assert (crashed["id"], error_code(crashed)) == (1, -32603)
    assert refused == {"jsonrpc": "2.0", "id": 2,
                       "error": {"code": -32602, "message": "no", "data": {"why": "because"}}}
    assert (missing["id"], error_code(missing)) == (3, METHOD_NOT_FOUND)
    assert peer.session.in_flight == 0


def test_a_result_json_cannot_carry_becomes_an_internal_error() -> None:
    pending: Deferred[Any] = Deferred()
    peer = Peer(FakeHandler({"bad": lambda r: {"x": object()}, "later": lambda r: pending}))
    peer.initialize()
    peer.request("bad", id=1)  # answered synchronously
    peer.request("later", id=2)
    pending.callback({1, 2})  # a set: not JSON
    first, second = peer.take()
    assert (first["id"], error_code(first)) == (1, -32603)
    assert (second["id"], error_code(second)) == (2, -32603)
    assert peer.session.in_flight == 0


# -- batches -----------------------------------------------------------------------


@pytest.mark.parametrize("version", ["2024-11-05", "2025-06-18", "2025-11-25"])
def test_batches_are_refused_outside_2025_03_26(version: str) -> None:
    peer = Peer(FakeHandler())
    peer.initialize(version)
    peer.send([jsonrpc.request(1, "echo", {}), jsonrpc.request(2, "ping")])
    (reply,) = peer.take()
    assert reply["id"] is None
    assert error_code(reply) == INVALID_REQUEST
    assert peer.handler.requests == []


def test_batches_are_refused_before_initialize() -> None:
    peer = Peer(FakeHandler())
    peer.send([jsonrpc.request(1, "ping")])
    (reply,) = peer.take()
    assert (reply["id"], error_code(reply)) == (None, INVALID_REQUEST)


def test_batch_on_2025_03_26_is_answered_as_one_array() -> None:
    peer = Peer(FakeHandler())
    peer.initialize("2025-03-26")
    peer.send([
        jsonrpc.request(1, "echo", {"n": 1}),
        jsonrpc.notification("notifications/roots/list_changed", {"x": 1}),
        5,
        jsonrpc.request("two", "ping"),
        {"jsonrpc": "2.0", "id": 3, "method": 3},
        jsonrpc.request(4, "missing"),
    ])
    (replies,) = peer.take()  # one text
    assert isinstance(replies, list)
    by_id = {json.dumps(reply["id"]): reply for reply in replies}
    assert len(replies) == 5
    assert result(by_id["1"]) == {"n": 1}
    assert result(by_id['"two"']) == {}
    assert error_code(by_id["3"]) == INVALID_REQUEST
    assert error_code(by_id["4"]) == METHOD_NOT_FOUND
    assert error_code(by_id["null"]) == INVALID_REQUEST
    assert peer.handler.notifications == [("notifications/roots/list_changed", {"x": 1})]


def test_batch_waits_for_its_slowest_request() -> None:
    pending: Deferred[Any] = Deferred()
    peer = Peer(FakeHandler({"slow": lambda r: pending}))
    peer.initialize("2025-03-26")
    peer.send([jsonrpc.request(1, "slow"), jsonrpc.request(2, "echo", {"fast": True})])
    assert peer.take() == []
    pending.callback("done")
    (replies,) = peer.take()
    assert sorted((reply["id"], reply["result"]) for reply in replies) == [(1, "done"), (2, {"fast": True})]


def test_batch_of_notifications_gets_no_reply() -> None:
    peer = Peer(FakeHandler())
    peer.initialize("2025-03-26")
    peer.send([jsonrpc.notification("a"), jsonrpc.notification("b", {"c": 1})])
    assert peer.take() == []
    assert [method for method, _ in peer.handler.notifications] == ["a", "b"]


def test_initialize_inside_a_batch_is_refused() -> None:
    peer = Peer(FakeHandler())
    peer.initialize("2025-03-26")
    initialize = jsonrpc.request(1, "initialize", {"protocolVersion": "2025-03-26"})
    peer.send([initialize, jsonrpc.request(2, "ping")])
    (replies,) = peer.take()
    by_id = {reply["id"]: reply for reply in replies}
    assert error_code(by_id[1]) == INVALID_REQUEST
    assert result(by_id[2]) == {}


def test_cancelled_batch_element_is_left_out_of_the_reply() -> None:
    pending: Deferred[Any] = Deferred()
    peer = Peer(FakeHandler({"slow": lambda r: pending}))
    peer.initialize("2025-03-26")
    peer.send([jsonrpc.request(1, "slow"), jsonrpc.request(2, "ping")])
    peer.notify("notifications/cancelled", {"requestId": 1})
    (replies,) = peer.take()
    assert replies == [{"jsonrpc": "2.0", "id": 2, "result": {}}]


def test_bad_result_in_a_batch_does_not_lose_the_batch() -> None:
    peer = Peer(FakeHandler({"bad": lambda r: object()}))
    peer.initialize("2025-03-26")
    peer.send([jsonrpc.request(1, "bad"), jsonrpc.request(2, "ping")])
    (replies,) = peer.take()
    by_id = {reply["id"]: reply for reply in replies}
    assert error_code(by_id[1]) == -32603
    assert result(by_id[2]) == {}


# -- concurrency -------------------------------------------------------------------


def test_no_head_of_line_blocking() -> None:
    deferreds: dict[str, Deferred[Any]] = {}

    def wait(request: IncomingRequest) -> Deferred[Any]:
        deferreds[request.params["name"]] = Deferred()
        return deferreds[request.params["name"]]

    peer = Peer(FakeHandler({"wait": wait}))
    peer.initialize()
    peer.request("wait", {"name": "first"}, id=1)
    peer.request("wait", {"name": "second"}, id=2)
    assert peer.take() == []
    assert peer.session.in_flight == 2
    deferreds["second"].callback("b")
    assert peer.take() == [{"jsonrpc": "2.0", "id": 2, "result": "b"}]
    deferreds["first"].callback("a")
    assert peer.take() == [{"jsonrpc": "2.0", "id": 1, "result": "a"}]
    assert peer.session.in_flight == 0


def test_max_in_flight_refuses_the_request_over_the_limit() -> None:
    wait, deferreds = waiting_route()

    peer = Peer(FakeHandler({"wait": wait}), max_in_flight=2)
    peer.initialize()
    peer.request("wait", id=1)
    peer.request("wait", id=2)
    peer.request("wait", id=3)
    (busy,) = peer.take()
    assert busy["id"] == 3
    assert error_code(busy) == SERVER_BUSY == -32000
    assert busy["error"]["data"] == {"limit": 2}
    assert len(deferreds) == 2  # the third never reached the handler
    peer.request("ping", id=4)  # ping needs no slot
    assert result(peer.take()[0]) == {}
    deferreds[0].callback("one")
    deferreds[1].callback("two")
    assert peer.take() == [{"jsonrpc": "2.0", "id": 1, "result": "one"},
                           {"jsonrpc": "2.0", "id": 2, "result": "two"}]
    # The slots were released: two more are accepted.
    peer.request("wait", id=5)
    peer.request("wait", id=6)
    assert peer.take() == []
    assert peer.session.in_flight == 2
    assert len(deferreds) == 4


def test_failed_and_cancelled_requests_release_their_slots() -> None:
    wait, deferreds = waiting_route()

    peer = Peer(FakeHandler({"wait": wait}), max_in_flight=1)
    peer.initialize()
    peer.request("wait", id=1)
    deferreds[0].errback(RPCError(-32602, "bad"))
    peer.request("wait", id=2)
    peer.notify("notifications/cancelled", {"requestId": 2})
    peer.request("wait", id=3)
    assert peer.session.in_flight == 1
    assert [reply["id"] for reply in peer.take()] == [1]


def test_duplicate_id_in_flight_is_refused() -> None:
    pending: Deferred[Any] = Deferred()
    peer = Peer(FakeHandler({"wait": lambda r: pending}))
    peer.initialize()
    peer.request("wait", id=7)
    peer.request("echo", {}, id=7)
    (reply,) = peer.take()
    assert (reply["id"], error_code(reply)) == (7, INVALID_REQUEST)
    peer.request("echo", {"s": 1}, id="7")  # a string id is a different id
    assert result(peer.take()[0]) == {"s": 1}
    pending.callback(1)
    assert peer.take() == [{"jsonrpc": "2.0", "id": 7, "result": 1}]


# -- cancellation ------------------------------------------------------------------


def test_cancelled_notification_cancels_the_handler_and_suppresses_the_answer() -> None:
    cancelled: list[Deferred[Any]] = []
    pending: Deferred[Any] = Deferred(cancelled.append)
    peer = Peer(FakeHandler({"wait": lambda r: pending}))
    peer.initialize()
    peer.request("wait", id="job")
    peer.notify("notifications/cancelled", {"requestId": "job", "reason": "user"})
    assert cancelled == [pending]
    assert peer.handler.requests[0].cancelled
    assert peer.session.in_flight == 0
    assert peer.take() == []


def test_no_answer_even_if_the_handler_finishes_after_cancellation() -> None:
    # A canceller may fire the Deferred with a result; that is still no answer.
    pending: Deferred[Any] = Deferred(lambda d: d.callback("result anyway"))
    peer = Peer(FakeHandler({"wait": lambda r: pending}))
    peer.initialize()
    peer.request("wait", id=1)
    peer.notify("notifications/cancelled", {"requestId": 1})
    assert pending.called
    assert peer.take() == []
    assert peer.session.in_flight == 0


def test_handler_that_ignores_cancellation_is_not_answered() -> None:
    async def stubborn(request: IncomingRequest) -> str:
        try:
            await gate
        except CancelledError:
            await second
        return "finished anyway"

    gate: Deferred[Any] = Deferred()
    second: Deferred[Any] = Deferred()
    peer = Peer(FakeHandler({"stubborn": stubborn}))
    peer.initialize()
    peer.request("stubborn", id=1)
    peer.notify("notifications/cancelled", {"requestId": 1})
    second.callback(None)
    assert peer.take() == []


@pytest.mark.parametrize("request_id", [2, "1", None, True, 1.0, [1], {"id": 1}])
def test_cancelling_unknown_ids_is_ignored(request_id: Any) -> None:
    pending: Deferred[Any] = Deferred()
    peer = Peer(FakeHandler({"wait": lambda r: pending}))
    peer.initialize()
    peer.request("wait", id=1)
    peer.notify("notifications/cancelled", {"requestId": request_id})
    peer.notify("notifications/cancelled", {})
    peer.notify("notifications/cancelled", [1])
    assert peer.take() == []
    assert peer.session.in_flight == 1
    pending.callback("ok")
    assert peer.take() == [{"jsonrpc": "2.0", "id": 1, "result": "ok"}]


def test_coroutine_handler_sees_cancelled_error() -> None:
    seen: list[str] = []
    gate: Deferred[Any] = Deferred()

    async def handler(request: IncomingRequest) -> str:
        try:
            await gate
        except CancelledError:
            seen.append("cancelled")
            raise
        return "never"

    peer = Peer(FakeHandler({"coro": handler}))
    peer.initialize()
    peer.request("coro", id=1)
    assert seen == []
    peer.notify("notifications/cancelled", {"requestId": 1})
    assert seen == ["cancelled"]
    assert peer.take() == []
    assert peer.session.in_flight == 0


def test_cancelled_tool_of_the_real_server_is_not_answered() -> None:
    server = MCPServer("real")
    seen: list[str] = []
    gate: Deferred[Any] = Deferred()

    @server.tool()
    async def slow() -> str:
        try:
            await gate
        except CancelledError:
            seen.append("cancelled")
            raise
        return "never"

    peer = Peer(server)
    peer.initialize()
    peer.request("tools/call", {"name": "slow"}, id=1)
    peer.notify("notifications/cancelled", {"requestId": 1})
    assert seen == ["cancelled"]
    assert peer.take() == []


# -- handler timeout -----------------------------------------------------------------


def test_handler_timeout_cancels_and_answers_request_timeout() -> None:
    cancelled: list[Deferred[Any]] = []
    peer = Peer(FakeHandler({"wait": lambda r: Deferred(cancelled.append)}), handler_timeout=5)
    peer.initialize()
    peer.request("wait", id="t")
    peer.clock.advance(4.9)
    assert peer.take() == []
    assert cancelled == []
    peer.clock.advance(0.2)
    assert len(cancelled) == 1
    (reply,) = peer.take()
    assert reply["id"] == "t"
    assert error_code(reply) == REQUEST_TIMEOUT == -32001
    assert peer.session.in_flight == 0


def test_handler_timeout_timer_is_stopped_when_the_handler_finishes() -> None:
    pending: Deferred[Any] = Deferred()
    peer = Peer(FakeHandler({"wait": lambda r: pending}), handler_timeout=5)
    peer.initialize()
    peer.request("wait", id=1)
    assert len(peer.clock.getDelayedCalls()) == 1
    pending.callback("quick")
    assert peer.clock.getDelayedCalls() == []
    peer.clock.advance(10)
    assert peer.take() == [{"jsonrpc": "2.0", "id": 1, "result": "quick"}]


def test_handler_timeout_cancels_a_coroutine() -> None:
    seen: list[str] = []

    async def handler(request: IncomingRequest) -> str:
        try:
            await Deferred()
        except CancelledError:
            seen.append("cancelled")
            raise
        return "never"

    peer = Peer(FakeHandler({"coro": handler}), handler_timeout=1)
    peer.initialize()
    peer.request("coro", id=1)
    peer.clock.advance(1)
    assert seen == ["cancelled"]
    (reply,) = peer.take()
    assert error_code(reply) == REQUEST_TIMEOUT


# -- the quick table (answers without an IncomingRequest) -----------------------------


class QuickHandler(FakeHandler):
    """A FakeHandler whose ``quick`` table answers ``fast`` (and declines ``_meta``)."""

    def __init__(self, quick: Callable[[dict[str, Any], Any], Any]) -> None:
        super().__init__({"fast": lambda request: {"slow": True}})
        self.quick = {"fast": quick}


def quick_peer(quick: Callable[[dict[str, Any], Any], Any], **options: Any) -> Peer:
    peer = Peer(QuickHandler(quick), **options)
    peer.initialize()
    return peer


def test_a_quick_answer_skips_handle_request() -> None:
    peer = quick_peer(lambda params, session: {"n": params["n"] + 1})
    peer.request("fast", {"n": 1}, id=1)
    assert peer.take() == [{"jsonrpc": "2.0", "id": 1, "result": {"n": 2}}]
    assert peer.handler.requests == []
    assert peer.session.in_flight == 0


def test_a_declined_quick_request_goes_to_handle_request_once_asked() -> None:
    asked: list[Any] = []

    def quick(params: dict[str, Any], session: Any) -> Any:
        asked.append(params)
        return SLOW if params.get("slow") else {"quick": True}

    peer = quick_peer(quick)
    peer.request("fast", {"slow": True}, id=1)
    peer.request("fast", {}, id=2)
    assert [result(reply) for reply in peer.take()] == [{"slow": True}, {"quick": True}]
    assert [request.id for request in peer.handler.requests] == [1]
    assert asked == [{"slow": True}, {}]  # the declined one was not asked a second time
    peer.session.dispatch(Request(3, "fast", {"slow": True}))  # a transport that parsed it (HTTP)
    assert result(peer.take()[0]) == {"slow": True}
    assert len(asked) == 3


def test_quick_handlers_are_not_asked_in_a_batch_or_by_2026_07_28_requests() -> None:
    asked: list[Any] = []

    def quick(params: dict[str, Any], session: Any) -> Any:
        asked.append(params)
        return {"quick": True}

    batched = Peer(QuickHandler(quick))
    batched.initialize("2025-03-26")  # the one revision with batches
    batched.send([{"jsonrpc": "2.0", "id": 1, "method": "fast", "params": {}}])
    assert [result(reply) for reply in batched.take()[0]] == [{"slow": True}]
    modern = Peer(QuickHandler(quick))
    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}
    modern.request("fast", {"_meta": meta}, id=2)
    assert result(modern.take()[0]) == {"slow": True, "resultType": "complete"}
    assert asked == []


def test_the_quick_path_leaves_every_check_to_the_long_way() -> None:
    peer = quick_peer(lambda params, session: Deferred(), max_in_flight=1)
    peer.send({"jsonrpc": "2.0", "id": 1, "method": "fast", "params": {"_meta": {"progressToken": 1}}})
    assert result(peer.take()[0]) == {"slow": True}  # _meta: handle_request
    peer.send({"jsonrpc": "1.0", "id": 2, "method": "fast", "params": {}})
    peer.send({"jsonrpc": "2.0", "id": True, "method": "fast", "params": {}})
    peer.send({"jsonrpc": "2.0", "id": 3, "method": "fast", "params": [1]})
    assert [error_code(reply) for reply in peer.take()] == [INVALID_REQUEST, INVALID_REQUEST, INVALID_PARAMS]
    peer.send({"jsonrpc": "2.0", "id": 4, "method": "fast", "params": {}})  # takes the one slot
    peer.send({"jsonrpc": "2.0", "id": 5, "method": "fast", "params": {}})
    (busy,) = peer.take()
    assert busy["id"] == 5 and error_code(busy) == SERVER_BUSY
    assert [request.id for request in peer.handler.requests] == [1]


def test_a_raising_quick_handler_still_answers_once_with_an_internal_error(events: list[Any]) -> None:
    def broken(params: dict[str, Any], session: Any) -> Any:
        raise ZeroDivisionError("oops")

    peer = quick_peer(broken)
    peer.request("fast", {}, id=7)
    (reply,) = peer.take()
    assert reply["id"] == 7 and error_code(reply) == -32603
    assert reply["error"]["data"]["errorId"]
    assert peer.session.in_flight == 0
    assert sum(1 for event in events if event.get("log_failure") is not None) == 1


def test_a_quick_deferred_is_in_flight_cancellable_and_timed() -> None:
    cancelled: list[Deferred[Any]] = []
    pending: list[Deferred[Any]] = []

    def later(params: dict[str, Any], session: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred(cancelled.append)
        pending.append(d)
        return d

    peer = quick_peer(later, handler_timeout=5)
    peer.request("fast", {}, id=1)
    peer.request("fast", {}, id=2)
    peer.request("fast", {}, id=3)
    assert peer.session.in_flight == 3 and peer.take() == []
    peer.request("fast", {}, id=1)  # its id is taken while it runs
    assert error_code(peer.take()[0]) == INVALID_REQUEST
    pending[0].callback({"done": 1})
    peer.notify("notifications/cancelled", {"requestId": 2})
    assert cancelled == [pending[1]]
    peer.clock.advance(5)
    assert cancelled == [pending[1], pending[2]]
    first, timed_out = peer.take()
    assert first == {"jsonrpc": "2.0", "id": 1, "result": {"done": 1}}
    assert timed_out["id"] == 3 and error_code(timed_out) == REQUEST_TIMEOUT
    assert peer.session.in_flight == 0


def test_the_observer_hears_of_quick_answers_with_their_outcome() -> None:
    seen: list[tuple[str, str, float]] = []
    answers = iter([{"content": []}, {"content": [], "isError": True}])
    peer = quick_peer(lambda params, session: next(answers), observer=lambda *event: seen.append(event))
    peer.request("fast", {}, id=1)
    peer.request("fast", {}, id=2)
    assert seen == [("fast", "ok", 0.0), ("fast", "tool_error", 0.0)]


# -- progress ------------------------------------------------------------------------


def test_report_progress_uses_the_requests_token() -> None:
    requests: list[IncomingRequest] = []

    def wait(request: IncomingRequest) -> Deferred[Any]:
        requests.append(request)
        return Deferred()

    peer = Peer(FakeHandler({"wait": wait}))
    peer.initialize("2025-03-26")
    peer.request("wait", {"_meta": {"progressToken": "tok"}}, id=1)
    (request,) = requests
    assert request.progress_token == "tok"
    request.report_progress(1, 10, "started")
    request.report_progress(2.5)
    assert peer.take() == [
        {"jsonrpc": "2.0", "method": "notifications/progress",
         "params": {"progressToken": "tok", "progress": 1, "total": 10, "message": "started"}},
        {"jsonrpc": "2.0", "method": "notifications/progress",
         "params": {"progressToken": "tok", "progress": 2.5}},
    ]


@pytest.mark.parametrize("token", [0, 17, ""])
def test_integer_and_empty_tokens_are_echoed(token: str | int) -> None:
    requests: list[IncomingRequest] = []
    peer = Peer(FakeHandler({"wait": lambda r: requests.append(r) or Deferred()}))
    peer.initialize()
    peer.request("wait", {"_meta": {"progressToken": token}}, id=1)
    requests[0].report_progress(1)
    (notification,) = peer.take()
    assert notification["params"]["progressToken"] == token


def test_progress_must_increase() -> None:
    requests: list[IncomingRequest] = []
    peer = Peer(FakeHandler({"wait": lambda r: requests.append(r) or Deferred()}))
    peer.initialize()
    peer.request("wait", {"_meta": {"progressToken": 9}}, id=1)
    requests[0].report_progress(5)
    with pytest.raises(ValueError):
        requests[0].report_progress(5)
    with pytest.raises(ValueError):
        requests[0].report_progress(4)
    assert len(peer.take()) == 1
    requests[0].report_progress(6)
    assert peer.take()[0]["params"]["progress"] == 6


def test_no_token_no_progress() -> None:
    requests: list[IncomingRequest] = []
    peer = Peer(FakeHandler({"wait": lambda r: requests.append(r) or Deferred()}))
    peer.initialize()
    peer.request("wait", {"_meta": {}}, id=1)
    peer.request("wait", id=2)
    for request in requests:
        assert request.progress_token is None
        request.report_progress(1)
        request.report_progress(1)  # not even checked: nothing was sent
    assert peer.take() == []


def test_progress_message_only_from_2025_03_26() -> None:
    requests: list[IncomingRequest] = []
    peer = Peer(FakeHandler({"wait": lambda r: requests.append(r) or Deferred()}))
    peer.initialize("2024-11-05")
    peer.request("wait", {"_meta": {"progressToken": "t"}}, id=1)
    requests[0].report_progress(1, 2, "hidden")
    (notification,) = peer.take()
    assert notification["params"] == {"progressToken": "t", "progress": 1, "total": 2}


def test_no_progress_after_cancellation_or_answer() -> None:
    requests: list[IncomingRequest] = []
    deferreds: list[Deferred[Any]] = []

    def wait(request: IncomingRequest) -> Deferred[Any]:
        requests.append(request)
        deferreds.append(Deferred())
        return deferreds[-1]

    peer = Peer(FakeHandler({"wait": wait}))
    peer.initialize()
    peer.request("wait", {"_meta": {"progressToken": "a"}}, id=1)
    peer.request("wait", {"_meta": {"progressToken": "b"}}, id=2)
    peer.notify("notifications/cancelled", {"requestId": 1})
    deferreds[1].callback("done")
    peer.take()
    requests[0].report_progress(1)
    requests[1].report_progress(1)
    assert peer.take() == []


def test_synchronous_handler_can_report_progress() -> None:
    def work(request: IncomingRequest) -> str:
        request.report_progress(1, 1)
        return "done"

    peer = Peer(FakeHandler({"work": work}))
    peer.initialize()
    peer.request("work", {"_meta": {"progressToken": "p"}}, id=1)
    progress, reply = peer.take()
    assert progress["params"] == {"progressToken": "p", "progress": 1, "total": 1}
    assert result(reply) == "done"


def test_tool_reports_progress_before_its_first_wait() -> None:
    server = MCPServer("real")
    gate: Deferred[Any] = Deferred()

    @server.tool()
    async def work(ctx: Context) -> str:
        await ctx.report_progress(1, 2)
        await gate
        await ctx.report_progress(2, 2)
        return "done"

    peer = Peer(server)
    peer.initialize()
    peer.request("tools/call", {"name": "work", "_meta": {"progressToken": "w"}}, id=1)
    gate.callback(None)
    first, second, reply = peer.take()
    assert first["params"] == {"progressToken": "w", "progress": 1, "total": 2}
    assert second["params"] == {"progressToken": "w", "progress": 2, "total": 2}
    assert result(reply)["content"] == [{"type": "text", "text": "done"}]


# -- outgoing requests ---------------------------------------------------------------


def ready_client(**options: Any) -> Peer:
    peer = Peer(FakeHandler(), role=Role.CLIENT, **options)
    peer.session.state = State.READY
    return peer


def test_outgoing_request_is_correlated_by_id() -> None:
    peer = ready_client()
    first = peer.session.request("tools/list")
    second = peer.session.request("tools/call", {"name": "x"})
    assert peer.take() == [
        {"jsonrpc": "2.0", "id": 0, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}},
    ]
    peer.send({"jsonrpc": "2.0", "id": "1", "result": "wrong"})  # a string id is not our 1
    assert not second.called
    peer.send(jsonrpc.response(1, {"second": True}))
    peer.send(jsonrpc.response(0, {"first": True}))
    assert result_of(second) == {"second": True}
    assert result_of(first) == {"first": True}
    assert peer.session.waiting == 0
    assert peer.take() == []


def test_error_response_fails_with_rpc_error() -> None:
    peer = ready_client()
    d = peer.session.request("tools/call")
    peer.send(jsonrpc.error_response(0, RPCError(-32602, "Unknown tool", {"name": "x"})))
    error = failure_of(d).value
    assert isinstance(error, RPCError)
    assert (error.code, error.message, error.data) == (-32602, "Unknown tool", {"name": "x"})


@pytest.mark.parametrize("answer", [
    {"error": "boom"}, {"error": {"code": "1", "message": "x"}}, {"error": {"code": 1}},
    {"result": {}, "error": {"code": 1, "message": "x"}},
])
def test_a_malformed_answer_fails_its_request_and_gets_no_reply(answer: dict[str, Any], events) -> None:
    # Its id can be read: the request it answers fails now, not at its
    # timeout (or never), and a response is not answered with an error.
    peer = ready_client()
    peer.session.protocol_version = "2025-03-26"  # the revision with batches
    d = peer.session.request("tools/call", timeout=None)
    other = peer.session.request("ping", timeout=None)
    peer.take()
    peer.send({"jsonrpc": "2.0", "id": 0, **answer})
    error = failure_of(d).value
    assert isinstance(error, LocalProtocolError) and str(error).startswith("Malformed answer to tools/call")
    assert not other.called and peer.take() == []
    # In a batch too; id 7 answers nothing of ours.
    peer.send([{"jsonrpc": "2.0", "id": 1, **answer}, {"jsonrpc": "2.0", "id": 7, **answer}])
    assert isinstance(failure_of(other).value, LocalProtocolError)
    assert peer.take() == [] and peer.session.waiting == 0
    assert len(find(events, "Peer reported an error")) == 1


def test_outgoing_request_times_out_and_sends_cancelled() -> None:
    peer = ready_client(request_timeout=30)
    d = peer.session.request("sampling/createMessage", {"maxTokens": 5})
    peer.take()
    peer.clock.advance(29)
    assert not d.called
    peer.clock.advance(1)
    error = failure_of(d).value
    assert isinstance(error, RequestTimedOut)
    assert (error.method, error.timeout) == ("sampling/createMessage", 30)
    assert peer.take() == [{"jsonrpc": "2.0", "method": "notifications/cancelled",
                            "params": {"requestId": 0, "reason": "timed out"}}]
    peer.send(jsonrpc.response(0, "late"))  # ignored
    peer.send(jsonrpc.error_response(0, RPCError(1, "late")))
    assert peer.take() == []
    assert peer.session.waiting == 0


def test_per_request_timeout_overrides_the_default() -> None:
    peer = ready_client(request_timeout=30)
    short = peer.session.request("a", timeout=2)
    endless = peer.session.request("b", timeout=None)
    peer.clock.advance(2)
    assert isinstance(failure_of(short).value, RequestTimedOut)
    peer.clock.advance(10_000)
    assert not endless.called
    assert peer.session.waiting == 1


def test_cancelling_an_outgoing_request_sends_cancelled() -> None:
    peer = ready_client()
    d = peer.session.request("roots/list")
    peer.take()
    d.cancel()
    assert failure_of(d).check(CancelledError)
    assert peer.take() == [{"jsonrpc": "2.0", "method": "notifications/cancelled",
                            "params": {"requestId": 0, "reason": "cancelled"}}]
    assert peer.clock.getDelayedCalls() == []
    peer.send(jsonrpc.response(0, {"roots": []}))  # late: ignored
    assert peer.take() == []


def test_answered_request_cancels_its_timer() -> None:
    peer = ready_client()
    d = peer.session.request("ping")
    peer.send(jsonrpc.response(0, {}))
    assert result_of(d) == {}
    assert peer.clock.getDelayedCalls() == []
    d.cancel()  # too late: nothing happens
    peer.take()
    peer.clock.advance(1000)
    assert peer.take() == []


def test_progress_notifications_reach_on_progress_and_reset_the_timeout() -> None:
    seen: list[tuple[Any, Any, Any]] = []
    peer = ready_client(request_timeout=10)
    d = peer.session.request("tools/call", {"name": "x", "_meta": {"keep": 1}},
                             on_progress=lambda *args: seen.append(args))
    (sent,) = peer.take()
    assert sent["params"] == {"name": "x", "_meta": {"keep": 1, "progressToken": 0}}
    peer.clock.advance(8)
    peer.notify("notifications/progress", {"progressToken": 0, "progress": 1, "total": 3})
    peer.clock.advance(8)
    peer.notify("notifications/progress", {"progressToken": 0, "progress": 2, "message": "m"})
    peer.notify("notifications/progress", {"progressToken": "0", "progress": 9})  # not ours
    peer.notify("notifications/progress", {"progressToken": 77, "progress": 9})  # unknown
    peer.clock.advance(8)
    assert not d.called
    assert seen == [(1, 3, None), (2, None, "m")]
    peer.clock.advance(2)
    assert isinstance(failure_of(d).value, RequestTimedOut)


def test_a_raising_progress_callback_does_not_break_the_session(events) -> None:
    def boom(*args: Any) -> None:
        raise RuntimeError("callback bug")

    peer = ready_client()
    d = peer.session.request("x", on_progress=boom)
    for _ in range(100):  # the peer decides how often the callback runs
        peer.notify("notifications/progress", {"progressToken": 0, "progress": 1})
    peer.send(jsonrpc.response(0, "ok"))
    assert result_of(d) == "ok"
    # The first failure with its traceback, the rest counted once per interval.
    (first,) = find(events, "Progress callback for {method} raised")
    assert first["log_failure"] is not None and first["log_level"] is LogLevel.error
    assert find(events, "Progress callback for {method} raised again") == []
    peer.clock.advance(10)
    assert [e["count"] for e in find(events, "Progress callback for {method} raised again")] == [99]


def test_a_raising_notification_handler_is_logged_once_per_interval(events) -> None:
    class Raising(FakeHandler):
        def handle_notification(self, session: Any, method: str, params: Any) -> None:
            raise RuntimeError("handler bug")

    peer = Peer(Raising())
    peer.initialize()
    for _ in range(50):
        peer.notify("notifications/roots/list_changed")
    assert len(find(events, "Handler for notification {method} raised")) == 1
    peer.clock.advance(10)
    assert [e["count"] for e in find(events, "Handler for notification {method} raised again")] == [49]
    assert peer.session.state is State.READY


# -- close ---------------------------------------------------------------------------


def test_close_fails_waiting_requests_and_cancels_running_handlers() -> None:
    cancelled: list[Deferred[Any]] = []
    pending: Deferred[Any] = Deferred(cancelled.append)
    peer = Peer(FakeHandler({"wait": lambda r: pending}), handler_timeout=5)
    peer.initialize()
    peer.request("wait", id=1)
    waiting = peer.session.request("roots/list")
    peer.take()
    peer.session.close("bye")
    assert peer.session.state is State.CLOSED
    assert cancelled == [pending]
    error = failure_of(waiting).value
    assert isinstance(error, ConnectionLost) and str(error) == "bye"
    assert (peer.session.in_flight, peer.session.waiting) == (0, 0)
    assert peer.handler.closed == [peer.session]
    assert peer.clock.getDelayedCalls() == []
    peer.session.close()  # idempotent
    assert peer.handler.closed == [peer.session]


def test_nothing_is_sent_after_close() -> None:
    pending: Deferred[Any] = Deferred(lambda d: None)
    requests: list[IncomingRequest] = []
    peer = Peer(FakeHandler({"wait": lambda r: requests.append(r) or pending}))
    peer.initialize()
    peer.request("wait", {"_meta": {"progressToken": 1}}, id=1)
    peer.session.close()
    peer.request("ping", id=2)
    peer.send("not json")
    peer.session.notify("notifications/message", {"level": "info", "data": "x"})
    requests[0].report_progress(1)
    late = peer.session.request("ping")
    assert isinstance(failure_of(late).value, ConnectionLost)
    assert peer.take() == []
    assert peer.handler.requests == requests


def test_close_while_the_handler_runs_cancels_what_it_returns() -> None:
    cancelled: list[Deferred[Any]] = []
    returned: Deferred[Any] = Deferred(cancelled.append)

    def closing(request: IncomingRequest) -> Deferred[Any]:
        request.session.close()
        return returned

    peer = Peer(FakeHandler({"closing": closing}))
    peer.initialize()
    peer.request("closing", id=1)
    assert cancelled == [returned]
    assert peer.take() == []


# -- client role ---------------------------------------------------------------------


def test_client_initialize_handshake() -> None:
    peer = Peer(FakeHandler(), role=Role.CLIENT)
    d = peer.session.initialize({"name": "cli", "version": "1"}, {"roots": {"listChanged": True}})
    assert peer.session.state is State.INITIALIZING
    (sent,) = peer.take()
    assert sent == {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": LATEST_PROTOCOL_VERSION, "capabilities": {"roots": {"listChanged": True}},
        "clientInfo": {"name": "cli", "version": "1"}}}
    server_result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {"listChanged": True}},
                     "serverInfo": {"name": "srv", "version": "2"}}
    peer.send(jsonrpc.response(0, server_result))
    assert result_of(d) == server_result
    assert peer.take() == [{"jsonrpc": "2.0", "method": "notifications/initialized"}]
    assert peer.session.state is State.READY
    assert peer.session.protocol_version == "2025-06-18"
    assert peer.session.peer_capabilities == {"tools": {"listChanged": True}}
    assert peer.session.peer_info == {"name": "srv", "version": "2"}
    assert peer.session.initialize_result == server_result
    assert peer.handler.ready == [peer.session]


@pytest.mark.parametrize("answer", [
    {"protocolVersion": "2026-07-28", "capabilities": {}},
    {"protocolVersion": "1999-01-01"},
    {"capabilities": {}},
    "not an object",
])
def test_client_initialize_fails_on_an_unsupported_version(answer: Any) -> None:
    peer = Peer(FakeHandler(), role=Role.CLIENT)
    d = peer.session.initialize({"name": "cli", "version": "1"}, {}, "2024-11-05")
    peer.take()
    peer.send(jsonrpc.response(0, answer))
    assert failure_of(d).check(LocalProtocolError)  # this side's check, not an answer from the peer
    assert peer.take() == []  # no notifications/initialized
    assert peer.session.state is not State.READY
    assert peer.handler.ready == []


def test_client_initialize_timeout_sends_no_cancellation() -> None:
    peer = Peer(FakeHandler(), role=Role.CLIENT, request_timeout=5)
    d = peer.session.initialize({"name": "cli", "version": "1"}, {})
    peer.take()
    peer.clock.advance(5)
    assert failure_of(d).check(RequestTimedOut)
    assert peer.take() == []  # initialize must never be cancelled


def test_client_initialize_on_a_closed_session_fails() -> None:
    peer = Peer(FakeHandler(), role=Role.CLIENT)
    peer.session.close()
    d = peer.session.initialize({"name": "cli", "version": "1"}, {})
    assert failure_of(d).check(ConnectionLost)
    assert peer.session.state is State.CLOSED
    assert peer.take() == []


def test_client_answers_server_requests_and_refuses_initialize() -> None:
    peer = Peer(FakeHandler({"roots/list": lambda r: {"roots": []}}), role=Role.CLIENT)
    peer.session.initialize({"name": "cli", "version": "1"}, {"roots": {}})
    peer.send(jsonrpc.response(0, {"protocolVersion": "2025-11-25", "capabilities": {}}))
    peer.take()
    peer.request("roots/list", id="s1")
    peer.request("initialize", {"protocolVersion": "2025-11-25"}, id="s2")
    peer.request("ping", id="s3")
    peer.notify("notifications/tools/list_changed")
    roots, init, ping = peer.take()
    assert result(roots) == {"roots": []}
    assert (init["id"], error_code(init)) == ("s2", INVALID_REQUEST)
    assert result(ping) == {}
    assert peer.handler.notifications == [("notifications/tools/list_changed", {})]


# -- server-to-client requests through the real MCPServer -------------------------------


def server_with_context(contexts: list[Context]) -> MCPServer:
    server = MCPServer("ctx", client_request_timeout=20)

    @server.tool()
    def grab(ctx: Context) -> str:
        contexts.append(ctx)
        return "grabbed"

    return server


def context_for(capabilities: dict[str, Any], version: str = "2025-11-25") -> tuple[Peer, Context]:
    contexts: list[Context] = []
    peer = Peer(server_with_context(contexts))
    peer.initialize(version, capabilities)
    peer.request("tools/call", {"name": "grab"}, id=1)
    assert result(peer.take()[0])["content"] == [{"type": "text", "text": "grabbed"}]
    return peer, contexts[0]


CLIENT_REQUESTS: dict[str, Callable[[Context], Deferred[Any]]] = {
    "sample": lambda ctx: ctx.sample("hi"),
    "list_roots": lambda ctx: ctx.list_roots(),
    "elicit": lambda ctx: ctx.elicit("Name?", {"type": "object", "properties": {}}),
    "elicit_url": lambda ctx: ctx.elicit_url("Pay", "https://example.com/pay", "e1"),
}


@pytest.mark.parametrize("name", CLIENT_REQUESTS)
@pytest.mark.parametrize("capabilities", [{}, {"experimental": {}}])
def test_client_requests_need_the_declared_capability(name: str, capabilities: dict[str, Any]) -> None:
    peer, ctx = context_for(capabilities)
    with pytest.raises(CapabilityError):
        CLIENT_REQUESTS[name](ctx)
    assert peer.take() == []
    assert peer.session.waiting == 0


@pytest.mark.parametrize(("name", "elicitation"), [
    ("elicit", {"url": {}}),  # URL mode only: no forms
    ("elicit_url", {}),  # the 2025-06-18 shape: forms only
    ("elicit_url", {"form": {}}),
])
def test_elicitation_modes_must_be_declared(name: str, elicitation: dict[str, Any]) -> None:
    peer, ctx = context_for({"elicitation": elicitation})
    with pytest.raises(CapabilityError):
        CLIENT_REQUESTS[name](ctx)
    assert peer.take() == []


def test_sample_is_sent_and_correlated() -> None:
    peer, ctx = context_for({"sampling": {}})
    d = ctx.sample("hi", 50, system_prompt="short")
    (sent,) = peer.take()
    assert sent["method"] == "sampling/createMessage"
    assert sent["params"] == {"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}],
                              "maxTokens": 50, "systemPrompt": "short"}
    answer = {"role": "assistant", "content": {"type": "text", "text": "hello"}, "model": "m"}
    peer.send(jsonrpc.response(sent["id"], answer))
    assert result_of(d) == answer


def test_list_roots_is_sent_and_correlated() -> None:
    peer, ctx = context_for({"roots": {}})
    d = ctx.list_roots()
    (sent,) = peer.take()
    assert sent["method"] == "roots/list" and "params" not in sent
    peer.send(jsonrpc.response(sent["id"], {"roots": [{"uri": "file:///tmp"}]}))
    assert result_of(d) == [{"uri": "file:///tmp"}]


@pytest.mark.parametrize(("elicitation", "mode"), [({}, None), ({"form": {}, "url": {}}, "form")])
def test_elicit_is_sent_and_correlated(elicitation: dict[str, Any], mode: str | None) -> None:
    peer, ctx = context_for({"elicitation": elicitation})
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    d = ctx.elicit("Name?", schema)
    (sent,) = peer.take()
    assert sent["method"] == "elicitation/create"
    assert sent["params"].get("mode") == mode
    assert sent["params"]["requestedSchema"] == schema
    peer.send(jsonrpc.response(sent["id"], {"action": "accept", "content": {"name": "Ada"}}))
    assert result_of(d) == {"action": "accept", "content": {"name": "Ada"}}


def test_elicit_url_is_sent_and_correlated() -> None:
    peer, ctx = context_for({"elicitation": {"url": {}}})
    d = ctx.elicit_url("Pay", "https://example.com/pay", "e1")
    (sent,) = peer.take()
    assert sent["params"] == {"mode": "url", "message": "Pay", "url": "https://example.com/pay",
                              "elicitationId": "e1"}
    peer.send(jsonrpc.error_response(sent["id"], RPCError(-32600, "declined by policy")))
    assert failure_of(d).value.code == -32600


@pytest.mark.parametrize("name", CLIENT_REQUESTS)
def test_client_requests_time_out(name: str) -> None:
    peer, ctx = context_for({"sampling": {}, "roots": {}, "elicitation": {"form": {}, "url": {}}})
    d = CLIENT_REQUESTS[name](ctx)
    (sent,) = peer.take()
    peer.clock.advance(19.9)
    assert not d.called
    peer.clock.advance(0.1)  # the server's client_request_timeout
    assert failure_of(d).check(RequestTimedOut)
    assert peer.take() == [{"jsonrpc": "2.0", "method": "notifications/cancelled",
                            "params": {"requestId": sent["id"], "reason": "timed out"}}]


def test_explicit_timeout_for_a_client_request() -> None:
    peer, ctx = context_for({"roots": {}})
    d = ctx.list_roots(timeout=3)
    peer.clock.advance(3)
    assert failure_of(d).check(RequestTimedOut)


def test_tool_awaits_sampling_from_the_client() -> None:
    server = MCPServer("real")

    @server.tool()
    async def ask(question: str, ctx: Context) -> str:
        answer = await ctx.sample(question)
        return answer["content"]["text"]

    peer = Peer(server)
    peer.initialize(capabilities={"sampling": {}})
    peer.request("tools/call", {"name": "ask", "arguments": {"question": "why?"}}, id="call")
    (sent,) = peer.take()
    assert sent["method"] == "sampling/createMessage"
    peer.send(jsonrpc.response(sent["id"], {"role": "assistant", "model": "m",
                                            "content": {"type": "text", "text": "because"}}))
    (reply,) = peer.take()
    assert reply["id"] == "call"
    assert result(reply)["content"] == [{"type": "text", "text": "because"}]


def test_cancelling_a_tool_cancels_its_request_to_the_client() -> None:
    server = MCPServer("real")

    @server.tool()
    async def ask(ctx: Context) -> str:
        await ctx.sample("why?")
        return "never"

    peer = Peer(server)
    peer.initialize(capabilities={"sampling": {}})
    peer.request("tools/call", {"name": "ask"}, id="call")
    (sent,) = peer.take()
    peer.notify("notifications/cancelled", {"requestId": "call"})
    assert peer.take() == [{"jsonrpc": "2.0", "method": "notifications/cancelled",
                            "params": {"requestId": sent["id"], "reason": "cancelled"}}]
    assert (peer.session.in_flight, peer.session.waiting) == (0, 0)
    peer.send(jsonrpc.response(sent["id"], {"role": "assistant", "model": "m", "content": {}}))
    assert peer.take() == []


def test_closing_the_session_fails_a_tools_client_request() -> None:
    server = MCPServer("real")
    seen: list[BaseException] = []

    @server.tool()
    async def ask(ctx: Context) -> str:
        try:
            await ctx.list_roots()
        except Exception as e:
            seen.append(e)
            raise
        return "never"

    peer = Peer(server)
    peer.initialize(capabilities={"roots": {}})
    peer.request("tools/call", {"name": "ask"}, id=1)
    peer.take()
    peer.session.close()
    assert len(seen) == 1
    assert isinstance(seen[0], (ConnectionLost, CancelledError))
    assert peer.take() == []


def test_ensure_deferred_coroutine_result_is_answered() -> None:
    async def answer(request: IncomingRequest) -> dict[str, int]:
        return {"n": 1}

    peer = Peer(FakeHandler({"coro": answer, "wrapped": lambda r: ensureDeferred(answer(r))}))
    peer.initialize()
    peer.request("coro", id=1)
    peer.request("wrapped", id=2)
    assert [result(reply) for reply in peer.take()] == [{"n": 1}, {"n": 1}]
    assert peer.session.in_flight == 0


# -- draining (graceful shutdown) -----------------------------------------------------


def test_drain_refuses_new_requests_and_fires_when_running_ones_finish() -> None:
    wait, deferreds = waiting_route()

    peer = Peer(FakeHandler({"wait": wait}))
    peer.initialize()
    peer.request("wait", id=1)
    drained = peer.session.drain()
    assert not drained.called
    peer.request("wait", id=2)
    (refused,) = peer.take()
    assert refused["id"] == 2 and error_code(refused) == SERVER_SHUTTING_DOWN == -32003
    assert len(deferreds) == 1
    peer.request("ping", id=3)  # liveness checks still work while draining
    assert result(peer.take()[0]) == {}
    deferreds[0].callback("done")
    assert peer.take() == [{"jsonrpc": "2.0", "id": 1, "result": "done"}]
    assert result_of(drained) is None


def test_drain_of_an_idle_session_fires_at_once_and_close_releases_waiters() -> None:
    peer = Peer(FakeHandler({"wait": lambda request: Deferred()}))
    peer.initialize()
    assert result_of(peer.session.drain()) is None
    busy = Peer(FakeHandler({"wait": lambda request: Deferred()}))
    busy.initialize()
    busy.request("wait", id=1)
    drained = busy.session.drain()
    busy.session.close()
    assert result_of(drained) is None


# -- review findings ---------------------------------------------------------------


def test_a_fired_deferred_waiting_on_a_chained_one_is_still_timed_out() -> None:
    inner: Deferred[Any] = Deferred()

    def chained(request: IncomingRequest) -> Deferred[Any]:
        outer: Deferred[Any] = Deferred()
        outer.callback(None)
        return outer.addCallback(lambda _: inner)  # "called", yet waiting on inner

    peer = Peer(FakeHandler({"chained": chained}), handler_timeout=5)
    peer.initialize()
    peer.request("chained", id=1)
    assert peer.take() == [] and peer.session.in_flight == 1
    peer.clock.advance(5)
    (reply,) = peer.take()
    assert reply["id"] == 1 and error_code(reply) == REQUEST_TIMEOUT
    assert peer.session.in_flight == 0


def test_progress_restarts_the_timeout_but_not_forever() -> None:
    peer = Peer(FakeHandler(), role=Role.CLIENT)
    seen: list[float] = []
    d = peer.session.request("tools/call", {"name": "x"}, timeout=10,
                             on_progress=lambda p, t, m: seen.append(p))
    token = peer.take()[0]["params"]["_meta"]["progressToken"]
    failed_at: list[float] = []
    d.addErrback(lambda f: failed_at.append(peer.clock.seconds()) or f)
    for step in range(1, 30):
        peer.clock.pump([1] * 9)  # 9 s, always inside the 10 s timeout
        if d.called:
            break
        peer.notify("notifications/progress", {"progressToken": token, "progress": step})
    assert isinstance(failure_of(d).value, RequestTimedOut)
    assert 9 <= len(seen) <= 11  # about MAX_TIMEOUT_RESETS (10) timeouts' worth, not 29 steps
    assert failed_at == [10 * 10]  # the hard deadline: 10 timeouts after sending


def test_a_request_whose_params_are_not_json_fails_and_leaves_nothing_behind() -> None:
    peer = Peer(FakeHandler(), role=Role.CLIENT)
    d = peer.session.request("tools/call", {"value": object()})
    assert isinstance(failure_of(d).value, TypeError)
    assert peer.session.waiting == 0 and peer.take() == []
    assert peer.clock.getDelayedCalls() == []


def test_requests_refused_at_a_limit_are_observed_as_refused() -> None:
    observed: list[tuple[str, str]] = []
    peer = Peer(FakeHandler({"wait": lambda request: Deferred()}), max_in_flight=1,
                observer=lambda method, outcome, seconds: observed.append((method, outcome)))
    peer.initialize()
    peer.request("wait", id=1)
    peer.request("wait", id=2)
    peer.session.drain()
    peer.request("wait", id=3)
    assert [error_code(reply) for reply in peer.take()] == [SERVER_BUSY, SERVER_SHUTTING_DOWN]
    assert observed == [("wait", "refused"), ("wait", "refused")]
