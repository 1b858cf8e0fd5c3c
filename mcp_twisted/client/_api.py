"""``MCPClient``: the MCP calls a client makes, stable across reconnections.

The client object outlives connections. Each time the transport brings up a
new ``Session`` and opens it (``open_session``: the era is found, then either
``initialize`` or ``server/discover``), it is attached here; requests go to
whichever session is current. Requests made while no session is up wait for
the next one (up to their timeout) or fail at once, as configured.

The calls are the same on both eras. On 2026-07-28 each request carries
``_meta`` (revision, capabilities, client info, log level), an
``input_required`` result is answered by the same callbacks that answer a
handshake-era server's requests and retried, ``ping`` is ``server/discover``
and subscriptions travel on ``subscriptions/listen``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, MutableMapping
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcp_twisted import __version__
from mcp_twisted._lograte import RepeatedEventLog
from mcp_twisted.eras import (
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_LOG_LEVEL,
    META_PROTOCOL_VERSION,
    META_SERVER_INFO,
    MODERN_VERSIONS,
    UNSUPPORTED_PROTOCOL_VERSION,
    InvalidToolHeaders,
    tool_param_headers,
)
from mcp_twisted.jsonrpc import METHOD_NOT_FOUND, LocalProtocolError, RPCError, brief, clip
from mcp_twisted.protocol import LIST_CHANGED_KIND, Method, Notify, check_log_level
from mcp_twisted.session import ConnectionLost, IncomingRequest, RequestTimedOut, Session, State, as_deferred

log = Logger()

ProgressCallback = Callable[[float, "float | None", "str | None"], object]
Handler = Callable[[dict[str, Any]], Any]

AUTO, LEGACY = "auto", "legacy"
ERAS = (AUTO, LEGACY, *MODERN_VERSIONS)
# The 2026-07-28 methods whose result may ask for input first.
INPUT_METHODS = frozenset({Method.TOOLS_CALL, Method.PROMPTS_GET, Method.RESOURCES_READ})
# input_required rounds one call may take before it is given up.
MAX_INPUT_ROUNDS = 10
# A listen request the server ends is opened again after this many seconds
# (times the restarts in a row), at most this many times without an acknowledgement.
LISTEN_RESTART_DELAY = 1.0
MAX_LISTEN_RESTARTS = 5
# Pages one walk of a list (``iter_tools`` and kin) follows before giving up:
# a server that names a new ``nextCursor`` on every page would be followed forever.
MAX_PAGES = 1000
# How long ``auto`` waits for a server/discover answer before it tries
# initialize: some handshake-era servers ignore requests before it.
PROBE_TIMEOUT = 10.0

# The era each server spoke, by origin (scheme://host:port, or the command):
# a reconnection, or another client in this process, need not probe again.
ERA_CACHE: dict[str, str] = {}


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
    :param era: ``"auto"`` (probe with ``server/discover``, fall back to
        ``initialize``; the answer is cached per origin), ``"legacy"`` (the
        handshake era) or a 2026-07-28 revision to speak only that.
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
        era: str = AUTO,
        era_cache: MutableMapping[str, str] | None = None,
    ) -> None:
        if era not in ERAS:
            raise ValueError(f"era must be one of {', '.join(ERAS)}, not {era!r}")
        self.clock = clock
        self.era = era
        self.era_cache = ERA_CACHE if era_cache is None else era_cache
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
        # 2026-07-28: argument -> header name for each listed tool (SEP-2243).
        self.tool_headers: dict[str, dict[str, str]] = {}
        self.log_level: str | None = None
        self._listen: Deferred[Any] | None = None  # the subscriptions/listen request in flight
        self._listen_acked: list[Deferred[dict[str, Any]]] = []
        self._listen_restarts = 0  # listen requests the server ended since the last acknowledgement
        self._ready_waiters: list[Deferred[MCPClient]] = []
        # Set when the transport gave up: nothing waits for a session after that.
        self._gave_up: Exception | None = None
        # A server's malformed notifications are its mistake: a line now and then, no traceback.
        self._log_malformed = RepeatedEventLog(
            log, clock, "Ignored {count} malformed notification(s), the last: {method} {params}")

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
    def modern(self) -> bool:
        """Whether the current session speaks 2026-07-28 (no handshake)."""
        return self.session is not None and _is_modern(self.session)

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

    def open_session(self, session: Session, origin: str | None = None) -> Deferred[dict[str, Any]]:
        """Find the era and open ``session`` in it: fires with the
        ``initialize`` or the ``server/discover`` result.

        ``origin`` names the server for the era cache (None: no caching).
        Like ``handshake``, it does not attach the session.
        """
        return Deferred.fromCoroutine(self._open(session, origin))

    async def _open(self, session: Session, origin: str | None) -> dict[str, Any]:
        era = self.era
        if era == AUTO and origin is not None:
            era = self.era_cache.get(origin, AUTO)
        try:
            discovered = None if era == LEGACY else await self._discover(session, era)
            result = discovered if discovered is not None else await self.handshake(session)
        except Exception:
            if origin is not None and self.era == AUTO:
                self.era_cache.pop(origin, None)  # the server may have changed: probe afresh next time
            raise
        if origin is not None:
            self.era_cache[origin] = session.protocol_version if discovered is not None else LEGACY
        return result

    async def _discover(self, session: Session, era: str) -> dict[str, Any] | None:
        """``server/discover`` in ``era`` (or the newest revision, for auto);
        None when ``auto`` should fall back to the handshake."""
        version = MODERN_VERSIONS[-1] if era == AUTO else era
        for _ in range(2):  # at most one retry, with a revision the server named
            try:
                result = await session.request(
                    Method.SERVER_DISCOVER, {"_meta": self._meta(version)},
                    timeout=PROBE_TIMEOUT if era == AUTO else self.request_timeout)
            except RPCError as e:
                named = _newest_spoken(e.data.get("supported") if isinstance(e.data, dict) else None)
                if e.code == UNSUPPORTED_PROTOCOL_VERSION and named is not None and era in (AUTO, named):
                    version = named
                    continue
                if era == AUTO:
                    return None
                raise
            except RequestTimedOut:
                if era == AUTO:
                    return None
                raise
            spoken = _newest_spoken(result.get("supportedVersions") if isinstance(result, dict) else None)
            if spoken is None or (era != AUTO and spoken != era):
                if era == AUTO:
                    return None
                raise LocalProtocolError(
                    f"The server does not speak {era} (server/discover said {brief(result)})")
            session.protocol_version = spoken
            session.peer_capabilities = result.get("capabilities") or {}
            meta = result.get("_meta")
            info = meta.get(META_SERVER_INFO) if isinstance(meta, dict) else None
            session.peer_info = info or result.get("serverInfo") or {}
            session.initialize_result = result
            return dict(result)
        if era == AUTO:
            return None
        raise LocalProtocolError(f"The server refused {era} twice")

    def _meta(self, version: str) -> dict[str, Any]:
        """What every 2026-07-28 request says about its client."""
        capabilities = dict(self.capabilities)
        if "roots" in capabilities:
            capabilities["roots"] = {}  # no roots/list_changed on 2026-07-28
        meta = {META_PROTOCOL_VERSION: version, META_CLIENT_CAPABILITIES: capabilities,
                META_CLIENT_INFO: self.client_info}
        if self.log_level is not None:
            meta[META_LOG_LEVEL] = self.log_level
        return meta

    def attach(self, session: Session) -> None:
        """Make an opened ``session`` current: restore subscriptions, then
        wake whoever waits for a session."""
        self.session = session
        self._gave_up = None

        def not_restored(failure: Failure, uri: str) -> None:
            log.warn("Could not restore subscription to {uri}: {error}",
                     uri=uri, error=failure.getErrorMessage())

        # Subscriptions do not survive a connection: restore them.
        if _is_modern(session):
            self._listen = None
            self._listen_restarts = 0
            if self._subscriptions or self.on_list_changed is not None:
                self._relisten().addErrback(not_restored, "the listen stream")
        else:
            for uri in self._subscriptions:
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
        return self.answer(request.method, request.params)

    def answer(self, method: str, params: dict[str, Any]) -> Deferred[Any]:
        """Answer a server's request (handshake era) or one of the
        ``inputRequests`` of an ``input_required`` result (2026-07-28): the
        same callbacks serve both."""
        if method == Method.SAMPLING_CREATE_MESSAGE and self.sampling is not None:
            return as_deferred(self.sampling(params))
        if method == Method.ELICITATION_CREATE and self.elicitation is not None:
            return as_deferred(self.elicitation(params)).addCallback(_apply_defaults, params)
        if method == Method.ROOTS_LIST and self.roots is not None:
            return as_deferred(self.roots()).addCallback(lambda roots: {"roots": list(roots)})
        raise RPCError(METHOD_NOT_FOUND, f"Method not found: {clip(method)}")

    def handle_notification(self, session: Session, method: str, params: Any) -> None:
        if method == Notify.SUBSCRIPTIONS_ACKNOWLEDGED:
            self._acknowledged(params)
        elif method == Notify.MESSAGE and self.on_log is not None:
            self.on_log(params)
        elif method == Notify.RESOURCES_UPDATED:
            uri = params.get("uri")
            if not isinstance(uri, str):
                self._log_malformed(method=method, params=brief(params))
                return
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
        """Send any request; the typed methods below are built on this.

        On 2026-07-28 an ``input_required`` result of ``tools/call``,
        ``prompts/get`` or ``resources/read`` is answered (see ``answer``) and
        the request retried with a new id, until the result is complete.
        """
        if method in INPUT_METHODS:
            return Deferred.fromCoroutine(self._until_complete(method, params or {}, timeout, on_progress))
        d = self._send(method, params, timeout, on_progress)
        return d.addCallback(self._accept_tools) if method == Method.TOOLS_LIST else d

    async def _until_complete(
        self, method: str, params: dict[str, Any], timeout: float | None,
        on_progress: ProgressCallback | None,
    ) -> Any:
        retry = params
        for _ in range(MAX_INPUT_ROUNDS):
            result = await self._send(method, retry, timeout, on_progress)
            if not isinstance(result, dict) or result.get("resultType") != "input_required":
                return result
            requests = result.get("inputRequests") or {}
            responses = {}
            for key, wanted in requests.items():
                wanted = wanted if isinstance(wanted, dict) else {}
                responses[key] = await self.answer(str(wanted.get("method")), wanted.get("params") or {})
            retry = {**params, "inputResponses": responses}
            if "requestState" in result:
                retry["requestState"] = result["requestState"]  # byte-exact: never parsed
        raise LocalProtocolError(f"{method} still wanted input after {MAX_INPUT_ROUNDS} rounds")

    def _send(
        self, method: str, params: dict[str, Any] | None, timeout: float | None,
        on_progress: ProgressCallback | None,
    ) -> Deferred[Any]:
        timeout = self.request_timeout if timeout is None else timeout
        if self.connected:
            assert self.session is not None  # connected says so
            if _is_modern(self.session):
                params = dict(params or {})
                params["_meta"] = {**self._meta(self.session.protocol_version), **params.get("_meta", {})}
            return self.session.request(method, params, timeout=timeout, on_progress=on_progress)
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
            return client._send(method, params, remaining, on_progress)

        def waited_too_long(failure: Any) -> Any:
            from twisted.internet.defer import TimeoutError

            failure.trap(TimeoutError)
            assert timeout is not None  # only addTimeout fails it so
            raise RequestTimedOut(method, timeout)

        return ready.addCallbacks(send, waited_too_long)

    def _accept_tools(self, page: dict[str, Any]) -> dict[str, Any]:
        """Leave out tools whose ``x-mcp-header`` annotations are invalid
        (SEP-2243 says a client must), and remember the others' headers."""
        kept = []
        for tool in page.get("tools", []):
            try:
                headers = tool_param_headers(tool.get("inputSchema"))
            except InvalidToolHeaders as e:
                log.warn("Left out tool {name}: {error}", name=brief(tool.get("name")), error=str(e))
                continue
            self.tool_headers[tool.get("name")] = headers
            kept.append(tool)
        return {**page, "tools": kept}

    def ping(self, *, timeout: float | None = None) -> Deferred[dict[str, Any]]:
        """``ping``; on 2026-07-28, which has none, ``server/discover``."""
        return self.request(Method.SERVER_DISCOVER if self.modern else Method.PING, timeout=timeout)

    def list_tools(self, cursor: str | None = None) -> Deferred[dict[str, Any]]:
        """One page: ``{"tools": [...], "nextCursor"?: str}``."""
        return self.request(Method.TOOLS_LIST, _cursor(cursor))

    def iter_tools(self, *, timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every tool, following ``nextCursor`` through all pages (``async for``);
        ``timeout``: seconds for the whole walk (each page has ``request_timeout``).
        A cursor named twice, or more than ``MAX_PAGES`` pages, raise ``LocalProtocolError``."""
        return self._paginate(Method.TOOLS_LIST, "tools", timeout)

    def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> Deferred[dict[str, Any]]:
        """Call a tool. A failing tool is not an exception: check ``isError``.

        On 2026-07-28 a tool not listed yet is listed first: its schema says
        which arguments travel as ``Mcp-Param-*`` headers too.
        """
        params = {"name": name, "arguments": arguments or {}}
        if self.modern and name not in self.tool_headers:
            return Deferred.fromCoroutine(self._list_then_call(params, timeout, on_progress))
        return self.request(Method.TOOLS_CALL, params, timeout=timeout, on_progress=on_progress)

    async def _list_then_call(
        self, params: dict[str, Any], timeout: float | None, on_progress: ProgressCallback | None,
    ) -> dict[str, Any]:
        async for _ in self.iter_tools(timeout=timeout):
            pass  # each page records its tools' headers
        result: dict[str, Any] = await self.request(
            Method.TOOLS_CALL, params, timeout=timeout, on_progress=on_progress)
        return result

    def list_resources(self, cursor: str | None = None) -> Deferred[dict[str, Any]]:
        return self.request(Method.RESOURCES_LIST, _cursor(cursor))

    def iter_resources(self, *, timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every resource; see ``iter_tools``."""
        return self._paginate(Method.RESOURCES_LIST, "resources", timeout)

    def list_resource_templates(self, cursor: str | None = None) -> Deferred[dict[str, Any]]:
        return self.request(Method.RESOURCES_TEMPLATES_LIST, _cursor(cursor))

    def read_resource(self, uri: str) -> Deferred[dict[str, Any]]:
        """``{"contents": [{"uri", "mimeType"?, "text" | "blob"}]}``."""
        return self.request(Method.RESOURCES_READ, {"uri": uri})

    def subscribe(self, uri: str, on_updated: Callable[[str], object]) -> Deferred[dict[str, Any]]:
        """Subscribe to ``uri``; ``on_updated(uri)`` is called on each change.

        The subscription is restored after every reconnection. On 2026-07-28
        it is one of the ``resourceSubscriptions`` of a ``subscriptions/listen``
        request, opened again with each change.
        """
        self._subscriptions[uri] = on_updated
        if self.modern:
            return self._relisten()

        def refused(failure: Any) -> Any:
            if failure.check(RPCError):  # the server said no: do not restore it later
                self._subscriptions.pop(uri, None)
            return failure

        return self.request(Method.RESOURCES_SUBSCRIBE, {"uri": uri}).addErrback(refused)

    def unsubscribe(self, uri: str) -> Deferred[dict[str, Any]]:
        self._subscriptions.pop(uri, None)
        if self.modern:
            return self._relisten()
        return self.request(Method.RESOURCES_UNSUBSCRIBE, {"uri": uri})

    def _relisten(self) -> Deferred[dict[str, Any]]:
        """Replace the listen request (if any) with one for the current
        subscriptions, if there is anything to hear: fires with the server's
        acknowledgement (what it will send)."""
        replaced, self._listen = self._listen, None
        if replaced is not None:
            replaced.cancel()  # whoever waits for its acknowledgement waits for the new one
        if not self._subscriptions and self.on_list_changed is None:
            self._acknowledged({})
            return succeed({})
        assert self.session is not None  # only called on a modern session
        wanted = self.on_list_changed is not None
        notifications: dict[str, Any] = {
            "toolsListChanged": wanted, "promptsListChanged": wanted, "resourcesListChanged": wanted}
        if self._subscriptions:
            notifications["resourceSubscriptions"] = list(self._subscriptions)
        params = {"notifications": notifications, "_meta": self._meta(self.session.protocol_version)}
        acked: Deferred[dict[str, Any]] = Deferred()
        self._listen_acked.append(acked)
        listen = self._listen = self.session.request(Method.SUBSCRIPTIONS_LISTEN, params, timeout=None)

        def ended(result: Any) -> None:
            if self._listen is not listen:
                return  # replaced by a newer one
            self._listen = None
            failure = result if isinstance(result, Failure) else Failure(
                LocalProtocolError("the server ended subscriptions/listen"))
            waiters, self._listen_acked = self._listen_acked, []
            for waiter in waiters:
                waiter.errback(failure)
            if failure.check(ConnectionLost):
                return  # restored with the next session
            log.warn("subscriptions/listen ended: {error}", error=failure.getErrorMessage())
            if self._listen_restarts < MAX_LISTEN_RESTARTS:
                self._listen_restarts += 1
                self.clock.callLater(LISTEN_RESTART_DELAY * self._listen_restarts, self._restart_listen)

        listen.addBoth(ended)
        return acked

    def _restart_listen(self) -> None:
        if self.modern and self._listen is None and (self._subscriptions or self.on_list_changed is not None):
            self._relisten().addErrback(lambda failure: None)  # ended() has logged it

    def _acknowledged(self, params: dict[str, Any]) -> None:
        self._listen_restarts = 0
        waiters, self._listen_acked = self._listen_acked, []
        for waiter in waiters:
            waiter.callback(params)

    def list_prompts(self, cursor: str | None = None) -> Deferred[dict[str, Any]]:
        return self.request(Method.PROMPTS_LIST, _cursor(cursor))

    def iter_prompts(self, *, timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """Every prompt; see ``iter_tools``."""
        return self._paginate(Method.PROMPTS_LIST, "prompts", timeout)

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
        """The least severe log messages to receive; on 2026-07-28 every
        request carries it instead (without it the server sends none)."""
        try:
            check_log_level(level)
        except RPCError as e:
            return fail(e)
        self.log_level = level
        if self.modern:
            return succeed({})
        return self.request(Method.LOGGING_SET_LEVEL, {"level": level})

    async def _paginate(self, method: str, key: str, timeout: float | None) -> AsyncIterator[dict[str, Any]]:
        started = self.clock.seconds()
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            left = None
            if timeout is not None:
                left = timeout - (self.clock.seconds() - started)
                if left <= 0:
                    raise RequestTimedOut(method, timeout)
            page = await self.request(method, _cursor(cursor), timeout=left)
            for item in page.get(key, []):
                yield item
            cursor = page.get("nextCursor")
            if not cursor:
                return
            if not isinstance(cursor, str):
                raise LocalProtocolError(f"{method}: nextCursor {brief(cursor)} is not a string")
            if cursor in seen:
                raise LocalProtocolError(f"{method}: the server named nextCursor {brief(cursor)} twice")
            seen.add(cursor)
        raise LocalProtocolError(f"{method} had more than {MAX_PAGES} pages")


def _cursor(cursor: str | None) -> dict[str, Any] | None:
    return {"cursor": cursor} if cursor is not None else None


def _is_modern(session: Session) -> bool:
    return session.protocol_version in MODERN_VERSIONS


def _newest_spoken(versions: object) -> str | None:
    """The newest of ``versions`` (a server's list) that this client speaks."""
    if not isinstance(versions, list):
        return None
    return next((version for version in reversed(MODERN_VERSIONS) if version in versions), None)


def _apply_defaults(result: Any, params: dict[str, Any]) -> Any:
    """An accepted form elicitation gets the schema's defaults for the fields
    the callback left out (SEP-1034)."""
    if not isinstance(result, dict) or result.get("action") != "accept":
        return result
    schema = params.get("requestedSchema")
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return result
    content = dict(result.get("content") or {})
    for name, field in properties.items():
        if isinstance(field, dict) and "default" in field:
            content.setdefault(name, field["default"])
    return {**result, "content": content}
