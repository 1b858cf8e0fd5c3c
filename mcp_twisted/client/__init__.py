"""The MCP client: ``MCPClientService`` keeps a session to a WebSocket server alive.

::

    svc = MCPClientService(reactor, "wss://host:8443/mcp", tls_ca="ca.pem")
    svc.startService()
    client = await svc.when_ready()          # connected and initialized
    result = await client.call_tool("forecast", {"city": "Oslo"})
"""

from mcp_twisted.client._api import ConnectionFailed, MCPClient, NotConnected
from mcp_twisted.client._lifecycle import ConnectionState
from mcp_twisted.client._websocket import (
    MCPClientFactory,
    MCPClientProtocol,
    MCPClientService,
    backoff_policy,
    endpoint_for_url,
)
from mcp_twisted.session import ConnectionLost, RequestTimedOut

__all__ = [
    "ConnectionFailed",
    "ConnectionLost",
    "ConnectionState",
    "MCPClient",
    "MCPClientFactory",
    "MCPClientProtocol",
    "MCPClientService",
    "NotConnected",
    "RequestTimedOut",
    "backoff_policy",
    "endpoint_for_url",
]
