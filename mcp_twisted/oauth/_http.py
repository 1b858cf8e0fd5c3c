"""JSON documents from an authorization server, over twisted.web's ``Agent``.

Metadata, JWKS and introspection answers are small: every exchange is
bounded in time and in size, so a slow or hostile server cannot hold a
request or fill memory. Errors name the URL, never a request body (an
introspection request carries a token).
"""

from __future__ import annotations

import base64
import ipaddress
from io import BytesIO
from typing import Any, cast
from urllib.parse import quote_plus, urlencode, urlsplit

import orjson
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent

from mcp_twisted.oauth._errors import ServerUnavailable

DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_SIZE = 1024 * 1024


def check_url(name: str, url: str) -> None:
    """An absolute https URL (http only on a loopback host, for development
    and tests) with no fragment: tokens and keys must not cross in clear."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise ValueError(f"{name} must be an https URL (http only on loopback), not {url!r}")
    if not host or parts.fragment:
        raise ValueError(f"{name} must be an absolute URL without a fragment, not {url!r}")


class _BoundedBody(Protocol):
    """Collects a response body, giving up past ``limit`` bytes."""

    def __init__(self, limit: int) -> None:
        self.finished: Deferred[bytes] = Deferred(lambda _: self._stop())
        self.limit = limit
        self.parts: list[bytes] = []
        self.size = 0

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]  # a response body's transport

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self._stop()
            self.finished.errback(ValueError(f"answer longer than {self.limit} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008  # Twisted's signature
        if self.finished.called:
            return
        # Without Content-Length the end of the connection is the end of the body.
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


class JSONClient:
    """GETs and form POSTs whose answer is a JSON object."""

    def __init__(
        self,
        reactor: Any = None,
        *,
        agent: IAgent | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        """
        :param reactor: for the connections and the timeout (the global one by default).
        :param agent: to make the requests (e.g. with TLS settings of your own);
            by default an ``Agent`` with a pool of persistent connections.
        """
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.clock = cast(IReactorTime, reactor)
        self.pool: HTTPConnectionPool | None = None
        if agent is None:
            self.pool = HTTPConnectionPool(reactor, persistent=True)
            agent = Agent(reactor, pool=self.pool, connectTimeout=timeout)
        self.agent = agent
        self.timeout = timeout
        self.max_size = max_size

    def get(self, url: str) -> Deferred[dict[str, Any]]:
        """The JSON object at ``url``; fails with ``ServerUnavailable``."""
        return self._request(b"GET", url, Headers({b"Accept": [b"application/json"]}), None)

    def post_form(
        self, url: str, fields: dict[str, str], *, username: str, password: str
    ) -> Deferred[dict[str, Any]]:
        """POST a form with HTTP Basic client authentication (RFC 6749 2.3.1:
        both parts form-encoded first); the answer's JSON object."""
        credentials = f"{quote_plus(username)}:{quote_plus(password)}".encode()
        headers = Headers({
            b"Accept": [b"application/json"],
            b"Content-Type": [b"application/x-www-form-urlencoded"],
            b"Authorization": [b"Basic " + base64.b64encode(credentials)],
        })
        return self._request(b"POST", url, headers, FileBodyProducer(BytesIO(urlencode(fields).encode())))

    def _request(self, method: bytes, url: str, headers: Headers, body: Any) -> Deferred[dict[str, Any]]:
        exchange = Deferred.fromCoroutine(self._exchange(method, url, headers, body))
        exchange.addTimeout(self.timeout, self.clock)  # cancels whichever step it is at
        return exchange.addErrback(self._unavailable, url)

    async def _exchange(self, method: bytes, url: str, headers: Headers, body: Any) -> dict[str, Any]:
        response = await self.agent.request(method, url.encode("ascii"), headers, body)
        if response.code != 200:
            response.deliverBody(_Discard())
            raise ValueError(f"HTTP {response.code}")
        reader = _BoundedBody(self.max_size)
        response.deliverBody(reader)
        document = orjson.loads(await reader.finished)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        return document

    @staticmethod
    def _unavailable(failure: Failure, url: str) -> Failure:
        reason = failure.getErrorMessage() or type(failure.value).__name__
        return Failure(ServerUnavailable(f"{url}: {reason}"))

    def close(self) -> Deferred[None]:
        """Close the pool's idle connections (at shutdown, or the end of a test)."""
        if self.pool is None:
            return succeed(None)
        return self.pool.closeCachedConnections()  # type: ignore[no-any-return]


class _Discard(Protocol):
    """Drops the body of an answer that will not be used."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]  # set before connectionMade
