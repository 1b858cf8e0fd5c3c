"""What every reference server shares: its command line, the open-file limit
and the ready line the suite waits for.

Each server prints ``READY <port>`` on stdout once it accepts connections
(``--port 0`` picks a free port) and serves WebSocket at ``/mcp`` (with
``--http``, where a server has it: Streamable HTTP at ``/mcp``).
"""

from __future__ import annotations

import argparse
import resource
from typing import Any

# The payload of the ``initialize`` answer where a server writes it by hand.
SERVER_INFO = {"name": "bench-echo", "version": "1.0.0"}


def parse_args(
    description: str, *, default_ping: float | None, tree: bool = False, http: bool = False,
    sdk: bool = False, tuned: bool = False,
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve wss with this PEM pair")
    parser.add_argument(
        "--ping-interval", type=float, default=default_ping,
        help="seconds between WebSocket pings (0: off; default: the server's own default)",
    )
    parser.add_argument("--ping-timeout", type=float, default=None, help="seconds to wait for a pong")
    if tree:
        parser.add_argument("--tree", help="import the framework from this directory (default: the checkout)")
    if http:
        parser.add_argument("--http", action="store_true", help="serve Streamable HTTP at /mcp")
    if tuned:
        parser.add_argument("--tuned", action="store_true",
                            help="orjson and mcp-twisted's FastPathMixin (the tuned floor)")
    if sdk:
        parser.add_argument("--fast", action="store_true",
                            help="the SDK's fastest configuration: no jsonschema check on every call")
        parser.add_argument("--json-response", action="store_true",
                            help="--http: answer with JSON bodies, not SSE streams (the SDK's json_response)")
    return parser.parse_args()


def raise_open_file_limit() -> int:
    """Lift the soft open-file limit to the hard one (10,000 idle connections need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def announce(port: int) -> None:
    print(f"READY {port}", flush=True)


def serve(factory: Any, args: argparse.Namespace) -> None:
    """Listen on 127.0.0.1 (TLS if ``--tls CERT KEY``), announce the port, run the reactor."""
    from twisted.internet import endpoints, reactor

    if args.tls:
        cert, key = args.tls
        description = f"ssl:{args.port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    else:
        description = f"tcp:{args.port}:interface=127.0.0.1"
    listening = endpoints.serverFromString(reactor, description).listen(factory)
    listening.addCallback(lambda port: announce(port.getHost().port))
    reactor.run()
