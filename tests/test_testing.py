"""``mcp_twisted.testing``: the in-memory client and peer that users test their servers with."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.internet.defer import CancelledError, Deferred

import mcp_twisted.testing
from mcp_twisted import Context, MCPServer, ToolError
from mcp_twisted.client import MCPClient
from mcp_twisted.jsonrpc import RemoteError
from mcp_twisted.protocol import CapabilityError
from mcp_twisted.session import ConnectionLost, RequestTimedOut, Role, State
from mcp_twisted.testing import MemoryClient, Peer, failure_of, result_of
from tests.support import FakeHandler, text_of


def weather() -> tuple[MCPServer, dict[str, Any]]:
    """An app with sync and async tools, a slow one on the session's clock, and resources."""
    server = MCPServer("weather", "1.0")
    seen: dict[str, Any] = {"gates": [], "cancelled": 0, "contexts": []}

    @server.tool()
    def forecast(city: str) -> str:
        """Forecast for a city."""
        return f"Sunny in {city}"

    @server.tool()
    async def stepped(steps: int, ctx: Context) -> str:
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"step {step}")
        return "done"

    @server.tool()
    async def slow(seconds: float, ctx: Context) -> str:
        """Sleeps on the session's clock: the test's clock drives it."""
        try:
            await task.deferLater(ctx.session.clock, seconds)
        except CancelledError:
            seen["cancelled"] += 1
            raise
        return f"slept {seconds}"

    @server.tool()
    async def hang(ctx: Context) -> str:
        seen["gates"].append(Deferred())
        return await seen["gates"][-1]

    @server.tool()
    def whoami(ctx: Context) -> str:
        seen["contexts"].append(ctx)
        return str(ctx.identity)

    @server.tool()
    async def ask(question: str, ctx: Context) -> str:
        answer = await ctx.sample(question, timeout=30)
        return answer["content"]["text"]

    @server.tool()
    async def roots(ctx: Context) -> list[str]:
        return [root["uri"] for root in await ctx.list_roots()]

    @server.tool()
    async def chat(ctx: Context) -> str:
        await ctx.log("warning", "careful")
        return "said"

    @server.tool()
    def fail() -> str:
        raise ToolError("no such city")

    @server.resource("config://app", mime_type="application/json")
    def config() -> dict[str, bool]:
        return {"debug": False}

    @server.resource("users://{user_id}/profile")
    def profile(user_id: int) -> str:
        return f"User {user_id}"

    return server, seen


# -- MemoryClient: an MCPClient over two sessions in memory ------------------------


def test_memory_client_is_an_initialized_mcp_client():
    server, _ = weather()
    client = MemoryClient(server)
    assert isinstance(client, MCPClient)
    assert client.connected and client.server_info == {"name": "weather", "version": "1.0"}
    assert "tools" in client.server_capabilities
    assert server.sessions == [client.server_session]
    assert client.server_session.state is State.READY


def test_lists_and_calls_tools():
    client = MemoryClient(weather()[0])
    tools = result_of(client.list_tools())["tools"]
    assert [tool["name"] for tool in tools][:2] == ["forecast", "stepped"]
    assert tools[0]["description"] == "Forecast for a city."
    assert text_of(result_of(client.call_tool("forecast", {"city": "Oslo"}))) == "Sunny in Oslo"
    failed = result_of(client.call_tool("fail"))
    assert failed["isError"] is True and text_of(failed) == "no such city"
    assert failure_of(client.call_tool("nope"), RemoteError).value.code == -32602


def test_pages_through_iter_tools():
    server = MCPServer("many", page_size=2)
    for i in range(5):
        server.add_tool(lambda: "x", f"t{i}")
    client = MemoryClient(server)

    async def names() -> list[str]:
        return [tool["name"] async for tool in client.iter_tools()]

    assert result_of(names()) == ["t0", "t1", "t2", "t3", "t4"]


def test_reads_resources_and_templates():
    client = MemoryClient(weather()[0])
    (entry,) = result_of(client.read_resource("config://app"))["contents"]
    assert entry == {"uri": "config://app", "mimeType": "application/json", "text": '{"debug":false}'}
    (entry,) = result_of(client.read_resource("users://7/profile"))["contents"]
    assert entry["text"] == "User 7"
    assert failure_of(client.read_resource("config://nope"), RemoteError).value.code == -32002


