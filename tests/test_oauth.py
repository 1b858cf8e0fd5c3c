"""The OAuth resource server against a real OpenID provider (oidc-provider).

Every good token here was issued by the provider; the bad ones are its
tokens gone stale (the clock moved on), meant for another resource, checked
against another issuer, or forged from its tokens (another key, ``alg:
none``, HMAC keyed with its public key). Cache and rate-limit times run on a
``task.Clock``; the provider and the metadata are reached over real sockets.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import protocol, reactor, task
from twisted.internet.defer import Deferred
from twisted.web.client import Agent
from twisted.web.server import Site

from mcp_twisted.hosting import Admission, AdmissionRequest, Refusal, SessionHost
from mcp_twisted.oauth import (
    IntrospectionCredentials,
    OAuthIdentity,
    OAuthResourceServer,
    OAuthSettings,
    ProtectedResourceMetadata,
    ProtectedResourceMetadataResource,
    bearer_challenge,
    metadata_urls,
)
from tests.http_support import Collect
from tests.oauth.provider import OTHER_RESOURCE, RESOURCE, OpenIDProvider
from tests.support import listen, make_app

pytest_plugins = ("tests.oauth.servers",)  # the provider
METADATA_URL = "http://127.0.0.1:8000/.well-known/oauth-protected-resource/mcp"
SCOPES = ("files:read", "files:write", "mcp")


@pytest.fixture
def clock() -> task.Clock:
    return task.Clock()


@pytest_twisted.async_yield_fixture
async def make_server(provider: OpenIDProvider, clock: task.Clock):
    """``make_server(**settings)``: a resource server for RESOURCE trusting
    the provider, its caches on ``clock``; closed after the test."""
    made: list[OAuthResourceServer] = []

    def make(**settings: Any) -> OAuthResourceServer:
        settings = {"resource": RESOURCE, "issuer": provider.issuer, "scopes_supported": SCOPES, **settings}
        server = OAuthResourceServer(OAuthSettings(**settings), clock=clock)
        made.append(server)
        return server

    yield make
    for server in made:
        await server.close()


@pytest.fixture
def server(make_server: Any) -> OAuthResourceServer:
    return make_server(introspection=IntrospectionCredentials("mcp-server", "mcp-server-secret"))


async def authenticate(server: OAuthResourceServer, token: str) -> OAuthIdentity:
    """The identity, whether the server answered at once or with a Deferred."""
    answer = server.authenticate(f"Bearer {token}")
    return await answer if isinstance(answer, Deferred) else answer


async def refusal(server: OAuthResourceServer, authorization: str | None) -> Refusal:
    """The refusal, whether raised at once or the Deferred's failure."""
    try:
        answer = server.authenticate(authorization)
        if isinstance(answer, Deferred):
            await answer
    except Refusal as refused:
        return refused
    raise AssertionError("the token was accepted")


def challenge(refused: Refusal) -> str:
    return dict(refused.headers)["WWW-Authenticate"]


def invalid_token(description: str) -> str:
    return bearer_challenge(error="invalid_token", error_description=description,
                            resource_metadata=METADATA_URL)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(token: str, header: dict[str, Any], sign: Any) -> str:
    """The token's claims under another header, signed by ``sign(signing_input)``."""
    claims = jwt.decode(token, options={"verify_signature": False})
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


# -- good tokens ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_token_from_the_provider_gives_its_identity(provider, server):
    identity = await authenticate(server, provider.token(RESOURCE, "files:read mcp"))
    assert identity.subject == "mcp-client" and str(identity) == "mcp-client"
    assert identity.client_id == "mcp-client"
    assert identity.scopes == {"files:read", "mcp"}
    assert identity.issuer == provider.issuer
    assert identity.claims["aud"] == RESOURCE
    # The keys came from the issuer's metadata: no jwks_uri was configured.
    assert server.server_metadata.document is not None
    assert server.server_metadata.document["jwks_uri"] == provider.jwks_uri


@pytest_twisted.ensureDeferred
async def test_a_user_token_by_authorization_code_with_pkce_is_the_user(provider, server):
    token = provider.token_by_code(RESOURCE, "files:read files:write", user="ada")
    identity = await authenticate(server, token)
    assert (identity.subject, identity.client_id) == ("ada", "mcp-public")
    assert identity.scopes == {"files:read", "files:write"}


