"""``--baseline-ref REF``: an older commit's quotagate as one more target of the same run ("before vs after"
measured in one run, on the same machine, alternating with the current code in every scenario).

The commit's tree is exported once with ``git archive`` into ``<dir>/<sha12>/`` (default
``bench/.baseline/``, which ignores itself) and reused by later runs. It is a plain copy, not a
``git worktree``: nothing is registered in the shared repository's ``.git``, and deleting the folder is
the whole cleanup. The old code runs on this interpreter and its installed packages, with the tree as the
working directory and first on ``PYTHONPATH``, so ``python -m proxy`` imports it instead of the editable
install of the working tree (checked before the run). That is right while the two commits declare the
same dependencies; when they do not, the report's notes say which differ.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from bench import BENCH, ROOT

BASELINE_DIR = BENCH / ".baseline"


@dataclass(frozen=True, slots=True)
class Baseline:
    ref: str
    sha: str
    subject: str  # the commit's date and subject line
    tree: Path
    deps_note: str

    @property
    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.tree)}

    @property
    def note(self) -> str:
        return (
            f"@{self.ref} is {self.sha[:12]} ({self.subject}), exported to {_shown(self.tree)}, "
            f"run by this interpreter with PYTHONPATH={_shown(self.tree)}; {self.deps_note}"
        )


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def prepare(ref: str, into: Path = BASELINE_DIR) -> Baseline:
    """Resolve ``ref``, export its tree unless already there, and check that ``python -m proxy`` runs it."""
    try:
        sha = _git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    except subprocess.CalledProcessError:
        raise RuntimeError(f"--baseline-ref {ref}: not a commit of {ROOT}") from None
    tree = into / sha[:12]
    if not (tree / ".complete").exists():
        _export(sha, tree)
    _check_import(tree)
    subject = _git("log", "-1", "--format=%ad, %s", "--date=short", sha)
    return Baseline(ref, sha, subject[:100], tree, _deps_note(sha))


def _export(sha: str, tree: Path) -> None:
    tree.parent.mkdir(parents=True, exist_ok=True)
    (tree.parent / ".gitignore").write_text("*\n")  # the folder ignores itself: nothing in it is committed
    partial = tree.with_name(tree.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(tree, ignore_errors=True)
    partial.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", sha], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(partial, filter="data")
    (partial / ".complete").write_text(sha + "\n")
    partial.rename(tree)


def _check_import(tree: Path) -> None:
    found = subprocess.run(
        [sys.executable, "-c", "import proxy; print(proxy.__file__)"],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
    )
    if found.returncode != 0 or not Path(found.stdout.strip()).is_relative_to(tree):
        raise RuntimeError(f"the baseline tree {tree} does not import as `proxy`: {found.stdout}{found.stderr}")


def _dependencies(pyproject: str) -> set[str]:
    project = tomllib.loads(pyproject).get("project", {})
    return set(project.get("dependencies", []))


def _deps_note(sha: str) -> str:
    old = _dependencies(_git("show", f"{sha}:pyproject.toml"))
    new = _dependencies((ROOT / "pyproject.toml").read_text())
    if old == new:
        return "same dependencies as the working tree"
    return (
        "DEPENDENCIES DIFFER, the old code runs on the new ones: "
        f"only then {sorted(old - new)}, only now {sorted(new - old)}"
    )


def current_code() -> str:
    """What ``quotagate`` (no ref) runs: HEAD, and whether the working tree's proxy/ differs from it."""
    head = _git("log", "-1", "--format=%h (%ad)", "--date=short")
    dirty = [line for line in _git("status", "--porcelain", "--", "proxy").splitlines() if line.strip()]
    changes = f" + uncommitted changes to {len(dirty)} file(s) in proxy/" if dirty else ""
    return f"the working tree: HEAD {head}{changes}"
