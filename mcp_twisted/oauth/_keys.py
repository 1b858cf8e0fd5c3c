"""The authorization server's metadata and signing keys, fetched when needed.

Neither is fetched per request. The metadata is fetched once. The JWKS is
fetched when a token first needs a key, again when a token names a key
(``kid``) not seen yet (the server rotated its keys) but at most once per
``min_refresh`` seconds whatever tokens arrive, and in the background once
the keys are older than ``max_age`` (so a key the server withdrew stops
being accepted). Concurrent needs share one fetch. All time is read from an
injected clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

from jwt import PyJWK, PyJWTError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcp_twisted.oauth._errors import ServerUnavailable
from mcp_twisted.oauth._http import JSONClient, check_url

log = Logger()

# JWS algorithms a token may be signed with, and the key each needs
# (``kty``, and the curve where the algorithm fixes one). Never ``none``,
# never HMAC: a public key must not become a shared secret.
KEY_TYPES: dict[str, tuple[str, str | None]] = {
    "RS256": ("RSA", None), "RS384": ("RSA", None), "RS512": ("RSA", None),
    "PS256": ("RSA", None), "PS384": ("RSA", None), "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"), "ES384": ("EC", "P-384"), "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}
DEFAULT_ALGORITHMS = tuple(KEY_TYPES)

K = TypeVar("K")
V = TypeVar("V")


class Coalescer(Generic[K, V]):
    """At most one call per key at a time: callers that come while it runs
    wait for the same result (one JWKS fetch, one introspection per token)."""

    def __init__(self) -> None:
        self._waiting: dict[K, list[Deferred[V]]] = {}

    def call(self, key: K, start: Callable[[], Deferred[V]]) -> Deferred[V]:
        waiter: Deferred[V] = Deferred()
        waiters = self._waiting.get(key)
        if waiters is not None:
            waiters.append(waiter)
            return waiter
        self._waiting[key] = [waiter]
        start().addBoth(self._settle, key)
        return waiter

    def running(self, key: K) -> bool:
        return key in self._waiting

    def _settle(self, result: V | Failure, key: K) -> None:
        for waiter in self._waiting.pop(key):
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)


def metadata_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may be, in the order the MCP specification
    has clients try them: RFC 8414 (the well-known name inserted before the
    issuer's path), then OpenID Connect Discovery inserted, then appended."""
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")

    def at(new_path: str) -> str:
        return urlunsplit((parts.scheme, parts.netloc, new_path, "", ""))

    if not path:
        return [at("/.well-known/oauth-authorization-server"), at("/.well-known/openid-configuration")]
    return [
        at("/.well-known/oauth-authorization-server" + path),
        at("/.well-known/openid-configuration" + path),
        at(path + "/.well-known/openid-configuration"),
    ]


class ServerMetadata:
    """An issuer's authorization-server metadata (RFC 8414 or OpenID), fetched
    once; after a failure, asked again no sooner than ``retry_after`` seconds."""

    def __init__(
        self, issuer: str, client: JSONClient, clock: IReactorTime, retry_after: float = 60.0
    ) -> None:
        self.issuer = issuer
        self.client = client
        self.clock = clock
        self.retry_after = retry_after
        self.document: dict[str, Any] | None = None
        self._failed_at: float | None = None
        self._fetching: Coalescer[None, dict[str, Any]] = Coalescer()

    def get(self) -> Deferred[dict[str, Any]]:
        if self.document is not None:
            return succeed(self.document)
        if self._failed_at is not None and self.clock.seconds() - self._failed_at < self.retry_after:
            return fail(ServerUnavailable(f"{self.issuer}: no metadata"))
        return self._fetching.call(None, lambda: Deferred.fromCoroutine(self._fetch()))

    def endpoint(self, name: str) -> Deferred[str]:
        """A URL from the metadata (``jwks_uri``, ``introspection_endpoint``)."""

        def pick(document: dict[str, Any]) -> str:
            url = document.get(name)
            if not isinstance(url, str) or not url:
                raise ServerUnavailable(f"{self.issuer}: the metadata has no {name}")
            # As for the same URLs in the settings: a token or a client
            # secret must not be sent, nor keys fetched, in clear.
            try:
                check_url(f"the metadata's {name}", url)
            except ValueError as error:
                raise ServerUnavailable(f"{self.issuer}: {error}") from None
            return url

        return self.get().addCallback(pick)

    async def _fetch(self) -> dict[str, Any]:
        problems = []
        for url in metadata_urls(self.issuer):
            try:
                document = await self.client.get(url)
            except ServerUnavailable as error:
                problems.append(str(error))
                continue
            # RFC 8414 3.3: metadata for another issuer must not be used.
            if document.get("issuer") != self.issuer:
                problems.append(f"{url}: the metadata names another issuer")
                continue
            self.document = document
            return document
        self._failed_at = self.clock.seconds()
        log.warn("No authorization server metadata for {issuer}: {why}", issuer=self.issuer,
                 why="; ".join(problems))
        raise ServerUnavailable(f"{self.issuer}: no metadata")


