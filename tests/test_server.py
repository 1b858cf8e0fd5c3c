"""MCPServer driven through a server-role Session: a list is the socket, a Clock the reactor."""

import base64
import dataclasses
import enum
import json
from typing import Any

import pytest
from twisted.internet import defer
from typing_extensions import TypedDict

from mcp_twisted import content
from mcp_twisted.jsonrpc import RPCError
from mcp_twisted.server import Context, MCPServer, ToolError, ToolResult
from mcp_twisted.testing import Peer
from tests.support import initialized, text_of

LATEST = "2025-11-25"
VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


@dataclasses.dataclass
class Box:
    width: int
    height: int = 1


class Weather(TypedDict):
    city: str
    celsius: float


# -- initialize and capabilities -------------------------------------------

def test_capabilities_follow_what_is_registered():
    server = MCPServer("empty")
    assert initialized(server).initialize_result["capabilities"] == {"logging": {}}

    server.add_tool(lambda: "x", "t")
    assert initialized(server).initialize_result["capabilities"] == {
        "logging": {}, "tools": {"listChanged": True},
    }

    only_template = MCPServer("templates")
    only_template.add_resource(lambda id: id, "item://{id}", name="item")
    capabilities = initialized(only_template).initialize_result["capabilities"]
    assert capabilities == {"logging": {}, "resources": {"subscribe": True, "listChanged": True}}

    only_prompt = MCPServer("prompts")
    only_prompt.add_prompt(lambda: "hi", "p")
    assert initialized(only_prompt).initialize_result["capabilities"] == {
        "logging": {}, "prompts": {"listChanged": True},
    }


def test_completions_capability_is_declared_from_2025_03_26():
    server = MCPServer("s")
    server.add_prompt(lambda name: name, "greet")
    server.completion("name", prompt="greet")(lambda value: ["Ann"])
    assert "completions" not in initialized(server, "2024-11-05").initialize_result["capabilities"]
    assert initialized(server, "2025-03-26").initialize_result["capabilities"]["completions"] == {}


def test_server_info_fields_follow_the_version():
    server = MCPServer("srv", "1.2.3", "Use me well", title="Server", website_url="https://example.com",
                      icons=[{"src": "https://example.com/i.png"}])
    info = {v: initialized(server, v).initialize_result for v in VERSIONS}
    assert info["2024-11-05"]["serverInfo"] == {"name": "srv", "version": "1.2.3"}
    assert info["2025-06-18"]["serverInfo"] == {"name": "srv", "version": "1.2.3", "title": "Server"}
    assert info["2025-11-25"]["serverInfo"] == {
        "name": "srv", "version": "1.2.3", "title": "Server", "websiteUrl": "https://example.com",
        "icons": [{"src": "https://example.com/i.png"}],
    }
    assert all(result["instructions"] == "Use me well" for result in info.values())
    assert [result["protocolVersion"] for result in info.values()] == list(VERSIONS)


def test_unknown_method_is_method_not_found():
    assert initialized(MCPServer("s")).error("tools/frobnicate")["code"] == -32601


# -- tools: listing ----------------------------------------------------------

def make_tool_server() -> MCPServer:
    server = MCPServer("tools")

    @server.tool(title="Forecast", annotations={"readOnlyHint": True}, icons=[{"src": "data:,x"}],
                 meta={"example.com/k": 1})
    def forecast(city: str, days: int = 1, ctx: Context | None = None) -> Weather:
        """Get the forecast.

        Args:
            city: Where.
            days: How far ahead.
        """
        return {"city": city, "celsius": 21.5}

    @server.tool()
    def echo(text: str) -> str:
        return text

    return server


def test_tool_list_entry():
    tools = initialized(make_tool_server()).result("tools/list")["tools"]
    assert [t["name"] for t in tools] == ["forecast", "echo"]
    forecast = tools[0]
    assert forecast["description"] == "Get the forecast."
    assert forecast["title"] == "Forecast"
    assert forecast["annotations"] == {"readOnlyHint": True}
    assert forecast["icons"] == [{"src": "data:,x"}]
    assert forecast["_meta"] == {"example.com/k": 1}
    assert forecast["inputSchema"] == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "Where."},
            "days": {"type": "integer", "default": 1, "description": "How far ahead."},
        },
        "required": ["city"],
        "additionalProperties": False,
    }
    assert forecast["outputSchema"] == {
        "type": "object",
        "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
        "required": ["city", "celsius"],
    }
    echo = tools[1]
    assert "outputSchema" not in echo
    assert "description" not in echo and "title" not in echo and "annotations" not in echo


@pytest.mark.parametrize(("version", "present"), [
    ("2024-11-05", set()),
    ("2025-03-26", {"annotations"}),
    ("2025-06-18", {"annotations", "title", "outputSchema", "_meta"}),
    ("2025-11-25", {"annotations", "title", "outputSchema", "_meta", "icons"}),
])
def test_tool_fields_older_versions_do_not_know_are_left_out(version, present):
    forecast = initialized(make_tool_server(), version).result("tools/list")["tools"][0]
    assert set(forecast) == {"name", "description", "inputSchema"} | present


def test_explicit_description_and_name_override_the_function():
    server = MCPServer("s")

    @server.tool("renamed", description="Explicit.")
    def fn() -> str:
        """From the docstring."""
        return "x"

    tool = initialized(server).result("tools/list")["tools"][0]
    assert (tool["name"], tool["description"]) == ("renamed", "Explicit.")


# -- tools: calling ----------------------------------------------------------

