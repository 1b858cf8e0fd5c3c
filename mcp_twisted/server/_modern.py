"""What the app does differently for 2026-07-28 requests.

- ``Rounds``: multi-round requests (MRTR). A handler asks the client with the
  same calls on both eras (``ctx.elicit``, ``ctx.sample``, ``ctx.list_roots``).
  On 2026-07-28 there are no server-to-client requests: the first question
  that has no answer yet ends the round. Every question asked before the
  round ends (those a handler makes concurrently) goes into one
  ``input_required`` result, each under its key, with the answers known so
  far sealed in ``requestState``. The client answers in a new request with
  ``inputResponses``; the handler runs again from the start and this time
  its questions find their answers, so it gets past them: it is resumed
  where it asked. A question still unanswered is asked again.
- ``Listeners``: ``subscriptions/listen`` streams, which replace the GET
  stream and ``resources/subscribe``.
- ``CachePolicy``: ``ttlMs`` and ``cacheScope`` on the results that need them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed

from mcp_twisted.eras import META_SUBSCRIPTION_ID, MISSING_CLIENT_CAPABILITY
from mcp_twisted.jsonrpc import RPCError
from mcp_twisted.protocol import Method, Notify, invalid_params
from mcp_twisted.sealing import StateSealer, binding

if TYPE_CHECKING:
    from mcp_twisted.session import IncomingRequest

__all__ = ["CACHED_METHODS", "CachePolicy", "Listeners", "MissingCapability", "Rounds"]

# Results that carry caching fields on 2026-07-28 (when complete).
CACHED_METHODS = frozenset({
    "server/discover", "tools/list", "prompts/list", "resources/list", "resources/templates/list",
    "resources/read",
})


class MissingCapability(RPCError):
    """A 2026-07-28 request needs a client capability it did not declare (-32021)."""

    def __init__(self, capability: str) -> None:
        super().__init__(MISSING_CLIENT_CAPABILITY,
                         f"This request needs the client capability {capability!r}, which it did not declare",
                         {"requiredCapabilities": {capability: {}}})


@dataclass(frozen=True)
class CachePolicy:
    """How long a client may reuse a result (``ttlMs``) and who may share it
    (``cacheScope``: ``public`` or ``private``). The default reuses nothing."""

    ttl_ms: int = 0
    scope: str = "private"

    def __post_init__(self) -> None:
        if self.ttl_ms < 0 or self.scope not in ("public", "private"):
            raise ValueError(f"cache policy: ttl_ms >= 0 and scope public or private, not {self!r}")

    def apply(self, result: dict[str, Any]) -> dict[str, Any]:
        result.setdefault("ttlMs", self.ttl_ms)
        result.setdefault("cacheScope", self.scope)
        return result


class Rounds:
    """One run of a handler on a 2026-07-28 request that may ask the client things."""

    def __init__(self, request: IncomingRequest, sealer: StateSealer) -> None:
        self.request = request
        self.sealer = sealer
        self.bound_to = binding(request.method, request.params, request.session.attributes.get("identity"))
        now = request.session.clock.seconds()
        state = request.params.get("requestState")
        self.answers: dict[str, Any] = sealer.open(state, self.bound_to, now) if state is not None else {}
        responses = request.params.get("inputResponses")
        if isinstance(responses, dict):  # anything else answers nothing: the questions come again
            self.answers.update(responses)
        self.questions: dict[str, dict[str, Any]] = {}
        self._numbers = itertools.count(1)
        self._ending = False
        self._ended = False

    def ask(
        self, capability: str, method: str, params: dict[str, Any] | None, key: str | None
    ) -> Deferred[Any]:
        """The answer to a question, at once if the client gave it; else the
        question waits for the end of this round (the Deferred never fires:
        the handler is cancelled when the round ends)."""
        if self._ended:
            # The round was answered and the handler cancelled: one that caught
            # that and asks again would wait forever, its request unanswered.
            return fail(CancelledError())
        if capability not in (self.request.client_capabilities or {}):
            raise MissingCapability(capability)
        key = key if key is not None else f"{capability}-{next(self._numbers)}"
        answer = self.answers.get(key)
        if _answers(method, answer):
            return succeed(answer)
        question: dict[str, Any] = {"method": method}
        if params is not None:
            question["params"] = params
        self.questions[key] = question
        if not self._ending:
            # The round will end with these answers sealed: one that cannot be
            # is refused here, in the handler (then its request's error), not
            # in the timer that ends the round.
            session = self.request.session
            self.sealer.check(self.answers, self.bound_to, session.clock.seconds(), session.max_message_size)
            # Questions asked in the same turn (concurrent ones) join this round.
            self._ending = True
            self.request.session.clock.callLater(0, self._end_round)
        return Deferred()

    def _end_round(self) -> None:
        self._ended = True
        if self.request.done:
            return
        now = self.request.session.clock.seconds()
        self.request.finish_early({
            "resultType": "input_required",
            "inputRequests": self.questions,
            "requestState": self.sealer.seal(self.answers, self.bound_to, now),
        })


def _answers(method: str, answer: object) -> bool:
    """Whether ``answer`` has the shape of a result of ``method``; anything
    else (a missing or malformed answer) gets the question asked again."""
    if not isinstance(answer, dict):
        return False
    if method == Method.ELICITATION_CREATE:
        return answer.get("action") in ("accept", "decline", "cancel")
    if method == Method.SAMPLING_CREATE_MESSAGE:
        return isinstance(answer.get("content"), (dict, list)) and isinstance(answer.get("role"), str)
    return isinstance(answer.get("roots"), list)


class _Subscription:
    __slots__ = ("kinds", "request", "uris")

    def __init__(self, request: IncomingRequest, kinds: set[str], uris: set[str]) -> None:
        self.request = request
        self.kinds = kinds
        self.uris = uris

    def send(self, method: str, params: dict[str, Any] | None = None, *, merge: bool = True) -> None:
        """Send on this stream; while the peer is behind, news of the same
        kind (and URI) waits and merges instead of piling up."""
        params = dict(params or {})
        params["_meta"] = {META_SUBSCRIPTION_ID: self.request.id}
        key = (self.request.id, method, params.get("uri")) if merge else None
        self.request.session.notify(method, params, related=self.request.id, key=key)


# Listen streams one session (connection) may hold at once.
MAX_LISTENS_PER_SESSION = 4

# subscriptions/listen's flags -> the list_changed notification they ask for
_LISTEN_FLAGS = {
    "toolsListChanged": Notify.TOOLS_LIST_CHANGED,
    "promptsListChanged": Notify.PROMPTS_LIST_CHANGED,
    "resourcesListChanged": Notify.RESOURCES_LIST_CHANGED,
}


class Listeners:
    """The app's open ``subscriptions/listen`` requests."""

    def __init__(self) -> None:
        self._open: dict[IncomingRequest, _Subscription] = {}

    def listen(self, request: IncomingRequest, max_uris: int, max_uri_length: int) -> Deferred[Any]:
        """Acknowledge what will be sent, then hold the request open until the
        client ends it (cancellation) or the server drains.

        A session may hold ``MAX_LISTENS_PER_SESSION`` streams at once, each
        with at most ``max_uris`` URIs of ``max_uri_length`` characters.
        """
        open_here = sum(1 for other in self._open if other.session is request.session)
        if open_here >= MAX_LISTENS_PER_SESSION:
            raise invalid_params(f"At most {MAX_LISTENS_PER_SESSION} listen streams on one connection",
                                 {"limit": MAX_LISTENS_PER_SESSION})
        wanted = request.params.get("notifications")
        if not isinstance(wanted, dict):
            raise invalid_params("subscriptions/listen needs params.notifications (an object)")
        kinds = {method for flag, method in _LISTEN_FLAGS.items() if wanted.get(flag) is True}
        uris = wanted.get("resourceSubscriptions") or []
        if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
            raise invalid_params("resourceSubscriptions must be a list of URIs")
        if len(uris) > max_uris or any(len(u) > max_uri_length for u in uris):
            raise invalid_params(f"At most {max_uris} resource subscriptions of {max_uri_length} characters",
                                 {"limit": max_uris})
        subscription = _Subscription(request, kinds, set(uris))
        honoured: dict[str, Any] = {flag: True for flag, method in _LISTEN_FLAGS.items() if method in kinds}
        if uris:
            honoured["resourceSubscriptions"] = list(dict.fromkeys(uris))
        subscription.send(Notify.SUBSCRIPTIONS_ACKNOWLEDGED, {"notifications": honoured}, merge=False)
        self._open[request] = subscription

        def ended(result: object) -> object:
            self._open.pop(request, None)
            return result

        held: Deferred[Any] = Deferred()
        return held.addBoth(ended)

    def list_changed(self, method: str) -> None:
        for subscription in list(self._open.values()):
            if method in subscription.kinds:
                subscription.send(method)

    def resource_updated(self, uri: str) -> None:
        for subscription in list(self._open.values()):
            if uri in subscription.uris:
                subscription.send(Notify.RESOURCES_UPDATED, {"uri": uri})

    def end_all(self) -> None:
        """End every listen stream (drain): each gets its result and a
        cancellation, as the two pages of the specification ask."""
        for request in list(self._open):
            self._open.pop(request, None)
            ending = {"requestId": request.id, "reason": "server shutting down"}
            request.session.notify(Notify.CANCELLED, ending, related=request.id)
            request.finish_early({"resultType": "complete", "_meta": {META_SUBSCRIPTION_ID: request.id}})