def _fits(jwk: dict[str, Any], algorithm: str) -> bool:
    """Whether a JWK may verify a signature made with ``algorithm``."""
    kty, curve = KEY_TYPES[algorithm]
    return (jwk.get("kty") == kty and jwk.get("alg", algorithm) == algorithm
            and (curve is None or jwk.get("crv") == curve))


class KeySet:
    """The authorization server's signing keys (JWKS), cached."""

    def __init__(
        self,
        jwks_uri: Callable[[], Deferred[str]],
        client: JSONClient,
        clock: IReactorTime,
        *,
        min_refresh: float = 30.0,
        max_age: float = 3600.0,
    ) -> None:
        """
        :param jwks_uri: where the JWKS is (a configured URL, or the metadata's ``jwks_uri``).
        :param min_refresh: seconds between two fetches at least, whatever tokens come.
        :param max_age: seconds after which the keys are fetched again in the background.
        """
        self.jwks_uri = jwks_uri
        self.client = client
        self.clock = clock
        self.min_refresh = min_refresh
        self.max_age = max_age
        self.fetches = 0  # fetches started: never one per request
        self._keys: list[dict[str, Any]] | None = None  # None until the first good fetch
        self._loaded_at = 0.0
        self._attempted_at: float | None = None
        self._prepared: dict[tuple[str | None, str], PyJWK] = {}
        self._fetching: Coalescer[None, None] = Coalescer()

    def key(self, kid: str | None, algorithm: str) -> PyJWK | Deferred[PyJWK | None] | None:
        """The key for a token's ``kid`` and ``alg``: at once when cached,
        None when it is unknown and may not be fetched yet, else a Deferred
        (that fails with ``ServerUnavailable`` if no keys could be had)."""
        now = self.clock.seconds()
        # A fetch under way is joined, whatever the rate limit says.
        may_fetch = (self._fetching.running(None) or self._attempted_at is None
                     or now - self._attempted_at >= self.min_refresh)
        if self._keys is not None:
            found = self._find(kid, algorithm)
            if found is not None:
                if may_fetch and now - self._loaded_at >= self.max_age:
                    self._fetch().addErrback(lambda _: None)  # logged; the cached keys serve meanwhile
                return found
            if not may_fetch:
                return None
        elif not may_fetch:
            return fail(ServerUnavailable("no signing keys yet"))
        return self._fetch().addCallback(lambda _: self._find(kid, algorithm))

    def _fetch(self) -> Deferred[None]:
        return self._fetching.call(None, self._start_fetch)

    def _start_fetch(self) -> Deferred[None]:
        self._attempted_at = self.clock.seconds()
        self.fetches += 1
        fetched = self.jwks_uri().addCallback(lambda uri: self.client.get(uri).addCallback(self._load, uri))

        def failed(failure: Failure) -> Failure:
            log.warn("Could not fetch the signing keys: {why}", why=failure.getErrorMessage())
            return failure if failure.check(ServerUnavailable) else Failure(ServerUnavailable(
                failure.getErrorMessage()))

        return fetched.addErrback(failed)

    def _load(self, document: dict[str, Any], uri: str) -> None:
        keys = document.get("keys")
        if not isinstance(keys, list):
            raise ServerUnavailable(f"{uri}: not a JWK set")
        # Only signature keys of the types our algorithms use; no "oct" keys at all.
        kinds = {kty for kty, _ in KEY_TYPES.values()}
        self._keys = [key for key in keys if isinstance(key, dict) and key.get("kty") in kinds
                      and key.get("use", "sig") == "sig"]
        self._loaded_at = self.clock.seconds()
        self._prepared.clear()

    def _find(self, kid: str | None, algorithm: str) -> PyJWK | None:
        prepared = self._prepared.get((kid, algorithm))
        if prepared is not None:
            return prepared
        # Without a kid, a key is used only when it is the one that fits.
        fitting = [key for key in self._keys or ()
                   if (kid is None or key.get("kid") == kid) and _fits(key, algorithm)]
        if len(fitting) != 1:
            return None
        try:
            prepared = PyJWK(fitting[0], algorithm)
        except PyJWTError:
            return None
        self._prepared[(kid, algorithm)] = prepared
        return prepared
