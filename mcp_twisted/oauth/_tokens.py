"""Access tokens to identities: signed JWTs (RFC 9068) checked here with
PyJWT against the issuer's keys, or opaque tokens asked about at the
issuer's introspection endpoint (RFC 7662).

Either answers at once when it can (a cached key, a cached introspection)
and with a Deferred only when it must ask the authorization server.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jwt
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from mcp_twisted.oauth._errors import TokenError
from mcp_twisted.oauth._http import JSONClient
from mcp_twisted.oauth._keys import DEFAULT_ALGORITHMS, KEY_TYPES, Coalescer, KeySet

__all__ = [
    "IntrospectionCredentials",
    "Introspector",
    "JWTValidator",
    "OAuthIdentity",
    "identity_from_claims",
]

DEFAULT_LEEWAY = 60.0


@dataclass(frozen=True, eq=False)
class OAuthIdentity:
    """Who a valid access token speaks for: what ``ctx.identity`` holds.

    ``str()`` is the subject. Two identities are equal when issuer and
    subject are: a session stays its user's when the token is refreshed
    (new expiry, perhaps new scopes).
    """

    subject: str
    issuer: str
    client_id: str | None = None
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.subject

    def has_scopes(self, needed: Iterable[str]) -> bool:
        return self.scopes.issuperset(needed)

    def __str__(self) -> str:
        return self.subject

    def __repr__(self) -> str:
        # For log lines: no claims (they may hold personal data).
        return (f"OAuthIdentity(subject={self.subject!r}, client_id={self.client_id!r}, "
                f"scopes={sorted(self.scopes)})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, OAuthIdentity):
            return NotImplemented
        return (self.issuer, self.subject) == (other.issuer, other.subject)

    def __hash__(self) -> int:
        return hash((self.issuer, self.subject))


def _scopes(claims: Mapping[str, Any]) -> frozenset[str]:
    """``scope`` (RFC 9068, RFC 7662: space-separated) or ``scp`` (Entra ID:
    space-separated; Okta: a list)."""
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            return frozenset(value.split())
        if isinstance(value, list):
            return frozenset(item for item in value if isinstance(item, str))
    return frozenset()


def identity_from_claims(claims: Mapping[str, Any], issuer: str) -> OAuthIdentity:
    """The identity of verified claims; a token for a client alone (client
    credentials) may carry no ``sub`` and is that client's."""
    client_id = next((value for name in ("client_id", "azp", "appid")
                      if isinstance(value := claims.get(name), str)), None)
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        subject = client_id
    if not subject:
        raise TokenError("token has no subject")
    return OAuthIdentity(subject=subject, issuer=issuer, client_id=client_id, scopes=_scopes(claims),
                         claims=MappingProxyType(dict(claims)))


