"""``mcp_twisted.http`` writes the headers it makes straight into twisted.web's
``Headers`` dict when ``Headers`` keeps one key per name (``_RAW``), and goes
through ``Headers``' API otherwise: both ways must answer byte for byte alike."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def probe(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "tests.http_headers_probe", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def test_the_api_path_answers_exactly_as_the_dict_path() -> None:
    direct, through_api = probe(), probe("--fallback")
    statuses = [answer.splitlines()[0] for answer in direct.split("\n----\n") if answer]
    assert statuses == [
        "HTTP/1.1 200 OK", "HTTP/1.1 202 Accepted", "HTTP/1.1 200 OK", "HTTP/1.1 200 OK",
        "HTTP/1.1 415 Unsupported Media Type", "HTTP/1.1 406 Not Acceptable", "HTTP/1.1 400 Bad Request",
        "HTTP/1.1 204 No Content", "HTTP/1.1 405 Method Not Allowed", "HTTP/1.1 421 Misdirected Request",
        "HTTP/1.1 204 No Content", "HTTP/1.1 404 Not Found",
    ]
    assert "Mcp-Session-Id: <session>" in direct and "text/event-stream" in direct
    assert through_api == direct
