"""A client's values are quoted briefly, never crash the server, and cannot pile up.

A value nested 990 deep (orjson parses up to 1024) once turned -32602 into
-32603: ``repr()`` of it ran out of stack while the error message was written.
A 1 MiB string was copied whole into messages and log lines, and subscriptions
had no bound at all.
"""

import itertools
import json
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

import orjson
import pytest
from pydantic import BeforeValidator
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from typing_extensions import TypedDict

from mcp_twisted.eras import META_CLIENT_CAPABILITIES, META_PROTOCOL_VERSION
from mcp_twisted.jsonrpc import BRIEF_LENGTH, brief, clip
from mcp_twisted.server import Context, MCPServer
from mcp_twisted.testing import Peer
from tests.support import initialized, text_of

T = TypeVar("T")

DEEP_LIST = "[" * 990 + "]" * 990
DEEP_DICT = '{"a":' * 990 + "1" + "}" * 990
DEEP_TREE = '{"child":' * 990 + "null" + "}" * 990
BIG = "x" * 2**20
# Where a test's raw JSON value goes in the params it builds.
HOLE = "\x00hole"
# A test starts near the top of the stack; under a reactor, Autobahn and the
# session a handler runs some dozens of frames deeper. These frames put that
# back, so that an unbounded repr() of DEEP_LIST overflows here as it does there.
STACK_DEPTH = 100
SHORT = 300

_ids = itertools.count(1)


class Tree(TypedDict):
    child: "Tree | None"


def nesting(value: Any) -> Any:
    """A validator written in Python that walks the whole value, as apps may."""
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        nesting(child)
    return value


Walked = Annotated[Any, BeforeValidator(nesting)]


def at_depth(depth: int, fn: Callable[..., T], *args: Any) -> T:
    return fn(*args) if depth <= 0 else at_depth(depth - 1, fn, *args)


def case_id(value: object) -> str:
    """Test ids that show where the hostile value goes, not the value."""
    names = {DEEP_LIST: "deep-list", DEEP_DICT: "deep-dict", DEEP_TREE: "deep-tree", HOLE: "HOLE"}
    if isinstance(value, str):
        return names.get(value, value if len(value) < 50 else "huge")
    return json.dumps(value).replace(json.dumps(HOLE), "HOLE").replace(BIG, "BIG")


def ask(client: Peer, method: str, params: dict[str, Any], raw: str = "null") -> dict[str, Any]:
    """Send a request whose params hold the JSON text ``raw`` where ``HOLE`` is, from deep in the stack."""
    request_id = f"hostile-{next(_ids)}"
    message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    text = json.dumps(message).replace(json.dumps(HOLE), raw)
    at_depth(STACK_DEPTH, client.session.receive, text)
    answer = client.answer(request_id)
    assert answer is not None, f"no answer to {method}"
    return answer


def hostile_server(**options: Any) -> MCPServer:
    server = MCPServer("hostile", **options)

    @server.tool()
    def echo(text: str) -> str:
        return text

    @server.tool()
    def depth(tree: Tree) -> int:
        return 1

    @server.tool()
    def fail(value: Any) -> str:
        raise ValueError(value)

    @server.tool()
    def walk(value: Walked) -> str:
        return "walked"

    @server.prompt()
    def greet(name: str) -> str:
        return f"Hello {name}"

    @server.prompt()
    def summarize(value: Walked) -> str:
        return "summary"

    @server.resource("config://app")
    def config() -> str:
        return "{}"

    @server.resource("users://{user_id}/profile")
    def profile(user_id: int) -> str:
        return str(user_id)

    @server.completion("name", prompt="greet")
    def names(value: str, arguments: dict[str, str]) -> list[str]:
        return []

    return server


@pytest.fixture
def logged() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def assert_logs_are_short(events: EventLoggingObserver) -> None:
    for event in events:
        assert len(formatEvent(event)) < SHORT, formatEvent(event)[:SHORT]


# -- the helpers ---------------------------------------------------------------

def test_brief_is_short_whatever_the_value():
    deep = orjson.loads(DEEP_LIST)  # the json module cannot parse that deep
    assert at_depth(STACK_DEPTH, brief, deep) == "[[[[...]]]]"
    assert len(brief(BIG)) <= BRIEF_LENGTH
    assert brief("config://app") == "'config://app'"
    assert len(brief({str(n) * 50: [n] * 50 for n in range(50)})) <= BRIEF_LENGTH
    assert clip("short") == "short"
    assert clip(BIG, 10) == "xxxxxxx..."


