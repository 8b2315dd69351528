"""A model's chat template, compiled and rendered as Hugging Face ``transformers`` does it (and so vLLM and
SGLang, which call it): Jinja2's ``ImmutableSandboxedEnvironment`` with ``trim_blocks`` and
``lstrip_blocks``, the ``loopcontrols`` extension, ``{% generation %}`` blocks (rendered as their body),
``raise_exception``, ``strftime_now`` and a ``tojson`` that keeps non-ASCII text and takes ``indent``.

The sandbox refuses attribute access to internals (``__class__``, ``__globals__``...) and any method that
would change a value (``messages.append``): a template is data from a model repository, never code.

Messages reach the template as vLLM hands them over (``vllm/entrypoints/chat_utils.py``): role and content,
the content's text parts joined by newlines -- or kept as a list of ``{"type": "text", "text"}`` parts when
the template iterates over a message's content -- with ``name``, an assistant's ``tool_calls`` (their
``arguments`` parsed from JSON text, as the Transformers templates expect) and a tool's ``tool_call_id``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NoReturn

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError
from jinja2.ext import Extension, loopcontrols
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

TemplateFailure = (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError, AttributeError)
# the template loops over a message's content: vLLM's "openai" content format (a list of parts)
_ITERATES_CONTENT = re.compile(r"\bin\s+\w+(?:\[\s*['\"]content['\"]\s*\]|\.content)\b")


class _Generation(Extension):
    """``{% generation %}...{% endgeneration %}`` (Transformers' assistant-mask marker): its body, as is."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None, sort_keys: bool = False
) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _Sandbox(ImmutableSandboxedEnvironment):
    """Jinja's sandbox renders an unsafe attribute as an empty undefined (until something uses it): here the
    access itself fails, so a template reaching for internals is refused at boot (a trial render) or fails
    the request's count (then a guess) -- it never prints or calls them."""

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")


def environment() -> ImmutableSandboxedEnvironment:
    env = _Sandbox(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


_ENV = environment()


class ChatTemplate:
    """A compiled chat template and the special tokens it may name (``bos_token``, ``eos_token``...)."""

    def __init__(self, source: str, special_tokens: Mapping[str, Any] | None = None) -> None:
        self.source = source
        self.template = _ENV.from_string(source)  # jinja2.TemplateSyntaxError on a broken template
        self.special_tokens = dict(special_tokens or {})
        self.content_as_parts = _ITERATES_CONTENT.search(source) is not None

    def render(self, messages: list[dict[str, Any]], tools: list[Any] | None, *, add_generation_prompt: bool) -> str:
        """The prompt text; raises one of ``TemplateFailure`` (``SecurityError`` among them)."""
        return self.template.render(
            messages=messages, tools=tools, documents=None, add_generation_prompt=add_generation_prompt,
            **self.special_tokens,
        )  # fmt: skip

    def conversation(self, messages: Any) -> tuple[list[dict[str, Any]], bool]:
        """The messages as the template gets them, and whether they are text only (else the count is a guess)."""
        if not isinstance(messages, list):
            raise TypeError("messages is not a list")
        out: list[dict[str, Any]] = []
        text_only = True
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise TypeError("a message is not an object with a role")
            content, text = self._content(m.get("content"))
            text_only = text_only and text
            msg: dict[str, Any] = {"role": m["role"], "content": content}
            if m["role"] == "assistant" and isinstance(m.get("tool_calls"), list):
                msg["tool_calls"] = [_parsed_call(c) for c in m["tool_calls"]]
            if m["role"] == "tool" and "tool_call_id" in m:
                msg["tool_call_id"] = m["tool_call_id"]
            if isinstance(m.get("name"), str):
                msg["name"] = m["name"]
            out.append(msg)
        return out, text_only

    def _content(self, content: Any) -> tuple[Any, bool]:
        if isinstance(content, str):
            return ([{"type": "text", "text": content}] if self.content_as_parts else content), True
        if content is None:
            return ([] if self.content_as_parts else ""), True
        if not isinstance(content, list):
            raise TypeError("content is neither text nor a list of parts")
        texts: list[str] = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text") and "text" in part:
                texts.append(str(part["text"]))
        text_only = len(texts) == len(content)
        if self.content_as_parts:
            return [{"type": "text", "text": t} for t in texts], text_only
        return "\n".join(texts), text_only


def _parsed_call(call: Any) -> Any:
    """A tool call with its ``arguments`` as an object (vLLM parses the JSON text before rendering)."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    args = call["function"].get("arguments")
    if not isinstance(args, str):
        return call
    try:
        parsed = json.loads(args)
    except ValueError:
        return call
    return {**call, "function": {**call["function"], "arguments": parsed}}


def tool_dicts(tools: Any) -> Any:
    """The tools as vLLM's request model dumps them: a function's ``description`` and ``parameters`` present
    (null when not given)."""
    if not isinstance(tools, list):
        return tools  # None, or a shape the server will refuse (the template gets it as it is)
    out: list[Any] = []
    for t in tools:
        f = t.get("function") if isinstance(t, dict) else None
        if not isinstance(f, dict) or "name" not in f:
            out.append(t)
            continue
        rest = {k: v for k, v in f.items() if k not in ("name", "description", "parameters")}
        fn = {"name": f["name"], "description": f.get("description"), "parameters": f.get("parameters"), **rest}
        out.append(
            {
                "type": t.get("type", "function"),
                "function": fn,
                **{k: v for k, v in t.items() if k not in ("type", "function")},
            }
        )
    return out
