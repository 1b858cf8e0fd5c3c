"""``twistd mcpws``: options, start-up errors, and serving from a real process.

Every server here is a ``twistd`` subprocess run by the installed ``twistd``
script, as operators run it, with ``PYTHONPATH`` set to the repository root so
that this checkout's ``mcp_twisted`` is the one used. Twisted reads plugin
modules from its own ``twisted/plugins`` first, so ``twisted/plugins/mcpws.py``
is the installed copy: after changing it, ``pip install .`` again
(``test_plugin_is_found_in_the_installed_package`` says so when they differ).
Every client talks to the server over a real socket on 127.0.0.1: TCP, TLS, a
UNIX socket, or a socket handed over the way systemd hands it over.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import trustme
import twisted.internet.tcp
from autobahn.twisted.websocket import WebSocketClientFactory
from OpenSSL import SSL
from twisted.internet import defer, endpoints, reactor, task
from twisted.internet.endpoints import _SystemdParser
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.python import usage
from twisted.python.systemd import ListenFDs

from mcp_twisted import MCPServer, tap
from mcp_twisted.endpoints import loopback_by_default
from tests.support import ProbeClient, handshake

REPO_ROOT = Path(__file__).resolve().parent.parent
ETC = REPO_ROOT / "etc"
# The console script, not ``python -c``: that would put the current directory
# on sys.path and hide how --app is imported.
TWISTD = [str(Path(sys.executable).with_name("twistd"))]
START_TIMEOUT = 20.0
DEMO_NAME = "mcp-twisted-demo"


# -- launching twistd ------------------------------------------------------


def twistd_env(*extra_path: Path, checkout: bool = True) -> dict[str, str]:
    """The environment for a twistd subprocess: this checkout first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHONPATH", "LISTEN_"))}
    paths = ([str(REPO_ROOT)] if checkout else []) + [str(p) for p in extra_path]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def run_mcpws(args: list[str], cwd: Path, *extra_path: Path) -> subprocess.CompletedProcess[str]:
    """Run ``twistd -n --pidfile= mcpws ARGS`` to completion (for errors and --help)."""
    return subprocess.run(
        [*TWISTD, "-n", "--pidfile=", "mcpws", *args],
        cwd=cwd, env=twistd_env(*extra_path), capture_output=True, text=True, timeout=30,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Socket activation the way systemd does it: the listening socket is fd 3,
# LISTEN_PID names the process that may use it, and exec keeps the pid. With
# "reuse" the socket has SO_REUSEPORT, as a unit's with ReusePort=yes.
SYSTEMD_LAUNCHER = textwrap.dedent("""\
    import os, socket, sys
    port, reuse, command = int(sys.argv[1]), sys.argv[2] == "reuse", sys.argv[3:]
    listener = socket.create_server(("127.0.0.1", port), reuse_port=reuse)
    if listener.fileno() == 3:
        os.set_inheritable(3, True)
    else:
        os.dup2(listener.fileno(), 3)  # the copy is inheritable
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="mcp")
    os.execv(command[0], command)
""")


_LISTENING = re.compile(r"\bstarting on (\d+)\b")


class Twistd:
    """A running ``twistd -n mcpws`` whose output goes to a log file."""

    def __init__(self, args: list[str], cwd: Path, launcher_port: int | None = None,
                 launcher_reuse_port: bool = False) -> None:
        """:param launcher_port: pass twistd a socket listening there as systemd would,
        with SO_REUSEPORT if ``launcher_reuse_port``."""
        command = [*TWISTD, "-n", "--pidfile=", "mcpws", *args]
        if launcher_port is not None:
            reuse = "reuse" if launcher_reuse_port else "plain"
            command = [sys.executable, "-c", SYSTEMD_LAUNCHER, str(launcher_port), reuse, *command]
        self.log_path = cwd / f"twistd-{time.monotonic_ns()}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=twistd_env(), stdout=log, stderr=subprocess.STDOUT,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_accepting(self, probe: Callable[[], socket.socket]) -> None:
        """Wait until ``probe()`` connects; fail at once if twistd exits."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"twistd exited with {self.process.returncode}:\n{self.log}")
            try:
                probe().close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"twistd did not accept connections in {START_TIMEOUT} s:\n{self.log}")
                await task.deferLater(reactor, 0.05)

    def listening_port(self) -> int:
        """Block until twistd logs the port it listens on (``tcp:0`` endpoints); fail
        at once if it exits."""
        deadline = time.monotonic() + START_TIMEOUT
        while not (found := _LISTENING.search(self.log)):
            if self.process.poll() is not None:
                pytest.fail(f"twistd exited with {self.process.returncode}:\n{self.log}")
            if time.monotonic() > deadline:
                pytest.fail(f"twistd did not listen in {START_TIMEOUT} s:\n{self.log}")
            time.sleep(0.05)
        return int(found.group(1))

    async def wait_exit(self, timeout: float) -> int:
        """Wait (letting the reactor run) until the process exits; its status."""
        deadline = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                pytest.fail(f"twistd still running after {timeout} s:\n{self.log}")
            await task.deferLater(reactor, 0.02)
        return self.process.returncode

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, and SIGKILL if that has not ended the process in 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@pytest.fixture
def twistd(tmp_path: Path) -> Iterator[Callable[..., Twistd]]:
    """Start ``twistd mcpws`` processes; all are stopped after the test."""
    started: list[Twistd] = []

    def start(*args: str, launcher_port: int | None = None) -> Twistd:
        server = Twistd(list(args), tmp_path, launcher_port)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def tcp_probe(port: int) -> Callable[[], socket.socket]:
    return lambda: socket.create_connection(("127.0.0.1", port), timeout=1)


def unix_probe(path: Path) -> Callable[[], socket.socket]:
    def probe() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(1)
            s.connect(str(path))
        except OSError:
            s.close()
            raise
        return s

    return probe


# -- MCP over any client endpoint --------------------------------------------


async def open_mcp(endpoint: Any, url: str, client: type[ProbeClient] = ProbeClient) -> ProbeClient:
    """A WebSocket (subprotocol mcp) connection over ``endpoint``; ``url`` sets Host and path."""
    factory = WebSocketClientFactory(url, protocols=["mcp"])
    factory.protocol = client
    factory.opened = defer.Deferred()
    factory.opened.addTimeout(10, reactor)
    await endpoint.connect(factory)
    return await factory.opened


def tcp_client(port: int) -> Any:
    return endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)


async def mcp_exchange(client: ProbeClient, text: str = "hello") -> None:
    """initialize, tools/call echo, close: the demo app answers over this transport."""
    assert client.websocket_protocol_in_use == "mcp"
    reply = await client.initialize()
    assert reply["result"]["serverInfo"]["name"] == DEMO_NAME
    reply = await client.request(2, "tools/call", {"name": "echo", "arguments": {"text": text}})
    assert reply["result"]["content"] == [{"type": "text", "text": text}]
    assert not reply["result"].get("isError")
    client.sendClose(1000)
    assert (await client.closed)[:2] == (True, 1000)


# -- Options -------------------------------------------------------------------


def parse(*args: str) -> tap.Options:
    options = tap.Options()
    options.parseOptions(list(args))
    return options


def test_defaults_listen_on_loopback_and_serve_the_demo():
    options = parse()
    assert options["endpoints"] == ["tcp:8080:interface=127.0.0.1"] == [tap.DEFAULT_ENDPOINT]
    assert options["app"] == "mcp_twisted.demo:server"
    assert options["path"] == "/mcp"
    assert options["allowed_origins"] == []
    assert options["max-message-size"] == 4 * 1024 * 1024
    assert options["close-timeout"] > 0
    # The default app really is an MCPServer.
    assert tap.load_app(options["app"]).name == DEMO_NAME


def test_endpoint_and_allowed_origin_are_repeatable():
    options = parse(
        "--endpoint", "tcp:8080:interface=127.0.0.1", "-e", "unix:/run/mcp.sock:mode=660",
        "--endpoint", "systemd:domain=INET:index=0",
        "--allowed-origin", "https://app.example.com", "--allowed-origin", "https://*.example.org",
        "--allowed-host", "mcp.example.com", "--allowed-host", "mcp2.example.com",
    )
    assert options["endpoints"] == [
        "tcp:8080:interface=127.0.0.1", "unix:/run/mcp.sock:mode=660", "systemd:domain=INET:index=0",
    ]
    assert options["allowed_origins"] == ["https://app.example.com", "https://*.example.org"]
    assert options["allowed_hosts"] == ["mcp.example.com", "mcp2.example.com"]


def test_explicit_endpoints_replace_the_default():
    assert parse("--endpoint", "tcp:9000")["endpoints"] == ["tcp:9000"]


@pytest.mark.parametrize(
    ("text", "size"),
    [("512", 512), ("64K", 64 * 1024), ("64k", 64 * 1024), ("4M", 4 * 1024 * 1024),
     ("4MiB", 4 * 1024 * 1024), ("1G", 1024 ** 3)],
)
def test_max_message_size_takes_suffixes(text, size):
    assert parse("--max-message-size", text)["max-message-size"] == size


def test_numbers_are_converted():
    options = parse("--ping-interval", "30", "--ping-timeout", "15", "--max-in-flight", "8",
                    "--close-timeout", "2.5", "--path", "/v1/mcp")
    assert (options["ping-interval"], options["ping-timeout"]) == (30.0, 15.0)
    assert options["max-in-flight"] == 8
    assert options["close-timeout"] == 2.5
    assert options["path"] == "/v1/mcp"


@pytest.mark.parametrize(
    "args",
    [
        ["--max-message-size", "12X"], ["--max-message-size", "0"], ["--max-message-size", "-1"],
        ["--max-message-size", "K"], ["--max-message-size", ""],
        ["--ping-interval", "often"], ["--ping-interval", "-1"], ["--ping-timeout", "-5"],
        ["--close-timeout", "soon"], ["--close-timeout", "-1"],
        ["--max-in-flight", "many"], ["--max-in-flight", "1.5"],
    ],
)
def test_bad_numbers_are_usage_errors(args):
    with pytest.raises(usage.UsageError):
        parse(*args)


@pytest.mark.parametrize(
    "args",
    [["--max-in-flight", "0"], ["--max-in-flight", "-3"], ["--ping-interval", "nan"],
     ["--close-timeout", "nan"]],
)
def test_nonsense_numbers_are_usage_errors(args):
    with pytest.raises(usage.UsageError):
        parse(*args)


def test_twistd_mcpws_help_documents_every_option(tmp_path):
    result = run_mcpws(["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    for option in ("--endpoint", "--app", "--path", "--ping-interval", "--ping-timeout",
                   "--max-message-size", "--allowed-origin", "--max-in-flight", "--close-timeout"):
        assert re.search(rf"^\s+(-\w, )?{option}=\s+\S", result.stdout, re.M), option
    assert "tcp:8080:interface=127.0.0.1" in result.stdout
    assert "mcp_twisted.demo:server" in result.stdout


def test_plugin_is_found_in_the_installed_package(tmp_path):
    """With no PYTHONPATH and a cwd outside the checkout, only the installed copy can answer."""
    env = twistd_env(checkout=False)
    where = subprocess.run(
        [sys.executable, "-c", "import mcp_twisted, twisted.plugins.mcpws as p; "
                               "print(p.__file__); print(mcp_twisted.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30,
    )
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        # Installed, not the checkout's source (the virtualenv may live inside the checkout).
        assert "site-packages" in Path(path).parts, path
    installed_plugin = Path(where.stdout.split()[0])
    assert installed_plugin.read_text() == (REPO_ROOT / "twisted" / "plugins" / "mcpws.py").read_text(), \
        "the installed twisted/plugins/mcpws.py differs from the checkout's: pip install . again"
    result = subprocess.run([*TWISTD, "--help"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s+mcpws\s+Serve a Model Context Protocol app", result.stdout, re.M), result.stdout


# -- start-up errors: one line, no traceback ----------------------------------------


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("mcpws: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.fixture
def pems(tmp_path: Path) -> dict[str, Any]:
    """A CA and a key/certificate pair for localhost and 127.0.0.1, as files, and
    a client certificate with its CA (for mtls:). RSA keys: only they allow the
    RSA key exchange that forward secrecy is about."""
    rsa = trustme.KeyType.RSA
    ca, client_ca = trustme.CA(key_type=rsa), trustme.CA(key_type=rsa)
    issued = ca.issue_cert("localhost", "127.0.0.1", key_type=rsa)
    files = {name: tmp_path / f"{name}.pem" for name in ("key", "cert", "ca_file", "client_ca_file")}
    issued.private_key_pem.write_to_path(str(files["key"]))
    issued.cert_chain_pems[0].write_to_path(str(files["cert"]))
    ca.cert_pem.write_to_path(str(files["ca_file"]))
    client_ca.cert_pem.write_to_path(str(files["client_ca_file"]))
    return {"ca": ca, "client": client_ca.issue_cert("client@example.com", key_type=rsa), **files}


def tls_description(kind: str, port: int, pems: dict[str, Any], **files: Path) -> str:
    """An ssl: or mtls: endpoint string for ``pems``; ``files`` replace its key or certificate."""
    files = {"privateKey": pems["key"], "certKey": pems["cert"], **files}
    if kind == "mtls":
        files["caCerts"] = pems["client_ca_file"]
    return ":".join([kind, str(port), "interface=127.0.0.1", *(f"{k}={v}" for k, v in files.items())])


def test_bad_endpoint_string(tmp_path):
    result = run_mcpws(["--endpoint", "tcp:notaport"], tmp_path)
    assert_one_line_error(result, "--endpoint 'tcp:notaport'", "notaport")


def test_unknown_endpoint_type(tmp_path):
    result = run_mcpws(["--endpoint", "carrier-pigeon:8080"], tmp_path)
    assert_one_line_error(result, "--endpoint 'carrier-pigeon:8080'", "Unknown endpoint type")


@pytest.mark.parametrize("missing", ["certKey", "privateKey"])
def test_ssl_endpoint_with_a_missing_file(tmp_path, pems, missing):
    files = {"privateKey": str(pems["key"]), "certKey": str(pems["cert"])}
    files[missing] = str(tmp_path / "no-such.pem")
    description = f"ssl:0:interface=127.0.0.1:privateKey={files['privateKey']}:certKey={files['certKey']}"
    result = run_mcpws(["--endpoint", description], tmp_path)
    assert_one_line_error(result, "--endpoint 'ssl:", "No such file", "no-such.pem")


def test_app_module_that_cannot_be_imported(tmp_path):
    result = run_mcpws(["--app", "no_such_module_for_mcpws:server"], tmp_path)
    assert_one_line_error(result, "--app 'no_such_module_for_mcpws:server'", "cannot import")


def test_app_module_whose_import_fails(tmp_path):
    (tmp_path / "broken_app.py").write_text("import no_such_dependency_for_mcpws\n")
    result = run_mcpws(["--app", "broken_app:server"], tmp_path, tmp_path)
    assert_one_line_error(result, "cannot import 'broken_app'", "no_such_dependency_for_mcpws")


def test_app_attribute_that_is_not_an_mcp_server(tmp_path):
    (tmp_path / "not_an_app.py").write_text("server = {'name': 'not an app'}\n")
    result = run_mcpws(["--app", "not_an_app:server"], tmp_path, tmp_path)
    assert_one_line_error(result, "--app 'not_an_app:server'", "dict is not an MCPServer")


def test_app_attribute_that_does_not_exist(tmp_path):
    result = run_mcpws(["--app", "mcp_twisted.demo:no_such_server"], tmp_path)
    assert_one_line_error(result, "has no 'no_such_server'")


@pytest.mark.parametrize("where", ["busy-port", "missing-directory"])
def test_endpoint_that_cannot_listen(tmp_path, where):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        description = {
            "busy-port": f"tcp:{busy.getsockname()[1]}:interface=127.0.0.1",
            "missing-directory": f"unix:{tmp_path}/no-such-dir/mcp.sock:mode=600",
        }[where]
        result = run_mcpws(["--endpoint", description], tmp_path)
    # Binding happens after twistd started logging, which captures stderr: the
    # one line arrives as a log record on stdout.
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    (line,) = [line for line in output.splitlines() if "mcpws: error:" in line]
    assert f"cannot listen on {description!r}" in line, line


def test_systemd_endpoint_without_socket_activation(tmp_path):
    result = run_mcpws(["--endpoint", "systemd:domain=INET:index=0"], tmp_path)
    assert_one_line_error(result, "systemd:domain=INET:index=0")
    assert re.search(r"LISTEN_FDS|activat", result.stderr, re.I), result.stderr


def test_sub_second_ping_interval(tmp_path):
    result = run_mcpws(["--endpoint", "tcp:0:interface=127.0.0.1", "--ping-interval", "0.5"], tmp_path)
    assert_one_line_error(result, "ping interval")


@pytest.mark.parametrize("kind", ["ssl", "mtls"])
@pytest.mark.parametrize(
    ("files", "complaint"),
    [
        ({"privateKey": "cert"}, "privateKey file {cert} holds a certificate, not a usable private key"),
        ({"certKey": "key"}, "certKey file {key} holds a private key, not a usable certificate"),
        ({"privateKey": "other_key"}, "privateKey file {other_key} is not the key of the certificate in "
                                      "certKey file {cert}"),
    ],
    ids=["certificate-as-key", "key-as-certificate", "key-of-another-certificate"],
)
def test_tls_key_and_certificate_mix_ups_name_the_file(tmp_path, pems, kind, files, complaint):
    other_key = tmp_path / "other-key.pem"
    pems["client"].private_key_pem.write_to_path(str(other_key))
    paths = {"key": pems["key"], "cert": pems["cert"], "other_key": other_key}
    description = tls_description(kind, 0, pems, **{option: paths[name] for option, name in files.items()})
    result = run_mcpws(["--endpoint", description], tmp_path)
    assert_one_line_error(result, f"--endpoint {description!r}", complaint.format(**paths))


def test_app_dir_that_does_not_exist(tmp_path):
    result = run_mcpws(["--app-dir", "no-such-dir", "--app", "weather:server"], tmp_path)
    assert_one_line_error(result, "--app-dir 'no-such-dir': not a directory")


def test_app_with_a_tool_whose_hints_have_no_schema(tmp_path):
    (tmp_path / "opaque_app.py").write_text(textwrap.dedent("""\
        from mcp_twisted import MCPServer

        class Connection:
            pass

        server = MCPServer("opaque", "1.0.0")

        @server.tool()
        def query(sql: str, connection: Connection) -> str:
            return sql
    """))
    result = run_mcpws(["--app", "opaque_app:server"], tmp_path)
    assert_one_line_error(
        result, "cannot import 'opaque_app'",
        "tool 'query': parameter 'connection': type Connection cannot be described as JSON Schema")


# -- serving --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_serves_on_tcp(twistd):
    port = free_port()
    server = twistd("--endpoint", f"tcp:{port}:interface=127.0.0.1")
    await server.wait_accepting(tcp_probe(port))
    await mcp_exchange(await open_mcp(tcp_client(port), f"ws://127.0.0.1:{port}/mcp"))


@pytest_twisted.ensureDeferred
async def test_quick_start_demo_answers_the_official_python_sdk(twistd):
    """The README's first command serves the demo; the official SDK client calls echo."""
    from tests.interop.conftest import HERE as INTEROP
    from tests.interop.conftest import run_peer

    port = free_port()  # the README's command uses the default 8080; a free port avoids clashes
    server = twistd("--endpoint", f"tcp:{port}:interface=127.0.0.1")
    await server.wait_accepting(tcp_probe(port))
    report = await run_peer([sys.executable, str(INTEROP / "sdk_client.py"),
                             f"ws://127.0.0.1:{port}/mcp", "echo"])
    assert report["steps"]["echo"]["text"] == "hi"
    assert report["initialize"]["serverInfo"]["name"] == "mcp-twisted-demo"


@pytest_twisted.ensureDeferred
async def test_options_reach_the_server(twistd):
    """--path, --max-message-size, --allowed-origin and the ping options are wired through."""
    port = free_port()
    server = twistd("--endpoint", f"tcp:{port}:interface=127.0.0.1", "--path", "/v1/mcp",
                    "--max-message-size", "1K", "--allowed-origin", "https://app.example.com",
                    "--ping-interval", "1", "--ping-timeout", "1")
    await server.wait_accepting(tcp_probe(port))
    assert (await handshake(port, "/mcp"))[0] == 404
    assert (await handshake(port, "/v1/mcp"))[0] == 101
    # What nginx sends by default: Host is the upstream address, Origin the browser page's.
    assert (await handshake(port, "/v1/mcp", {"Origin": "https://app.example.com"}))[0] == 101
    assert (await handshake(port, "/v1/mcp", {"Origin": "https://evil.example"}))[0] == 403
    # A public name on the loopback listener is refused (DNS-rebinding guard).
    assert (await handshake(port, "/v1/mcp", host="mcp.example.com"))[0] == 421

    url = f"ws://127.0.0.1:{port}/v1/mcp"
    client = await open_mcp(tcp_client(port), url)
    await client.initialize()
    client.send_json({"jsonrpc": "2.0", "id": 3, "method": "ping", "params": {"pad": "x" * 2000}})
    assert (await client.closed)[1] == 1009

    class Deaf(ProbeClient):
        answer_pings = False

    deaf = await open_mcp(tcp_client(port), url, Deaf)
    closed = await deaf.closed
    assert not closed[0] and closed[1] == 1006


@pytest_twisted.ensureDeferred
async def test_serves_on_a_unix_socket(twistd, tmp_path):
    path = tmp_path / "mcp.sock"
    server = twistd("--endpoint", f"unix:{path}:mode=600")
    await server.wait_accepting(unix_probe(path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    endpoint = endpoints.UNIXClientEndpoint(reactor, str(path), timeout=5)
    await mcp_exchange(await open_mcp(endpoint, "ws://localhost/mcp"))


# Twisted still hands pyOpenSSL X509/PKey objects to the context (pyOpenSSL 26 warns).
@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL .* objects is deprecated:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_serves_over_tls(twistd, pems):
    port = free_port()
    description = (f"ssl:{port}:interface=127.0.0.1:privateKey={pems['key']}:certKey={pems['cert']}")
    server = twistd("--endpoint", description)
    await server.wait_accepting(tcp_probe(port))

    def tls_client(trusted: trustme.CA) -> Any:
        options = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(trusted.cert_pem.bytes()))
        return endpoints.wrapClientTLS(options, tcp_client(port))

    url = f"wss://localhost:{port}/mcp"
    # A client that does not trust the issuing CA gets no WebSocket.
    with pytest.raises(ConnectionError):
        await open_mcp(tls_client(trustme.CA()), url)
    await mcp_exchange(await open_mcp(tls_client(pems["ca"]), url))

    # TLS 1.2 is the minimum. A handshake check cannot prove it: this machine's
    # OpenSSL refuses TLS 1.0/1.1 even when the server allows them (a server
    # built with insecurelyLowerMinimumTo=TLSv1_0 also rejects a client capped
    # at TLS 1.1), so such a test would pass either way. The check that does
    # fail if 1.0/1.1 were allowed is the OpenSSL context the same endpoint
    # string builds, the way twistd builds it: OP_NO_TLSv1 and OP_NO_TLSv1_1 set.
    (endpoint,) = tap.make_endpoints(reactor, [description]).values()
    context = endpoint._sslContextFactory.getContext()
    context_options = context.set_options(0)  # returns the options in force
    assert context_options & SSL.OP_NO_TLSv1
    assert context_options & SSL.OP_NO_TLSv1_1
    assert not context_options & SSL.OP_NO_TLSv1_2

    # And a modern client gets TLS 1.2 or newer from the running server.
    client_context = ssl.create_default_context(cafile=str(pems["ca_file"]))
    client_context.minimum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            client_context.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.parametrize("kind", ["ssl", "mtls"])
@pytest_twisted.ensureDeferred
async def test_tls_listeners_offer_only_forward_secret_ciphers(twistd, pems, kind):
    """On TLS 1.2 only ECDHE/DHE key exchange is accepted: a recorded session stays
    secret even if the server's key leaks later. TLS 1.3 (forward-secret) is served."""
    port = free_port()
    server = twistd("--endpoint", tls_description(kind, port, pems))
    await server.wait_accepting(tcp_probe(port))

    def negotiate(ciphers: str | None, tls12_only: bool = True) -> tuple[str | None, str]:
        context = ssl.create_default_context(cafile=str(pems["ca_file"]))
        pems["client"].configure_cert(context)  # mtls: requires one; ssl: never asks
        if tls12_only:
            context.maximum_version = ssl.TLSVersion.TLSv1_2
        if ciphers is not None:
            context.set_ciphers(ciphers)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.version(), tls.cipher()[0]

    # RSA key exchange: AES128-SHA (which Twisted's default list accepts), and all the others.
    for ciphers in ("AES128-SHA", "kRSA"):
        with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE"):
            negotiate(ciphers)
    assert negotiate("ECDHE-RSA-AES128-GCM-SHA256") == ("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256")
    assert negotiate("ECDHE+CHACHA20") == ("TLSv1.2", "ECDHE-RSA-CHACHA20-POLY1305")
    assert negotiate(None, tls12_only=False)[0] == "TLSv1.3"
    assert server.process.poll() is None


@pytest.mark.parametrize(
    ("given", "default"),
    [("tcp:9100", "tcp:9100:interface=127.0.0.1"),
     ("tcp:9100:backlog=5", "tcp:9100:backlog=5:interface=127.0.0.1"),
     ("tcp6:9100", r"tcp6:9100:interface=\:\:1"),
     ("ssl:9100:privateKey=C\\:/key.pem", "ssl:9100:privateKey=C\\:/key.pem:interface=127.0.0.1"),
     ("tcp:9100:interface=0.0.0.0", None), ("tcp6:9100:interface=\\:\\:", None),
     ("unix:/run/metrics.sock:mode=600", None), ("systemd:domain=INET:index=1", None),
     ("mtls:9100:privateKey=k.pem:caCerts=ca.pem", None)],
)
def test_loopback_by_default_adds_an_interface_only_where_every_address_is_the_default(given, default):
    assert loopback_by_default(given) == (default or given)


def http_get(host: str, port: int, path: str) -> bytes:
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        return b"".join(iter(lambda: s.recv(4096), b""))


# 127.0.0.2 reaches the loopback interface on Linux without any setup: a
# listener bound to 127.0.0.1 refuses it, one bound to every address accepts it.
@pytest.mark.skipif(sys.platform != "linux", reason="needs 127.0.0.2 routed to loopback (Linux)")
@pytest.mark.parametrize(("interface", "listening", "not_listening"),
                         [(None, "127.0.0.1", "127.0.0.2"), ("127.0.0.2", "127.0.0.2", "127.0.0.1")])
@pytest_twisted.ensureDeferred
async def test_metrics_endpoint_without_interface_listens_on_loopback(twistd, interface, listening,
                                                                       not_listening):
    """/metrics has no authentication: a bare tcp:PORT serves it on loopback only, and says
    so in the log; an interface= given explicitly is used as given."""
    port, metrics_port = free_port(), free_port()
    metrics = f"tcp:{metrics_port}" + (f":interface={interface}" if interface else "")
    server = twistd("--endpoint", f"tcp:{port}:interface=127.0.0.1", "--metrics-endpoint", metrics)
    await server.wait_accepting(lambda: socket.create_connection((listening, metrics_port), timeout=1))
    assert http_get(listening, metrics_port, "/healthz").startswith(b"HTTP/1.0 200 OK")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((not_listening, metrics_port), timeout=1)
    notes = [line for line in server.log.splitlines() if "names no interface" in line]
    if interface:
        assert notes == [], notes
    else:
        (note,) = notes
        assert f"--metrics-endpoint 'tcp:{metrics_port}' names no interface" in note
        assert "loopback only" in note and "interface=0.0.0.0" in note


def readme_first_example() -> tuple[str, list[str]]:
    """The README's first Python block, and the options of the twistd command after it."""
    readme = (REPO_ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S)
    command = re.search(r"```sh\n(twistd .*?)\n```", readme, re.S)
    assert code and command, "the README no longer starts with an app and its twistd command"
    argv = shlex.split(command[1])
    return code[1], argv[argv.index("mcpws") + 1:]


@pytest.mark.parametrize("app_dir", [None, "apps"])
@pytest_twisted.ensureDeferred
async def test_app_is_imported_from_the_current_directory_or_app_dir(twistd, tmp_path, app_dir):
    """The README's first example as written: weather.py where twistd starts, no PYTHONPATH."""
    code, options = readme_first_example()
    port = free_port()
    options = [option.replace("tcp:8080:", f"tcp:{port}:") for option in options]
    assert options == ["--app", "weather:server", "--endpoint", f"tcp:{port}:interface=127.0.0.1"]
    where = tmp_path
    if app_dir is not None:
        where = tmp_path / app_dir
        where.mkdir()
        options += ["--app-dir", app_dir]
    (where / "weather.py").write_text(code)
    server = twistd(*options)
    await server.wait_accepting(tcp_probe(port))
    client = await open_mcp(tcp_client(port), f"ws://127.0.0.1:{port}/mcp")
    assert (await client.initialize())["result"]["serverInfo"]["name"] == "weather"
    reply = await client.request(2, "tools/call", {"name": "forecast", "arguments": {"city": "Oslo"}})
    assert reply["result"]["content"] == [{"type": "text", "text": "Sunny in Oslo for 3 days"}]
    client.sendClose(1000)
    assert (await client.closed)[:2] == (True, 1000)


@pytest_twisted.ensureDeferred
async def test_serves_a_socket_passed_by_systemd(twistd):
    port = free_port()
    # The launcher listens before twistd starts, so connections queue in the
    # backlog until twistd adopts fd 3; the MCP exchange proves it did.
    server = twistd("--endpoint", "systemd:domain=INET:index=0", launcher_port=port)
    await server.wait_accepting(tcp_probe(port))
    await mcp_exchange(await open_mcp(tcp_client(port), f"ws://127.0.0.1:{port}/mcp"))
    assert server.process.poll() is None


# -- SIGTERM ------------------------------------------------------------------------


def raw_websocket(port: int) -> socket.socket:
    """An upgraded connection that will never answer anything (not even a close)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               "Sec-WebSocket-Protocol: mcp\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = s.recv(4096)
        assert chunk, response
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    return s


@pytest_twisted.ensureDeferred
async def test_sigterm_closes_connections_with_1001_and_exits(twistd):
    close_timeout = 3.0
    port = free_port()
    server = twistd("--endpoint", f"tcp:{port}:interface=127.0.0.1", "--close-timeout", str(close_timeout))
    await server.wait_accepting(tcp_probe(port))
    client = await open_mcp(tcp_client(port), f"ws://127.0.0.1:{port}/mcp")
    await client.initialize()
    with raw_websocket(port) as silent:
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        closed = client.closed
        closed.addTimeout(close_timeout + 5, reactor)
        assert await closed == (True, 1001, "server shutting down")
        # The peer that never answers gets the same close frame...
        frame = silent.recv(64)
        assert frame[0] == 0x88 and int.from_bytes(frame[2:4], "big") == 1001, frame
        # ...and does not hold up the exit beyond the close timeout (plus start-up slack).
        status = await server.wait_exit(close_timeout + 3)
    assert time.monotonic() - started < close_timeout + 3
    # twistd shuts down cleanly, then re-raises the signal so its parent sees
    # "killed by SIGTERM" (which systemd counts as a clean stop), not status 0.
    assert status == -signal.SIGTERM
    assert "Server Shut Down." in server.log
    assert "Traceback" not in server.log


# -- etc/: the shipped units and proxy config parse with these Options ---------------


def read_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as {section: [(key, value), ...]}, joining ``\\`` continuations."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        line, logical = logical + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        else:
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def exec_start_options(unit: dict[str, list[tuple[str, str]]]) -> tuple[list[str], tap.Options]:
    (exec_start,) = values(unit, "Service", "ExecStart")
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/bin/twistd")
    split = argv.index("mcpws")
    assert {"--nodaemon", "--pidfile="} <= set(argv[1:split])
    return argv, parse(*argv[split + 1:])


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min)?", value)
    assert match, value
    return float(match[1]) * (60 if match[2] == "min" else 1)


HARDENING = {
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes", "CapabilityBoundingSet": "",
}


@pytest.mark.parametrize("name", ["mcp-twisted.service", "mcp-twisted-tls.service", "mcpws@.service"])
def test_units_run_twistd_mcpws_with_valid_options(name):
    unit = read_unit(ETC / name)
    _, options = exec_start_options(unit)
    tap.load_app(options["app"])
    service = dict(unit["Service"])
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert service.get("DynamicUser") == "yes" or service.get("User")
    # Stopping may take the drain time plus the close time; systemd must wait longer before SIGKILL.
    stop_time = options["drain-delay"] + options["drain-timeout"] + options["close-timeout"]
    assert seconds(service["TimeoutStopSec"]) > stop_time + 1
    for key, value in HARDENING.items():
        assert service.get(key) == value, key
    assert "@system-service" in values(unit, "Service", "SystemCallFilter")
    assert set(service["RestrictAddressFamilies"].split()) <= {"AF_INET", "AF_INET6", "AF_UNIX"}


def test_socket_activated_unit_matches_its_socket(monkeypatch):
    unit = read_unit(ETC / "mcp-twisted.service")
    _, options = exec_start_options(unit)
    assert options["endpoints"] == ["systemd:domain=INET:index=0"]
    socket_unit = read_unit(ETC / "mcp-twisted.socket")
    assert values(socket_unit, "Socket", "ListenStream") == ["127.0.0.1:8080"]
    assert "mcp-twisted.socket" in " ".join(values(unit, "Unit", "Requires"))
    # The endpoint string parses as it would under systemd (fd 3 passed in).
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "mcp"}
    monkeypatch.setattr(_SystemdParser, "_sddaemon", ListenFDs.fromEnvironment(environ))
    (endpoint,) = tap.make_endpoints(reactor, options["endpoints"]).values()
    assert isinstance(endpoint, endpoints.AdoptedStreamServerEndpoint)
    assert endpoint.fileno == 3
    # No W+X memory is fine for plain TCP; the TLS unit must not set it (pyOpenSSL callbacks).
    assert dict(unit["Service"]).get("MemoryDenyWriteExecute") == "yes"


def test_template_units_give_each_instance_its_own_reuse_port_socket(monkeypatch):
    unit = read_unit(ETC / "mcpws@.service")
    _, options = exec_start_options(unit)
    assert options["endpoints"] == ["systemd:domain=INET:name=mcp"]
    assert options["bus"].startswith("redis://")
    socket_unit = read_unit(ETC / "mcpws@.socket")
    assert values(socket_unit, "Socket", "ReusePort") == ["yes"]
    assert values(socket_unit, "Socket", "FileDescriptorName") == ["mcp"]
    assert values(socket_unit, "Socket", "Service") == ["mcpws@%i.service"]
    assert "mcpws@%i.socket" in " ".join(values(unit, "Unit", "Requires"))
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "mcp"}
    monkeypatch.setattr(_SystemdParser, "_sddaemon", ListenFDs.fromEnvironment(environ))
    (endpoint,) = tap.make_endpoints(reactor, options["endpoints"]).values()
    assert endpoint.fileno == 3


def test_tls_unit_endpoint_loads_its_credentials(tmp_path, pems):
    unit = read_unit(ETC / "mcp-twisted-tls.service")
    _, options = exec_start_options(unit)
    (description,) = options["endpoints"]
    assert description.startswith("ssl:")
    assert "MemoryDenyWriteExecute" not in dict(unit["Service"])
    # Each %d/NAME (the credentials directory) in the endpoint has a LoadCredential=NAME:...
    loaded = {v.split(":", 1)[0] for v in values(unit, "Service", "LoadCredential")}
    used = set(re.findall(r"%d/([\w.-]+)", description))
    assert used and used <= loaded
    for name in used:
        source = pems["ca_file"] if "chain" in name else pems["cert"] if "cert" in name else pems["key"]
        (tmp_path / name).write_bytes(source.read_bytes())
    tap.make_endpoints(reactor, [description.replace("%d", str(tmp_path))])


def test_nginx_config_upgrades_and_outlives_the_ping_interval():
    conf = (ETC / "nginx-mcp.conf").read_text()
    active = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    assert re.search(r"proxy_http_version\s+1\.1;", active)
    assert re.search(r"proxy_set_header\s+Upgrade\s+\$http_upgrade;", active)
    assert re.search(r"proxy_set_header\s+Connection\s+\$connection_upgrade;", active)
    # The server pings every --ping-interval seconds; nginx must not time out before.
    (read_timeout,) = re.findall(r"proxy_read_timeout\s+(\d+)s;", active)
    assert int(read_timeout) > parse()["ping-interval"] + parse()["ping-timeout"]
    assert int(read_timeout) > parse()["sse-keepalive"]
    # SSE events pass as they are written; bodies up to the message limit pass.
    assert re.search(r"proxy_buffering\s+off;", active)
    (body,) = re.findall(r"client_max_body_size\s+(\d+)m;", active)
    assert int(body) << 20 >= parse()["max-message-size"]
    # The public name goes through (with --allowed-host on a loopback listener);
    # a draining instance's 503 is retried on the next one.
    assert re.search(r"proxy_set_header\s+Host\s+\$host;", active)
    assert re.search(r"proxy_pass\s+http://mcp_backends;", active)
    assert re.search(r"proxy_next_upstream\s+[^;]*\bhttp_503\b", active)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze_verify(tmp_path):
    """Unknown keys or bad values make systemd ignore a line; verify reports them."""
    twistd_script = Path(sys.executable).with_name("twistd")
    names = ["mcp-twisted.socket", "mcp-twisted.service", "mcp-twisted-tls.service", "mcpws@.socket",
             "mcpws@.service"]
    for name in names:
        text = (ETC / name).read_text().replace("/opt/mcp-twisted/bin/twistd", str(twistd_script))
        (tmp_path / name).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *(f"./{n}" for n in names)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), \
        result.stdout + result.stderr


def test_hardening_limits_reach_the_factory_and_the_app():
    options = parse(
        "--app", "tests.test_tap:LIMITS_APP", "--max-handshakes", "9", "--max-header-size", "4K",
        "--max-headers", "30", "--init-timeout", "7.5", "--max-fragments", "12", "--max-batch-size", "5",
        "--max-output-buffer", "2M", "--output-stall-timeout", "4", "--max-subscriptions", "3",
        "--max-uri-length", "99", "--endpoint", "tcp:0:interface=127.0.0.1",
    )
    service = tap.makeService(options)
    factory = service.factory
    assert (factory.max_handshakes, factory.max_header_bytes, factory.max_headers) == (9, 4096, 30)
    assert (factory.init_timeout, factory.max_fragments, factory.host.limits.max_batch_size) == (7.5, 12, 5)
    assert (factory.max_output_buffer, factory.output_stall_timeout) == (2 << 20, 4.0)
    assert (LIMITS_APP.max_subscriptions, LIMITS_APP.max_uri_length) == (3, 99)


def test_hardening_limits_have_safe_defaults():
    options = parse()
    assert options["max-handshakes"] < options["max-connections"]
    assert options["max-header-size"] == 16 * 1024 and options["max-headers"] == 100
    assert 10 <= options["init-timeout"] <= 30
    assert options["max-output-buffer"] == 4 * 1024 * 1024
    # Unset, the app's own limits stay.
    assert options["max-subscriptions"] is None and options["max-uri-length"] is None


LIMITS_APP = MCPServer("limits")


# -- scale-out options ------------------------------------------------------------


SCALE_APP = MCPServer("scale-options")
needs_reuse_port = pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT") or not hasattr(twisted.internet.tcp, "makeBinding"),
    reason="SO_REUSEPORT needs Linux (or a BSD) and Twisted 26.10 or later")


@needs_reuse_port
def test_scale_out_options_reach_the_service_factory_and_app():
    from mcp_twisted.bus import RedisBus

    options = parse(
        "--app", "tests.test_tap:SCALE_APP", "--endpoint", "tcp:0:interface=127.0.0.1", "--reuse-port",
        "--drain-delay", "3", "--health-endpoint", "tcp:0:interface=127.0.0.1",
        "--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "127.0.0.1", "--bus", "redis://127.0.0.1:6390/2",
    )
    service = tap.makeService(options)
    assert (service.drain_delay, service.reuse_port) == (3.0, True)
    assert service.factory.trusted_proxies.client_address("10.0.0.1", "203.0.113.7") == "203.0.113.7"
    (bus,) = (child for child in service if isinstance(child, RedisBus))
    assert (bus.host, bus.port, bus.dbid) == ("127.0.0.1", 6390, 2)
    assert SCALE_APP._channel is not None and SCALE_APP._channel.channel == "mcp:scale-options"


@pytest.mark.parametrize(("args", "message"), [
    (["--trusted-proxy", "10.0.0.0/40"], "mcpws: error: --trusted-proxy: '10.0.0.0/40' is not an IP address"),
    (["--bus", "amqp://broker"], "mcpws: error: --bus 'amqp://broker': expected redis://host[:port][/db]"),
    (["--bus", "redis://host/db"], "mcpws: error: --bus 'redis://host/db': database 'db' is not a number"),
    (["--workers", "2", "--endpoint", "tcp:nonsense"], "mcpws: error: --endpoint 'tcp:nonsense'"),
    (["--workers", "2", "--metrics-endpoint", "tcp:9100"],
     "mcpws: error: --metrics-endpoint 'tcp:9100': with --workers each worker needs its own; put {worker}"),
])
def test_scale_out_mistakes_are_one_line(args: list[str], message: str):
    with pytest.raises(SystemExit, match=re.escape(message)):
        tap.makeService(parse("--app", "tests.test_tap:SCALE_APP", *args))


@needs_reuse_port
def test_workers_make_a_parent_that_runs_reuse_port_children():
    from mcp_twisted.workers import WorkersService

    options = parse("--workers", "3", "--endpoint", "tcp:8080:interface=127.0.0.1", "--drain-delay", "2")
    service = tap.makeService(options)
    assert isinstance(service, WorkersService) and service.count == 3
    assert "--workers" not in service.command and service.command[-1] == "--reuse-port"
    assert service.stop_timeout == 2 + 10 + 5 + 5
