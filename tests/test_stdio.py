"""The stdio transport: newline-delimited JSON-RPC on stdin/stdout.

The protocol class is driven over ``StringTransport`` (framing, limits, flow
control, the end of a session); then ``python -m mcp_twisted stdio`` runs as a
real child process on pipes, serving ``server`` below (``--app
tests.test_stdio:server``).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from mcp_twisted import Context, MCPServer
from mcp_twisted.eras import META_CLIENT_CAPABILITIES, META_PROTOCOL_VERSION
from mcp_twisted.stdio import StdioServerProtocol

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0

server = MCPServer("stdio-test", "1.0.0")
peak_output = [0]  # most unread stdout bytes seen by blob(), in the child process


@server.tool()
def echo(text: str) -> str:
    """Say it back."""
    return text


@server.tool()
def chatty(text: str) -> str:
    """Writes to stdout three ways; none may reach the protocol stream."""
    print("print() from a tool")
    os.write(1, b"os.write(1) from a tool\n")
    subprocess.run([sys.executable, "-c", "print('a child process')"], check=True)
    return text


@server.tool()
async def wait_forever() -> str:
    """Runs until cancelled."""
    await Deferred()
    return "never"


@server.tool()
async def count(steps: int, ctx: Context) -> int:
    """Reports each step, at the client's pace."""
    for step in range(1, steps + 1):
        await ctx.report_progress(step, steps)
    return steps


@server.tool()
def blob(size: int, ctx: Context) -> str:
    """A large answer; notes how much output was waiting for the client."""
    buffered = getattr(ctx.session.flow, "buffered_bytes", lambda: 0)()
    peak_output[0] = max(peak_output[0], buffered)
    return "x" * size


@server.tool()
def output_peak() -> int:
    """What blob() saw."""
    return peak_output[0]


def request(request_id: Any, method: str, params: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def call(request_id: Any, tool: str, progress_token: Any = None, **arguments: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": tool, "arguments": arguments}
    if progress_token is not None:
        params["_meta"] = {"progressToken": progress_token}
    return request(request_id, "tools/call", params)


INITIALIZE = request("init", "initialize", {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "0"}})
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def line(message: Any) -> bytes:
    return json.dumps(message).encode() + b"\n"


# -- the protocol, without a process ----------------------------------------


class SlowReader(StringTransport):
    """A stdout whose reader takes output only when told: any unread output
    pauses the producer, as StandardIO's writer does past its buffer size."""

    def writeSequence(self, data: Any) -> None:
        super().writeSequence(data)
        if self.producer is not None and not self.producer.paused:
            self.producer.pauseProducing()

    def read(self) -> list[dict[str, Any]]:
        """The client reads everything written so far."""
        messages = parse(self)
        self.producer.resumeProducing()
        return messages


def parse(transport: StringTransport) -> list[dict[str, Any]]:
    """What was written, one JSON message per line; clears the transport."""
    data = transport.value()
    transport.clear()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(text) for text in data.splitlines()]


def connect(transport: StringTransport | None = None, **limits: Any) -> tuple[StdioServerProtocol, Any]:
    protocol = StdioServerProtocol(server, task.Clock(), **limits)
    transport = transport if transport is not None else StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def initialized(transport: StringTransport | None = None, **limits: Any) -> tuple[StdioServerProtocol, Any]:
    protocol, transport = connect(transport, **limits)
    protocol.dataReceived(line(INITIALIZE) + line(INITIALIZED))
    (answer,) = parse(transport)
    assert answer["result"]["serverInfo"]["name"] == "stdio-test"
    return protocol, transport


def test_initialize_and_call_a_tool_one_message_per_line():
    protocol, transport = initialized()
    assert transport.producer is protocol and transport.streaming
    protocol.dataReceived(line(call(1, "echo", text="hi")) + line(request(2, "tools/list"))[:-5])
    assert parse(transport) == [{"jsonrpc": "2.0", "id": 1, "result": {"content": [
        {"type": "text", "text": "hi"}]}}]
    protocol.dataReceived(line(request(2, "tools/list"))[-5:])  # the rest of the line
    (tools,) = parse(transport)
    assert "echo" in [tool["name"] for tool in tools["result"]["tools"]]


