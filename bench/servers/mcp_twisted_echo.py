"""mcp-twisted serving an ``echo`` tool, with the factory's default settings
(auto-ping on, Origin/Host checks, limits) as a production server has them.

With ``--http`` it serves Streamable HTTP and WebSocket on the same path, as
``twistd mcpws`` does (``MCPSite`` with ``MCPHTTPResource`` at its defaults);
without, the WebSocket factory alone. ``echo_progress`` reports progress
once, then echoes: over HTTP its answer becomes an SSE stream.

The framework is imported from this checkout, not from an installed copy, so
the suite measures the working tree; ``--tree DIR`` imports it from another
copy instead (``bench/run.py --baseline REV`` uses that to compare revisions).

Usage: python bench/servers/mcp_twisted_echo.py --port 8080 [--http] [--tls CERT KEY] [--ping-interval S]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from _common import parse_args, raise_open_file_limit, serve
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

CHECKOUT = Path(__file__).resolve().parents[2]


def make_factory(settings: dict[str, Any]) -> Any:
    # Imported here, once --tree chose the copy; global, because the tools'
    # annotations are strings resolved in this module's namespace.
    global Context
    from mcp_twisted import Context, MCPServer
    from mcp_twisted.websocket import MCPServerFactory

    server = MCPServer("bench-echo", "1.0.0")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def echo_progress(text: str, ctx: Context) -> str:
        """Report progress once, then return the text unchanged."""
        ctx.report_progress(1, 1)
        return text

    # The suite measures capacity (up to what one process may open), so
    # lift the production cap of sessions (--max-connections).
    settings.setdefault("max_connections", 0)
    return MCPServerFactory(server, **settings)


def http_site(factory: Any) -> Any:
    """HTTP and WebSocket on one listener, as ``MCPService(..., http=...)`` builds it."""
    from autobahn.twisted.resource import WebSocketResource

    from mcp_twisted.http import MCPHTTPResource, MCPSite

    return MCPSite(MCPHTTPResource(factory.host), WebSocketResource(factory),
                   max_body_size=factory.host.limits.max_message_size)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_ping=None, tree=True, http=True)
    sys.path.insert(0, str(Path(args.tree).resolve() if args.tree else CHECKOUT))
    raise_open_file_limit()
    # Warnings and errors to stderr. Without an observer Twisted would keep
    # every event (one per connection opened) in memory until one is added.
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)
    settings: dict[str, Any] = {}
    if args.ping_interval is not None:
        settings["ping_interval"] = args.ping_interval
    if args.ping_timeout is not None:
        settings["ping_timeout"] = args.ping_timeout
    factory = make_factory(settings)
    serve(http_site(factory) if args.http else factory, args)


if __name__ == "__main__":
    main()