def test_sync_tool_result_is_text():
    assert text_of(initialized(make_tool_server()).call_tool("echo", {"text": "hé"})) == "hé"


def test_arguments_may_be_omitted_for_a_tool_without_parameters():
    server = MCPServer("s")
    server.add_tool(lambda: "pong", "ping_tool")
    client = initialized(server)
    assert text_of(client.result("tools/call", {"name": "ping_tool"})) == "pong"
    assert text_of(client.result("tools/call", {"name": "ping_tool", "arguments": None})) == "pong"


@pytest.mark.parametrize(("arguments", "fragments"), [
    ({"text": 5}, ["text", "valid string"]),
    ({}, ["text", "Field required"]),
    ({"text": "a", "loud": True}, ["loud", "not permitted"]),
])
def test_bad_arguments_give_is_error_with_readable_text(arguments, fragments):
    called = []
    server = MCPServer("s")

    @server.tool()
    def echo(text: str) -> str:
        called.append(text)
        return text

    result = initialized(server).result("tools/call", {"name": "echo", "arguments": arguments})
    assert result["isError"] is True
    message = text_of(result)
    assert message.startswith("Invalid arguments: ")
    for fragment in fragments:
        assert fragment in message
    assert "Traceback" not in message
    assert called == []


def test_arguments_that_are_not_an_object_are_invalid_params():
    error = initialized(make_tool_server()).error("tools/call", {"name": "echo", "arguments": ["a"]})
    assert error["code"] == -32602


def test_unknown_tool_is_invalid_params():
    client = initialized(make_tool_server())
    error = client.error("tools/call", {"name": "nope", "arguments": {}})
    assert error["code"] == -32602
    assert "nope" in error["message"]
    assert client.error("tools/call", {})["code"] == -32602


def test_enum_and_dataclass_arguments_are_converted():
    seen = []
    server = MCPServer("s")

    @server.tool()
    def paint(color: Color, box: Box, scale: float = 1.0) -> str:
        seen.append((color, box, scale))
        return "ok"

    result = initialized(server).call_tool("paint", {"color": "green", "box": {"width": 3}, "scale": 2})
    assert text_of(result) == "ok"
    assert seen == [(Color.GREEN, Box(width=3, height=1), 2.0)]
    assert isinstance(seen[0][1], Box) and isinstance(seen[0][2], float)


def test_parameters_named_schema_and_json_work():
    server = MCPServer("s")

    @server.tool()
    def validate(schema: str, json: int) -> str:
        return f"{schema}:{json}"

    client = initialized(server)
    assert set(client.result("tools/list")["tools"][0]["inputSchema"]["properties"]) == {"schema", "json"}
    assert text_of(client.call_tool("validate", {"schema": "s", "json": 3})) == "s:3"


def test_exception_in_tool_gives_is_error_with_its_text():
    server = MCPServer("s")

    @server.tool()
    def divide(a: int, b: int) -> str:
        return str(a // b)

    result = initialized(server).call_tool("divide", {"a": 1, "b": 0})
    assert result["isError"] is True
    assert "integer division or modulo by zero" in text_of(result)
    assert "Traceback" not in text_of(result)


def test_tool_error_gives_is_error_with_exactly_its_message():
    server = MCPServer("s")

    @server.tool()
    def fail() -> str:
        raise ToolError("The city is unknown")

    assert initialized(server).call_tool("fail") == {
        "content": [{"type": "text", "text": "The city is unknown"}], "isError": True,
    }


def test_rpc_error_raised_by_a_sync_tool_is_a_json_rpc_error():
    # It used to be returned to the session as a Failure "result" that could not be encoded.
    server = MCPServer("s")

    @server.tool()
    def guarded() -> str:
        raise RPCError(-32042, "Authorisation needed", {"elicitations": []})

    assert initialized(server).error("tools/call", {"name": "guarded"}) == {
        "code": -32042, "message": "Authorisation needed", "data": {"elicitations": []},
    }


def test_async_tool_answers_when_its_deferred_fires():
    pending: defer.Deferred[int] = defer.Deferred()
    server = MCPServer("s")

    @server.tool()
    async def wait(label: str) -> str:
        value = await pending
        return f"{label}={value}"

    client = initialized(server)
    request_id = client.request("tools/call", {"name": "wait", "arguments": {"label": "n"}})
    assert client.answer(request_id) is None
    assert client.session.in_flight == 1
    pending.callback(7)
    assert client.answer(request_id) == {
        "jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": "n=7"}]},
    }
    assert client.session.in_flight == 0


def test_deferred_returning_tool():
    pending: defer.Deferred[str] = defer.Deferred()
    server = MCPServer("s")
    server.add_tool(lambda: pending, "later")
    client = initialized(server)
    request_id = client.request("tools/call", {"name": "later"})
    assert client.answer(request_id) is None
    pending.callback("done")
    assert client.answer(request_id)["result"] == {"content": [{"type": "text", "text": "done"}]}


def test_async_tool_failures_are_tool_errors():
    pending: defer.Deferred[None] = defer.Deferred()
    server = MCPServer("s")

    @server.tool()
    async def broken() -> str:
        await pending
        raise ToolError("late failure")

    client = initialized(server)
    request_id = client.request("tools/call", {"name": "broken"})
    pending.callback(None)
    assert client.answer(request_id)["result"] == {
        "content": [{"type": "text", "text": "late failure"}], "isError": True,
    }


