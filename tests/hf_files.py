"""Small but real Hugging Face tokenizers written by the tests: a byte-level BPE trained on a tiny corpus with
Llama/ChatML special tokens (BOS added by its post-processor, as a Llama tokenizer.json does), a WordLevel
one whose counts can be worked out by hand, and their ``tokenizer_config.json`` with a chat template.

``render`` is the tests' own rendering, independent of quotagate's: plain (unsandboxed) Jinja2 with the
options Transformers uses, so a count can be checked against ``tokenizer.encode(render(...))``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jinja2
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIAL = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
# ChatML with a BOS and a tools block (Qwen-like): what vLLM renders for a chat request
CHATML = (
    "{{ bos_token }}"
    "{% if tools %}<|im_start|>system\n# Tools\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|im_end|>\n"
    "{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] %}{{ m['content'] }}{% endif %}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
    "{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "You are a helpful assistant. Answer in one sentence.",
    "What is the weather in Paris today? It is sunny and warm.",
    "The quick brown fox jumps over the lazy dog.",
    "Name three colours of the rainbow: red, orange, yellow, green, blue.",
    "system user assistant tool function arguments city unit celsius",
] * 20


def write_bpe(directory: Path, *, template: str | None = CHATML, config: dict[str, Any] | None = None) -> Path:
    """A byte-level BPE tokenizer.json (vocabulary 400) and, with ``template``, a tokenizer_config.json."""
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    path = directory / "tokenizer.json"
    tok.save(str(path))
    if template is not None or config is not None:
        cfg = {"bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>", "chat_template": template}
        (directory / "tokenizer_config.json").write_text(json.dumps({**cfg, **(config or {})}))
    return path


WORDS = ["hello", "world", "user", "assistant", "system", "be", "brief"]


def write_wordlevel(directory: Path, template: str = CHATML) -> Path:
    """A WordLevel tokenizer split on whitespace and punctuation: one token per word, ``<s>`` as BOS."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate([*SPECIAL, *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIAL)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    path = directory / "tokenizer.json"
    tok.save(str(path))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "chat_template": template}))
    return path


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def render(template: str, messages: list[dict[str, Any]], tools: list[Any] | None = None, **special: Any) -> str:
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    return env.from_string(template).render(
        messages=messages, tools=tools, add_generation_prompt=True, bos_token="<s>", eos_token="</s>", **special
    )


def count(path: Path, text: str, *, special: bool = False) -> int:
    return len(Tokenizer.from_file(str(path)).encode(text, add_special_tokens=special).ids)
