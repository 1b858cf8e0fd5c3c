"""Log observers for ``twistd --logger``.

``twistd -n --logger mcp_twisted.logs.json_stdout mcpws ...`` writes one JSON
object per line (RFC 7464 JSON text sequences: each record starts with an
ASCII RS), which journald, Loki or ``jq --seq`` read directly. Every event
keeps its structured fields (``peer``, ``code``, ``duration``, ``method``, ...).
"""

from __future__ import annotations

import sys

from twisted.logger import ILogObserver, jsonFileLogObserver


def json_stdout() -> ILogObserver:
    """A twistd ``--logger`` factory: JSON records on standard output."""
    return jsonFileLogObserver(sys.stdout)
