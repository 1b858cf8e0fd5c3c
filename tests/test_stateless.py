"""The 2026-07-28 engine without sockets: discovery, the envelope's errors,
removed methods, resultType and caching fields, logging by request, MRTR
rounds (one, several, at once, tampered, missing or malformed answers, an
undeclared capability), subscriptions/listen, and a connection's era."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import gatherResults

from mcp_twisted.eras import (
    META_CLIENT_CAPABILITIES,
    META_LOG_LEVEL,
    META_PROTOCOL_VERSION,
    META_SERVER_INFO,
    META_SUBSCRIPTION_ID,
)
from mcp_twisted.server import CachePolicy, Context, MCPServer
from mcp_twisted.testing import Peer

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


def envelope(capabilities: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {META_PROTOCOL_VERSION: "2026-07-28",
            META_CLIENT_CAPABILITIES: capabilities if capabilities is not None else {"elicitation": {}},
            **extra}


def app(**options: Any) -> MCPServer:
    server = MCPServer("stateless", "1.0", instructions="Test app.", **options)

    @server.tool()
    async def greet(ctx: Context) -> str:
        answer = await ctx.elicit("Name?", SCHEMA, key="who")
        return f"Hello {answer['content']['name']}"

    @server.tool()
    async def two_steps(ctx: Context) -> str:
        first = await ctx.elicit("First?", SCHEMA, key="one")
        second = await ctx.elicit("Second?", SCHEMA, key="two")
        return f"{first['content']['name']}+{second['content']['name']}"

    @server.tool()
    async def at_once(ctx: Context) -> str:
        name, roots = await gatherResults([ctx.elicit("Name?", SCHEMA, key="name"),
                                           ctx.list_roots(key="roots")], consumeErrors=True)
        return f"{name['content']['name']} with {len(roots)} roots"

    @server.tool()
    async def needs_sampling(ctx: Context) -> str:
        await ctx.sample("Hi")
        return "sampled"

    @server.tool()
    async def chatty(ctx: Context) -> str:
        await ctx.log("info", "informative")
        await ctx.log("error", "bad")
        return "done"

    @server.resource("data://one")
    def one() -> str:
        return "1"

    @server.prompt()
    def hello() -> str:
        return "Say hello"

    return server


def call(peer: Peer, method: str, params: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    params = dict(params or {})
    params["_meta"] = {**envelope(meta.pop("capabilities", None)), **meta}
    answer = peer.call(method, params)
    peer.clock.advance(0)  # a round ends in the turn after its last question
    return peer.answer(answer["id"]) or answer


def round_trip(
    peer: Peer, name: str, capabilities: dict[str, Any] | None = None, **params: Any
) -> dict[str, Any]:
    request_id = peer.request("tools/call", {"name": name, "arguments": {}, "_meta": envelope(capabilities),
                                             **params})
    peer.clock.advance(0)
    answer = peer.answer(request_id)
    assert answer is not None
    return answer


def test_discover_describes_the_server_with_caching_fields():
    peer = Peer(app(cache=CachePolicy(ttl_ms=5000, scope="public")))
    result = call(peer, "server/discover")["result"]
    assert "2026-07-28" in result["supportedVersions"] and "2025-11-25" in result["supportedVersions"]
    assert set(result["capabilities"]) >= {"tools", "resources", "prompts"}
    assert result["capabilities"]["tools"] == {"listChanged": True}
    assert result["_meta"][META_SERVER_INFO] == {"name": "stateless", "version": "1.0"}
    assert result["instructions"] == "Test app."
    assert (result["resultType"], result["ttlMs"], result["cacheScope"]) == ("complete", 5000, "public")


def test_lists_and_reads_carry_result_type_and_cache_fields_calls_do_not():
    peer = Peer(app())
    for method in ("tools/list", "prompts/list", "resources/list", "resources/templates/list"):
        result = call(peer, method)["result"]
        fields = (result["resultType"], result["ttlMs"], result["cacheScope"])
        assert fields == ("complete", 0, "private"), method
    read = call(peer, "resources/read", {"uri": "data://one"})["result"]
    assert read["contents"][0]["text"] == "1" and "ttlMs" in read
    prompt = call(peer, "prompts/get", {"name": "hello"})["result"]
    assert prompt["resultType"] == "complete" and "ttlMs" not in prompt


def test_no_initialize_is_needed_and_removed_methods_are_unknown():
    peer = Peer(app())
    assert "tools" in call(peer, "tools/list")["result"]
    for method in ("ping", "logging/setLevel", "resources/subscribe", "resources/unsubscribe", "initialize"):
        assert call(peer, method, {"uri": "data://one"})["error"]["code"] == -32601, method


def test_an_unknown_resource_is_an_invalid_param_with_its_uri():
    error = call(Peer(app()), "resources/read", {"uri": "data://none"})["error"]
    assert error["code"] == -32602 and error["data"] == {"uri": "data://none"}


def test_bad_envelopes_are_refused_with_the_request_id():
    peer = Peer(app())
    unknown = {META_PROTOCOL_VERSION: "2099-01-01", META_CLIENT_CAPABILITIES: {}}
    answer = peer.call("tools/list", {"_meta": unknown}, id="v")
    assert answer["id"] == "v" and answer["error"]["code"] == -32022
    answer = peer.call("tools/list", {"_meta": {META_PROTOCOL_VERSION: "2026-07-28"}}, id="p")
    assert answer["id"] == "p" and answer["error"]["code"] == -32602


def test_log_messages_only_at_the_level_the_request_asked_for():
    peer = Peer(app())
    call(peer, "tools/call", {"name": "chatty"})
    assert peer.notifications("notifications/message") == []
    call(peer, "tools/call", {"name": "chatty"}, **{META_LOG_LEVEL: "warning"})
    assert [n["data"] for n in peer.notifications("notifications/message")] == ["bad"]


def test_a_question_ends_the_round_and_the_retry_resumes_the_handler():
    peer = Peer(app())
    first = round_trip(peer, "greet")["result"]
    assert first["resultType"] == "input_required"
    assert first["inputRequests"]["who"]["method"] == "elicitation/create"
    assert peer.notifications() == []  # no request to the client, ever
    answered = round_trip(peer, "greet", requestState=first["requestState"],
                          inputResponses={"who": {"action": "accept", "content": {"name": "Ada"}}})
    assert answered["result"]["content"][0]["text"] == "Hello Ada"
    assert answered["result"]["resultType"] == "complete"


def test_several_rounds_carry_earlier_answers_in_the_sealed_state():
    peer = Peer(app())
    first = round_trip(peer, "two_steps")["result"]
    assert list(first["inputRequests"]) == ["one"]
    second = round_trip(peer, "two_steps", requestState=first["requestState"],
                        inputResponses={"one": {"action": "accept", "content": {"name": "a"}}})["result"]
    assert list(second["inputRequests"]) == ["two"] and second["requestState"] != first["requestState"]
    done = round_trip(peer, "two_steps", requestState=second["requestState"],
                      inputResponses={"two": {"action": "accept", "content": {"name": "b"}}})["result"]
    assert done["content"][0]["text"] == "a+b"


def test_questions_asked_together_come_in_one_round():
    peer = Peer(app())
    first = round_trip(peer, "at_once", {"elicitation": {}, "roots": {}})["result"]
    assert {key: q["method"] for key, q in first["inputRequests"].items()} == {
        "name": "elicitation/create", "roots": "roots/list"}


def test_samples_are_asked_under_their_own_keys():
    """ctx.sample's key= names its question, and two samples at once are two
    questions (its optional fields once took the key's name: both were "metadata")."""
    server = MCPServer("keys", "1.0")

    @server.tool()
    async def two_samples(ctx: Context) -> str:
        named, numbered = await gatherResults([ctx.sample("A?", key="first"), ctx.sample("B?")],
                                              consumeErrors=True)
        return f"{named['content']['text']}+{numbered['content']['text']}"

    peer = Peer(server)
    sampling = {"sampling": {}}
    first = round_trip(peer, "two_samples", sampling)["result"]
    asked = {key: q["params"]["messages"][0]["content"]["text"] for key, q in first["inputRequests"].items()}
    assert asked == {"first": "A?", "sampling-1": "B?"}
    answers = {key: {"role": "assistant", "model": "m", "content": {"type": "text", "text": text}}
               for key, text in (("first", "a"), ("sampling-1", "b"))}
    done = round_trip(peer, "two_samples", sampling, requestState=first["requestState"],
                      inputResponses=answers)["result"]
    assert done["content"][0]["text"] == "a+b"


def test_missing_or_malformed_answers_are_asked_again():
    peer = Peer(app())
    first = round_trip(peer, "greet")["result"]
    again = round_trip(peer, "greet", requestState=first["requestState"], inputResponses={"who": 12345})
    assert again["result"]["resultType"] == "input_required"
    again = round_trip(peer, "greet", inputResponses={"other": {"action": "accept"}})
    assert again["result"]["resultType"] == "input_required"


def test_a_tampered_state_is_refused():
    peer = Peer(app())
    first = round_trip(peer, "greet")["result"]
    error = round_trip(peer, "greet", requestState=first["requestState"] + "-TAMPERED",
                       inputResponses={"who": {"action": "accept", "content": {"name": "x"}}})["error"]
    assert error["code"] == -32602


def test_an_undeclared_capability_is_an_error_with_what_is_required():
    peer = Peer(app())
    error = call(peer, "tools/call", {"name": "needs_sampling"}, capabilities={})["error"]
    assert error["code"] == -32021 and error["data"] == {"requiredCapabilities": {"sampling": {}}}


def test_listen_acknowledges_tags_filters_and_ends_on_drain():
    server = app()
    peer = Peer(server)
    listen_id = peer.request("subscriptions/listen", {
        "_meta": envelope(), "notifications": {"toolsListChanged": True, "resourceSubscriptions": ["data://one"]}})
    (ack,) = peer.take()
    assert ack["method"] == "notifications/subscriptions/acknowledged"
    assert ack["params"]["notifications"] == {"toolsListChanged": True, "resourceSubscriptions": ["data://one"]}
    assert ack["params"]["_meta"][META_SUBSCRIPTION_ID] == listen_id
    server.add_prompt(lambda: "x", "other")  # prompts were not asked for
    server.add_tool(lambda: "x", "another")
    server.notify_resource_updated("data://one")
    server.notify_resource_updated("data://two")
    sent = peer.take()
    assert [(m["method"], m["params"]["_meta"][META_SUBSCRIPTION_ID]) for m in sent] == [
        ("notifications/tools/list_changed", listen_id), ("notifications/resources/updated", listen_id)]
    server.end_listeners()
    cancelled, result = peer.take()
    assert cancelled["method"] == "notifications/cancelled" and cancelled["params"]["requestId"] == listen_id
    assert result["id"] == listen_id and result["result"]["resultType"] == "complete"


def test_a_connection_keeps_the_era_of_its_first_request():
    peer = Peer(app())
    assert "tools" in call(peer, "tools/list")["result"]
    answer = peer.call("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                      "clientInfo": {"name": "c", "version": "0"}})
    assert answer["error"]["code"] == -32022 and answer["error"]["data"]["supported"] == ["2026-07-28"]

    legacy = Peer(app())
    legacy.initialize()
    assert legacy.call("tools/list", {"_meta": envelope()})["error"]["code"] == -32600


def test_replay_stores_of_all_sessions_share_one_budget():
    from twisted.internet.task import Clock

    from mcp_twisted.http import EventStore, ReplayBudget

    budget = ReplayBudget(1000)
    clock = Clock()
    stores = [EventStore(clock, max_events=100, max_bytes=800, ttl=60, budget=budget) for _ in range(5)]
    for store in stores:
        for _ in range(4):
            store.add("1", b"x" * 100)
    assert budget.used <= 1000  # not 5 x 400
    newest = stores[-1].add("1", b"y" * 100)
    assert stores[-1].after("1.0") is not None and newest.endswith(".5")
    for store in stores:
        store.close()
    assert budget.used == 0


def test_a_resource_may_set_its_own_cache_policy():
    server = app(cache=CachePolicy(ttl_ms=1000, scope="public"))

    @server.resource("data://private", cache=CachePolicy(ttl_ms=10, scope="private"))
    def private() -> str:
        return "p"

    peer = Peer(server)
    own = call(peer, "resources/read", {"uri": "data://private"})["result"]
    assert (own["ttlMs"], own["cacheScope"]) == (10, "private")
    default = call(peer, "resources/read", {"uri": "data://one"})["result"]
    assert (default["ttlMs"], default["cacheScope"]) == (1000, "public")


def test_a_result_that_looks_like_an_error_is_still_a_result_and_listens_are_capped():
    from mcp_twisted.stateless_http import _Exchange

    class Request:
        _rendering = True
        code = 200

        def setResponseCode(self, code: int) -> None:
            self.code = code

        def setHeader(self, name: str, value: str) -> None:
            pass

    class Resource:
        class settings:
            always_stream = False

    request = Request()
    exchange = _Exchange(Resource(), request, 5)  # type: ignore[arg-type]
    exchange.route(b'{"jsonrpc":"2.0","id":5,"result":{"error":{"code":-32601}}}', 5, True)
    assert request.code == 200 and exchange.sync_body is not None
    request = Request()
    exchange = _Exchange(Resource(), request, 5)  # type: ignore[arg-type]
    exchange.route(b'{"jsonrpc":"2.0","id":5,"error":{"code":-32601,"message":"no"}}', 5, True)
    assert request.code == 404

    peer = Peer(app())
    for i in range(6):
        wanted = {"toolsListChanged": True}
        peer.request("subscriptions/listen", {"_meta": envelope(), "notifications": wanted}, id=f"listen{i}")
    refused = [peer.answer(f"listen{i}") for i in range(6)]
    assert [a is None for a in refused] == [True] * 4 + [False] * 2
    assert refused[4]["error"]["code"] == -32602  # type: ignore[index]


def test_routing_headers_are_utf8_base64_aware_and_integers_strict():
    import pytest
    from twisted.web.test.requesthelper import DummyRequest

    from mcp_twisted.jsonrpc import Request as Message
    from mcp_twisted.jsonrpc import RPCError
    from mcp_twisted.stateless_http import check_routing_headers

    def request(headers: dict[bytes, bytes]) -> DummyRequest:
        dummy = DummyRequest([b"mcp"])
        for name, value in headers.items():
            dummy.requestHeaders.setRawHeaders(name, [value])
        return dummy

    message = Message(1, "tools/call", {"name": "héllo", "arguments": {"n": 42}})
    good = {b"mcp-method": b"tools/call", b"mcp-name": b"=?base64?aMOpbGxv?=", b"mcp-param-n": b"42"}
    check_routing_headers(request(good), message, {"n": "N"})
    for bad in ({**good, b"mcp-name": "héllo".encode("latin-1")}, {**good, b"mcp-param-n": b"4_2"},
                {**good, b"mcp-param-n": b" +42"}):
        with pytest.raises(RPCError) as refused:
            check_routing_headers(request(bad), message, {"n": "N"})
        assert refused.value.code == -32020
