"""The virtualenv of the 2.x Python clients: ``mcp==2.3.0`` and ``fastmcp-slim==4.1.6``.

They cannot go into the project's environment beside ``mcp==1.30.0`` (the same
distribution name), so they get one of their own, built from
``modern-requirements.txt`` (every package pinned, from PyPI) under
``.cache/interop-modern-clients`` in the checkout (git-ignored). It is built
once and reused while it was built from the same requirements by the same
Python; otherwise it is built again. ``.ci/run`` builds it before the tests
(``python tests/interop/modern_env.py``); the tests build it on first use.

Only the standard library here: ``.ci/run`` runs this file as a script.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "modern-requirements.txt"
ENV_DIR = HERE.parent.parent / ".cache" / "interop-modern-clients"
STAMP = "mcp-twisted-stamp"
INSTALL_TIMEOUT = 600.0


def env_python(env: Path = ENV_DIR) -> Path:
    return env / "bin" / "python"


def _stamp() -> str:
    """What the environment is built from: the requirements and the Python that runs them."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def ensure_env(env: Path = ENV_DIR) -> Path:
    """The environment's Python, after building the environment if it is missing or stale.

    The stamp is written last, so an interrupted build is never taken for a
    finished one: it is thrown away and built again.
    """
    stamp = _stamp()
    if env_python(env).is_file() and (env / STAMP).is_file() and (env / STAMP).read_text() == stamp:
        return env_python(env)
    shutil.rmtree(env, ignore_errors=True)
    env.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True, timeout=INSTALL_TIMEOUT)
    subprocess.run(
        [str(env_python(env)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-input", "-r", str(REQUIREMENTS)],
        check=True, timeout=INSTALL_TIMEOUT,
    )
    (env / STAMP).write_text(stamp)
    return env_python(env)


if __name__ == "__main__":
    print(ensure_env())
