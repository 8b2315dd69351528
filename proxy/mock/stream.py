"""Latency and the SSE sender: opening, content frames paced per token, closing; or a cut or in-band error."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web

from .config import Controls, MockConfig
from .wire import SSE_HEADERS, data_frame, openai_error


async def sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def time_to_first_token(config: MockConfig, prompt: int) -> float:
    return config.base_ttft_s + config.ttft_per_1k_input_s * prompt / 1000


def time_per_token(config: MockConfig, ctl: Controls) -> float:
    return ctl.tpot_s if ctl.tpot_s is not None else config.tpot_s


def error_frame(after: int) -> bytes:
    """The in-band error of a chat or completions stream, after ``after`` content chunks."""
    return data_frame(openai_error(f"mock: injected stream error after {after} chunks", "server_error"))


async def send_stream(
    request: web.Request,
    ctl: Controls,
    ttft: float,
    tpot: float,
    opening: list[bytes],
    content: list[bytes],
    closing: list[bytes],
    error_at: Callable[[int], bytes],
) -> web.StreamResponse:
    """Send opening, then content frames (paced by tpot), then closing; or fail as the controls say.

    A requested cut or in-band error always happens: after ``min(n, len(content))`` content frames, so
    ``cut_after`` >= the output length drops the connection right before the finish/usage chunks.
    """
    resp = web.StreamResponse(headers=SSE_HEADERS)
    await resp.prepare(request)
    cut, err = ctl.cut_after, ctl.error_after
    stop = min((x for x in (cut, err) if x is not None), default=None)
    cutting = cut is not None and (err is None or cut <= err)
    if stop is not None:
        stop = min(stop, len(content))
        content = content[:stop]
        closing = [] if cutting else [error_at(stop)]
    try:
        if ttft <= 0 and tpot <= 0:  # one write: no per-chunk syscalls nor event-loop round trips
            await resp.write(b"".join(opening + content + closing))
        else:
            if opening:
                await resp.write(b"".join(opening))
            await sleep(ttft)
            if tpot <= 0:
                await resp.write(b"".join(content + closing))
            else:
                for i, frame in enumerate(content):
                    if i:
                        await asyncio.sleep(tpot)
                    await resp.write(frame)
                if closing:
                    await resp.write(b"".join(closing))
    except ConnectionError:  # the client went away mid-stream: nothing left to do
        return resp
    if cutting:
        # abrupt end: no terminating chunk, so the client sees an incomplete body, not a clean EOF
        if request.transport is not None:
            request.transport.abort()
        resp.force_close()
        return resp  # aiohttp's write_eof then meets the dead transport and gives up quietly
    await resp.write_eof()
    return resp
