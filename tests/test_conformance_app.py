"""The conformance app, in memory: each fixture answers with the shape its
scenario in ``@modelcontextprotocol/conformance`` checks.

The client declares what the suite's client declares (``sampling`` and
``elicitation`` in the 2025-06-18 form) and answers as it does. The fixtures
of the 2026-07-28 scenarios are exercised here on the handshake era, where
their questions are ordinary requests to the client; those that name their
questions (``key=``) wait for the ``Context`` methods to take that keyword.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import re
import struct
import wave
import zlib
from typing import Any

import pytest

from mcp_twisted import Context
from mcp_twisted.testing import MemoryClient, Peer, result_of
from tests.conformance import app
from tests.conformance.app import STEP_DELAY, server

VERSIONS = ("2025-06-18", "2025-11-25")
SUITE_CAPABILITIES = {"sampling": {}, "elicitation": {}}
TOOL_NAME = re.compile(r"^[A-Za-z0-9_./-]{1,64}$")  # SEP-986, checked by tools-list
# Whether ctx.elicit, ctx.sample and ctx.list_roots take key= (being added).
KEYED = all("key" in inspect.signature(method).parameters
            for method in (Context.elicit, Context.sample, Context.list_roots))
needs_keys = pytest.mark.skipif(not KEYED, reason="ctx.elicit/sample/list_roots(key=...) not there yet")


class Suite:
    """A client that behaves like the suite's: it records what the server asks of it."""

    def __init__(self, version: str = "2025-11-25") -> None:
        self.sampled: list[dict[str, Any]] = []
        self.elicited: list[dict[str, Any]] = []
        self.logs: list[dict[str, Any]] = []
        self.client = MemoryClient(server, protocol_version=version, capabilities=SUITE_CAPABILITIES,
                                   sampling=self._sample, elicitation=self._elicit, on_log=self.logs.append)

    def _sample(self, params: dict[str, Any]) -> dict[str, Any]:
        self.sampled.append(params)
        return {"role": "assistant", "model": "test-model", "stopReason": "endTurn",
                "content": {"type": "text", "text": "This is a test response from the client"}}

    def _elicit(self, params: dict[str, Any]) -> dict[str, Any]:
        self.elicited.append(params)
        return {"action": "accept", "content": {"username": "testuser"}}

    def call(self, name: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        return result_of(self.client.call_tool(name, arguments or {}))

    def elicited_schema(self, tool: str) -> dict[str, Any]:
        """The properties of the form ``tool`` asks the user to fill in."""
        result = self.call(tool)
        assert result["content"][0]["text"].startswith("Elicitation completed: action=accept, content=")
        [request] = self.elicited
        assert "mode" not in request  # a form-only client is not told about modes
        return request["requestedSchema"]["properties"]  # type: ignore[no-any-return]


@pytest.fixture(params=VERSIONS)
def suite(request: pytest.FixtureRequest) -> Suite:
    return Suite(request.param)


def only(result: dict[str, Any], kind: str) -> dict[str, Any]:
    [block] = [block for block in result["content"] if block["type"] == kind]
    assert "isError" not in result
    return block


def decoded(block: dict[str, Any], key: str = "data") -> bytes:
    return base64.b64decode(block[key], validate=True)


def assert_png(data: bytes) -> None:
    """A PNG whose chunks all carry their right CRC, and whose pixels inflate."""
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    at, kinds = 8, []
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IDAT":
            assert zlib.decompress(body) == b"\x00\xff\x00\x00"
        kinds.append(kind)
        at += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"IEND"]


# -- lifecycle and utilities ----------------------------------------------------


def test_initialize_declares_what_the_scenarios_use(suite):
    capabilities = suite.client.server_capabilities
    assert capabilities["tools"] and capabilities["prompts"] and "logging" in capabilities
    assert capabilities["resources"]["subscribe"] is True
    assert "completions" in capabilities  # completion-complete needs it declared


def test_ping_and_set_level_answer_empty_objects(suite):
    assert result_of(suite.client.ping()) == {}
    assert result_of(suite.client.set_logging_level("info")) == {}


def test_completion_of_a_prompt_argument(suite):
    completion = result_of(suite.client.complete({"type": "ref/prompt", "name": "test_prompt_with_arguments"},
                                                 "arg1", "test"))
    assert completion["values"] == ["test", "testing"]
    assert result_of(suite.client.complete({"type": "ref/prompt", "name": "test_prompt_with_arguments"},
                                           "arg1", "zz"))["values"] == []


