"""An OpenAI-compatible fake provider for demos, tests and benchmarks (`quotagate mock-upstream`).

It answers /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses (and /compact) and
/v1/models with shapes the official `openai` SDK accepts (and keeps responses, chat completions created
with ``store: true`` and conversations in memory for the stateful endpoints: retrieve, list, input items,
messages, update, cancel, delete, input token counts, conversation items), and deterministic output: N
tokens of a fixed word list in which every word is one token in both cl100k_base and o200k_base, streamed
one token per chunk. Prompt usage is counted with `proxy.count`, i.e. the same tokenizer as the gateway's
own pre-count, so tests can compare the two exactly.

Faults and behaviour are chosen per request by a ``mock`` object in the JSON body or by ``x-mock-<name>``
headers (body wins); see `Controls`. The last requests received are kept for inspection at
``GET /_mock/requests`` (``DELETE`` clears them).

This is a *provider*, not part of quotagate: it renders provider error shapes itself (OpenAI, vLLM, SGLang,
Anthropic, plain text) rather than going through `proxy.errors`.

Modules: `config` (MockConfig, the per-request Controls), `state` (what the app keeps), `wire` (JSON and
SSE framing, OpenAI error bodies, list pages), `gate` (the middleware: record, auth, injected faults),
`text` (the deterministic output, usage), `stream` (the SSE sender with cuts and in-band errors), one module
per endpoint (`chat`, `completions`, `embeddings`, `responses`, `tokenize`: vLLM's ``POST /tokenize`` with
``--tokenizer PATH``, whose tokenizer then also counts prompt usage), `objects` (stored chat completions,
conversations, models, recorded requests) and `server` (the app, `start`, `run`).
"""

from __future__ import annotations

from .config import Controls, MockConfig
from .server import MockServer, build_app, run, start
from .state import STATE
from .text import output_pieces, output_text

__all__ = [
    "STATE",
    "Controls",
    "MockConfig",
    "MockServer",
    "build_app",
    "output_pieces",
    "output_text",
    "run",
    "start",
]
