"""Access tokens to identities: signed JWTs (RFC 9068) checked here with
PyJWT against the issuer's keys, or opaque tokens asked about at the
issuer's introspection endpoint (RFC 7662).

Either answers at once when it can (a cached key, a cached introspection)
and with a Deferred only when it must ask the authorization server.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeAlias, TypeGuard

import jwt
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from mcp_twisted.oauth._errors import ServerUnavailable, TokenError
from mcp_twisted.oauth._http import JSONClient
from mcp_twisted.oauth._keys import DEFAULT_ALGORITHMS, KEY_TYPES, Coalescer, KeySet

__all__ = [
    "IntrospectionCredentials",
    "Introspector",
    "JWTValidator",
    "OAuthIdentity",
    "identity_from_claims",
]

log = Logger()

DEFAULT_LEEWAY = 60.0
# Five minutes (Kerberos's default skew): more would let expired tokens live on.
MAX_LEEWAY = 300.0


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


# What the introspection cache keeps for a token: its identity, or why there is none.
_Answer: TypeAlias = "OAuthIdentity | TokenError | ServerUnavailable"


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


def check_leeway(leeway: float) -> float:
    """``leeway`` if it is a number of seconds from 0 to ``MAX_LEEWAY``, else ``ValueError``."""
    if not 0 <= leeway <= MAX_LEEWAY:  # also refuses NaN
        raise ValueError(f"the leeway must be from 0 to {MAX_LEEWAY:g} seconds, not {leeway!r}")
    return leeway


def _is_time(value: object) -> TypeGuard[float]:
    """A NumericDate: an int (of any size: compared, never made a float) or a
    finite float. PyJWT's JSON parser also reads NaN and Infinity, which
    would never expire."""
    return ((isinstance(value, int) and not isinstance(value, bool))
            or (isinstance(value, float) and math.isfinite(value)))


def check_times(claims: Mapping[str, Any], now: float, leeway: float, *, exp_required: bool = True) -> None:
    """``exp`` and ``nbf`` against the injected clock, with ``leeway`` seconds of skew."""
    exp = claims.get("exp")
    if exp is None and not exp_required:
        pass
    elif not _is_time(exp):
        raise TokenError("token has no valid exp")
    elif now - leeway >= exp:  # not exp + leeway: a huge int does not convert to float
        raise TokenError("token expired")
    nbf = claims.get("nbf")
    if nbf is not None and (not _is_time(nbf) or now + leeway < nbf):
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
        self.leeway = check_leeway(leeway)
        self.require_at_jwt = require_at_jwt

    def validate(self, token: str) -> OAuthIdentity | Deferred[OAuthIdentity]:
        """The token's identity, or ``TokenError`` (raised, or the Deferred's
        failure when the keys had to be fetched; ``ServerUnavailable`` then too)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenError("malformed token") from None
        # Header values are the sender's JSON, of any type: each is checked
        # to be a string before it is used (a list as set member raises).
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            raise TokenError("signing algorithm not allowed")
        typ = header.get("typ", "")
        if self.require_at_jwt and (not isinstance(typ, str)
                                    or typ.lower() not in ("at+jwt", "application/at+jwt")):
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
    ``exp``), ``cache_size`` entries at most, keyed by a digest of the token.
    When the endpoint cannot be asked, that too is cached, for
    ``retry_after`` seconds: a client retrying does not hammer it."""

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
        retry_after: float = 30.0,
    ) -> None:
        """:param endpoint: where to ask (the configured URL, or the metadata's)."""
        self.credentials = credentials
        self._endpoint = endpoint
        self.issuer = issuer
        self.audiences = frozenset(audiences)
        self.client = client
        self.clock = clock
        self.leeway = check_leeway(leeway)
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self.retry_after = retry_after
        self.requests = 0  # introspection requests made
        # A refused token's entry is its TokenError, an unreachable endpoint's
        # a ServerUnavailable, so that neither is asked about again at once.
        self._cache: OrderedDict[bytes, tuple[float, _Answer]] = OrderedDict()
        self._asking: Coalescer[bytes, _Answer] = Coalescer()

    def validate(self, token: str) -> OAuthIdentity | Deferred[OAuthIdentity]:
        """The token's identity, or ``TokenError`` or ``ServerUnavailable``
        (raised or the Deferred's failure)."""
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cache.get(digest)
        if cached is not None:
            until, answer = cached
            if self.clock.seconds() < until:
                self._cache.move_to_end(digest)
                return _unwrap(answer)
            del self._cache[digest]
        return self._asking.call(digest, lambda: self._ask(token, digest)).addCallback(_unwrap)

    def _ask(self, token: str, digest: bytes) -> Deferred[_Answer]:
        self.requests += 1
        asked = self._endpoint().addCallback(lambda url: self.client.post_form(
            url, {"token": token, "token_type_hint": "access_token"},
            username=self.credentials.client_id, password=self.credentials.client_secret))
        return asked.addCallbacks(self._answer, self._unavailable, callbackArgs=(digest,),
                                  errbackArgs=(digest,))

    def _answer(self, answer: dict[str, Any], digest: bytes) -> _Answer:
        now = self.clock.seconds()
        until = now + self.cache_ttl
        result: _Answer
        try:
            result = self._identity(answer, now)
            exp = answer.get("exp")
            if exp is not None:  # a valid time: _identity checked it
                until = min(until, exp + self.leeway)
        except TokenError as error:
            result = error
        return self._remember(digest, until, result)

    def _unavailable(self, failure: Failure, digest: bytes) -> _Answer:
        # Per token rather than for every token (as the metadata and the
        # keys are): a token that makes the endpoint fail must not shut out
        # everyone else's for retry_after seconds.
        failure.trap(ServerUnavailable)
        log.warn("Could not introspect a token: {why}", why=failure.getErrorMessage())
        return self._remember(digest, self.clock.seconds() + self.retry_after,
                              ServerUnavailable(failure.getErrorMessage()))

    def _remember(self, digest: bytes, until: float, answer: _Answer) -> _Answer:
        self._cache[digest] = (until, answer)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return answer

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
        # A string or a list of strings (RFC 7662 2.2); anything else is no audience of ours.
        audiences = [audience] if isinstance(audience, str) else audience
        if (not isinstance(audiences, list) or not all(isinstance(item, str) for item in audiences)
                or self.audiences.isdisjoint(audiences)):
            raise TokenError("wrong audience")
        check_times(answer, now, self.leeway, exp_required=False)
        return identity_from_claims(answer, self.issuer)


def _unwrap(answer: _Answer) -> OAuthIdentity:
    if isinstance(answer, OAuthIdentity):
        return answer
    # A new exception each time: raising the cached one would grow its traceback.
    raise type(answer)(*answer.args)
