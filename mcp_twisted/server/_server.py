"""``MCPServer``: the registries, the decorators and the method table."""

from __future__ import annotations

import base64
import binascii
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from mcp_twisted._lograte import RepeatedEventLog
from mcp_twisted.bus import AppChannel, IEventBus
from mcp_twisted.eras import META_SERVER_INFO, MODERN_VERSIONS
from mcp_twisted.jsonrpc import (
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    Request,
    RPCError,
    brief,
    clip,
    is_request_id,
)
from mcp_twisted.protocol import (
    LIST_CHANGED_KIND,
    RESOURCE_NOT_FOUND,
    SUPPORTED_PROTOCOL_VERSIONS,
    Method,
    Notify,
    check_log_level,
    invalid_params,
    version_at_least,
)
from mcp_twisted.sealing import StateSealer
from mcp_twisted.server._context import Context
from mcp_twisted.server._modern import CACHED_METHODS, CachePolicy, Listeners
from mcp_twisted.server._primitives import Prompt, Resource, ResourceTemplate, Tool
from mcp_twisted.server._signature import compile_signature
from mcp_twisted.server._uritemplate import URITemplate
from mcp_twisted.session import SLOW, IncomingRequest, QuickHandler, Session, State, as_deferred

F = TypeVar("F", bound=Callable[..., Any])
log = Logger()

MAX_COMPLETION_VALUES = 100


@dataclass(slots=True)
class _SessionState:
    """What the server remembers per session."""

    log_level: str
    subscriptions: set[str] = field(default_factory=set)
    # Refused subscriptions, one log line per interval (made on the first).
    refusals: RepeatedEventLog | None = None

    def refused(self, session: Session, reason: str) -> None:
        if self.refusals is None:
            self.refusals = RepeatedEventLog(
                log, session.clock, "Subscription refused ({count} since the last report): {reason}")
        self.refusals(reason=reason)


