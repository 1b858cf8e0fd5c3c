"""Hostile and mistaken input at the operational edges: forged JWT headers,
odd introspection answers, a failing or plain-http authorization server,
unsafe OAuth settings, a shutdown while tokens are checked, and ``mcpws``
options that would have crashed, looped or exposed something.

The authorization server here is ``Issuer``: answers by URL in place of the
resource server's JSON client, so each test says what the server says.
"""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from typing import Any

import jwt
import pytest
import twisted.internet.tcp
from autobahn.twisted.resource import WebSocketResource
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from mcp_twisted import tap
from mcp_twisted.auth import TokenAuthenticator
from mcp_twisted.endpoints import loopback_by_default
from mcp_twisted.hosting import Refusal
from mcp_twisted.http import HTTPSettings, MCPHTTPResource, MCPSite
from mcp_twisted.oauth import (
    IntrospectionCredentials,
    OAuthIdentity,
    OAuthResourceServer,
    OAuthSettings,
    ServerUnavailable,
    bearer_challenge,
)
from mcp_twisted.service import MCPService
from mcp_twisted.websocket import MCPServerFactory
from mcp_twisted.workers import child_arguments
from tests.http_support import JSON_HEADERS, Served, Wire, init_message, raw_request
from tests.support import make_app

ISSUER = "https://issuer.example"
RESOURCE = "http://127.0.0.1:8080/mcp"
METADATA_URL = "http://127.0.0.1:8080/.well-known/oauth-protected-resource/mcp"
JWKS_URI = "https://issuer.example/jwks"
INTROSPECTION = "https://issuer.example/introspect"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS = {"keys": [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key())), "kid": "k1"}]}
needs_reuse_port = pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT") or not hasattr(twisted.internet.tcp, "makeBinding"),
    reason="SO_REUSEPORT needs Linux (or a BSD) and Twisted 26.10 or later")


class Issuer:
    """The authorization server: ``answers`` maps a URL to a JSON object, an
    exception to fail with, or a Deferred; other URLs fail (HTTP 500)."""

    def __init__(self, server: OAuthResourceServer, **answers: Any) -> None:
        self.answers: dict[str, Any] = {}
        self.asked: list[str] = []
        server.client.get = self._answer  # type: ignore[method-assign]
        server.client.post_form = lambda url, fields, **_: self._answer(url)  # type: ignore[method-assign]

    def _answer(self, url: str) -> Deferred[Any]:
        self.asked.append(url)
        answer = self.answers.get(url, ServerUnavailable(f"{url}: HTTP 500"))
        if isinstance(answer, Deferred):
            return answer
        return fail(answer) if isinstance(answer, Exception) else succeed(dict(answer))


def resource_server(clock: task.Clock, **settings: Any) -> OAuthResourceServer:
    return OAuthResourceServer(OAuthSettings(resource=RESOURCE, issuer=ISSUER, **settings), clock=clock)


def introspecting(
    clock: task.Clock, endpoint: str | None = INTROSPECTION
) -> tuple[OAuthResourceServer, Issuer]:
    """A resource server that introspects at ``endpoint`` (None: the metadata's)."""
    server = resource_server(clock, introspection=IntrospectionCredentials("mcp", "secret", endpoint))
    return server, Issuer(server)


def signed(clock: task.Clock, header: dict[str, Any] | None = None, **claims: Any) -> str:
    claims = {"iss": ISSUER, "aud": RESOURCE, "sub": "ada", "exp": clock.seconds() + 600, **claims}
    return jwt.encode(claims, KEY, "RS256", headers={"kid": "k1", **(header or {})})


def with_header(header: dict[str, Any]) -> str:
    """A token whose header is ``header`` as it stands (no key needed to send one)."""
    parts = [jwt.utils.base64url_encode(json.dumps(part).encode()).decode()
             for part in (header, {"iss": ISSUER, "aud": RESOURCE, "sub": "ada"})]
    return ".".join([*parts, "c2ln"])


