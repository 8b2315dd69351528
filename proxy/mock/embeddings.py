"""POST /v1/embeddings: unit vectors hashed from each input, as floats or base64 little-endian float32."""

from __future__ import annotations

import base64
import hashlib
import sys
from array import array
from typing import Any

import orjson
from aiohttp import web

from .state import CTX, STATE
from .stream import sleep, time_to_first_token
from .text import encoding_for, int_field, model_of
from .wire import BadRequest, json_response

DEFAULT_EMBEDDING_DIMS = 8


def _embedding_vector(item: Any, dims: int) -> array[float]:
    key = item.encode() if isinstance(item, str) else orjson.dumps(item)
    raw = hashlib.shake_128(key).digest(4 * dims)
    ints = array("I", raw)
    vec = array("f", (i / 2147483648.0 - 1.0 for i in ints))
    norm = sum(x * x for x in vec) ** 0.5 or 1.0
    return array("f", (x / norm for x in vec))


async def embeddings(request: web.Request) -> web.StreamResponse:
    state, ctx = request.app[STATE], request[CTX]
    body, ctl = ctx.body, ctx.controls
    model = model_of(body)
    inputs = body.get("input")
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
        items: list[Any] = [inputs]
    elif isinstance(inputs, list) and inputs:
        items = inputs
    else:
        raise BadRequest("'input' must be a non-empty string or array.", "input")
    dims = int_field(body, "dimensions")
    if dims == 0:
        raise BadRequest("'dimensions' must be at least 1.", "dimensions")
    dims = dims or DEFAULT_EMBEDDING_DIMS
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    estimate = await state.counter.aembeddings(inputs, model=model, encoding=encoding_for(model))
    prompt = estimate.tokens
    data = []
    for index, item in enumerate(items):
        vec = _embedding_vector(item, dims)
        if fmt == "base64":
            if sys.byteorder == "big":
                vec.byteswap()
            value: Any = base64.b64encode(vec.tobytes()).decode()
        else:
            value = vec.tolist()
        data.append({"object": "embedding", "index": index, "embedding": value})
    await sleep(time_to_first_token(state.config, prompt))
    out: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if not ctl.no_usage:
        out["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
    return json_response(out)
