"""The official MCP Python SDK (1.30): the low-level ``Server`` with
``@server.list_tools()`` and ``@server.call_tool()`` over the SDK's WebSocket
transport in Starlette under uvicorn. The SDK validates the arguments against
the listed input schema, as it does by default.

Usage: python bench/servers/sdk_lowlevel.py --port 8080 [--tls CERT KEY] [--ping-interval S]
"""

from __future__ import annotations

from typing import Any

import mcp.types as types
from _common import parse_args
from _uvicorn import serve
from mcp.server.lowlevel import Server
from mcp.server.websocket import websocket_server
from starlette.websockets import WebSocket

server: Server[Any, Any] = Server("bench-echo")

ECHO = types.Tool(
    name="echo",
    description="Return the text unchanged.",
    inputSchema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
)


@server.list_tools()
async def list_tools() -> list[types.Tool]:
    return [ECHO]


@server.call_tool()
async def call_tool(name: str, arguments: dict[str, Any]) -> list[types.TextContent]:
    if name != "echo":
        raise ValueError(f"Unknown tool: {name}")
    return [types.TextContent(type="text", text=arguments["text"])]


async def endpoint(websocket: WebSocket) -> None:
    async with websocket_server(websocket.scope, websocket.receive, websocket.send) as streams:
        await server.run(*streams, server.create_initialization_options())


if __name__ == "__main__":
    serve(endpoint, parse_args(__doc__.splitlines()[0], default_ping=None))