# -- tools ----------------------------------------------------------------------


def test_every_tool_is_listed_with_a_valid_name_a_description_and_a_schema(suite):
    tools = result_of(suite.client.list_tools())["tools"]
    names = {tool["name"] for tool in tools}
    assert names >= {
        "test_simple_text", "test_image_content", "test_audio_content", "test_embedded_resource",
        "test_multiple_content_types", "test_error_handling", "test_tool_with_progress",
        "json_schema_2020_12_tool", "test_tool_with_logging", "test_sampling", "test_elicitation",
        "test_elicitation_sep1034_defaults", "test_elicitation_sep1330_enums",
        # 2026-07-28
        "test_missing_capability", "test_input_required_result_elicitation",
        "test_input_required_result_sampling", "test_input_required_result_list_roots",
        "test_input_required_result_request_state", "test_input_required_result_multiple_inputs",
        "test_input_required_result_multi_round", "test_input_required_result_tampered_state",
        "test_input_required_result_capabilities", "test_streaming_elicitation", "test_logging_tool",
        "test_trigger_tool_change", "test_trigger_prompt_change", "test_x_mcp_header",
    }
    for tool in tools:
        assert TOOL_NAME.match(tool["name"]), tool["name"]
        assert tool["description"], tool["name"]
        assert tool["inputSchema"]["type"] == "object", tool["name"]


def test_simple_text(suite):
    # Called without arguments, as the scenario does.
    result = result_of(suite.client.request("tools/call", {"name": "test_simple_text"}))
    assert result == {"content": [{"type": "text", "text": "This is a simple text response for testing."}]}


def test_image_content(suite):
    image = only(suite.call("test_image_content"), "image")
    assert image["mimeType"] == "image/png"
    assert_png(decoded(image))


def test_audio_content(suite):
    audio = only(suite.call("test_audio_content"), "audio")
    assert audio["mimeType"] == "audio/wav"
    with wave.open(io.BytesIO(decoded(audio))) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getnframes()) == (1, 2, 1)


def test_embedded_resource(suite):
    block = only(suite.call("test_embedded_resource"), "resource")
    assert block["resource"] == {"uri": "test://embedded-resource", "mimeType": "text/plain",
                                 "text": "This is an embedded resource content."}


def test_multiple_content_types(suite):
    result = suite.call("test_multiple_content_types")
    assert [block["type"] for block in result["content"]] == ["text", "image", "resource"]
    resource = result["content"][2]["resource"]
    assert resource["uri"] == "test://mixed-content-resource"
    assert resource["mimeType"] == "application/json"
    assert json.loads(resource["text"]) == {"test": "data", "value": 123}


def test_error_handling_is_a_tool_error_with_its_message(suite):
    result = suite.call("test_error_handling")
    assert result == {"isError": True, "content": [
        {"type": "text", "text": "This tool intentionally returns an error for testing"}]}


def test_progress_is_reported_three_times_with_pauses_between(suite):
    steps: list[tuple[Any, ...]] = []
    d = suite.client.call_tool("test_tool_with_progress", {}, on_progress=lambda *step: steps.append(step))
    assert steps == [(0, 100, "Completed step 0 of 100")]
    suite.client.clock.advance(STEP_DELAY)
    assert [step[0] for step in steps] == [0, 50]
    suite.client.clock.advance(STEP_DELAY)
    assert [step[:2] for step in steps] == [(0, 100), (50, 100), (100, 100)]
    assert only(result_of(d), "text")["text"]


def test_progress_echoes_the_scenarios_string_token():
    peer = Peer(server)
    peer.initialize()
    request_id = peer.request("tools/call", {"name": "test_tool_with_progress", "arguments": {},
                                             "_meta": {"progressToken": "progress-test-1"}})
    for _ in range(2):
        peer.clock.advance(STEP_DELAY)
    progress = peer.notifications("notifications/progress")
    assert [(p["progressToken"], p["progress"], p["total"]) for p in progress] == [
        ("progress-test-1", 0, 100), ("progress-test-1", 50, 100), ("progress-test-1", 100, 100)]
    # All of them before the answer, so a client reading one stream sees them first.
    answer = peer.answer(request_id)
    assert answer is not None and "result" in answer
    assert peer.received[-1] == answer