def test_async_tool_raising_rpc_error_is_a_json_rpc_error():
    pending: defer.Deferred[None] = defer.Deferred()
    server = MCPServer("s")

    async def guarded() -> str:
        await pending
        raise RPCError(-32602, "no such thing")

    server.add_tool(guarded)
    client = initialized(server)
    request_id = client.request("tools/call", {"name": "guarded"})
    pending.callback(None)
    assert client.answer(request_id)["error"] == {"code": -32602, "message": "no such thing"}


def test_cancelled_async_tool_sends_no_response():
    pending: defer.Deferred[str] = defer.Deferred()
    outcome = []
    server = MCPServer("s")

    @server.tool()
    async def slow(ctx: Context) -> str:
        try:
            return await pending
        except defer.CancelledError:
            outcome.append(("cancelled", ctx.cancelled))
            raise

    client = initialized(server)
    request_id = client.request("tools/call", {"name": "slow"})
    client.notify("notifications/cancelled", {"requestId": request_id, "reason": "user"})
    assert outcome == [("cancelled", True)]
    assert client.answer(request_id) is None
    assert client.session.in_flight == 0
    pending.callback("late")  # the coroutine is gone; nothing more is sent
    assert client.answer(request_id) is None


def test_cancellation_is_not_turned_into_a_tool_error():
    # The session drops answers to cancelled requests anyway; the tool must not
    # swallow the CancelledError either, or a handler timeout would look like a result.
    pending: defer.Deferred[str] = defer.Deferred()
    tool = MCPServer("s").add_tool(lambda: pending, "later")
    d = tool.call({}, None, LATEST)
    failures: list[Any] = []
    d.addErrback(failures.append)
    d.cancel()
    assert len(failures) == 1 and failures[0].check(defer.CancelledError)


def test_cancelled_deferred_tool_calls_its_canceller():
    cancelled = []
    pending: defer.Deferred[str] = defer.Deferred(lambda d: cancelled.append(True))
    server = MCPServer("s")
    server.add_tool(lambda: pending, "later")
    client = initialized(server)
    request_id = client.request("tools/call", {"name": "later"})
    client.notify("notifications/cancelled", {"requestId": request_id})
    assert cancelled == [True]
    assert client.answer(request_id) is None
    assert client.session.in_flight == 0


def test_cancelled_deferred_tool_sends_nothing_even_if_fired_later():
    pending: defer.Deferred[str] = defer.Deferred()  # no canceller: Twisted eats the late result
    server = MCPServer("s")
    server.add_tool(lambda: pending, "later")
    client = initialized(server)
    request_id = client.request("tools/call", {"name": "later"})
    client.notify("notifications/cancelled", {"requestId": request_id})
    before = list(client.received)
    pending.callback("too late")
    assert client.received == before
    assert client.answer(request_id) is None


def test_context_gives_request_details():
    seen = {}
    server = MCPServer("s")

    @server.tool()
    def inspect_me(x: int, here: Context) -> str:
        seen.update(id=here.request_id, version=here.protocol_version, info=here.client_info,
                    caps=here.client_capabilities, server=here.server, session=here.session)
        return "ok"

    client = initialized(server, "2025-06-18", capabilities={"roots": {}})
    request_id = client.request("tools/call", {"name": "inspect_me", "arguments": {"x": 1}})
    assert seen == {"id": request_id, "version": "2025-06-18",
                    "info": {"name": "mcp-twisted-testing", "version": "0"}, "caps": {"roots": {}},
                    "server": server, "session": client.session}


def test_progress_from_an_async_tool():
    pending: defer.Deferred[None] = defer.Deferred()
    server = MCPServer("s")

    @server.tool()
    async def work(ctx: Context) -> str:
        await pending
        await ctx.report_progress(1, 2, "half")
        await ctx.report_progress(2, 2)
        return "done"

    client = initialized(server)
    client.request("tools/call", {"name": "work", "_meta": {"progressToken": "tok"}})
    pending.callback(None)
    assert client.notifications("notifications/progress") == [
        {"progressToken": "tok", "progress": 1, "total": 2, "message": "half"},
        {"progressToken": "tok", "progress": 2, "total": 2},
    ]


def test_progress_from_a_sync_tool_is_sent():
    server = MCPServer("s")

    @server.tool()
    def work(ctx: Context) -> str:
        ctx.report_progress(1, 1)
        return "done"

    client = initialized(server)
    client.request("tools/call", {"name": "work", "_meta": {"progressToken": 9}})
    assert client.notifications("notifications/progress") == [{"progressToken": 9, "progress": 1, "total": 1}]


def test_sync_result_that_is_not_json_gives_internal_error():
    server = MCPServer("s")
    server.add_tool(lambda: ToolResult(structured_content={1, 2}), "setty")
    client = initialized(server)
    assert client.error("tools/call", {"name": "setty"})["code"] == -32603


# -- tools: structured output -----------------------------------------------

def make_structured_server() -> tuple[MCPServer, defer.Deferred[None]]:
    server = MCPServer("s")
    pending: defer.Deferred[None] = defer.Deferred()

    @server.tool()
    def weather(city: str) -> Weather:
        return {"city": city, "celsius": 20}

    @server.tool()
    def box() -> Box:
        return Box(width=2)

    @server.tool()
    def counts() -> dict[str, int]:
        return {"a": 1, "b": 2}

    @server.tool()
    async def later() -> Box:
        await pending
        return Box(width=5, height=6)

    @server.tool()
    def plain() -> str:
        return "text"

    @server.tool()
    def full() -> ToolResult:
        return ToolResult([content.text("mine")], structured_content={"k": 1}, meta={"m": True})

    return server, pending


