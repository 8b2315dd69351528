"""``models.X.tokenizer``: a self-hosted model's own tokenizer (vLLM, SGLang, llama.cpp, Ollama), counting its
chat completions, completions and embeddings instead of the bundled encodings (proxy/count/hf.py,
proxy/tokenize.py). Checked once at boot: the file loads, the chat template compiles in the sandbox."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TokenizerSettings(BaseModel):
    """``huggingface``: offline, a tokenizer.json and the model's chat template; ``server``: the provider's
    server counts (vLLM's ``POST /tokenize``, at ``base_url`` less its ``/v1``), the local count, inexact,
    when it does not answer in ``timeout_s``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["huggingface", "server"]
    # huggingface: the tokenizer.json (relative: to the config file's directory); server: the route
    path: str | None = None
    chat_template: str | None = None  # huggingface: a file, or the template itself; default: beside `path`
    add_generation_prompt: bool = True
    timeout_s: float = Field(default=0.5, gt=0, le=30)  # server

    @model_validator(mode="after")
    def _kind_fields(self) -> TokenizerSettings:
        if self.kind == "huggingface" and not self.path:
            raise ValueError("`path` (the model's tokenizer.json) is required for kind huggingface")
        if self.kind == "server" and self.chat_template is not None:
            raise ValueError("`chat_template` is the server's own for kind server; remove it")
        if self.kind == "server" and self.path is not None and not self.path.startswith("/"):
            raise ValueError("`path` of kind server is the tokenize route, e.g. /tokenize")
        return self

    @property
    def route(self) -> str:
        return self.path or "/tokenize"

    def check(self, provider_kind: str) -> tuple[str, str] | None:
        """(the key at fault, why) when this tokenizer cannot be used with a provider of ``provider_kind``: a
        huggingface file that does not load or a chat template that does not compile in the sandbox, a
        server that is not OpenAI-compatible."""
        if self.kind == "server":
            if provider_kind not in ("openai", "mock"):
                return "kind", f"kind server asks an OpenAI-compatible server (vLLM), not a {provider_kind!r} provider"
            return None
        from .count.hf import TokenizerError, load  # tokenizers and jinja2: only for a config that uses them

        assert self.path is not None
        try:
            load(self.path, self.chat_template, add_generation_prompt=self.add_generation_prompt)
        except TokenizerError as e:
            return e.key, str(e)
        return None
