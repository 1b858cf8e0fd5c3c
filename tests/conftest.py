"""Fixtures shared by the tests; plain helpers are in ``support.py``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
import trustme
from twisted.logger import globalLogPublisher

from mcp_twisted import MCPServer
from mcp_twisted.websocket import MCPServerFactory
from tests.support import listen, make_app, run_timers_on, stop


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """Every twisted.logger event emitted during the test."""
    captured: list[dict[str, Any]] = []
    observer = captured.append
    globalLogPublisher.addObserver(observer)
    yield captured
    globalLogPublisher.removeObserver(observer)


@pytest_twisted.async_yield_fixture
async def served():
    """``await served(**options)`` serves an app on 127.0.0.1 (``make_app()``'s
    unless ``app=`` is given) and returns ``(factory, port number, state)``;
    everything is torn down after the test. With ``clock=``, Autobahn's timers
    run on that clock as well as ours."""
    started: list[tuple[Any, MCPServerFactory]] = []

    async def start(
        app: MCPServer | None = None, **options: Any
    ) -> tuple[MCPServerFactory, int, dict[str, Any]]:
        state: dict[str, Any] = {}
        if app is None:
            app, state = make_app()
        factory = MCPServerFactory(app, **options)
        if "clock" in options:
            run_timers_on(factory, options["clock"])
        port = await listen(factory)
        started.append((port, factory))
        return factory, port.getHost().port, state

    yield start
    for port, factory in started:
        await stop(port, factory)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Certificates from trustme, and their PEM files (the keys ending ``.pem``/``.key``).

    ``ca`` issued ``server`` (localhost and 127.0.0.1), ``localhost_only`` and
    ``client`` (files ``client.pem``, ``client.key``); ``client_ca`` issued
    ``alice``; ``other_ca`` issued ``stranger``, whom nobody trusts. Files:
    ``ca.pem``, ``client_ca.pem``, ``other_ca.pem``, ``bundle.pem`` (an
    unrelated CA, then ``ca``), ``server.pem`` and ``server.key``; ``dir`` holds them.
    """
    base = tmp_path_factory.mktemp("pki")
    ca, client_ca, other_ca = trustme.CA(), trustme.CA(), trustme.CA()
    pki: dict[str, Any] = {"dir": base, "ca": ca, "client_ca": client_ca, "other_ca": other_ca}

    def write(name: str, blob: trustme.Blob) -> None:
        blob.write_to_path(str(base / name))
        pki[name] = str(base / name)

    for name in ("ca", "client_ca", "other_ca"):
        write(f"{name}.pem", pki[name].cert_pem)
    pki["server"] = ca.issue_cert("localhost", "127.0.0.1")
    write("server.pem", pki["server"].cert_chain_pems[0])
    write("server.key", pki["server"].private_key_pem)
    pki["localhost_only"] = ca.issue_cert("localhost")
    pki["client"] = ca.issue_cert("client@example.org")
    write("client.pem", pki["client"].cert_chain_pems[0])
    write("client.key", pki["client"].private_key_pem)
    pki["alice"] = client_ca.issue_cert("alice@example.com", common_name="alice")
    pki["stranger"] = other_ca.issue_cert("mallory@example.com", common_name="mallory")
    bundle = base / "bundle.pem"  # every CA in a bundle must be trusted, not only the first
    bundle.write_bytes(other_ca.cert_pem.bytes() + ca.cert_pem.bytes())
    pki["bundle.pem"] = str(bundle)
    return pki
