"""The reconnecting service: keeps an MCP session alive over any transport.

``MCPClientService`` is Twisted's ``ClientService`` for which a connection is
an MCP session: its endpoint (``_SessionEndpoint``) reports a connection only
once the transport is up and the session is open (era found, handshake or
discovery done), so a refused WebSocket upgrade, an HTTP 401/403/404/5xx, a
failed ``initialize`` or a child process that died is a failed attempt like
a refused TCP connection, and ``ClientService`` grows the backoff and counts it.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Generator, Sequence
from typing import Any
from urllib.parse import urlsplit

from twisted.application.internet import ClientService
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mcp_twisted.client._api import ConnectionFailed, MCPClient
from mcp_twisted.client._connection import Connector
from mcp_twisted.client._http import HTTPConnector
from mcp_twisted.client._lifecycle import ConnectionState
from mcp_twisted.client._oauth import OAuthClient
from mcp_twisted.client._stdio import StdioConnector
from mcp_twisted.client._websocket import MCPClientFactory, WebSocketConnector, endpoint_for_url

__all__ = ["MCPClientService", "backoff_policy"]

log = Logger()

# Seconds a session must stay up for the failure count to start afresh: a
# server that drops every session right after the handshake is retried with
# growing delays.
MIN_UPTIME = 10.0


def backoff_policy(
    initial_delay: float = 0.5,
    max_delay: float = 30.0,
    factor: float = 2.0,
    jitter: bool = True,
    random_fraction: Callable[[], float] = random.random,
) -> Callable[[int], float]:
    """Delay before retry ``attempt`` (1 for the first retry).

    Exponential growth capped at ``max_delay``; with ``jitter`` the delay is
    drawn uniformly from ``[0, capped)`` ("full jitter"), which spreads out
    clients that lost the same server at the same moment.
    """

    def policy(attempt: int) -> float:
        capped = min(max_delay, initial_delay * factor ** min(attempt - 1, 64))
        return capped * random_fraction() if jitter else capped

    return policy


@implementer(IStreamClientEndpoint)
class _SessionEndpoint:
    """``MCPClientService``'s endpoint: the connections it makes are sessions.

    ``connect`` has the connector start a connection and fires once its
    session is open, or fails with why not (refused, TLS, HTTP 401, a failed
    ``initialize``, a child that exited): to ``ClientService`` all of these
    are failed attempts. For each session, ``ClientService`` is given a
    stand-in protocol on the connection's transport (stopping the service
    closes it) that is told when the connection is lost (the service
    reconnects).

    Not ``ClientService(prepareConnection=...)``: ClientService leaves a
    connection whose preparation failed open, and has no transition for its
    ``connectionLost`` in any state it can be in by then (Connecting,
    Waiting, Stopped), so closing it logs automat's ``NoTransition`` as an
    unhandled error (Twisted 26.10). Here it only ever sees sessions.
    """

    def __init__(self, connector: Connector, service: MCPClientService) -> None:
        self.connector = connector
        self.service = service

    def __repr__(self) -> str:  # ClientService logs "Scheduling retry 1 to connect <this> in ..."
        return f"<MCP session to {self.connector.target}>"

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        attempt: Deferred[IProtocol] = self.connector.connect()
        return attempt.addCallbacks(self._session_up, self.service._attempt_failed, callbackArgs=(factory,))

    def _session_up(self, connection: Any, factory: IProtocolFactory) -> IProtocol:
        transport = self.connector.handle(connection)
        stand_in = factory.buildProtocol(transport.getPeer())
        assert stand_in is not None  # ClientService's factory always builds one
        stand_in.makeConnection(transport)

        def lost(_: None) -> None:
            assert connection.lost_reason is not None  # set before when_closed() fires
            self.service._session_lost()  # before ClientService picks the delay
            stand_in.connectionLost(connection.lost_reason)

        ended = connection.when_closed().addCallback(lost)
        ended.addCallback(lambda _: self.service._session_ended())
        self.service._session_up()
        return stand_in


class MCPClientService(ClientService):
    """Keeps an MCP session alive: connect, open the session, reconnect.

    The transport is picked by ``url`` (``ws://``/``wss://``: WebSocket,
    ``http://``/``https://``: Streamable HTTP) or by ``command=`` (a server
    launched as a child process, spoken to over stdio). TLS options
    (``tls_ca``, ``tls_client_cert``, ``tls_client_key``) apply to ``wss://``
    and ``https://`` alike; ``headers`` go with the upgrade or every HTTP request.

    Twisted's ``ClientService``, with one change that matters: a connection
    counts as a success only once the session is open. A server that
    refuses the WebSocket upgrade (401, 403, 404, a wrong subprotocol) or an
    HTTP request (401, 403, 404, 5xx), fails ``initialize``, or a child that
    exits, is retried with growing delays, where ``ClientService`` alone would
    see a working TCP connection and retry at the initial delay forever.

    :param max_attempts: consecutive failed attempts before giving up:
        ``when_ready()`` then fails with ``ConnectionFailed``. ``None``: never.
    :param backoff: ``attempt -> seconds``; see ``backoff_policy``.
    :param command: the server program and its arguments, instead of ``url``;
        ``env``, ``cwd`` and ``stderr`` (a callable given each line the child
        writes there; default: logged) go with it.
    Other keyword arguments go to ``MCPClient`` (handlers, callbacks, ``era``,
    ``request_timeout``, ``wait_for_connection``).

    :param auth: an ``OAuthClient``, for a server that is an OAuth protected
        resource: requests (or the WebSocket upgrade) carry its access token,
        and a 401 or a 403 for a missing scope gets a new one (see
        ``docs/authorization.md``).
    """

    def __init__(
        self,
        reactor: Any,
        url: str | None = None,
        *,
        command: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stderr: Callable[[str], object] | None = None,
        headers: dict[str, str] | None = None,
        tls_ca: str | None = None,
        tls_client_cert: str | None = None,
        tls_client_key: str | None = None,
        backoff: Callable[[int], float] | None = None,
        max_attempts: int | None = None,
        ping_interval: float = 20.0,
        ping_timeout: float = 10.0,
        close_timeout: float = 2.0,
        clock: IReactorTime | None = None,
        endpoint: IStreamClientEndpoint | None = None,
        auth: OAuthClient | None = None,
        **client_options: Any,
    ) -> None:
        self.clock: IReactorTime = clock or reactor
        self.client = MCPClient(self.clock, **client_options)
        self.factory: MCPClientFactory | None = None  # the WebSocket factory, for ws:// and wss://
        self.connector: Connector
        if (url is None) == (command is None):
            raise ValueError("MCPClientService needs a url or a command=, not both")
        scheme = urlsplit(url).scheme if url is not None else None
        if command is not None and auth is not None:
            raise ValueError("auth= is for servers reached by URL, not a command")
        if command is not None:
            self.connector = StdioConnector(reactor, self.client, command, env=env, cwd=cwd, stderr=stderr,
                                            close_timeout=close_timeout)
        elif scheme in ("http", "https"):
            assert url is not None  # the scheme came from it
            self.connector = HTTPConnector(reactor, self.client, url, headers=headers, tls_ca=tls_ca,
                                           tls_client_cert=tls_client_cert, tls_client_key=tls_client_key,
                                           close_timeout=close_timeout, auth=auth)
        else:
            assert url is not None  # not a command
            self.factory = MCPClientFactory(
                self.client, url, headers=headers, ping_interval=ping_interval, ping_timeout=ping_timeout
            )
            if endpoint is None:
                endpoint = endpoint_for_url(reactor, url, tls_ca=tls_ca, tls_client_cert=tls_client_cert,
                                            tls_client_key=tls_client_key)
            self.connector = WebSocketConnector(endpoint, self.factory, auth=auth)
        self.backoff = backoff or backoff_policy()
        self.max_attempts = max_attempts
        self.close_timeout = close_timeout
        self.failures = 0
        self.last_error: str | None = None
        # When the current session came up, and the count its coming up reset.
        self._up_since = 0.0
        self._failures_before = 0
        super().__init__(_SessionEndpoint(self.connector, self), Factory.forProtocol(Protocol),
                         retryPolicy=self._retry_delay, clock=self.clock)

    def startService(self) -> None:
        """Start connecting: a fresh series of attempts, even after a give-up."""
        if self.running:
            return
        self.failures = 0
        self.last_error = None
        self.client.retrying()
        super().startService()
        # An endpoint may fail at once, inside startService: that attempt counts too.
        self._watch(failed=self.failures)

    def when_ready(self) -> Deferred[MCPClient]:
        """Fires with the ``MCPClient`` once connected and initialized."""
        return self.client.when_ready()

    whenReady = when_ready

    def whenConnected(self, failAfterFailures: int | None = None) -> Deferred[Any]:
        """The connection of the session that is up, or of the next one
        (``ClientService`` itself holds a stand-in for it): an
        ``MCPClientProtocol``, ``HTTPConnection`` or ``StdioConnection``."""

        def current(_: IProtocol) -> Any:
            connection = self.connector.current
            assert connection is not None  # ClientService is connected: the session's connection is up
            return connection

        return super().whenConnected(failAfterFailures).addCallback(current)

    def _watch(self, failed: int = 0) -> None:
        """Give up after ``max_attempts`` failed attempts in a row (``failed`` of them made)."""
        if self.max_attempts is None:
            return
        if failed >= self.max_attempts:
            self._give_up()
            return
        super().whenConnected(failAfterFailures=self.max_attempts - failed).addErrback(self._attempts_failed)

    def _attempts_failed(self, failure: Failure) -> None:
        if failure.check(CancelledError):
            return  # the service was stopped
        # This fires inside ClientService's state machine, which cannot be
        # re-entered with stopService(): give up once it has settled.
        self.clock.callLater(0, self._give_up)

    def _give_up(self) -> None:
        error = ConnectionFailed(
            f"Gave up on {self.connector.target} after {self.max_attempts} failed attempts"
            + (f": {self.last_error}" if self.last_error else "")
        )
        log.warn("{error}", error=str(error))
        self._stop(error)

    def _attempt_failed(self, failure: Failure) -> Failure:
        if not failure.check(CancelledError):  # cancelled: the service is stopping
            self.last_error = failure.getErrorMessage()
            log.info("Connection to {url} failed: {error}", url=self.connector.target, error=self.last_error)
        return failure

    def _session_up(self) -> None:
        self._up_since = self.clock.seconds()
        self._failures_before, self.failures = self.failures, 0
        self.last_error = None

    def _session_lost(self) -> None:
        if self.clock.seconds() - self._up_since < MIN_UPTIME:
            self.failures = self._failures_before  # a flapping server: the delays go on growing

    def _session_ended(self) -> None:
        # ClientService is waiting to reconnect by now: count the attempts afresh.
        self._watch()

    def _retry_delay(self, attempt: int) -> float:
        # Counted here rather than ClientService's ``attempt``: that one goes
        # on across a stop and start, and a restart starts a fresh series.
        self.failures += 1
        return self.backoff(self.failures)

    def stopService(self) -> Deferred[None]:
        """Close the session cleanly (1000) and stop reconnecting."""
        return self._stop(ConnectionFailed(f"The client for {self.connector.target} was stopped"))

    @inlineCallbacks
    def _stop(self, error: ConnectionFailed) -> Generator[Deferred[Any], Any, None]:
        protocol = self.connector.current
        if protocol is not None and protocol.connection_state is ConnectionState.READY:
            # Closed and answered before ClientService drops the TCP connection.
            yield self._wait_closed(protocol.close())
        if self.running:
            yield super().stopService()  # cancels an attempt under way (see _abandon)
        if protocol is not None:
            yield self._wait_closed(protocol.when_closed())
        # Nobody waits for a session that will not come.
        self.client.fail_waiters(error)

    @inlineCallbacks
    def _wait_closed(self, closed: Deferred[None]) -> Generator[Deferred[Any], Any, None]:
        """Wait for ``closed``, ``close_timeout`` seconds at most."""
        with contextlib.suppress(defer.TimeoutError):
            yield closed.addTimeout(self.close_timeout, self.clock)
