"""The client stands alone: importing it loads neither the server transport,
the server app nor pydantic (a client should not pay for them)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).parent.parent

SERVER_SIDE = ("mcp_twisted.websocket", "mcp_twisted.server", "pydantic", "pydantic_core")


def loaded_after(statement: str) -> list[str]:
    """Modules of ``SERVER_SIDE`` (or below them) loaded by ``statement`` in a fresh interpreter."""
    code = (
        f"import json, sys\n{statement}\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m in {SERVER_SIDE!r}"
        f" or m.startswith(('mcp_twisted.server.', 'pydantic.', 'pydantic_core.')))))"
    )
    # The checkout, not the installed copy: the working directory comes first on sys.path.
    done = subprocess.run([sys.executable, "-c", code], cwd=CHECKOUT, capture_output=True, text=True,
                          check=True, timeout=60)
    return json.loads(done.stdout)


def test_importing_the_client_loads_no_server_code():
    assert loaded_after("import mcp_twisted.client") == []


def test_the_shared_websocket_pieces_load_no_server_code():
    assert loaded_after("import mcp_twisted._autobahn") == []


def test_the_server_transport_still_exports_the_shared_pieces():
    from mcp_twisted import _autobahn, websocket

    for name in ("SUBPROTOCOL", "FastPathMixin", "check_timer_settings", "CLOSE_POLICY_VIOLATION",
                 "CLOSE_MESSAGE_TOO_BIG", "CLOSE_UNSUPPORTED_DATA"):
        assert getattr(websocket, name) is getattr(_autobahn, name)
