"""LiteLLM proxy as a target: installed once into its own virtualenv (``pip install 'litellm[proxy]'``),
run with a master key (it refuses to start without one), no database, the cost map from the package."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.targets import FAST_MODEL, PACED_MODEL

LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # never fetch the cost map from the network
    "LITELLM_LOG": "ERROR",
    "LITELLM_TELEMETRY": "False",
    "DISABLE_SCHEMA_UPDATE": "True",
}
LITELLM_KEY = "sk-" + os.urandom(16).hex()


def _importable(venv: Path) -> bool:
    if not (venv / "bin" / "litellm").exists():
        return False
    check = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import litellm.proxy.proxy_server"],
        capture_output=True,
        timeout=300,
        env={**os.environ, **LITELLM_ENV},
    )
    return check.returncode == 0


def _install(venv: Path, timeout: float, log: Path) -> None:
    py = venv / "bin" / "python"
    with open(log, "ab") as out:
        if not py.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(venv)], check=True, stdout=out, stderr=subprocess.STDOUT, timeout=120
            )
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "litellm[proxy]"],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )


def ensure_litellm(venv: Path, timeout: float, log: Path) -> tuple[Path | None, str]:
    """Install ``litellm[proxy]`` into its own virtualenv once; return (its CLI, a status note)."""
    if _importable(venv):
        return venv / "bin" / "litellm", "installed"
    t0 = time.monotonic()
    try:
        _install(venv, timeout, log)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        return None, f"install failed ({e.__class__.__name__}; see {log.name})"
    if not _importable(venv):
        return None, f"installed but `import litellm.proxy.proxy_server` fails (see {log.name})"
    return venv / "bin" / "litellm", f"installed in {time.monotonic() - t0:.0f}s"


def litellm_version(venv: Path) -> str:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True,
        text=True,
    ).stdout.strip()


def litellm_config(mock: str, paced: str) -> dict[str, Any]:
    def model(name: str, base: str) -> dict[str, Any]:
        params = {"model": f"openai/{name}", "api_base": f"{base}/v1", "api_key": "sk-mock"}
        return {"model_name": name, "litellm_params": params}

    return {
        "model_list": [model(FAST_MODEL, mock), model(PACED_MODEL, paced)],
        "litellm_settings": {"drop_params": True, "telemetry": False, "set_verbose": False},
        "general_settings": {"master_key": LITELLM_KEY},
    }
