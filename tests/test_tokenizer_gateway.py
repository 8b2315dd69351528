"""Self-hosted models counted by their own tokenizer, through real processes on real sockets: the mock upstream
started with ``--tokenizer`` (vLLM's POST /tokenize, and prompt usage counted by that tokenizer, as a vLLM
server serving the model reports it) and a gateway with ``tokenizer: {kind: huggingface}`` and
``{kind: server}`` models. Expected counts are the tests' own: the chat template rendered by plain Jinja2
and encoded by the ``tokenizers`` library (tests/hf_files.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from proxy.count import Counter
from proxy.mock import MockConfig, start
from proxy.store.base import LedgerRecord
from tests.gateway import Proc, base_config, mock_requests, start_gateway, start_mock
from tests.hf_files import CHATML, count, render, write_bpe
from tests.test_governance import ledger, sqlite_url, wait_until

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather in Paris today?"},
]
PROMPT = "The quick brown fox jumps over the lazy dog."
CAP = 5  # max_tokens of every request; the mock answers exactly CAP tokens
N = 3  # requests that fit the hf team's day budget, exactly


@dataclass
class Gw:
    gw: Proc
    mock: Proc
    store: str
    tokenizer: Path
    chat_tokens: int  # the exact count of MESSAGES

    def post(self, path: str, body: dict[str, Any], key: str) -> httpx.Response:
        return httpx.post(self.gw.url + path, json=body, headers={"authorization": f"Bearer {key}"}, timeout=10)

    def row(self, team: str, request_id: str) -> LedgerRecord:
        def find() -> LedgerRecord | None:
            return next((r for r in ledger(self.store, team) if r.request_id == request_id), None)

        return wait_until(find, 10, 0.05)


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "max_tokens": CAP, "mock": {"output_tokens": CAP}}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    tmp = tmp_path_factory.mktemp("tokenizer-gw")
    path = write_bpe(tmp / "llama")
    chat_tokens = count(path, render(CHATML, MESSAGES))
    mock = start_mock(tmp, "--tokenizer", str(path))
    store = sqlite_url(tmp / "qg.db")
    price = {"input": 1, "output": 2}
    cfg = base_config(mock.url, store)
    cfg["providers"]["slow"] = {**cfg["providers"]["mock"], "headers": {"x-mock-delay-s": "1"}}
    cfg["models"] = {
        "llama-hf": {
            "provider": "mock",
            "price": price,
            "tokenizer": {"kind": "huggingface", "path": "llama/tokenizer.json"},
        },
        "llama-srv": {"provider": "mock", "price": price, "tokenizer": {"kind": "server"}},
        "llama-slow": {"provider": "slow", "price": price, "tokenizer": {"kind": "server", "timeout_s": 0.2}},
    }
    cfg["teams"] = {
        "hf": {"models": ["llama-hf"], "budgets": [{"window": "day", "tokens": N * (chat_tokens + CAP)}]},
        "srv": {},
    }
    cfg["keys"] = [{"team": "hf", "name": "hf", "key": "sk-hf"}, {"team": "srv", "name": "srv", "key": "sk-srv"}]
    gateway = start_gateway(tmp, cfg)  # the config in tmp: the relative tokenizer path resolves there
    yield Gw(gateway, mock, store, path, chat_tokens)
    gateway.terminate()
    mock.terminate()


def test_the_mock_answers_tokenize_as_vllm_does(gw: Gw) -> None:
    r = httpx.post(gw.mock.url + "/tokenize", json={"model": "llama", "messages": MESSAGES}, timeout=5)
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == gw.chat_tokens == len(body["tokens"]) and body["max_model_len"] > 0
    r = httpx.post(gw.mock.url + "/tokenize", json={"model": "llama", "prompt": PROMPT}, timeout=5)
    assert r.json()["count"] == count(gw.tokenizer, PROMPT, special=True)
    r = httpx.post(gw.mock.url + "/tokenize", json={"prompt": PROMPT, "add_special_tokens": False}, timeout=5)
    assert r.json()["count"] == count(gw.tokenizer, PROMPT)
    r = httpx.post(gw.mock.url + "/tokenize", json={"messages": MESSAGES, "add_generation_prompt": False}, timeout=5)
    assert r.json()["count"] == count(gw.tokenizer, render(CHATML, MESSAGES).removesuffix("<|im_start|>assistant\n"))
    assert httpx.post(gw.mock.url + "/tokenize", json={"model": "llama"}, timeout=5).status_code == 400


def test_a_mock_without_a_tokenizer_has_no_tokenize_route() -> None:
    async def go() -> int:
        server = await start(config=MockConfig())
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.post(f"http://{server.host}:{server.port}/tokenize", json={}) as r,
            ):
                return r.status
        finally:
            await server.close()

    assert asyncio.run(go()) == 404


def test_huggingface_counts_exactly_and_a_budget_fits_exactly_n_requests(gw: Gw) -> None:
    ids = []
    for _ in range(N):
        r = gw.post("/v1/chat/completions", chat("llama-hf"), "sk-hf")
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == gw.chat_tokens  # the server's own count, the same
        ids.append(r.headers["x-quotagate-request-id"])
    for rid in ids:
        row = gw.row("hf", rid)
        assert (row.counted_input, row.input_tokens, row.output_tokens) == (gw.chat_tokens, gw.chat_tokens, CAP)
        assert not row.estimated
    # N * (count + cap) used: not one token left for the next request's count + cap
    r = gw.post("/v1/chat/completions", chat("llama-hf"), "sk-hf")
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"


def test_completions_and_embeddings_count_with_the_tokenizers_special_tokens(gw: Gw) -> None:
    want = count(gw.tokenizer, PROMPT, special=True)
    r = gw.post("/v1/completions", {"model": "llama-hf", "prompt": PROMPT, "max_tokens": CAP}, "sk-srv")
    assert r.status_code == 200, r.text
    row = gw.row("srv", r.headers["x-quotagate-request-id"])
    assert (row.counted_input, row.input_tokens, row.estimated) == (want, want, False)
    r = gw.post("/v1/embeddings", {"model": "llama-hf", "input": [PROMPT, "red"]}, "sk-srv")
    assert r.status_code == 200, r.text
    row = gw.row("srv", r.headers["x-quotagate-request-id"])
    assert row.counted_input == want + count(gw.tokenizer, "red", special=True)


@pytest.mark.parametrize("stream", [False, True])
def test_output_without_usage_is_counted_with_the_tokenizer(gw: Gw, stream: bool) -> None:
    body = {**chat("llama-hf"), "stream": stream, "mock": {"output_tokens": CAP, "no_usage": True}}
    r = gw.post("/v1/chat/completions", body, "sk-srv")
    assert r.status_code == 200, r.text
    if stream:
        chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    else:
        text = r.json()["choices"][0]["message"]["content"]
    row = gw.row("srv", r.headers["x-quotagate-request-id"])
    assert row.output_tokens is None and row.counted_output == count(gw.tokenizer, text) != CAP


def test_kind_server_counts_with_the_servers_tokenize(gw: Gw) -> None:
    httpx.delete(gw.mock.url + "/_mock/requests", timeout=5)
    r = gw.post("/v1/chat/completions", chat("llama-srv"), "sk-srv")
    assert r.status_code == 200, r.text
    row = gw.row("srv", r.headers["x-quotagate-request-id"])
    assert (row.counted_input, row.input_tokens, row.estimated) == (gw.chat_tokens, gw.chat_tokens, False)
    asked = [q for q in mock_requests(gw.mock) if q["path"] == "/tokenize"]
    assert [q["body"] for q in asked] == [{"model": "llama-srv", "messages": MESSAGES, "add_generation_prompt": True}]
    assert asked[0]["headers"]["authorization"] == "Bearer sk-upstream-secret"  # the provider's key
    r = gw.post("/v1/completions", {"model": "llama-srv", "prompt": PROMPT, "max_tokens": CAP}, "sk-srv")
    row = gw.row("srv", r.headers["x-quotagate-request-id"])
    assert (row.counted_input, row.estimated) == (count(gw.tokenizer, PROMPT, special=True), False)


def test_kind_server_falls_back_to_the_local_count_on_a_timeout(gw: Gw) -> None:
    local = Counter().chat(MESSAGES, None, model="llama-slow", encoding=None).tokens
    assert local != gw.chat_tokens
    for _ in range(2):
        r = gw.post("/v1/chat/completions", chat("llama-slow"), "sk-srv")
        assert r.status_code == 200, r.text  # the chat itself waits the second out, the count does not
        row = gw.row("srv", r.headers["x-quotagate-request-id"])
        assert (row.counted_input, row.input_tokens, row.estimated) == (local, gw.chat_tokens, True)
    warned = [line for line in gw.gw.read_log().splitlines() if "gave no token count" in line]
    assert len(warned) == 1 and "llama-slow" in warned[0] and "/tokenize" in warned[0]
