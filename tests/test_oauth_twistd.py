"""``twistd mcpws --oauth-*`` against a real OpenID provider (oidc-provider):
the metadata, the challenges, scopes declared on tools (403
``insufficient_scope`` and a step-up within the same session), and the same
tokens over the WebSocket upgrade."""

from __future__ import annotations

import json
import socket
from typing import Any

import jwt
import pytest
import pytest_twisted

from tests.http_support import agent_request, call, init_message, notification
from tests.oauth.provider import OTHER_RESOURCE, RESOURCE
from tests.support import connect
from tests.test_oauth import forged
from tests.test_tap import twistd  # noqa: F401  # the fixture

pytest_plugins = ("tests.oauth.servers",)  # the provider
METADATA = "/.well-known/oauth-protected-resource/mcp"


@pytest.fixture
def served(twistd, provider):  # noqa: F811  # the fixture imported above
    server = twistd("--app", "tests.oauth_app:server", "--endpoint", "tcp:0:interface=127.0.0.1",
                    "--oauth-issuer", provider.issuer, "--oauth-resource", RESOURCE,
                    "--oauth-scope", "files:read", "--oauth-scope", "files:write")
    return server.listening_port()


async def send(port: int, method: bytes, path: str, body: Any = None, **headers: str) -> tuple[Any, bytes]:
    return await agent_request(f"http://127.0.0.1:{port}{path}", method, body, **headers)


def header(response: Any, name: str) -> str:
    (value,) = response.headers.getRawHeaders(name)
    return value  # type: ignore[no-any-return]


@pytest_twisted.ensureDeferred
async def test_scopes_on_tools_are_stepped_up_within_one_session(provider, served):
    port = served
    response, body = await send(port, b"GET", METADATA)
    assert response.code == 200
    assert json.loads(body)["scopes_supported"] == ["files:read", "files:write"]
    response, _ = await send(port, b"POST", "/mcp", init_message())
    assert response.code == 401
    assert f'resource_metadata="http://127.0.0.1:8000{METADATA}"' in header(response, "WWW-Authenticate")

    reader = provider.token(RESOURCE, scope="files:read")
    response, body = await send(port, b"POST", "/mcp", init_message(), Authorization=f"Bearer {reader}")
    assert response.code == 200, body
    session = header(response, "Mcp-Session-Id")
    both = {"Authorization": f"Bearer {reader}", "Mcp_Session_Id": session}
    await send(port, b"POST", "/mcp", notification("notifications/initialized"), **both)
    response, body = await send(port, b"POST", "/mcp", call(1, "whoami"), **both)
    assert json.loads(body)["result"]["content"][0]["text"] == "mcp-client"
    response, body = await send(port, b"POST", "/mcp",
                                {"jsonrpc": "2.0", "id": 2, "method": "resources/read",
                                 "params": {"uri": "files://readme"}}, **both)
    assert response.code == 200 and json.loads(body)["result"]["contents"][0]["text"] == "read me"
    # A tool that needs more: 403, and the challenge names the scope to ask for.
    response, _ = await send(port, b"POST", "/mcp", call(3, "write", {"text": "x"}), **both)
    assert response.code == 403
    challenge = header(response, "WWW-Authenticate")
    assert 'error="insufficient_scope"' in challenge and 'scope="files:write"' in challenge
    # The client asks for more and goes on in the same session.
    writer = provider.token(RESOURCE, scope="files:read files:write")
    response, body = await send(port, b"POST", "/mcp", call(4, "write", {"text": "x"}),
                                Authorization=f"Bearer {writer}", Mcp_Session_Id=session)
    assert response.code == 200 and json.loads(body)["result"]["content"][0]["text"] == "wrote x"


@pytest_twisted.ensureDeferred
async def test_the_websocket_upgrade_takes_the_same_tokens_and_challenges(provider, served):
    port = served
    # No token: the 401 carries the challenge (headers of a refused upgrade).
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(b"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                    b"Sec-WebSocket-Protocol: mcp\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = raw.recv(4096)
            if not chunk:
                break
            head += chunk
    assert head.startswith(b"HTTP/1.1 401")
    assert f'resource_metadata="http://127.0.0.1:8000{METADATA}"'.encode() in head
    # A reader's token opens a session; the scoped tool is refused in JSON-RPC.
    reader = provider.token(RESOURCE, scope="files:read")
    ws = await connect(port, headers={"Authorization": f"Bearer {reader}"})
    await ws.initialize()
    reply = await ws.request(1, "tools/call", {"name": "write", "arguments": {"text": "x"}})
    assert reply["error"]["code"] == -32600 and reply["error"]["data"] == {"requiredScopes": ["files:write"]}
    reply = await ws.request(2, "tools/call", {"name": "whoami", "arguments": {}})
    assert reply["result"]["content"][0]["text"] == "mcp-client"
    ws.sendClose(1000)
    await ws.closed


@pytest_twisted.ensureDeferred
async def test_tokens_the_server_must_not_take_are_refused_by_twistd(provider, served):
    port = served
    good = provider.token(RESOURCE, scope="files:read")
    kid = jwt.get_unverified_header(good)["kid"]
    refused = {
        "another resource's": provider.token(OTHER_RESOURCE, scope="files:read"),
        "unsigned (alg none)": forged(good, {"alg": "none", "typ": "at+jwt", "kid": kid}, lambda data: b""),
        "tampered": good[:-8] + ("A" * 8 if not good.endswith("A" * 8) else "B" * 8),
        "not a JWT": "opaque-token-nobody-issued",
    }
    for what, token in refused.items():
        response, _ = await send(port, b"POST", "/mcp", init_message(), Authorization=f"Bearer {token}")
        assert response.code == 401, what
        assert 'error="invalid_token"' in header(response, "WWW-Authenticate"), what
    response, _ = await send(port, b"POST", "/mcp", init_message(), Authorization=f"Bearer {good}")
    assert response.code == 200
