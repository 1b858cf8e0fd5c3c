"""The public surface: what each module exports, what importing it costs, and
the errors' sides."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import mcp_twisted
from mcp_twisted.jsonrpc import LocalProtocolError, MCPError, RemoteError, RPCError, parse
from mcp_twisted.protocol import CapabilityError
from mcp_twisted.session import ConnectionLost, RequestTimedOut


def loaded_after(statement: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running ``statement``."""
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_package_root_loads_nothing_heavy_until_a_name_is_used():
    modules = loaded_after("import mcp_twisted")
    assert "pydantic" not in modules and "mcp_twisted.server" not in modules
    assert "mcp_twisted.server" in loaded_after("from mcp_twisted import MCPServer")


@pytest.mark.parametrize("name", mcp_twisted.__all__)
def test_every_exported_name_resolves(name):
    assert getattr(mcp_twisted, name) is not None
    assert name in dir(mcp_twisted)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        mcp_twisted.Nope  # noqa: B018


@pytest.mark.parametrize("module", [
    "mcp_twisted.jsonrpc", "mcp_twisted.protocol", "mcp_twisted.session", "mcp_twisted.content",
    "mcp_twisted.server", "mcp_twisted.service", "mcp_twisted.auth",
    "mcp_twisted.metrics", "mcp_twisted.endpoints", "mcp_twisted.client",
])
def test_public_modules_declare_all_and_every_name_exists(module):
    imported = importlib.import_module(module)
    assert imported.__all__, module
    for name in imported.__all__:
        assert hasattr(imported, name), f"{module}.{name}"


def test_errors_share_one_base_and_say_their_side():
    for error in (RPCError, RemoteError, LocalProtocolError, CapabilityError, ConnectionLost,
                  RequestTimedOut):
        assert issubclass(error, MCPError)
    assert issubclass(RemoteError, RPCError)  # `except RPCError` still catches what the peer sent
    assert not issubclass(LocalProtocolError, RPCError)  # never dressed as a wire error
    assert issubclass(CapabilityError, LocalProtocolError)
    response = parse(b'{"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "nope"}}')
    assert type(response.error) is RemoteError  # type: ignore[union-attr]