def outcome(server: OAuthResourceServer, token: str) -> OAuthIdentity | Refusal:
    """The identity or the refusal, whether at once or by the Deferred;
    anything else raised is the test's failure."""
    try:
        answer = server.authenticate(f"Bearer {token}")
        if isinstance(answer, Deferred):
            results: list[Any] = []
            answer.addBoth(results.append)
            (answer,) = results
            if isinstance(answer, Failure):
                answer.raiseException()
        return answer
    except Refusal as refused:
        return refused


def invalid_token(description: str) -> str:
    return bearer_challenge(error="invalid_token", error_description=description,
                            resource_metadata=METADATA_URL)


def assert_invalid_token(answer: Any, description: str) -> None:
    assert isinstance(answer, Refusal), answer
    assert (answer.status, dict(answer.headers)) == (401, {"WWW-Authenticate": invalid_token(description)})


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


# -- JWT headers and claims -------------------------------------------------


@pytest.mark.parametrize("alg", [["RS256"], {"RS256": 1}])
def test_a_jwt_whose_alg_is_not_a_string_is_an_invalid_token_over_http(alg):
    clock = task.Clock()
    server = resource_server(clock, jwks_uri=JWKS_URI)
    token = with_header({"alg": alg, "kid": "k1"})
    assert_invalid_token(outcome(server, token), "signing algorithm not allowed")
    app, _ = make_app()
    reply = Served(app, auth=server).post(init_message(), headers={"Authorization": f"Bearer {token}"})
    assert reply.status == 401
    assert reply.header("www-authenticate") == invalid_token("signing algorithm not allowed")


@pytest.mark.parametrize("exp", [float("nan"), float("inf")])
def test_a_signed_exp_that_is_no_finite_time_is_refused(exp):
    # PyJWT reads NaN and Infinity: neither would ever expire.
    clock = task.Clock()
    clock.advance(1_700_000_000)
    server = resource_server(clock, jwks_uri=JWKS_URI)
    Issuer(server).answers[JWKS_URI] = JWKS
    assert_invalid_token(outcome(server, signed(clock, exp=exp)), "token has no valid exp")
    # An integer too large for a float is a far future, not an OverflowError.
    assert isinstance(outcome(server, signed(clock, exp=10**400)), OAuthIdentity)


# -- introspection ----------------------------------------------------------


@pytest.mark.parametrize("aud", [5, [["x"]], [RESOURCE, 5]])
def test_an_introspected_aud_that_is_not_strings_is_a_wrong_audience_and_cached(aud):
    clock = task.Clock()
    server, issuer = introspecting(clock)
    issuer.answers[INTROSPECTION] = {"active": True, "iss": ISSUER, "aud": aud, "sub": "ada"}
    for _ in range(3):
        assert_invalid_token(outcome(server, "opaque-token"), "wrong audience")
    assert issuer.asked == [INTROSPECTION]


def test_a_failing_introspection_endpoint_is_not_asked_again_at_once():
    clock = task.Clock()
    server, issuer = introspecting(clock)
    answers = []
    for _ in range(100):  # a client retrying for 10 s
        answers.append(outcome(server, "opaque-token"))
        clock.advance(0.1)
    assert {(answer.status, dict(answer.headers)["Retry-After"]) for answer in answers} == {(503, "30")}
    assert issuer.asked == [INTROSPECTION]
    # Another token is asked about: one token cannot shut out the others.
    assert outcome(server, "another-token").status == 503
    assert len(issuer.asked) == 2
    clock.advance(30)
    issuer.answers[INTROSPECTION] = {"active": True, "iss": ISSUER, "aud": RESOURCE, "sub": "ada"}
    assert isinstance(outcome(server, "opaque-token"), OAuthIdentity)
    assert len(issuer.asked) == 3


