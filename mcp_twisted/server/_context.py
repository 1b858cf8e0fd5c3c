"""``Context``: what a handler can do with the request it is answering."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from mcp_twisted.protocol import LOG_LEVEL_RANK, CapabilityError, Method, Notify
from mcp_twisted.server._modern import Rounds

if TYPE_CHECKING:
    from mcp_twisted.server._server import MCPServer
    from mcp_twisted.session import IncomingRequest, Session


class Context:
    """Handed to a handler that declares a parameter annotated ``Context``.

    Progress and logging return a Deferred that fires when the client has
    room for more output: ``await`` it and a handler that reports often never
    outruns a slow client (a plain call works too, but while the client is far
    behind such messages are dropped rather than buffered). Requests to the client
    (``sample``, ``list_roots``, ``elicit``) raise ``CapabilityError`` at once
    when the client did not declare the capability, and fail with
    ``RequestTimedOut`` when it does not answer within ``timeout`` seconds.

    On 2026-07-28 requests the same calls work, with no request to the client:
    the first question without an answer ends the round with an
    ``input_required`` result (questions asked together go in it together,
    each under its ``key``), and the client's retry runs the handler again,
    this time with the answers (see ``server/_modern.py``). An undeclared
    capability is then a ``-32021`` error answer.
    """

    __slots__ = ("_request", "server")

    def __init__(self, request: IncomingRequest, server: MCPServer) -> None:
        self._request = request
        self.server = server

    @property
    def request_id(self) -> str | int:
        return self._request.id

    @property
    def session(self) -> Session:
        return self._request.session

    @property
    def protocol_version(self) -> str:
        return self._request.protocol_version

    @property
    def client_capabilities(self) -> dict[str, Any]:
        return self._request.client_capabilities

    @property
    def client_info(self) -> dict[str, Any]:
        return self._request.client_info

    @property
    def identity(self) -> Any:
        """Who the transport authenticated (token name, certificate subject), or None."""
        return self._request.session.attributes.get("identity")

    @property
    def cancelled(self) -> bool:
        """True once the client cancelled this request, it ran out of time, or the session closed."""
        return self._request.cancelled or self._request.timed_out

    def report_progress(
        self, progress: float, total: float | None = None, message: str | None = None
    ) -> Deferred[None]:
        """Tell the client how far along we are, if it asked to know.

        Fires when the client has room for more output (see the class docstring).
        """
        self._request.report_progress(progress, total, message)
        return self.session.when_writable()

    def log(self, level: str, data: Any, logger: str | None = None) -> Deferred[None]:
        """Send ``notifications/message`` if ``level`` passes the client's threshold.

        Raises ``ValueError`` for a level that is not an RFC 5424 name: that is
        a bug in the handler, not bad input from the client.
        """
        if level not in LOG_LEVEL_RANK:
            raise ValueError(f"Invalid log level {level!r}; expected one of {', '.join(LOG_LEVEL_RANK)}")
        modern = self._request.modern
        # 2026-07-28: a request without a logLevel gets no log messages at all.
        threshold = self.server.log_level_for(self.session) if modern is None else modern.log_level
        wanted = threshold is not None and LOG_LEVEL_RANK[level] >= LOG_LEVEL_RANK[threshold]
        if wanted and not self.cancelled:
            params: dict[str, Any] = {"level": level, "data": data}
            if logger is not None:
                params["logger"] = logger
            self.session.notify(Notify.MESSAGE, params, droppable=True, related=self._request.id)
        return self.session.when_writable()

    def _client_request(
        self, capability: str, method: str, params: dict[str, Any] | None, timeout: float | None,
        key: str | None = None,
    ) -> Deferred[Any]:
        request = self._request
        if request.modern is not None:
            if request.rounds is None:
                request.rounds = Rounds(request, self.server.state_sealer)
            return request.rounds.ask(capability, method, params, key)  # type: ignore[no-any-return]
        if capability not in self.client_capabilities:
            raise CapabilityError(capability, f"cannot send {method}")
        if timeout is None:
            timeout = self.server.client_request_timeout
        return self.session.request(method, params, timeout=timeout, related=self._request.id)

    def sample(
        self,
        messages: str | list[dict[str, Any]],
        max_tokens: int = 1000,
        *,
        system_prompt: str | None = None,
        temperature: float | None = None,
        stop_sequences: list[str] | None = None,
        model_preferences: dict[str, Any] | None = None,
        include_context: str | None = None,
        metadata: dict[str, Any] | None = None,
        timeout: float | None = None,
        key: str | None = None,
    ) -> Deferred[dict[str, Any]]:
        """Ask the client's model for a message (``sampling/createMessage``).

        ``messages`` may be a plain string, sent as one user message. Fires
        with the result: ``{"role", "content", "model", "stopReason"?}``.
        ``key`` names the question in a 2026-07-28 ``input_required`` result.
        """
        if isinstance(messages, str):
            messages = [{"role": "user", "content": {"type": "text", "text": messages}}]
        params: dict[str, Any] = {"messages": messages, "maxTokens": max_tokens}
        for field, value in (
            ("systemPrompt", system_prompt), ("temperature", temperature),
            ("stopSequences", stop_sequences), ("modelPreferences", model_preferences),
            ("includeContext", include_context), ("metadata", metadata),
        ):
            if value is not None:
                params[field] = value
        return self._client_request("sampling", Method.SAMPLING_CREATE_MESSAGE, params, timeout, key)

    def list_roots(
        self, *, timeout: float | None = None, key: str | None = None
    ) -> Deferred[list[dict[str, Any]]]:
        """The client's roots (``roots/list``): a list of ``{"uri", "name"?}``."""
        d = self._client_request("roots", Method.ROOTS_LIST, None, timeout, key)
        return d.addCallback(lambda result: result.get("roots", []))

    def elicit(
        self, message: str, requested_schema: dict[str, Any], *, timeout: float | None = None,
        key: str | None = None,
    ) -> Deferred[dict[str, Any]]:
        """Ask the user to fill in a form (``elicitation/create``, form mode).

        ``requested_schema`` is a flat object schema of primitive properties.
        Fires with ``{"action": "accept"|"decline"|"cancel", "content"?}``.
        """
        params: dict[str, Any] = {"message": message, "requestedSchema": requested_schema}
        modes = self._elicitation_modes()
        if modes and "form" not in modes:
            raise CapabilityError("elicitation", "the client does not accept form mode")
        if "url" in modes:
            params["mode"] = "form"  # only name the mode to clients that know of modes
        return self._client_request("elicitation", Method.ELICITATION_CREATE, params, timeout, key)

    def elicit_url(
        self, message: str, url: str, elicitation_id: str, *, timeout: float | None = None
    ) -> Deferred[dict[str, Any]]:
        """Send the user to ``url`` (URL mode, 2025-11-25): for secrets, payments, OAuth.

        ``accept`` means the user agreed to open the page, not that they
        finished; call ``notify_elicitation_complete`` when they did.
        """
        if "elicitation" in self.client_capabilities and "url" not in self._elicitation_modes():
            raise CapabilityError("elicitation", "the client does not accept URL mode")
        params = {"mode": "url", "message": message, "url": url, "elicitationId": elicitation_id}
        return self._client_request("elicitation", Method.ELICITATION_CREATE, params, timeout)

    def close_stream(self) -> None:
        """End the stream that carries this request's messages now (SEP-1699).

        On Streamable HTTP the client reconnects after the stream's ``retry``
        delay and, with ``Last-Event-ID``, gets what this handler sends later,
        its answer included: a long call need not hold a connection open.
        Other transports have no such stream, and this does nothing there.
        """
        closer = self.session.stream_closer
        if closer is not None:
            closer(self._request.id)

    def notify_elicitation_complete(self, elicitation_id: str) -> None:
        self.session.notify(Notify.ELICITATION_COMPLETE, {"elicitationId": elicitation_id})

    def _elicitation_modes(self) -> set[str]:
        declared = self.client_capabilities.get("elicitation")
        if not isinstance(declared, dict):
            return set()
        # An empty object means form mode only (2025-06-18 shape).
        return {mode for mode in ("form", "url") if mode in declared} or {"form"}
