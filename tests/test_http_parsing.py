"""Request heads, well-formed and not, get the same answers and the same
parsed headers from ``_Channel`` (whose ``headerReceived`` is a copy of
twisted.web's that stores each header directly) as from twisted.web's own
``HTTPChannel.headerReceived``."""

from __future__ import annotations

import re
from typing import Any

import pytest
from twisted.web import http

from mcp_twisted import http as mcp_http
from tests.http_support import Served
from tests.support import make_app

HOST = b"Host: 127.0.0.1:8080\r\n"
JSON = b"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
PING = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'


def post(*lines: bytes, body: bytes = PING, length: bool = True) -> bytes:
    head = b"".join(line + b"\r\n" for line in lines)
    size = b"Content-Length: %d\r\n" % len(body) if length else b""
    return b"POST /mcp HTTP/1.1\r\n" + HOST + JSON + head + size + b"\r\n" + body


HEADS = {
    "plain": post(),
    "mixed-case names": post(b"mCp-SeSsIoN-iD: 0123", b"ACCEPT-language: en"),
    "a repeated header": post(b"X-Thing: a", b"X-Thing: b", b"x-thing: c"),
    "spaces and tabs around a value": post(b"X-Thing: \t a b \t "),
    "an empty value": post(b"X-Thing:"),
    "a folded header": post(b"X-Thing: a", b" b", b"\tc"),
    "no colon": post(b"This is not a header"),
    "a space in the name": post(b"X Thing: a"),
    "an empty name": post(b": a"),
    "a NUL in the name": post(b"X-\x00Thing: a"),
    "a NUL in the value": post(b"X-Thing: a\x00b"),
    "a bare CR in the value": post(b"X-Thing: a\rb"),
    "two Content-Lengths": post(b"Content-Length: %d" % len(PING)),
    "a Content-Length that is not a number": post(b"Content-Length: 1e3", length=False),
    "a negative Content-Length": post(b"Content-Length: -1", length=False),
    "chunked": post(b"Transfer-Encoding: chunked", body=b"%x\r\n%s\r\n0\r\n\r\n" % (len(PING), PING),
                    length=False),
    "chunked and a Content-Length": post(b"Transfer-Encoding: chunked"),
    "an unknown Transfer-Encoding": post(b"Transfer-Encoding: gzip", length=False),
    "an identity Transfer-Encoding": post(b"Transfer-Encoding: identity"),
    "Connection: close": post(b"Connection: close"),
    "too many headers": post(*(b"X-Header-%d: v" % n for n in range(501))),
    "a GET with a Host only": b"GET /mcp HTTP/1.1\r\n" + HOST + b"\r\n",
    "HTTP/1.0": b"GET /mcp HTTP/1.0\r\n" + HOST + b"\r\n",
}


def exchange(raw: bytes) -> tuple[bytes, list[Any]]:
    app, _ = make_app("parsing-app")
    server = Served(app)
    seen: list[Any] = []
    render = mcp_http._Dispatcher.render

    def recording(self: Any, request: Any) -> Any:
        headers = request.requestHeaders.getAllRawHeaders()
        seen.append(sorted((name, list(values)) for name, values in headers))
        return render(self, request)

    mcp_http._Dispatcher.render = recording  # type: ignore[method-assign]
    try:
        wire = server.open()
        wire.send(raw)
    finally:
        mcp_http._Dispatcher.render = render  # type: ignore[method-assign]
    written = re.sub(rb"Date: [^\r]*", b"Date: -", wire.transport.value())
    return written + b"|disconnecting=%d" % wire.transport.disconnecting, seen


@pytest.mark.parametrize("name", list(HEADS))
def test_the_same_as_twisted_web(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ours = exchange(HEADS[name])
    monkeypatch.setattr(mcp_http._Channel, "headerReceived", http.HTTPChannel.headerReceived)
    assert exchange(HEADS[name]) == ours


def test_the_copy_is_in_use_on_the_twisted_it_was_made_from() -> None:
    if mcp_http._header_parsing_source() not in mcp_http._COPIED_HEADER_PARSING:
        pytest.skip("another Twisted release: its own header parsing is used")
    assert mcp_http._Channel.headerReceived is not http.HTTPChannel.headerReceived
