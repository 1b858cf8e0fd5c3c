"""Reference MCP server over WebSocket, built only with the official SDK (mcp==1.30.0).

Used to test the mcp-twisted *client* against a server we did not write.

Usage: python sdk_server.py PORT   (0 = pick a free port)
Prints ``PORT <n>`` on stdout once it is accepting connections; WebSocket at ``/mcp``.

Besides the required ``echo``/``sample_llm``/``demo://readme``/``greet``, it offers the
rest of the interop contract (``fail_tool``, ``log_demo``, ``slow_count``,
``list_client_roots``, ``ask_user``, a resource template, prompt completion) so that
``sdk_client.py URL full`` can be checked against it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import warnings

import uvicorn
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.websocket import websocket_server
from mcp.types import (
    Completion,
    CompletionArgument,
    CompletionContext,
    LoggingLevel,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    TextContent,
)
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

# mcp 1.30 marks its WebSocket transport deprecated (warns on each call); it still works.
warnings.filterwarnings("ignore", category=DeprecationWarning)

mcp = FastMCP("sdk-reference-server", log_level="WARNING")


@mcp.tool()
def echo(text: str) -> str:
    """Return the given text unchanged."""
    return text


@mcp.tool()
async def sample_llm(prompt: str, ctx: Context) -> str:
    """Ask the client's LLM (sampling/createMessage) and return its text."""
    result = await ctx.session.create_message(
        messages=[SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
        max_tokens=100,
    )
    content = result.content
    return content.text if isinstance(content, TextContent) else str(content)


@mcp.tool()
def fail_tool() -> str:
    """Always fails (tool execution error, isError=true)."""
    raise RuntimeError("fail_tool failed on purpose")


@mcp.tool()
async def log_demo(message: str, level: str, ctx: Context) -> str:
    """Emit one notifications/message log entry."""
    await ctx.log(level, message)  # type: ignore[arg-type]
    return "logged"


@mcp.tool()
async def slow_count(count: int, delay: float, ctx: Context) -> int:
    """Report progress 1..count, sleeping `delay` seconds between steps."""
    for i in range(1, count + 1):
        await asyncio.sleep(delay)
        await ctx.report_progress(i, count)
    return count


@mcp.tool()
async def list_client_roots(ctx: Context) -> list[str]:
    """Return the URIs of the client's roots (roots/list)."""
    result = await ctx.session.list_roots()
    return [str(root.uri) for root in result.roots]


class UserName(BaseModel):
    name: str


@mcp.tool()
async def ask_user(question: str, ctx: Context) -> str:
    """Elicit a name from the user."""
    result = await ctx.elicit(question, UserName)
    return f"{result.action}:{result.data.name}" if result.action == "accept" else result.action


@mcp.resource("demo://readme", mime_type="text/plain")
def readme() -> str:
    """Demo readme."""
    return "This is the demo readme."


@mcp.resource("demo://items/{item_id}")
def item(item_id: str) -> str:
    """One demo item."""
    return f"item {item_id}"


@mcp.prompt()
def greet(name: str) -> str:
    """Greet someone by name."""
    return f"Hello, {name}!"


@mcp.completion()
async def complete(
    ref: PromptReference | ResourceTemplateReference,
    argument: CompletionArgument,
    context: CompletionContext | None,
) -> Completion | None:
    names = ["Ada", "Alan", "Grace"]
    if isinstance(ref, PromptReference) and ref.name == "greet" and argument.name == "name":
        return Completion(values=[n for n in names if n.startswith(argument.value)])
    return None


@mcp._mcp_server.set_logging_level()
async def set_level(level: LoggingLevel) -> None:
    pass  # accepted; FastMCP sends every log regardless


async def mcp_endpoint(websocket: WebSocket) -> None:
    server = mcp._mcp_server
    async with websocket_server(websocket.scope, websocket.receive, websocket.send) as streams:
        await server.run(*streams, server.create_initialization_options())


app = Starlette(routes=[WebSocketRoute("/mcp", mcp_endpoint)])


async def main(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sys.exit(f"sdk_server.py: cannot bind 127.0.0.1:{port}: {exc}")
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        print(f"PORT {sock.getsockname()[1]}", flush=True)
    await task


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: sdk_server.py PORT")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(int(sys.argv[1])))
