"""The official MCP Python SDK (1.30): the low-level ``Server`` with
``@server.list_tools()`` and ``@server.call_tool()`` over the SDK's WebSocket
transport in Starlette under uvicorn, or with ``--http`` over its Streamable
HTTP transport (``StreamableHTTPSessionManager``, stateful sessions, an
in-memory event store; ``--json-response`` for JSON answers instead of SSE
streams). The SDK validates the arguments against the listed input schema,
as it does by default, with ``jsonschema.validate`` on every call (which
checks the schema itself each time too): about half of its CPU per call.
``--fast`` turns that off (``validate_input=False``, the SDK's fastest
configuration) and the tool checks its one argument by hand.

``echo_progress`` reports progress once, then echoes.

Usage: python bench/servers/sdk_lowlevel.py --port 8080 [--fast] [--tls CERT KEY] [--ping-interval S]
       python bench/servers/sdk_lowlevel.py --port 8080 --http [--json-response]
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import mcp.types as types
from _common import parse_args
from _sdk_http import LOOPBACK_ONLY, RETRY_MS, MemoryEventStore
from _uvicorn import serve, serve_app
from mcp.server.fastmcp.server import StreamableHTTPASGIApp
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.websocket import websocket_server
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.websockets import WebSocket

server: Server[Any, Any] = Server("bench-echo")

SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
TOOLS = [
    types.Tool(name="echo", description="Return the text unchanged.", inputSchema=SCHEMA),
    types.Tool(name="echo_progress", description="Report progress once, then return the text unchanged.",
               inputSchema=SCHEMA),
]


@server.list_tools()
async def list_tools() -> list[types.Tool]:
    return TOOLS


async def call_tool(name: str, arguments: dict[str, Any]) -> list[types.TextContent]:
    if not isinstance(arguments.get("text"), str):  # what the schema says, when the SDK does not check it
        raise ValueError("text must be a string")
    if name == "echo_progress":
        context = server.request_context
        token = context.meta.progressToken if context.meta else None
        if token is not None:
            await context.session.send_progress_notification(
                token, 1, 1, related_request_id=context.request_id)
    elif name != "echo":
        raise ValueError(f"Unknown tool: {name}")
    return [types.TextContent(type="text", text=arguments["text"])]


async def endpoint(websocket: WebSocket) -> None:
    async with websocket_server(websocket.scope, websocket.receive, websocket.send) as streams:
        await server.run(*streams, server.create_initialization_options())


def http_app(args: Namespace) -> Starlette:
    """Streamable HTTP at ``/mcp``, as FastMCP mounts it."""
    manager = StreamableHTTPSessionManager(server, event_store=MemoryEventStore(), retry_interval=RETRY_MS,
                                           json_response=args.json_response, security_settings=LOOPBACK_ONLY)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        async with manager.run():
            yield

    return Starlette(routes=[Route("/mcp", StreamableHTTPASGIApp(manager))], lifespan=lifespan)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_ping=None, http=True, sdk=True)
    server.call_tool(validate_input=not args.fast)(call_tool)
    if args.http:
        serve_app(http_app(args), args, lifespan=True)
    else:
        serve(endpoint, args)


if __name__ == "__main__":
    main()
