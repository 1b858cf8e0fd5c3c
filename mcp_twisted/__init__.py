"""mcp-twisted: Model Context Protocol servers and clients on Twisted and Autobahn."""

from mcp_twisted import content
from mcp_twisted.jsonrpc import RPCError
from mcp_twisted.protocol import CapabilityError
from mcp_twisted.server import Context, MCPServer, ToolError, ToolResult

__version__ = "0.1.0"

__all__ = [
    "CapabilityError",
    "Context",
    "MCPServer",
    "RPCError",
    "ToolError",
    "ToolResult",
    "__version__",
    "content",
]
