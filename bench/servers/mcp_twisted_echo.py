"""mcp-twisted serving one ``echo`` tool, with the factory's default settings
(auto-ping on, Origin/Host checks, limits) as a production server has them.

The framework is imported from this checkout, not from an installed copy, so
the suite measures the working tree; ``--tree DIR`` imports it from another
copy instead (``bench/run.py --baseline REV`` uses that to compare revisions).

Usage: python bench/servers/mcp_twisted_echo.py --port 8080 [--tls CERT KEY] [--ping-interval S]
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
    from mcp_twisted import MCPServer
    from mcp_twisted.websocket import MCPServerFactory

    server = MCPServer("bench-echo", "1.0.0")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    # The suite measures capacity (10,000 idle connections), so lift the
    # production default of 1,000 open connections (--max-connections).
    settings.setdefault("max_connections", 0)
    return MCPServerFactory(server, **settings)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_ping=None, tree=True)
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
    serve(factory, args)


if __name__ == "__main__":
    main()
