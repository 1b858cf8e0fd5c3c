"""Sealed ``requestState`` for 2026-07-28 multi-round requests (MRTR).

When a handler asks the client something on the stateless revision, the
answer comes back in a new request, possibly to another instance. What the
server needs to carry over (the answers of earlier rounds) travels with the
client as ``requestState``, which is attacker-controlled input: it is sealed
here with HMAC-SHA256 under a key the instances share, bound to the method,
the request's own parameters and the caller's identity, and given an expiry.
Anything else (tampered, expired, made for another request or another
caller) is refused as ``-32602`` with a clear message.

The state is signed, not encrypted: it holds the client's own answers.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from pathlib import Path
from typing import Any

import orjson

from mcp_twisted.jsonrpc import INVALID_PARAMS, RPCError

__all__ = ["DEFAULT_STATE_TTL", "StateSealer", "load_key"]

DEFAULT_STATE_TTL = 600.0  # seconds a client has to answer a round

# Parameters that change between rounds of the same request.
_ROUND_KEYS = frozenset({"_meta", "inputResponses", "requestState"})


def load_key(path: str | Path) -> bytes:
    """A sealing key from a file (at least 32 bytes of it, as written)."""
    key = Path(path).read_bytes().strip()
    if len(key) < 32:
        raise ValueError(f"{path}: a state key needs at least 32 bytes, found {len(key)}")
    return key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def binding(method: str, params: dict[str, Any], identity: Any) -> str:
    """What a state is valid for: the method, the request's own parameters
    (not the per-round ones) and who asked."""
    own = {key: value for key, value in params.items() if key not in _ROUND_KEYS}
    # str(): identities are token names or certificate subjects, stable across
    # processes (a repr could hold an address).
    try:
        material = orjson.dumps([method, own, str(identity)], option=orjson.OPT_SORT_KEYS)
    except TypeError:  # nested deeper than orjson writes
        raise RPCError(INVALID_PARAMS, "params are nested too deeply for a multi-round request") from None
    return _b64(hashlib.sha256(material).digest())


def _payload(answers: dict[str, Any], bound_to: str, expires: float) -> bytes:
    """What a state signs; answers orjson cannot write (nested past its
    depth, which the wrapping here counts too) are ``-32602``."""
    try:
        return orjson.dumps({"a": answers, "b": bound_to, "e": expires})
    except TypeError:
        raise RPCError(INVALID_PARAMS, "inputResponses are nested too deeply for requestState") from None


class StateSealer:
    """Seals and opens ``requestState`` strings.

    Instances that share ``key`` accept each other's states; without a key a
    random one is made, which is right for a single process.
    """

    def __init__(self, key: bytes | None = None, ttl: float = DEFAULT_STATE_TTL) -> None:
        if key is not None and len(key) < 32:
            raise ValueError(f"a state key needs at least 32 bytes, not {len(key)}")
        self.key = key if key is not None else secrets.token_bytes(32)
        self.ttl = ttl

    def check(self, answers: dict[str, Any], bound_to: str, now: float, max_length: int | None) -> None:
        """Raise ``RPCError`` (-32602) unless ``answers`` can be sealed (as
        ``seal`` would, now), in a state of at most ``max_length`` characters
        (None: any). A round is sealed in a timer, where a failure would leave
        its request unanswered, and a state over the message limit could be
        neither sent nor sent back: the round is refused before it ends."""
        length = len(self.seal(answers, bound_to, now))
        if max_length is not None and length > max_length:
            raise RPCError(INVALID_PARAMS, f"inputResponses are too large to carry in requestState: {length} "
                           f"characters sealed, over the {max_length}-byte message limit",
                           {"size": length, "limit": max_length})

    def seal(self, answers: dict[str, Any], bound_to: str, now: float) -> str:
        payload = _payload(answers, bound_to, now + self.ttl)
        mac = hmac.new(self.key, payload, hashlib.sha256).digest()
        return f"{_b64(payload)}.{_b64(mac)}"

    def open(self, state: object, bound_to: str, now: float) -> dict[str, Any]:
        """The answers sealed in ``state``; raises ``RPCError`` (-32602) if it
        is not one of ours, was changed, is for another request, or expired."""
        try:
            if not isinstance(state, str):
                raise ValueError
            encoded_payload, _, encoded_mac = state.partition(".")
            payload, mac = _unb64(encoded_payload), _unb64(encoded_mac)
        except (ValueError, TypeError):
            raise RPCError(INVALID_PARAMS, "requestState is not a state this server issued") from None
        expected = hmac.new(self.key, payload, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise RPCError(INVALID_PARAMS, "requestState was altered or issued by another server")
        sealed = orjson.loads(payload)
        if sealed.get("b") != bound_to:
            raise RPCError(INVALID_PARAMS, "requestState belongs to another request or another caller")
        if not isinstance(sealed.get("e"), (int, float)) or sealed["e"] < now:
            raise RPCError(INVALID_PARAMS, "requestState has expired: send the request again without it")
        answers = sealed.get("a")
        return answers if isinstance(answers, dict) else {}
