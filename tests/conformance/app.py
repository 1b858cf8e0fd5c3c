"""The fixtures the official MCP conformance suite's server scenarios call.

``@modelcontextprotocol/conformance server --url ...`` connects as a client and
calls tools, resources and prompts by the names below, checking the shape of
each answer; this app provides them with mcp-twisted's public API only::

    twistd -n mcpws --app tests.conformance.app:server --endpoint tcp:0:interface=127.0.0.1

Texts follow the scenario descriptions where a scenario states them. Waits use
the session's clock, so in-memory tests drive them with a ``task.Clock``.
Content-returning tools are annotated ``list[...]``: a ``dict`` return
annotation would make the block structured output (``outputSchema``).

The fixtures of the 2026-07-28 scenarios (``--spec-version 2026-07-28``) are
at the end. Those that ask the client something (SEP-2322's
``input-required-result-*``) are written as on the handshake era, with
``ctx.elicit``, ``ctx.sample`` and ``ctx.list_roots``; on 2026-07-28 the
server answers such a question with an ``input_required`` result and runs the
handler again when the client retries with the answers. A question's ``key=``
names it in ``inputRequests`` where a scenario expects a given name.
"""

from __future__ import annotations

import io
import json
import struct
import wave
import zlib
from typing import Any, Literal

from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults
from typing_extensions import TypedDict

from mcp_twisted import Context, MCPServer, ToolError, content

server = MCPServer(
    "mcp-twisted-conformance", "1.0.0",
    instructions="Fixtures for the MCP conformance suite's server scenarios.",
)

# Pause between the notifications of the logging and progress tools: the
# scenarios ask for ~50 ms, to see several notifications arrive during a call.
STEP_DELAY = 0.05


def _png_pixel(rgb: tuple[int, int, int] = (255, 0, 0)) -> bytes:
    """A 1x1 PNG of one colour: the smallest valid image the scenarios accept."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)  # width, height, 8-bit RGB
    pixels = zlib.compress(b"\x00" + bytes(rgb))  # one row: filter type 0, one pixel
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _wav_silence(frames: int = 1, rate: int = 8000) -> bytes:
    """A WAV file of ``frames`` silent 16-bit mono samples."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(b"\x00\x00" * frames)
    return buffer.getvalue()


PNG = _png_pixel()
WAV = _wav_silence()


async def _pause(ctx: Context) -> None:
    await task.deferLater(ctx.session.clock, STEP_DELAY)


def _elicitation_text(answer: dict[str, Any], lead: str = "Elicitation completed") -> str:
    return f"{lead}: action={answer.get('action')}, content={json.dumps(answer.get('content') or {})}"


# -- tools --------------------------------------------------------------------


@server.tool()
def test_simple_text() -> str:
    """Answers with one text block."""
    return "This is a simple text response for testing."


@server.tool()
def test_image_content() -> list[dict[str, Any]]:
    """Answers with one image block (a 1x1 PNG)."""
    return [content.image(PNG, "image/png")]


@server.tool()
def test_audio_content() -> list[dict[str, Any]]:
    """Answers with one audio block (a WAV file)."""
    return [content.audio(WAV, "audio/wav")]


@server.tool()
def test_embedded_resource() -> list[dict[str, Any]]:
    """Answers with a resource embedded in the result."""
    return [content.embedded_resource("test://embedded-resource", "This is an embedded resource content.",
                                      "text/plain")]


@server.tool()
def test_multiple_content_types() -> list[Any]:
    """Answers with text, an image and an embedded resource together."""
    data = json.dumps({"test": "data", "value": 123})
    return ["Multiple content types test:", content.image(PNG, "image/png"),
            content.embedded_resource("test://mixed-content-resource", data, "application/json")]


@server.tool()
def test_error_handling() -> str:
    """Always fails, as a tool error (isError) rather than a protocol error."""
    raise ToolError("This tool intentionally returns an error for testing")


@server.tool()
async def test_reconnection(ctx: Context) -> str:
    """Ends its own stream, then answers: the client resumes with Last-Event-ID (SEP-1699)."""
    ctx.close_stream()
    await task.deferLater(ctx.session.clock, 0.15)
    return "Reconnection test completed: the answer arrived after the stream was resumed"


@server.tool()
async def test_tool_with_progress(ctx: Context) -> str:
    """Reports progress 0, 50 and 100 of 100, pausing between steps."""
    for done in (0, 50, 100):
        if done:
            await _pause(ctx)
        await ctx.report_progress(done, 100, f"Completed step {done} of 100")
    return "Progress reported: 0, 50 and 100 of 100"


