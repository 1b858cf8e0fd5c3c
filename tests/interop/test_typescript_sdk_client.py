"""The official TypeScript SDK (1.32.2) against the demo app: its
WebSocketClientTransport, and its StreamableHTTPClientTransport with the
server answering as JSON or always on resumable SSE streams."""

from __future__ import annotations

import pytest_twisted

from tests.interop.conftest import HERE, run_peer


def check_basics(report: dict) -> dict:
    steps = report["steps"]
    assert report["initialize"]["protocolVersion"] == "2025-11-25"
    assert "echo" in steps["list_tools"]
    assert steps["echo"]["content"] == [{"type": "text", "text": "hi"}]
    assert "mcp-twisted demo" in steps["read_resource"]["contents"][0]["text"]
    assert steps["get_prompt"]["messages"][0]["content"]["text"].endswith("Ada.")
    return steps


@pytest_twisted.ensureDeferred
async def test_connect_list_call_read_get(demo_url, node):
    report = await run_peer([node, str(HERE / "ts_client.mjs"), demo_url])
    check_basics(report)


@pytest_twisted.ensureDeferred
async def test_streamable_http_client(demo_http_url, node):
    report = await run_peer([node, str(HERE / "ts_client.mjs"), demo_http_url, "updates"])
    steps = check_basics(report)
    errors = {name: step for name, step in steps.items() if isinstance(step, dict) and "error" in step}
    assert errors == {} and report["transportErrors"] == []
    assert len(report["sessionId"]) == 32
    assert steps["progress"] == {"text": "Counted to 3", "progress": [1, 2, 3]}
    assert steps["logging"] == [{"level": "warning", "logger": "demo", "data": "m"}]
    assert (steps["sampling"], steps["roots"], steps["elicitation"]) == ("sampled:p", "file:///tmp/x", "Ada")
    assert steps["concurrent_echo"] == {"count": 20, "all_match": True}
    assert steps["subscribe"] == {"updated": ["demo://readme"]}  # on the session's GET stream
    assert steps["terminate_session"] == {"ok": True}  # DELETE: 204
