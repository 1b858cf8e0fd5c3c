"""The official MCP Python SDK (1.30): a FastMCP ``echo`` tool over the SDK's
WebSocket transport (``mcp.server.websocket.websocket_server``) in Starlette
under uvicorn, or with ``--http`` over its Streamable HTTP transport
(``FastMCP.streamable_http_app()``, stateful sessions, an in-memory event
store; ``--json-response`` for JSON answers instead of SSE streams).

``echo_progress`` reports progress once, then echoes.

By default a ``-> str`` tool gets an output schema, and the SDK checks every
result against it with ``jsonschema.validate`` (which checks the schema
itself each time too): about half of the server's CPU per call. ``--fast``
registers the tools with ``structured_output=False``, as mcp-twisted's
``-> str`` tools are (no output schema, no ``structuredContent``); the
arguments are still validated by FastMCP's pydantic model.

Usage: python bench/servers/sdk_fastmcp.py --port 8080 [--fast] [--tls CERT KEY] [--ping-interval S]
       python bench/servers/sdk_fastmcp.py --port 8080 --http [--json-response]
"""

from __future__ import annotations

from argparse import Namespace

from _common import parse_args
from _sdk_http import LOOPBACK_ONLY, RETRY_MS, MemoryEventStore
from _uvicorn import serve, serve_app
from mcp.server.fastmcp import Context, FastMCP
from mcp.server.websocket import websocket_server
from starlette.websockets import WebSocket


def make_server(args: Namespace) -> FastMCP:
    if not args.http:
        mcp = FastMCP("bench-echo", log_level="WARNING")
    else:
        mcp = FastMCP("bench-echo", log_level="WARNING", json_response=args.json_response,
                      event_store=MemoryEventStore(), retry_interval=RETRY_MS,
                      transport_security=LOOPBACK_ONLY)

    structured = False if args.fast else None  # None: the SDK's default

    @mcp.tool(structured_output=structured)
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @mcp.tool(structured_output=structured)
    async def echo_progress(text: str, ctx: Context) -> str:  # type: ignore[type-arg]
        """Report progress once, then return the text unchanged."""
        await ctx.report_progress(1, 1)
        return text

    return mcp


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_ping=None, http=True, sdk=True)
    mcp = make_server(args)
    if args.http:
        serve_app(mcp.streamable_http_app(), args, lifespan=True)
        return

    async def endpoint(websocket: WebSocket) -> None:
        server = mcp._mcp_server
        async with websocket_server(websocket.scope, websocket.receive, websocket.send) as streams:
            await server.run(*streams, server.create_initialization_options())

    serve(endpoint, args)


if __name__ == "__main__":
    main()
