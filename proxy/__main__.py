"""``python -m proxy`` / ``quotagate``: the CLI lives in proxy/cli/."""

from __future__ import annotations

from .cli import main
from .cli.serve import app_factory  # uvicorn's factory, by its older name `proxy.__main__:app_factory`

__all__ = ["app_factory", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
