"""The ``mtls:`` server endpoint: TLS that requires client certificates.

Twisted's ``ssl:`` endpoint cannot ask for client certificates, so this
parser (registered as a Twisted plugin) adds one more endpoint string::

    mtls:8443:privateKey=key.pem:certKey=cert.pem:caCerts=clients-ca.pem

Clients must present a certificate signed by a CA in ``caCerts``; others fail
the TLS handshake. Options: ``interface`` (default ``127.0.0.1``, as everything
here binds to loopback unless told otherwise), ``backlog``, ``extraCertChain``.
TLS 1.2 is the minimum, as with ``ssl:``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IStreamServerEndpointStringParser
from twisted.plugin import IPlugin
from zope.interface import implementer

from mcp_twisted.auth import load_certificates


def mutual_tls_options(
    private_key: str, certificate: str, ca_certificates: str, extra_chain: str | None = None
) -> ssl.CertificateOptions:
    """Server TLS options that verify clients against ``ca_certificates``."""
    with open(private_key, "rb") as f:
        key_pem = f.read()
    with open(certificate, "rb") as f:
        cert_pem = f.read()
    server = ssl.PrivateCertificate.loadPEM(key_pem + b"\n" + cert_pem)
    chain = [c.original for c in load_certificates(extra_chain)] if extra_chain else None
    return ssl.CertificateOptions(
        privateKey=server.privateKey.original,
        certificate=server.original,
        extraCertChain=chain,
        trustRoot=ssl.trustRootFromCertificates(load_certificates(ca_certificates)),
    )


@implementer(IPlugin, IStreamServerEndpointStringParser)
class MutualTLSServerParser:
    prefix = "mtls"

    def parseStreamServer(
        self,
        reactor: Any,
        port: str,
        privateKey: str,
        certKey: str | None = None,
        caCerts: str | None = None,
        extraCertChain: str | None = None,
        interface: str = "127.0.0.1",
        backlog: str = "50",
    ) -> SSL4ServerEndpoint:
        if caCerts is None:
            raise ValueError("mtls: needs caCerts=<PEM file of the CAs that sign client certificates>")
        options = mutual_tls_options(privateKey, certKey or privateKey, caCerts, extraCertChain)
        return SSL4ServerEndpoint(reactor, int(port), options, backlog=int(backlog), interface=interface)
