"""The same client calls over the three transports and both eras, against
this project's server on real sockets (HTTP, WebSocket) and a real child
process (stdio)."""

from __future__ import annotations

import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ProcessDone
from twisted.logger import globalLogPublisher

from mcp_twisted import MCPServer
from mcp_twisted.client import ConnectionFailed, MCPClient, MCPClientService, RequestTimedOut, backoff_policy
from mcp_twisted.demo import server as demo_app
from mcp_twisted.http import HTTPSettings
from tests.http_support import serve

ERAS = ["legacy", "2026-07-28"]


def fast_backoff() -> Any:
    return backoff_policy(initial_delay=0.05, max_delay=0.2, jitter=False)


@pytest_twisted.async_yield_fixture(params=["json", "always-stream"])
async def http_url(request):
    settings = HTTPSettings(always_stream=request.param == "always-stream")
    _, resource, port = await serve(demo_app, settings)
    yield f"http://127.0.0.1:{port.getHost().port}/mcp"
    resource.close_all()
    await port.stopListening()


@pytest_twisted.async_yield_fixture
async def ws_url():
    _, _, port = await serve(demo_app)
    yield f"ws://127.0.0.1:{port.getHost().port}/mcp"
    await port.stopListening()


STDIO_COMMAND = [sys.executable, "-m", "mcp_twisted", "stdio", "--app", "mcp_twisted.demo:server"]


class Services:
    def __init__(self) -> None:
        self.started: list[MCPClientService] = []

    async def client(self, url: str | None = None, **options: Any) -> MCPClient:
        options.setdefault("backoff", fast_backoff())
        options.setdefault("request_timeout", 10.0)
        options.setdefault("era_cache", {})
        service = MCPClientService(reactor, url, **options)
        self.started.append(service)
        service.startService()
        return await service.when_ready().addTimeout(20, reactor)

    async def stop(self) -> None:
        for service in self.started:
            await service.stopService()


@pytest_twisted.async_yield_fixture
async def services():
    started = Services()
    yield started
    await started.stop()


async def exercise(client: MCPClient, era: str) -> None:
    """The calls every transport must carry the same way."""
    assert client.modern is (era != "legacy")
    assert client.server_info["name"] == demo_app.name
    tools = [tool["name"] async for tool in client.iter_tools()]
    assert "echo" in tools and "slow_count" in tools
    result = await client.call_tool("echo", {"text": "hi"})
    assert result["content"] == [{"type": "text", "text": "hi"}]
    progress: list[Any] = []
    counted = await client.call_tool("slow_count", {"count": 3, "delay": 0.01},
                                     on_progress=lambda done, total, message: progress.append(done))
    assert not counted.get("isError") and progress == [1, 2, 3]
    read = await client.read_resource("demo://readme")
    assert "demo" in read["contents"][0]["text"].lower()
    prompt = await client.get_prompt("greet", {"name": "Ada"})
    assert "Ada" in prompt["messages"][0]["content"]["text"]
    completion = await client.complete({"type": "ref/prompt", "name": "greet"}, "name", "A")
    assert isinstance(completion["values"], list)
    await client.ping()


@pytest.mark.parametrize("era", ERAS)
@pytest_twisted.ensureDeferred
async def test_streamable_http_in_both_eras(services, http_url, era):
    await exercise(await services.client(http_url, era=era), era)


@pytest.mark.parametrize("era", ERAS)
@pytest_twisted.ensureDeferred
async def test_websocket_in_both_eras(services, ws_url, era):
    await exercise(await services.client(ws_url, era=era, ping_interval=0, ping_timeout=0), era)


@pytest.mark.parametrize("era", ERAS)
@pytest_twisted.ensureDeferred
async def test_stdio_in_both_eras(services, era):
    client = await services.client(command=STDIO_COMMAND, era=era, stderr=lambda line: None)
    await exercise(client, era)


@pytest.mark.parametrize("transport", ["http", "ws", "stdio"])
@pytest_twisted.ensureDeferred
async def test_auto_picks_2026_07_28_from_this_server_and_caches_it(services, http_url, ws_url, transport):
    cache: dict[str, str] = {}
    target = {"http": {"url": http_url}, "ws": {"url": ws_url, "ping_interval": 0, "ping_timeout": 0},
              "stdio": {"command": STDIO_COMMAND}}[transport]
    client = await services.client(era_cache=cache, **target)
    assert client.modern and list(cache.values()) == ["2026-07-28"]
    await exercise(client, "2026-07-28")



@pytest_twisted.ensureDeferred
async def test_stopping_closes_the_childs_stdin_and_it_exits_cleanly(services):
    await services.client(command=STDIO_COMMAND, stderr=lambda line: None)
    service = services.started[-1]
    connection = service.connector.current
    await service.stopService()
    assert connection.lost_reason.check(ProcessDone)


@pytest_twisted.ensureDeferred
async def test_a_dead_child_is_started_again(services):
    client = await services.client(command=STDIO_COMMAND, stderr=lambda line: None)
    service = services.started[-1]
    first = service.connector.current
    first.transport.signalProcess("KILL")
    await first.when_closed()
    await service.when_ready().addTimeout(20, reactor)
    assert service.connector.current is not first
    assert (await client.call_tool("echo", {"text": "again"}))["content"][0]["text"] == "again"