def test_progress_reaches_on_progress():
    client = MemoryClient(weather()[0])
    steps: list[tuple[Any, ...]] = []
    d = client.call_tool("stepped", {"steps": 3}, on_progress=lambda *step: steps.append(step))
    assert text_of(result_of(d)) == "done"
    assert steps == [(1, 3, "step 1"), (2, 3, "step 2"), (3, 3, "step 3")]
    assert [m["method"] for m in client.received if "method" in m] == ["notifications/progress"] * 3


def test_an_answered_call_leaves_no_timer_behind():
    # Session.request starts the timeout after sending; in memory the answer
    # comes inside the send, and must not leave a dead timer on the clock.
    client = MemoryClient(weather()[0])
    result_of(client.call_tool("forecast", {"city": "Oslo"}))
    assert client.clock.getDelayedCalls() == []


def test_the_clock_drives_handlers_and_the_server_handler_timeout():
    client = MemoryClient(weather()[0], session_options={"handler_timeout": 10})
    d = client.call_tool("slow", {"seconds": 4})
    client.clock.advance(3.9)
    assert not d.called
    client.clock.advance(0.1)
    assert text_of(result_of(d)) == "slept 4.0"
    late = client.call_tool("slow", {"seconds": 60})
    client.clock.advance(10)
    assert failure_of(late, RemoteError).value.code == -32001


def test_the_clock_drives_the_client_timeout_and_cancels_on_the_server():
    server, seen = weather()
    client = MemoryClient(server, request_timeout=30)
    d = client.call_tool("slow", {"seconds": 3600})
    client.clock.advance(29)
    assert not d.called and seen["cancelled"] == 0
    client.clock.advance(1)
    error = failure_of(d, RequestTimedOut).value
    assert (error.method, error.timeout) == ("tools/call", 30)
    assert seen["cancelled"] == 1  # the client said notifications/cancelled
    assert client.sent[-1]["method"] == "notifications/cancelled"
    assert client.server_session.in_flight == 0


def test_deliver_later_queues_until_flush():
    server, _ = weather()
    client = MemoryClient(server, deliver_later=True)
    assert client.connected  # the handshake was flushed
    first = client.call_tool("forecast", {"city": "A"})
    second = client.call_tool("forecast", {"city": "B"})
    assert client.pending == 2 and not first.called
    first.cancel()  # before the server ever saw it
    assert client.flush() == 5  # two requests, a cancellation, two answers
    assert failure_of(first, CancelledError)
    assert text_of(result_of(second)) == "Sunny in B"
    assert client.pending == 0


def test_deliver_later_lets_a_request_time_out_unanswered():
    client = MemoryClient(weather()[0], deliver_later=True, request_timeout=5)
    d = client.call_tool("forecast", {"city": "Oslo"})
    client.clock.advance(5)
    assert failure_of(d, RequestTimedOut)
    client.flush()  # the answer arrives late, and is ignored
    assert [m.get("method") for m in client.sent[-2:]] == ["tools/call", "notifications/cancelled"]


# -- server-to-client requests, notifications ----------------------------------------


def test_sampling_and_roots_are_answered_by_the_client_handlers():
    def sampling(params: dict[str, Any]) -> dict[str, Any]:
        question = params["messages"][0]["content"]["text"]
        return {"role": "assistant", "model": "m", "content": {"type": "text", "text": question.upper()}}

    client = MemoryClient(weather()[0], sampling=sampling, roots=lambda: [{"uri": "file:///work"}])
    assert client.server_session.peer_capabilities == {"sampling": {}, "roots": {"listChanged": True}}
    assert text_of(result_of(client.call_tool("ask", {"question": "why?"}))) == "WHY?"
    assert text_of(result_of(client.call_tool("roots"))) == "file:///work"


def test_declared_capabilities_without_handlers_and_a_sampling_timeout():
    # Declared, so the server asks; there is no handler, so the client refuses.
    client = MemoryClient(weather()[0], capabilities={"sampling": {}})
    refused = failure_of(client.call_tool("ask", {"question": "q"}), RemoteError).value
    assert refused.code == -32601 and "sampling/createMessage" in refused.message
    # A client that never answers: the server's own timeout (30 s in the tool) ends it.
    slow = MemoryClient(weather()[0], capabilities={"sampling": {}}, sampling=lambda params: Deferred())
    d = slow.call_tool("ask", {"question": "q"})
    slow.clock.advance(30)
    assert result_of(d)["isError"] is True
    assert slow.received[-2]["method"] == "notifications/cancelled"  # the server gave up and said so


