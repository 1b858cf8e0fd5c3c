"""The official MCP Python SDK's Streamable HTTP client (mcp 1.30,
``streamable_http_client`` + ``ClientSession``) against the demo app: the
WebSocket test's full scenario, then a subscription whose updates come on
the session's GET stream. The server runs in both answer modes."""

from __future__ import annotations

import sys

import pytest_twisted

from tests.interop.conftest import HERE, check_full_scenario, run_peer


@pytest_twisted.ensureDeferred
async def test_full_scenario_and_resource_updates(demo_http_url):
    report = await run_peer([sys.executable, str(HERE / "sdk_client.py"), demo_http_url, "full+updates"])
    check_full_scenario(report)
    assert len(report["session_id"]) == 32
    assert report["steps"]["subscribe"] == {"updated": ["demo://readme"]}
