"""twistd plugin ``mcpws`` and the ``mtls:``, ``reuseport:`` and forward-secret ``ssl:`` endpoint strings.

Kept to declarations: importing the reactor here would break
``twistd --reactor=...`` for every plugin in this directory.
"""

from twisted.application.service import ServiceMaker

from mcp_twisted.endpoints import ForwardSecretTLSServerParser, MutualTLSServerParser, ReusePortServerParser

mcpws = ServiceMaker(
    "mcp-twisted WebSocket server",
    "mcp_twisted.tap",
    "Serve a Model Context Protocol app over WebSocket (subprotocol 'mcp').",
    "mcpws",
)

mtls = MutualTLSServerParser()

reuseport = ReusePortServerParser()

# Serves ssl: strings given to twistd mcpws (see mcp_twisted.endpoints.server_from_string).
forward_secret_ssl = ForwardSecretTLSServerParser()
