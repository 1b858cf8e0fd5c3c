"""The client's OAuth against a real OpenID provider (oidc-provider) and an
mcp-twisted server protected by ``OAuthResourceServer``, in this process.

The provider issues every token: by client credentials, or by the
authorization code grant with PKCE, the user's browser played by
``OpenIDProvider.log_in`` (in a thread: it blocks). The server
(``tests/oauth/servers.py``) names the port it really listens on as its
resource, so the client's check of the metadata's ``resource`` sees the
truth. Expiry runs on a ``task.Clock``.
The discovery order is shown by a twisted.web server of the test's own that
serves only some of the well-known documents.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.threads import deferToThread
from twisted.web import resource as web_resource
from twisted.web import server as web_server

from mcp_twisted.client import Challenge, MCPClientService, OAuthClient, OAuthError, canonical_resource
from mcp_twisted.jsonrpc import RPCError
from tests.oauth.provider import OpenIDProvider
from tests.support import listen

pytest_plugins = ("tests.oauth.servers",)


@pytest_twisted.async_yield_fixture
async def connect():
    """``connect(url, auth)``: a started ``MCPClientService``'s client; all stopped after the test."""
    started: list[tuple[MCPClientService, OAuthClient]] = []

    async def make(url: str, auth: OAuthClient) -> Any:
        service = MCPClientService(reactor, url, auth=auth, max_attempts=1, request_timeout=30.0,
                                   era_cache={})
        started.append((service, auth))
        service.startService()
        return await service.when_ready()

    yield make
    for service, auth in started:
        await service.stopService()
        await auth.close()


def browser(provider: OpenIDProvider, user: str, seen: list[str] | None = None) -> Any:
    """The user's browser, logging ``user`` in (in a thread: it blocks)."""

    def authorize(url: str) -> Deferred[str]:
        if seen is not None:
            seen.append(url)
        return deferToThread(provider.log_in, url, user)

    return authorize


def text(result: dict[str, Any]) -> str:
    return result["content"][0]["text"]  # type: ignore[no-any-return]


async def stored_tokens(auth: OAuthClient, server_url: str) -> dict[str, Any]:
    value = await maybeDeferred(auth.store.load, f"tokens {canonical_resource(server_url)}")
    assert value is not None
    return value


@pytest_twisted.ensureDeferred
async def test_client_credentials_reach_a_protected_server(idp, protected, connect, resource_url):
    auth = OAuthClient(reactor, client_id="mcp-client", client_secret="mcp-client-secret")
    client = await connect(resource_url, auth)
    assert text(await client.call_tool("whoami")) == "mcp-client"
    tokens = await stored_tokens(auth, resource_url)
    assert tokens["issuer"] == idp.issuer and tokens["resource"] == resource_url
    # The provider bound the token to this server (RFC 8707).
    assert jwt.decode(tokens["access_token"], options={"verify_signature": False})["aud"] == resource_url
    await auth.log_out(resource_url)
    assert await auth.token_for(resource_url) is None


@pytest_twisted.ensureDeferred
async def test_a_user_logs_in_with_pkce_after_registering_dynamically(idp, protected, connect, resource_url):
    asked: list[str] = []
    auth = OAuthClient(reactor, authorize=browser(idp, "ada", asked))
    client = await connect(resource_url, auth)
    assert text(await client.call_tool("whoami")) == "ada"
    (url,) = asked
    query = dict(part.split("=", 1) for part in url.split("?", 1)[1].split("&"))
    assert query["code_challenge_method"] == "S256" and query["response_type"] == "code"
    assert query["client_id"] != "mcp-public"  # registered (RFC 7591), not pre-registered
    assert query["scope"] == "files%3Aread%20offline_access"  # the provider offers refresh tokens
    assert query["prompt"] == "consent"  # which OpenID Connect grants only with consent asked for


@pytest_twisted.ensureDeferred
async def test_a_pre_registered_public_client_over_a_websocket(idp, protected, connect, resource_url):
    auth = OAuthClient(reactor, authorize=browser(idp, "grace"), client_id="mcp-public")
    client = await connect(resource_url.replace("http://", "ws://"), auth)
    assert text(await client.call_tool("whoami")) == "grace"
    # The token was asked for the server's HTTP URL, which the upgrade shares.
    assert (await stored_tokens(auth, resource_url))["resource"] == resource_url


@pytest_twisted.ensureDeferred
async def test_an_expired_token_is_refreshed_before_it_is_sent(idp, protected, connect, resource_url):
    clock = task.Clock()
    clock.advance(1_000_000)
    asked: list[str] = []
    auth = OAuthClient(reactor, authorize=browser(idp, "alan", asked), client_id="mcp-public",
                       clock=clock, store=DeferredStore())
    client = await connect(resource_url, auth)
    first = await stored_tokens(auth, resource_url)
    assert first["refresh_token"] and first["expires_at"] == clock.seconds() + 300
    clock.advance(300)  # the provider's tokens last 300 s
    assert text(await client.call_tool("whoami")) == "alan"
    second = await stored_tokens(auth, resource_url)
    assert second["access_token"] != first["access_token"] and second["expires_at"] == clock.seconds() + 300
    assert len(asked) == 1  # refreshed: the user was not asked again


@pytest_twisted.ensureDeferred
async def test_a_missing_scope_is_asked_for_with_the_ones_held(idp, protected, connect, resource_url):
    asked: list[str] = []
    auth = OAuthClient(reactor, authorize=browser(idp, "ada", asked), client_id="mcp-public",
                       scopes=["files:read"])  # what the application asks for; the server may want more
    client = await connect(resource_url, auth)
    assert (await stored_tokens(auth, resource_url))["scopes"] == ["files:read"]
    # 403 insufficient_scope: the user is asked again, for both scopes.
    assert text(await client.call_tool("write")) == "written"
    assert len(asked) == 2 and "scope=files%3Aread%20files%3Awrite" in asked[1]
    assert sorted((await stored_tokens(auth, resource_url))["scopes"]) == ["files:read", "files:write"]


