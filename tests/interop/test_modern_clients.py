"""Clients of the 2026-07-28 generation against ``twistd mcpws`` (the demo app) over HTTP.

- The official Python SDK ``mcp==2.3.0``: ``mcp.client.Client(url, mode=...)``
  with ``mode="auto"`` (probes ``server/discover``, must settle on
  2026-07-28), pinned to ``"2026-07-28"``, and ``"legacy"`` (the handshake).
- FastMCP 4.1.6's ``fastmcp.Client(url, mode=...)`` (on that SDK), the same modes.
- The TypeScript client ``@modelcontextprotocol/client@2.4.0``:
  ``new Client(info, {versionNegotiation: {mode}})`` over its
  ``StreamableHTTPClientTransport``, modes ``auto``, ``{pin: '2026-07-28'}`` and ``legacy``.

Each lists the tools, calls ``echo``, and calls the tools that ask the client:
``ask_user`` (``ctx.elicit``, answered ``{"name": "Ada"}``), ``sample_llm``
(``ctx.sample``) and ``list_client_roots`` (``ctx.list_roots``). On 2026-07-28
each question travels in an ``input_required`` result and its answer in the
retried ``tools/call`` (MRTR); the reports show it: the Python callbacks are
handed the ``inputRequests`` key instead of a JSON-RPC id, the SDK's
hand-driven round shows both legs, and the TypeScript client's POSTs are recorded.

The Python clients run in their own virtualenv (``modern_env.py``; mcp 2.x
cannot sit beside the project's mcp 1.30). The server runs in both answer
modes: JSON when it can, and always an SSE stream (``--always-stream``).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.interop.modern_env import ensure_env
from tests.test_tap import Twistd

HERE = Path(__file__).parent
MODERN = "2026-07-28"
HANDSHAKE = "2025-11-25"
DEMO = "mcp-twisted-demo"
DEMO_TOOLS = ["echo", "slow_count", "sample_llm", "list_client_roots", "ask_user", "log_demo", "fail_tool"]
# The demo's tools that ask the client (step and question kind -> tool, and the client's answer).
ASKING = {
    "elicitation": ("ask_user", {"action": "accept", "content": {"name": "Ada"}}),
    "sampling": ("sample_llm", {"role": "assistant", "content": {"type": "text", "text": "sampled:p"},
                                "model": "interop-fake-model"}),
    "roots": ("list_client_roots", {"roots": [{"uri": "file:///tmp/x", "name": "x"}]}),
}
MODES = ["auto", MODERN, "legacy"]
CLIENT_TIMEOUT = 60.0
# twistd logs "<factory> starting on <port>" for each listening port.

Report = dict[str, Any]


@pytest.fixture(scope="module", params=["json", "always-stream"])
def server_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo app served by ``twistd mcpws`` on a port the kernel picks; its MCP URL."""
    args = ["--endpoint", "tcp:0:interface=127.0.0.1"]
    if request.param == "always-stream":
        args.append("--always-stream")
    server = Twistd(args, tmp_path_factory.mktemp("twistd"))
    try:
        yield f"http://127.0.0.1:{server.listening_port()}/mcp"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def modern_python() -> Path:
    """The Python of the clients' own virtualenv (built on first use)."""
    return ensure_env()


@pytest.fixture(scope="session")
def ts_client(node: str) -> str:
    """Node, with ``@modelcontextprotocol/client`` installed (``npm ci`` if an older
    ``node_modules`` lacks it)."""
    if not (HERE / "node_modules" / "@modelcontextprotocol" / "client").is_dir():
        npm = str(Path(node).with_name("npm"))
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True,
                       stdout=subprocess.DEVNULL)
    return node