# -- values nested 990 deep ------------------------------------------------------

# Where an object is welcome, only the list is invalid.
OBJECTS_WELCOME = [
    ("tools/call", {"name": "echo", "arguments": HOLE}),
    ("tools/call", {"name": "echo", "arguments": {"text": "hi"}, "_meta": HOLE}),
]
INVALID_PARAMS_CASES = [
    ("tools/list", {"cursor": HOLE}),
    ("resources/list", {"cursor": HOLE}),
    ("resources/templates/list", {"cursor": HOLE}),
    ("prompts/list", {"cursor": HOLE}),
    ("logging/setLevel", {"level": HOLE}),
    ("tools/call", {"name": HOLE}),
    ("tools/call", {"name": "echo", "arguments": {"text": "hi"}, "_meta": {"progressToken": HOLE}}),
    ("prompts/get", {"name": HOLE}),
    ("prompts/get", {"name": "greet", "arguments": HOLE}),
    ("prompts/get", {"name": "greet", "arguments": {"name": HOLE}}),
    ("prompts/get", {"name": "summarize", "arguments": {"value": HOLE}}),
    ("resources/read", {"uri": HOLE}),
    ("resources/subscribe", {"uri": HOLE}),
    ("resources/unsubscribe", {"uri": HOLE}),
    ("completion/complete", {"ref": HOLE, "argument": {"name": "name", "value": "a"}}),
    ("completion/complete", {"ref": {"type": "ref/prompt", "name": HOLE},
                             "argument": {"name": "name", "value": "a"}}),
    ("completion/complete", {"ref": {"type": "ref/prompt", "name": "greet"},
                             "argument": {"name": "name", "value": HOLE}}),
    ("completion/complete", {"ref": {"type": "ref/prompt", "name": "greet"},
                             "argument": {"name": "name", "value": "a"}, "context": {"arguments": HOLE}}),
]


@pytest.mark.parametrize(("method", "params", "raw"), [
    *((method, params, raw) for method, params in INVALID_PARAMS_CASES for raw in (DEEP_LIST, DEEP_DICT)),
    *((method, params, DEEP_LIST) for method, params in OBJECTS_WELCOME),
], ids=case_id)
def test_deeply_nested_values_are_invalid_params(method, params, raw, logged):
    answer = ask(initialized(hostile_server()), method, params, raw)
    assert answer["error"]["code"] == -32602, answer
    assert len(answer["error"]["message"]) < SHORT
    assert_logs_are_short(logged)


@pytest.mark.parametrize(("name", "arguments", "raw"), [
    ("echo", HOLE, DEEP_DICT),
    ("echo", {"text": HOLE}, DEEP_LIST),
    ("echo", {"text": HOLE}, DEEP_DICT),
    ("depth", {"tree": HOLE}, DEEP_TREE),  # pydantic's own recursion limit
    ("walk", {"value": HOLE}, DEEP_LIST),  # a RecursionError in the app's validator
], ids=case_id)
def test_deeply_nested_tool_arguments_are_short_tool_errors(name, arguments, raw, logged):
    # Tools answer bad arguments with isError, so that the model can correct itself.
    answer = ask(initialized(hostile_server()), "tools/call", {"name": name, "arguments": arguments}, raw)
    result = answer["result"]
    assert result["isError"] is True
    assert text_of(result).startswith("Invalid arguments: ")
    assert len(text_of(result)) < SHORT
    assert_logs_are_short(logged)


def test_a_tool_raising_with_a_deep_value_is_a_tool_error(logged):
    answer = ask(initialized(hostile_server()), "tools/call", {"name": "fail", "arguments": {"value": HOLE}},
                 DEEP_LIST)
    assert answer["result"]["isError"] is True
    assert text_of(answer["result"]).startswith("Error in tool 'fail': ValueError (error id ")
    assert_logs_are_short(logged)


# -- a 1 MiB string ------------------------------------------------------------------