def check_times(claims: Mapping[str, Any], now: float, leeway: float, *, exp_required: bool = True) -> None:
    """``exp`` and ``nbf`` against the injected clock, with ``leeway`` seconds of skew."""
    exp = claims.get("exp")
    if exp is None and not exp_required:
        pass
    elif not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise TokenError("token has no valid exp")
    elif now >= exp + leeway:
        raise TokenError("token expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not isinstance(nbf, (int, float)) or now + leeway < nbf):
        raise TokenError("token not yet valid")


_JWT_ERRORS: tuple[tuple[type[jwt.PyJWTError], str], ...] = (
    (jwt.InvalidSignatureError, "bad signature"),
    (jwt.InvalidAudienceError, "wrong audience"),
    (jwt.InvalidIssuerError, "wrong issuer"),
    (jwt.MissingRequiredClaimError, "token lacks a required claim"),
    (jwt.InvalidAlgorithmError, "signing algorithm not allowed"),
    (jwt.DecodeError, "malformed token"),
)


class JWTValidator:
    """Signed JWT access tokens: signature by a key of the issuer's JWKS,
    ``alg`` from a pinned list, ``iss``, ``aud`` (this resource), ``exp`` and ``nbf``."""

    def __init__(
        self,
        *,
        issuer: str,
        audiences: Collection[str],
        keys: KeySet,
        clock: IReactorTime,
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        leeway: float = DEFAULT_LEEWAY,
        require_at_jwt: bool = False,
    ) -> None:
        """
        :param require_at_jwt: accept only tokens typed ``at+jwt`` (RFC 9068);
            off by default, as several providers type theirs ``JWT``.
        """
        self.algorithms = frozenset(algorithms)
        unsafe = self.algorithms - KEY_TYPES.keys()
        if unsafe:
            raise ValueError(f"algorithms not allowed for access tokens: {', '.join(sorted(unsafe))}")
        if not audiences:
            raise ValueError("no audience: tokens must be meant for this resource")
        self.issuer = issuer
        self.audiences = list(audiences)
        self.keys = keys
        self.clock = clock
        self.leeway = leeway
        self.require_at_jwt = require_at_jwt

    def validate(self, token: str) -> OAuthIdentity | Deferred[OAuthIdentity]:
        """The token's identity, or ``TokenError`` (raised, or the Deferred's
        failure when the keys had to be fetched; ``ServerUnavailable`` then too)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed token") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise TokenError("signing algorithm not allowed")
        if self.require_at_jwt and str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
            raise TokenError("not an access token")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenError("malformed token")
        key = self.keys.key(kid, algorithm)
        if isinstance(key, Deferred):
            return key.addCallback(lambda found: self._verify(token, found, algorithm))
        return self._verify(token, key, algorithm)

    def _verify(self, token: str, key: jwt.PyJWK | None, algorithm: str) -> OAuthIdentity:
        if key is None:
            raise TokenError("unknown signing key")
        try:
            claims = jwt.decode(
                token, key, algorithms=[algorithm], audience=self.audiences, issuer=self.issuer,
                # Times are checked on our clock below (PyJWT reads the wall clock).
                options={"require": ["exp", "iss", "aud"], "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False},
            )
        except jwt.PyJWTError as error:
            raise TokenError(next((text for kind, text in _JWT_ERRORS if isinstance(error, kind)),
                                  "invalid token")) from None
        check_times(claims, self.clock.seconds(), self.leeway)
        return identity_from_claims(claims, self.issuer)


@dataclass(frozen=True)
class IntrospectionCredentials:
    """How this server authenticates to the introspection endpoint (HTTP Basic)."""

    client_id: str
    client_secret: str = field(repr=False)
    endpoint: str | None = None  # None: the issuer metadata's introspection_endpoint


class Introspector:
    """Opaque tokens, asked about at the RFC 7662 endpoint; answers are
    cached for ``cache_ttl`` seconds at most (and never past the token's
    ``exp``), ``cache_size`` entries at most, keyed by a digest of the token."""

    def __init__(
        self,
        *,
        credentials: IntrospectionCredentials,
        endpoint: Callable[[], Deferred[str]],
        issuer: str,
        audiences: Collection[str],
        client: JSONClient,
        clock: IReactorTime,
        leeway: float = DEFAULT_LEEWAY,
        cache_ttl: float = 30.0,
        cache_size: int = 1024,
    ) -> None:
        """:param endpoint: where to ask (the configured URL, or the metadata's)."""
        self.credentials = credentials
        self._endpoint = endpoint
        self.issuer = issuer
        self.audiences = frozenset(audiences)
        self.client = client
        self.clock = clock
        self.leeway = leeway
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self.requests = 0  # introspection requests made
        # An inactive token's entry is the reason, so that it is not asked about again either.
        self._cache: OrderedDict[bytes, tuple[float, OAuthIdentity | str]] = OrderedDict()
        self._asking: Coalescer[bytes, OAuthIdentity | str] = Coalescer()

    def validate(self, token: str) -> OAuthIdentity | Deferred[OAuthIdentity]:
        """The token's identity, or ``TokenError`` (raised or the Deferred's failure)."""
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            until, answer = cached
            if self.clock.seconds() < until:
                self._cache.move_to_end(digest)
                return _unwrap(answer)
            del self._cache[digest]
        return self._asking.call(digest, lambda: self._ask(token, digest)).addCallback(_unwrap)

    def _ask(self, token: str, digest: bytes) -> Deferred[OAuthIdentity | str]:
        self.requests += 1
        asked = self._endpoint().addCallback(lambda url: self.client.post_form(
            url, {"token": token, "token_type_hint": "access_token"},
            username=self.credentials.client_id, password=self.credentials.client_secret))
        return asked.addCallback(self._answer, digest)

    def _answer(self, answer: dict[str, Any], digest: bytes) -> OAuthIdentity | str:
        now = self.clock.seconds()
        until = now + self.cache_ttl
        result: OAuthIdentity | str
        try:
            result = self._identity(answer, now)
            exp = answer.get("exp")
            if isinstance(exp, (int, float)):
                until = min(until, exp + self.leeway)
        except TokenError as error:
            result = str(error)
        self._cache[digest] = (until, result)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    def _identity(self, answer: dict[str, Any], now: float) -> OAuthIdentity:
        if answer.get("active") is not True:
            raise TokenError("token is not active")
        # RFC 7662 makes these optional; when present they must be ours.
        issuer = answer.get("iss", self.issuer)
        if issuer != self.issuer:
            raise TokenError("wrong issuer")
        audience = answer.get("aud")
        if audience is None:
            raise TokenError("token is not bound to an audience")
        if self.audiences.isdisjoint([audience] if isinstance(audience, str) else audience):
            raise TokenError("wrong audience")
        check_times(answer, now, self.leeway, exp_required=False)
        return identity_from_claims(answer, self.issuer)


def _unwrap(answer: OAuthIdentity | str) -> OAuthIdentity:
    if isinstance(answer, str):
        raise TokenError(answer)
    return answer
