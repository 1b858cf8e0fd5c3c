"""Who may connect: bearer tokens and client certificates.

Tokens are checked during the WebSocket opening handshake, before any MCP
message is read. Comparison is constant-time over fixed-length digests, so
neither a token's content nor its length leaks through timing. Tokens are
never logged; only the name they belong to is.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path
from typing import cast

from OpenSSL import crypto
from twisted.internet import ssl
from twisted.internet.interfaces import ISSLTransport

__all__ = [
    "TokenAuthenticator",
    "certificate_subject",
    "load_certificates",
]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class TokenAuthenticator:
    """Bearer tokens, each with a name that becomes the connection's identity."""

    def __init__(self, tokens: dict[str, str]) -> None:
        """:param tokens: name -> token."""
        if not tokens:
            raise ValueError("no tokens given")
        self._digests = [(name, _digest(token)) for name, token in tokens.items()]

    @classmethod
    def from_file(cls, path: str | Path) -> TokenAuthenticator:
        """Read ``name:token`` lines; blank lines and ``#`` comments are skipped.
        A name has one token: a second line for it is an error, not a silent
        replacement of the first (whose holder would be refused unawares)."""
        tokens: dict[str, str] = {}
        lines: dict[str, int] = {}
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, token = line.partition(":")
            name = name.strip()
            if not sep or not name or not token.strip():
                raise ValueError(f"{path}, line {number}: expected name:token")
            if name in lines:
                raise ValueError(f"{path}, line {number}: {name!r} already has a token (line {lines[name]}); "
                                 f"give each token its own name")
            tokens[name] = token.strip()
            lines[name] = number
        return cls(tokens)

    def authenticate(self, authorization: str | None) -> str | None:
        """The name for an ``Authorization: Bearer <token>`` header, or None."""
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        offered = _digest(token.strip())
        found = None
        for name, digest in self._digests:  # no early exit: same work for every token
            if hmac.compare_digest(offered, digest):
                found = name
        return found


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def load_certificates(path: str) -> list[ssl.Certificate]:
    """Every certificate in a PEM file (a CA bundle holds several)."""
    with open(path, "rb") as f:
        blocks = _PEM_CERTIFICATE.findall(f.read())
    if not blocks:
        raise ValueError(f"{path}: no PEM certificate found")
    certificates = []
    for number, block in enumerate(blocks, 1):
        try:
            certificates.append(ssl.Certificate.loadPEM(block))
        except crypto.Error:
            # OpenSSL's error stack does not say which file, let alone which block.
            raise ValueError(f"{path}: certificate {number} is not valid PEM") from None
    return certificates


def certificate_subject(transport: object) -> str | None:
    """The RFC 4514 subject of the client's TLS certificate, if it sent one."""
    if not ISSLTransport.providedBy(transport):
        return None
    # ISSLTransport says object; Twisted's TLS transports give pyOpenSSL's X509 or None.
    certificate = cast("crypto.X509 | None", transport.getPeerCertificate())
    if certificate is None:
        return None
    return certificate.to_cryptography().subject.rfc4514_string()
