"""The client's real address behind a reverse proxy, from ``X-Forwarded-For``.

Behind HAProxy prefer the PROXY protocol (``--endpoint haproxy:tcp:8080``):
Twisted's wrapper then makes the transport's peer the client itself and
nothing here is needed. nginx (open source) cannot send it to an HTTP
upstream, so it appends the address it saw to ``X-Forwarded-For``.

That header is whatever the client wrote, plus what each proxy appended, so
it is believed only when the connection comes from a configured proxy
(``--trusted-proxy``), and then read from the right: the client is the last
address that is not itself a trusted proxy. Anyone else's header is ignored
(Autobahn's ``trustXForwardedFor`` believes it from every peer).

The address goes into logs only, never into a metrics label: labels stay a
small fixed set.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

__all__ = ["MAX_FORWARDED_HOPS", "TrustedProxies"]

MAX_FORWARDED_HOPS = 16
"""Addresses of ``X-Forwarded-For`` looked at, from the right; more hops than
this end the walk (a header is the client's to make as long as it likes)."""

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The proxies whose ``X-Forwarded-For`` is believed."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        """
        :param networks: addresses or CIDR networks (``10.0.0.0/8``,
            ``127.0.0.1``, ``::1``); ``ValueError`` names a bad one.
        """
        parsed: list[_Network] = []
        for network in networks:
            try:
                parsed.append(ipaddress.ip_network(network.strip(), strict=False))
            except ValueError:
                raise ValueError(f"{network!r} is not an IP address or network") from None
        self.networks = tuple(parsed)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def trusts(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.split("%")[0])
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def client_address(self, peer: str, forwarded_for: str | None) -> str | None:
        """The client's address when ``peer`` (the TCP peer's address) is a
        trusted proxy that sent ``forwarded_for``; otherwise None (the peer
        is the client as far as anyone can tell)."""
        if not forwarded_for or not self.trusts(peer):
            return None
        client = None
        for hop in reversed(forwarded_for.split(",")[-MAX_FORWARDED_HOPS:]):
            hop = hop.strip()
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                break  # not an address: nothing left of it can be believed
            client = hop
            if not self.trusts(hop):
                break
        return client

    def request_client(self, request: Any) -> str | None:
        """``client_address`` for a twisted.web request (Streamable HTTP)."""
        if not self.networks:
            return None
        peer = getattr(request.getClientAddress(), "host", "")
        return self.client_address(peer, request.getHeader("x-forwarded-for"))