def test_logging_sends_three_info_messages_during_the_call(suite):
    assert result_of(suite.client.set_logging_level("debug")) == {}
    d = suite.client.call_tool("test_tool_with_logging", {})
    assert [log["data"] for log in suite.logs] == ["Tool execution started"]
    suite.client.clock.advance(STEP_DELAY)
    suite.client.clock.advance(STEP_DELAY)
    assert [(log["level"], log["data"]) for log in suite.logs] == [("info", "Tool execution started"),
                                                                   ("info", "Tool processing data"),
                                                                   ("info", "Tool execution completed")]
    assert only(result_of(d), "text")["text"]


def test_sampling_asks_the_client_and_returns_its_answer(suite):
    result = suite.call("test_sampling", {"prompt": "Test prompt for sampling"})
    [request] = suite.sampled
    assert request["messages"] == [{"role": "user",
                                    "content": {"type": "text", "text": "Test prompt for sampling"}}]
    assert request["maxTokens"] == 100
    assert only(result, "text")["text"] == "LLM response: This is a test response from the client"


def test_sampling_without_the_capability_is_a_tool_error():
    client = MemoryClient(server)
    result = result_of(client.call_tool("test_sampling", {"prompt": "hello"}))
    assert result["isError"] is True
    assert "sampling" in result["content"][0]["text"]


def test_elicitation_asks_for_a_username_and_an_email(suite):
    result = suite.call("test_elicitation", {"message": "Please provide your information"})
    [request] = suite.elicited
    assert request["message"] == "Please provide your information"
    schema = request["requestedSchema"]
    assert schema["type"] == "object" and schema["required"] == ["username", "email"]
    assert {name: field["type"] for name, field in schema["properties"].items()} == {
        "username": "string", "email": "string"}
    assert only(result, "text")["text"] == 'User response: action=accept, content={"username": "testuser"}'


def test_elicitation_defaults_of_every_primitive_type(suite):
    properties = suite.elicited_schema("test_elicitation_sep1034_defaults")
    assert {name: (field["type"], field["default"]) for name, field in properties.items()} == {
        "name": ("string", "John Doe"), "age": ("integer", 30), "score": ("number", 95.5),
        "status": ("string", "active"), "verified": ("boolean", True)}
    assert properties["status"]["default"] in properties["status"]["enum"]


def test_elicitation_enums_in_their_five_shapes(suite):
    properties = suite.elicited_schema("test_elicitation_sep1330_enums")

    def titled(options: list[dict[str, Any]]) -> bool:
        return bool(options) and all(isinstance(o.get("const"), str) and isinstance(o.get("title"), str)
                                     for o in options)

    untitled = properties["untitledSingle"]
    assert untitled["type"] == "string" and untitled["enum"] and not {"oneOf", "enumNames"} & set(untitled)
    single = properties["titledSingle"]
    assert single["type"] == "string" and titled(single["oneOf"]) and "enum" not in single
    legacy = properties["legacyEnum"]
    assert legacy["type"] == "string" and len(legacy["enumNames"]) == len(legacy["enum"]) > 0
    multi = properties["untitledMulti"]
    assert multi["type"] == "array" and multi["items"]["type"] == "string" and multi["items"]["enum"]
    assert "anyOf" not in multi["items"]
    titled_multi = properties["titledMulti"]
    assert titled_multi["type"] == "array" and titled(titled_multi["items"]["anyOf"])
    assert "enum" not in titled_multi["items"]


def test_json_schema_2020_12_keywords_are_listed_as_written(suite):
    tools = result_of(suite.client.list_tools())["tools"]
    [tool] = [tool for tool in tools if tool["name"] == "json_schema_2020_12_tool"]
    schema = tool["inputSchema"]
    assert schema == app.JSON_SCHEMA_2020_12
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$defs"]["address"]["$anchor"] == "addressDef"
    assert schema["additionalProperties"] is False
    assert any("anyOf" in part for part in schema["allOf"])
    assert {"if", "then", "else"} <= set(schema)


def test_json_schema_2020_12_tool_can_be_called(suite):
    result = suite.call("json_schema_2020_12_tool", {"name": "Ada", "address": {"city": "London"},
                                                      "contactMethod": "email", "email": "ada@example.com"})
    text = only(result, "text")["text"]
    assert json.loads(text.partition(": ")[2]) == {
        "name": "Ada", "address": {"city": "London"}, "contactMethod": "email", "email": "ada@example.com"}
    assert suite.call("json_schema_2020_12_tool", {"unknown": 1})["isError"] is True


