"""Interop client built on the official MCP Python SDK (mcp==1.30.0).

Usage: python sdk_client.py URL SCENARIO      SCENARIO: full | echo | full+updates
The URL picks the SDK's transport: ws:// or wss:// WebSocket, http:// or https://
Streamable HTTP. full+updates is full, then a subscription to demo://readme and a wait
for its notifications/resources/updated (the server under test must send some).
Prints ONE JSON object on stdout: {"scenario": ..., "steps": {step: result-or-{"error": ...}}}.
Each step is isolated: a failing step is recorded as {"error": "..."} and the run goes on.
Exit 0 when the run completed (even with step errors), 1 on connection failure/global timeout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import warnings
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from mcp import ClientSession, McpError, types
from mcp.client.streamable_http import streamable_http_client
from mcp.client.websocket import websocket_client
from mcp.shared.context import RequestContext
from pydantic import AnyUrl

# mcp 1.30 marks its WebSocket transport deprecated (warns on each call); it still works.
warnings.filterwarnings("ignore", category=DeprecationWarning)

GLOBAL_TIMEOUT = 30.0
STEP_TIMEOUT = 10.0
SCENARIOS = ("full", "echo", "full+updates")

Json = Any
# Opens one of the SDK's client transports: its streams, (read, write, ...).
Transport = Callable[[], AbstractAsyncContextManager[tuple[Any, ...]]]


def transport_for(url: str) -> Transport:
    """The SDK's transport for ``url``: Streamable HTTP for http(s)://, else WebSocket."""
    if url.startswith(("http://", "https://")):
        return lambda: streamable_http_client(url)
    return lambda: websocket_client(url)


def dump(model: Any) -> Json:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def describe(exc: BaseException) -> Json:
    if isinstance(exc, McpError):
        return {"error": str(exc), "code": exc.error.code, "message": exc.error.message}
    return {"error": f"{type(exc).__name__}: {exc}"}


def tool_result(result: types.CallToolResult) -> Json:
    texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
    return {
        "isError": result.isError,
        "text": "".join(texts),
        "content": dump(result)["content"],
        "structuredContent": result.structuredContent,
    }


class Recorder:
    """Callbacks handed to ClientSession, recording what the server sent."""

    def __init__(self) -> None:
        self.logs: list[Json] = []
        self.sampling_requests: list[Json] = []
        self.elicitations: list[Json] = []
        self.roots_requests = 0
        self.updated: list[str] = []
        self.got_update = asyncio.Event()

    async def messages(self, message: Any) -> None:
        """Every message ClientSession hands over (here: the resource updates)."""
        if isinstance(message, types.ServerNotification) and isinstance(
            message.root, types.ResourceUpdatedNotification
        ):
            self.updated.append(str(message.root.params.uri))
            self.got_update.set()

    async def logging(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(dump(params))

    async def sampling(
        self, context: RequestContext[ClientSession, Any], params: types.CreateMessageRequestParams
    ) -> types.CreateMessageResult:
        self.sampling_requests.append(dump(params))
        prompt = "".join(
            m.content.text for m in params.messages if isinstance(m.content, types.TextContent)
        )
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=f"sampled:{prompt}"),
            model="interop-fake-model",
            stopReason="endTurn",
        )

    async def roots(self, context: RequestContext[ClientSession, Any]) -> types.ListRootsResult:
        self.roots_requests += 1
        return types.ListRootsResult(roots=[types.Root(uri=AnyUrl("file:///tmp/x"), name="x")])

    async def elicitation(
        self, context: RequestContext[ClientSession, Any], params: types.ElicitRequestParams
    ) -> types.ElicitResult:
        self.elicitations.append(dump(params))
        return types.ElicitResult(action="accept", content={"name": "Ada"})


async def step(steps: dict[str, Json], name: str, fn: Callable[[], Awaitable[Json]]) -> None:
    try:
        steps[name] = await asyncio.wait_for(fn(), STEP_TIMEOUT)
    except Exception as exc:  # record every failure, keep going
        steps[name] = describe(exc)


