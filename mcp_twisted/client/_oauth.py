"""OAuth 2.1 for the client: access tokens for servers that are protected resources.

The MCP authorization specification makes a protected server answer 401
with ``WWW-Authenticate: Bearer resource_metadata="..."``. ``OAuthClient``
takes it from there, the way the specification has clients do it:

1. the protected-resource metadata (RFC 9728): the URL in the challenge,
   else the well-known URL with the server's path, else the bare one; its
   ``resource`` must be this server (or a parent path of it);
2. the authorization server's metadata (RFC 8414, then OpenID discovery,
   the well-known name inserted before the issuer's path, then appended);
   its ``issuer`` must be the one asked for, exactly;
3. a client id: pre-registered, a Client ID Metadata Document URL (when the
   server supports them), or dynamic registration (RFC 7591), kept per
   authorization server (never shown to another one);
4. a token: authorization code with PKCE (S256) through ``authorize``, the
   application's "open this URL, give me the redirect" callback (the
   redirect's ``state`` and RFC 9207 ``iss`` are checked), or client
   credentials; always with ``resource`` (RFC 8707);
5. later: refreshed before it expires; a 403 ``insufficient_scope`` asks
   again with the union of the scopes held and the scopes named (step-up).

Everything goes through twisted.web's ``Agent``: each exchange is bounded in
time and size, and never blocks. Tokens live in a ``TokenStore`` (memory by
default); they are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass, replace
from io import BytesIO
from typing import Any, Protocol, TypeVar, cast
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

import jwt
import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from mcp_twisted.client._body import Collect
from mcp_twisted.oauth import JSONClient, metadata_urls
from mcp_twisted.oauth._keys import Coalescer
from mcp_twisted.session import as_deferred

__all__ = [
    "AUTHORIZATION_CODE",
    "CLIENT_CREDENTIALS",
    "Challenge",
    "MemoryTokenStore",
    "OAuthClient",
    "OAuthError",
    "OAuthTokens",
    "TokenStore",
    "canonical_resource",
]

log = Logger()

AUTHORIZATION_CODE = "authorization_code"
CLIENT_CREDENTIALS = "client_credentials"
PRM_WELL_KNOWN = "/.well-known/oauth-protected-resource"
DEFAULT_REDIRECT_URI = "http://127.0.0.1/callback"
# Refusals one request answers with a new token (401, then 403 for a scope) before giving up.
MAX_CHALLENGES = 2
# A token this close to its expiry is refreshed before it is sent.
EXPIRY_MARGIN = 30.0
# A client assertion (private_key_jwt) is good for this long.
ASSERTION_LIFETIME = 60.0
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

Authorize = Callable[[str], "str | Deferred[str] | Awaitable[str]"]
T = TypeVar("T")
# What a refused attempt says: the HTTP status and the WWW-Authenticate headers.
Refused = tuple[int, list[str]]


class OAuthError(Exception):
    """No token could be had: the message says why (never a token or secret)."""


class TokenStore(Protocol):
    """Where tokens and client registrations are kept, as JSON objects under
    string keys. Either method may answer at once or with a Deferred (a
    keyring, a file, a database)."""

    def load(self, key: str) -> dict[str, Any] | Deferred[dict[str, Any] | None] | None: ...

    def save(self, key: str, value: dict[str, Any] | None) -> Deferred[None] | None:
        """Keep ``value`` under ``key``; None forgets it."""


class MemoryTokenStore:
    """The default store: this process's memory."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}

    def load(self, key: str) -> dict[str, Any] | None:
        return self.values.get(key)

    def save(self, key: str, value: dict[str, Any] | None) -> None:
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value