# -- resources --------------------------------------------------------------------


def test_resources_are_listed_with_uri_name_and_description(suite):
    resources = result_of(suite.client.list_resources())["resources"]
    assert {r["uri"] for r in resources} == {"test://static-text", "test://static-binary",
                                             "test://watched-resource"}
    assert all(r["name"] and r["description"] and r["mimeType"] for r in resources)
    [template] = result_of(suite.client.list_resource_templates())["resourceTemplates"]
    assert template["uriTemplate"] == "test://template/{id}/data"


def test_static_text(suite):
    assert result_of(suite.client.read_resource("test://static-text")) == {"contents": [
        {"uri": "test://static-text", "mimeType": "text/plain",
         "text": "This is the content of the static text resource."}]}


def test_static_binary(suite):
    [contents] = result_of(suite.client.read_resource("test://static-binary"))["contents"]
    assert (contents["uri"], contents["mimeType"]) == ("test://static-binary", "image/png")
    assert_png(decoded(contents, "blob"))


def test_template_substitutes_its_variable(suite):
    [contents] = result_of(suite.client.read_resource("test://template/123/data"))["contents"]
    assert (contents["uri"], contents["mimeType"]) == ("test://template/123/data", "application/json")
    assert json.loads(contents["text"]) == {"id": "123", "templateTest": True, "data": "Data for ID: 123"}


def test_watched_resource_subscribe_and_unsubscribe(suite):
    updated: list[str] = []
    assert result_of(suite.client.subscribe("test://watched-resource", updated.append)) == {}
    server.notify_resource_updated("test://watched-resource")
    assert updated == ["test://watched-resource"]
    assert result_of(suite.client.unsubscribe("test://watched-resource")) == {}
    server.notify_resource_updated("test://watched-resource")
    assert updated == ["test://watched-resource"]
    assert result_of(suite.client.read_resource("test://watched-resource"))["contents"][0]["text"]


# -- prompts ----------------------------------------------------------------------


def test_prompts_are_listed_with_descriptions_and_arguments(suite):
    prompts = {p["name"]: p for p in result_of(suite.client.list_prompts())["prompts"]}
    assert set(prompts) == {"test_simple_prompt", "test_prompt_with_arguments",
                            "test_prompt_with_embedded_resource", "test_prompt_with_image",
                            "test_input_required_result_prompt"}
    assert all(p["description"] for p in prompts.values())
    assert [(a["name"], a["required"]) for a in prompts["test_prompt_with_arguments"]["arguments"]] == [
        ("arg1", True), ("arg2", True)]
    assert [a["name"] for a in prompts["test_prompt_with_embedded_resource"]["arguments"]] == ["resourceUri"]


def test_simple_prompt(suite):
    # No arguments at all, as the scenario sends it.
    result = result_of(suite.client.request("prompts/get", {"name": "test_simple_prompt"}))
    text = {"type": "text", "text": "This is a simple prompt for testing."}
    assert result["messages"] == [{"role": "user", "content": text}]


def test_prompt_with_arguments_substitutes_both(suite):
    result = result_of(suite.client.get_prompt("test_prompt_with_arguments",
                                               {"arg1": "testValue1", "arg2": "testValue2"}))
    assert result["messages"] == [{"role": "user", "content": {
        "type": "text", "text": "Prompt with arguments: arg1='testValue1', arg2='testValue2'"}}]


def test_prompt_with_embedded_resource(suite):
    result = result_of(suite.client.get_prompt("test_prompt_with_embedded_resource",
                                               {"resourceUri": "test://example-resource"}))
    first, second = result["messages"]
    assert first == {"role": "user", "content": {"type": "resource", "resource": {
        "uri": "test://example-resource", "mimeType": "text/plain",
        "text": "Embedded resource content for testing."}}}
    assert second["content"]["type"] == "text"


def test_prompt_with_image(suite):
    result = result_of(suite.client.request("prompts/get", {"name": "test_prompt_with_image"}))
    first, second = result["messages"]
    assert first["role"] == "user" and first["content"]["mimeType"] == "image/png"
    assert_png(decoded(first["content"]))
    assert second == {"role": "user", "content": {"type": "text", "text": "Please analyze the image above."}}