def test_output_schemas_in_tools_list():
    tools = {t["name"]: t for t in initialized(make_structured_server()[0]).result("tools/list")["tools"]}
    assert tools["weather"]["outputSchema"]["properties"] == {
        "city": {"type": "string"}, "celsius": {"type": "number"},
    }
    assert tools["box"]["outputSchema"]["required"] == ["width"]
    assert tools["counts"]["outputSchema"] == {"type": "object", "additionalProperties": {"type": "integer"}}
    assert tools["later"]["outputSchema"]["type"] == "object"
    assert "outputSchema" not in tools["plain"]
    # ToolResult is how a tool shapes its own result, not a description of structured output.
    assert "outputSchema" not in tools["full"]


@pytest.mark.parametrize(("name", "structured"), [
    ("weather", {"city": "Oslo", "celsius": 20.0}),
    ("box", {"width": 2, "height": 1}),
    ("counts", {"a": 1, "b": 2}),
])
def test_structured_results_carry_structured_content_and_json_text(name, structured):
    arguments = {"city": "Oslo"} if name == "weather" else {}
    result = initialized(make_structured_server()[0]).call_tool(name, arguments)
    assert result["structuredContent"] == structured
    assert json.loads(text_of(result)) == structured
    assert "isError" not in result


def test_async_structured_result():
    server, pending = make_structured_server()
    client = initialized(server)
    request_id = client.request("tools/call", {"name": "later"})
    pending.callback(None)
    assert client.answer(request_id)["result"]["structuredContent"] == {"width": 5, "height": 6}


def test_tool_result_passes_through():
    assert initialized(make_structured_server()[0]).call_tool("full") == {
        "content": [{"type": "text", "text": "mine"}], "structuredContent": {"k": 1}, "_meta": {"m": True},
    }


@pytest.mark.parametrize("version", ["2024-11-05", "2025-03-26"])
def test_older_versions_get_no_output_schema_and_no_structured_content(version):
    client = initialized(make_structured_server()[0], version)
    assert all("outputSchema" not in t for t in client.result("tools/list")["tools"])
    result = client.call_tool("weather", {"city": "Oslo"})
    assert result == {"content": [{"type": "text", "text": '{"city":"Oslo","celsius":20.0}'}]}


def test_output_breaking_the_schema_is_a_tool_error():
    server = MCPServer("s")

    @server.tool()
    def liar() -> Weather:
        return {"city": "Oslo"}  # type: ignore[typeddict-item]

    result = initialized(server).call_tool("liar")
    assert result["isError"] is True
    assert "output schema" in text_of(result)
    assert "structuredContent" not in result


def test_unstructured_return_values_become_content():
    server = MCPServer("s")
    server.add_tool(lambda: None, "nothing")
    server.add_tool(lambda: 42, "number")
    server.add_tool(lambda: {"a": [1, 2]}, "mapping")
    server.add_tool(lambda: ["one", content.image(b"\x00", "image/png"), {"k": 1}], "mixed")
    client = initialized(server)
    assert client.call_tool("nothing") == {"content": []}
    assert text_of(client.call_tool("number")) == "42"
    assert json.loads(text_of(client.call_tool("mapping"))) == {"a": [1, 2]}
    assert client.call_tool("mixed")["content"] == [
        {"type": "text", "text": "one"},
        {"type": "image", "data": "AA==", "mimeType": "image/png"},
        {"type": "text", "text": '{"k":1}'},
    ]


# -- resources ---------------------------------------------------------------

def make_resource_server() -> MCPServer:
    server = MCPServer("res")

    @server.resource("config://app", title="App config", annotations={"priority": 0.5},
                     icons=[{"src": "data:,i"}], size=12, meta={"x/y": 1})
    def app_config() -> str:
        """The app configuration."""
        return "debug=true"

    @server.resource("data://logo", mime_type="image/png")
    def logo() -> bytes:
        return b"\x89PNG"

    @server.resource("data://settings")
    def settings() -> dict[str, Any]:
        return {"theme": "dark", "size": 3}

    @server.resource("users://{user_id}/profile", description="A user's profile")
    def profile(user_id: int) -> dict[str, Any]:
        return {"id": user_id, "type": type(user_id).__name__}

    @server.resource("files:///{+path}", mime_type="text/plain")
    def file(path: str, ctx: Context) -> str:
        return f"contents of {path} for {ctx.client_info['name']}"

    return server


def test_static_resources_are_listed():
    resources = initialized(make_resource_server()).result("resources/list")["resources"]
    assert resources == [
        {"uri": "config://app", "name": "app_config", "description": "The app configuration.",
         "title": "App config", "annotations": {"priority": 0.5}, "icons": [{"src": "data:,i"}],
         "size": 12, "_meta": {"x/y": 1}},
        {"uri": "data://logo", "name": "logo", "mimeType": "image/png"},
        {"uri": "data://settings", "name": "settings"},
    ]


def test_resource_fields_for_older_versions():
    entry = initialized(make_resource_server(), "2025-03-26").result("resources/list")["resources"][0]
    assert set(entry) == {"uri", "name", "description", "annotations", "size"}
    entry = initialized(make_resource_server(), "2025-06-18").result("resources/list")["resources"][0]
    assert set(entry) == {"uri", "name", "description", "annotations", "size", "title", "_meta"}