def test_blank_lines_and_crlf_are_accepted():
    protocol, transport = initialized()
    protocol.dataReceived(b"\n  \r\n" + json.dumps(request(1, "ping")).encode() + b"\r\n")
    assert parse(transport) == [{"jsonrpc": "2.0", "id": 1, "result": {}}]


def test_invalid_json_is_a_parse_error_and_the_session_goes_on():
    protocol, transport = initialized()
    protocol.dataReceived(b"{not json\n" + line(request(1, "ping")))
    error, pong = parse(transport)
    assert error["id"] is None and error["error"]["code"] == -32700
    assert pong == {"jsonrpc": "2.0", "id": 1, "result": {}}


def test_a_line_over_the_limit_gets_an_error_and_the_next_line_works():
    protocol, transport = initialized(max_message_size=200)
    protocol.dataReceived(line(call(1, "echo", text="x" * 300)) + line(request(2, "ping")))
    error, pong = parse(transport)
    assert error["id"] is None
    assert error["error"]["code"] == -32600 and error["error"]["data"] == {"limit": 200}
    assert pong["id"] == 2 and pong["result"] == {}


def test_a_long_line_is_refused_as_it_passes_the_limit_and_never_kept():
    protocol, transport = initialized(max_message_size=200)
    protocol.dataReceived(b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": "' + b"x" * 100)
    assert parse(transport) == []
    protocol.dataReceived(b"x" * 100)  # past the limit, no newline yet: answered now
    (error,) = parse(transport)
    assert error["error"]["code"] == -32600
    for _ in range(100):  # the rest of the line is dropped as it comes, not buffered
        protocol.dataReceived(b"x" * 1000)
    assert len(protocol._buffer) == 0
    protocol.dataReceived(b'x"}\n' + line(request(2, "ping")))
    assert parse(transport) == [{"jsonrpc": "2.0", "id": 2, "result": {}}]


def test_an_answer_over_the_limit_becomes_an_error():
    protocol, transport = initialized(max_message_size=200)
    protocol.dataReceived(line(call(1, "blob", size=500)))
    (answer,) = parse(transport)
    assert answer["id"] == 1 and answer["error"]["code"] == -32603


def test_a_paused_transport_makes_awaited_progress_wait():
    protocol, transport = connect(SlowReader())
    protocol.dataReceived(
        line(INITIALIZE) + line(INITIALIZED) + line(call(1, "count", progress_token="t", steps=3)))
    # The answer to initialize fills the client's pipe: the other lines wait.
    assert [m["id"] for m in transport.read()] == ["init"]
    # Then the first notification fills it: the handler waits.
    assert [m["params"]["progress"] for m in transport.read()] == [1]
    assert transport.producerState == "paused"  # and stdin is not read meanwhile
    assert [m["params"]["progress"] for m in transport.read()] == [2]
    assert [m["params"]["progress"] for m in transport.read()] == [3]
    assert transport.read() == [{"jsonrpc": "2.0", "id": 1, "result": {
        "content": [{"type": "text", "text": "3"}]}}]
    assert transport.producerState == "producing"


def test_lines_read_while_paused_are_handled_on_resume():
    protocol, transport = initialized()
    protocol.pauseProducing()
    protocol.dataReceived(line(request(1, "ping")) + line(request(2, "ping")))
    assert parse(transport) == []
    protocol.resumeProducing()
    assert [m["id"] for m in parse(transport)] == [1, 2]


def test_stdin_closed_cancels_running_handlers_and_flushes():
    protocol, transport = initialized()
    protocol.dataReceived(line(call(1, "wait_forever")))
    finished = protocol.when_finished()
    protocol.readConnectionLost()
    assert protocol.session.in_flight == 0 and parse(transport) == []  # cancelled, not answered
    assert transport.disconnecting and transport.producer is None  # flushing stdout, then closing
    assert not finished.called
    protocol.connectionLost(Failure(Exception("closed")))
    assert finished.called


def test_output_nobody_reads_does_not_keep_the_session_alive():
    protocol, _ = initialized()
    finished = protocol.when_finished()
    protocol.readConnectionLost()
    protocol.clock.advance(protocol.flush_timeout)  # stdout never drained
    assert finished.called


def test_shut_down_answers_running_requests_then_closes():
    protocol, transport = initialized()
    protocol.dataReceived(line(call(1, "wait_forever")))
    done = protocol.shut_down()
    (answer,) = parse(transport)
    assert answer["id"] == 1 and answer["error"]["code"] == -32003
    protocol.dataReceived(line(request(2, "ping")))  # too late: not read any more
    assert parse(transport) == []
    protocol.connectionLost(Failure(Exception("closed")))
    assert done.called and protocol.shut_down().called


def test_shut_down_answers_requests_held_while_the_client_was_behind():
    # Read in one chunk while stdout was full: every request gets its answer.
    protocol, transport = initialized()
    protocol.pauseProducing()
    held = line(call(1, "echo", text="a")) + line(request(2, "ping"))
    protocol.dataReceived(held + b'{"jsonrpc": "2.0", "id": 3')  # and the start of a line
    protocol.shut_down()
    refused, pong = parse(transport)
    assert (refused["id"], refused["error"]["code"]) == (1, -32003)
    assert pong == {"jsonrpc": "2.0", "id": 2, "result": {}}  # a ping is answered even then


def test_shut_down_ends_listen_streams_with_their_result():
    # As the network services drain: a 2026-07-28 listen stream gets its
    # result and notifications/cancelled, not an error.
    protocol, transport = connect()
    envelope = {META_PROTOCOL_VERSION: "2026-07-28", META_CLIENT_CAPABILITIES: {}}
    protocol.dataReceived(line(request("listen", "subscriptions/listen", {
        "_meta": envelope, "notifications": {"toolsListChanged": True}})))
    parse(transport)  # the acknowledgement
    protocol.shut_down()
    cancelled, answer = parse(transport)
    assert cancelled["method"] == "notifications/cancelled" and cancelled["params"]["requestId"] == "listen"
    assert answer["id"] == "listen" and answer["result"]["resultType"] == "complete"


def test_stdout_closed_ends_the_session_at_once():
    protocol, transport = initialized()
    protocol.dataReceived(line(call(1, "wait_forever")))
    finished = protocol.when_finished()
    protocol.writeConnectionLost()
    assert finished.called and protocol.session.in_flight == 0
    assert transport.disconnecting


# -- a real process ---------------------------------------------------------


class ServerProcess:
    """``python -m mcp_twisted stdio`` (or another command line) on pipes.

    Stdout is read only when an answer is asked for, as a client that is
    busy would, so that the server's flow control can be seen.
    """

    def __init__(self, argv: list[str], cwd: Path, stderr: Path) -> None:
        self.stderr_path = stderr
        with stderr.open("wb") as errors:
            self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=errors, cwd=cwd)
        self._unread = bytearray()
        self._eof = False

    def _line(self) -> bytes | None:
        """The next line of stdout; None at its end."""
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + TIMEOUT
        while b"\n" not in self._unread and not self._eof:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"nothing on stdout in {TIMEOUT:g} s; stderr:\n{self.stderr}"
            if select.select([fd], [], [], remaining)[0]:
                chunk = os.read(fd, 1 << 16)
                self._unread += chunk
                self._eof = not chunk
        if self._eof and b"\n" not in self._unread:
            assert not self._unread, f"an unfinished line at the end: {bytes(self._unread[:100])!r}"
            return None
        end = self._unread.index(b"\n") + 1
        raw = bytes(self._unread[:end])
        del self._unread[:end]
        return raw

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def send(self, *messages: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(b"".join(line(m) for m in messages))
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        raw = self._line()
        assert raw is not None, f"stdout closed; stderr:\n{self.stderr}"
        return json.loads(raw)

    def answer(self, request_id: Any) -> dict[str, Any]:
        """The answer to ``request_id``, skipping notifications."""
        while True:
            message = self.receive()
            if message.get("id") == request_id and "method" not in message:
                return message

    def initialize(self) -> None:
        self.send(INITIALIZE)
        assert self.answer("init")["result"]["serverInfo"]["name"] == "stdio-test"
        self.send(INITIALIZED)

    def close_stdin(self) -> int:
        """Close stdin; the exit status (stdout must hold nothing more)."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        return self.wait()

    def wait(self) -> int:
        status = self.process.wait(timeout=TIMEOUT)
        assert self._line() is None, "output after the last answer"
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def spawn(tmp_path):
    started: list[ServerProcess] = []

    def start(*options: str, command: tuple[str, ...] = (sys.executable, "-m", "mcp_twisted", "stdio"),
              cwd: Path = ROOT) -> ServerProcess:
        process = ServerProcess([*command, *options], cwd, tmp_path / f"stderr-{len(started)}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


APP = ("--app", "tests.test_stdio:server")


def test_process_serves_until_stdin_closes(spawn):
    server_process = spawn(*APP)
    server_process.initialize()
    server_process.send(call(1, "echo", text="héllo"))
    assert server_process.answer(1)["result"]["content"][0]["text"] == "héllo"
    assert server_process.close_stdin() == 0
    assert "stdin closed" in server_process.stderr


def test_print_in_a_tool_does_not_reach_stdout(spawn):
    server_process = spawn(*APP)
    server_process.initialize()
    server_process.send(call(1, "chatty", text="quiet"), request(2, "ping"))
    # receive() parses every line: anything stray on stdout would fail here.
    assert server_process.receive() == {"jsonrpc": "2.0", "id": 1, "result": {
        "content": [{"type": "text", "text": "quiet"}]}}
    assert server_process.receive() == {"jsonrpc": "2.0", "id": 2, "result": {}}
    assert server_process.close_stdin() == 0
    for text in ("print() from a tool", "os.write(1) from a tool", "a child process"):
        assert text in server_process.stderr


def test_sigterm_answers_the_running_request_and_exits(spawn):
    server_process = spawn(*APP)
    server_process.initialize()
    server_process.send(call(1, "wait_forever"), request(2, "ping"))
    assert server_process.answer(2)["result"] == {}  # so the call is running
    server_process.process.send_signal(signal.SIGTERM)
    answer = server_process.answer(1)
    assert answer["error"]["code"] == -32003
    assert server_process.wait() == 0


def test_a_client_that_stops_reading_pauses_the_server(spawn):
    server_process = spawn(*APP, "--max-message-size", "1M")
    server_process.initialize()
    size, requests = 64 * 1024, 100  # 6.4 MB of answers if nothing held them back
    server_process.send(*(call(i, "blob", size=size) for i in range(requests)))
    answers = [server_process.answer(i) for i in range(requests)]  # read only now
    assert all(len(answer["result"]["content"][0]["text"]) == size for answer in answers)
    server_process.send(call("peak", "output_peak"))
    peak = int(server_process.answer("peak")["result"]["content"][0]["text"])
    assert peak < 4 * size  # the write buffer's mark and an answer or two, not 6.4 MB
    assert server_process.close_stdin() == 0


def test_a_bad_app_is_one_line_and_status_1(spawn):
    server_process = spawn("--app", "tests.no_such_module:server")
    assert server_process.wait() == 1
    assert server_process.stderr.splitlines() == [
        "mcpws: error: --app 'tests.no_such_module:server': cannot import 'tests.no_such_module': "
        "No module named 'tests.no_such_module'"]


def test_console_script_with_app_dir(spawn, tmp_path):
    script = Path(sys.executable).parent / "mcpws-stdio"
    assert script.exists(), "pip install . installs the mcpws-stdio script"
    server_process = spawn("--app-dir", str(ROOT), *APP, command=(str(script),), cwd=tmp_path)
    server_process.initialize()
    server_process.send(call(1, "echo", text="hi"))
    assert server_process.answer(1)["result"]["content"][0]["text"] == "hi"
    assert server_process.close_stdin() == 0