@server.tool()
async def test_tool_with_logging(ctx: Context) -> str:
    """Sends three info log messages, pausing between them."""
    for index, message in enumerate(("Tool execution started", "Tool processing data",
                                     "Tool execution completed")):
        if index:
            await _pause(ctx)
        await ctx.log("info", message, logger="conformance")
    return "Tool with logging executed successfully"


@server.tool()
async def test_sampling(prompt: str, ctx: Context) -> str:
    """Asks the client's model to answer a prompt (sampling/createMessage).

    Args:
        prompt: The prompt to send to the model.
    """
    answer = await ctx.sample(prompt, max_tokens=100)
    reply = answer.get("content")
    text = reply.get("text") if isinstance(reply, dict) else None
    return f"LLM response: {text if text is not None else json.dumps(reply)}"


@server.tool()
async def test_elicitation(message: str, ctx: Context) -> str:
    """Asks the user for a name and an e-mail address (elicitation/create).

    Args:
        message: The message to show the user.
    """
    answer = await ctx.elicit(message, {
        "type": "object",
        "properties": {
            "username": {"type": "string", "description": "User's response"},
            "email": {"type": "string", "description": "User's email address"},
        },
        "required": ["username", "email"],
    })
    return _elicitation_text(answer, "User response")


@server.tool()
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    """Asks for a form whose fields of every primitive type have defaults (SEP-1034)."""
    answer = await ctx.elicit("Please review and update the form fields with defaults", {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "User name", "default": "John Doe"},
            "age": {"type": "integer", "description": "User age", "default": 30},
            "score": {"type": "number", "description": "User score", "default": 95.5},
            "status": {"type": "string", "description": "User status",
                       "enum": ["active", "inactive", "pending"], "default": "active"},
            "verified": {"type": "boolean", "description": "Verification status", "default": True},
        },
    })
    return _elicitation_text(answer)


def _choices(prefix: str, word: str) -> list[dict[str, str]]:
    """Three ``{"const", "title"}`` options: value1 "First <word>", ..."""
    return [{"const": f"{prefix}{n}", "title": f"{ordinal} {word}"}
            for n, ordinal in enumerate(("First", "Second", "Third"), start=1)]


@server.tool()
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    """Asks for a form with the five enum shapes of SEP-1330: single and
    multiple choice, with and without titles, and the legacy enumNames."""
    plain = ["option1", "option2", "option3"]
    answer = await ctx.elicit("Please select options from the enum fields", {
        "type": "object",
        "properties": {
            "untitledSingle": {"type": "string", "description": "Select one option", "enum": plain},
            "titledSingle": {"type": "string", "description": "Select one option with titles",
                             "oneOf": _choices("value", "Option")},
            "legacyEnum": {"type": "string", "description": "Select one option (legacy)",
                           "enum": ["opt1", "opt2", "opt3"],
                           "enumNames": ["Option One", "Option Two", "Option Three"]},
            "untitledMulti": {"type": "array", "description": "Select multiple options",
                              "minItems": 1, "maxItems": 3,
                              "items": {"type": "string", "enum": plain}},
            "titledMulti": {"type": "array", "description": "Select multiple options with titles",
                            "minItems": 1, "maxItems": 3,
                            "items": {"anyOf": _choices("value", "Choice")}},
        },
    })
    return _elicitation_text(answer)


# The scenario checks that tools/list keeps these JSON Schema 2020-12 keywords
# ($schema, $defs, $anchor, allOf/anyOf, if/then/else, additionalProperties).
JSON_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        },
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


class Address(TypedDict, total=False):
    street: str
    city: str


@server.tool(input_schema=JSON_SCHEMA_2020_12)
def json_schema_2020_12_tool(
    name: str | None = None,
    address: Address | None = None,
    contactMethod: Literal["phone", "email"] | None = None,
    phone: str | None = None,
    email: str | None = None,
) -> str:
    """Tool with JSON Schema 2020-12 features (its input schema is given verbatim)."""
    given = {key: value for key, value in (("name", name), ("address", address),
                                           ("contactMethod", contactMethod), ("phone", phone),
                                           ("email", email)) if value is not None}
    return f"JSON Schema 2020-12 tool called with: {json.dumps(given)}"


# -- resources ----------------------------------------------------------------


@server.resource("test://static-text", name="static-text", title="Static Text Resource",
                 mime_type="text/plain")
def static_text() -> str:
    """A static text resource."""
    return "This is the content of the static text resource."


@server.resource("test://static-binary", name="static-binary", title="Static Binary Resource",
                 mime_type="image/png")
def static_binary() -> bytes:
    """A static binary resource (a 1x1 PNG)."""
    return PNG


@server.resource("test://template/{id}/data", name="template", title="Resource Template",
                 mime_type="application/json")