class MCPServer:
    """An MCP application: declare tools, resources and prompts, then serve it.

    It is the ``SessionHandler`` of every server-side session, whatever the
    transport; it holds no socket and no reactor.
    """

    def __init__(
        self,
        name: str,
        version: str = "0.0.0",
        instructions: str | None = None,
        *,
        title: str | None = None,
        website_url: str | None = None,
        icons: list[dict[str, Any]] | None = None,
        page_size: int = 100,
        log_level: str = "info",
        client_request_timeout: float = 60.0,
        max_subscriptions: int = 100,
        max_uri_length: int = 8192,
        cache: CachePolicy | None = None,
        state_key: bytes | None = None,
    ) -> None:
        """
        :param page_size: items per page of the ``*/list`` methods.
        :param log_level: the ``notifications/message`` threshold of a session
            until its client sends ``logging/setLevel``.
        :param client_request_timeout: default seconds a handler waits for the
            client to answer ``sample``, ``list_roots`` or ``elicit``.
        :param max_subscriptions: resources one session may be subscribed to at
            once. Subscriptions live as long as the session, so without a cap a
            client could make the server hold any amount of memory.
        :param max_uri_length: the longest URI (in characters) a session may
            subscribe to or read through a template. 8192 is what RFC 9110
            asks every HTTP server to accept and about what common servers
            allow, so no real resource URI is refused; with the default count
            a session holds at most ~800 KiB of URIs.
        :param cache: ``ttlMs`` and ``cacheScope`` of the 2026-07-28 results
            that carry them (discover, the lists, reads); the default lets
            clients reuse nothing. A resource's own ``cache=`` wins for its reads.
        :param state_key: the key that seals the ``requestState`` of
            2026-07-28 multi-round requests (32 bytes or more). Instances
            that serve the same clients need the same key; without one, a
            random key serves this process only.
        """
        self.name = name
        self.version = version
        self.instructions = instructions
        self.title = title
        self.website_url = website_url
        self.icons = icons
        self.page_size = page_size
        self.default_log_level = check_log_level(log_level)
        self.client_request_timeout = client_request_timeout
        self.max_subscriptions = max_subscriptions
        self.max_uri_length = max_uri_length
        self.cache = cache if cache is not None else CachePolicy()
        self.state_sealer = StateSealer(state_key)
        self._listeners = Listeners()
        self._channel: AppChannel | None = None
        self._tools: dict[str, Tool] = {}
        self._resources: dict[str, Resource] = {}
        self._templates: dict[str, ResourceTemplate] = {}
        self._prompts: dict[str, Prompt] = {}
        # (ref type, prompt name or template, argument) -> (fn, fn takes the other arguments)
        self._completions: dict[tuple[str, str | None, str], tuple[Callable[..., Any], bool]] = {}
        self._sessions: dict[Session, _SessionState] = {}
        self._methods: dict[str, Callable[[IncomingRequest], Any]] = {
            Method.TOOLS_LIST: self._list_tools,
            Method.TOOLS_CALL: self._call_tool,
            Method.RESOURCES_LIST: self._list_resources,
            Method.RESOURCES_TEMPLATES_LIST: self._list_templates,
            Method.RESOURCES_READ: self._read_resource,
            Method.RESOURCES_SUBSCRIBE: self._subscribe,
            Method.RESOURCES_UNSUBSCRIBE: self._unsubscribe,
            Method.PROMPTS_LIST: self._list_prompts,
            Method.PROMPTS_GET: self._get_prompt,
            Method.COMPLETION_COMPLETE: self._complete,
            Method.LOGGING_SET_LEVEL: self._set_level,
            Method.SERVER_DISCOVER: self._discover,
            Method.SUBSCRIPTIONS_LISTEN: self._listen,
        }
        # What the session may answer without an IncomingRequest (see QuickHandler).
        self.quick: dict[str, QuickHandler] = {Method.TOOLS_CALL: self._quick_call_tool}

    # -- declaring --------------------------------------------------------

    def tool(
        self,
        name: str | None = None,
        *,
        title: str | None = None,
        description: str | None = None,
        annotations: dict[str, Any] | None = None,
        icons: list[dict[str, Any]] | None = None,
        meta: dict[str, Any] | None = None,
        input_schema: dict[str, Any] | None = None,
        scopes: Iterable[str] = (),
    ) -> Callable[[F], F]:
        """Register a function as a tool; its hints give the input schema and
        its docstring the description. A dict-like return annotation gives
        an output schema and structured results.

        ``input_schema`` is sent in ``tools/list`` exactly as given instead of
        the generated schema, for keywords hints cannot express (``$defs``,
        ``allOf``, ``if``/``then``/``else``...). It must be an object schema
        whose ``properties`` are the function's parameters (``TypeError`` at
        registration otherwise); the hints still validate and convert the
        arguments, so keep the two in agreement.

        ``scopes``: the OAuth scopes a call needs (see ``required_scopes``)."""

        def register(fn: F) -> F:
            self.add_tool(fn, name, title=title, description=description,
                          annotations=annotations, icons=icons, meta=meta,
                          input_schema=input_schema, scopes=tuple(scopes))
            return fn

        return register

    def add_tool(
        self, fn: Callable[..., Any], name: str | None = None, *,
        input_schema: dict[str, Any] | None = None, **details: Any,
    ) -> Tool:
        """Register ``fn`` as a tool (what ``@tool`` does), replacing one of
        the same name; connected clients are told the list changed.

        ``details`` are the decorator's keywords (``title``, ``annotations``, ...).
        """
        name = name or fn.__name__
        signature = compile_signature(fn, name, output=True, input_schema=input_schema)
        details["description"] = details.get("description") or signature.description
        tool = Tool(name, signature, **details)
        self._tools[name] = tool
        self._list_changed(Notify.TOOLS_LIST_CHANGED)
        return tool

    def remove_tool(self, name: str) -> None:
        """Unregister a tool; connected clients are told the list changed.

        Raises ``KeyError`` naming the tool if there is none by that name.
        """
        if self._tools.pop(name, None) is None:
            raise KeyError(f"no tool named {name!r}")
        self._list_changed(Notify.TOOLS_LIST_CHANGED)

    def resource(
        self,
        uri: str,
        *,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        mime_type: str | None = None,
        annotations: dict[str, Any] | None = None,
        icons: list[dict[str, Any]] | None = None,
        size: int | None = None,
        meta: dict[str, Any] | None = None,
        cache: CachePolicy | None = None,
        scopes: Iterable[str] = (),
    ) -> Callable[[F], F]:
        """Register a resource, or a template when ``uri`` has ``{variables}``
        (RFC 6570); template variables are passed as keyword arguments.
        The function returns ``str`` (text), ``bytes`` (blob), a JSON-able
        value (sent as JSON text) or a list of ``content.resource_contents``.
        ``cache`` sets ``ttlMs``/``cacheScope`` of its reads on 2026-07-28
        (default: the server's ``cache``); ``scopes`` the OAuth scopes a read
        needs."""

        def register(fn: F) -> F:
            self.add_resource(fn, uri, name=name, title=title, description=description,
                              mime_type=mime_type, annotations=annotations, icons=icons,
                              size=size, meta=meta, cache=cache, scopes=tuple(scopes))
            return fn

        return register

    def add_resource(
        self, fn: Callable[..., Any], uri: str, *, name: str | None = None,
        size: int | None = None, **details: Any,
    ) -> Resource | ResourceTemplate:
        """Register ``fn`` as the resource at ``uri`` (what ``@resource`` does);
        a ``uri`` with ``{variables}`` makes a template. Replaces one with the
        same URI; connected clients are told the list changed.
        """
        name = name or fn.__name__
        signature = compile_signature(fn, name, kind="resource")
        details["description"] = details.get("description") or signature.description
        if URITemplate.is_template(uri):
            template = URITemplate(uri)
            missing = set(template.variables) - {p.name for p in signature.parameters}
            if missing:
                raise TypeError(f"{name}: no parameter for template variables {sorted(missing)}")
            entry: Resource | ResourceTemplate
            entry = self._templates[uri] = ResourceTemplate(
                name, signature, template=template, **details)
        else:
            entry = Resource(name, signature, uri=uri, size=size, **details)
            self._resources[uri] = entry
        self._list_changed(Notify.RESOURCES_LIST_CHANGED)
        return entry

    def remove_resource(self, uri: str) -> None:
        """Unregister the resource or template registered at ``uri``.

        Raises ``KeyError`` naming the URI if there is none.
        """
        if self._resources.pop(uri, None) is None and self._templates.pop(uri, None) is None:
            raise KeyError(f"no resource or template at {uri!r}")
        self._list_changed(Notify.RESOURCES_LIST_CHANGED)

    def prompt(
        self,
        name: str | None = None,
        *,
        title: str | None = None,
        description: str | None = None,
        icons: list[dict[str, Any]] | None = None,
        meta: dict[str, Any] | None = None,
        scopes: Iterable[str] = (),
    ) -> Callable[[F], F]:
        """Register a prompt; its parameters are the prompt's arguments. It
        returns a string (one user message), a content block, a message dict,
        or a list of those. ``scopes``: the OAuth scopes a get needs."""

        def register(fn: F) -> F:
            self.add_prompt(fn, name, title=title, description=description, icons=icons, meta=meta,
                            scopes=tuple(scopes))
            return fn

        return register

    def add_prompt(self, fn: Callable[..., Any], name: str | None = None, **details: Any) -> Prompt:
        """Register ``fn`` as a prompt (what ``@prompt`` does), replacing one of
        the same name; connected clients are told the list changed."""
        name = name or fn.__name__
        signature = compile_signature(fn, name, kind="prompt")
        details["description"] = details.get("description") or signature.description
        prompt = Prompt(name, signature, **details)
        self._prompts[name] = prompt
        self._list_changed(Notify.PROMPTS_LIST_CHANGED)
        return prompt

    def remove_prompt(self, name: str) -> None:
        """Unregister a prompt; raises ``KeyError`` naming it if there is none."""
        if self._prompts.pop(name, None) is None:
            raise KeyError(f"no prompt named {name!r}")
        self._list_changed(Notify.PROMPTS_LIST_CHANGED)

    def completion(
        self, argument: str, *, prompt: str | None = None, resource: str | None = None
    ) -> Callable[[F], F]:
        """Register completions for one argument of a prompt or resource template.

        The function is called as ``fn(value)`` or, if it takes two
        parameters, ``fn(value, arguments)`` with the other arguments already
        filled in; it returns a list of strings (the first 100 are sent), a
        Deferred or a coroutine of one.
        """
        if (prompt is None) == (resource is None):
            raise TypeError("completion() needs exactly one of prompt= or resource=")
        key = ("ref/prompt", prompt, argument) if prompt else ("ref/resource", resource, argument)

        def register(fn: F) -> F:
            takes_arguments = len(inspect.signature(fn).parameters) >= 2
            self._completions[key] = (fn, takes_arguments)
            return fn

        return register

    def required_scopes(self, method: str, params: object) -> tuple[str, ...]:
        """The OAuth scopes a request needs, as declared with ``scopes=``.

        Over Streamable HTTP a request whose token lacks one is refused with
        403 ``insufficient_scope`` before it reaches the app, so that the
        client can ask its user for more (step-up); a session that got its
        identity otherwise (WebSocket, stdio) gets a JSON-RPC error. Only
        identities that carry scopes (OAuth access tokens) are checked.
        """
        if not isinstance(params, dict):
            return ()
        entry: Any = None
        name = params.get("name")  # the peer's: not a string (unhashable, even) is the request's own error
        if method == Method.TOOLS_CALL and isinstance(name, str):
            entry = self._tools.get(name)
        elif method == Method.PROMPTS_GET and isinstance(name, str):
            entry = self._prompts.get(name)
        elif method in (Method.RESOURCES_READ, Method.RESOURCES_SUBSCRIBE):
            uri = params.get("uri")
            try:
                found = self._readable(uri) if isinstance(uri, str) else None
            except RPCError:
                return ()  # too long: the read itself says so
            entry = found[0] if found is not None else None
        return entry.scopes if entry is not None else ()

    # -- telling clients ----------------------------------------------------

    @property
    def sessions(self) -> list[Session]:
        """The sessions past the MCP handshake, over every transport."""
        return list(self._sessions)

    def notify_resource_updated(self, uri: str) -> None:
        """Tell every session subscribed to ``uri`` (and every listen stream
        that asked for it) that it changed, here and, with a bus
        (``use_bus``), on every other instance of this app."""
        self._resource_updated(uri)
        if self._channel is not None:
            self._channel.publish({"method": Notify.RESOURCES_UPDATED, "uri": uri})

    def use_bus(self, bus: IEventBus) -> None:
        """Share ``notify_resource_updated`` and list changes with every
        instance that uses the same bus and server name (its channel)."""
        if self._channel is not None:
            raise ValueError(f"server {self.name!r} already uses the bus {self._channel.bus.name}")
        self._channel = AppChannel(bus, self.name, self._from_bus, self.resync)

    def resync(self) -> None:
        """Events may have been missed (the bus reconnected): every session
        and listen stream hears that each list changed, and every
        subscribed resource that it was updated; clients fetch again."""
        for method in LIST_CHANGED_KIND:
            self._local_list_changed(method)
        for uri in sorted({uri for state in self._sessions.values() for uri in state.subscriptions}):
            self._resource_updated(uri)

    def _from_bus(self, event: dict[str, Any]) -> None:
        method = event.get("method")
        if not isinstance(method, str):
            return  # another process's (or a stranger's) malformed event: a list would not even hash
        if method == Notify.RESOURCES_UPDATED and isinstance(event.get("uri"), str):
            self._resource_updated(event["uri"])
        elif method in LIST_CHANGED_KIND:
            self._local_list_changed(method)

    def _resource_updated(self, uri: str) -> None:
        self._listeners.resource_updated(uri)
        for session, state in self._sessions.items():
            if uri in state.subscriptions:
                session.notify(Notify.RESOURCES_UPDATED, {"uri": uri}, key=(Notify.RESOURCES_UPDATED, uri))

    def _list_changed(self, method: str) -> None:
        self._local_list_changed(method)
        if self._channel is not None:
            self._channel.publish({"method": method})

    def _local_list_changed(self, method: str) -> None:
        self._listeners.list_changed(method)
        # Only sessions told about the capability at initialize may hear of it.
        capability = LIST_CHANGED_KIND[method]
        for session in self._sessions:
            declared = (session.initialize_result or {}).get("capabilities", {})
            if session.state is State.READY and capability in declared:
                session.notify(method, key=method)

    def log_level_for(self, session: Session) -> str:
        state = self._sessions.get(session)
        return state.log_level if state is not None else self.default_log_level

    # -- SessionHandler ---------------------------------------------------

    def describe(self, session: Session, version: str | None = None) -> dict[str, Any]:
        """The ``initialize`` result (less ``protocolVersion``): capabilities,
        ``serverInfo``, ``instructions``; ``server/discover`` builds on it."""
        version = version if version is not None else session.protocol_version
        capabilities: dict[str, Any] = {"logging": {}}
        if self._tools:
            capabilities["tools"] = {"listChanged": True}
        if self._resources or self._templates:
            capabilities["resources"] = {"subscribe": True, "listChanged": True}
        if self._prompts:
            capabilities["prompts"] = {"listChanged": True}
        if self._completions and version_at_least(version, "2025-03-26"):
            capabilities["completions"] = {}
        info: dict[str, Any] = {"name": self.name, "version": self.version}
        if version_at_least(version, "2025-06-18") and self.title:
            info["title"] = self.title
        if version_at_least(version, "2025-11-25"):
            if self.website_url:
                info["websiteUrl"] = self.website_url
            if self.icons:
                info["icons"] = self.icons
        description: dict[str, Any] = {"capabilities": capabilities, "serverInfo": info}
        if self.instructions:
            description["instructions"] = self.instructions
        return description

    def end_listeners(self) -> None:
        """End every ``subscriptions/listen`` stream (the server is draining)."""
        self._listeners.end_all()

    def handle_request(self, request: IncomingRequest) -> Any:
        method = self._methods.get(request.method)
        if method is None or (request.modern is None and request.method in STATELESS_ONLY):
            raise RPCError(METHOD_NOT_FOUND, f"Method not found: {clip(request.method)}")
        meta = request.params.get("_meta")
        if meta is not None and not isinstance(meta, dict):
            raise invalid_params("params._meta must be an object")
        # The token is sent back in every notifications/progress, so it must be
        # what the spec allows (a string or an integer), not any JSON value.
        if request.progress_token is not None and not is_request_id(request.progress_token):
            raise invalid_params("params._meta.progressToken must be a string or an integer")
        if request.modern is not None and request.method in CACHED_METHODS and method != self._read_resource:
            return self.cache.apply(method(request))  # reads apply it themselves (they may be Deferreds)
        return method(request)

    # -- 2026-07-28 ------------------------------------------------------------

    def routing_headers(self, message: Request) -> dict[str, str]:
        """For a ``tools/call``: the arguments that also travel in
        ``Mcp-Param-{Name}`` headers (their schema has ``x-mcp-header``),
        argument name -> header name."""
        params = message.params if isinstance(message.params, dict) else {}
        name = params.get("name") if message.method == Method.TOOLS_CALL else None
        tool = self._tools.get(name) if isinstance(name, str) else None
        if tool is None:
            return {}
        properties = tool.signature.input_schema.get("properties") or {}
        return {argument: spec["x-mcp-header"] for argument, spec in properties.items()
                if isinstance(spec, dict) and isinstance(spec.get("x-mcp-header"), str)}

    def _discover(self, request: IncomingRequest) -> dict[str, Any]:
        description = self.describe(request.session, request.protocol_version)
        result: dict[str, Any] = {
            "supportedVersions": [*SUPPORTED_PROTOCOL_VERSIONS, *MODERN_VERSIONS],
            "capabilities": description["capabilities"],
            "_meta": {META_SERVER_INFO: description["serverInfo"]},
        }
        if "instructions" in description:
            result["instructions"] = description["instructions"]
        return result

    def _listen(self, request: IncomingRequest) -> Deferred[Any]:
        return self._listeners.listen(request, self.max_subscriptions, self.max_uri_length)

    def handle_notification(self, session: Session, method: str, params: Any) -> None:
        if method == Notify.ROOTS_LIST_CHANGED:
            log.debug("Client roots changed")

    def session_ready(self, session: Session) -> None:
        """From now on the session hears of list changes."""
        self._state_for(session)

    def _state_for(self, session: Session) -> _SessionState:
        """This app's state of a session, made on first use (a request may
        come before ``notifications/initialized``) and dropped when it closes."""
        state = self._sessions.get(session)
        if state is None:
            state = self._sessions[session] = _SessionState(self.default_log_level)
        return state

    def session_closed(self, session: Session) -> None:
        self._sessions.pop(session, None)

    # -- the methods --------------------------------------------------------

    def _context(self, request: IncomingRequest, wanted: str | None) -> Context | None:
        return Context(request, self) if wanted is not None else None

    def _page(self, request: IncomingRequest, kind: str, items: Sequence[Any]) -> dict[str, Any]:
        start = _decode_cursor(request.params.get("cursor"), kind, len(items))
        end = start + self.page_size
        version = request.protocol_version
        page: dict[str, Any] = {kind: [item.definition(version) for item in items[start:end]]}
        if end < len(items):
            page["nextCursor"] = _encode_cursor(kind, end)
        return page

    def _list_tools(self, request: IncomingRequest) -> dict[str, Any]:
        return self._page(request, "tools", list(self._tools.values()))

    def _call_tool(self, request: IncomingRequest) -> Any:
        params = request.params
        tool = self._tools.get(_required_string(params, "name"))
        if tool is None:
            raise invalid_params(f"Unknown tool: {brief(params['name'])}")
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        elif not isinstance(arguments, dict):
            raise invalid_params("tools/call arguments must be an object")
        _check_scopes(request, tool.scopes)
        context = self._context(request, tool.signature.context_parameter)
        return tool.call(arguments, context, request.protocol_version)

    def _quick_call_tool(self, params: dict[str, Any], session: Session) -> Any:
        """``tools/call`` of a tool that needs no context and no scopes: what
        ``_call_tool`` does for it, minus the request. Anything else, errors
        included, goes the long way."""
        name = params.get("name")
        tool = self._tools.get(name) if type(name) is str else None
        if tool is None or not tool.quick:
            return SLOW
        arguments = params.get("arguments")
        if arguments is None:
            arguments = {}
        elif type(arguments) is not dict:
            return SLOW
        return tool.call(arguments, None, session.protocol_version)

    def _list_resources(self, request: IncomingRequest) -> dict[str, Any]:
        return self._page(request, "resources", list(self._resources.values()))

    def _list_templates(self, request: IncomingRequest) -> dict[str, Any]:
        return self._page(request, "resourceTemplates", list(self._templates.values()))

    def _read_resource(self, request: IncomingRequest) -> Any:
        readable, result = self._read(request)
        if request.modern is None:
            return result
        policy = readable.cache if readable.cache is not None else self.cache
        if isinstance(result, Deferred):
            return result.addCallback(_cached_read, policy)
        return _cached_read(result, policy)

    def _readable(self, uri: str) -> tuple[Resource | ResourceTemplate, dict[str, str]] | None:
        """The resource or template that serves ``uri``, with its variables."""
        resource = self._resources.get(uri)
        if resource is not None:
            return resource, {}
        if len(uri) > self.max_uri_length:
            # Matching templates costs time that grows with the URI's length.
            raise invalid_params(f"URI too long: {len(uri)} characters (limit {self.max_uri_length})",
                                 {"limit": self.max_uri_length})
        for template in self._templates.values():
            assert template.template is not None  # add_resource gives every template one
            variables = template.template.match(uri)
            if variables is not None:
                return template, variables
        return None

    def _read(self, request: IncomingRequest) -> tuple[Resource | ResourceTemplate, Any]:
        uri = _required_string(request.params, "uri")
        found = self._readable(uri)
        if found is not None:
            readable, variables = found
            _check_scopes(request, readable.scopes)
            context = self._context(request, readable.signature.context_parameter)
            return readable, readable.read(uri, variables, context)
        if request.modern is not None:  # 2026-07-28 (SEP-2164): an unknown URI is a bad parameter
            raise invalid_params(f"Resource not found: {clip(uri)}", {"uri": uri})
        raise RPCError(RESOURCE_NOT_FOUND, f"Resource not found: {clip(uri)}", {"uri": uri})

    def _subscribe(self, request: IncomingRequest) -> dict[str, Any]:
        uri = _required_string(request.params, "uri")
        state = self._state_for(request.session)
        subscriptions = state.subscriptions
        if len(uri) > self.max_uri_length:
            state.refused(request.session,
                          f"a URI of {len(uri)} characters (limit {self.max_uri_length}): {brief(uri)}")
            raise invalid_params(f"URI too long to subscribe to: {len(uri)} characters "
                                 f"(limit {self.max_uri_length})", {"limit": self.max_uri_length})
        if uri not in subscriptions and len(subscriptions) >= self.max_subscriptions:
            state.refused(request.session,
                          f"{self.max_subscriptions} subscriptions already (URI {brief(uri)})")
            raise invalid_params(f"Too many subscriptions (limit {self.max_subscriptions}); "
                                 "unsubscribe from one first", {"limit": self.max_subscriptions})
        subscriptions.add(uri)
        return {}

    def _unsubscribe(self, request: IncomingRequest) -> dict[str, Any]:
        uri = _required_string(request.params, "uri")
        self._state_for(request.session).subscriptions.discard(uri)
        return {}

    def _list_prompts(self, request: IncomingRequest) -> dict[str, Any]:
        return self._page(request, "prompts", list(self._prompts.values()))

    def _get_prompt(self, request: IncomingRequest) -> Any:
        name = _required_string(request.params, "name")
        prompt = self._prompts.get(name)
        if prompt is None:
            raise invalid_params(f"Unknown prompt: {brief(name)}")
        _check_scopes(request, prompt.scopes)
        arguments = request.params.get("arguments") or {}
        if not isinstance(arguments, dict):
            raise invalid_params("prompts/get arguments must be an object")
        return prompt.get(arguments, self._context(request, prompt.signature.context_parameter))

    def _complete(self, request: IncomingRequest) -> Any:
        if not self._completions:
            raise RPCError(METHOD_NOT_FOUND, "This server offers no completions")
        params = request.params
        ref, argument = params.get("ref"), params.get("argument")
        if not isinstance(ref, dict) or not isinstance(argument, dict):
            raise invalid_params("completion/complete needs ref and argument objects")
        kind = _required_string(ref, "type", "ref.")
        name = _required_string(argument, "name", "argument.")
        value = _required_string(argument, "value", "argument.")
        key = {"ref/prompt": "name", "ref/resource": "uri"}.get(kind)
        target = _required_string(ref, key, "ref.") if key is not None else None
        registered = self._completions.get((kind, target, name))
        if registered is None:
            return {"completion": {"values": [], "total": 0, "hasMore": False}}
        fn, takes_arguments = registered
        context = params.get("context") or {}
        other = (context.get("arguments") or {}) if isinstance(context, dict) else None
        if not isinstance(other, dict) or not all(isinstance(v, str) for v in other.values()):
            raise invalid_params("params.context.arguments must be an object of strings")
        result = fn(value, other) if takes_arguments else fn(value)
        return as_deferred(result).addCallback(_completion_result)

    def _set_level(self, request: IncomingRequest) -> dict[str, Any]:
        level = check_log_level(request.params.get("level"))
        self._state_for(request.session).log_level = level
        return {}