@dataclass(frozen=True)
class OAuthTokens:
    """What a token endpoint gave, and for what: the issuer and resource
    bind it (a token is never sent to another server or refreshed at
    another authorization server)."""

    access_token: str
    issuer: str
    resource: str
    scopes: tuple[str, ...] = ()  # granted (or, when the answer named none, requested)
    refresh_token: str | None = None
    expires_at: float | None = None  # on the client's clock

    def expired(self, now: float, margin: float = EXPIRY_MARGIN) -> bool:
        return self.expires_at is not None and now >= self.expires_at - margin

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "scopes": list(self.scopes)}

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> OAuthTokens:
        return cls(**{**value, "scopes": tuple(value.get("scopes") or ())})


@dataclass(frozen=True)
class _Registration:
    """A client id at one authorization server, and how it authenticates there."""

    client_id: str
    client_secret: str | None = None
    auth_method: str = "none"  # none, client_secret_basic, client_secret_post, private_key_jwt


_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_AUTH_PART = re.compile(rf'\s*,?\s*(?:({_TOKEN})\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,]*)|({_TOKEN}))')


@dataclass(frozen=True)
class Challenge:
    """The ``Bearer`` challenge of a ``WWW-Authenticate`` header (RFC 6750, RFC 9728)."""

    error: str | None = None
    scopes: tuple[str, ...] = ()
    resource_metadata: str | None = None

    @classmethod
    def parse(cls, headers: Iterable[str]) -> Challenge:
        """The Bearer challenge among the headers' challenges (an empty one if none)."""
        for header in headers:
            scheme: str | None = None
            params: dict[str, str] = {}
            for match in _AUTH_PART.finditer(header):
                name, value, word = match.groups()
                if word is not None:
                    if scheme == "bearer":
                        break
                    scheme, params = word.lower(), {}
                elif name is not None and value is not None:
                    if value.startswith('"'):
                        value = re.sub(r"\\(.)", r"\1", value[1:-1])
                    params.setdefault(name.lower(), value)
            if scheme == "bearer":
                return cls(params.get("error"), tuple(params.get("scope", "").split()),
                           params.get("resource_metadata"))
        return cls()


def bearer(headers: dict[str, str], token: str | None) -> dict[str, str]:
    """``headers`` with the access token, if there is one."""
    return {**headers, "Authorization": f"Bearer {token}"} if token else headers


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secure(name: str, url: object) -> str:
    """An https URL (http only on loopback, for development and tests):
    codes, tokens and secrets must not travel in clear."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or not parts.hostname or parts.fragment or not (
            parts.scheme == "https" or (parts.scheme == "http" and _loopback(parts.hostname))):
        raise OAuthError(f"{name} is not an https URL: {url!r}")
    return cast(str, url)


def canonical_resource(url: str) -> str:
    """The server's canonical URI (RFC 8707, MCP): scheme and host in lower
    case, no fragment; ``ws``/``wss`` become ``http``/``https``, since the
    WebSocket upgrade shares the Streamable HTTP endpoint and its metadata."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme.lower(), parts.scheme.lower())
    netloc = (parts.hostname or "").lower()
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((scheme, netloc, parts.path, parts.query, ""))


def resource_metadata_urls(server: str) -> list[str]:
    """Where a server's protected-resource metadata may be, in the order the
    MCP specification has clients try them: with the server's path, then bare."""
    parts = urlsplit(server)
    path = parts.path.rstrip("/")
    root = urlunsplit((parts.scheme, parts.netloc, PRM_WELL_KNOWN, "", ""))
    return [root + path, root] if path else [root]


def _covers(resource: str, server: str) -> bool:
    """Whether a metadata ``resource`` names ``server``: the same origin, and
    its path the server's or a parent of it (a bare origin covers all)."""
    ours, theirs = urlsplit(server), urlsplit(canonical_resource(resource))
    if (ours.scheme, ours.netloc) != (theirs.scheme, theirs.netloc):
        return False
    prefix = theirs.path.rstrip("/")
    return ours.path.rstrip("/") == prefix or ours.path.startswith(prefix + "/")


