"""create_app(settings): the ASGI app of one gateway. ``proxy.gateway`` builds what the gateway owns (its
lifespan, run by the router, starts and stops it); ``proxy.routes`` serves it. Nothing global.

Imports point one way: app -> routes -> (gateway, admin) and app -> gateway -> (pipeline, admin services).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from .gateway import Gateway, build_gateway
from .routes import Router
from .settings import Settings
from .store.base import Store

__all__ = ["Gateway", "build_gateway", "create_app"]


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
    registry: CollectorRegistry | None = None,
) -> Any:  # an ASGI app (the Router); Any while its Scope/Message types are plain dicts
    return Router(build_gateway(settings, store=store, clock=clock, registry=registry))