def test_read_static_text_resource():
    result = initialized(make_resource_server()).result("resources/read", {"uri": "config://app"})
    assert result == {"contents": [{"uri": "config://app", "mimeType": "text/plain", "text": "debug=true"}]}


def test_read_bytes_resource_is_a_base64_blob():
    result = initialized(make_resource_server()).result("resources/read", {"uri": "data://logo"})
    [entry] = result["contents"]
    assert entry == {"uri": "data://logo", "mimeType": "image/png", "blob": "iVBORw=="}
    assert base64.b64decode(entry["blob"]) == b"\x89PNG"


def test_bytes_and_str_default_mime_types():
    server = MCPServer("s")
    server.add_resource(lambda: b"\x00", "raw://b", name="b")
    server.add_resource(lambda: "t", "raw://t", name="t")
    client = initialized(server)
    assert client.result("resources/read", {"uri": "raw://b"})["contents"] == [
        {"uri": "raw://b", "mimeType": "application/octet-stream", "blob": "AA=="},
    ]
    assert client.result("resources/read", {"uri": "raw://t"})["contents"][0]["mimeType"] == "text/plain"


def test_read_dict_resource_is_json_text():
    [entry] = initialized(make_resource_server()).result("resources/read", {"uri": "data://settings"})["contents"]
    assert entry["mimeType"] == "application/json"
    assert json.loads(entry["text"]) == {"theme": "dark", "size": 3}


def test_read_template_converts_typed_variables():
    [entry] = initialized(make_resource_server()).result(
        "resources/read", {"uri": "users://42/profile"})["contents"]
    assert entry["uri"] == "users://42/profile"
    assert json.loads(entry["text"]) == {"id": 42, "type": "int"}


def test_read_reserved_template_with_context():
    [entry] = initialized(make_resource_server()).result(
        "resources/read", {"uri": "files:///etc/my%20app/conf"})["contents"]
    assert entry == {"uri": "files:///etc/my%20app/conf", "mimeType": "text/plain",
                     "text": "contents of etc/my app/conf for mcp-twisted-testing"}


def test_template_variable_that_does_not_convert_is_invalid_params():
    error = initialized(make_resource_server()).error("resources/read", {"uri": "users://abc/profile"})
    assert error["code"] == -32602
    assert "user_id" in error["message"]


def test_unknown_resource_is_resource_not_found():
    client = initialized(make_resource_server())
    assert client.error("resources/read", {"uri": "nope://x"}) == {
        "code": -32002, "message": "Resource not found: nope://x", "data": {"uri": "nope://x"},
    }
    assert client.error("resources/read", {"uri": "users://1/settings"})["data"] == {
        "uri": "users://1/settings",
    }
    assert client.error("resources/read", {})["code"] == -32602


def test_templates_are_listed():
    templates = initialized(make_resource_server()).result("resources/templates/list")["resourceTemplates"]
    assert templates == [
        {"uriTemplate": "users://{user_id}/profile", "name": "profile", "description": "A user's profile"},
        {"uriTemplate": "files:///{+path}", "name": "file", "mimeType": "text/plain"},
    ]


def test_template_needs_a_parameter_per_variable():
    with pytest.raises(TypeError, match="user_id"):
        MCPServer("s").add_resource(lambda: "x", "users://{user_id}", name="bad")


def test_resource_returning_contents_and_async_resource():
    pending: defer.Deferred[list[dict[str, Any]]] = defer.Deferred()
    server = MCPServer("s")
    server.add_resource(lambda: [content.resource_contents("a://1", "one"),
                                 content.resource_contents("a://2", b"\x01", "application/x")],
                        "a://all", name="all")
    server.add_resource(lambda: pending, "a://later", name="later")
    server.add_resource(lambda: [], "a://empty", name="empty")
    client = initialized(server)
    assert client.result("resources/read", {"uri": "a://all"})["contents"] == [
        {"uri": "a://1", "text": "one"}, {"uri": "a://2", "mimeType": "application/x", "blob": "AQ=="},
    ]
    # An empty list is JSON data, not "no contents".
    assert client.result("resources/read", {"uri": "a://empty"})["contents"] == [
        {"uri": "a://empty", "mimeType": "application/json", "text": "[]"},
    ]
    request_id = client.request("resources/read", {"uri": "a://later"})
    assert client.answer(request_id) is None
    pending.callback("ready")
    assert client.answer(request_id)["result"]["contents"] == [
        {"uri": "a://later", "mimeType": "text/plain", "text": "ready"},
    ]


def test_subscribe_and_unsubscribe():
    server = make_resource_server()
    subscribed, other = initialized(server), initialized(server)
    assert subscribed.result("resources/subscribe", {"uri": "config://app"}) == {}
    server.notify_resource_updated("config://app")
    server.notify_resource_updated("data://logo")
    assert subscribed.notifications("notifications/resources/updated") == [{"uri": "config://app"}]
    assert other.notifications() == []
    assert subscribed.result("resources/unsubscribe", {"uri": "config://app"}) == {}
    server.notify_resource_updated("config://app")
    assert len(subscribed.notifications("notifications/resources/updated")) == 1
    assert subscribed.error("resources/subscribe", {"uri": 3})["code"] == -32602


def test_closed_session_is_forgotten():
    server = make_resource_server()
    client = initialized(server)
    client.result("resources/subscribe", {"uri": "config://app"})
    assert server.sessions == [client.session]
    client.session.close()
    assert server.sessions == []
    server.notify_resource_updated("config://app")
    server.add_tool(lambda: "x", "t")
    assert client.notifications() == []