def _union(*groups: Iterable[str]) -> tuple[str, ...]:
    """Scopes of every group, each once, in the order first named."""
    return tuple(dict.fromkeys(scope for group in groups for scope in group))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class _JSONExchange:
    """GETs and POSTs to authorization servers whose answers are JSON
    objects; every exchange bounded in time and in size."""

    def __init__(self, reactor: Any, agent: IAgent | None, timeout: float, max_size: int) -> None:
        # The resource server's JSON client: its agent (and pool), timeout and size limit.
        self.client = JSONClient(reactor, agent=agent, timeout=timeout, max_size=max_size)

    def get(self, url: str) -> Deferred[tuple[int, dict[str, Any] | None]]:
        return self._request(b"GET", url, {}, None)

    def post_form(self, url: str, fields: dict[str, str],
                  headers: dict[str, str]) -> Deferred[tuple[int, dict[str, Any] | None]]:
        headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
        return self._request(b"POST", url, headers, urlencode(fields).encode())

    def post_json(self, url: str, document: dict[str, Any]) -> Deferred[tuple[int, dict[str, Any] | None]]:
        return self._request(b"POST", url, {"Content-Type": "application/json"}, orjson.dumps(document))

    def _request(self, method: bytes, url: str, headers: dict[str, str],
                 body: bytes | None) -> Deferred[tuple[int, dict[str, Any] | None]]:
        exchange = Deferred.fromCoroutine(self._exchange(method, url, headers, body))
        exchange.addTimeout(self.client.timeout, self.client.clock)  # cancels whichever step it is at

        def unavailable(failure: Failure) -> Failure:
            reasons = getattr(failure.value, "reasons", None)  # Agent wraps the cause
            cause = reasons[0] if reasons else failure
            why = cause.getErrorMessage() or type(cause.value).__name__
            return Failure(OAuthError(f"{url}: {why}"))

        return exchange.addErrback(unavailable)

    async def _exchange(self, method: bytes, url: str, headers: dict[str, str],
                        body: bytes | None) -> tuple[int, dict[str, Any] | None]:
        all_headers = Headers({"Accept": ["application/json"]})
        for name, value in headers.items():
            all_headers.setRawHeaders(name, [value])
        producer = FileBodyProducer(BytesIO(body)) if body is not None else None
        response = await self.client.agent.request(method, url.encode("ascii"), all_headers, producer)
        collected = Collect(self.client.max_size)
        response.deliverBody(collected)
        data = await collected.done
        try:
            document = orjson.loads(data) if data.strip() else None
        except orjson.JSONDecodeError:
            document = None
        return response.code, document if isinstance(document, dict) else None

    def close(self) -> Deferred[None]:
        return self.client.close()


