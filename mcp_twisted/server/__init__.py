"""The server application layer: ``MCPServer``, ``Context`` and result types."""

from mcp_twisted.server._context import Context
from mcp_twisted.server._modern import CachePolicy
from mcp_twisted.server._results import ToolError, ToolResult
from mcp_twisted.server._server import MCPServer

__all__ = ["CachePolicy", "Context", "MCPServer", "ToolError", "ToolResult"]