@pytest_twisted.ensureDeferred
async def test_the_keys_are_fetched_once_not_per_request(provider, server):
    tokens = [provider.token(RESOURCE) for _ in range(3)]
    # Concurrent first requests share the one fetch.
    waiting = [server.authenticate(f"Bearer {token}") for token in tokens]
    assert all(isinstance(answer, Deferred) for answer in waiting)
    for answer in waiting:
        assert (await answer).subject == "mcp-client"
    # Then the cached keys answer at once, without a Deferred.
    for _ in range(20):
        for token in tokens:
            assert isinstance(server.authenticate(f"Bearer {token}"), OAuthIdentity)
    assert server.keys.fetches == 1


@pytest_twisted.ensureDeferred
async def test_expiry_allows_the_skew_then_refuses(provider, server, clock):
    token = provider.token(RESOURCE)
    expires = jwt.decode(token, options={"verify_signature": False})["exp"]
    clock.advance(expires + server.settings.leeway - 1)
    assert (await authenticate(server, token)).subject == "mcp-client"
    clock.advance(1)
    refused = await refusal(server, f"Bearer {token}")
    assert (refused.status, refused.reason) == (401, "auth")
    assert challenge(refused) == invalid_token("token expired")


# -- refused tokens ---------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_token_for_another_resource_is_refused(provider, server):
    refused = await refusal(server, f"Bearer {provider.token(OTHER_RESOURCE)}")
    assert refused.status == 401
    assert challenge(refused) == invalid_token("wrong audience")


@pytest_twisted.ensureDeferred
async def test_a_token_from_another_issuer_is_refused(provider, make_server):
    # The provider's own keys, but this server trusts another issuer.
    server = make_server(issuer=provider.issuer + "/tenant", jwks_uri=provider.jwks_uri)
    refused = await refusal(server, f"Bearer {provider.token(RESOURCE)}")
    assert refused.status == 401
    assert challenge(refused) == invalid_token("wrong issuer")


@pytest_twisted.ensureDeferred
async def test_a_token_signed_with_another_key_is_refused(provider, server):
    token = provider.token(RESOURCE)
    await authenticate(server, token)
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    header = jwt.get_unverified_header(token)
    fake = forged(token, header, lambda data: jwt.get_algorithm_by_name("RS256").sign(data, other_key))
    refused = await refusal(server, f"Bearer {fake}")
    assert challenge(refused) == invalid_token("bad signature")


@pytest_twisted.ensureDeferred
async def test_alg_none_and_hmac_with_the_public_key_are_refused(provider, server):
    token = provider.token(RESOURCE)
    await authenticate(server, token)
    kid = jwt.get_unverified_header(token)["kid"]
    unsigned = forged(token, {"alg": "none", "typ": "at+jwt", "kid": kid}, lambda data: b"")
    # The classic confusion: the public key, as PEM, used as an HMAC secret.
    jwks = jwt.PyJWKClient(provider.jwks_uri).get_jwk_set()  # our own provider on 127.0.0.1
    public_pem = jwks[kid].key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    hmac_signed = forged(token, {"alg": "HS256", "typ": "at+jwt", "kid": kid},
                         lambda data: hmac.new(public_pem, data, hashlib.sha256).digest())
    for fake in (unsigned, hmac_signed):
        refused = await refusal(server, f"Bearer {fake}")
        assert challenge(refused) == invalid_token("signing algorithm not allowed")


@pytest_twisted.ensureDeferred
async def test_no_token_gets_the_challenge_without_an_error(server):
    for authorization in (None, "", "Basic dXNlcjpwYXNz", "Bearer "):
        refused = await refusal(server, authorization)
        assert (refused.status, refused.reason) == (401, "auth")
        assert challenge(refused) == f'Bearer resource_metadata="{METADATA_URL}"'
    refused = await refusal(server, "Bearer not a token")
    assert challenge(refused) == invalid_token("malformed token")


@pytest_twisted.ensureDeferred
async def test_missing_scopes_are_refused_with_insufficient_scope(provider, server, make_server):
    identity = await authenticate(server, provider.token(RESOURCE, "files:read"))
    assert server.scope_refusal(identity, ["files:read"]) is None
    refused = server.scope_refusal(identity, ["files:read", "files:write"])
    assert refused is not None and (refused.status, refused.reason) == (403, "scope")
    assert challenge(refused) == bearer_challenge(
        error="insufficient_scope", scope="files:read files:write", resource_metadata=METADATA_URL,
        error_description="the token lacks a scope this needs")
    # Scopes every request needs: named in the 401, refused with 403 at admission.
    strict = make_server(required_scopes=("mcp",))
    assert challenge(await refusal(strict, None)) == \
        f'Bearer resource_metadata="{METADATA_URL}", scope="mcp"'
    refused = await refusal(strict, f"Bearer {provider.token(RESOURCE, 'files:read')}")
    assert refused.status == 403 and 'error="insufficient_scope", scope="mcp"' in challenge(refused)
    assert (await authenticate(strict, provider.token(RESOURCE, "mcp"))).scopes == {"mcp"}


