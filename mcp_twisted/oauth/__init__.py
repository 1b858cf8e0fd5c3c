"""MCP authorization, the server half: this server as an OAuth 2.1 resource server.

- ``OAuthResourceServer(OAuthSettings(resource=..., issuer=...))`` checks
  access tokens for ``Admission``: signed JWTs against the issuer's JWKS
  (PyJWT; keys cached, fetched again only for an unknown ``kid`` and at a
  bounded rate), or opaque tokens by RFC 7662 introspection (answers cached
  briefly). The caller's ``OAuthIdentity`` (subject, client id, scopes,
  claims) is what handlers see as ``ctx.identity``.
- Refusals carry the challenges clients act on: 401 ``Bearer
  resource_metadata=..., scope=...`` (``error="invalid_token"`` when a token
  was given), 403 ``error="insufficient_scope"`` from ``scope_refusal`` for
  step-up.
- ``ProtectedResourceMetadataResource`` serves the RFC 9728 document at
  ``/.well-known/oauth-protected-resource`` and its path-suffixed form.

Tokens are never logged or kept: the introspection cache is keyed by a digest.
"""

from mcp_twisted.oauth._errors import ServerUnavailable, TokenError
from mcp_twisted.oauth._http import JSONClient
from mcp_twisted.oauth._keys import DEFAULT_ALGORITHMS, KeySet, ServerMetadata, metadata_urls
from mcp_twisted.oauth._server import (
    OAuthResourceServer,
    OAuthSettings,
    ProtectedResourceMetadata,
    bearer_challenge,
    bearer_token,
)
from mcp_twisted.oauth._tokens import IntrospectionCredentials, Introspector, JWTValidator, OAuthIdentity
from mcp_twisted.oauth._web import ProtectedResourceMetadataResource

__all__ = [
    "DEFAULT_ALGORITHMS",
    "IntrospectionCredentials",
    "Introspector",
    "JSONClient",
    "JWTValidator",
    "KeySet",
    "OAuthIdentity",
    "OAuthResourceServer",
    "OAuthSettings",
    "ProtectedResourceMetadata",
    "ProtectedResourceMetadataResource",
    "ServerMetadata",
    "ServerUnavailable",
    "TokenError",
    "bearer_challenge",
    "bearer_token",
    "metadata_urls",
]