# -- 2026-07-28 fixtures, on the handshake era -------------------------------------

# What the suite's MRTR scenarios answer, by form field.
FORM_ANSWERS: dict[str, Any] = {"name": "Alice", "ok": True, "color": "blue", "context": "test context"}
ROOTS = [{"uri": "file:///test/root", "name": "Test Root"}]


class Asked:
    """A client that answers every question the way the suite's MRTR scenarios do,
    and records them in order (method, params)."""

    def __init__(self, capabilities: tuple[str, ...] = ("sampling", "elicitation", "roots")) -> None:
        self.questions: list[tuple[str, dict[str, Any]]] = []
        handlers: dict[str, Any] = {"sampling": self._sample, "elicitation": self._elicit,
                                    "roots": self._roots}
        self.client = MemoryClient(server, **{name: handlers[name] for name in capabilities})

    def _sample(self, params: dict[str, Any]) -> dict[str, Any]:
        self.questions.append(("sampling/createMessage", params))
        return {"role": "assistant", "model": "test-model", "stopReason": "endTurn",
                "content": {"type": "text", "text": "Paris"}}

    def _elicit(self, params: dict[str, Any]) -> dict[str, Any]:
        self.questions.append(("elicitation/create", params))
        fields = params["requestedSchema"]["properties"]
        return {"action": "accept", "content": {name: FORM_ANSWERS[name] for name in fields}}

    def _roots(self) -> list[dict[str, Any]]:
        self.questions.append(("roots/list", {}))
        return ROOTS

    def text(self, tool: str, arguments: dict[str, Any] | None = None) -> str:
        result = result_of(self.client.call_tool(tool, arguments or {}))
        assert "isError" not in result, result
        return only(result, "text")["text"]  # type: ignore[no-any-return]


def test_missing_capability_samples_when_the_client_can(suite):
    text = only(suite.call("test_missing_capability"), "text")["text"]
    assert text == "The client declared sampling; the model said: This is a test response from the client"
    [request] = suite.sampled
    assert request["messages"][0]["content"]["text"] == "Say hello"


def test_missing_capability_without_sampling_is_a_tool_error_on_the_handshake_era():
    # On 2026-07-28 the same refusal is the JSON-RPC error -32021.
    result = result_of(MemoryClient(server).call_tool("test_missing_capability", {}))
    assert result["isError"] is True
    assert "sampling" in result["content"][0]["text"]


@pytest.mark.parametrize(("capabilities", "asked"), [
    (("sampling", "elicitation"), ["sampling/createMessage", "elicitation/create"]),
    (("sampling",), ["sampling/createMessage"]),
    (("elicitation",), ["elicitation/create"]),
])
def test_capabilities_fixture_asks_only_what_the_client_declared(capabilities, asked):
    client = Asked(capabilities)
    text = client.text("test_input_required_result_capabilities")
    assert text == f"capabilities-ok: {len(asked)} answer(s)"
    assert [method for method, _ in client.questions] == asked


def test_capabilities_fixture_without_sampling_or_elicitation_asks_nothing():
    client = Asked(("roots",))
    assert "neither" in client.text("test_input_required_result_capabilities")
    assert client.questions == []


def test_streaming_elicitation_asks_for_a_confirmation():
    client = Asked()
    assert client.text("test_streaming_elicitation") == "Streaming complete (action=accept)"
    [(method, params)] = client.questions
    assert method == "elicitation/create" and params["requestedSchema"] == app.CONFIRM_SCHEMA


@pytest.mark.parametrize(("level", "logged"), [
    ("info", [("info", "Logging tool started"),
              ("critical", "A critical message, which any log level lets through")]),
    ("error", [("critical", "A critical message, which any log level lets through")]),
])
def test_logging_tool_logs_at_once_what_the_level_lets_through(suite, level, logged):
    assert result_of(suite.client.set_logging_level(level)) == {}
    # No pause: the suite reads this call's stream for half a second only.
    assert only(suite.call("test_logging_tool"), "text")["text"] == "Logging evaluated"
    assert [(log["level"], log["data"]) for log in suite.logs] == logged