# -- the provider's keys change ---------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_key_rotation_is_picked_up_at_a_bounded_rate(provider, server, clock):
    old_token = provider.token(RESOURCE)
    await authenticate(server, old_token)
    provider.rotate()
    new_token = provider.token(RESOURCE)
    assert jwt.get_unverified_header(new_token)["kid"] == provider.kid
    # Right after a fetch the unknown kid is refused without fetching again...
    refused = await refusal(server, f"Bearer {new_token}")
    assert challenge(refused) == invalid_token("unknown signing key")
    assert server.keys.fetches == 1
    # ...and once the rate limit allows, it is fetched once and accepted.
    clock.advance(server.settings.jwks_min_refresh)
    assert isinstance(server.authenticate(f"Bearer {new_token}"), Deferred)
    assert (await authenticate(server, new_token)).subject == "mcp-client"
    assert isinstance(server.authenticate(f"Bearer {old_token}"), OAuthIdentity)
    assert server.keys.fetches == 2


@pytest_twisted.ensureDeferred
async def test_unknown_kids_do_not_make_a_fetch_each(provider, server, clock):
    token = provider.token(RESOURCE)
    await authenticate(server, token)
    claims_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for number in range(10):
        fake = forged(token, {"alg": "RS256", "kid": f"made-up-{number}"},
                      lambda data: jwt.get_algorithm_by_name("RS256").sign(data, claims_key))
        refused = await refusal(server, f"Bearer {fake}")
        assert challenge(refused) == invalid_token("unknown signing key")
        clock.advance(5)
    # 50 s with ten unknown kids: one more fetch, at the 30 s mark.
    assert server.keys.fetches == 2


@pytest_twisted.ensureDeferred
async def test_old_keys_are_refreshed_in_the_background(provider, server, clock):
    token = provider.token(RESOURCE)
    await authenticate(server, token)
    clock.advance(server.settings.jwks_max_age)
    # Still answered at once from the cache; the refresh runs behind it.
    assert isinstance(server.authenticate(f"Bearer {token}"), OAuthIdentity)
    assert server.keys.fetches == 2


@pytest_twisted.ensureDeferred
async def test_an_unreachable_authorization_server_is_a_503(provider, make_server, events):
    closed = await listen(protocol.Factory.forProtocol(protocol.Protocol))
    issuer = f"http://127.0.0.1:{closed.getHost().port}"
    await closed.stopListening()
    server = make_server(issuer=issuer)
    token = provider.token(RESOURCE)
    for _ in range(2):
        refused = await refusal(server, f"Bearer {token}")
        assert (refused.status, refused.reason) == (503, "auth-server")
        assert dict(refused.headers)["Retry-After"] == "30"
    # The second time was not asked: the metadata failure is remembered.
    assert server.keys.fetches == 1
    assert all(token not in repr(event) for event in events)


# -- opaque tokens ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_opaque_tokens_are_introspected_and_cached_briefly(provider, server, clock):
    token = provider.token(RESOURCE, "files:write", client="mcp-opaque")
    assert token.count(".") != 2
    identity = await authenticate(server, token)
    # A client credentials token has no user: its subject is the client.
    assert (identity.subject, identity.client_id) == ("mcp-opaque", "mcp-opaque")
    assert identity.scopes == {"files:write"}
    assert isinstance(server.authenticate(f"Bearer {token}"), OAuthIdentity)
    introspector = server.introspector
    assert introspector is not None and introspector.requests == 1
    clock.advance(server.settings.introspection_cache_ttl)
    assert (await authenticate(server, token)) == identity
    assert introspector.requests == 2


@pytest_twisted.ensureDeferred
async def test_inactive_and_foreign_opaque_tokens_are_refused(provider, server):
    refused = await refusal(server, "Bearer no-such-token")
    assert challenge(refused) == invalid_token("token is not active")
    refused = await refusal(server, f"Bearer {provider.token(OTHER_RESOURCE, client='mcp-opaque')}")
    assert challenge(refused) == invalid_token("wrong audience")
    # Refusals are cached too: asking again does not ask the provider.
    requests = server.introspector.requests
    await refusal(server, "Bearer no-such-token")
    assert server.introspector.requests == requests


