"""``twistd mcpws``: options and service construction.

Anything the operator can get wrong in a way only visible at start (an
endpoint string, a certificate file, the ``--app`` path) ends the process
with one line naming the problem instead of a traceback.
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.service import IService, Service
from twisted.python import usage

from mcp_twisted.server import MCPServer
from mcp_twisted.service import ListenError, MCPWebSocketService
from mcp_twisted.websocket import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_OUTPUT_BUFFER,
    DEFAULT_MAX_SESSIONS,
    MCPServerFactory,
)

DEFAULT_ENDPOINT = "tcp:8080:interface=127.0.0.1"
DEFAULT_APP = "mcp_twisted.demo:server"


class StartupError(SystemExit):
    """Ends twistd with a one-line message (printed to stderr, exit status 1)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"mcpws: error: {message}")


def _positive_float(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError("must be a finite number, not negative")
    return number


def _count(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if number < minimum:
            raise ValueError(f"must be at least {minimum}")
        return number

    return parse


def _size(value: str) -> int:
    """Bytes, with an optional K/M/G suffix (binary multiples)."""
    value = value.strip().upper().removesuffix("B").removesuffix("I")
    multiplier = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(value[-1:], 1)
    number = int(value[:-1] if multiplier > 1 else value)
    if number <= 0:
        raise ValueError("must be positive")
    return number * multiplier


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve a Model Context Protocol app over Streamable HTTP and WebSocket (subprotocol 'mcp') "
        "on the same endpoints and path. Without --app it serves the built-in demo. Example: "
        "twistd -n mcpws --endpoint ssl:8443:privateKey=key.pem:certKey=cert.pem --app mypkg.app:server"
    )

    optFlags: list[Any] = [
        ["no-http", None, "Serve WebSocket only (no Streamable HTTP)."],
        ["no-websocket", None, "Serve Streamable HTTP only (no WebSocket upgrade)."],
        ["always-stream", None, "Answer every HTTP request on an SSE stream with a priming event, so any "
         "answer can be resumed after a dropped connection (default: JSON unless the handler streams)."],
        ["reuse-port", None, "Set SO_REUSEPORT on TCP listeners, so that several processes can listen on "
         "one port and the kernel spreads connections among them (Twisted 26.10 or later)."],
    ]

    optParameters: list[Any] = [
        ["app", "a", DEFAULT_APP, "The MCPServer to serve, as module:attribute."],
        ["app-dir", None, ".",
         "Directory --app is imported from, ahead of installed packages (default: the current one)."],
        ["path", None, "/mcp", "The URL path clients connect to."],
        ["ping-interval", None, 20.0, "Seconds between WebSocket pings (0: off).", _positive_float],
        ["ping-timeout", None, 10.0, "Seconds to wait for a pong before dropping the peer (0: forever).",
         _positive_float],
        ["max-message-size", None, DEFAULT_MAX_MESSAGE_SIZE,
         "Largest message in bytes (K, M suffixes allowed); larger ones close with 1009.", _size],
        ["max-in-flight", None, 64, "Requests one session may have running at once.", _count(1)],
        ["max-connections", None, DEFAULT_MAX_SESSIONS,
         "MCP sessions per process (WebSocket connections, HTTP sessions); more get HTTP 503 "
         "(0: no limit). Mind the open-file limit (ulimit -n, LimitNOFILE=).", _count(0)],
        ["max-handshakes", None, 256,
         "Connections still in the HTTP handshake; when full, the longest waiting is dropped.", _count(1)],
        ["max-header-size", None, DEFAULT_MAX_HEADER_BYTES,
         "Bytes in the upgrade request's head (K suffix allowed); more get HTTP 431.", _size],
        ["max-headers", None, 100, "Header lines in the upgrade request; more get HTTP 431.", _count(1)],
        ["init-timeout", None, 20.0,
         "Seconds a new session has to finish the MCP handshake before it is closed (0: no limit).",
         _positive_float],
        ["max-fragments", None, 1024, "WebSocket frames one message may arrive in; more close with 1009.",
         _count(1)],
        ["max-batch-size", None, 64, "Messages in one JSON-RPC batch (2025-03-26); more get one error.",
         _count(1)],
        ["max-output-buffer", None, DEFAULT_MAX_OUTPUT_BUFFER,
         "Unread output per connection (K, M suffixes) over which progress and log messages are dropped.",
         _size],
        ["output-stall-timeout", None, 30.0,
         "Seconds a client may leave more than --max-output-buffer unread before it is closed (1008).",
         _positive_float],
        ["session-idle-timeout", None, 1800.0,
         "Seconds an HTTP session may go without a request or an open stream before it ends (0: never).",
         _positive_float],
        ["sse-keepalive", None, 15.0, "Seconds between SSE keep-alive comments (0: none).", _positive_float],
        ["sse-retry", None, 1000, "Milliseconds a client waits before resuming a dropped SSE stream.",
         _count(0)],
        ["max-replay-events", None, 1000, "SSE events kept per HTTP session for Last-Event-ID replay.",
         _count(0)],
        ["max-replay-size", None, 8 * 1024 * 1024,
         "Bytes of SSE events kept per HTTP session for replay (K, M suffixes).", _size],
        ["replay-ttl", None, 300.0, "Seconds an SSE event is kept for replay.", _positive_float],
        ["max-replay-total", None, 64 * 1024 * 1024,
         "Bytes of SSE events kept for replay by all HTTP sessions together (K, M suffixes).", _size],
        ["max-subscriptions", None, None,
         "Resources one session may subscribe to (default: the app's, 100).", _count(0)],
        ["max-uri-length", None, None,
         "Longest URI a session may subscribe to or read through a template (default: the app's, 8192).",
         _count(1)],
        ["handler-timeout", None, 0.0,
         "Seconds a handler may run before it is cancelled and the client gets an error (0: no limit).",
         _positive_float],
        ["open-handshake-timeout", None, 5.0, "Seconds a client has to finish the WebSocket upgrade.",
         _positive_float],
        ["close-handshake-timeout", None, 1.0, "Seconds to wait for the peer's close frame.",
         _positive_float],
        ["drain-delay", None, 0.0,
         "At shutdown, seconds to keep serving live sessions while /healthz and new sessions get 503, "
         "so that load balancers see the drain first (at least their check interval times fall).",
         _positive_float],
        ["drain-timeout", None, 10.0,
         "At shutdown, seconds running requests may take to finish before connections close.",
         _positive_float],
        ["auth-token-file", None, None,
         "Require 'Authorization: Bearer <token>'; the file has name:token lines (HTTP 401 otherwise)."],
        ["oauth-issuer", None, None,
         "Require OAuth access tokens from this authorization server (its 'iss'), e.g. "
         "https://login.example.com/realms/mcp; needs --oauth-resource."],
        ["oauth-resource", None, None,
         "This server's URL as clients use it, e.g. https://mcp.example.com/mcp: the audience tokens "
         "must name (RFC 8707) and the base of the protected-resource metadata."],
        ["oauth-jwks-uri", None, None, "The issuer's signing keys (default: its metadata's jwks_uri)."],
        ["oauth-introspection-client-id", None, None,
         "Introspect opaque tokens (RFC 7662) as this client; its secret is in "
         "--oauth-introspection-secret-file."],
        ["oauth-introspection-secret-file", None, None, "A file holding the introspection client's secret."],
        ["metrics-endpoint", None, None,
         "Serve Prometheus /metrics and /healthz here, e.g. tcp:9100:interface=127.0.0.1."],
        ["close-timeout", None, 5.0, "At shutdown, seconds to wait for clients to close (after draining).",
         _positive_float],
        ["health-endpoint", None, None,
         "Also serve /healthz on its own listener (e.g. for probes when the main one speaks PROXY "
         "protocol): tcp:8081:interface=127.0.0.1."],
        ["workers", None, 0,
         "Run this many server processes, each with --reuse-port, under a thin parent that restarts "
         "one that dies and passes SIGTERM on (0: one process, no parent). {worker} in an option "
         "becomes each one's number: --metrics-endpoint tcp:910{worker}.", _count(0)],
        ["bus", None, None,
         "Share resource and list-change notifications with every instance serving this app: "
         "redis://host:port[/db] (needs mcp-twisted[redis])."],
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # Twisted's usage.Options, unannotated
        self["endpoints"] = []
        self["allowed_origins"] = []
        self["allowed_hosts"] = []
        self["trusted_proxies"] = []
        self["oauth_audiences"] = []
        self["oauth_scopes"] = []
        self["oauth_required_scopes"] = []
        self.arguments: list[str] = []

    def parseOptions(self, options: list[str] | None = None) -> None:
        # Kept for --workers, which starts children with the same arguments.
        self.arguments = list(options if options is not None else sys.argv[1:])
        super().parseOptions(options)  # type: ignore[no-untyped-call]  # Twisted's usage.Options, unannotated

    def opt_endpoint(self, description: str) -> None:
        """Where to listen, as a Twisted endpoint string (repeatable); default
        tcp:8080:interface=127.0.0.1. Examples: ssl:8443:privateKey=key.pem:certKey=cert.pem,
        unix:/run/mcp/mcp.sock:mode=660, systemd:domain=INET:index=0."""
        self["endpoints"].append(description)

    opt_e = opt_endpoint

    def opt_allowed_origin(self, origin: str) -> None:
        """A browser Origin allowed to connect besides the server's own (repeatable):
        https://app.example.com, https://*.example.com, null, or * for any."""
        self["allowed_origins"].append(origin)

    def opt_allowed_host(self, host: str) -> None:
        """A Host header accepted on a loopback listener besides loopback names (repeatable),
        e.g. the public name a reverse proxy forwards: mcp.example.com."""
        self["allowed_hosts"].append(host)

    def opt_trusted_proxy(self, network: str) -> None:
        """An address or network (CIDR) of a proxy whose X-Forwarded-For header is believed
        (repeatable), e.g. 10.0.0.0/8; the client's address is then the last one it names
        that is not a trusted proxy. Behind HAProxy prefer haproxy: endpoints (PROXY protocol)."""
        self["trusted_proxies"].append(network)

    def opt_oauth_audience(self, audience: str) -> None:
        """An accepted 'aud' of access tokens (repeatable; default: --oauth-resource)."""
        self["oauth_audiences"].append(audience)

    def opt_oauth_scope(self, scope: str) -> None:
        """A scope this server knows, listed in its metadata (repeatable); tools, resources and
        prompts declare what they need with scopes=."""
        self["oauth_scopes"].append(scope)

    def opt_oauth_required_scope(self, scope: str) -> None:
        """A scope every request needs (repeatable); 401s name it."""
        self["oauth_required_scopes"].append(scope)

    def postOptions(self) -> None:
        if not self["endpoints"]:
            self["endpoints"] = [DEFAULT_ENDPOINT]


def load_app(spec: str, app_dir: str | None = None) -> MCPServer:
    """Import ``module:attribute`` and check it is an ``MCPServer``.

    ``app_dir`` goes first on ``sys.path``, as uvicorn's ``--app-dir`` and
    gunicorn's working directory do: the ``twistd`` script's path starts with
    its own directory, so an app next to the operator would not be found.
    """
    from pathlib import Path

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise StartupError(f"--app {spec!r}: expected module:attribute, e.g. mypkg.app:server")
    if app_dir is not None:
        directory = Path(app_dir).resolve()  # absolute: twistd may change directory later
        if not directory.is_dir():
            raise StartupError(f"--app-dir {app_dir!r}: not a directory")
        if str(directory) not in sys.path:
            sys.path.insert(0, str(directory))
    try:
        module = importlib.import_module(module_name)
    except Exception as e:
        raise StartupError(f"--app {spec!r}: cannot import {module_name!r}: {e}") from None
    try:
        app = getattr(module, attribute)
    except AttributeError:
        raise StartupError(f"--app {spec!r}: module {module_name!r} has no {attribute!r}") from None
    if not isinstance(app, MCPServer):
        raise StartupError(f"--app {spec!r}: {type(app).__name__} is not an MCPServer")
    return app


def make_endpoints(reactor: Any, descriptions: list[str], option: str = "--endpoint") -> dict[str, Any]:
    """Endpoint string -> endpoint, or a one-line exit naming the bad string.

    ``ssl:`` strings get forward-secret ciphers only (see ``mcp_twisted.endpoints``).
    """
    from mcp_twisted.endpoints import server_from_string

    endpoints = {}
    for description in descriptions:
        try:
            endpoints[description] = server_from_string(reactor, description)
        except Exception as e:
            # TLS endpoints read certificate files at parse time, so a
            # missing or unreadable file shows up here too.
            detail = str(e) or type(e).__name__
            if description.startswith("systemd:"):
                detail = f"no socket passed by systemd (LISTEN_FDS/LISTEN_PID not set or wrong): {detail}"
            raise StartupError(f"{option} {description!r}: {detail}") from None
    return endpoints


def _oauth_server(options: Options) -> Any:
    """The ``--oauth-*`` resource server, or None; a bad setting is one line."""
    if not options["oauth-issuer"]:
        if options["oauth-resource"]:
            raise StartupError("--oauth-resource needs --oauth-issuer")
        return None
    if not options["oauth-resource"]:
        raise StartupError("--oauth-issuer needs --oauth-resource (this server's URL as clients use it)")
    from mcp_twisted.oauth import IntrospectionCredentials, OAuthResourceServer, OAuthSettings

    introspection = None
    if options["oauth-introspection-client-id"]:
        secret_file = options["oauth-introspection-secret-file"]
        if not secret_file:
            raise StartupError("--oauth-introspection-client-id needs --oauth-introspection-secret-file")
        try:
            secret = Path(secret_file).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise StartupError(f"--oauth-introspection-secret-file: {e}") from None
        except UnicodeDecodeError as e:
            raise StartupError(f"--oauth-introspection-secret-file {secret_file!r}: not UTF-8 text "
                               f"(byte {e.start})") from None
        introspection = IntrospectionCredentials(options["oauth-introspection-client-id"], secret)
    try:
        return OAuthResourceServer(OAuthSettings(
            resource=options["oauth-resource"], issuer=options["oauth-issuer"],
            audiences=tuple(options["oauth_audiences"]), jwks_uri=options["oauth-jwks-uri"],
            introspection=introspection, scopes_supported=tuple(options["oauth_scopes"]),
            required_scopes=tuple(options["oauth_required_scopes"]),
        ))
    except ValueError as e:
        raise StartupError(f"--oauth-*: {e}") from None


def _metadata_resources(oauth: Any) -> dict[str, Any]:
    """The protected-resource metadata (RFC 9728) at its well-known paths."""
    if oauth is None:
        return {}
    from mcp_twisted.oauth import ProtectedResourceMetadataResource

    resource = ProtectedResourceMetadataResource(oauth.metadata)
    return dict.fromkeys(oauth.metadata.paths, resource)


class _Closing(Service):
    """Calls ``close`` when the process stops: idle connections to other
    servers (the authorization server's) go with the listeners."""

    def __init__(self, close: Callable[[], Any]) -> None:
        self._close = close

    def stopService(self) -> Any:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's Service, unannotated
        return self._close()


class TwistdService(MCPWebSocketService):
    """Under twistd, a listener that cannot bind ends the process with one line."""

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()  # type: ignore[no-untyped-call]  # MultiService's, unannotated
        except ListenError as e:
            raise StartupError(str(e)) from None


# Endpoint types whose listeners --workers can share (SO_REUSEPORT).
_TCP_TYPES = frozenset({"tcp", "tcp6", "ssl", "mtls"})


def make_workers(reactor: Any, options: Options) -> IService:
    """The ``--workers`` parent. What the children would fail on at once (the
    app, the endpoint strings) is checked here, once, so a mistake is one
    line instead of N children restarted in a loop."""
    from mcp_twisted.endpoints import reuse_port_reactor, unwrap_description
    from mcp_twisted.workers import WORKER_NUMBER, WorkersService, child_arguments, twistd_command

    try:
        reusing = reuse_port_reactor(reactor)
    except ValueError as e:
        raise StartupError(f"--workers: {e}") from None
    make_endpoints(reusing, options["endpoints"])
    for description in options["endpoints"]:
        # The workers share each port through SO_REUSEPORT, which only TCP
        # has: a second worker could never bind a unix socket, for one.
        if unwrap_description(description).partition(":")[0] not in _TCP_TYPES:
            raise StartupError(f"--endpoint {description!r}: with --workers every endpoint must be TCP "
                               f"({', '.join(sorted(_TCP_TYPES))}), for the workers to share its port")
    load_app(options["app"], options["app-dir"])
    for option in ("metrics-endpoint", "health-endpoint"):
        description = options[option]
        if description and WORKER_NUMBER not in description:
            raise StartupError(f"--{option} {description!r}: with --workers each worker needs its own; put "
                               f"{WORKER_NUMBER} (the worker's number) in it, e.g. tcp:910{WORKER_NUMBER}")
    stop_timeout = options["drain-delay"] + options["drain-timeout"] + options["close-timeout"] + 5
    return WorkersService(reactor, twistd_command(child_arguments(options.arguments)), options["workers"],
                          stop_timeout)


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    if options["workers"]:
        return make_workers(reactor, options)
    # Everything the server itself imports, imported before --app-dir goes
    # first on sys.path: a stray file there (prometheus_client.py, ...) must
    # not replace the server's own modules.
    import mcp_twisted.auth
    import mcp_twisted.bus
    import mcp_twisted.endpoints
    import mcp_twisted.metrics
    import mcp_twisted.proxy

    app = load_app(options["app"], options["app-dir"])
    # Per-session limits the app keeps; the operator's word wins over the app's.
    if options["max-subscriptions"] is not None:
        app.max_subscriptions = options["max-subscriptions"]
    if options["max-uri-length"] is not None:
        app.max_uri_length = options["max-uri-length"]
    listening_reactor: Any = reactor
    if options["reuse-port"]:
        try:
            listening_reactor = mcp_twisted.endpoints.reuse_port_reactor(reactor)
        except ValueError as e:
            raise StartupError(f"--reuse-port: {e}") from None
    endpoints = make_endpoints(listening_reactor, options["endpoints"])
    health_endpoint = None
    if options["health-endpoint"]:
        (health_endpoint,) = make_endpoints(
            reactor, [options["health-endpoint"]], "--health-endpoint").values()
    try:
        trusted_proxies = mcp_twisted.proxy.TrustedProxies(options["trusted_proxies"])
    except ValueError as e:
        raise StartupError(f"--trusted-proxy: {e}") from None
    auth = None
    if options["auth-token-file"]:
        from mcp_twisted.auth import TokenAuthenticator

        try:
            auth = TokenAuthenticator.from_file(options["auth-token-file"])
        except (OSError, ValueError) as e:
            raise StartupError(f"--auth-token-file: {e}") from None
    oauth = _oauth_server(options)
    if oauth is not None:
        if auth is not None:
            raise StartupError("--oauth-issuer and --auth-token-file: choose one way to check tokens")
        auth = oauth
    metrics = metrics_endpoint = None
    if options["metrics-endpoint"]:
        from twisted.logger import Logger

        from mcp_twisted.endpoints import loopback_by_default
        from mcp_twisted.metrics import Metrics

        metrics = Metrics()
        # /metrics has no authentication: without an explicit interface= it
        # stays on loopback instead of Twisted's every-address default.
        given = options["metrics-endpoint"]
        description = loopback_by_default(given)
        if description != given:
            Logger().warn(
                "--metrics-endpoint {given!r} names no interface: serving /metrics and /healthz on "
                "loopback only ({description!r}); they ask for no credentials, so to expose them "
                "add interface=0.0.0.0 (or an address) deliberately",
                given=given, description=description)
        (metrics_endpoint,) = make_endpoints(reactor, [description], "--metrics-endpoint").values()
    try:
        factory = MCPServerFactory(
            app,
            path=options["path"],
            allowed_origins=options["allowed_origins"],
            allowed_hosts=options["allowed_hosts"],
            max_message_size=options["max-message-size"],
            ping_interval=options["ping-interval"],
            ping_timeout=options["ping-timeout"],
            max_in_flight=options["max-in-flight"],
            max_connections=options["max-connections"],
            max_handshakes=options["max-handshakes"],
            max_header_bytes=options["max-header-size"],
            max_headers=options["max-headers"],
            init_timeout=options["init-timeout"],
            max_fragments=options["max-fragments"],
            max_batch_size=options["max-batch-size"],
            max_output_buffer=options["max-output-buffer"],
            output_stall_timeout=options["output-stall-timeout"],
            handler_timeout=options["handler-timeout"] or None,
            open_handshake_timeout=options["open-handshake-timeout"],
            close_handshake_timeout=options["close-handshake-timeout"],
            auth=auth,
            metrics=metrics,
            trusted_proxies=trusted_proxies,
        )
    except ValueError as e:
        raise StartupError(str(e)) from None
    if options["no-http"] and options["no-websocket"]:
        raise StartupError("--no-http and --no-websocket: nothing left to serve")
    http = None
    if not options["no-http"]:
        from mcp_twisted.http import HTTPSettings, MCPHTTPResource

        http = MCPHTTPResource(factory.host, HTTPSettings(
            session_idle_timeout=options["session-idle-timeout"],
            keepalive_interval=options["sse-keepalive"],
            retry_ms=options["sse-retry"],
            max_events=options["max-replay-events"],
            max_event_bytes=options["max-replay-size"],
            event_ttl=options["replay-ttl"],
            max_replay_total=options["max-replay-total"],
            max_output_buffer=options["max-output-buffer"],
            output_stall_timeout=options["output-stall-timeout"],
            always_stream=bool(options["always-stream"]),
            trusted_proxies=trusted_proxies,
        ))
    service = TwistdService(
        factory, endpoints, http=http, websocket=not options["no-websocket"],
        drain_delay=options["drain-delay"], drain_timeout=options["drain-timeout"],
        close_timeout=options["close-timeout"], metrics_endpoint=metrics_endpoint,
        health_endpoint=health_endpoint, reuse_port=bool(options["reuse-port"]),
        extra=_metadata_resources(oauth),
    )
    if oauth is not None:
        # Its connections to the authorization server close with the rest.
        _Closing(oauth.close).setServiceParent(service)  # type: ignore[no-untyped-call]  # Twisted's Service, unannotated
    if options["bus"]:
        try:
            bus = mcp_twisted.bus.redis_bus(options["bus"])
        except (ValueError, ImportError) as e:
            raise StartupError(f"--bus {options['bus']!r}: {e}") from None
        app.use_bus(bus)
        bus.setServiceParent(service)  # type: ignore[no-untyped-call]  # Twisted's Service, unannotated
    return service
