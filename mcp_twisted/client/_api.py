"""``MCPClient``: the MCP calls a client makes, stable across reconnections.

The client object outlives connections. Each time the transport brings up a
new ``Session`` and finishes the handshake, it is attached here; requests go
to whichever session is current. Requests made while no session is up wait
for the next one (up to their timeout) or fail at once, as configured.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcp_twisted import __version__
from mcp_twisted.jsonrpc import METHOD_NOT_FOUND, RPCError, clip
from mcp_twisted.protocol import LIST_CHANGED_KIND, Method, Notify, check_log_level
from mcp_twisted.session import ConnectionLost, IncomingRequest, RequestTimedOut, Session, State, as_deferred

log = Logger()

ProgressCallback = Callable[[float, "float | None", "str | None"], object]
Handler = Callable[[dict[str, Any]], Any]



class NotConnected(ConnectionLost):
    """No session is up and the request was not allowed to wait for one."""


class ConnectionFailed(Exception):
    """The client gave up connecting; the message says why the last attempt failed."""


class MCPClient:
    """The client side of MCP: call the server, answer its requests.

    Results are the protocol's JSON objects as dicts (e.g. ``call_tool``
    returns ``{"content": [...], "isError"?: bool, "structuredContent"?: ...}``).
    A JSON-RPC error from the server raises ``RPCError`` (``code``,
    ``message``, ``data``); a lost connection raises ``ConnectionLost``; a
    request with no answer in time raises ``RequestTimedOut`` after telling the
    server with ``notifications/cancelled``.

    :param sampling: answers ``sampling/createMessage``; given its params,
        returns the result dict (or a Deferred/coroutine of it). Declares the
        ``sampling`` capability.
    :param roots: returns the client's roots, a list of ``{"uri", "name"?}``;
        declares ``roots``.
    :param elicitation: answers ``elicitation/create`` (``{"action", "content"?}``);
        declares ``elicitation`` (form and URL modes).
    :param on_log: called with each ``notifications/message`` params.
    :param on_list_changed: called with ``"tools"``, ``"resources"`` or
        ``"prompts"`` when the server's list changes.
    :param request_timeout: seconds a request waits for its answer (and for a
        session, if it has to); ``None``: as long as it takes.
    :param wait_for_connection: requests made while disconnected wait for the
        next session (True) or fail at once with ``NotConnected`` (False).
    """

    def __init__(
        self,
        clock: IReactorTime,
        *,
        client_info: dict[str, Any] | None = None,
        sampling: Handler | None = None,
        roots: Callable[[], Any] | None = None,
        elicitation: Handler | None = None,
        on_log: Callable[[dict[str, Any]], object] | None = None,
        on_list_changed: Callable[[str], object] | None = None,
        request_timeout: float | None = 60.0,
        wait_for_connection: bool = True,
    ) -> None:
        self.clock = clock
        self.client_info = client_info or {"name": "mcp-twisted", "version": __version__}
        self.sampling = sampling
        self.roots = roots
        self.elicitation = elicitation
        self.on_log = on_log
        self.on_list_changed = on_list_changed
        self.request_timeout = request_timeout
        self.wait_for_connection = wait_for_connection
        self.session: Session | None = None
        self._subscriptions: dict[str, Callable[[str], object]] = {}
        self._ready_waiters: list[Deferred[MCPClient]] = []
        # Set when the transport gave up: nothing waits for a session after that.
        self._gave_up: Exception | None = None

    # -- connection management (called by the transport) --------------------

    @property
    def capabilities(self) -> dict[str, Any]:
        """What this client declares, derived from the handlers it was given."""
        capabilities: dict[str, Any] = {}
        if self.sampling is not None:
            capabilities["sampling"] = {}
        if self.roots is not None:
            capabilities["roots"] = {"listChanged": True}
        if self.elicitation is not None:
            capabilities["elicitation"] = {"form": {}, "url": {}}
        return capabilities

    @property
    def connected(self) -> bool:
        # A closing session fails its requests before it reports itself closed:
        # code run from those errbacks must already see the client disconnected.
        return self.session is not None and self.session.state is not State.CLOSED

    @property
    def server_info(self) -> dict[str, Any]:
        return self.session.peer_info if self.session else {}

    @property
    def server_capabilities(self) -> dict[str, Any]:
        return self.session.peer_capabilities if self.session else {}

    def start_session(self, session: Session) -> Deferred[dict[str, Any]]:
        """Run the handshake on a new session; on success it becomes current."""

        def attached(result: dict[str, Any]) -> dict[str, Any]:
            self.attach(session)
            return result

        return self.handshake(session).addCallback(attached)

    def handshake(self, session: Session) -> Deferred[dict[str, Any]]:
        """Send ``initialize`` on ``session``; fires with the server's result.

        The session is not used for requests until ``attach``: the transport
        runs its own bookkeeping in between (see ``MCPClientProtocol``).
        """
        return session.initialize(self.client_info, self.capabilities)

    def attach(self, session: Session) -> None:
        """Make an initialized ``session`` current: restore subscriptions,
        then wake whoever waits for a session."""
        self.session = session
        self._gave_up = None

        def not_restored(failure: Failure, uri: str) -> None:
            log.warn("Could not restore subscription to {uri}: {error}",
                     uri=uri, error=failure.getErrorMessage())

        for uri in self._subscriptions:
            # Subscriptions do not survive a connection: restore them.
            session.request(Method.RESOURCES_SUBSCRIBE, {"uri": uri}).addErrback(not_restored, uri)
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.callback(self)

    def when_ready(self) -> Deferred[MCPClient]:
        """Fires with this client once a session is initialized; fails with
        ``ConnectionFailed`` if the transport gave up (or has already)."""
        if self.connected:
            d: Deferred[MCPClient] = Deferred()
            d.callback(self)
            return d
        if self._gave_up is not None:
            return fail(self._gave_up)
        d = Deferred(lambda d: self._ready_waiters.remove(d) if d in self._ready_waiters else None)
        self._ready_waiters.append(d)
        return d

    def fail_waiters(self, error: Exception) -> None:
        """Fail everyone waiting for a session (the transport gave up), and
        everyone who asks from now on, until ``retrying()``."""
        self._gave_up = error
        waiters, self._ready_waiters = self._ready_waiters, []
        for waiter in waiters:
            waiter.errback(error)

    def retrying(self) -> None:
        """The transport tries to connect again: requests may wait once more."""
        self._gave_up = None

    # -- SessionHandler (client role) -------------------------------------

    def describe(self, session: Session) -> dict[str, Any]:
        """Part of ``SessionHandler`` for the server role; a client session never asks."""
        raise TypeError("a client session does not answer initialize")

    def handle_request(self, request: IncomingRequest) -> Any:
        if request.method == Method.SAMPLING_CREATE_MESSAGE and self.sampling is not None:
            return self.sampling(request.params)
        if request.method == Method.ELICITATION_CREATE and self.elicitation is not None:
            return self.elicitation(request.params)
        if request.method == Method.ROOTS_LIST and self.roots is not None:
            return as_deferred(self.roots()).addCallback(lambda roots: {"roots": list(roots)})
        raise RPCError(METHOD_NOT_FOUND, f"Method not found: {clip(request.method)}")

    def handle_notification(self, session: Session, method: str, params: Any) -> None:
        if method == Notify.MESSAGE and self.on_log is not None:
            self.on_log(params)
        elif method == Notify.RESOURCES_UPDATED:
            uri = params.get("uri")
            callback = self._subscriptions.get(uri)
            if callback is not None:
                callback(uri)
        elif method in LIST_CHANGED_KIND and self.on_list_changed is not None:
            self.on_list_changed(LIST_CHANGED_KIND[method])

    def session_ready(self, session: Session) -> None:
        pass

    def session_closed(self, session: Session) -> None:
        if self.session is session:
            self.session = None

    # -- requests ---------------------------------------------------------

    def request(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> Deferred[Any]:
        """Send any request; the typed methods below are built on this."""
        timeout = self.request_timeout if timeout is None else timeout
        if self.connected:
            assert self.session is not None  # connected says so
            return self.session.request(
                method, params, timeout=timeout, on_progress=on_progress)
        if self._gave_up is not None:
            return fail(self._gave_up)
        if not self.wait_for_connection:
            return fail(NotConnected(f"Not connected; {method!r} not sent"))
        started = self.clock.seconds()
        ready = self.when_ready()
        if timeout is not None:
            ready.addTimeout(timeout, self.clock)

        def send(client: MCPClient) -> Deferred[Any]:
            remaining = None if timeout is None else max(0.0, timeout - (self.clock.seconds() - started))
            return client.request(method, params, timeout=remaining, on_progress=on_progress)

        def waited_too_long(failure: Any) -> Any:
            from twisted.internet.defer import TimeoutError

            failure.trap(TimeoutError)
            assert timeout is not None  # only addTimeout fails it so
            raise RequestTimedOut(method, timeout)

        return ready.addCallbacks(send, waited_too_long)

    def ping(self, *, timeout: float | None = None) -> Deferred[dict[str, Any]]:
        return self.request(Method.PING, timeout=timeout)

    def list_tools(self, cursor: str | None = None) -> Deferred[dict[str, Any]]:
        """One page: ``{"tools": [...], "nextCursor"?: str}``."""
        return self.request(Method.TOOLS_LIST, _cursor(cursor))

    def iter_tools(self) -> AsyncIterator[dict[str, Any]]:
        """Every tool, following ``nextCursor`` through all pages (``async for``)."""
        return self._paginate(Method.TOOLS_LIST, "tools")

    def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> Deferred[dict[str, Any]]:
        """Call a tool. A failing tool is not an exception: check ``isError``."""
        params = {"name": name, "arguments": arguments or {}}
        return self.request(Method.TOOLS_CALL, params, timeout=timeout, on_progress=on_progress)

    def list_resources(self, cursor: str | None = None) -> Deferred[dict[str, Any]]:
        return self.request(Method.RESOURCES_LIST, _cursor(cursor))

    def iter_resources(self) -> AsyncIterator[dict[str, Any]]:
        return self._paginate(Method.RESOURCES_LIST, "resources")

    def list_resource_templates(self, cursor: str | None = None) -> Deferred[dict[str, Any]]:
        return self.request(Method.RESOURCES_TEMPLATES_LIST, _cursor(cursor))

    def read_resource(self, uri: str) -> Deferred[dict[str, Any]]:
        """``{"contents": [{"uri", "mimeType"?, "text" | "blob"}]}``."""
        return self.request(Method.RESOURCES_READ, {"uri": uri})

    def subscribe(self, uri: str, on_updated: Callable[[str], object]) -> Deferred[dict[str, Any]]:
        """Subscribe to ``uri``; ``on_updated(uri)`` is called on each change.

        The subscription is restored after every reconnection.
        """
        self._subscriptions[uri] = on_updated

        def refused(failure: Any) -> Any:
            if failure.check(RPCError):  # the server said no: do not restore it later
                self._subscriptions.pop(uri, None)
            return failure

        return self.request(Method.RESOURCES_SUBSCRIBE, {"uri": uri}).addErrback(refused)

    def unsubscribe(self, uri: str) -> Deferred[dict[str, Any]]:
        self._subscriptions.pop(uri, None)
        return self.request(Method.RESOURCES_UNSUBSCRIBE, {"uri": uri})

    def list_prompts(self, cursor: str | None = None) -> Deferred[dict[str, Any]]:
        return self.request(Method.PROMPTS_LIST, _cursor(cursor))

    def iter_prompts(self) -> AsyncIterator[dict[str, Any]]:
        return self._paginate(Method.PROMPTS_LIST, "prompts")

    def get_prompt(self, name: str, arguments: dict[str, str] | None = None) -> Deferred[dict[str, Any]]:
        """``{"description"?, "messages": [{"role", "content"}]}``."""
        return self.request(Method.PROMPTS_GET, {"name": name, "arguments": arguments or {}})

    def complete(
        self,
        ref: dict[str, Any],
        argument: str,
        value: str,
        context: dict[str, str] | None = None,
    ) -> Deferred[dict[str, Any]]:
        """Completions for an argument: ``ref`` is ``{"type": "ref/prompt", "name"}``
        or ``{"type": "ref/resource", "uri"}``; fires with ``{"values", "total"?, "hasMore"?}``."""
        params: dict[str, Any] = {"ref": ref, "argument": {"name": argument, "value": value}}
        if context:
            params["context"] = {"arguments": context}
        d = self.request(Method.COMPLETION_COMPLETE, params)
        return d.addCallback(lambda result: result["completion"])

    def set_logging_level(self, level: str) -> Deferred[dict[str, Any]]:
        try:
            check_log_level(level)
        except RPCError as e:
            return fail(e)
        return self.request(Method.LOGGING_SET_LEVEL, {"level": level})

    async def _paginate(self, method: str, key: str) -> AsyncIterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            page = await self.request(method, _cursor(cursor))
            for item in page.get(key, []):
                yield item
            cursor = page.get("nextCursor")
            if not cursor:
                return


def _cursor(cursor: str | None) -> dict[str, Any] | None:
    return {"cursor": cursor} if cursor is not None else None