# -- the metadata -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_metadata_document_is_served_on_both_paths(make_server, provider):
    metadata = make_server(resource_name="Files").metadata
    port = await listen(Site(ProtectedResourceMetadataResource(metadata)))
    base = f"http://127.0.0.1:{port.getHost().port}"
    agent = Agent(reactor)

    async def get(path: str) -> tuple[Any, bytes]:
        response = await agent.request(b"GET", (base + path).encode())
        body = Collect()
        response.deliverBody(body)
        return response, await body.done.addTimeout(5, reactor)

    try:
        for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
            response, body = await get(path)
            assert response.code == 200
            assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
            assert response.headers.getRawHeaders(b"access-control-allow-origin") == [b"*"]
            assert json.loads(body) == {
                "resource": RESOURCE,
                "authorization_servers": [provider.issuer],
                "scopes_supported": list(SCOPES),
                "bearer_methods_supported": ["header"],
                "resource_name": "Files",
            }
        response, _ = await get("/.well-known/oauth-protected-resource/other")
        assert response.code == 404
    finally:
        await port.stopListening()


def test_the_metadata_url_follows_the_resource_path():
    for resource, url in (
        ("https://mcp.example.com/mcp", "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"),
        ("https://mcp.example.com", "https://mcp.example.com/.well-known/oauth-protected-resource"),
        ("https://mcp.example.com:8443/a/b/", "https://mcp.example.com:8443/.well-known/oauth-protected-resource/a/b"),
    ):
        assert ProtectedResourceMetadata(resource, ("https://idp.example.com",)).url == url


def test_issuer_metadata_is_looked_for_where_the_specification_says():
    assert metadata_urls("https://idp.example.com") == [
        "https://idp.example.com/.well-known/oauth-authorization-server",
        "https://idp.example.com/.well-known/openid-configuration",
    ]
    assert metadata_urls("https://idp.example.com/realms/mcp/") == [
        "https://idp.example.com/.well-known/oauth-authorization-server/realms/mcp",
        "https://idp.example.com/.well-known/openid-configuration/realms/mcp",
        "https://idp.example.com/realms/mcp/.well-known/openid-configuration",
    ]


# -- settings and identities ------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"issuer": "http://idp.example.com"}, "the issuer must be an https URL"),
    ({"resource": "https://mcp.example.com/mcp#x"}, "the resource must be an absolute URL without"),
    ({"jwks_uri": "http://keys.example.com/jwks"}, "the JWKS URI must be an https URL"),
    ({"accept_jwt": False}, "neither JWT access tokens nor introspection"),
])
def test_unsafe_settings_are_refused(change, message):
    settings = {"resource": "https://mcp.example.com/mcp", "issuer": "https://idp.example.com", **change}
    with pytest.raises(ValueError, match=message):
        OAuthSettings(**settings)


@pytest.mark.parametrize("algorithm", ["none", "HS256"])
def test_algorithms_that_are_never_safe_cannot_be_allowed(algorithm):
    settings = OAuthSettings(resource="https://mcp.example.com/mcp", issuer="https://idp.example.com",
                             algorithms=("RS256", algorithm))
    with pytest.raises(ValueError, match=f"not allowed for access tokens: {algorithm}"):
        OAuthResourceServer(settings)


def test_an_identity_is_its_subject_at_its_issuer():
    first = OAuthIdentity("alice", "https://idp", "app", frozenset({"a"}), {"email": "alice@example.com"})
    refreshed = OAuthIdentity("alice", "https://idp", "app", frozenset({"a", "b"}), {"jti": "2"})
    assert first == refreshed and hash(first) == hash(refreshed)
    assert first != OAuthIdentity("alice", "https://other-idp")
    assert "alice@example.com" not in repr(first)


# -- admission --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_admission_takes_it_as_its_authenticator(provider, server):
    """Today's ``Admission`` already calls ``authenticate`` and passes the
    refusal on; with the keys cached the identity comes back at once."""
    token = provider.token(RESOURCE, "mcp")
    await authenticate(server, token)
    admission = Admission(auth=server)
    host = SessionHost(make_app()[0], admission=admission)
    identity = host.admit(AdmissionRequest(path="/mcp", authorization=f"Bearer {token}"))
    assert identity == OAuthIdentity("mcp-client", provider.issuer)
    with pytest.raises(Refusal) as refused:
        host.admit(AdmissionRequest(path="/mcp"))
    assert refused.value.status == 401
    assert challenge(refused.value) == f'Bearer resource_metadata="{METADATA_URL}"'
