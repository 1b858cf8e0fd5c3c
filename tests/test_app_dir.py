"""``--app-dir`` goes first on ``sys.path`` for the app's import, but a stray
module there cannot replace one the server itself needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def test_a_stray_module_in_the_app_directory_does_not_shadow_the_servers_own(tmp_path):
    (tmp_path / "prometheus_client.py").write_text("raise SystemExit('SHADOWED')\n")
    (tmp_path / "weather.py").write_text("from mcp_twisted import MCPServer\nserver = MCPServer('weather')\n")
    script = (
        "from mcp_twisted import tap\n"
        "options = tap.Options()\n"
        "options.parseOptions(['--app', 'weather:server', '--endpoint', 'tcp:0:interface=127.0.0.1',\n"
        "                      '--metrics-endpoint', 'tcp:0:interface=127.0.0.1'])\n"
        "service = tap.makeService(options)\n"
        "print('built', service.factory.app.name)\n"
    )
    # -P: the current directory is not put on sys.path by Python itself, so
    # only --app-dir (default ".") brings it in, as under twistd.
    result = subprocess.run(
        [sys.executable, "-P", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(CHECKOUT)},
    )
    assert result.returncode == 0, result.stderr
    assert "SHADOWED" not in result.stderr and result.stdout.strip() == "built weather"
