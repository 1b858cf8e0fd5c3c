"""The stdio transport: one MCP session over standard input and output.

For clients that launch a local server as a child process (desktop and IDE
assistants): newline-delimited JSON-RPC, one message per line in UTF-8, read
from stdin and written to stdout; logs go to stderr. The app, the ``Session``
and its limits are the same as over WebSocket; only the framing differs.

``python -m mcp_twisted stdio --app pkg.mod:server`` (or ``mcpws-stdio``)
runs ``run()``; ``serve_stdio()`` serves an app on a reactor you run yourself.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.stdio import StandardIO
from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from mcp_twisted import jsonrpc, tap
from mcp_twisted.hosting import Limits, SessionHost, WriteWaiters, unsent_bytes
from mcp_twisted.jsonrpc import INVALID_REQUEST, RPCError
from mcp_twisted.protocol import SERVER_SHUTTING_DOWN
from mcp_twisted.server import MCPServer
from mcp_twisted.session import Session, State
from mcp_twisted.tap import _size
from mcp_twisted.websocket import DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_OUTPUT_BUFFER

if TYPE_CHECKING:
    from twisted.internet.interfaces import IConsumer, ITransport

    class IStdioTransport(ITransport, IConsumer, IPushProducer):
        """For annotations only (no transport declares it), like Twisted's own
        ``portforward._MakeTypesHappy``: what ``StandardIO`` provides."""

__all__ = [
    "DEFAULT_FLUSH_TIMEOUT",
    "Options",
    "StdioServerProtocol",
    "claim_stdio",
    "run",
    "serve_stdio",
]

# Seconds the last output may take to reach the client once the session
# ends; a client that stopped reading must not keep the process alive.
DEFAULT_FLUSH_TIMEOUT = 5.0

log = Logger()


@implementer(IPushProducer, IHalfCloseableProtocol)
class StdioServerProtocol(Protocol):
    """One MCP session over a byte stream of newline-delimited JSON-RPC.

    The framing is done here rather than by ``LineReceiver``, which copies its
    whole buffer on every read (a 4 MiB message costs over a second of CPU
    in 8 KiB pipe reads) and, after a line over its limit, hands back the
    rest of the input from inside its re-entrancy guard. Here each byte is
    searched once, and a line over ``max_message_size`` is answered with an
    error as soon as it passes the limit, then skipped up to its newline
    without being kept.

    Output flow: the protocol is its transport's streaming producer, as the
    WebSocket protocol is over TCP. When the client falls behind in reading
    stdout, the transport pauses us: we stop reading requests, and handlers
    awaiting ``ctx.report_progress`` or ``ctx.log`` wait (``OutputFlow``).
    """

    session: Session | None = None
    transport: IStdioTransport  # set by makeConnection, before connectionMade

    def __init__(
        self,
        app: MCPServer,
        clock: IReactorTime,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_in_flight: int = 64,
        handler_timeout: float | None = None,
        max_batch_size: int = 64,
        max_output_buffer: int = DEFAULT_MAX_OUTPUT_BUFFER,
        flush_timeout: float = DEFAULT_FLUSH_TIMEOUT,
    ) -> None:
        """
        :param max_message_size: bytes in one line (one message, newline not
            counted); a longer line gets a ``-32600`` error and is skipped.
            Answers over it become errors, as over WebSocket.
        :param max_output_buffer: bytes of unwritten output over which
            progress and log notifications are dropped rather than queued.
        :param flush_timeout: seconds the last output may take to drain at
            the end before we stop waiting for it.
        """
        self.host = SessionHost(
            app, limits=Limits(max_sessions=1, max_in_flight=max_in_flight, handler_timeout=handler_timeout,
                               max_message_size=max_message_size, max_batch_size=max_batch_size),
            clock=clock, client_request_timeout=app.client_request_timeout)
        self.clock = clock
        self.max_message_size = max_message_size
        self.max_output_buffer = max_output_buffer
        self.flush_timeout = flush_timeout
        self.paused = False
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer known to hold no newline
        self._discarding = False  # inside a line that was refused as too long
        self._closing = False  # no more input is handled, output is flushing
        self._ended = False
        self._flush_timer: IDelayedCall | None = None
        self._writable_waiters = WriteWaiters()
        self._finished_waiters: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        self.session = self.host.open_session(self._send, transport="stdio", peer="stdio", flow=self)
        self.transport.registerProducer(self, True)

    # -- input --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        self._buffer += data
        self._take_lines()

    def _take_lines(self, held: bool = False) -> None:
        """Hand every complete line to the session, unless paused (``held``:
        paused or not, at shutdown) or closing."""
        buffer = self._buffer
        while (held or not self.paused) and not self._closing:
            end = buffer.find(b"\n", self._scanned)
            if end < 0:
                if self._discarding:
                    buffer.clear()  # more of a line already refused
                elif len(buffer) > self.max_message_size:
                    self._refuse_line()
                    buffer.clear()
                    self._discarding = True
                self._scanned = len(buffer)
                return
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            self._scanned = 0
            if self._discarding:
                self._discarding = False
            elif len(line) > self.max_message_size:
                self._refuse_line()
            elif line and not line.isspace():  # blank lines between messages are harmless
                assert self.session is not None  # made in connectionMade, before any input
                self.session.receive(line)

    def _refuse_line(self) -> None:
        limit = self.max_message_size
        log.info("Refused a message over the {limit}-byte limit", limit=limit)
        error = RPCError(INVALID_REQUEST, f"Message too large (limit {limit} bytes)", {"limit": limit})
        self._send(jsonrpc.encode(jsonrpc.error_response(None, error)))

    # -- output -------------------------------------------------------------

    def _send(self, data: bytes, related: object = None, answer: bool = False) -> None:
        # stdin/stdout is one stream: which request a message belongs to does not matter.
        if not self._ended:
            self.transport.writeSequence((data, b"\n"))

    # IPushProducer, driven by the transport's write buffer: lines already
    # read when the pause came stay in our buffer (at most one read's worth,
    # as the transport stops reading too).
    def pauseProducing(self) -> None:
        self.paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        self._release_writers()
        self._take_lines()
        if not self.paused and not self._closing:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """Stdout is gone; ``writeConnectionLost`` or ``connectionLost`` ends the session."""
        self.paused = True

    # OutputFlow, for the session.
    def when_writable(self) -> Deferred[None]:
        if not self.paused or self._ended:
            return succeed(None)
        return self._writable_waiters.wait()

    def congested(self) -> bool:
        return self.paused and self.buffered_bytes() > self.max_output_buffer

    def buffered_bytes(self) -> int:
        """Bytes written to stdout that the client has not read yet."""
        return unsent_bytes(self.transport)

    def _release_writers(self) -> None:
        self._writable_waiters.release()

    # -- the end ------------------------------------------------------------

    def readConnectionLost(self) -> None:
        """Stdin closed: the client is done. Running handlers are cancelled
        (their answers could not be wanted), and what was written is flushed."""
        log.info("stdin closed: ending the session")
        self._stop("stdin closed")

    def writeConnectionLost(self) -> None:
        """Stdout closed: nobody can hear us any more."""
        log.info("stdout closed: ending the session")
        self._closing = True
        if self.session is not None:
            self.session.close("stdout closed")
        self.transport.loseConnection()  # stops reading stdin
        self._end()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._end()

    def shut_down(self) -> Deferred[None]:
        """Stop serving (at SIGTERM), as the network services drain: listen
        streams end with their result, requests read but not handled yet
        (held while the client was behind) and those still running are
        answered with ``-32003``, then output is flushed. Fires once it was,
        or after ``flush_timeout``."""
        if self._ended:
            return succeed(None)
        session = self.session
        if session is not None and session.state is not State.CLOSED:
            self.host.drain()  # the wait for running requests is not taken: they are cancelled below
            self._take_lines(held=True)
            shutting_down = RPCError(SERVER_SHUTTING_DOWN, "Server shutting down before the request finished")
            aborted = session.abort_running(shutting_down)
            if aborted:
                log.info("Shutting down: answered {count} running requests with an error", count=aborted)
        self._stop("server shutting down")
        return self.when_finished()

    def when_finished(self) -> Deferred[None]:
        """Fires once the session is over and its output flushed (or abandoned)."""
        if self._ended:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._finished_waiters.append(waiter)
        return waiter

    def _stop(self, reason: str) -> None:
        """Close the session, stop reading, and close stdout once it is flushed."""
        if self._closing:
            return
        self._closing = True
        if self.session is not None:
            self.session.close(reason)
        # A registered producer would hold the close until it finished.
        self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._flush_timer = self.clock.callLater(self.flush_timeout, self._flush_expired)

    def _flush_expired(self) -> None:
        self._flush_timer = None
        log.warn("Output not read by the client within {timeout:g} s: giving up on it",
                 timeout=self.flush_timeout)
        self._end()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._closing = True
        self._buffer.clear()
        if self._flush_timer is not None and self._flush_timer.active():
            self._flush_timer.cancel()
        self._flush_timer = None
        if self.session is not None:
            self.session.close("stdio closed")
        self._release_writers()  # handlers carry on; what they send now is dropped
        waiters, self._finished_waiters = self._finished_waiters, []
        for waiter in waiters:
            waiter.callback(None)


def serve_stdio(
    app: MCPServer, reactor: Any, *, stdin: int = 0, stdout: int = 1, **limits: Any
) -> StdioServerProtocol:
    """Serve ``app`` on the ``stdin`` and ``stdout`` descriptors until stdin closes.

    ``limits`` are ``StdioServerProtocol``'s keyword arguments. At reactor
    shutdown (SIGTERM) running requests are answered with ``-32003`` before
    the reactor stops. ``when_finished()`` on the result tells when the
    session is over: stop the reactor then, as ``run()`` does.
    """
    protocol = StdioServerProtocol(app, reactor, **limits)
    StandardIO(protocol, stdin=stdin, stdout=stdout, reactor=reactor)  # type: ignore[call-arg]  # mypy sees Twisted's Windows StandardIO, without them
    reactor.addSystemEventTrigger("before", "shutdown", protocol.shut_down)
    return protocol


def claim_stdio() -> tuple[int, int]:
    """Take stdin and stdout for the protocol: returns private copies of
    both descriptors, and points descriptor 0 at /dev/null and 1 at stderr.

    From then on nothing else in the process can read the client's messages
    or write into the protocol stream: not a ``print()`` in a tool, nor a C
    library, nor a child process (the copies are not inherited).
    """
    sys.stdout.flush()
    stdin, stdout = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    try:
        os.dup2(2, 1)
    except OSError:  # no stderr at all: what is printed is lost, not sent
        os.dup2(null, 1)
    os.close(null)
    return stdin, stdout


_TWISTD_OPTIONS = ("app", "app-dir", "max-in-flight", "handler-timeout", "max-batch-size",
                   "max-output-buffer")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve a Model Context Protocol app over stdin/stdout (newline-delimited JSON-RPC), "
        "for clients that launch local servers; logs go to stderr. It ends when stdin closes. "
        "Without --app it serves the built-in demo. Example: python -m mcp_twisted stdio "
        "--app-dir /path/to/project --app weather:server"
    )

    # The options twistd mcpws has too, taken from it so that they stay alike.
    optParameters: list[Any] = [
        *(option for option in tap.Options.optParameters if option[0] in _TWISTD_OPTIONS),
        ["max-message-size", None, DEFAULT_MAX_MESSAGE_SIZE,
         "Longest message (one line) in bytes (K, M suffixes allowed); a longer one gets an error.", _size],
    ]


def _log_to_stderr() -> None:
    """Twisted's log (and anything printed) as text lines on stderr, from info up."""
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=True)


def run(options: Options) -> NoReturn:
    """Serve the app of ``options`` over this process's stdin and stdout.

    Exits 0 when stdin closes or at SIGTERM, 1 with one line on stderr when
    ``--app`` cannot be loaded (``tap.StartupError``, as for ``twistd mcpws``).
    """
    stdin, stdout = claim_stdio()  # before the app is imported: it may print
    app = tap.load_app(options["app"], options["app-dir"])
    _log_to_stderr()
    limits = {
        "max_message_size": options["max-message-size"],
        "max_in_flight": options["max-in-flight"],
        "handler_timeout": options["handler-timeout"] or None,
        "max_batch_size": options["max-batch-size"],
        "max_output_buffer": options["max-output-buffer"],
    }

    def serve(reactor: Any) -> Deferred[None]:
        log.info("Serving {name} {version} over stdio", name=app.name, version=app.version)
        return serve_stdio(app, reactor, stdin=stdin, stdout=stdout, **limits).when_finished()

    task.react(serve)
