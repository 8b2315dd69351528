"""The mock's aiohttp app (every route), `start` on a running loop, and `run` for the CLI."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from . import anthropic, objects
from .chat import chat_completions
from .completions import completions
from .config import MockConfig
from .embeddings import embeddings
from .gate import gate
from .responses import compact, input_tokens, responses
from .state import STATE, State
from .tokenize import tokenize


def build_app(config: MockConfig) -> web.Application:
    app = web.Application(middlewares=[gate], client_max_size=64 * 1024 * 1024)
    app[STATE] = _state(config)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/responses/input_tokens", input_tokens)
    app.router.add_post("/v1/responses/compact", compact)
    for prefix in ("/openai/deployments/{deployment}", "/openai/v1"):  # Azure OpenAI: classic and v1 paths
        app.router.add_post(prefix + "/chat/completions", chat_completions)
        app.router.add_post(prefix + "/completions", completions)
        app.router.add_post(prefix + "/embeddings", embeddings)
    app.router.add_post("/openai/v1/responses", responses)
    app.router.add_post("/v1/messages", anthropic.messages)
    app.router.add_post("/v1/messages/count_tokens", anthropic.count_tokens)
    app.router.add_get("/v1/responses/{id}", objects.get_response)
    app.router.add_delete("/v1/responses/{id}", objects.delete_response)
    app.router.add_get("/v1/responses/{id}/input_items", objects.response_input_items)
    app.router.add_post("/v1/responses/{id}/cancel", objects.cancel_response)
    app.router.add_get("/v1/chat/completions", objects.list_chat_completions)
    app.router.add_get("/v1/chat/completions/{id}", objects.get_chat_completion)
    app.router.add_post("/v1/chat/completions/{id}", objects.update_chat_completion)
    app.router.add_delete("/v1/chat/completions/{id}", objects.delete_chat_completion)
    app.router.add_get("/v1/chat/completions/{id}/messages", objects.chat_completion_messages)
    app.router.add_get("/v1/models", objects.list_models)
    app.router.add_get("/v1/models/{model:.+}", objects.get_model)
    app.router.add_delete("/v1/models/{model:.+}", objects.delete_model)
    app.router.add_post("/v1/conversations", objects.create_conversation)
    app.router.add_get("/v1/conversations/{id}", objects.get_conversation)
    app.router.add_post("/v1/conversations/{id}", objects.update_conversation)
    app.router.add_delete("/v1/conversations/{id}", objects.delete_conversation)
    app.router.add_get("/v1/conversations/{id}/items", objects.conversation_items)
    app.router.add_post("/v1/conversations/{id}/items", objects.add_conversation_items)
    app.router.add_get("/v1/conversations/{id}/items/{item_id}", objects.get_conversation_item)
    app.router.add_delete("/v1/conversations/{id}/items/{item_id}", objects.delete_conversation_item)
    app.router.add_post("/tokenize", tokenize)  # vLLM's, at the server's root
    app.router.add_get("/_mock/requests", objects.recorded_requests)
    app.router.add_delete("/_mock/requests", objects.clear_requests)
    return app


def _state(config: MockConfig) -> State:
    """With ``config.tokenizer``: prompt usage counted by that tokenizer, as a vLLM server serving it counts."""
    if config.tokenizer is None:
        return State(config)
    from proxy.count import Counter
    from proxy.count.hf import TokenizerCounter, load

    hf = load(str(Path(config.tokenizer).resolve()))
    return State(config, counter=TokenizerCounter(Counter(), hf), tokenizer=hf)


@dataclass(slots=True)
class MockServer:
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def app(self) -> web.Application:
        return self.runner.app

    async def close(self) -> None:
        await self.runner.cleanup()


async def start(host: str = "127.0.0.1", port: int = 0, config: MockConfig = MockConfig()) -> MockServer:
    """Serve the mock on the running loop; port 0 picks a free port (see `.url`)."""
    runner = web.AppRunner(build_app(config), access_log=None, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return MockServer(runner, host, int(bound))


def run(host: str, port: int, config: MockConfig) -> None:
    """Serve until interrupted (the `quotagate mock-upstream` CLI); uses uvloop when installed."""
    loop: asyncio.AbstractEventLoop | None = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        pass
    web.run_app(build_app(config), host=host, port=port, access_log=None, loop=loop)
