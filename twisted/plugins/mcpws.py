"""twistd plugin: ``twistd mcpws`` serves an MCP app over WebSocket.

Kept to one line of substance: importing the reactor here would break
``twistd --reactor=...`` for every plugin in this directory.
"""

from twisted.application.service import ServiceMaker

mcpws = ServiceMaker(
    "mcp-twisted WebSocket server",
    "mcp_twisted.tap",
    "Serve a Model Context Protocol app over WebSocket (subprotocol 'mcp').",
    "mcpws",
)
