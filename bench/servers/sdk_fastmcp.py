"""The official MCP Python SDK (1.30): a FastMCP ``echo`` tool over the SDK's
WebSocket transport (``mcp.server.websocket.websocket_server``) in Starlette
under uvicorn.

Usage: python bench/servers/sdk_fastmcp.py --port 8080 [--tls CERT KEY] [--ping-interval S]
"""

from __future__ import annotations

from _common import parse_args
from _uvicorn import serve
from mcp.server.fastmcp import FastMCP
from mcp.server.websocket import websocket_server
from starlette.websockets import WebSocket

mcp = FastMCP("bench-echo", log_level="WARNING")


@mcp.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


async def endpoint(websocket: WebSocket) -> None:
    server = mcp._mcp_server
    async with websocket_server(websocket.scope, websocket.receive, websocket.send) as streams:
        await server.run(*streams, server.create_initialization_options())


if __name__ == "__main__":
    serve(endpoint, parse_args(__doc__.splitlines()[0], default_ping=None))