def test_undeclared_capability_is_refused_in_the_tool():
    server = MCPServer("s")
    errors: list[Exception] = []

    @server.tool()
    async def ask(ctx: Context) -> str:
        try:
            await ctx.sample("q")
        except CapabilityError as e:
            errors.append(e)
        return "ok"

    result_of(MemoryClient(server).call_tool("ask"))
    assert len(errors) == 1


def test_notifications_reach_the_client_callbacks():
    server, _ = weather()
    logs: list[dict[str, Any]] = []
    changes: list[str] = []
    updates: list[str] = []
    client = MemoryClient(server, on_log=logs.append, on_list_changed=changes.append)
    result_of(client.set_logging_level("debug"))
    result_of(client.call_tool("chat"))
    assert logs == [{"level": "warning", "data": "careful"}]
    server.add_tool(lambda: "new", "added")
    assert changes == ["tools"]
    result_of(client.subscribe("config://app", updates.append))
    server.notify_resource_updated("config://app")
    assert updates == ["config://app"]


def test_identity_and_protocol_version_reach_the_context():
    server, seen = weather()
    client = MemoryClient(server, identity="alice", protocol_version="2025-03-26",
                          client_info={"name": "tester", "version": "2"})
    assert text_of(result_of(client.call_tool("whoami"))) == "alice"
    (ctx,) = seen["contexts"]
    assert ctx.protocol_version == "2025-03-26" == client.session.protocol_version
    assert ctx.client_info == {"name": "tester", "version": "2"}


def test_disconnect_fails_waiting_calls_and_connect_restores_subscriptions():
    server, seen = weather()
    client = MemoryClient(server)
    updates: list[str] = []
    result_of(client.subscribe("config://app", updates.append))
    d = client.call_tool("slow", {"seconds": 60})
    old = client.server_session
    client.disconnect()
    assert failure_of(d, ConnectionLost)
    assert not client.connected and old.state is State.CLOSED and server.sessions == []
    assert seen["cancelled"] == 1  # the handler was cancelled
    result_of(client.connect())
    assert client.connected and server.sessions == [client.server_session]
    server.notify_resource_updated("config://app")
    assert updates == ["config://app"]  # subscribed again on the new connection


def test_a_failed_handshake_raises_from_the_constructor():
    class Broken(MCPServer):
        def describe(self, session: Any) -> dict[str, Any]:
            raise RuntimeError("bad icons")

    with pytest.raises(RemoteError) as raised:
        MemoryClient(Broken("broken"))
    assert raised.value.code == -32603


# -- send_raw: protocol errors ----------------------------------------------------------


