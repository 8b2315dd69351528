"""A self-hosted model's own tokenizer (proxy/count/hf.py, proxy/count/template.py, models.X.tokenizer): exact
counts against tokenizers the tests write, the sandbox, the config's checks and errors."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.count import Counter
from proxy.count.hf import TokenizerCounter, TokenizerError, load
from proxy.settings import ConfigError, parse
from proxy.settings import load as load_settings
from tests.hf_files import CHATML, count, render, write_bpe, write_wordlevel

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CONVERSATIONS: list[tuple[str, list[dict[str, Any]], list[Any] | None]] = [
    ("one user turn", [{"role": "user", "content": "What is the weather in Paris today?"}], None),
    (
        "system, history, new turn",
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Name three colours of the rainbow."},
            {"role": "assistant", "content": "Red, orange, yellow."},
            {"role": "user", "content": "And two more? Ünïcödé too 🌈"},
        ],
        None,
    ),
    (
        "text parts joined by newlines",
        [{"role": "user", "content": [{"type": "text", "text": "red"}, {"type": "text", "text": "blue"}]}],
        None,
    ),
    (
        "tools and a tool call",
        [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny and warm"},
        ],
        [WEATHER],
    ),
]


def expected_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The tests' own reading of what vLLM hands the template: text parts joined, arguments parsed."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = "\n".join(p["text"] for p in content)
        msg: dict[str, Any] = {"role": m["role"], "content": content or ""}
        if "tool_calls" in m:
            msg["tool_calls"] = [
                {**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
                for c in m["tool_calls"]
            ]
        out.append(msg)
    return out


def expected_tools(tools: list[Any] | None) -> list[Any] | None:
    return [{"type": "function", "function": {**t["function"]}} for t in tools] if tools else None


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bpe(tmp_path_factory.mktemp("bpe"))


@pytest.mark.parametrize(("name", "messages", "tools"), CONVERSATIONS, ids=[c[0] for c in CONVERSATIONS])
def test_a_chat_counts_the_rendered_template_exactly(
    bpe: Path, name: str, messages: list[dict[str, Any]], tools: list[Any] | None
) -> None:
    text = render(CHATML, expected_messages(messages), expected_tools(tools))
    assert text.startswith("<s><|im_start|>") and text.endswith("<|im_start|>assistant\n")
    want = count(bpe, text)  # add_special_tokens=False: the template wrote the BOS, as vLLM's chat form counts
    counter = TokenizerCounter(Counter(), load(str(bpe)))
    est = counter.chat(messages, tools, model="llama", encoding=None)
    assert (est.tokens, est.exact) == (want, True)
    p = est.parts
    assert p.system + p.tools + p.history + p.new == want
    assert (p.tools > 0) == bool(tools)
    assert asyncio.run(counter.achat(messages, tools, model="llama", encoding=None)) == est


def test_parts_follow_the_conversation(bpe: Path) -> None:
    hf = load(str(bpe))
    messages = CONVERSATIONS[1][1]
    est = hf.chat(messages, None)
    system = count(bpe, "<s><|im_start|>system\nYou are a helpful assistant.")
    assert est.parts.system == system
    assert est.parts.history > 0 and est.parts.new > 0 and est.parts.tools == 0


def test_counts_worked_out_by_hand(tmp_path: Path) -> None:
    hf = load(str(write_wordlevel(tmp_path)))
    counter = TokenizerCounter(Counter(), hf)
    # <s> <|im_start|> user hello world <|im_end|> <|im_start|> assistant
    assert counter.chat([{"role": "user", "content": "hello world"}], None, model="m", encoding=None).tokens == 8
    # + <|im_start|> system be brief <|im_end|>
    two = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}]
    assert counter.chat(two, None, model="m", encoding=None).tokens == 13
    # completions and embeddings: the tokenizer's post-processor adds <s>
    assert counter.completion("hello world", model="m", encoding=None).tokens == 3
    assert counter.embeddings(["hello", "hello world"], model="m", encoding=None).tokens == 5
    assert counter.completion([1, 2, 3, 4], model="m", encoding=None).tokens == 4


def test_prompts_and_inputs(bpe: Path) -> None:
    counter = TokenizerCounter(Counter(), load(str(bpe)))
    text = "The quick brown fox jumps over the lazy dog."
    assert count(bpe, text, special=True) == count(bpe, text) + 1  # the BOS
    est = counter.completion(text, model="m", encoding=None)
    assert (est.tokens, est.exact) == (count(bpe, text, special=True), True)
    est = asyncio.run(counter.aembeddings([text, "red"], model="m", encoding=None))
    assert est.tokens == count(bpe, text, special=True) + count(bpe, "red", special=True)
    assert counter.completion([[5, 6], [7]], model="m", encoding=None).tokens == 3
    assert not counter.completion({"odd": 1}, model="m", encoding=None).exact


def test_responses_and_messages_keep_the_shared_count(bpe: Path) -> None:
    shared = Counter()
    counter = TokenizerCounter(shared, load(str(bpe)))
    shared.use("llama", counter)
    assert shared.for_model("llama") is counter and shared.for_model("gpt-4o") is shared
    args: dict[str, Any] = {"model": "gpt-4o", "encoding": None}
    assert counter.responses("hi", None, None, **args) == shared.responses("hi", None, None, **args)


def test_large_conversations_are_counted_in_a_thread(bpe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = asyncio.to_thread

    async def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(fn)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr("proxy.count.hf.asyncio.to_thread", spy)
    counter = TokenizerCounter(Counter(), load(str(bpe)))
    big = [{"role": "user", "content": "The quick brown fox. " * 1000}]
    est = asyncio.run(counter.achat(big, None, model="m", encoding=None))
    assert est.exact and len(calls) == 1
    asyncio.run(counter.achat([{"role": "user", "content": "hi"}], None, model="m", encoding=None))
    assert len(calls) == 1


def test_a_request_the_template_refuses_is_an_inexact_count(tmp_path: Path) -> None:
    strict = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('a system message first') }}{% endif %}ok"
    hf = load(str(write_bpe(tmp_path, template=strict)))
    est = hf.chat([{"role": "user", "content": "hello there"}], None)
    assert not est.exact and est.tokens > 0
    assert hf.chat([{"role": "system", "content": "s"}], None).exact
    assert not hf.chat("not a list", None).exact
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    assert not hf.chat([{"role": "system", "content": [image]}], None).exact


def test_named_templates_and_a_template_file(tmp_path: Path) -> None:
    named = [
        {"name": "default", "template": "plain"},
        {"name": "tool_use", "template": "with tools {{ tools | length }}"},
    ]
    path = write_bpe(tmp_path / "named", template=None, config={"chat_template": named})
    hf = load(str(path))
    assert hf.render([{"role": "user", "content": "x"}], None)[0] == "plain"
    assert hf.render([{"role": "user", "content": "x"}], [WEATHER])[0] == "with tools 1"
    own = tmp_path / "own.jinja"
    own.write_text("{% for m in messages %}[{{ m.content }}]{% endfor %}")
    assert load(str(path), str(own)).render([{"role": "user", "content": "x"}], None)[0] == "[x]"
    assert load(str(path), "inline {{ messages | length }}").render([], None)[0] == "inline 0"
    (tmp_path / "named" / "chat_template.jinja").write_text("beside")
    path.touch()  # a new file version: loaded again
    assert load(str(path)).render([], None)[0] == "beside"


@pytest.mark.parametrize(
    "template",
    [
        "{{ messages.__class__.__mro__[1].__subclasses__() }}",
        "{{ raise_exception.__globals__ }}",
        "{% set _ = messages.append({'role': 'user'}) %}x",
        "{{ cycler.__init__.__globals__.os }}",
    ],
)
def test_the_sandbox_refuses_templates_that_reach_for_internals(tmp_path: Path, template: str) -> None:
    path = write_bpe(tmp_path, template=template)
    with pytest.raises(TokenizerError, match="sandbox refused") as e:
        load(str(path))
    assert e.value.key == "chat_template"


def test_a_refusal_reached_only_by_some_requests_is_an_inexact_count(tmp_path: Path) -> None:
    sneaky = "{% if messages | length > 2 %}{{ messages.__class__.__base__ }}{% endif %}ok"
    hf = load(str(write_bpe(tmp_path, template=sneaky)))
    assert hf.chat([{"role": "user", "content": "a"}], None).exact
    three = [{"role": "user", "content": c} for c in "abc"]  # the boot check's trial render has two messages
    assert not hf.chat(three, None).exact


# ---- config -------------------------------------------------------------------------------------------
def cfg(tokenizer: Any, provider_kind: str = "openai") -> dict[str, Any]:
    return {
        "providers": {"vllm": {"base_url": "http://127.0.0.1:8000/v1", "kind": provider_kind, "api_key": "k"}},
        "models": {"llama": {"provider": "vllm", "price": {"input": 0, "output": 0}, "tokenizer": tokenizer}},
    }


def error_of(raw: Any, base: Path) -> str:
    with pytest.raises(ConfigError) as e:
        parse(raw, base=base, env={})
    return str(e.value)


def test_a_relative_path_resolves_against_the_config_file(tmp_path: Path) -> None:
    write_bpe(tmp_path / "models" / "llama")
    conf = tmp_path / "conf" / "quotagate.yaml"
    conf.parent.mkdir()
    conf.write_text(yaml.safe_dump(cfg({"kind": "huggingface", "path": "../models/llama/tokenizer.json"})))
    s = load_settings(conf)
    t = s.models["llama"].tokenizer
    assert t is not None and t.path == str((tmp_path / "models" / "llama" / "tokenizer.json").resolve())
    assert t.add_generation_prompt is True


@pytest.mark.parametrize(
    ("tokenizer", "words"),
    [
        ({"kind": "huggingface", "path": "missing.json"}, "models.llama.tokenizer.path: cannot read"),
        ({"kind": "huggingface", "path": "bad.json"}, "models.llama.tokenizer.path: "),
        ({"kind": "huggingface"}, "models.llama.tokenizer: Value error, `path`"),
        ({"kind": "sentencepiece", "path": "x"}, "models.llama.tokenizer.kind"),
        (
            {"kind": "huggingface", "path": "ok/tokenizer.json", "chat_template": "{% for %}"},
            "models.llama.tokenizer.chat_template: the default chat template does not compile",
        ),
        (
            {"kind": "huggingface", "path": "ok/tokenizer.json", "chat_template": "nofile.jinja"},
            "models.llama.tokenizer.chat_template: cannot read",
        ),
        (
            {"kind": "huggingface", "path": "ok/tokenizer.json", "chat_template": "{{ ''.__class__.__mro__ }}"},
            "models.llama.tokenizer.chat_template: the sandbox refused",
        ),
        ({"kind": "server", "path": "tokenize"}, "models.llama.tokenizer: Value error, `path` of kind server"),
        ({"kind": "server", "chat_template": "x"}, "models.llama.tokenizer: Value error, `chat_template`"),
        ({"kind": "server", "timeout_s": 0}, "models.llama.tokenizer.timeout_s"),
        ({"kind": "huggingface", "path": "ok/tokenizer.json", "extra": 1}, "models.llama.tokenizer.extra"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, tokenizer: dict[str, Any], words: str) -> None:
    (tmp_path / "bad.json").write_text('{"model": "not a tokenizer"}')
    write_bpe(tmp_path / "ok")
    assert words in error_of(cfg(tokenizer), tmp_path)


def test_a_server_tokenizer_needs_an_openai_compatible_provider(tmp_path: Path) -> None:
    msg = error_of(cfg({"kind": "server"}, provider_kind="anthropic"), tmp_path)
    assert msg.startswith("models.llama.tokenizer.kind: kind server asks an OpenAI-compatible server")
    s = parse(cfg({"kind": "server", "timeout_s": 2}), env={})
    t = s.models["llama"].tokenizer
    assert t is not None and (t.route, t.timeout_s) == ("/tokenize", 2)
