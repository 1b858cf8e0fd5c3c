"""``python -m mcp_twisted.client``: the same as ``mcp-call``."""

from mcp_twisted.client.cli import main

main()
