"""Run a Starlette app that serves the official SDK's WebSocket transport
under uvicorn, on uvloop when it is installed (as ``uvicorn[standard]`` has
it), the way the SDK's own documentation serves ASGI apps."""

from __future__ import annotations

import asyncio
import contextlib
import socket
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
    raise_open_file_limit()
    app = Starlette(routes=[WebSocketRoute("/mcp", endpoint)])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    settings: dict[str, Any] = {"log_level": "warning", "lifespan": "off", "backlog": 2048}
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
