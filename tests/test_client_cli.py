"""``mcp-call`` (``python -m mcp_twisted.client``) run as a subprocess against servers
served in this process; its runs are started together so the module stays quick."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest_twisted
import trustme
from twisted.internet import defer, protocol, reactor, utils

from mcp_twisted.client.cli import Progress
from mcp_twisted.demo import server as demo_app
from mcp_twisted.websocket import MCPServerFactory
from tests.http_support import serve
from tests.support import listen, stop

REPO = Path(__file__).parent.parent


async def mcpws_call(*args: str) -> tuple[int, str, str]:
    """Run the CLI; returns (exit status, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out, err, code = await utils.getProcessOutputAndValue(
        sys.executable, ["-m", "mcp_twisted.client", *args], env=env, path=str(REPO)
    )
    return code, out.decode(), err.decode()


async def run_all(*commands: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """Run several CLI invocations at once (each one is mostly interpreter start-up)."""
    runs = [defer.ensureDeferred(mcpws_call(*command)) for command in commands]
    return await defer.gatherResults(runs, consumeErrors=True)


@pytest_twisted.async_yield_fixture
async def demo_url():
    factory = MCPServerFactory(demo_app, ping_interval=0, ping_timeout=0)
    port = await listen(factory)
    yield f"ws://127.0.0.1:{port.getHost().port}/mcp"
    await stop(port, factory)


@pytest_twisted.ensureDeferred
async def test_commands_print_readable_results(demo_url):
    runs = await run_all(
        (demo_url, "tools"),
        (demo_url, "call", "echo", '{"text":"hi"}'),
        (demo_url, "read", "demo://readme"),
        (demo_url, "prompts"),
        (demo_url, "prompt", "greet", '{"name":"Ada"}'),
    )
    for code, _, err in runs:
        assert code == 0, err
        assert err == ""
    tools, echo, readme, prompts, prompt = (out.splitlines() for _, out, _ in runs)
    assert "echo: Return the text unchanged." in tools
    assert "fail_tool: Always fail, to show how a tool error looks." in tools
    assert len(tools) == 7
    assert echo == ["hi"]
    assert readme[0] == "mcp-twisted demo server" and readme[2].startswith("Tools: echo, slow_count")
    assert prompts == ["greet: A greeting for someone."]
    assert prompt == ["[user] Please write a short, warm greeting for Ada."]


@pytest_twisted.ensureDeferred
async def test_json_output_is_the_raw_result(demo_url):
    runs = await run_all(
        ("--json", demo_url, "tools"),
        ("--json", demo_url, "call", "echo", '{"text":"hi"}'),
    )
    assert [code for code, _, _ in runs] == [0, 0], [err for _, _, err in runs]
    (_, tools_out, _), (_, echo_out, _) = runs
    tools, echo = json.loads(tools_out), json.loads(echo_out)
    echo_tool = next(tool for tool in tools["tools"] if tool["name"] == "echo")
    assert echo_tool["inputSchema"]["required"] == ["text"]
    assert echo["content"] == [{"type": "text", "text": "hi"}]


@pytest_twisted.ensureDeferred
async def test_server_errors_exit_1(demo_url):
    (fail_code, fail_out, _), (unknown_code, unknown_out, unknown_err), (missing_code, _, missing_err) = \
        await run_all(
            (demo_url, "call", "fail_tool"),
            (demo_url, "call", "no_such_tool", "{}"),
            (demo_url, "read", "demo://items/9"),
        )
    assert fail_code == 1
    assert fail_out.splitlines() == ["Tool error:", "This tool always fails"]
    assert unknown_code == 1 and unknown_out == ""
    assert unknown_err.startswith("mcp-call: server error -32602: ") and "no_such_tool" in unknown_err
    assert missing_code == 1
    assert missing_err.strip() == (
        'mcp-call: server error -32002: Resource not found: demo://items/9 {"uri": "demo://items/9"}'
    )


@pytest_twisted.ensureDeferred
async def test_connection_failures_exit_3():
    closed = await listen(protocol.Factory.forProtocol(protocol.Protocol))
    free_port = closed.getHost().port
    await closed.stopListening()  # nobody listens here any more
    silent = await listen(protocol.Factory.forProtocol(protocol.Protocol))  # accepts TCP, never answers
    silent_port = silent.getHost().port
    try:
        (refused_code, _, refused_err), (silent_code, _, silent_err) = await run_all(
            (f"ws://127.0.0.1:{free_port}/mcp", "ping"),
            ("--timeout", "1", f"ws://127.0.0.1:{silent_port}/mcp", "ping"),
        )
    finally:
        await stop(silent)
    assert refused_code == 3
    assert refused_err.startswith("mcp-call: connection failed: Gave up on ws://127.0.0.1:")
    assert "Connection refused" in refused_err, refused_err
    assert silent_code == 3
    assert silent_err == (
        f"mcp-call: connection failed: no MCP session with ws://127.0.0.1:{silent_port}/mcp within 1 s\n"
    )


@pytest_twisted.ensureDeferred
async def test_usage_errors_exit_2(demo_url):
    runs = await run_all(
        ("ftp://127.0.0.1:1/mcp", "ping"),
        (demo_url, "call", "echo", "{bad json"),
        ("tools", "--"),
    )
    assert [code for code, _, _ in runs] == [2, 2, 2]
    (_, _, url_err), (_, _, json_err), (_, _, command_err) = runs
    assert "not an http(s):// or ws(s):// URL: 'ftp://127.0.0.1:1/mcp'" in url_err
    assert "argument arguments: not JSON" in json_err
    assert command_err == "mcp-call: error: nothing after --: expected the server command\n"


@pytest_twisted.ensureDeferred
async def test_unusable_cafile_is_a_one_line_usage_error(tmp_path):
    """Checked before connecting: the URL here is never dialled."""
    key_only, broken = tmp_path / "key.pem", tmp_path / "broken.pem"
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(key_only))
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    cases = {
        tmp_path / "missing.pem": "No such file or directory",
        tmp_path: "Is a directory",
        key_only: "no PEM certificate found",
        broken: "certificate 1 is not valid PEM",
    }
    runs = await run_all(*(("--cafile", str(path), "wss://127.0.0.1:1/mcp", "ping") for path in cases))
    for (path, reason), (code, out, err) in zip(cases.items(), runs, strict=True):
        assert (code, out) == (2, ""), err
        assert err == f"mcp-call: error: --cafile {path}: {reason}\n"


def load_token_example() -> Any:
    spec = importlib.util.spec_from_file_location("example_token_auth", REPO / "examples" / "token_auth.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest_twisted.ensureDeferred
async def test_header_carries_a_bearer_token():
    factory = load_token_example().make_factory()
    factory.setProtocolOptions(autoPingInterval=0, autoPingTimeout=0)
    port = await listen(factory)
    url = f"ws://127.0.0.1:{port.getHost().port}/mcp"
    try:
        (ok_code, ok_out, ok_err), (none_code, _, none_err) = await run_all(
            ("--header", "Authorization: Bearer s3cret-token", url, "call", "whoami"),
            (url, "call", "whoami"),
        )
    finally:
        await stop(port, factory)
    assert (ok_code, ok_out, ok_err) == (0, "alice\n", "")
    assert none_code == 3
    assert none_err.startswith("mcp-call: connection failed: Gave up on ws://127.0.0.1:")
    assert "[401]: Unauthorized" in none_err, none_err


@pytest_twisted.async_yield_fixture
async def demo_http_url():
    _, resource, port = await serve(demo_app)
    yield f"http://127.0.0.1:{port.getHost().port}/mcp"
    resource.close_all()
    await port.stopListening()


STDIO_SERVER = ("--", sys.executable, "-m", "mcp_twisted", "stdio", "--app", "mcp_twisted.demo:server")


@pytest_twisted.ensureDeferred
async def test_every_transport_and_era_is_reached(demo_url, demo_http_url):
    targets = [(demo_url,), (demo_http_url,)]
    runs = await run_all(
        *((*era, *target, "call", "echo", '{"text":"hi"}') for target in targets
          for era in ((), ("--era", "legacy"), ("--era", "2026-07-28"))),
        ("call", "echo", '{"text":"hi"}', *STDIO_SERVER),
        ("--era", "legacy", "get", "greet", '{"name":"Ada"}', *STDIO_SERVER),
    )
    for code, out, err in runs[:-2]:
        assert (code, out, err) == (0, "hi\n", "")
    (echo_code, echo_out, echo_err), (get_code, get_out, _) = runs[-2:]
    assert (echo_code, echo_out) == (0, "hi\n")
    assert "Serving mcp-twisted-demo" in echo_err  # the launched server's stderr, passed through
    assert get_code == 0 and "Ada" in get_out


@pytest_twisted.ensureDeferred
async def test_progress_and_server_logs_go_to_stderr(demo_http_url):
    (count_code, count_out, count_err), (log_code, _, log_err) = await run_all(
        (demo_http_url, "call", "slow_count", '{"count": 2, "delay": 0.01}'),
        (demo_http_url, "call", "log_demo", '{"message": "hello", "level": "warning"}'),
    )
    assert count_code == 0 and count_out.strip()
    assert count_err.splitlines() == ["progress 1/2 step 1 of 2", "progress 2/2 step 2 of 2"]  # not a tty
    assert log_code == 0 and "[warning]" in log_err and "hello" in log_err


class _Watched(protocol.ProcessProtocol):
    """The CLI as a child whose stderr is watched."""

    def __init__(self) -> None:
        self.stderr = b""
        self.progressed: defer.Deferred[None] = defer.Deferred()
        self.ended: defer.Deferred[int] = defer.Deferred()

    def errReceived(self, data: bytes) -> None:
        self.stderr += data
        if b"progress" in self.stderr and not self.progressed.called:
            self.progressed.callback(None)

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(reason.value.exitCode)


@pytest_twisted.ensureDeferred
async def test_ctrl_c_cancels_the_request_then_exits_130(demo_http_url):
    child = _Watched()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "mcp_twisted.client", demo_http_url, "call", "slow_count",
            '{"count": 1000, "delay": 0.05}']
    process = reactor.spawnProcess(child, sys.executable, args, env=env, path=str(REPO))
    await child.progressed.addTimeout(20, reactor)
    process.signalProcess("INT")
    code = await child.ended.addTimeout(20, reactor)
    assert code == 130
    assert child.stderr.decode().endswith("mcp-call: interrupted: the request was cancelled\n")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_redrawn_in_place_on_a_terminal():
    terminal = _Terminal()
    progress = Progress(terminal)
    progress(1, 4, "loading")
    progress(4, 4, None)
    progress.finish()
    frames = terminal.getvalue().split("\r")[1:]
    assert frames[0].startswith("[" + "#" * 7 + "." * 23 + "] 1/4 loading")
    assert frames[1] == "[" + "#" * 30 + "] 4/4\x1b[K\n"
