"""The client's stdio transport: a server launched as a child process.

Messages are lines of JSON on the child's stdin and stdout; what it writes
on stderr is logged line by line (or handed to a callable). Closing the
connection closes the child's stdin, which tells a well-behaved server to
exit; one that has not exited after ``close_timeout`` seconds gets SIGTERM,
and SIGKILL after as long again. A child that exits on its own, or closes its
stdout, is a lost connection: the service starts a new one, with backoff.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IProcessTransport
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcp_twisted.client._api import MCPClient
from mcp_twisted.client._connection import Connector, SessionConnection
from mcp_twisted.client._lifecycle import ConnectionState

__all__ = ["StdioConnection", "StdioConnector"]

log = Logger()

# Seconds between a child's stdout closing and its connection being given up
# for lost: a child that crashed closes stdout just before it ends, and how it
# ended (its exit status) is the better reason to give.
STDOUT_GRACE = 0.5


class StdioConnection(SessionConnection, ProcessProtocol):
    """One child process carrying one client session."""

    transport: IProcessTransport | None

    def __init__(self, connector: StdioConnector) -> None:
        self._init_connection()
        self.connector = connector
        self.client = connector.client
        self.target = self.era_key = connector.target
        self._buffer = b""
        self._stderr = b""
        self._timers: list[IDelayedCall] = []
        self._stdout_closed: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self._open_session(self._write)

    def _write(self, data: bytes, related: object = None, answer: bool = False) -> None:
        if self.transport is not None and self.connection_state is not ConnectionState.CLOSED:
            self.transport.write(data + b"\n")

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > self.connector.max_message_size:
            self.failure_reason = f"the server wrote a line over {self.connector.max_message_size} bytes"
            self._buffer = b""
            self._kill("KILL")
            return
        for line in lines:
            if line.strip() and self.session is not None:
                self.session.receive(line)

    def errReceived(self, data: bytes) -> None:
        self._stderr += data
        *lines, self._stderr = self._stderr.split(b"\n")
        self._stderr = self._stderr[-self.connector.max_message_size:]
        for line in lines:
            self.connector.stderr(line.decode("utf-8", "replace").rstrip("\r"))

    def outConnectionLost(self) -> None:
        """A child that closed its stdout can answer nothing more, even if it
        lives on: unless it ends within ``STDOUT_GRACE``, the connection is
        lost, and the child is ended as on close."""
        self._stdout_closed = self.client.clock.callLater(STDOUT_GRACE, self._stdout_gone)

    def _stdout_gone(self) -> None:
        self._stdout_closed = None
        if self.connection_state not in (ConnectionState.INITIALIZING, ConnectionState.READY):
            return  # closing already
        assert self.session is not None  # made when the child started (INITIALIZING)
        # Its requests fail now; how the child ended is told when it has (processEnded).
        self.session.close(self.failure_reason or "the server closed its stdout")
        self._end_transport()

    def processEnded(self, reason: Failure) -> None:
        if self._stdout_closed is not None and self._stdout_closed.active():
            self._stdout_closed.cancel()
        self._stdout_closed = None
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        if self._stderr:
            self.connector.stderr(self._stderr.decode("utf-8", "replace"))
        if self.failure_reason is None and not reason.check(ProcessDone):
            self.failure_reason = f"the server process ended: {reason.getErrorMessage()}"
        elif self.failure_reason is None:
            self.failure_reason = "the server process exited"
        self._connection_gone(reason)

    def _end_transport(self) -> None:
        if self.transport is None or self._timers:
            return  # no child, or being ended already
        self.transport.closeStdin()
        timeout = self.connector.close_timeout
        clock = self.client.clock
        self._timers = [clock.callLater(timeout, self._kill, "TERM"),
                        clock.callLater(2 * timeout, self._kill, "KILL")]

    def _drop(self) -> None:
        self._kill("KILL")

    def _kill(self, signal: str) -> None:
        if self.transport is None:
            return
        with contextlib.suppress(ProcessExitedAlready):
            self.transport.signalProcess(signal)


def _log_stderr(name: str) -> Callable[[str], object]:
    def write(line: str) -> None:
        log.info("{name}: {line}", name=name, line=line)

    return write


class StdioConnector(Connector):
    """Launches ``command`` for ``MCPClientService``, once per connection.

    :param env: the child's environment (default: this process's).
    :param stderr: called with each line the child writes on stderr
        (default: logged at info level under the command's name).
    """

    def __init__(
        self,
        reactor: Any,
        client: MCPClient,
        command: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stderr: Callable[[str], object] | None = None,
        close_timeout: float = 2.0,
        max_message_size: int = 4 * 1024 * 1024,
    ) -> None:
        if not command:
            raise ValueError("command= needs at least the program to run")
        executable = shutil.which(command[0])
        if executable is None:
            raise ValueError(f"Program not found: {command[0]!r}")
        self.reactor = reactor
        self.client = client
        self.executable = executable
        self.command = list(command)
        self.target = " ".join(self.command)
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.stderr = stderr or _log_stderr(os.path.basename(command[0]))
        self.close_timeout = close_timeout
        self.max_message_size = max_message_size

    def connect(self) -> Deferred[Any]:
        connection = StdioConnection(self)
        started = self._track(connection)
        self.reactor.spawnProcess(connection, self.executable, self.command, env=self.env, path=self.cwd)
        return started
