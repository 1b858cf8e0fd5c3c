"""Reading response bodies with twisted.web's ``Agent``: whole and bounded, or
dropped. Shared by the Streamable HTTP transport and the OAuth client."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

__all__ = ["Collect", "Discard"]


class Discard(Protocol):
    """Reads a response body nobody needs, so the connection can be reused."""


class Collect(Protocol):
    """Reads a whole response body (``readBody`` without its deprecation
    warning for transports that cannot abort); ``done`` fires with it, or
    fails once it grows past ``limit`` bytes (a hostile server cannot fill memory)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.done: Deferred[bytes] = Deferred()
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.limit:
            self.transport.stopProducing()  # type: ignore[union-attr]  # a response body's transport is a producer
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008  # Twisted's signature
        if self._size > self.limit:
            self.done.errback(ValueError(f"response body over {self.limit} bytes"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(reason)
