"""HAProxy and nginx in front of two ``twistd mcpws`` instances, with the
configurations of ``etc/`` (only addresses, ports and TLS changed for
loopback), all processes on 127.0.0.1 and ended by pid after each test."""

from __future__ import annotations

import http.client
import json
import re
import signal
from pathlib import Path
from typing import Any

import pytest_twisted

from tests.scale_support import (  # noqa: F401  (a fixture)
    SCALE_APP,
    Processes,
    call_text,
    needs,
    open_client,
    processes_fixture,
)
from tests.support import ProbeClient, until
from tests.test_tap import ETC, free_port

DRAIN_DELAY = "3"  # above the checks' inter x fall in haproxy-mcp.cfg (2 s)
HELD = 10


def configured(template: str, replacements: list[tuple[str, str]]) -> str:
    """``template`` with each pattern replaced; each must match exactly once, so
    that the test fails when the shipped configuration changes shape."""
    for pattern, replacement in replacements:
        template, count = re.subn(pattern, lambda _: replacement, template, flags=re.M)  # noqa: B023
        assert count == 1, f"{pattern!r} matched {count} times"
    return template


def post(port: int, message: dict[str, Any], session: str | None = None, bind: str = "127.0.0.1"
         ) -> tuple[int, dict[str, str], bytes]:
    """One Streamable HTTP POST on a new connection (so each is balanced anew), from ``bind``."""
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if session:
        headers["Mcp-Session-Id"] = session
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(bind, 0))
    try:
        connection.request("POST", "/mcp", json.dumps(message), headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def initialize_http(port: int, bind: str = "127.0.0.1") -> str:
    status, headers, _ = post(port, {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}},
        bind=bind)
    assert status == 200, status
    session = headers["mcp-session-id"]
    assert post(port, {"jsonrpc": "2.0", "method": "notifications/initialized"}, session)[0] == 202
    return session


def tool_call(name: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {}}}


def json_result_text(body: bytes) -> str:
    text: str = json.loads(body)["result"]["content"][0]["text"]
    return text


async def drain_one_while_clients_arrive(processes: Processes, proxy_port: int, draining: Any,
                                         other_pid: int) -> None:
    """Hold clients on both servers, SIGTERM ``draining``: new clients keep
    arriving without an error, all at the other server; the held clients of
    the draining one hear 1001, the others stay."""
    held: list[tuple[ProbeClient, int]] = []
    for _ in range(HELD):
        client = await open_client(proxy_port)
        held.append((client, int(await call_text(client, "pid"))))
    assert {pid for _, pid in held} == {draining.process.pid, other_pid}
    draining.process.send_signal(signal.SIGTERM)
    for _ in range(HELD):
        client = await open_client(proxy_port)
        assert int(await call_text(client, "pid")) == other_pid
        client.sendClose(1000)
    for client, pid in held:
        if pid == draining.process.pid:
            assert (await client.closed)[:2] == (True, 1001)
        else:
            assert not client.closed.called


@needs("haproxy")
@pytest_twisted.ensureDeferred
async def test_haproxy_passes_the_client_address_sticks_http_sessions_and_drains_without_errors(
        processes: Processes, tmp_path: Path):
    servers, lines = [], []
    for number in (1, 2):
        port, health = free_port(), free_port()
        servers.append(processes.twistd(
            "--app", SCALE_APP, "--endpoint", f"haproxy:tcp:{port}:interface=127.0.0.1",
            "--health-endpoint", f"tcp:{health}:interface=127.0.0.1", "--drain-delay", DRAIN_DELAY))
        lines.append(f"    server mcp{number} 127.0.0.1:{port} check port {health}")
    for server in servers:
        server.listening_port()
    proxy_port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(configured((ETC / "haproxy-mcp.cfg").read_text(), [
        (r"^    log /dev/log local0$", "    log stdout format raw local0"),
        (r"^    bind :443 ssl .*$", f"    bind 127.0.0.1:{proxy_port}"),
        (r"^    server mcp1 .*$", lines[0]),
        (r"^    server mcp2 .*$", lines[1]),
    ]))
    haproxy = processes.daemon(["haproxy", "-db", "-f", str(config)], "haproxy")
    haproxy.wait_accepting(proxy_port)

    # PROXY protocol v2: the server sees the client's own address, not HAProxy's.
    client = await open_client(proxy_port, bind="127.0.0.2")
    assert (await call_text(client, "peer")).startswith("tcp4:127.0.0.2:")
    client.sendClose(1000)
    session = initialize_http(proxy_port, bind="127.0.0.2")
    assert ":127.0.0.2:" in json_result_text(post(proxy_port, tool_call("peer"), session)[2])

    # Handshake-era HTTP: the stick table sends a session's requests to its server.
    for _ in range(4):
        session = initialize_http(proxy_port)
        replies = [post(proxy_port, tool_call("pid"), session) for _ in range(5)]
        assert [status for status, _, _ in replies] == [200] * 5
        assert len({json_result_text(body) for _, _, body in replies}) == 1

    await drain_one_while_clients_arrive(processes, proxy_port, servers[0], servers[1].process.pid)
    await until(lambda: "mcp/mcp1 is DOWN" in haproxy.log, timeout=10)