async def scenario_full(session: ClientSession, rec: Recorder, steps: dict[str, Json]) -> None:
    await step(steps, "ping", lambda: _ok(session.send_ping()))

    async def tools() -> Json:
        return [t.name for t in (await session.list_tools()).tools]

    await step(steps, "list_tools", tools)
    await step(steps, "echo", lambda: _tool(session, "echo", {"text": "hi"}))
    await step(steps, "fail_tool", lambda: _tool(session, "fail_tool", {}))
    await step(steps, "no_such_tool", lambda: _tool(session, "no_such_tool", {}))

    async def resources() -> Json:
        return [dump(r) for r in (await session.list_resources()).resources]

    async def read() -> Json:
        return dump(await session.read_resource(AnyUrl("demo://readme")))

    async def templates() -> Json:
        return [dump(t) for t in (await session.list_resource_templates()).resourceTemplates]

    async def prompts() -> Json:
        return [dump(p) for p in (await session.list_prompts()).prompts]

    async def prompt() -> Json:
        return dump(await session.get_prompt("greet", {"name": "Ada"}))

    async def complete() -> Json:
        ref = types.PromptReference(type="ref/prompt", name="greet")
        return dump((await session.complete(ref, {"name": "name", "value": "A"})).completion)

    await step(steps, "list_resources", resources)
    await step(steps, "read_resource", read)
    await step(steps, "list_resource_templates", templates)
    await step(steps, "list_prompts", prompts)
    await step(steps, "get_prompt", prompt)
    await step(steps, "complete", complete)

    async def logging() -> Json:
        await session.set_logging_level("debug")
        result = await _tool(session, "log_demo", {"message": "m", "level": "warning"})
        await asyncio.sleep(0.2)  # let notifications that trail the response arrive
        return {"result": result, "logs": rec.logs}

    await step(steps, "logging", logging)

    async def progress() -> Json:
        seen: list[Json] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            seen.append({"progress": value, "total": total, "message": message})

        result = await session.call_tool(
            "slow_count", {"count": 3, "delay": 0.01}, progress_callback=on_progress
        )
        await asyncio.sleep(0.1)
        return {"result": tool_result(result), "progress": seen}

    await step(steps, "progress", progress)

    async def sampling() -> Json:
        result = await _tool(session, "sample_llm", {"prompt": "p"})
        return {"result": result, "requests": rec.sampling_requests}

    async def roots() -> Json:
        result = await _tool(session, "list_client_roots", {})
        return {"result": result, "roots_requests": rec.roots_requests}

    async def elicit() -> Json:
        result = await _tool(session, "ask_user", {"question": "who?"})
        return {"result": result, "requests": rec.elicitations}

    await step(steps, "sampling", sampling)
    await step(steps, "roots", roots)
    await step(steps, "elicitation", elicit)

    async def concurrent() -> Json:
        texts = [f"msg-{i}" for i in range(20)]
        results = await asyncio.gather(
            *(session.call_tool("echo", {"text": t}) for t in texts), return_exceptions=True
        )
        answers = [
            describe(r) if isinstance(r, BaseException) else tool_result(r)["text"] for r in results
        ]
        return {"count": len(texts), "all_match": answers == texts, "answers": answers}

    await step(steps, "concurrent_echo", concurrent)


async def scenario_updates(session: ClientSession, rec: Recorder, steps: dict[str, Json]) -> None:
    """Subscribe, then wait for the server to say the resource changed."""

    async def subscribe() -> Json:
        await session.subscribe_resource(AnyUrl("demo://readme"))
        await rec.got_update.wait()
        return {"updated": rec.updated[:1]}

    await step(steps, "subscribe", subscribe)


async def _ok(awaitable: Awaitable[Any]) -> Json:
    await awaitable
    return {"ok": True}


async def _tool(session: ClientSession, name: str, args: dict[str, Any]) -> Json:
    return tool_result(await session.call_tool(name, args))


async def run(transport: Transport, scenario: str) -> dict[str, Json]:
    rec = Recorder()
    steps: dict[str, Json] = {}
    out: dict[str, Json] = {"scenario": scenario, "initialize": None, "steps": steps}
    async with (
        transport() as streams,
        ClientSession(
            streams[0],
            streams[1],
            sampling_callback=rec.sampling,
            elicitation_callback=rec.elicitation,
            list_roots_callback=rec.roots,
            logging_callback=rec.logging,
            message_handler=rec.messages,
            client_info=types.Implementation(name="mcp-python-sdk-interop", version="1.30.0"),
        ) as session,
    ):
        init = await asyncio.wait_for(session.initialize(), STEP_TIMEOUT)
        out["initialize"] = {
            "protocolVersion": init.protocolVersion,
            "serverInfo": dump(init.serverInfo),
            "capabilities": dump(init.capabilities),
        }
        if len(streams) > 2:  # Streamable HTTP: what the session id looked like
            out["session_id"] = streams[2]()
        if scenario == "echo":
            await step(steps, "echo", lambda: _tool(session, "echo", {"text": "hi"}))
        else:
            await scenario_full(session, rec, steps)
        if scenario == "full+updates":
            await scenario_updates(session, rec, steps)
    return out


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[2] not in SCENARIOS:
        print(f"usage: sdk_client.py URL {'|'.join(SCENARIOS)}", file=sys.stderr)
        return 2
    url, scenario = sys.argv[1], sys.argv[2]
    try:
        out = asyncio.run(asyncio.wait_for(run(transport_for(url), scenario), GLOBAL_TIMEOUT))
        code = 0
    except BaseException as exc:  # report anything (incl. ExceptionGroup) as JSON
        if isinstance(exc, KeyboardInterrupt):
            raise
        out = {"scenario": scenario, "fatal": describe(_unwrap(exc))}
        code = 1
    print(json.dumps(out, default=str))
    return code


def _unwrap(exc: BaseException) -> BaseException:
    while len(getattr(exc, "exceptions", ())) == 1:  # (Base)ExceptionGroup, also on 3.10
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc


if __name__ == "__main__":
    sys.exit(main())