@pytest.mark.parametrize(("tool", "kind", "lister"), [
    ("test_trigger_tool_change", "tools", "list_tools"),
    ("test_trigger_prompt_change", "prompts", "list_prompts"),
])
def test_triggers_announce_a_list_change_and_leave_the_list_as_it_was(tool, kind, lister):
    changed: list[str] = []
    client = MemoryClient(server, on_list_changed=changed.append)

    def names() -> list[str]:
        return [item["name"] for item in result_of(getattr(client, lister)())[kind]]

    before = names()
    assert only(result_of(client.call_tool(tool, {})), "text")["text"]
    assert kind in changed
    assert names() == before  # same items, same order: tools-list-deterministic-order


def test_x_mcp_header_tool_lists_its_header_on_a_string_parameter(suite):
    tools = {tool["name"]: tool for tool in result_of(suite.client.list_tools())["tools"]}
    schema = tools["test_x_mcp_header"]["inputSchema"]
    assert schema == app.X_MCP_HEADER_SCHEMA
    assert schema["properties"]["region"] == {"type": "string", "x-mcp-header": "Region",
                                              "description": "Mirrored into the Mcp-Param-Region header"}
    assert schema.get("required", []) == []  # callable with no arguments


def test_x_mcp_header_tool_echoes_its_region(suite):
    assert only(suite.call("test_x_mcp_header", {"region": "Hello"}), "text")["text"] == "region=Hello"
    assert only(suite.call("test_x_mcp_header"), "text")["text"] == "region=<none>"


def test_input_required_prompt_is_listed_without_arguments(suite):
    prompts = {p["name"]: p for p in result_of(suite.client.list_prompts())["prompts"]}
    prompt = prompts["test_input_required_result_prompt"]
    assert prompt["description"] and not prompt.get("arguments")


@needs_keys
@pytest.mark.parametrize(("tool", "asked", "text"), [
    ("test_input_required_result_elicitation", [("elicitation/create", "What is your name?")],
     "Hello, Alice!"),
    ("test_input_required_result_sampling", [("sampling/createMessage", "What is the capital of France?")],
     "Model said: Paris"),
    ("test_input_required_result_list_roots", [("roots/list", None)],
     "Client exposed 1 root(s): file:///test/root"),
    ("test_input_required_result_request_state", [("elicitation/create", "Please confirm")],
     "state-ok: confirmation received (ok=True)"),
    ("test_input_required_result_tampered_state", [("elicitation/create", "Please confirm")],
     "integrity-ok: confirmation received (ok=True)"),
    ("test_input_required_result_multi_round",
     [("elicitation/create", "Step 1: What is your name?"),
      ("elicitation/create", "Step 2: What is your favorite color?")],
     "Multi-round complete: Alice likes blue"),
    ("test_input_required_result_multiple_inputs", [("elicitation/create", "What is your name?"),
                                                    ("sampling/createMessage", "Generate a greeting"),
                                                    ("roots/list", None)],
     "Name: Alice; Greeting: Paris; Roots: 1"),
])
def test_input_required_fixtures_ask_and_answer(tool, asked, text):
    client = Asked()
    assert client.text(tool) == text

    def said(method: str, params: dict[str, Any]) -> str | None:
        if method == "elicitation/create":
            return params["message"]  # type: ignore[no-any-return]
        if method == "sampling/createMessage":
            return params["messages"][0]["content"]["text"]  # type: ignore[no-any-return]
        return None

    assert [(method, said(method, params)) for method, params in client.questions] == asked


@needs_keys
def test_input_required_fixtures_ask_the_forms_and_token_limits_the_scenarios_show():
    client = Asked()
    client.text("test_input_required_result_multiple_inputs")
    forms = {method: params for method, params in client.questions}
    assert forms["elicitation/create"]["requestedSchema"] == app.NAME_SCHEMA
    assert forms["sampling/createMessage"]["maxTokens"] == 50
    client = Asked()
    client.text("test_input_required_result_sampling")
    assert client.questions[0][1]["maxTokens"] == 100


@needs_keys
def test_input_required_prompt_asks_for_its_context():
    client = Asked()
    result = result_of(client.client.get_prompt("test_input_required_result_prompt", {}))
    assert result["messages"] == [{"role": "user", "content": {
        "type": "text", "text": "Use the following context: test context"}}]
    [(method, params)] = client.questions
    assert (method, params["message"]) == ("elicitation/create", "What context should the prompt use?")
    assert params["requestedSchema"] == app.CONTEXT_SCHEMA