def test_plain_http_urls_from_the_issuer_metadata_are_not_used():
    clock = task.Clock()
    server, issuer = introspecting(clock, endpoint=None)
    issuer.answers[f"{ISSUER}/.well-known/oauth-authorization-server"] = {
        "issuer": ISSUER, "jwks_uri": "http://keys.example/jwks",
        "introspection_endpoint": "http://issuer.example/introspect"}
    for token in (signed(clock), "opaque-token"):
        answer = outcome(server, token)
        assert isinstance(answer, Refusal) and answer.status == 503
    assert issuer.asked == [f"{ISSUER}/.well-known/oauth-authorization-server"]


# -- settings ---------------------------------------------------------------


@pytest.mark.parametrize(("change", "message"), [
    ({"leeway": float("inf")}, "the leeway must be from 0 to 300 seconds"),
    ({"leeway": float("nan")}, "the leeway must be from 0 to 300 seconds"),
    ({"leeway": -5.0}, "the leeway must be from 0 to 300 seconds"),
    ({"leeway": 301.0}, "the leeway must be from 0 to 300 seconds"),
    ({"jwks_min_refresh": float("nan")}, "jwks_min_refresh must be a finite number of seconds"),
    ({"introspection_cache_ttl": float("inf")}, "introspection_cache_ttl must be a finite number"),
])
def test_time_settings_that_are_not_bounded_numbers_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        OAuthSettings(resource=RESOURCE, issuer=ISSUER, **change)
    OAuthSettings(resource=RESOURCE, issuer=ISSUER, leeway=300.0)


# -- shutdown ---------------------------------------------------------------


class PendingCheck:
    """A service whose JWKS fetch is under way while an ``initialize`` waits for it."""

    def __init__(self, drain_timeout: float) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        oauth = resource_server(self.clock, jwks_uri=JWKS_URI)
        self.jwks: Deferred[Any] = Deferred()
        Issuer(oauth).answers[JWKS_URI] = self.jwks
        factory = MCPServerFactory(make_app()[0], auth=oauth, clock=self.clock, ping_interval=0)
        resource = MCPHTTPResource(factory.host, HTTPSettings())
        site = MCPSite(resource, WebSocketResource(factory),
                       max_body_size=factory.host.limits.max_message_size)
        self.service = MCPService(factory, [], http=resource, drain_timeout=drain_timeout, close_timeout=5)
        self.service.startService()
        self.wire = Wire(site, 40000)
        headers = {**JSON_HEADERS, "Authorization": f"Bearer {signed(self.clock)}"}
        self.wire.send(raw_request("POST", "/mcp", headers, json.dumps(init_message()).encode()))
        assert self.wire.transport.value() == b""

    def stop(self) -> Deferred[None]:
        stopped: Deferred[None] = self.service.stopService()
        assert not stopped.called  # the request is waited for
        return stopped


def test_a_token_check_that_ends_during_the_drain_is_answered_503_before_the_stop_ends():
    pending = PendingCheck(drain_timeout=10)
    stopped = pending.stop()
    pending.clock.advance(2)
    assert not stopped.called
    pending.jwks.callback(JWKS)
    reply = pending.wire.reply
    assert (reply.status, reply.body) == (503, b"Service Unavailable: shutting down\n")
    assert stopped.called


def test_a_token_check_that_outlasts_the_drain_timeout_is_answered_503():
    pending = PendingCheck(drain_timeout=3)
    stopped = pending.stop()
    pending.clock.advance(3)
    assert stopped.called
    assert pending.wire.reply.status == 503
    pending.jwks.callback(JWKS)  # too late: answered once only
    assert len(pending.wire.replies()) == 1


# -- mcpws options ----------------------------------------------------------


