"""Bearer-token authentication by subclassing ``MCPServerProtocol``.

Run it:   python examples/token_auth.py
Connect:  ws://127.0.0.1:8081/mcp with the header "Authorization: Bearer s3cret-token"

``onConnect`` runs before the WebSocket upgrade, so a client without a valid
token gets HTTP 401 and never reaches the MCP session. The name the token
belongs to becomes ``self.identity``, which tools read as ``ctx.identity``.
"""

from __future__ import annotations

import hmac

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet import defer, endpoints, task
from twisted.logger import Logger

from mcp_twisted import Context, MCPServer
from mcp_twisted.websocket import MCPServerFactory, MCPServerProtocol

# In a real deployment, load these from a file or a secrets store.
TOKENS = {"s3cret-token": "alice"}

log = Logger()
app = MCPServer("token-demo", "1.0.0")


@app.tool()
def whoami(ctx: Context) -> str:
    """The name of the authenticated caller."""
    return str(ctx.identity)


def token_owner(token: str) -> str | None:
    """The owner of ``token``, compared in constant time."""
    for known, owner in TOKENS.items():
        if hmac.compare_digest(known.encode(), token.encode()):
            return owner
    return None


class TokenProtocol(MCPServerProtocol):
    def onConnect(self, request: ConnectionRequest) -> str | None:
        subprotocol = super().onConnect(request)  # path, Host and Origin checks first
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        owner = token_owner(token) if scheme.lower() == "bearer" else None
        if owner is None:
            raise ConnectionDeny(401, "Unauthorized")
        self.identity = owner
        return subprotocol

    def onSessionReady(self) -> None:
        super().onSessionReady()
        log.info("{who} started an MCP session", who=self.identity)


def make_factory() -> MCPServerFactory:
    factory = MCPServerFactory(app)
    factory.protocol = TokenProtocol
    return factory


async def main(reactor) -> None:  # type: ignore[no-untyped-def]
    endpoint = endpoints.serverFromString(reactor, "tcp:8081:interface=127.0.0.1")
    await endpoint.listen(make_factory())
    print("Serving ws://127.0.0.1:8081/mcp (token: s3cret-token); Ctrl-C to stop")
    await defer.Deferred()  # run until interrupted


if __name__ == "__main__":
    task.react(main)
