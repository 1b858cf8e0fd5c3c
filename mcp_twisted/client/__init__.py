"""The MCP client: ``MCPClientService`` keeps a session to a server alive,
over WebSocket, Streamable HTTP or stdio, in either protocol era.

::

    svc = MCPClientService(reactor, "https://host:8443/mcp", tls_ca="ca.pem")
    # or "wss://host:8443/mcp", or command=["python", "-m", "server"]
    svc.startService()
    client = await svc.when_ready()          # connected and opened
    result = await client.call_tool("forecast", {"city": "Oslo"})

A server that is an OAuth protected resource takes ``auth=OAuthClient(...)``.
"""

from mcp_twisted.client._api import ERA_CACHE, ConnectionFailed, MCPClient, NotConnected
from mcp_twisted.client._http import HTTPConnection, HTTPError
from mcp_twisted.client._lifecycle import ConnectionState
from mcp_twisted.client._oauth import (
    Challenge,
    MemoryTokenStore,
    OAuthClient,
    OAuthError,
    OAuthTokens,
    TokenStore,
    canonical_resource,
)
from mcp_twisted.client._service import MCPClientService, backoff_policy
from mcp_twisted.client._stdio import StdioConnection
from mcp_twisted.client._websocket import MCPClientFactory, MCPClientProtocol, endpoint_for_url
from mcp_twisted.session import ConnectionLost, RequestTimedOut

__all__ = [
    "ERA_CACHE",
    "Challenge",
    "ConnectionFailed",
    "ConnectionLost",
    "ConnectionState",
    "HTTPConnection",
    "HTTPError",
    "MCPClient",
    "MCPClientFactory",
    "MCPClientProtocol",
    "MCPClientService",
    "MemoryTokenStore",
    "NotConnected",
    "OAuthClient",
    "OAuthError",
    "OAuthTokens",
    "RequestTimedOut",
    "StdioConnection",
    "TokenStore",
    "backoff_policy",
    "canonical_resource",
    "endpoint_for_url",
]