def test_send_raw_returns_what_the_server_sent_back():
    client = MemoryClient(weather()[0])
    (reply,) = client.send_raw({"jsonrpc": "2.0", "id": "raw", "method": "tools/frobnicate"})
    assert reply["id"] == "raw" and reply["error"]["code"] == -32601
    assert client.send_raw(b"{not json") == [
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error: invalid JSON"}}]
    (invalid,) = client.send_raw({"jsonrpc": "2.0", "id": "x", "method": 5})
    assert invalid["error"]["code"] == -32600
    (batch,) = client.send_raw([{"jsonrpc": "2.0", "id": "b", "method": "ping"}])
    assert batch["error"]["code"] == -32600  # no batches in 2025-11-25
    assert client.send_raw({"jsonrpc": "2.0", "method": "notifications/whatever"}) == []
    progress, answer = client.send_raw({"jsonrpc": "2.0", "id": "p", "method": "tools/call", "params": {
        "name": "stepped", "arguments": {"steps": 1}, "_meta": {"progressToken": "tok"}}})
    assert progress["params"]["progressToken"] == "tok" and answer["id"] == "p"
    # The client session saw none of it and carries on.
    assert client.session.waiting == 0
    assert text_of(result_of(client.call_tool("forecast", {"city": "Oslo"}))) == "Sunny in Oslo"


def test_send_raw_batches_on_2025_03_26():
    client = MemoryClient(weather()[0], protocol_version="2025-03-26")
    (replies,) = client.send_raw([{"jsonrpc": "2.0", "id": "a", "method": "ping"},
                                  {"jsonrpc": "2.0", "id": "b", "method": "nope"}])
    assert {reply["id"]: "error" in reply for reply in replies} == {"a": False, "b": True}


def test_send_raw_with_deliver_later_answers_on_flush():
    client = MemoryClient(weather()[0], deliver_later=True)
    assert client.send_raw({"jsonrpc": "2.0", "id": "r", "method": "ping"}) == []
    client.flush()
    assert client.received[-1] == {"jsonrpc": "2.0", "id": "r", "result": {}}


# -- Peer: one session driven by hand ------------------------------------------------


def test_peer_drives_a_server_session_through_the_handshake():
    peer = Peer(weather()[0])
    assert peer.error("tools/list")["code"] == -32600  # not initialized yet
    result = peer.initialize("2025-06-18", {"roots": {}})
    assert result["protocolVersion"] == "2025-06-18" and peer.initialize_result == result
    assert peer.take() == []
    assert peer.result("tools/list")["tools"][0]["name"] == "forecast"
    assert text_of(peer.call_tool("forecast", {"city": "Oslo"})) == "Sunny in Oslo"
    request_id = peer.request("tools/call", {"name": "hang"})
    assert peer.answer(request_id) is None and peer.session.in_flight == 1
    peer.notify("notifications/cancelled", {"requestId": request_id})
    assert peer.session.in_flight == 0 and peer.answer(request_id) is None


def test_peer_sees_notifications_and_answers_server_requests():
    server, _ = weather()
    peer = Peer(server)
    peer.initialize(capabilities={"roots": {}})
    peer.request("tools/call", {"name": "roots"}, id="r")
    (roots_request,) = peer.take()
    assert roots_request["method"] == "roots/list"
    peer.send({"jsonrpc": "2.0", "id": roots_request["id"], "result": {"roots": [{"uri": "file:///x"}]}})
    assert text_of(peer.answer("r")["result"]) == "file:///x"
    server.add_tool(lambda: "x", "added")
    assert peer.notifications("notifications/tools/list_changed") == [{}]


def test_peer_in_the_client_role():
    handler = FakeHandler()
    peer = Peer(handler, role=Role.CLIENT, request_timeout=5)
    d = peer.session.initialize({"name": "c", "version": "1"}, {})
    (sent,) = peer.take()
    peer.send({"jsonrpc": "2.0", "id": sent["id"], "result": {"protocolVersion": "2025-11-25"}})
    assert result_of(d)["protocolVersion"] == "2025-11-25"
    assert peer.take() == [{"jsonrpc": "2.0", "method": "notifications/initialized"}]
    waiting = peer.session.request("ping")
    peer.clock.advance(5)
    assert failure_of(waiting, RequestTimedOut)


def test_peer_answer_refuses_ambiguity_and_call_needs_an_answer():
    peer = Peer(FakeHandler({"wait": lambda request: Deferred()}))
    peer.initialize()
    peer.request("echo", {}, id="twice")
    peer.request("echo", {}, id="twice")
    with pytest.raises(AssertionError, match="2 answers"):
        peer.answer("twice")
    with pytest.raises(AssertionError, match="no answer to wait"):
        peer.call("wait")
    with pytest.raises(AssertionError):
        peer.error("echo", {})


# -- result_of, failure_of ------------------------------------------------------------


def test_result_of_and_failure_of_say_what_went_wrong():
    assert result_of(defer.succeed(3)) == 3
    with pytest.raises(AssertionError, match="has not fired"):
        result_of(Deferred())
    with pytest.raises(AssertionError, match="failed"):
        result_of(defer.fail(ValueError("x")))
    assert failure_of(defer.fail(ValueError("x")), ValueError).check(ValueError)
    with pytest.raises(AssertionError, match="succeeded"):
        failure_of(defer.succeed(1))
    with pytest.raises(AssertionError, match="not one of"):
        failure_of(defer.fail(ValueError("x")), KeyError)

    async def coroutine() -> int:
        return 4

    assert result_of(coroutine()) == 4


def test_importing_the_module_loads_no_server_transport():
    code = "import sys, mcp_twisted.testing; print(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    modules = set(out.stdout.split())
    assert "mcp_twisted.websocket" not in modules and "mcp_twisted.server" not in modules


def test_the_module_docstring_example_runs():
    example = textwrap.dedent(mcp_twisted.testing.__doc__.split("Example (pytest)::\n", 1)[1])
    namespace: dict[str, Any] = {}
    exec(compile(example, "mcp_twisted.testing example", "exec"), namespace)
    tests = [test for name, test in namespace.items() if name.startswith("test_")]
    assert len(tests) == 4
    for test in tests:
        test()