@needs("nginx")
@pytest_twisted.ensureDeferred
async def test_nginx_passes_upgrades_and_sse_and_retries_a_503_on_the_other_server(
        processes: Processes, tmp_path: Path):
    ports = [free_port(), free_port()]
    servers = [processes.twistd(
        "--app", SCALE_APP, "--endpoint", f"tcp:{port}:interface=127.0.0.1", "--trusted-proxy", "127.0.0.1",
        "--drain-delay", DRAIN_DELAY, "--always-stream") for port in ports]
    for server in servers:
        server.listening_port()
    proxy_port = free_port()
    site = configured((ETC / "nginx-mcp.conf").read_text(), [
        (r"^    listen 443 ssl;\n    listen \[::\]:443 ssl;$", f"    listen 127.0.0.1:{proxy_port};"),
        (r"^    ssl_certificate .*\n    ssl_certificate_key .*\n    ssl_protocols .*$", ""),
        (r"^    server 127\.0\.0\.1:8080 ", f"    server 127.0.0.1:{ports[0]} "),
        (r"^    server 127\.0\.0\.1:8081 ", f"    server 127.0.0.1:{ports[1]} "),
        (r"^server \{\n    listen 80;(.|\n)*\Z", ""),
    ])
    (tmp_path / "site.conf").write_text(site)
    temp = tmp_path / "nginx-temp"
    temp.mkdir()
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\nworker_processes 1;\npid {tmp_path}/nginx.pid;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {temp};\n  proxy_temp_path {temp};\n"
        f"  fastcgi_temp_path {temp};\n  uwsgi_temp_path {temp};\n  scgi_temp_path {temp};\n"
        f"  include {tmp_path}/site.conf;\n}}\n")
    nginx = processes.daemon(
        ["nginx", "-e", "stderr", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], "nginx")
    nginx.wait_accepting(proxy_port)

    # The upgrade passes; the client's address comes from X-Forwarded-For of a trusted proxy.
    client = await open_client(proxy_port, bind="127.0.0.2")
    assert await call_text(client, "peer") == "127.0.0.2"
    client.sendClose(1000)

    # An SSE answer (--always-stream) passes as a stream.
    session = initialize_http(proxy_port)
    status, headers, body = post(proxy_port, tool_call("pid"), session)
    assert (status, headers["content-type"].split(";")[0]) == (200, "text/event-stream")
    assert b'"text":"' in body.replace(b": ", b":")

    await drain_one_while_clients_arrive(processes, proxy_port, servers[0], servers[1].process.pid)


def test_haproxy_config_outlives_the_ping_and_marks_a_draining_server_down_within_the_delay():
    from tests.test_tap import parse

    config = (ETC / "haproxy-mcp.cfg").read_text()
    active = "\n".join(line.split("#", 1)[0] for line in config.splitlines())
    (tunnel,) = re.findall(r"timeout tunnel (\d+)s", active)
    assert int(tunnel) > parse()["ping-interval"] + parse()["ping-timeout"]
    (inter, fall) = re.findall(r"default-server inter (\d+)s fall (\d+)", active)[0]
    (delay,) = re.findall(r"--drain-delay (\d+)", config)
    assert int(inter) * int(fall) <= int(delay)
    assert "on-marked-down shutdown-sessions" not in active
