"""The app the OAuth tests serve from ``twistd``: one tool anyone with a
valid token may call, and one that needs the ``files:write`` scope."""

from __future__ import annotations

from mcp_twisted import Context, MCPServer

server = MCPServer("oauth-test", "1.0.0")


@server.tool()
def whoami(ctx: Context) -> str:
    """The token's subject."""
    return str(ctx.identity)


@server.tool(scopes=["files:write"])
def write(text: str) -> str:
    """Needs a token with files:write (step-up from files:read)."""
    return f"wrote {text}"


@server.resource("files://readme", scopes=["files:read"])
def readme() -> str:
    return "read me"