def run_client(argv: list[str]) -> Report:
    """Run a client script; its JSON report (it must have connected and finished)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(argv, cwd=HERE, env=env, capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    assert run.returncode == 0, f"{argv[1:]} exited {run.returncode}:\n{run.stdout}\n{run.stderr[-3000:]}"
    report: Report = json.loads(run.stdout)
    return report


def check_steps(report: Report) -> None:
    """What every client reports, in every mode: the tools, a call, three answered questions."""
    steps = report["steps"]
    assert steps["list_tools"] == DEMO_TOOLS
    assert {name: steps[name] for name in ("echo", *ASKING)} == {
        "echo": {"text": "hi", "isError": False},
        "elicitation": {"text": "Ada", "isError": False},
        "sampling": {"text": "sampled:p", "isError": False},
        "roots": {"text": "file:///tmp/x", "isError": False},
    }
    assert [asked["kind"] for asked in report["asked"]] == list(ASKING)
    assert report["asked"][0]["message"] == "Your name?"


def check_python_ids(report: Report, modern: bool) -> None:
    """Each callback ran once: given the MRTR key on 2026-07-28 (the capability
    and a number, as ctx.elicit/sample/list_roots name an unkeyed question),
    the server's JSON-RPC request id on the handshake era."""
    ids = [asked["id"] for asked in report["asked"]]
    if modern:
        assert ids == [f"{kind}-1" for kind in ASKING]
    else:
        assert all(isinstance(request_id, int) for request_id in ids), ids


@pytest.mark.parametrize("mode", MODES)
def test_python_sdk_2(server_url: str, modern_python: Path, mode: str) -> None:
    report = run_client([str(modern_python), "modern_sdk_client.py", server_url, "mcp", mode])
    modern = mode != "legacy"
    assert report["client"] == "mcp 2.3.0"
    assert report["protocolVersion"] == (MODERN if modern else HANDSHAKE)
    # Pinned, the SDK adopts the version without asking the server: it learns no serverInfo.
    assert report["server"] == (None if mode == MODERN else DEMO)
    check_steps(report)
    check_python_ids(report, modern)
    if modern:
        assert report["steps"]["mrtr"] == {
            "first": {"resultType": "input_required", "requestState": True,
                      "inputRequests": {"elicitation-1": "elicitation/create"}},
            "final": {"type": "CallToolResult", "text": "Grace"},
        }
    else:
        assert "mrtr" not in report["steps"]


@pytest.mark.parametrize("mode", MODES)
def test_fastmcp_4(server_url: str, modern_python: Path, mode: str) -> None:
    report = run_client([str(modern_python), "modern_sdk_client.py", server_url, "fastmcp", mode])
    modern = mode != "legacy"
    assert report["client"] == "fastmcp 4.1.6"
    assert report["protocolVersion"] == (MODERN if modern else HANDSHAKE)
    assert report["server"] == (None if mode == MODERN else DEMO)
    check_steps(report)
    check_python_ids(report, modern)


@pytest.mark.parametrize("mode", MODES)
def test_typescript_client_2(server_url: str, ts_client: str, mode: str) -> None:
    report = run_client([ts_client, "ts_modern_client.mjs", server_url, mode])
    check_steps(report)
    assert report["asked"][0]["schema"]["required"] == ["name"]
    # Pinned too, the TypeScript client asks server/discover (which must offer the pin).
    assert report["server"] == {"name": DEMO, "version": "1.0.0"}
    posts = report["posts"]
    methods = [post["method"] for post in posts]
    calls = {tool: [post for post in posts if post.get("tool") == tool] for tool, _ in ASKING.values()}
    if mode == "legacy":
        assert (report["protocolVersion"], report["era"]) == (HANDSHAKE, "legacy")
        assert methods[:2] == ["initialize", "notifications/initialized"]
        # One call each; the answers are JSON-RPC responses POSTed to the server's requests.
        assert all(len(posted) == 1 and "inputResponses" not in posted[0] for posted in calls.values())
        assert len([post for post in posts if "answers" in post]) == len(ASKING)
        return
    assert (report["protocolVersion"], report["era"]) == (MODERN, "modern")
    assert methods == ["server/discover", "tools/list"] + ["tools/call"] * (1 + 2 * len(ASKING))
    # Every request says its revision, in the header and in _meta.
    assert all(post["header"] == MODERN and post["protocolVersion"] == MODERN for post in posts)
    # MRTR: each call, then its retry with the answer under the server's key and the state echoed.
    for kind, (tool, answer) in ASKING.items():
        first, retry = calls[tool]
        assert "inputResponses" not in first and "requestState" not in first
        assert retry["inputResponses"] == {f"{kind}-1": answer}
        assert retry["requestState"] == "string"
