"""This server as an OAuth 2.1 protected resource (MCP authorization).

``OAuthResourceServer.authenticate`` is the authenticator ``Admission``
calls with the ``Authorization`` header: it answers with the caller's
``OAuthIdentity`` at once when it can (a JWT whose key is cached, a cached
introspection), with a Deferred when the authorization server must be asked
first, and refuses with a ``Refusal`` that carries the ``WWW-Authenticate``
challenge RFC 6750 and RFC 9728 ask for (never the token).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent

from mcp_twisted.hosting import Refusal
from mcp_twisted.oauth._errors import ServerUnavailable, TokenError
from mcp_twisted.oauth._http import JSONClient, check_url
from mcp_twisted.oauth._keys import DEFAULT_ALGORITHMS, KeySet, ServerMetadata
from mcp_twisted.oauth._tokens import (
    DEFAULT_LEEWAY,
    IntrospectionCredentials,
    Introspector,
    JWTValidator,
    OAuthIdentity,
    check_leeway,
)

WELL_KNOWN = "/.well-known/oauth-protected-resource"
# RFC 6750 2.1: b64token; longer than any provider's tokens, short enough to refuse junk early.
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_TOKEN_LENGTH = 16 * 1024


@dataclass(frozen=True)
class ProtectedResourceMetadata:
    """The RFC 9728 document clients read to find the authorization server."""

    resource: str
    authorization_servers: tuple[str, ...]
    scopes_supported: tuple[str, ...] = ()
    bearer_methods_supported: tuple[str, ...] = ("header",)
    resource_name: str | None = None
    resource_documentation: str | None = None

    def document(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "resource": self.resource,
            "authorization_servers": list(self.authorization_servers),
            "bearer_methods_supported": list(self.bearer_methods_supported),
        }
        if self.scopes_supported:
            document["scopes_supported"] = list(self.scopes_supported)
        if self.resource_name is not None:
            document["resource_name"] = self.resource_name
        if self.resource_documentation is not None:
            document["resource_documentation"] = self.resource_documentation
        return document

    @property
    def url(self) -> str:
        """Where the document is (RFC 9728 3.1: the well-known name inserted
        before the resource's path): what ``resource_metadata`` points to."""
        parts = urlsplit(self.resource)
        return f"{parts.scheme}://{parts.netloc}{self.paths[0]}"

    @property
    def paths(self) -> tuple[str, ...]:
        """The paths to serve it on: the path-suffixed form first, then the
        bare one that clients fall back to."""
        path = urlsplit(self.resource).path.rstrip("/")
        return (WELL_KNOWN + path, WELL_KNOWN) if path else (WELL_KNOWN,)


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def bearer_challenge(**params: str | None) -> str:
    """A ``WWW-Authenticate: Bearer`` value; parameters that are None or empty are left out."""
    return "Bearer " + ", ".join(f"{name}={_quoted(value)}" for name, value in params.items() if value)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header (the scheme's case
    ignored); None when the header is absent or another scheme."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


@dataclass(frozen=True)
class OAuthSettings:
    """What an operator configures (the ``--oauth-*`` options)."""

    resource: str  # this server's URL as clients use it, e.g. https://mcp.example.com/mcp
    issuer: str  # the authorization server, exactly as its tokens' "iss" says
    audiences: tuple[str, ...] = ()  # accepted "aud" values; by default (resource,) (RFC 8707)
    jwks_uri: str | None = None  # by default the issuer metadata's jwks_uri
    introspection: IntrospectionCredentials | None = None  # for opaque tokens (RFC 7662)
    accept_jwt: bool = True  # False: every token is introspected
    scopes_supported: tuple[str, ...] = ()
    required_scopes: tuple[str, ...] = ()  # every request needs these (and 401s name them)
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    leeway: float = DEFAULT_LEEWAY  # seconds of clock skew allowed on exp and nbf
    require_at_jwt: bool = False
    # Also the wait before asking again for metadata or an introspection that failed.
    jwks_min_refresh: float = 30.0
    jwks_max_age: float = 3600.0
    introspection_cache_ttl: float = 30.0
    introspection_cache_size: int = 1024
    resource_name: str | None = None
    resource_documentation: str | None = None
    authorization_servers: tuple[str, ...] = ()  # for the metadata; by default (issuer,)

    def __post_init__(self) -> None:
        check_url("the resource", self.resource)
        check_url("the issuer", self.issuer)
        for name, url in (("the JWKS URI", self.jwks_uri),
                          ("the introspection endpoint", self.introspection and self.introspection.endpoint)):
            if url:
                check_url(name, url)
        check_leeway(self.leeway)
        for name in ("jwks_min_refresh", "jwks_max_age", "introspection_cache_ttl"):
            seconds = getattr(self, name)
            if not 0 <= seconds < math.inf:  # also refuses NaN
                raise ValueError(f"{name} must be a finite number of seconds, not {seconds!r}")
        if not self.accept_jwt and self.introspection is None:
            raise ValueError("neither JWT access tokens nor introspection: no token could be accepted")


class OAuthResourceServer:
    """Access-token checks, challenges and metadata for one resource."""

    def __init__(
        self,
        settings: OAuthSettings,
        *,
        clock: IReactorTime | None = None,
        reactor: Any = None,
        agent: IAgent | None = None,
    ) -> None:
        """
        :param clock: for the caches and rate limits (the reactor by default).
        :param reactor: for the connections to the authorization server.
        :param agent: to make those requests (custom TLS trust, proxies).
        """
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.settings = settings
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.client = JSONClient(reactor, agent=agent)
        self.server_metadata = ServerMetadata(settings.issuer, self.client, self.clock,
                                              retry_after=settings.jwks_min_refresh)
        audiences = settings.audiences or (settings.resource,)
        self.metadata = ProtectedResourceMetadata(
            resource=settings.resource,
            authorization_servers=settings.authorization_servers or (settings.issuer,),
            scopes_supported=settings.scopes_supported,
            resource_name=settings.resource_name,
            resource_documentation=settings.resource_documentation,
        )
        jwks_uri = settings.jwks_uri
        self.keys = KeySet(
            (lambda: succeed(jwks_uri)) if jwks_uri else (lambda: self.server_metadata.endpoint("jwks_uri")),
            self.client, self.clock, min_refresh=settings.jwks_min_refresh, max_age=settings.jwks_max_age)
        self.jwt = JWTValidator(
            issuer=settings.issuer, audiences=audiences, keys=self.keys, clock=self.clock,
            algorithms=settings.algorithms, leeway=settings.leeway, require_at_jwt=settings.require_at_jwt,
        ) if settings.accept_jwt else None
        self.introspector: Introspector | None = None
        credentials = settings.introspection
        if credentials is not None:
            endpoint = credentials.endpoint
            self.introspector = Introspector(
                credentials=credentials,
                endpoint=(lambda: succeed(endpoint)) if endpoint else (
                    lambda: self.server_metadata.endpoint("introspection_endpoint")),
                issuer=settings.issuer, audiences=audiences, client=self.client, clock=self.clock,
                leeway=settings.leeway, cache_ttl=settings.introspection_cache_ttl,
                cache_size=settings.introspection_cache_size, retry_after=settings.jwks_min_refresh,
            )

    # -- admission ------------------------------------------------------

    def authenticate(self, authorization: str | None) -> OAuthIdentity | Deferred[OAuthIdentity]:
        """The identity for an ``Authorization`` header: now, or a Deferred
        when keys or an introspection answer must be fetched. Raises (or
        fails with) ``Refusal``: 401 with a challenge for a missing or bad
        token, 403 when it lacks the required scopes, 503 when the
        authorization server cannot be reached to check it."""
        token = bearer_token(authorization)
        if not token:
            raise self.unauthorized()
        try:
            if len(token) > MAX_TOKEN_LENGTH or not _BEARER_TOKEN.fullmatch(token):
                raise TokenError("malformed token")
            checked = self._validate(token)
        except (TokenError, ServerUnavailable) as error:
            raise self._refusal(error) from None
        if isinstance(checked, Deferred):
            return checked.addCallbacks(self._admitted, self._failed)
        return self._admitted(checked)

    def _validate(self, token: str) -> OAuthIdentity | Deferred[OAuthIdentity]:
        # A JWS compact serialization has three parts; opaque tokens go to introspection.
        if self.jwt is not None and token.count(".") == 2:
            return self.jwt.validate(token)
        if self.introspector is not None:
            return self.introspector.validate(token)
        raise TokenError("malformed token")

    def _admitted(self, identity: OAuthIdentity) -> OAuthIdentity:
        refusal = self.scope_refusal(identity, self.settings.required_scopes)
        if refusal is not None:
            raise refusal
        return identity

    def _failed(self, failure: Failure) -> NoReturn:
        try:
            failure.raiseException()
        except (TokenError, ServerUnavailable) as error:
            raise self._refusal(error) from None

    def _refusal(self, error: BaseException) -> Refusal:
        if isinstance(error, ServerUnavailable):
            return Refusal(503, "auth-server", "Service Unavailable: cannot check the token now",
                           [("Retry-After", str(int(self.settings.jwks_min_refresh)))])
        return self.unauthorized(str(error))

    # -- challenges -----------------------------------------------------

    def unauthorized(self, problem: str | None = None) -> Refusal:
        """401: no token (``problem`` None), or a token refused for ``problem``
        (``error="invalid_token"``)."""
        header = bearer_challenge(
            error="invalid_token" if problem else None,
            error_description=problem,
            resource_metadata=self.metadata.url,
            scope=" ".join(self.settings.required_scopes),
        )
        text = f"Unauthorized: {problem}" if problem else "Unauthorized"
        return Refusal(401, "auth", text, [("WWW-Authenticate", header)])

    def scope_refusal(self, identity: object, needed: Iterable[str]) -> Refusal | None:
        """None when ``identity`` holds every scope in ``needed``; else the
        403 ``insufficient_scope`` refusal whose challenge names them, so
        that the client can ask the user for more (step-up)."""
        needed = tuple(needed)
        if not needed or (isinstance(identity, OAuthIdentity) and identity.has_scopes(needed)):
            return None
        header = bearer_challenge(
            error="insufficient_scope",
            scope=" ".join(needed),
            resource_metadata=self.metadata.url,
            error_description="the token lacks a scope this needs",
        )
        return Refusal(403, "scope", "Forbidden: insufficient scope", [("WWW-Authenticate", header)])

    def close(self) -> Deferred[None]:
        """Close idle connections to the authorization server (at shutdown)."""
        return self.client.close()