def template_data(id: str) -> dict[str, Any]:
    """JSON that names the id it was read with."""
    return {"id": id, "templateTest": True, "data": f"Data for ID: {id}"}


@server.resource("test://watched-resource", name="watched-resource", title="Watched Resource",
                 mime_type="text/plain")
def watched_resource() -> str:
    """A resource clients may subscribe to."""
    return "Watched resource content"


# -- prompts ------------------------------------------------------------------


@server.prompt(title="Simple Test Prompt")
def test_simple_prompt() -> str:
    """A prompt without arguments."""
    return "This is a simple prompt for testing."


@server.prompt(title="Prompt With Arguments")
def test_prompt_with_arguments(arg1: str, arg2: str) -> str:
    """A prompt with two required arguments.

    Args:
        arg1: First test argument.
        arg2: Second test argument.
    """
    return f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"


@server.prompt(title="Prompt With Embedded Resource")
def test_prompt_with_embedded_resource(resourceUri: str) -> list[Any]:
    """A prompt that embeds a resource.

    Args:
        resourceUri: URI of the resource to embed.
    """
    return [content.embedded_resource(resourceUri, "Embedded resource content for testing.", "text/plain"),
            "Please process the embedded resource above."]


@server.prompt(title="Prompt With Image")
def test_prompt_with_image() -> list[Any]:
    """A prompt that shows an image."""
    return [content.image(PNG, "image/png"), "Please analyze the image above."]


# completion/complete must answer (and the capability be declared); the
# scenario asks for arg1 of test_prompt_with_arguments.
ARG1_SUGGESTIONS = ["paris", "park", "party", "test", "testing"]


@server.completion("arg1", prompt="test_prompt_with_arguments")
def complete_arg1(prefix: str) -> list[str]:
    return [word for word in ARG1_SUGGESTIONS if word.startswith(prefix)]


# -- 2026-07-28 ---------------------------------------------------------------
# Fixtures that only the 2026-07-28 scenarios call (server-stateless, SEP-2322
# input-required-result-*, SEP-2243 http-custom-header-server-validation).
# They are listed and callable on every revision.

