"""The HTTP floor: a twisted.web ``Resource`` answering JSON-RPC POSTs by hand, no framework.

It parses the body with orjson and answers ``tools/call`` of ``echo`` with a
JSON body echoing ``arguments.text``, and ``tools/call`` of
``echo_progress`` with an SSE stream of the events mcp-twisted writes for it
(a priming event with ``retry:``, the ``notifications/progress``, the
answer), one ``request.write`` (one chunk) each. ``initialize`` gets a
minimal result, notifications a 202. No sessions, no header checks, no
validation, no access log, and no form parsing (``Site(...,
parsePOSTFormSubmission=False)``: by default twisted.web parses every POST's
Content-Type with the ``email`` package, about 50 µs, in case the body is a
form): what HTTP costs on this stack, the least any server on it can spend.

Usage: python bench/servers/bare_twisted_web.py --port 8080
"""

from __future__ import annotations

from typing import Any

import orjson
from _common import SERVER_INFO, parse_args, raise_open_file_limit, serve
from twisted.web import server
from twisted.web.resource import Resource


class FloorResource(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.events = 0

    def render_POST(self, request: server.Request) -> bytes | int:
        message = orjson.loads(request.content.read())
        if "id" not in message:
            request.setResponseCode(202)
            return b""  # a notification
        method = message.get("method")
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": message["id"]}
        if method == "tools/call":
            params = message["params"]
            reply["result"] = {"content": [{"type": "text", "text": params["arguments"]["text"]}],
                               "isError": False}
            if params["name"] == "echo_progress":
                token = params["_meta"]["progressToken"]
                progress = {"jsonrpc": "2.0", "method": "notifications/progress",
                            "params": {"progressToken": token, "progress": 1, "total": 1}}
                return self.stream(request, [orjson.dumps(progress), orjson.dumps(reply)])
        elif method == "initialize":
            reply["result"] = {"protocolVersion": message["params"]["protocolVersion"],
                               "capabilities": {"tools": {}}, "serverInfo": SERVER_INFO}
        else:
            reply["error"] = {"code": -32601, "message": "Method not found"}
        request.setHeader(b"content-type", b"application/json")
        return orjson.dumps(reply)

    def stream(self, request: server.Request, messages: list[bytes]) -> int:
        """Answer with SSE: a priming event, then one event per message."""
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        self.events += 1
        request.write(b"id: %d\nretry: 1000\ndata: \n\n" % self.events)
        for data in messages:
            self.events += 1
            request.write(b"id: %d\ndata: %s\n\n" % (self.events, data))
        request.finish()
        return server.NOT_DONE_YET


class FloorSite(server.Site):
    noisy = False

    def log(self, request: server.Request) -> None:
        """No access log line per request."""


def make_site() -> FloorSite:
    return FloorSite(FloorResource(), parsePOSTFormSubmission=False)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_ping=None, http=True)
    raise_open_file_limit()
    serve(make_site(), args)


if __name__ == "__main__":
    main()