def test_children_never_get_workers_however_the_option_was_spelled():
    # getopt takes any unique prefix of a long option.
    for spelling in (["--workers", "2"], ["--workers=2"], ["--work", "2"], ["--worker=2"], ["--wor", "2"]):
        parent = parse(*spelling, "--app", "m:s", "-e", "tcp:8080")
        child = parse(*child_arguments(parent.arguments))
        assert child["workers"] == 0, spelling
        assert (child["app"], child["endpoints"], child["reuse-port"]) == ("m:s", ["tcp:8080"], 1)


def test_a_value_that_looks_like_the_workers_option_stays_a_value():
    child = parse(*child_arguments(parse("--workers", "2", "--path", "--workers").arguments))
    assert (child["workers"], child["path"]) == (0, "--workers")


@needs_reuse_port
def test_workers_refuse_an_endpoint_they_cannot_share_but_take_wrapped_tcp_ones():
    with pytest.raises(SystemExit, match=re.escape("mcpws: error: --endpoint 'unix:/tmp/mcp-workers.sock': "
                                                   "with --workers every endpoint must be TCP")):
        tap.makeService(parse("--workers", "2", "--endpoint", "unix:/tmp/mcp-workers.sock"))
    endpoint = "haproxy:reuseport:tcp:0:interface=127.0.0.1"
    assert tap.makeService(parse("--workers", "2", "--endpoint", endpoint)).count == 2


@needs_reuse_port
def test_workers_check_the_app_before_starting_children():
    with pytest.raises(SystemExit, match="mcpws: error: --app 'no_such_module:server': cannot import"):
        tap.makeService(parse("--workers", "2", "--endpoint", "tcp:0:interface=127.0.0.1",
                              "--app", "no_such_module:server"))


def test_a_secret_file_that_is_not_utf8_is_one_line(tmp_path: Path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"\xff\xfesecret\n")
    message = r"^mcpws: error: --oauth-introspection-secret-file .*: not UTF-8 text"
    with pytest.raises(SystemExit, match=message):
        tap.makeService(parse("--oauth-issuer", ISSUER, "--oauth-resource", RESOURCE,
                              "--oauth-introspection-client-id", "mcp",
                              "--oauth-introspection-secret-file", str(secret)))


def test_a_name_twice_in_the_token_file_is_one_line_naming_it(tmp_path: Path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("ci:old-token\nalice:alice-token\n# rotated\nci:new-token\n")
    with pytest.raises(ValueError, match=r"line 4: 'ci' already has a token \(line 1\)"):
        TokenAuthenticator.from_file(tokens)
    with pytest.raises(SystemExit, match=r"^mcpws: error: --auth-token-file: .*'ci' already has a token"):
        tap.makeService(parse("--auth-token-file", str(tokens)))


def test_wrapped_metrics_endpoints_stay_on_loopback_by_default():
    for given, loopback in (("reuseport:tcp:9100", "127.0.0.1"), ("haproxy:tcp:9100", "127.0.0.1"),
                            ("haproxy:reuseport:tcp6:9100", r"\:\:1")):
        assert loopback_by_default(given) == f"{given}:interface={loopback}"
    # An interface given inside the wrappers is the operator's choice.
    given = "reuseport:tcp:9100:interface=0.0.0.0"
    assert loopback_by_default(given) == given


def test_websocket_only_with_oauth_serves_the_metadata_its_challenge_names():
    service = tap.makeService(parse("--no-http", "--oauth-issuer", ISSUER, "--oauth-resource", RESOURCE,
                                    "--endpoint", "tcp:0:interface=127.0.0.1"))
    (listener,) = service.listeners
    wire = Wire(listener.factory, 40000)
    wire.send(raw_request("GET", "/.well-known/oauth-protected-resource/mcp", {}))
    assert wire.reply.status == 200
    assert wire.reply.json["resource"] == RESOURCE
    # MCP itself is still WebSocket only.
    wire = Wire(listener.factory, 40001)
    wire.send(raw_request("POST", "/mcp", JSON_HEADERS, json.dumps(init_message()).encode()))
    assert wire.reply.status == 426
