"""The floor: Autobahn on Twisted answering JSON-RPC by hand, no framework.

It selects subprotocol ``mcp`` when offered, answers ``initialize`` with a
minimal result, ``ping`` with ``{}`` and ``tools/call`` by echoing
``arguments.text``; everything is ``json.loads``/``json.dumps``. Notifications
are ignored and nothing is validated: this is what the wire costs on this
stack, the least any framework on it can spend.

Usage: python bench/servers/bare_autobahn.py --port 8080 [--tls CERT KEY] [--ping-interval S]
"""

from __future__ import annotations

import json
from typing import Any

from _common import SERVER_INFO, parse_args, raise_open_file_limit, serve
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionRequest


class FloorProtocol(WebSocketServerProtocol):
    def onConnect(self, request: ConnectionRequest) -> str | None:
        return "mcp" if "mcp" in request.protocols else None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
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
        self.sendMessage(json.dumps(reply).encode())


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_ping=0.0)
    raise_open_file_limit()
    factory = WebSocketServerFactory()
    factory.protocol = FloorProtocol
    options: dict[str, Any] = {"webStatus": False}
    if args.ping_interval:
        options["autoPingInterval"] = args.ping_interval
        options["autoPingTimeout"] = args.ping_timeout or args.ping_interval
    factory.setProtocolOptions(**options)
    serve(factory, args)


if __name__ == "__main__":
    main()