@pytest_twisted.ensureDeferred
async def test_a_child_that_exits_at_once_is_retried_then_given_up(services):
    lines: list[str] = []
    command = [sys.executable, "-c", "import sys; sys.stderr.write('cannot start\\n')"]
    with pytest.raises(ConnectionFailed, match="after 2 failed attempts: the server process exited"):
        await services.client(command=command, stderr=lines.append, max_attempts=2)
    assert lines == ["cannot start", "cannot start"]


def answering_callbacks() -> dict[str, Any]:
    """Callbacks that answer the server: on 2026-07-28 they answer
    ``input_required`` results instead of requests."""
    return {
        "sampling": lambda params: {"role": "assistant", "model": "test",
                                    "content": {"type": "text", "text": "sampled"}},
        "elicitation": lambda params: {"action": "accept", "content": {"name": "Ada"}},
        "roots": lambda: [{"uri": "file:///work", "name": "work"}],
    }


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("transport", ["http", "ws", "stdio"])
@pytest_twisted.ensureDeferred
async def test_the_same_callbacks_answer_the_server_and_subscriptions_work(
        services, http_url, ws_url, transport, era):
    target = {"http": {"url": http_url}, "ws": {"url": ws_url, "ping_interval": 0, "ping_timeout": 0},
              "stdio": {"command": STDIO_COMMAND, "stderr": lambda line: None}}[transport]
    client = await services.client(era=era, **target, **answering_callbacks())
    assert (await client.call_tool("sample_llm", {"prompt": "hi"}))["content"][0]["text"] == "sampled"
    assert (await client.call_tool("ask_user", {"question": "name?"}))["content"][0]["text"] == "Ada"
    roots = await client.call_tool("list_client_roots")
    assert "file:///work" in roots["content"][0]["text"]
    if transport == "stdio":
        return  # the child is another process: nothing here can make it announce a change
    updates: list[str] = []
    await client.subscribe("demo://readme", updates.append)
    for _ in range(200):  # bounded: the notification comes within a few turns
        if updates:
            break
        demo_app.notify_resource_updated("demo://readme")
        await task.deferLater(reactor, 0.01, lambda: None)
    assert updates and set(updates) == {"demo://readme"}
    await client.unsubscribe("demo://readme")


@pytest_twisted.ensureDeferred
async def test_on_2026_07_28_a_tool_not_listed_yet_is_listed_before_it_is_called(services, http_url):
    client = await services.client(http_url, era="2026-07-28")
    assert client.tool_headers == {}
    assert (await client.call_tool("echo", {"text": "hi"}))["content"][0]["text"] == "hi"
    assert client.tool_headers["echo"] == {}  # listed on the way: echo mirrors no argument


def waiting_app() -> tuple[MCPServer, list[str]]:
    """An app whose ``wait`` tool never ends on its own; ``ended`` records
    how each call ended on the server's side."""
    app = MCPServer("waiting", "1.0")
    ended: list[str] = []

    @app.tool()
    def wait() -> Deferred[str]:
        """Wait until cancelled."""
        return Deferred(lambda d: ended.append("cancelled"))

    return app, ended


@pytest_twisted.async_yield_fixture(params=["json", "always-stream"])
async def waiting_server(request):
    app, ended = waiting_app()
    _, http_resource, port = await serve(app, HTTPSettings(always_stream=request.param == "always-stream"))
    base = f"127.0.0.1:{port.getHost().port}/mcp"
    yield {"http": f"http://{base}", "ws": f"ws://{base}"}, ended
    http_resource.close_all()
    await port.stopListening()


@pytest.mark.parametrize("era", ERAS)
@pytest.mark.parametrize("scheme", ["http", "ws"])
@pytest.mark.parametrize("ending", ["cancel", "timeout"])
@pytest_twisted.ensureDeferred
async def test_cancelling_or_timing_out_a_call_cancels_it_on_the_server(
        services, waiting_server, scheme, era, ending):
    urls, ended = waiting_server
    client = await services.client(urls[scheme], era=era, ping_interval=0, ping_timeout=0)
    await client.list_tools()
    call = client.call_tool("wait", timeout=0.2 if ending == "timeout" else 30.0)
    if ending == "cancel":
        await task.deferLater(reactor, 0.05, lambda: None)
        call.cancel()
    with pytest.raises(CancelledError if ending == "cancel" else RequestTimedOut):
        await call
    for _ in range(200):  # bounded: the server hears of it within a few turns
        if ended:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert ended == ["cancelled"]
    connection = services.started[-1].connector.current
    assert (await client.list_tools())["tools"]  # the connection outlives the request
    assert services.started[-1].connector.current is connection


@pytest_twisted.ensureDeferred
async def test_a_childs_stderr_is_logged_line_by_line_by_default(services):
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    command = [sys.executable, "-c", "import sys; sys.stderr.write('first\\nsecond\\n')"]
    try:
        with pytest.raises(ConnectionFailed):
            await services.client(command=command, max_attempts=1)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [event["line"] for event in events if event.get("log_format") == "{name}: {line}"]
    assert lines == ["first", "second"]