# -- prompts -----------------------------------------------------------------

def make_prompt_server() -> MCPServer:
    server = MCPServer("prompts")

    @server.prompt(title="Greeting", icons=[{"src": "data:,g"}])
    def greet(name: str, style: str = "friendly", ctx: Context | None = None) -> str:
        """Greet someone.

        Args:
            name: Who to greet.
        """
        return f"Say hello to {name}, {style}"

    @server.prompt()
    def dialogue(topic: str) -> list[Any]:
        return [
            {"role": "assistant", "content": content.text(f"Let's talk about {topic}")},
            "Sure",
            content.image(b"\x01\x02", "image/png"),
        ]

    @server.prompt()
    def count(times: int) -> str:
        return "again " * times

    @server.prompt()
    def bad() -> Any:
        return 42

    return server


def test_prompts_are_listed_with_arguments():
    prompts = initialized(make_prompt_server()).result("prompts/list")["prompts"]
    greet = prompts[0]
    assert greet == {
        "name": "greet", "description": "Greet someone.", "title": "Greeting",
        "icons": [{"src": "data:,g"}],
        "arguments": [
            {"name": "name", "required": True, "description": "Who to greet."},
            {"name": "style", "required": False},
        ],
    }
    assert prompts[1] == {"name": "dialogue", "arguments": [{"name": "topic", "required": True}]}


def test_prompt_fields_for_older_versions():
    greet = initialized(make_prompt_server(), "2025-03-26").result("prompts/list")["prompts"][0]
    assert set(greet) == {"name", "description", "arguments"}


def test_get_prompt_with_arguments():
    client = initialized(make_prompt_server())
    assert client.result("prompts/get", {"name": "greet", "arguments": {"name": "Ann"}}) == {
        "description": "Greet someone.",
        "messages": [{"role": "user", "content": {"type": "text", "text": "Say hello to Ann, friendly"}}],
    }
    result = client.result("prompts/get", {"name": "greet", "arguments": {"name": "Bo", "style": "shy"}})
    assert result["messages"][0]["content"]["text"] == "Say hello to Bo, shy"


def test_prompt_argument_strings_are_converted():
    params = {"name": "count", "arguments": {"times": "2"}}
    result = initialized(make_prompt_server()).result("prompts/get", params)
    assert result["messages"][0]["content"]["text"] == "again again "


def test_prompt_returning_messages_and_content_blocks():
    result = initialized(make_prompt_server()).result("prompts/get",
                                                 {"name": "dialogue", "arguments": {"topic": "tea"}})
    assert result == {"messages": [
        {"role": "assistant", "content": {"type": "text", "text": "Let's talk about tea"}},
        {"role": "user", "content": {"type": "text", "text": "Sure"}},
        {"role": "user", "content": {"type": "image", "data": "AQI=", "mimeType": "image/png"}},
    ]}


def test_prompt_errors():
    client = initialized(make_prompt_server())
    missing = client.error("prompts/get", {"name": "greet", "arguments": {}})
    assert missing["code"] == -32602
    assert "name" in missing["message"] and "required" in missing["message"]
    assert client.error("prompts/get", {"name": "greet"})["code"] == -32602
    unknown = client.error("prompts/get", {"name": "nope"})
    assert unknown["code"] == -32602 and "nope" in unknown["message"]
    assert client.error("prompts/get", {"name": "greet", "arguments": ["Ann"]})["code"] == -32602
    assert client.error("prompts/get", {"name": "bad"})["code"] == -32603


def test_async_prompt():
    pending: defer.Deferred[str] = defer.Deferred()
    server = MCPServer("s")

    @server.prompt()
    async def slow(topic: str) -> str:
        return f"{topic}: {await pending}"

    client = initialized(server)
    request_id = client.request("prompts/get", {"name": "slow", "arguments": {"topic": "t"}})
    assert client.answer(request_id) is None
    pending.callback("now")
    assert client.answer(request_id)["result"]["messages"][0]["content"]["text"] == "t: now"


# -- completion --------------------------------------------------------------

def make_completion_server() -> MCPServer:
    server = make_prompt_server()
    server.add_resource(lambda owner, repo: "", "repo://{owner}/{repo}", name="repo")
    names = ["Ann", "Anna", "Bob"]

    @server.completion("name", prompt="greet")
    def complete_name(value: str) -> list[str]:
        return [n for n in names if n.startswith(value)]

    @server.completion("style", prompt="greet")
    def complete_style(value: str, arguments: dict[str, str]) -> list[str]:
        return [f"{arguments.get('name', '?')}-{value}-{i}" for i in range(150)]

    @server.completion("repo", resource="repo://{owner}/{repo}")
    def complete_repo(value: str, arguments: dict[str, str]) -> defer.Deferred[list[str]]:
        return defer.succeed([f"{arguments['owner']}/{value}x"])

    return server


def complete(client: Peer, ref: dict[str, Any], name: str, value: str,
             context: dict[str, Any] | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"ref": ref, "argument": {"name": name, "value": value}}
    if context is not None:
        params["context"] = context
    return client.result("completion/complete", params)["completion"]


def test_completion_values():
    client = initialized(make_completion_server())
    ref = {"type": "ref/prompt", "name": "greet"}
    assert complete(client, ref, "name", "An") == {"values": ["Ann", "Anna"], "total": 2, "hasMore": False}
    assert complete(client, ref, "name", "Z") == {"values": [], "total": 0, "hasMore": False}