@pytest_twisted.ensureDeferred
async def test_a_403_for_a_scope_the_token_has_is_not_asked_for_again(idp, protected, connect, resource_url):
    asked: list[str] = []
    auth = OAuthClient(reactor, authorize=browser(idp, "ada", asked), client_id="mcp-public")
    client = await connect(resource_url, auth)
    tokens = await stored_tokens(auth, resource_url)
    auth.store.save(f"tokens {resource_url}", {**tokens, "scopes": ["files:read", "files:write"]})
    # The token claims files:write already: asking again cannot help, so the 403 stands.
    with pytest.raises(RPCError) as refused:
        await client.call_tool("write")
    assert "403" in str(refused.value) and len(asked) == 1


class DeferredStore:
    """A store whose answers come later, as a database's would."""

    def __init__(self) -> None:
        self.values: dict[str, dict[str, Any]] = {}

    def load(self, key: str) -> Deferred[dict[str, Any] | None]:
        return task.deferLater(reactor, 0, self.values.get, key)

    def save(self, key: str, value: dict[str, Any] | None) -> Deferred[None]:
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value
        return succeed(None)


# -- discovery order, against a server that serves only some documents ---------


class Documents(web_resource.Resource):
    """Serves JSON documents by path (404 for the rest) and records every
    request's path; ``/tenant/token`` answers a client credentials grant."""

    isLeaf = True

    def __init__(self, documents: dict[str, dict[str, Any]]) -> None:
        super().__init__()
        self.documents = documents
        self.requested: list[str] = []
        self.forms: list[dict[bytes, list[bytes]]] = []

    def render(self, request: web_server.Request) -> bytes:
        path = request.path.decode()
        self.requested.append(path)
        request.setHeader(b"Content-Type", b"application/json")
        if path == "/tenant/token":
            self.forms.append(request.args)
            return json.dumps({"access_token": "t0k3n", "token_type": "bearer", "expires_in": 60}).encode()
        if path not in self.documents:
            request.setResponseCode(404)
            return b"{}"
        return json.dumps(self.documents[path]).encode()


@pytest_twisted.async_yield_fixture
async def documents():
    """``documents(paths)``: serve them on 127.0.0.1; returns (base URL, the resource)."""
    ports = []

    async def serve(make: Any) -> tuple[str, Documents]:
        site_resource = Documents({})
        port = await listen(web_server.Site(site_resource))
        ports.append(port)
        base = f"http://127.0.0.1:{port.getHost().port}"
        site_resource.documents = make(base)
        return base, site_resource

    yield serve
    for port in ports:
        await port.stopListening()


def tenant_documents(base: str, resource_path: str = "/mcp", issuer_suffix: str = "") -> dict[str, Any]:
    """The protected-resource metadata only at the bare well-known path, and
    the issuer's (it has a path) only where OpenID discovery appends it."""
    issuer = f"{base}/tenant"
    return {
        "/.well-known/oauth-protected-resource": {"resource": base + resource_path,
                                                  "authorization_servers": [issuer]},
        "/tenant/.well-known/openid-configuration": {
            "issuer": issuer + issuer_suffix, "token_endpoint": f"{issuer}/token",
            "grant_types_supported": ["client_credentials"]},
    }


@pytest_twisted.ensureDeferred
async def test_discovery_falls_back_in_the_order_the_specification_gives(documents):
    base, served = await documents(tenant_documents)
    auth = OAuthClient(reactor, client_id="svc", client_secret="s3cret", scopes=["a", "b"])
    try:
        tokens = await auth.log_in(f"{base}/mcp")
    finally:
        await auth.close()
    assert served.requested == [
        "/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-authorization-server/tenant", "/.well-known/openid-configuration/tenant",
        "/tenant/.well-known/openid-configuration", "/tenant/token",
    ]
    (form,) = served.forms
    assert form[b"grant_type"] == [b"client_credentials"] and form[b"resource"] == [f"{base}/mcp".encode()]
    assert form[b"scope"] == [b"a b"]
    assert tokens.access_token == "t0k3n" and tokens.expires_at is not None


@pytest.mark.parametrize(("resource_path", "issuer_suffix", "problem"), [
    ("/other", "", "is for"),  # metadata of another resource (RFC 9728 3.3)
    ("/mcp", "/", "names the issuer"),  # metadata of another issuer, even by a slash (RFC 8414 3.3)
])
@pytest_twisted.ensureDeferred
async def test_metadata_for_another_resource_or_issuer_is_not_used(documents, resource_path, issuer_suffix,
                                                                   problem):
    base, served = await documents(lambda base: tenant_documents(base, resource_path, issuer_suffix))
    auth = OAuthClient(reactor, client_id="svc", client_secret="s3cret")
    try:
        with pytest.raises(OAuthError, match=problem):
            await auth.log_in(f"{base}/mcp")
    finally:
        await auth.close()
    assert "/tenant/token" not in served.requested


def test_the_bearer_challenge_is_found_among_others():
    header = ('DPoP algs="ES256", Bearer realm="mcp", error="insufficient_scope", '
              'scope="files:read files:write", resource_metadata="https://h/.well-known/x?a=\\"b\\""')
    assert Challenge.parse([header]) == Challenge("insufficient_scope", ("files:read", "files:write"),
                                                  'https://h/.well-known/x?a="b"')
    assert Challenge.parse(["Basic realm=x"]) == Challenge()
    assert canonical_resource("WSS://Example.COM:8443/mcp#x") == "https://example.com:8443/mcp"