NAME_SCHEMA: dict[str, Any] = {
    "type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
CONFIRM_SCHEMA: dict[str, Any] = {
    "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
COLOR_SCHEMA: dict[str, Any] = {
    "type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}
CONTEXT_SCHEMA: dict[str, Any] = {
    "type": "object", "properties": {"context": {"type": "string"}}, "required": ["context"]}


def _field(answer: Any, name: str, default: str = "?") -> Any:
    """A field of an accepted elicitation's content, or ``default``."""
    accepted = isinstance(answer, dict) and answer.get("action") == "accept"
    fields = answer.get("content") if accepted else None
    return fields.get(name, default) if isinstance(fields, dict) else default


def _sampled_text(answer: Any) -> str:
    """The text of a sampling answer (``CreateMessageResult``), or ``?``."""
    reply = answer.get("content") if isinstance(answer, dict) else None
    text = reply.get("text") if isinstance(reply, dict) else None
    return text if isinstance(text, str) else "?"


@server.tool()
async def test_missing_capability(ctx: Context) -> str:
    """Needs the client's sampling capability: on 2026-07-28 a request that does not
    declare it is refused with -32021 (MissingRequiredClientCapability)."""
    answer = await ctx.sample("Say hello", max_tokens=20)
    return f"The client declared sampling; the model said: {_sampled_text(answer)}"


@server.tool()
async def test_input_required_result_elicitation(ctx: Context) -> str:
    """Asks the user's name (one elicitation, key user_name), then greets them."""
    answer = await ctx.elicit("What is your name?", NAME_SCHEMA, key="user_name")
    return f"Hello, {_field(answer, 'name', 'stranger')}!"


@server.tool()
async def test_input_required_result_sampling(ctx: Context) -> str:
    """Asks the client's model a question (one sampling request, key capital_question)."""
    answer = await ctx.sample("What is the capital of France?", max_tokens=100, key="capital_question")
    return f"Model said: {_sampled_text(answer)}"


@server.tool()
async def test_input_required_result_list_roots(ctx: Context) -> str:
    """Asks for the client's roots (one roots/list request, key client_roots)."""
    roots = await ctx.list_roots(key="client_roots")
    return f"Client exposed {len(roots)} root(s): {', '.join(str(root.get('uri')) for root in roots)}"


@server.tool()
async def test_input_required_result_request_state(ctx: Context) -> str:
    """Asks for a confirmation (key confirm); the retry carries the requestState."""
    answer = await ctx.elicit("Please confirm", CONFIRM_SCHEMA, key="confirm")
    return f"state-ok: confirmation received (ok={_field(answer, 'ok')})"


@server.tool()
async def test_input_required_result_multiple_inputs(ctx: Context) -> str:
    """Asks three things at once: a name (elicitation), a greeting (sampling) and
    the roots, under the keys user_name, greeting and client_roots."""
    questions: list[Deferred[Any]] = [
        ctx.elicit("What is your name?", NAME_SCHEMA, key="user_name"),
        ctx.sample("Generate a greeting", max_tokens=50, key="greeting"),
        ctx.list_roots(key="client_roots"),
    ]
    name, greeting, roots = await gatherResults(questions, consumeErrors=True)
    return (f"Name: {_field(name, 'name')}; Greeting: {_sampled_text(greeting)}; "
            f"Roots: {len(roots)}")


@server.tool()
async def test_input_required_result_multi_round(ctx: Context) -> str:
    """Asks two questions one after the other (keys step1, then step2): two rounds
    of input before the answer."""
    step1 = await ctx.elicit("Step 1: What is your name?", NAME_SCHEMA, key="step1")
    step2 = await ctx.elicit("Step 2: What is your favorite color?", COLOR_SCHEMA, key="step2")
    return f"Multi-round complete: {_field(step1, 'name')} likes {_field(step2, 'color')}"


@server.tool()
async def test_input_required_result_tampered_state(ctx: Context) -> str:
    """Asks for a confirmation (key confirm); a retry whose requestState was
    altered is refused (the server seals the state)."""
    answer = await ctx.elicit("Please confirm", CONFIRM_SCHEMA, key="confirm")
    return f"integrity-ok: confirmation received (ok={_field(answer, 'ok')})"


@server.tool()
async def test_input_required_result_capabilities(ctx: Context) -> str:
    """Asks only what the client declared it can answer: sampling and elicitation,
    each if declared; nothing when neither is."""
    declared = ctx.client_capabilities or {}
    questions: list[Deferred[Any]] = []
    if "sampling" in declared:
        questions.append(ctx.sample("Say hello", max_tokens=50))
    if "elicitation" in declared:
        questions.append(ctx.elicit("What is your name?", NAME_SCHEMA))
    if not questions:
        return "capabilities-ok: the client declared neither sampling nor elicitation"
    answers = await gatherResults(questions, consumeErrors=True)
    return f"capabilities-ok: {len(answers)} answer(s)"


@server.tool()
async def test_streaming_elicitation(ctx: Context) -> str:
    """Asks for a confirmation mid-call: on 2026-07-28 the request's stream may carry
    notifications and an input_required result, never a request to the client."""
    answer = await ctx.elicit("Please confirm to continue", CONFIRM_SCHEMA)
    return f"Streaming complete (action={answer.get('action')})"


@server.tool()
async def test_logging_tool(ctx: Context) -> str:
    """Logs at info and at critical, without pauses: on 2026-07-28 a request that sets
    no log level gets no notifications/message at all."""
    await ctx.log("info", "Logging tool started", logger="conformance")
    await ctx.log("critical", "A critical message, which any log level lets through", logger="conformance")
    return "Logging evaluated"


def _dynamic_tool() -> str:
    """Registered and removed again by test_trigger_tool_change."""
    return "dynamic"


def _dynamic_prompt() -> str:
    """Registered and removed again by test_trigger_prompt_change."""
    return "dynamic"


@server.tool()
def test_trigger_tool_change() -> str:
    """Adds a tool and removes it again: listeners hear notifications/tools/list_changed."""
    server.add_tool(_dynamic_tool, "test_dynamic_tool")
    server.remove_tool("test_dynamic_tool")
    return "Tool list changed"


@server.tool()
def test_trigger_prompt_change() -> str:
    """Adds a prompt and removes it again: listeners hear notifications/prompts/list_changed."""
    server.add_prompt(_dynamic_prompt, "test_dynamic_prompt")
    server.remove_prompt("test_dynamic_prompt")
    return "Prompt list changed"


# SEP-2243: a string parameter mirrored into the Mcp-Param-Region header.
X_MCP_HEADER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "region": {"type": "string", "description": "Mirrored into the Mcp-Param-Region header",
                   "x-mcp-header": "Region"},
    },
}


@server.tool(input_schema=X_MCP_HEADER_SCHEMA)
def test_x_mcp_header(region: str = "<none>") -> str:
    """Echoes its region, which HTTP clients also send as the Mcp-Param-Region header."""
    return f"region={region}"


@server.prompt(title="Prompt Needing Input")
async def test_input_required_result_prompt(ctx: Context) -> str:
    """A prompt that first asks the user for its context (key user_context)."""
    answer = await ctx.elicit("What context should the prompt use?", CONTEXT_SCHEMA, key="user_context")
    return f"Use the following context: {_field(answer, 'context')}"
