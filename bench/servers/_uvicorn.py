"""Run the official SDK's transports under uvicorn, on uvloop and httptools
when they are installed (as ``uvicorn[standard]`` has them), the way the
SDK's own documentation serves ASGI apps: ``serve`` for its WebSocket
transport in Starlette, ``serve_app`` for any ASGI app (Streamable HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import warnings
from argparse import Namespace
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from _common import announce, raise_open_file_limit
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

# mcp 1.30 marks its WebSocket transport deprecated (a warning on every connection).
warnings.filterwarnings("ignore", category=DeprecationWarning)


def serve(endpoint: Callable[[WebSocket], Awaitable[None]], args: Namespace) -> None:
    """Serve a WebSocket endpoint at ``/mcp``."""
    serve_app(Starlette(routes=[WebSocketRoute("/mcp", endpoint)]), args, lifespan=False)


def serve_app(app: Any, args: Namespace, *, lifespan: bool) -> None:
    """Serve an ASGI app on 127.0.0.1 with uvicorn, no access log."""
    raise_open_file_limit()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    settings: dict[str, Any] = {"log_level": "warning", "lifespan": "on" if lifespan else "off",
                                "backlog": 2048, "access_log": False}
    if args.tls:
        settings["ssl_certfile"], settings["ssl_keyfile"] = args.tls
    if args.ping_interval is not None:  # uvicorn's default is 20 s
        settings["ws_ping_interval"] = args.ping_interval or None
        settings["ws_ping_timeout"] = args.ping_timeout or args.ping_interval or None
    server = uvicorn.Server(uvicorn.Config(app, **settings))

    async def run() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        if server.started:
            config = server.config
            print(f"uvicorn on {type(asyncio.get_running_loop()).__module__}, "
                  f"HTTP parser {getattr(config, 'http_protocol_class', type).__name__}", file=sys.stderr)
            announce(sock.getsockname()[1])
        await task

    try:
        import uvloop
    except ImportError:
        runner: Callable[[Any], Any] = asyncio.run
    else:
        runner = uvloop.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(run())
