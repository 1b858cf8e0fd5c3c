"""TLS server endpoints: forward-secret ``ssl:``, and ``mtls:`` for client certificates.

Twisted's ``ssl:`` endpoint uses Twisted's default cipher list, which on
TLS 1.2 still offers RSA key exchange (``AES128-SHA`` and friends): whoever
later obtains the server's private key can decrypt every recorded session.
``server_from_string`` serves ``ssl:`` strings with the same options and
defaults, but offers only ECDHE/DHE key exchange with AEAD ciphers on
TLS 1.2 (``FORWARD_SECRET_CIPHERS``). TLS 1.3 suites are all forward-secret
and stay as OpenSSL offers them; TLS 1.2 is the minimum.

Twisted does not let a plugin replace ``ssl:`` (it looks that prefix up
before any plugin), so the forward-secret parser is registered under its own
prefix and ``server_from_string`` sends ``ssl:`` strings to it. Twisted still
does the tokenizing (escaped colons and all).

``mtls:`` requires client certificates, which ``ssl:`` cannot ask for::

    mtls:8443:privateKey=key.pem:certKey=cert.pem:caCerts=clients-ca.pem

Clients must present a certificate signed by a CA in ``caCerts``; others fail
the TLS handshake. Options: ``interface`` (default ``127.0.0.1``, as everything
here binds to loopback unless told otherwise), ``backlog``, ``extraCertChain``,
``dhParameters``.

Key and certificate files are checked when the endpoint is parsed, and a
wrong one is named with the reason (a certificate given as the key, a key
that does not belong to the certificate), not with OpenSSL's error stack.

``reuseport:`` wraps any TCP-based endpoint string so that its listener sets
``SO_REUSEPORT`` (``reuseport:tcp:8080:interface=0.0.0.0``,
``reuseport:ssl:8443:...``, ``haproxy:reuseport:tcp:8080``): several
processes then listen on one port and the kernel spreads connections among
them. It needs Twisted's bindings (26.10 and later) and an OS with
``SO_REUSEPORT``; elsewhere parsing fails with a one-line reason.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint, IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from twisted.protocols.haproxy import proxyEndpoint
from twisted.protocols.haproxy._parser import unparseEndpoint
from twisted.python.filepath import FilePath
from zope.interface import implementer

from mcp_twisted.auth import load_certificates

__all__ = [
    "FORWARD_SECRET_CIPHERS",
    "ForwardSecretTLSServerParser",
    "MutualTLSServerParser",
    "ReusePortServerParser",
    "load_key_and_certificate",
    "loopback_by_default",
    "reuse_port_reactor",
    "server_from_string",
    "server_tls_options",
    "unwrap_description",
]

FORWARD_SECRET_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"
"""TLS 1.2 ciphers offered by ``ssl:`` and ``mtls:`` (OpenSSL syntax). DHE ones
need ``dhParameters=``; without it only ECDHE is offered."""

_PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")
# PKCS#8 encrypted keys, and the traditional format's encryption header.
_ENCRYPTED_KEY = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|^Proc-Type: 4,ENCRYPTED", re.M)


def _pem_contents(data: bytes) -> str:
    """What a PEM file holds, for an error message."""
    labels = _PEM_LABEL.findall(data)
    if any(label.endswith(b"PRIVATE KEY") for label in labels):
        return "a private key"
    if any(label.endswith(b"CERTIFICATE") for label in labels):
        return "a certificate"
    return "no PEM data" if not labels else "PEM data of another kind"


def load_key_and_certificate(private_key: str, certificate: str) -> ssl.PrivateCertificate:
    """The server's key and certificate from PEM files (they may be one file).

    Errors are ``ValueError``s that name the option and the file at fault:
    ``privateKey``/``certKey``, as in the endpoint strings.
    """
    key_pem = FilePath(private_key).getContent()
    cert_pem = key_pem if certificate == private_key else FilePath(certificate).getContent()
    if _ENCRYPTED_KEY.search(key_pem):
        # OpenSSL would ask for the passphrase on the terminal, if there is one.
        raise ValueError(f"privateKey file {private_key} is encrypted; give an unencrypted key")
    try:
        key = ssl.KeyPair.load(key_pem, crypto.FILETYPE_PEM)
    except crypto.Error:
        raise ValueError(
            f"privateKey file {private_key} holds {_pem_contents(key_pem)}, not a usable private key"
        ) from None
    try:
        cert = ssl.Certificate.loadPEM(cert_pem)
    except crypto.Error:
        raise ValueError(
            f"certKey file {certificate} holds {_pem_contents(cert_pem)}, not a usable certificate"
        ) from None
    if not cert.getPublicKey().matches(key):
        raise ValueError(
            f"privateKey file {private_key} is not the key of the certificate in certKey file {certificate}"
        )
    private: ssl.PrivateCertificate = ssl.PrivateCertificate.fromCertificateAndKeyPair(cert, key)
    return private


def server_tls_options(
    private_key: str,
    certificate: str,
    *,
    extra_chain: str | None = None,
    ca_certificates: str | None = None,
    dh_parameters: str | None = None,
    method: str | None = None,
) -> ssl.CertificateOptions:
    """Server TLS options offering only forward-secret ciphers on TLS 1.2.

    :param ca_certificates: a PEM file of CAs; clients must present a
        certificate signed by one of them (mutual TLS).
    :param method: the name of an ``OpenSSL.SSL`` method constant, as
        ``ssl:``'s ``sslmethod`` (rarely wanted: it replaces the TLS 1.2 minimum).
    """
    server = load_key_and_certificate(private_key, certificate)
    options: dict[str, Any] = {}
    if extra_chain is not None:
        options["extraCertChain"] = [c.original for c in load_certificates(extra_chain)]
    if ca_certificates is not None:
        options["trustRoot"] = ssl.trustRootFromCertificates(load_certificates(ca_certificates))
    if dh_parameters is not None:
        options["dhParameters"] = ssl.DiffieHellmanParameters.fromFile(FilePath(dh_parameters))
    if method is not None:
        options["method"] = getattr(SSL, method)
    return ssl.CertificateOptions(
        privateKey=server.privateKey.original,
        certificate=server.original,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(FORWARD_SECRET_CIPHERS),
        **options,
    )


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ForwardSecretTLSServerParser:
    """Twisted's ``ssl:`` (same options, same defaults) with ``FORWARD_SECRET_CIPHERS``.

    Reached through ``server_from_string``, which rewrites ``ssl:`` to this prefix.
    """

    prefix = "mcpws-ssl"

    def parseStreamServer(  # type: ignore[override]  # Twisted's interface says *args: object; ours are the string's named options
        self,
        reactor: Any,
        port: str,
        privateKey: str = "server.pem",
        certKey: str | None = None,
        sslmethod: str | None = None,
        interface: str = "",
        backlog: str = "50",
        extraCertChain: str | None = None,
        dhParameters: str | None = None,
    ) -> SSL4ServerEndpoint:
        options = server_tls_options(privateKey, certKey or privateKey, extra_chain=extraCertChain,
                                     dh_parameters=dhParameters, method=sslmethod)
        return SSL4ServerEndpoint(reactor, int(port), options, backlog=int(backlog), interface=interface)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class MutualTLSServerParser:
    prefix = "mtls"

    def parseStreamServer(  # type: ignore[override]  # Twisted's interface says *args: object; ours are the string's named options
        self,
        reactor: Any,
        port: str,
        privateKey: str,
        certKey: str | None = None,
        caCerts: str | None = None,
        extraCertChain: str | None = None,
        dhParameters: str | None = None,
        interface: str = "127.0.0.1",
        backlog: str = "50",
    ) -> SSL4ServerEndpoint:
        if caCerts is None:
            raise ValueError("mtls: needs caCerts=<PEM file of the CAs that sign client certificates>")
        options = server_tls_options(privateKey, certKey or privateKey, extra_chain=extraCertChain,
                                     ca_certificates=caCerts, dh_parameters=dhParameters)
        return SSL4ServerEndpoint(reactor, int(port), options, backlog=int(backlog), interface=interface)


class _ReusePortReactor:
    """A reactor whose TCP and TLS listeners set ``SO_REUSEPORT``.

    Endpoints call ``listenTCP``/``listenSSL`` with a port number; this hands
    the reactor a Twisted binding instead, so every TCP-based endpoint type
    (``tcp``, ``ssl``, ``mtls``, ``haproxy:``) gets the option unchanged.
    """

    def __init__(self, reactor: Any, make_binding: Any) -> None:
        self._reactor = reactor
        self._make_binding = make_binding

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        binding = self._make_binding(interface, port, reuseAddress=True, reusePort=True)
        return self._reactor.listenTCP(binding, factory, backlog, interface)

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        binding = self._make_binding(interface, port, reuseAddress=True, reusePort=True)
        return self._reactor.listenSSL(binding, factory, contextFactory, backlog, interface)


def reuse_port_reactor(reactor: Any) -> Any:
    """``reactor``, with ``SO_REUSEPORT`` on the TCP listeners endpoints open
    through it; ``ValueError`` where Twisted or the OS cannot do it."""
    try:
        from twisted.internet.tcp import makeBinding
    except ImportError:
        import twisted

        raise ValueError(f"SO_REUSEPORT needs Twisted 26.10 or later (this is Twisted {twisted.__version__})"
                         ) from None
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError("SO_REUSEPORT is not available on this operating system")
    return _ReusePortReactor(reactor, makeBinding)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortServerParser:
    """``reuseport:<endpoint>``: the wrapped endpoint's listener sets ``SO_REUSEPORT``."""

    prefix = "reuseport"

    def parseStreamServer(self, reactor: Any, *args: object, **kwargs: object) -> IStreamServerEndpoint:
        return server_from_string(reuse_port_reactor(reactor), unparseEndpoint(args, kwargs))


