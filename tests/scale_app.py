"""The app the scale-out tests serve from ``twistd`` processes: it says which
process answered and lets a client change what other instances announce."""

from __future__ import annotations

import os

from mcp_twisted import Context, MCPServer

server = MCPServer("scale-test", "1.0.0")


@server.tool()
def pid() -> str:
    """The id of the process that answered."""
    return str(os.getpid())


@server.tool()
def peer(ctx: Context) -> str:
    """The client's address as this server sees it (behind a proxy: the real one)."""
    return str(ctx.session.attributes["peer"])


@server.tool()
def touch(uri: str) -> str:
    """Announce that a resource changed, here and on every instance on the bus."""
    server.notify_resource_updated(uri)
    return "ok"


@server.resource("scale://counter")
def counter() -> str:
    return "0"
