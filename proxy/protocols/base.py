"""What a wire protocol is to the pipeline: the one seam between "a governed request" and a protocol's JSON.

The pipeline holds an ``Endpoint`` (a route: its upstream path, output-cap fields, prompt field) and asks
that endpoint's ``Adapter`` everything that depends on the protocol, in request order:

    parse          raw body -> ParsedRequest (the governed fields typed, the rest untouched)
    count          the input, by the protocol's rules (delegated to proxy.count's Counter)
    messages       the turns a team's context cap may trim (None: this protocol's input cannot be trimmed)
    apply          write the governed fields: the upstream model, the output cap, the stream usage option
    tap            an SSE reader that finds usage (and drops what quotagate asked for and the client did not)
    read_answer    usage, fingerprint and the parsed answer of a non-streamed response
    stored         whether the provider keeps what the request creates (its id is then recorded)
    render         a refusal or failure in the protocol's error shape (and ``stream_error`` mid-stream)

An adapter holds no per-request state; one instance serves every request of its routes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Protocol

from .. import attribution
from ..count import Counter, Estimate
from ..errors import ProxyError
from ..parse import Endpoint, ParsedRequest
from ..usage import Usage


class Tap(Protocol):
    """Reads a response stream as it passes (``proxy.sse.StreamTap`` for the OpenAI protocols)."""

    usage: Usage | None
    raw_usage: Any  # the provider's usage as streamed, where the ledger keeps it (see Adapter.raw_usage)
    fingerprint: str | None
    object_id: str | None

    def feed(self, chunk: bytes) -> bytes: ...
    def finish(self) -> bytes: ...
    def output_text(self) -> str: ...


class Adapter(ABC):
    # the local count is an approximation of a tokenizer that is not public: the pipeline scales it by the
    # model's pre-count factor (proxy/precount.py) before the context cap and the reservation
    precount_scaled = False

    @abstractmethod
    def parse(self, endpoint: Endpoint, raw: bytes) -> ParsedRequest: ...

    @abstractmethod
    async def count(self, counter: Counter, req: ParsedRequest, *, model: str, encoding: str | None) -> Estimate:
        """What the body holds, counted for ``model`` (the upstream model name); input out of sight is the
        pipeline's to bound (``req.unseen_input``)."""

    def messages(self, req: ParsedRequest) -> list[Any] | None:
        """The conversation a team's context cap may trim (kept turns go back in ``endpoint.prompt_field``)."""
        return None

    def count_messages(
        self, counter: Counter, req: ParsedRequest, messages: list[Any], *, model: str, encoding: str | None
    ) -> Estimate:
        """The input as it would be with ``messages`` in place of the request's own (trimming)."""
        raise NotImplementedError(f"{type(self).__name__} has no trimmable conversation")

    @abstractmethod
    def apply(self, req: ParsedRequest, *, model: str | None, cap: int | None) -> None:
        """Patch the governed fields: the model to send (None: as it is), the output cap (None: as it is),
        and whatever the protocol needs so that a stream reports its usage."""

    @abstractmethod
    def tap(self, req: ParsedRequest) -> Tap: ...

    @abstractmethod
    def read_answer(self, raw: bytes) -> tuple[Usage, str | None, Any]:
        """A non-streamed answer: (usage, system fingerprint, the parsed body or None)."""

    @abstractmethod
    def output_text(self, answer: Any) -> str:
        """Generated text of a parsed answer, counted when the provider reports no usage."""

    def count_request(self, req: ParsedRequest, upstream_model: str) -> tuple[str, dict[str, Any]] | None:
        """The provider's token-count call for this request, (path below base_url, JSON body), where the
        protocol has one (a model's ``precount.source: provider``); None: it has none."""
        return None

    def raw_usage(self, answer: Any) -> Any:
        """The provider's own usage object in a parsed answer, kept in the ledger as it came where it holds
        more than the normalised fields (None: it does not)."""
        return None

    def object_id(self, answer: Any) -> str | None:
        """The id of the object a parsed answer describes."""
        return None

    def end_user(self, req: ParsedRequest) -> str | None:
        """The end user the request names for the provider (OpenAI's ``safety_identifier``, else ``user``),
        bounded (proxy/attribution.py)."""
        body = req.body
        return attribution.end_user(body.get("safety_identifier")) or attribution.end_user(body.get("user"))

    def stored(self, req: ParsedRequest) -> bool:
        """The provider keeps what this request creates (the stateful endpoints then serve it by id)."""
        return False

    @abstractmethod
    def render(self, err: ProxyError) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of an error answered instead of the provider's response."""

    @abstractmethod
    def stream_error(self, err: ProxyError) -> bytes:
        """An error inside a stream that has already started."""
