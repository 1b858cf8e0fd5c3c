"""A server protected by ``OAuthResourceServer`` whose tokens the real
OpenID provider issues, for the tests of OAuth clients (ours and the SDK's).

Its resource URL names the port it really listens on, as clients check:
``lobby`` is a socket bound before the provider starts (the provider is told
the resource), and each test's server adopts it. Import the fixtures into a
test module with ``pytest_plugins = ("tests.oauth.servers",)``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import pytest_twisted
from autobahn.twisted.resource import WebSocketResource
from twisted.internet import reactor

from mcp_twisted import Context, MCPServer
from mcp_twisted.http import HTTPSettings, MCPHTTPResource, MCPSite
from mcp_twisted.oauth import OAuthResourceServer, OAuthSettings, ProtectedResourceMetadataResource
from mcp_twisted.websocket import MCPServerFactory
from tests.oauth.provider import OTHER_RESOURCE, RESOURCE, OpenIDProvider


@pytest.fixture(scope="module")
def provider() -> Iterator[OpenIDProvider]:
    """The provider for ``RESOURCE`` (and ``OTHER_RESOURCE``), for tests that
    check tokens without a client that compares the URL with the server's."""
    started = OpenIDProvider(RESOURCE, OTHER_RESOURCE)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def lobby() -> Iterator[socket.socket]:
    """A listening socket on an ephemeral port of 127.0.0.1: each test's
    server adopts it, so the resource URL is known before the provider starts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


@pytest.fixture(scope="module")
def resource_url(lobby: socket.socket) -> str:
    return f"http://127.0.0.1:{lobby.getsockname()[1]}/mcp"


@pytest.fixture(scope="module")
def idp(resource_url: str) -> Iterator[OpenIDProvider]:
    started = OpenIDProvider(resource_url, OTHER_RESOURCE)
    yield started
    started.stop()


def make_app() -> MCPServer:
    """``whoami`` (the caller) for anyone with ``files:read``; ``write``
    needs ``files:write`` too: a token without it is refused with 403."""
    app = MCPServer("protected", "1.0")

    @app.tool()
    def whoami(ctx: Context) -> str:
        return str(ctx.identity)

    @app.tool(scopes=["files:write"])
    def write() -> str:
        return "written"

    return app


@pytest_twisted.async_yield_fixture
async def protected(idp: OpenIDProvider, lobby: socket.socket, resource_url: str):
    """The protected server on the lobby socket, Streamable HTTP and WebSocket
    on ``/mcp``; its metadata offers ``files:read`` (so that ``files:write``
    takes a step up); yields the resource server."""
    oauth = OAuthResourceServer(OAuthSettings(resource=resource_url, issuer=idp.issuer,
                                              scopes_supported=("files:read",),
                                              required_scopes=("files:read",)))
    factory = MCPServerFactory(make_app(), auth=oauth, ping_interval=0)
    site = MCPSite(MCPHTTPResource(factory.host, HTTPSettings()), WebSocketResource(factory),
                   max_body_size=factory.host.limits.max_message_size,
                   extra=dict.fromkeys(oauth.metadata.paths,
                                       ProtectedResourceMetadataResource(oauth.metadata)))
    port = reactor.adoptStreamPort(lobby.fileno(), socket.AF_INET, site)
    yield oauth
    for connection in list(factory.connections):
        connection.dropConnection(abort=True)
    await port.stopListening()
    await oauth.close()


