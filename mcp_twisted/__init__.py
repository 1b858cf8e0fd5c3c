"""mcp-twisted: Model Context Protocol servers and clients on Twisted and Autobahn.

The names below are imported on first use (PEP 562), so that ``import
mcp_twisted.client`` or the twistd plugin does not load the server app and
pydantic with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_LAZY = {
    "CachePolicy": "mcp_twisted.server",
    "CapabilityError": "mcp_twisted.protocol",
    "Context": "mcp_twisted.server",
    "LocalProtocolError": "mcp_twisted.jsonrpc",
    "MCPError": "mcp_twisted.jsonrpc",
    "MCPServer": "mcp_twisted.server",
    "RPCError": "mcp_twisted.jsonrpc",
    "RemoteError": "mcp_twisted.jsonrpc",
    "ToolError": "mcp_twisted.server",
    "ToolResult": "mcp_twisted.server",
    "content": "mcp_twisted.content",
}

__all__ = [
    "CachePolicy",
    "CapabilityError",
    "Context",
    "LocalProtocolError",
    "MCPError",
    "MCPServer",
    "RPCError",
    "RemoteError",
    "ToolError",
    "ToolResult",
    "__version__",
    "content",
]

if TYPE_CHECKING:
    from mcp_twisted import content
    from mcp_twisted.jsonrpc import LocalProtocolError, MCPError, RemoteError, RPCError
    from mcp_twisted.protocol import CapabilityError
    from mcp_twisted.server import CachePolicy, Context, MCPServer, ToolError, ToolResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mcp_twisted' has no attribute {name!r}")
    value = importlib.import_module(module)
    if name != "content":
        value = getattr(value, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
