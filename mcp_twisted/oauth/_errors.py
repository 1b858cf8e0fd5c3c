"""Why a token was not accepted: the token's fault, or the authorization server's."""

from __future__ import annotations


class TokenError(Exception):
    """The token is not good for this server (RFC 6750 ``invalid_token``).

    The message is a short fixed phrase (``token expired``, ``wrong
    audience``...), safe for ``error_description`` and the logs: it never
    holds the token or its claims.
    """


class ServerUnavailable(Exception):
    """The authorization server could not be asked (metadata, JWKS or
    introspection): the token may be good, this server cannot tell yet."""
