"""The floor: Autobahn on Twisted answering JSON-RPC by hand, no framework.

It selects subprotocol ``mcp`` when offered, answers ``initialize`` with a
minimal result, ``ping`` with ``{}`` and ``tools/call`` by echoing
``arguments.text``. Notifications are ignored and nothing is validated: this
is what the wire costs on this stack, the least any framework on it can spend.

Two flavours: by default everything is ``json.loads``/``json.dumps`` and
Autobahn runs as shipped (the stdlib floor). ``--tuned`` makes the changes
mcp-twisted itself makes to the stack: orjson, and Autobahn's per-frame and
per-connection debug formatting skipped by the same ``FastPathMixin`` and
``FastFactoryMixin`` (imported from the checkout, so that whatever those
save, the tuned floor saves too). The tuned floor is the best this stack does
with no MCP layer at all.

Usage: python bench/servers/bare_autobahn.py --port 8080 [--tuned] [--tls CERT KEY] [--ping-interval S]
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import SERVER_INFO, parse_args, raise_open_file_limit, serve
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest

CHECKOUT = Path(__file__).resolve().parents[2]


class FloorProtocol(WebSocketServerProtocol):
    loads: Callable[[bytes], Any] = staticmethod(json.loads)
    dumps: Callable[[Any], bytes] = staticmethod(lambda value: json.dumps(value).encode())

    def onConnect(self, request: ConnectionRequest) -> str | None:
        return "mcp" if "mcp" in request.protocols else None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = self.loads(payload)
        if "id" not in message:
            return  # a notification
        method = message.get("method")
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        if method == "tools/call":
            text = message["params"]["arguments"]["text"]
            reply["result"] = {"content": [{"type": "text", "text": text}], "isError": False}
        elif method == "initialize":
            reply["result"] = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": SERVER_INFO,
            }
        elif method == "ping":
            reply["result"] = {}
        else:
            reply["error"] = {"code": -32601, "message": "Method not found"}
        self.sendMessage(self.dumps(reply))


def make_factory(tuned: bool) -> WebSocketServerFactory:
    """The stdlib floor's factory, or the tuned floor's (orjson and
    mcp-twisted's ``FastPathMixin`` and ``FastFactoryMixin``)."""
    if not tuned:
        factory = WebSocketServerFactory()
        factory.protocol = FloorProtocol
        return factory
    sys.path.insert(0, str(CHECKOUT))
    import orjson

    from mcp_twisted._autobahn import FastFactoryMixin, FastPathMixin

    class TunedFloorProtocol(FastPathMixin, FloorProtocol):  # type: ignore[misc]
        loads = staticmethod(orjson.loads)
        dumps = staticmethod(orjson.dumps)

    class TunedFloorFactory(FastFactoryMixin, WebSocketServerFactory):  # type: ignore[misc]
        protocol = TunedFloorProtocol

    return TunedFloorFactory()


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_ping=0.0, tuned=True)
    raise_open_file_limit()
    factory = make_factory(args.tuned)
    options: dict[str, Any] = {"webStatus": False}
    if args.ping_interval:
        options["autoPingInterval"] = args.ping_interval
        options["autoPingTimeout"] = args.ping_timeout or args.ping_interval
    factory.setProtocolOptions(**options)
    serve(factory, args)


if __name__ == "__main__":
    main()