class OAuthClient:
    """Gets, keeps and renews access tokens for MCP servers (``auth=`` of
    ``MCPClientService``); one ``OAuthClient`` may serve several servers.

    :param authorize: the user's part of the authorization code grant: given
        the authorization URL, open it (a browser) and return the URL the
        authorization server redirected to (with ``code``, ``state`` and
        ``iss``), at once, as a Deferred or as a coroutine. Without it, the
        client credentials grant is used.
    :param client_id: a pre-registered client id (and ``client_secret``, or
        ``private_key`` for ``private_key_jwt``); ``client_issuer`` limits it
        to one authorization server.
    :param client_metadata_url: the HTTPS URL of this client's Client ID
        Metadata Document, used as its client id where the server supports them.
    :param client_name: what dynamic registration tells the server this client is.
    :param redirect_uri: where the authorization server sends the user back.
    :param scopes: the scopes to ask for; by default those the server names
        (its challenge, else its metadata's ``scopes_supported``).
    :param offline_access: ask for ``offline_access`` (a refresh token) when
        the authorization server lists it.
    :param grant: ``"auto"``, ``"authorization_code"`` or ``"client_credentials"``.
    :param store: where tokens and registrations are kept (``MemoryTokenStore``).
    :param agent: for the requests to authorization servers (TLS trust, proxies).
    :param timeout: seconds each exchange with a server may take;
        ``authorization_timeout`` the seconds ``authorize`` may take.
    """

    def __init__(
        self,
        reactor: Any = None,
        *,
        authorize: Authorize | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        private_key: str | None = None,
        signing_algorithm: str = "ES256",
        client_issuer: str | None = None,
        client_metadata_url: str | None = None,
        client_name: str = "mcp-twisted",
        redirect_uri: str = DEFAULT_REDIRECT_URI,
        scopes: Iterable[str] | None = None,
        offline_access: bool = True,
        grant: str = "auto",
        store: TokenStore | None = None,
        agent: IAgent | None = None,
        timeout: float = 10.0,
        authorization_timeout: float = 300.0,
        max_size: int = 1024 * 1024,
        clock: IReactorTime | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        if grant not in ("auto", AUTHORIZATION_CODE, CLIENT_CREDENTIALS):
            raise ValueError(f"grant must be auto, {AUTHORIZATION_CODE} or {CLIENT_CREDENTIALS}, "
                             f"not {grant!r}")
        if client_metadata_url is not None:
            parts = urlsplit(client_metadata_url)
            if parts.scheme != "https" or parts.path in ("", "/"):
                raise ValueError("client_metadata_url must be an https URL with a path")
        self.clock: IReactorTime = clock or reactor
        self.authorize = authorize
        self.client_id = client_id
        self.client_secret = client_secret
        self.private_key = private_key
        self.signing_algorithm = signing_algorithm
        self.client_issuer = client_issuer
        self.client_metadata_url = client_metadata_url
        self.client_name = client_name
        self.redirect_uri = redirect_uri
        self.scopes = tuple(scopes) if scopes is not None else None
        self.offline_access = offline_access
        self.grant = grant
        self.store: TokenStore = store if store is not None else MemoryTokenStore()
        self.authorization_timeout = authorization_timeout
        self.http = _JSONExchange(reactor, agent, timeout, max_size)
        self._server_metadata: dict[str, dict[str, Any]] = {}
        self._flows: Coalescer[str, OAuthTokens] = Coalescer()

    # -- what transports call ---------------------------------------------

    def token_for(self, server: str) -> Deferred[str | None]:
        """The access token to send to ``server`` now (refreshed first when
        it is about to expire); None when there is none yet."""
        return Deferred.fromCoroutine(self._token_for(canonical_resource(server)))

    async def _token_for(self, key: str) -> str | None:
        tokens = await self._tokens(key)
        if tokens is None or not tokens.expired(self.clock.seconds()):
            return tokens.access_token if tokens else None
        if tokens.refresh_token is not None:
            stale = tokens
            try:
                fresh = await self._flows.call(key, lambda: Deferred.fromCoroutine(self._refresh(key, stale)))
                return fresh.access_token
            except OAuthError as e:
                log.info("Could not refresh the token for {server}: {why}", server=key, why=str(e))
        await self._forget(key)
        return None

    def challenged(self, server: str, sent: str | None, status: int,
                   headers: Iterable[str]) -> Deferred[bool]:
        """``server`` refused a request that carried ``sent`` with ``status``
        (401 or 403) and these ``WWW-Authenticate`` headers: fires True once
        a new token is there (send the request again), False when asking
        again cannot help (give the refusal to the caller). Fails with
        ``OAuthError`` when the authorization failed."""
        return Deferred.fromCoroutine(self._challenged(canonical_resource(server), sent, status,
                                                       Challenge.parse(headers)))

    async def _challenged(self, key: str, sent: str | None, status: int, challenge: Challenge) -> bool:
        current = await self._tokens(key)
        if current is not None and current.access_token != sent:
            return True  # another request got a new token meanwhile: try that one
        if status == 403:
            held = current.scopes if current else ()
            # Only a missing scope is worth asking for, and only one not already granted.
            if challenge.error != "insufficient_scope" or set(challenge.scopes) <= set(held):
                return False
        await self._flows.call(key, lambda: Deferred.fromCoroutine(
            self._authorize(key, challenge, current, step_up=status == 403)))
        return True

    async def authorized(self, server: str, attempt: Callable[[str | None], Awaitable[T]],
                         refusal: Callable[[T], Refused | None], drop: Callable[[T], object]) -> T:
        """``attempt(token)`` with the current token for ``server``; when
        ``refusal`` finds it refused and a new token was had, again with it
        (``drop`` lets go of the refused attempt), ``MAX_CHALLENGES`` times
        at most. What transports wrap each request or upgrade in."""
        for _ in range(MAX_CHALLENGES):
            token = await self.token_for(server)
            result = await attempt(token)
            refused = refusal(result)
            if refused is None:
                return result
            try:
                again = await self.challenged(server, token, *refused)
            except BaseException:
                drop(result)
                raise
            if not again:
                return result
            drop(result)
        return await attempt(await self.token_for(server))

    def log_in(self, server: str) -> Deferred[OAuthTokens]:
        """Get a token for ``server`` now, before any request needs one (the
        metadata is found at the well-known URLs): an application that wants
        its user to log in first, outside any request's timeout."""
        key = canonical_resource(server)
        return self._flows.call(key, lambda: Deferred.fromCoroutine(
            self._authorize(key, Challenge(), None, step_up=False)))

    def log_out(self, server: str) -> Deferred[None]:
        """Forget the tokens for ``server`` (the registrations are kept)."""
        return Deferred.fromCoroutine(self._forget(canonical_resource(server)))

    def close(self) -> Deferred[None]:
        """Close idle connections to authorization servers."""
        return self.http.close()

    # -- the store ----------------------------------------------------------

    async def _tokens(self, key: str) -> OAuthTokens | None:
        value = await self._load(f"tokens {key}")
        return OAuthTokens.from_json(value) if value else None

    async def _load(self, key: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = await as_deferred(self.store.load(key))
        return value

    async def _forget(self, key: str) -> None:
        await as_deferred(self.store.save(f"tokens {key}", None))

    async def _keep(self, key: str, tokens: OAuthTokens) -> OAuthTokens:
        await as_deferred(self.store.save(f"tokens {key}", tokens.to_json()))
        return tokens

    # -- discovery ----------------------------------------------------------

    async def _resource_metadata(self, key: str, hinted: str | None) -> dict[str, Any]:
        """The protected-resource metadata of ``key``, and its ``resource``
        checked (RFC 9728 3.3): a token must not be asked for another server."""
        urls = list(dict.fromkeys(([hinted] if hinted else []) + resource_metadata_urls(key)))
        for url in urls:
            scheme = urlsplit(url).scheme
            if scheme not in ("http", "https"):
                continue
            status, document = await self.http.get(url)
            if status != 200 or document is None:
                continue
            resource = document.get("resource")
            if resource is not None and (not isinstance(resource, str) or not _covers(resource, key)):
                raise OAuthError(f"the protected-resource metadata at {url} is for {resource!r}, not {key}")
            servers = document.get("authorization_servers")
            if not isinstance(servers, list) or not servers or not isinstance(servers[0], str):
                raise OAuthError(f"the protected-resource metadata at {url} names no authorization server")
            return document
        raise OAuthError(f"no protected-resource metadata for {key} (tried {', '.join(urls)})")

    async def _authorization_server(self, issuer: str) -> dict[str, Any]:
        """The issuer's metadata (RFC 8414, OpenID discovery): its ``issuer``
        must be the one asked for, by simple string comparison."""
        known = self._server_metadata.get(issuer)
        if known is not None:
            return known
        _secure("the authorization server", issuer)
        tried = []
        for url in metadata_urls(issuer):
            status, document = await self.http.get(url)
            if status != 200 or document is None:
                tried.append(f"{url}: HTTP {status}")
                continue
            if document.get("issuer") != issuer:
                tried.append(f"{url}: names the issuer {document.get('issuer')!r}")
                continue
            self._server_metadata[issuer] = document
            return document
        raise OAuthError(f"no metadata for the authorization server {issuer} ({'; '.join(tried)})")

    # -- getting a token ------------------------------------------------------

    async def _authorize(self, key: str, challenge: Challenge, current: OAuthTokens | None,
                         step_up: bool) -> OAuthTokens:
        resource_metadata = await self._resource_metadata(key, challenge.resource_metadata)
        issuer = resource_metadata["authorization_servers"][0]
        metadata = await self._authorization_server(issuer)
        resource = resource_metadata.get("resource") or key  # as published (RFC 8707)
        # A token refused as stale is refreshed, where the same server issued it.
        if current is not None and current.refresh_token and current.issuer == issuer and not step_up:
            try:
                return await self._refresh(key, current)
            except OAuthError as e:
                log.info("Could not refresh the token for {server}: {why}", server=key, why=str(e))
        grant = self._grant(metadata)
        offered = resource_metadata.get("scopes_supported")
        # The configured scopes, else those the server offers when its challenge
        # names none; always the challenge's (a step up), and what was held
        # before (SEP-2350: asking again must not lose them).
        wanted = self.scopes if self.scopes is not None else (
            () if challenge.scopes or not isinstance(offered, list) else tuple(offered))
        scopes = _union(current.scopes if current else (), wanted, challenge.scopes)
        supported = metadata.get("scopes_supported")
        if (grant == AUTHORIZATION_CODE and self.offline_access and isinstance(supported, list)
                and "offline_access" in supported):
            scopes = _union(scopes, ["offline_access"])
        registration = await self._registration(issuer, metadata, grant)
        if grant == AUTHORIZATION_CODE:
            tokens = await self._code_grant(issuer, metadata, registration, resource, scopes)
        else:
            tokens = await self._token_request(issuer, metadata, registration, resource, scopes, {
                "grant_type": CLIENT_CREDENTIALS, "resource": resource,
                **({"scope": " ".join(scopes)} if scopes else {})})
        return await self._keep(key, tokens)

    def _grant(self, metadata: dict[str, Any]) -> str:
        if self.grant != "auto":
            return self.grant
        supported = metadata.get("grant_types_supported")
        code_supported = not isinstance(supported, list) or AUTHORIZATION_CODE in supported
        if self.authorize is not None and code_supported:
            return AUTHORIZATION_CODE
        if self.client_id is not None and (self.client_secret or self.private_key):
            return CLIENT_CREDENTIALS
        if self.authorize is not None:
            return AUTHORIZATION_CODE
        raise OAuthError("no way to get a token: give authorize= (a user logs in) or client credentials")

    async def _code_grant(self, issuer: str, metadata: dict[str, Any], registration: _Registration,
                          resource: str, scopes: tuple[str, ...]) -> OAuthTokens:
        """Authorization code with PKCE (S256): the user's part through ``authorize``."""
        methods = metadata.get("code_challenge_methods_supported")
        if not isinstance(methods, list) or "S256" not in methods:
            raise OAuthError(f"{issuer} does not support PKCE with S256: refusing to go on")
        if self.authorize is None:
            raise OAuthError("the authorization code grant needs authorize=")
        endpoint = _secure("the authorization endpoint", metadata.get("authorization_endpoint"))
        verifier = secrets.token_urlsafe(64)
        state = secrets.token_urlsafe(24)
        query = {
            "response_type": "code", "client_id": registration.client_id, "redirect_uri": self.redirect_uri,
            "state": state, "code_challenge": _b64url(hashlib.sha256(verifier.encode()).digest()),
            "code_challenge_method": "S256", "resource": resource,
            **({"scope": " ".join(scopes)} if scopes else {}),
            # OpenID Connect Core 11: offline access is granted only with consent asked for.
            **({"prompt": "consent"} if "offline_access" in scopes else {}),
        }
        url = endpoint + ("&" if urlsplit(endpoint).query else "?") + urlencode(query, quote_via=quote)
        redirected = await as_deferred(self.authorize(url)).addTimeout(self.authorization_timeout, self.clock)
        code = self._code_from(str(redirected), state, metadata)
        return await self._token_request(issuer, metadata, registration, resource, scopes, {
            "grant_type": AUTHORIZATION_CODE, "code": code, "redirect_uri": self.redirect_uri,
            "code_verifier": verifier, "resource": resource})

    @staticmethod
    def _code_from(redirected: str, state: str, metadata: dict[str, Any]) -> str:
        """The code of an authorization response, once it is shown to answer
        this request (``state``) from this server (RFC 9207 ``iss``)."""
        answer = {name: values[0] for name, values in parse_qs(urlsplit(redirected).query).items()}
        if answer.get("state") != state:
            raise OAuthError("the authorization response does not carry this request's state")
        # RFC 9207: a present iss is compared (simple string comparison) whether or not it
        # was advertised; an advertised one must be present.
        if "iss" in answer:
            if answer["iss"] != metadata["issuer"]:
                raise OAuthError(f"the authorization response comes from {answer['iss']!r}, "
                                 f"not {metadata['issuer']!r}")
        elif metadata.get("authorization_response_iss_parameter_supported") is True:
            raise OAuthError("the authorization response lacks the iss its server promised")
        if "error" in answer:
            description = answer.get("error_description")
            raise OAuthError(f"authorization refused: {answer['error']}"
                             + (f" ({description})" if description else ""))
        code = answer.get("code")
        if not code:
            raise OAuthError("the authorization response carries no code")
        return code

    async def _refresh(self, key: str, tokens: OAuthTokens) -> OAuthTokens:
        assert tokens.refresh_token is not None  # only called with one
        metadata = await self._authorization_server(tokens.issuer)
        registration = await self._registration(tokens.issuer, metadata, AUTHORIZATION_CODE)
        fresh = await self._token_request(
            tokens.issuer, metadata, registration, tokens.resource, tokens.scopes,
            {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token,
             "resource": tokens.resource})
        if fresh.refresh_token is None:  # RFC 6749 6: the old one stays good
            fresh = replace(fresh, refresh_token=tokens.refresh_token)
        return await self._keep(key, fresh)

    async def _token_request(self, issuer: str, metadata: dict[str, Any], registration: _Registration,
                             resource: str, scopes: tuple[str, ...], form: dict[str, str]) -> OAuthTokens:
        endpoint = _secure("the token endpoint", metadata.get("token_endpoint"))
        headers: dict[str, str] = {}
        method = registration.auth_method
        if method == "client_secret_basic" and registration.client_secret is not None:
            # RFC 6749 2.3.1: each part form-encoded before they are joined.
            pair = f"{quote(registration.client_id, safe='')}:{quote(registration.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        elif method == "private_key_jwt":
            form.update(client_id=registration.client_id, client_assertion_type=JWT_BEARER_ASSERTION,
                        client_assertion=self._assertion(registration.client_id, issuer))
        else:
            form["client_id"] = registration.client_id
            if method == "client_secret_post" and registration.client_secret is not None:
                form["client_secret"] = registration.client_secret
        status, answer = await self.http.post_form(endpoint, form, headers)
        answer = answer or {}
        access_token = answer.get("access_token")
        if status != 200 or not isinstance(access_token, str) or not access_token:
            error = answer.get("error") or f"HTTP {status}"
            description = answer.get("error_description")
            raise OAuthError(f"{issuer} refused the token request ({form['grant_type']}): {error}"
                             + (f" ({description})" if isinstance(description, str) else ""))
        token_type = answer.get("token_type")
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise OAuthError(f"{issuer} gave a token of type {token_type!r}, not Bearer")
        expires_in = answer.get("expires_in")
        granted = answer.get("scope")
        refresh_token = answer.get("refresh_token")
        return OAuthTokens(
            access_token=access_token, issuer=issuer, resource=resource,
            scopes=tuple(granted.split()) if isinstance(granted, str) else scopes,
            refresh_token=refresh_token if isinstance(refresh_token, str) else None,
            expires_at=(self.clock.seconds() + expires_in if isinstance(expires_in, int | float)
                        and not isinstance(expires_in, bool) else None),
        )

    def _assertion(self, client_id: str, issuer: str) -> str:
        """A ``private_key_jwt`` client assertion (RFC 7523) for ``issuer``."""
        now = int(self.clock.seconds())
        claims = {"iss": client_id, "sub": client_id, "aud": issuer, "iat": now,
                  "exp": now + int(ASSERTION_LIFETIME), "jti": secrets.token_urlsafe(16)}
        assert self.private_key is not None  # private_key_jwt is chosen only with one
        return jwt.encode(claims, self.private_key, algorithm=self.signing_algorithm)

    # -- registration -----------------------------------------------------------

    async def _registration(self, issuer: str, metadata: dict[str, Any], grant: str) -> _Registration:
        """This client's id at ``issuer``, in the specification's order:
        pre-registered, a metadata document URL, dynamic registration."""
        if self.client_id is not None and self.client_issuer in (None, issuer):
            method = ("private_key_jwt" if self.private_key is not None
                      else self._secret_method(metadata) if self.client_secret is not None else "none")
            return _Registration(self.client_id, self.client_secret, method)
        url = self.client_metadata_url
        if url is not None and metadata.get("client_id_metadata_document_supported") is True:
            return _Registration(url, None, "private_key_jwt" if self.private_key else "none")
        key = f"client {issuer}"
        stored = await self._load(key)
        if stored:
            return _Registration(**stored)
        endpoint = metadata.get("registration_endpoint")
        if grant != AUTHORIZATION_CODE or not endpoint:
            raise OAuthError(f"no client id for {issuer}: it offers no registration; "
                             "give client_id= (pre-registered) or client_metadata_url=")
        registration = await self._register(issuer, _secure("the registration endpoint", endpoint), metadata)
        await as_deferred(self.store.save(key, asdict(registration)))
        return registration

    @staticmethod
    def _secret_method(metadata: dict[str, Any]) -> str:
        """How a secret goes to the token endpoint: HTTP Basic, unless the
        server takes it only in the form (RFC 8414's default is Basic)."""
        supported = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if "client_secret_post" in supported and "client_secret_basic" not in supported:
            return "client_secret_post"
        return "client_secret_basic"

    async def _register(self, issuer: str, endpoint: str, metadata: dict[str, Any]) -> _Registration:
        """Dynamic client registration (RFC 7591), as a public client if the server allows."""
        supported = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        wanted = "none" if "none" in supported else self._secret_method(metadata)
        host = urlsplit(self.redirect_uri).hostname or ""
        request = {
            "client_name": self.client_name,
            "redirect_uris": [self.redirect_uri],
            "grant_types": [AUTHORIZATION_CODE, "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": wanted,
            # A redirect to this machine (or an app's own scheme) makes a native client.
            "application_type": "native" if _loopback(host) or not host else "web",
        }
        status, answer = await self.http.post_json(endpoint, request)
        client_id = (answer or {}).get("client_id")
        if status not in (200, 201) or not isinstance(client_id, str) or not client_id:
            error = (answer or {}).get("error") or f"HTTP {status}"
            raise OAuthError(f"{issuer} refused to register this client: {error}")
        assert answer is not None  # a client id came from it
        secret = answer.get("client_secret") if isinstance(answer.get("client_secret"), str) else None
        method = answer.get("token_endpoint_auth_method")
        if not isinstance(method, str):
            method = self._secret_method(metadata) if secret is not None else "none"
        return _Registration(client_id, secret, method)