@pytest.mark.parametrize(("method", "params", "code"), [
    ("tools/list", {"cursor": BIG}, -32602),
    ("logging/setLevel", {"level": BIG}, -32602),
    ("tools/call", {"name": BIG}, -32602),
    ("prompts/get", {"name": BIG}, -32602),
    ("prompts/get", {"name": "greet", "arguments": {BIG: "a"}}, -32602),
    ("resources/read", {"uri": f"nope://{BIG}"}, -32602),  # over max_uri_length
    ("resources/read", {"uri": f"users://{BIG}/profile"}, -32602),
    ("resources/subscribe", {"uri": f"nope://{BIG}"}, -32602),
    (f"nope/{BIG}", {}, -32601),
], ids=case_id)
def test_huge_strings_are_quoted_briefly(method, params, code, logged):
    answer = ask(initialized(hostile_server()), method, params)
    assert answer["error"]["code"] == code
    assert len(answer["error"]["message"]) < SHORT
    assert_logs_are_short(logged)


def test_huge_argument_names_are_quoted_briefly(logged):
    result = initialized(hostile_server()).call_tool("echo", {"text": "hi", BIG: 1})
    assert result["isError"] is True
    assert len(text_of(result)) < 2 * SHORT
    assert_logs_are_short(logged)


def test_a_tool_raising_with_a_huge_value_is_clipped(logged):
    result = initialized(hostile_server()).call_tool("fail", {"value": BIG})
    assert result["isError"] is True
    assert len(text_of(result)) < 1100
    assert_logs_are_short(logged)


def test_many_bad_items_are_summarized():
    extras = {f"extra{n}": n for n in range(1000)}
    result = initialized(hostile_server()).call_tool("echo", {"text": "hi", **extras})
    message = text_of(result)
    assert message.endswith("; and 995 more")
    assert len(message) < 2 * SHORT


# -- subscriptions -----------------------------------------------------------------------

def subscriptions(server: MCPServer, client: Peer) -> set[str]:
    return server._sessions[client.session].subscriptions


def test_subscription_limits_have_safe_defaults():
    server = MCPServer("s")
    assert (server.max_subscriptions, server.max_uri_length) == (100, 8192)


def test_subscriptions_per_session_are_capped(logged):
    server = hostile_server(max_subscriptions=3)
    client, other = initialized(server), initialized(server)
    for n in range(3):
        assert client.result("resources/subscribe", {"uri": f"config://{n}"}) == {}
    error = client.error("resources/subscribe", {"uri": "config://3"})
    assert error["code"] == -32602
    assert error["message"] == "Too many subscriptions (limit 3); unsubscribe from one first"
    assert error["data"] == {"limit": 3}
    assert subscriptions(server, client) == {"config://0", "config://1", "config://2"}
    refusals = [e for e in logged if e["log_format"].startswith("Subscription refused")]
    assert len(refusals) == 1 and refusals[0]["log_level"] is LogLevel.info

    # Subscribing again to a URI already held is no new subscription.
    assert client.result("resources/subscribe", {"uri": "config://0"}) == {}
    # Unsubscribing makes room; the cap is per session.
    client.result("resources/unsubscribe", {"uri": "config://0"})
    assert client.result("resources/subscribe", {"uri": "config://3"}) == {}
    assert other.result("resources/subscribe", {"uri": "config://9"}) == {}
    for n in range(10):
        client.call("resources/subscribe", {"uri": f"more://{n}"})
    assert len(subscriptions(server, client)) == 3
    server.notify_resource_updated("more://0")
    assert client.notifications("notifications/resources/updated") == []


def test_subscription_uris_have_a_length_limit(logged):
    server = hostile_server(max_uri_length=50)
    client = initialized(server)
    longest = "config://" + "a" * 41
    assert client.result("resources/subscribe", {"uri": longest}) == {}
    too_long = "config://" + "b" * 2**20
    error = client.error("resources/subscribe", {"uri": too_long})
    assert error["code"] == -32602
    assert error["message"] == f"URI too long to subscribe to: {len(too_long)} characters (limit 50)"
    assert subscriptions(server, client) == {longest}
    [refusal] = [e for e in logged if e["log_format"].startswith("Subscription refused")]
    assert refusal["log_level"] is LogLevel.info
    assert len(formatEvent(refusal)) < SHORT


def test_refused_subscriptions_are_logged_once_per_interval(logged):
    server = hostile_server(max_subscriptions=1, max_uri_length=50)
    client = initialized(server, "2025-03-26")  # the revision with batches
    client.result("resources/subscribe", {"uri": "config://0"})
    client.send([{"jsonrpc": "2.0", "id": f"s{n}", "method": "resources/subscribe",
                  "params": {"uri": f"config://{n}" if n % 2 else "config://" + "x" * 100}}
                 for n in range(1, 65)])
    (replies,) = client.take()[-1:]
    assert len(replies) == 64 and all(r["error"]["code"] == -32602 for r in replies)
    refusals = [e for e in logged if e["log_format"].startswith("Subscription refused")]
    assert len(refusals) == 1 and refusals[0]["count"] == 1
    client.clock.advance(10)
    refusals = [e for e in logged if e["log_format"].startswith("Subscription refused")]
    assert [e["count"] for e in refusals] == [1, 63]
    assert_logs_are_short(logged)