def server_from_string(reactor: Any, description: str) -> IStreamServerEndpoint:
    """``serverFromString``, except that ``ssl:`` offers only forward-secret
    ciphers, also under the ``haproxy:`` and ``reuseport:`` wrappers."""
    kind, sep, rest = description.partition(":")
    if sep and kind == "haproxy":
        return proxyEndpoint(server_from_string(reactor, rest))
    if sep and kind == "ssl":
        description = f"{ForwardSecretTLSServerParser.prefix}:{rest}"
    endpoint: IStreamServerEndpoint = serverFromString(reactor, description)
    return endpoint


# Endpoint types that listen on every address when no interface= is given,
# and the loopback address to use instead (escaped as endpoint strings need).
_WILDCARD_BY_DEFAULT = {"tcp": "127.0.0.1", "ssl": "127.0.0.1", "tcp6": r"\:\:1"}
# Prefixes that wrap an endpoint string; the wrapped endpoint's options end the string.
_WRAPPERS = ("haproxy:", "reuseport:")


def unwrap_description(description: str) -> str:
    """The endpoint string inside the ``haproxy:`` and ``reuseport:`` wrappers:
    ``tcp:8080`` for ``haproxy:reuseport:tcp:8080``."""
    while description.startswith(_WRAPPERS):
        description = description.partition(":")[2]
    return description


def loopback_by_default(description: str) -> str:
    """``description`` with ``interface=`` loopback added if it names no interface
    and would otherwise listen on every address; otherwise unchanged.

    The values of ``tcp``, ``tcp6`` and ``ssl`` options are numbers, addresses
    and file names, so a colon-separated part that starts with ``interface=``
    is that option. Wrapped endpoints are looked into: their options are the
    wrapped endpoint's, so the interface goes at the end all the same.
    """
    kind, _, rest = unwrap_description(description).partition(":")
    loopback = _WILDCARD_BY_DEFAULT.get(kind)
    if loopback is None or any(part.startswith("interface=") for part in rest.split(":")):
        return description
    return f"{description}:interface={loopback}"
