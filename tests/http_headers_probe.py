"""Prints the answers of an ``MCPSite`` to a fixed set of requests, with the
Date header and the session id blanked: run once as it is and once with
``--fallback``, where twisted.web's ``Headers`` keeps its names in a dict
subclass, so that ``mcp_twisted.http`` must use ``Headers``' API instead of
its dict (``_RAW`` false). ``tests/test_http_headers.py`` compares the two.
"""

from __future__ import annotations

import re
import sys
from typing import Any

FALLBACK = "--fallback" in sys.argv

if FALLBACK:
    from twisted.web import http_headers

    class _Dict(dict):  # type: ignore[type-arg]
        """A dict that is not exactly a dict: the fast path must not use it."""

    original_init = http_headers.Headers.__init__

    def _init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._rawHeaders = _Dict(self._rawHeaders)

    http_headers.Headers.__init__ = _init  # type: ignore[method-assign]

from autobahn.twisted.resource import WebSocketResource  # noqa: E402 - after the patch
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402

from mcp_twisted import Context, MCPServer, http  # noqa: E402
from mcp_twisted.websocket import MCPServerFactory  # noqa: E402

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
HOST = IPv4Address("TCP", "127.0.0.1", 8080)
JSON_HEADERS = (b"Host: 127.0.0.1:8080\r\nContent-Type: application/json\r\n"
                b"Accept: application/json, text/event-stream\r\n")


def main() -> None:
    assert http._RAW is not FALLBACK, "the probe did not choose the path it was asked for"
    server = MCPServer("probe", "1.0.0")

    @server.tool()
    def echo(text: str) -> str:
        return text

    @server.tool()
    def echo_progress(text: str, ctx: Context) -> str:
        ctx.report_progress(1, 1)
        return text

    factory = MCPServerFactory(server)
    site = http.MCPSite(http.MCPHTTPResource(factory.host), WebSocketResource(factory), max_body_size=4096)
    channel = site.buildProtocol(PEER)
    transport = StringTransport(hostAddress=HOST, peerAddress=PEER)
    channel.makeConnection(transport)
    session = b""

    def send(method: bytes, headers: bytes, body: bytes = b"") -> None:
        nonlocal session
        length = b"Content-Length: %d\r\n" % len(body) if body or method == b"POST" else b""
        channel.dataReceived(b"%s /mcp HTTP/1.1\r\n%s%s%s\r\n%s" % (method, headers, session, length, body))
        answer = transport.value()
        transport.clear()
        found = re.search(rb"(?i)\r\nmcp-session-id: *(\S+)", answer)
        if found and not session:
            session = b"Mcp-Session-Id: " + found.group(1) + b"\r\nMCP-Protocol-Version: 2025-11-25\r\n"
        answer = re.sub(rb"(?i)(\r\ndate:)[^\r]*", rb"\1 -", answer)
        sys.stdout.write(answer.replace(found.group(1), b"<session>").decode() if found else answer.decode())
        sys.stdout.write("\n----\n")

    send(b"POST", JSON_HEADERS, b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":'
                                b'{"protocolVersion":"2025-11-25","capabilities":{},'
                                b'"clientInfo":{"name":"probe","version":"1"}}}')
    send(b"POST", JSON_HEADERS, b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    send(b"POST", JSON_HEADERS, b'{"jsonrpc":"2.0","id":2,"method":"tools/call",'
                                b'"params":{"name":"echo","arguments":{"text":"hi"}}}')
    send(b"POST", JSON_HEADERS, b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":'
                                b'"echo_progress","arguments":{"text":"hi"},"_meta":{"progressToken":7}}}')
    send(b"POST", b"Host: 127.0.0.1:8080\r\nContent-Type: text/plain\r\nAccept: application/json\r\n", b"{}")
    send(b"POST", JSON_HEADERS.replace(b"text/event-stream", b"text/html"), b"{}")
    send(b"POST", JSON_HEADERS, b"{not json")
    send(b"OPTIONS", b"Host: 127.0.0.1:8080\r\nOrigin: http://127.0.0.1:8080\r\n"
                     b"Access-Control-Request-Headers: mcp-session-id\r\n")
    send(b"PUT", b"Host: 127.0.0.1:8080\r\n")
    send(b"POST", b"Host: evil.example\r\nContent-Type: application/json\r\n"
                  b"Accept: application/json, text/event-stream\r\n", b"{}")
    send(b"DELETE", b"Host: 127.0.0.1:8080\r\n")
    send(b"POST", JSON_HEADERS, b'{"jsonrpc":"2.0","id":4,"method":"ping"}')


if __name__ == "__main__":
    main()