def test_completion_is_capped_at_100_and_gets_the_other_arguments():
    client = initialized(make_completion_server())
    result = complete(client, {"type": "ref/prompt", "name": "greet"}, "style", "f",
                      {"arguments": {"name": "Ann"}})
    assert len(result["values"]) == 100
    assert result["values"][0] == "Ann-f-0"
    assert result["total"] == 150
    assert result["hasMore"] is True
    without_context = complete(client, {"type": "ref/prompt", "name": "greet"}, "style", "f")
    assert without_context["values"][0] == "?-f-0"


def test_completion_for_a_resource_template():
    client = initialized(make_completion_server())
    result = complete(client, {"type": "ref/resource", "uri": "repo://{owner}/{repo}"}, "repo", "tw",
                      {"arguments": {"owner": "me"}})
    assert result == {"values": ["me/twx"], "total": 1, "hasMore": False}


@pytest.mark.parametrize(("ref", "name"), [
    ({"type": "ref/prompt", "name": "nope"}, "name"),
    ({"type": "ref/prompt", "name": "greet"}, "nope"),
    ({"type": "ref/resource", "uri": "other://{x}"}, "x"),
    ({"type": "ref/other", "name": "greet"}, "name"),
])
def test_completion_for_unknown_refs_is_empty(ref, name):
    assert complete(initialized(make_completion_server()), ref, name, "a") == {
        "values": [], "total": 0, "hasMore": False,
    }


def test_completion_errors():
    client = initialized(make_completion_server())
    assert client.error("completion/complete", {"ref": "greet", "argument": {}})["code"] == -32602
    no_completions = initialized(make_prompt_server())
    error = no_completions.error("completion/complete", {
        "ref": {"type": "ref/prompt", "name": "greet"}, "argument": {"name": "name", "value": ""}})
    assert error["code"] == -32601


def test_completion_registration_needs_one_target():
    server = MCPServer("s")
    with pytest.raises(TypeError):
        server.completion("x")
    with pytest.raises(TypeError):
        server.completion("x", prompt="p", resource="r://{x}")


# -- pagination --------------------------------------------------------------

def paged_server() -> MCPServer:
    server = MCPServer("paged", page_size=2)
    for i in range(5):
        server.add_tool(lambda: "x", f"tool{i}")
        server.add_prompt(lambda: "x", f"prompt{i}")
        server.add_resource(lambda: "x", f"res://{i}", name=f"res{i}")
        server.add_resource(lambda v: v, f"tpl{i}://{{v}}", name=f"tpl{i}")
    return server


@pytest.mark.parametrize(("method", "key", "field"), [
    ("tools/list", "tools", "name"),
    ("prompts/list", "prompts", "name"),
    ("resources/list", "resources", "name"),
    ("resources/templates/list", "resourceTemplates", "name"),
])
def test_following_next_cursor_visits_every_item_once(method, key, field):
    client = initialized(paged_server())
    pages, cursor = [], None
    while True:
        page = client.result(method, {"cursor": cursor} if cursor is not None else None)
        pages.append([item[field] for item in page[key]])
        cursor = page.get("nextCursor")
        if cursor is None:
            break
        assert isinstance(cursor, str)
    prefix = {"tools": "tool", "prompts": "prompt", "resources": "res", "resourceTemplates": "tpl"}[key]
    assert pages == [[f"{prefix}0", f"{prefix}1"], [f"{prefix}2", f"{prefix}3"], [f"{prefix}4"]]


def test_exact_multiple_of_page_size_has_no_empty_last_page():
    server = MCPServer("s", page_size=2)
    for i in range(4):
        server.add_tool(lambda: "x", f"t{i}")
    client = initialized(server)
    second = client.result("tools/list", {"cursor": client.result("tools/list")["nextCursor"]})
    assert [t["name"] for t in second["tools"]] == ["t2", "t3"]
    assert "nextCursor" not in second


@pytest.mark.parametrize("cursor", ["garbage!", "", "AAAA", "dG9vbHM6MA==", 17, ["x"]])
def test_invalid_cursors_are_invalid_params(cursor):
    error = initialized(paged_server()).error("tools/list", {"cursor": cursor})
    assert error["code"] == -32602


def test_cursor_of_another_list_is_invalid():
    client = initialized(paged_server())
    prompts_cursor = client.result("prompts/list")["nextCursor"]
    assert client.error("tools/list", {"cursor": prompts_cursor})["code"] == -32602
    assert client.error("resources/list", {"cursor": prompts_cursor})["code"] == -32602


def test_cursor_out_of_range_is_invalid():
    server = paged_server()
    client = initialized(server)
    first = client.result("tools/list")
    third_page_cursor = client.result("tools/list", {"cursor": first["nextCursor"]})["nextCursor"]
    for i in range(4):
        server.remove_tool(f"tool{i}")
    assert client.error("tools/list", {"cursor": third_page_cursor})["code"] == -32602


# -- logging -----------------------------------------------------------------

def make_logging_server() -> MCPServer:
    server = MCPServer("s")

    @server.tool()
    def chatty(ctx: Context) -> str:
        for level in ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"):
            ctx.log(level, {"level": level})
        ctx.log("error", "named", logger="db")
        return "ok"

    return server


def logged_levels(client: Peer) -> list[str]:
    return [params["level"] for params in client.notifications("notifications/message")]


