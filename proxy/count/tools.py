"""Tool definitions: the cookbook's ``num_tokens_for_tools`` (conventions.md 4.2). Schema parts it does
not model (nested objects, arrays, non-function tools) are counted as their JSON text, inexact. No I/O."""

from __future__ import annotations

from typing import Any

from .context import Counted, Ctx, dumps

# Cookbook num_tokens_for_tools (conventions.md 4.2)
_PROP_INIT, _PROP_KEY, _ENUM_INIT, _ENUM_ITEM, _FUNC_END = 3, 3, -3, 3, 12
FUNC_INIT_CL100K, FUNC_INIT_O200K = 10, 7


def _function_of(tool: Any) -> dict[str, Any] | None:
    if not isinstance(tool, dict):
        return None
    fn = tool.get("function")
    if isinstance(fn, dict):
        return fn  # chat shape {"type": "function", "function": {...}}
    if tool.get("type") == "function" and "name" in tool:
        return tool  # responses shape {"type": "function", "name": ..., "parameters": ...}
    return None


def count_tools(ctx: Ctx, tools: Any) -> Counted:
    if not isinstance(tools, list):
        return ctx.n(dumps(tools)), False
    total, exact = 0, True
    for tool in tools:
        fn = _function_of(tool)
        if fn is None:
            total, exact = total + ctx.n(dumps(tool)), False
            continue
        desc = str(fn.get("description") or "").removesuffix(".")
        total += ctx.func_init + ctx.n(f"{fn.get('name', '')}:{desc}")
        params = fn.get("parameters")
        props = params.get("properties") if isinstance(params, dict) else None
        if not isinstance(props, dict) or not props:
            continue
        total += _PROP_INIT
        for key, prop in props.items():
            tokens, ok = _count_property(ctx, key, prop)
            total, exact = total + _PROP_KEY + tokens, exact and ok
    if tools:
        total += _FUNC_END
    return total, exact


def _count_property(ctx: Ctx, key: str, prop: Any) -> Counted:
    if not isinstance(prop, dict):
        return ctx.n(f"{key}:{dumps(prop)}"), False
    total, exact = 0, True
    kind = prop.get("type", "")
    if not isinstance(kind, str):
        kind, exact = dumps(kind), False
    enum = prop.get("enum")
    if isinstance(enum, list):
        total += _ENUM_INIT + sum(_ENUM_ITEM + ctx.n(str(item)) for item in enum)
    desc = str(prop.get("description") or "").removesuffix(".")
    total += ctx.n(f"{key}:{kind}:{desc}")
    extra = {k: v for k, v in prop.items() if k not in ("type", "description", "enum")}
    if extra:  # nested objects, arrays, defaults...: not modelled by the cookbook
        total, exact = total + ctx.n(dumps(extra)), False
    return total, exact
