"""Azure OpenAI both ways, through a real gateway over a socket: the ``openai`` SDK's ``AzureOpenAI`` client
pointed at quotagate (deployment-style paths mapped to quotagate's models), and quotagate's ``kind: azure``
providers (classic deployment URLs with ``api-version``, and the v1 form) with their ``api-key`` header; the
mock checks what Azure checks. Content-filter refusals arrive as the SDK's BadRequestError with Azure's
details kept."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from proxy.pricing import price_of
from proxy.settings import parse
from proxy.usage import Usage
from tests.gateway import Proc, base_config, mock_requests, start_gateway, start_mock
from tests.test_governance import ledger_rows, sqlite_url

pytestmark = pytest.mark.slow

UPSTREAM_KEY = "azure-upstream-secret"
API_VERSION = "2024-10-21"
MSGS: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello from an Azure client"}]


@dataclass
class Gw:
    gw: Proc
    mock: Proc
    store: str

    def azure(self, key: str = "sk-app", **kw: Any) -> openai.AzureOpenAI:
        return openai.AzureOpenAI(
            azure_endpoint=self.gw.url, api_key=key, api_version=API_VERSION, max_retries=0, timeout=30, **kw
        )

    def sent(self, path_part: str) -> dict[str, Any]:
        return [r for r in mock_requests(self.mock) if path_part in r["path"]][-1]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    tmp = tmp_path_factory.mktemp("azure")
    mock = start_mock(tmp, "--api-key", UPSTREAM_KEY)
    store = sqlite_url(tmp / "azure.db")
    cfg = base_config(
        mock.url,
        store,
        providers={
            "azure": {"kind": "azure", "base_url": mock.url, "api_key": UPSTREAM_KEY, "api_version": API_VERSION},
            "azure-v1": {"kind": "azure", "base_url": mock.url + "/openai/v1", "api_key": UPSTREAM_KEY},
        },
        models={
            "gpt-4o-mini": {"provider": "azure", "upstream_model": "mini-deploy"},
            "gpt-4o": {"provider": "azure-v1", "upstream_model": "gpt4o-deploy"},
            "text-embedding-3-small": {"provider": "azure", "upstream_model": "embed-deploy"},
        },
        teams={
            "app": {"budgets": [{"window": "day", "tokens": 1_000_000}, {"window": "month", "usd": 10}]},
            "broke": {"budgets": [{"window": "day", "tokens": 5}]},
        },
        keys=[{"team": "app", "name": "k-app", "key": "sk-app"}, {"team": "broke", "name": "k-b", "key": "sk-broke"}],
    )
    proc = start_gateway(tmp, cfg, name="azure.yaml")
    yield Gw(proc, mock, store)
    proc.terminate()
    mock.terminate()


PRICES = {
    name: price_of(m)
    for name, m in parse(
        {"providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}}, "models": {"gpt-4o-mini": {"provider": "p"}}},
        env={},
    ).models.items()
}


def test_the_azure_client_is_served_on_deployment_paths_and_billed_as_the_model(gw: Gw) -> None:
    raw = gw.azure().chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSGS, max_tokens=9)
    done = raw.parse()
    assert done.usage is not None and done.usage.completion_tokens == 9
    sent = gw.sent("/chat/completions")
    assert sent["path"] == "/openai/deployments/mini-deploy/chat/completions"  # the provider's deployment
    assert sent["query"] == {"api-version": API_VERSION}
    assert sent["headers"]["api-key"] == UPSTREAM_KEY and "authorization" not in sent["headers"]
    (row,) = [r for r in ledger_rows(gw.store, "app", 1) if r.request_id == raw.headers["x-quotagate-request-id"]]
    assert (row.model, row.input_tokens, row.output_tokens) == ("gpt-4o-mini", done.usage.prompt_tokens, 9)
    assert row.cost_micro_usd == PRICES["gpt-4o-mini"].cost(Usage(done.usage.prompt_tokens, 0, 9, 0))


def test_the_deployment_in_the_path_names_the_model_whatever_the_body_says(gw: Gw) -> None:
    client = gw.azure(azure_deployment="gpt-4o")
    done = client.chat.completions.create(model="not-configured", messages=MSGS, max_tokens=4)
    assert done.usage is not None
    sent = gw.sent("/chat/completions")
    assert sent["path"] == "/openai/v1/chat/completions"  # the v1 form: the deployment is the body's model
    assert sent["body"]["model"] == "gpt4o-deploy" and "api-version" not in sent["query"]


def test_streams_and_embeddings_on_deployment_paths(gw: Gw) -> None:
    client = gw.azure()
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MSGS, max_tokens=6, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6
    emb = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and emb.usage.prompt_tokens > 0
    assert gw.sent("/embeddings")["path"] == "/openai/deployments/embed-deploy/embeddings"


def test_the_v1_form_works_with_a_plain_openai_client(gw: Gw) -> None:
    client = openai.OpenAI(base_url=gw.gw.url + "/openai/v1", api_key="sk-app", max_retries=0)
    done = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, max_tokens=3)
    assert done.usage is not None and done.usage.completion_tokens == 3
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]


def test_a_content_filter_refusal_keeps_azures_details(gw: Gw) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        gw.azure().chat.completions.create(
            model="gpt-4o-mini",
            messages=MSGS,
            extra_body={"mock": {"status": 400, "error_shape": "azure"}},
        )
    assert refused.value.code == "content_filter"
    error = refused.value.response.json()["error"]
    assert error["param"] == "prompt"
    assert error["innererror"]["content_filter_result"]["hate"] == {"filtered": True, "severity": "high"}


def test_governance_refusals_reach_the_azure_client_as_openai_errors(gw: Gw) -> None:
    with pytest.raises(openai.RateLimitError) as refused:
        gw.azure("sk-broke").chat.completions.create(model="gpt-4o-mini", messages=MSGS, max_tokens=50)
    assert refused.value.code == "insufficient_quota"
    with pytest.raises(openai.AuthenticationError):
        gw.azure("sk-wrong").chat.completions.create(model="gpt-4o-mini", messages=MSGS)