def test_default_log_level_is_info():
    client = initialized(make_logging_server())
    client.call_tool("chatty")
    assert logged_levels(client) == [
        "info", "notice", "warning", "error", "critical", "alert", "emergency", "error",
    ]
    assert client.notifications("notifications/message")[0] == {"level": "info", "data": {"level": "info"}}
    assert client.notifications("notifications/message")[-1] == {"level": "error", "data": "named",
                                                                 "logger": "db"}


def test_set_level_filters_by_rank_per_session():
    server = make_logging_server()
    strict, default = initialized(server), initialized(server)
    assert strict.result("logging/setLevel", {"level": "error"}) == {}
    strict.call_tool("chatty")
    default.call_tool("chatty")
    assert logged_levels(strict) == ["error", "critical", "alert", "emergency", "error"]
    assert logged_levels(default)[0] == "info"
    strict.result("logging/setLevel", {"level": "debug"})
    before = len(logged_levels(strict))
    strict.call_tool("chatty")
    assert logged_levels(strict)[before:before + 2] == ["debug", "info"]


def test_server_default_log_level():
    server = make_logging_server()
    server.default_log_level = "emergency"
    client = initialized(server)
    client.call_tool("chatty")
    assert logged_levels(client) == ["emergency"]


@pytest.mark.parametrize("level", ["verbose", "INFO", "", None, 3])
def test_invalid_log_level_is_invalid_params(level):
    client = initialized(make_logging_server())
    assert client.error("logging/setLevel", {"level": level})["code"] == -32602
    client.call_tool("chatty")
    assert logged_levels(client)[0] == "info"  # unchanged


def test_async_tool_awaits_log():
    pending: defer.Deferred[None] = defer.Deferred()
    server = MCPServer("s")

    @server.tool()
    async def work(ctx: Context) -> str:
        await pending
        await ctx.log("warning", "careful")
        return "ok"

    client = initialized(server)
    request_id = client.request("tools/call", {"name": "work"})
    pending.callback(None)
    assert client.notifications("notifications/message") == [{"level": "warning", "data": "careful"}]
    assert client.answer(request_id)["result"] == {"content": [{"type": "text", "text": "ok"}]}


# -- list_changed ------------------------------------------------------------

def full_server() -> MCPServer:
    server = MCPServer("s")
    server.add_tool(lambda: "x", "t")
    server.add_resource(lambda: "x", "r://1", name="r")
    server.add_prompt(lambda: "x", "p")
    return server


def test_list_changed_goes_to_ready_sessions_only():
    server = full_server()
    ready, initializing = initialized(server), initialized(server, ready=False)
    server.add_tool(lambda: "y", "t2")
    server.remove_tool("t2")
    server.add_resource(lambda: "y", "r://2", name="r2")
    server.add_resource(lambda v: v, "r://{v}/x", name="rt")
    server.remove_resource("r://2")
    server.remove_resource("r://{v}/x")
    server.add_prompt(lambda: "y", "p2")
    server.remove_prompt("p2")
    assert [m["method"] for m in ready.take()] == [
        "notifications/tools/list_changed", "notifications/tools/list_changed",
        *["notifications/resources/list_changed"] * 4,
        "notifications/prompts/list_changed", "notifications/prompts/list_changed",
    ]
    assert [m["method"] for m in initializing.take()] == []
    names = [t["name"] for t in ready.result("tools/list")["tools"]]
    assert names == ["t"]


def test_list_changed_only_for_declared_capabilities():
    server = MCPServer("s")
    server.add_tool(lambda: "x", "t")
    client = initialized(server)
    server.add_prompt(lambda: "x", "p")  # the session was not told about prompts
    server.add_tool(lambda: "y", "t2")
    assert [m["method"] for m in client.take()] == ["notifications/tools/list_changed"]


def test_removed_tool_is_unknown():
    server = full_server()
    client = initialized(server)
    server.remove_tool("t")
    assert client.error("tools/call", {"name": "t"})["code"] == -32602
    assert client.result("tools/list")["tools"] == []


# -- review findings ---------------------------------------------------------------


def test_a_bad_log_level_in_a_tool_is_a_tool_bug_not_invalid_params():
    server = MCPServer("log-bug")

    @server.tool()
    async def noisy(ctx: Context) -> str:
        await ctx.log("verbose", "x")
        return "unreachable"

    result = initialized(server).call_tool("noisy")
    assert result["isError"] is True
    assert "Invalid log level 'verbose'" in result["content"][0]["text"]


def test_a_failing_describe_answers_initialize_with_an_internal_error():
    class Broken(MCPServer):
        def describe(self, session):
            raise RuntimeError("bad icons")

    peer = Peer(Broken("broken"))
    error = peer.error("initialize", {"protocolVersion": LATEST, "capabilities": {},
                                      "clientInfo": {"name": "c", "version": "1"}})
    assert error["code"] == -32603 and "errorId" in error["data"]
    assert peer.take() == [{"jsonrpc": "2.0", "id": 1, "error": error}]


def test_ctx_cancelled_is_true_once_the_handler_time_limit_passed():
    server = MCPServer("slow")
    seen: dict[str, Any] = {}
    blocker: defer.Deferred[None] = defer.Deferred()

    @server.tool()
    async def wait(ctx: Context) -> str:
        seen["ctx"] = ctx
        await blocker
        return "done"

    client = initialized(server)
    client.session.handler_timeout = 5
    request_id = client.request("tools/call", {"name": "wait", "arguments": {}})
    assert seen["ctx"].cancelled is False
    client.clock.advance(5)
    assert seen["ctx"].cancelled is True
    assert client.answer(request_id)["error"]["code"] == -32001
