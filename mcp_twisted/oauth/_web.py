"""The protected-resource metadata (RFC 9728) as a twisted.web resource."""

from __future__ import annotations

import orjson
from twisted.web import server
from twisted.web.resource import IResource, Resource
from zope.interface import implementer

from mcp_twisted.oauth._server import ProtectedResourceMetadata


@implementer(IResource)
class ProtectedResourceMetadataResource(Resource):
    """``GET /.well-known/oauth-protected-resource[/path]``: a leaf, so that a
    dispatcher can hand it every request whose path is in ``paths``; other
    paths get 404. Readable from any origin: browser-based MCP clients
    discover the authorization server with it before they have a token."""

    isLeaf = True

    def __init__(self, metadata: ProtectedResourceMetadata) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # mypy#16653
        self.metadata = metadata
        self.paths = frozenset(path.encode() for path in metadata.paths)
        self.body = orjson.dumps(metadata.document())

    def render_GET(self, request: server.Request) -> bytes:
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        if request.path not in self.paths:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"Not Found\n"
        request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Cache-Control", b"public, max-age=3600")
        return self.body

    def render_OPTIONS(self, request: server.Request) -> bytes:
        """CORS preflight (a browser client may send ``MCP-Protocol-Version``)."""
        request.setResponseCode(204)
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        request.setHeader(b"Access-Control-Allow-Methods", b"GET, OPTIONS")
        request.setHeader(b"Access-Control-Allow-Headers", b"*")
        request.setHeader(b"Access-Control-Max-Age", b"86400")
        return b""
