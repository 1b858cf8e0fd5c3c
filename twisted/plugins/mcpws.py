"""twistd plugin ``mcpws`` and the ``mtls:`` endpoint string.

Kept to declarations: importing the reactor here would break
``twistd --reactor=...`` for every plugin in this directory.
"""

from twisted.application.service import ServiceMaker

from mcp_twisted.endpoints import MutualTLSServerParser

mcpws = ServiceMaker(
    "mcp-twisted WebSocket server",
    "mcp_twisted.tap",
    "Serve a Model Context Protocol app over WebSocket (subprotocol 'mcp').",
    "mcpws",
)

mtls = MutualTLSServerParser()
