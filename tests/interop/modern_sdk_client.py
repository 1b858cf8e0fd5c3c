"""Interop client on the Python SDK 2.x (``mcp==2.3.0``) or FastMCP 4 (``fastmcp-slim==4.1.6``).

Usage: python modern_sdk_client.py URL mcp|fastmcp auto|legacy|2026-07-28
Runs in the environment ``modern_env.py`` builds (mcp 2.3 cannot sit beside the
project's mcp 1.30). ``mcp.client.Client(URL, mode=MODE)`` or
``fastmcp.Client(URL, mode=MODE)``, then: list tools, call ``echo``, and call
the demo's tools that ask the client something: ``ask_user`` (elicitation,
answered accept ``{"name": "Ada"}``), ``sample_llm`` (sampling, answered
``sampled:<prompt>``) and ``list_client_roots`` (roots: ``file:///tmp/x``).
On 2026-07-28 the server asks through an ``input_required`` result and the
client retries the call with ``inputResponses``, inside ``call_tool``. Each
callback records (in ``asked``) the id it is given: the ``inputRequests`` key
on a 2026-07-28 call, the JSON-RPC id of the server's request on a
handshake-era one. With ``mcp`` on 2026-07-28, ``mrtr`` drives one round by
hand (``session.call_tool(..., allow_input_required=True)``) and reports both legs.
Prints ONE JSON object on stdout: {"client", "mode", "protocolVersion", "server", "asked", "steps"};
a failing step is recorded as {"error": ...}. Exit 1 with {"fatal": ...} when
connecting failed or the 30 s global timeout hit.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

import mcp_types as types

GLOBAL_TIMEOUT = 30.0
STEP_TIMEOUT = 10.0
ANSWER = {"name": "Ada"}
ROOT = "file:///tmp/x"
MODERN = "2026-07-28"

Json = Any
Steps = dict[str, Json]


def describe(exc: BaseException) -> Json:
    out: dict[str, Any] = {"error": f"{type(exc).__name__}: {exc}"}
    error = getattr(exc, "error", None)
    if isinstance(getattr(error, "code", None), int):
        out["code"] = error.code
    return out


async def step(steps: Steps, name: str, run: Callable[[], Awaitable[Json]]) -> None:
    try:
        steps[name] = await asyncio.wait_for(run(), STEP_TIMEOUT)
    except Exception as exc:  # a step's failure is part of the report
        steps[name] = describe(exc)


def text(result: Any) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def scenario(client: Any, list_tools: Callable[[], Awaitable[list[str]]]) -> Steps:
    """The steps both clients run (their ``call_tool`` results look alike)."""
    steps: Steps = {}

    def call(name: str, arguments: dict[str, Any]) -> Callable[[], Awaitable[Json]]:
        async def run() -> Json:
            result = await client.call_tool(name, arguments)
            return {"text": text(result), "isError": result.is_error}
        return run

    await step(steps, "list_tools", list_tools)
    await step(steps, "echo", call("echo", {"text": "hi"}))
    await step(steps, "elicitation", call("ask_user", {"question": "Your name?"}))
    await step(steps, "sampling", call("sample_llm", {"prompt": "p"}))
    await step(steps, "roots", call("list_client_roots", {}))
    return steps


async def run_mcp(url: str, mode: str) -> Json:
    """The official SDK's high-level ``mcp.client.Client``."""
    from mcp.client import Client, ClientRequestContext

    asked: list[Json] = []

    async def elicit(context: ClientRequestContext, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append({"kind": "elicitation", "id": context.request_id, "message": params.message})
        return types.ElicitResult(action="accept", content=ANSWER)

    async def sample(
        context: ClientRequestContext, params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        asked.append({"kind": "sampling", "id": context.request_id})
        prompt = params.messages[0].content
        said = prompt.text if isinstance(prompt, types.TextContent) else "?"
        return types.CreateMessageResult(role="assistant", model="interop-fake-model",
                                         content=types.TextContent(type="text", text=f"sampled:{said}"))

    async def roots(context: ClientRequestContext) -> types.ListRootsResult:
        asked.append({"kind": "roots", "id": context.request_id})
        return types.ListRootsResult(roots=[types.Root(uri=ROOT, name="x")])

    client = Client(url, mode=mode, elicitation_callback=elicit, sampling_callback=sample,
                    list_roots_callback=roots, read_timeout_seconds=STEP_TIMEOUT)
    async with client:
        server = client.server_info
        report: Json = {"client": f"mcp {version('mcp')}", "mode": mode,
                        "protocolVersion": client.protocol_version, "server": server.name if server else None,
                        "asked": asked}

        async def list_tools() -> list[str]:
            return [tool.name for tool in (await client.list_tools()).tools]

        async def mrtr() -> Json:
            """One MRTR round driven by hand: the input_required leg, then the retry."""
            arguments = {"question": "Again?"}
            first = await client.session.call_tool("ask_user", arguments, allow_input_required=True)
            if not isinstance(first, types.InputRequiredResult):
                return {"first": type(first).__name__}
            requests = first.input_requests or {}
            answers: types.InputResponses = {
                key: types.ElicitResult(action="accept", content={"name": "Grace"}) for key in requests
            }
            final = await client.session.call_tool(
                "ask_user", arguments, input_responses=answers, request_state=first.request_state,
            )
            return {
                "first": {"resultType": first.result_type,
                          "requestState": isinstance(first.request_state, str),
                          "inputRequests": {key: request.method for key, request in requests.items()}},
                "final": {"type": type(final).__name__, "text": text(final)},
            }

        report["steps"] = await scenario(client, list_tools)
        if client.protocol_version == MODERN:
            await step(report["steps"], "mrtr", mrtr)
        return report


async def run_fastmcp(url: str, mode: str) -> Json:
    """FastMCP's ``fastmcp.Client`` (on the official SDK 2.x)."""
    from fastmcp import Client

    asked: list[Json] = []

    async def elicit(message: str, response_type: Any, params: Any, context: Any) -> Json:
        asked.append({"kind": "elicitation", "id": context.request_id, "message": message})
        return ANSWER

    async def sample(messages: list[types.SamplingMessage], params: Any, context: Any) -> str:
        asked.append({"kind": "sampling", "id": context.request_id})
        prompt = messages[0].content
        return f"sampled:{prompt.text if isinstance(prompt, types.TextContent) else '?'}"

    async def roots(context: Any) -> list[str]:
        asked.append({"kind": "roots", "id": context.request_id})
        return [ROOT]

    client = Client(url, mode=mode, elicitation_handler=elicit, sampling_handler=sample, roots=roots,
                    timeout=STEP_TIMEOUT)
    async with client:
        server = client.server_info
        report: Json = {"client": f"fastmcp {version('fastmcp-slim')}", "mode": mode,
                        "protocolVersion": client.protocol_version, "server": server.name if server else None,
                        "asked": asked}

        async def list_tools() -> list[str]:
            return [tool.name for tool in await client.list_tools()]

        report["steps"] = await scenario(client, list_tools)
        return report


async def main(url: str, client: str, mode: str) -> Json:
    run = {"mcp": run_mcp, "fastmcp": run_fastmcp}[client]
    return await asyncio.wait_for(run(url, mode), GLOBAL_TIMEOUT)


if __name__ == "__main__":
    try:
        output, code = asyncio.run(main(*sys.argv[1:4])), 0
    except BaseException as exc:  # whatever ended the run (an exception group too) is the report
        output, code = {"fatal": describe(exc)}, 1
    print(json.dumps(output))
    sys.exit(code)