def _completion_result(values: Sequence[str]) -> dict[str, Any]:
    values = list(values)
    return {"completion": {
        "values": values[:MAX_COMPLETION_VALUES],
        "total": len(values),
        "hasMore": len(values) > MAX_COMPLETION_VALUES,
    }}


def _cached_read(result: dict[str, Any], policy: CachePolicy) -> dict[str, Any]:
    # Not on an input_required round: only complete results are cached.
    return result if result.get("resultType") == "input_required" else policy.apply(result)


# Methods that exist only on the 2026-07-28 revision.
STATELESS_ONLY = frozenset({Method.SERVER_DISCOVER, Method.SUBSCRIPTIONS_LISTEN})


def _required_string(params: dict[str, Any], key: str, where: str = "") -> str:
    value = params.get(key)
    if not isinstance(value, str):
        raise invalid_params(f"params.{where}{key} must be a string")
    return value


def _encode_cursor(kind: str, offset: int) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{offset}".encode()).decode()


def _decode_cursor(cursor: object, kind: str, length: int) -> int:
    """The offset a cursor stands for; -32602 for anything we did not issue."""
    if cursor is None:
        return 0
    label, start = "", -1
    if isinstance(cursor, str):
        try:
            label, _, offset = base64.urlsafe_b64decode(cursor.encode()).decode().partition(":")
            start = int(offset)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            label, start = "", -1
    if label != kind or not 0 < start <= length:
        raise invalid_params(f"Invalid cursor: {brief(cursor)}")
    return start


def _check_scopes(request: IncomingRequest, needed: tuple[str, ...]) -> None:
    """Refuse a request whose OAuth identity lacks a scope (see ``required_scopes``)."""
    if needed:
        has_scopes = getattr(request.session.attributes.get("identity"), "has_scopes", None)
        if has_scopes is not None and not has_scopes(needed):
            raise RPCError(INVALID_REQUEST, "Forbidden: the access token lacks a scope this needs",
                           {"requiredScopes": list(needed)})
