"""A small MCP server built only with the official Python SDK, for testing
mcp-twisted's client against a server nobody here wrote.

Runs on ``mcp`` 1.30 (``FastMCP``, handshake era only) and on ``mcp`` 2.x
(``MCPServer``, both eras), whichever the interpreter has.

Usage: python sdk_any_server.py stdio | http
``http`` serves Streamable HTTP at ``/mcp`` on a free port of 127.0.0.1 and
prints ``PORT <n>`` once it accepts connections.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import uvicorn

try:
    from mcp.server.mcpserver import MCPServer as Server  # mcp 2.x
except ImportError:
    from mcp.server.fastmcp import FastMCP as Server  # mcp 1.x

app = Server("sdk-any-server")


@app.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@app.tool()
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@app.resource("sdk://readme", mime_type="text/plain")
def readme() -> str:
    return "Served by the official SDK."


@app.prompt()
def greet(name: str) -> str:
    """Greet someone."""
    return f"Hello, {name}!"


async def serve_http() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(uvicorn.Config(app.streamable_http_app(), log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # bounded by the server starting or failing
        if serving.done():
            serving.result()
        await asyncio.sleep(0.01)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    await serving


if __name__ == "__main__":
    if sys.argv[1:] == ["stdio"]:
        app.run("stdio")
    elif sys.argv[1:] == ["http"]:
        asyncio.run(serve_http())
    else:
        sys.exit("usage: sdk_any_server.py stdio | http")