def test_reading_through_a_template_has_the_uri_length_limit():
    server = hostile_server(max_uri_length=50)
    client = initialized(server)
    assert client.result("resources/read", {"uri": "users://7/profile"})["contents"][0]["text"] == "7"
    error = client.error("resources/read", {"uri": "users://" + "9" * 2**20 + "/profile"})
    assert error["code"] == -32602 and error["data"] == {"limit": 50}
    assert client.error("resources/read", {"uri": "users://7/other"})["code"] == -32002


# -- values echoed back, and answers JSON cannot carry ------------------------

MODERN = {META_PROTOCOL_VERSION: "2026-07-28", META_CLIENT_CAPABILITIES: {"elicitation": {}}}


@pytest.mark.parametrize("version", [DEEP_LIST, json.dumps(BIG)], ids=["deep-list", "huge"])
def test_an_unsupported_revision_is_echoed_briefly(version, logged):
    # -32022 echoes the requested revision in data.requested: a list nested
    # past orjson's encoding depth once made that answer impossible to write,
    # which ended the connection (a stdio server's process).
    client = Peer(hostile_server())
    answer = ask(client, "tools/list", {"_meta": {META_PROTOCOL_VERSION: HOLE, META_CLIENT_CAPABILITIES: {}}},
                 version)
    assert answer["error"]["code"] == -32022
    requested = answer["error"]["data"]["requested"]
    assert isinstance(requested, str) and len(requested) <= BRIEF_LENGTH
    assert len(json.dumps(answer)) < 4 * BRIEF_LENGTH
    assert client.result("ping") == {}  # the connection goes on
    assert_logs_are_short(logged)


def test_a_notification_json_cannot_carry_is_dropped_and_logged(logged):
    client = initialized(hostile_server())
    client.session.notify("notifications/message", {"level": "info", "data": {1, 2}})
    assert client.notifications("notifications/message") == []
    [event] = [e for e in logged if e["log_format"].startswith("Could not send")]
    assert event["log_level"] is LogLevel.error
    assert client.result("ping") == {}


def test_deeply_nested_input_responses_are_invalid_params(logged):
    # They are sealed into requestState when the round ends, in a timer: one
    # orjson cannot write left the request unanswered, holding its slot.
    server = hostile_server()

    @server.tool()
    async def book(city: str, ctx: Context) -> str:
        answer = await ctx.elicit("Which date?", {"type": "object", "properties": {}}, key="date")
        return f"{city} on {answer['content']}"

    client = Peer(server)
    answer = ask(client, "tools/call", {"_meta": MODERN, "name": "book", "arguments": {"city": "Oslo"},
                                        "inputResponses": {"junk": HOLE}}, DEEP_LIST)
    assert answer["error"]["code"] == -32602
    assert answer["error"]["message"].startswith("inputResponses are nested too deeply")
    assert client.session.in_flight == 0
    # A plain first round still asks its question (the round ends a turn later).
    client.session.receive(json.dumps({"jsonrpc": "2.0", "id": "plain", "method": "tools/call", "params": {
        "_meta": MODERN, "name": "book", "arguments": {"city": "Oslo"}}}))
    client.clock.advance(0)
    assert client.answer("plain")["result"]["resultType"] == "input_required"


@pytest.mark.parametrize("name", [["echo"], {"x": 1}, 7, None])
def test_scopes_of_a_request_whose_name_is_no_string_are_none(name):
    # Over HTTP the step-up check asks this before the app sees the request:
    # a list as params.name (unhashable) was a 500 there; the app's own
    # -32602 is the answer.
    server = hostile_server()
    server.add_tool(lambda: "x", name="guarded", scopes=["admin"])
    for method in ("tools/call", "prompts/get"):
        assert server.required_scopes(method, {"name": name}) == ()
    assert list(server.required_scopes("tools/call", {"name": "guarded"})) == ["admin"]
    error = initialized(server).error("tools/call", {"name": name})
    assert error["code"] == -32602
