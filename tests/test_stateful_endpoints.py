"""The stateful OpenAI endpoints through a real gateway, driven by the official ``openai`` SDK: each works for
the team that created the object (a deleted one included: the provider answers for it); another team, or an
id quotagate never saw, gets 404 and the provider is never asked; each request is counted in /metrics and
written to the ledger (cost 0, not charged). /v1/responses/compact is a governed model call (charged)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses.response_create_params import Conversation
from prometheus_client.parser import text_string_to_metric_families

from proxy.sse import StreamTap
from tests.gateway import Proc, base_config, mock_requests, start_gateway, start_mock


@dataclass
class Env:
    mock: Proc
    gw: Proc
    db: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp: Path = tmp_path_factory.mktemp("stateful")
    mock = start_mock(tmp)
    db = tmp / "qg.db"
    try:
        gw = start_gateway(tmp, base_config(mock.url, f"sqlite:///{db}"))
    except BaseException:
        mock.kill()
        raise
    try:
        yield Env(mock, gw, db)
    finally:
        gw.terminate()
        mock.terminate()


def client(env: Env, key: str = "sk-t1") -> openai.OpenAI:
    return openai.OpenAI(base_url=env.gw.url + "/v1", api_key=key, max_retries=0)


def forget_upstream(env: Env) -> None:
    httpx.delete(env.mock.url + "/_mock/requests")


def upstream_paths(env: Env) -> list[str]:
    return [f"{r['method']} {r['path']}" for r in mock_requests(env.mock)]


def not_found(call: Callable[[], Any], object_id: str, code: str = "not_found") -> None:
    """``call`` is refused with OpenAI's 404 naming ``object_id``."""
    with pytest.raises(openai.NotFoundError) as caught:
        call()
    err = caught.value
    assert err.status_code == 404 and err.type == "invalid_request_error" and err.code == code
    assert f"'{object_id}'" in err.message


def response(env: Env, key: str = "sk-t1", **kw: Any) -> Any:
    return client(env, key).responses.create(model="gpt-4o-mini", input="Say hi.", **kw)


def stored_completion(env: Env, key: str = "sk-t1", **metadata: str) -> Any:
    return client(env, key).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hi."}], store=True, metadata=metadata
    )


# ---- the owner ------------------------------------------------------------------------------------------
def test_the_owner_reads_counts_continues_and_deletes_a_response(env: Env) -> None:
    c = client(env)
    first = response(env, instructions="Be brief.")
    assert c.responses.retrieve(first.id).output_text == first.output_text
    items = c.responses.input_items.list(first.id)
    assert [i.type for i in items.data] == ["message"]
    counted = c.responses.input_tokens.count(model="gpt-4o-mini", input="Say hi.")
    assert counted.input_tokens > 0
    assert c.responses.input_tokens.count(previous_response_id=first.id, input="And more.").input_tokens > 0
    second = c.responses.create(model="gpt-4o-mini", input="Again.", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    c.responses.delete(first.id)
    forget_upstream(env)
    # still the team's: whether it is gone is the provider's to say, and its 404 is relayed
    with pytest.raises(openai.NotFoundError, match=first.id):
        c.responses.retrieve(first.id)
    assert upstream_paths(env) == [f"GET /v1/responses/{first.id}"]
    forget_upstream(env)
    not_found(lambda: client(env, "sk-t2").responses.retrieve(first.id), first.id)  # and no one else's
    assert upstream_paths(env) == []
    assert c.responses.retrieve(second.id).id == second.id


def test_a_streamed_response_is_recorded_from_its_created_event(env: Env) -> None:
    c = client(env)
    with c.responses.stream(model="gpt-4o-mini", input="Stream it.") as stream:
        created = next(e for e in stream if e.type == "response.created")
        stream.until_done()
    assert c.responses.retrieve(created.response.id).status == "completed"


def test_the_owner_cancels_a_background_response(env: Env) -> None:
    queued = response(env, background=True)
    assert queued.status == "queued"
    assert client(env).responses.cancel(queued.id).status == "cancelled"


def test_the_owner_reads_updates_lists_and_deletes_a_stored_completion(env: Env) -> None:
    c = client(env)
    made = stored_completion(env, test="owner")
    assert c.chat.completions.retrieve(made.id).choices[0].message.content == made.choices[0].message.content
    assert c.chat.completions.update(made.id, metadata={"test": "owner", "x": "1"}).metadata == {
        "test": "owner",
        "x": "1",
    }
    assert [m.content for m in c.chat.completions.messages.list(made.id)] == ["Say hi."]
    assert [x.id for x in c.chat.completions.list(metadata={"test": "owner"})] == [made.id]
    c.chat.completions.delete(made.id)
    assert list(c.chat.completions.list(metadata={"test": "owner"})) == []
    forget_upstream(env)
    with pytest.raises(openai.NotFoundError, match=made.id):  # the provider's answer, relayed
        c.chat.completions.retrieve(made.id)
    assert upstream_paths(env) == [f"GET /v1/chat/completions/{made.id}"]


def test_a_streamed_completion_is_recorded_from_its_first_chunk(env: Env) -> None:
    c = client(env)
    chunks = list(
        c.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], store=True, stream=True
        )
    )
    assert c.chat.completions.retrieve(chunks[0].id).id == chunks[0].id


def test_the_list_holds_only_the_callers_and_pages_consistently(env: Env) -> None:
    mine = []
    for _ in range(3):  # interleaved with another team's, in the provider's one list
        mine.append(stored_completion(env, test="paging").id)
        stored_completion(env, "sk-t2", test="paging")
    page = client(env).chat.completions.list(metadata={"test": "paging"}, limit=2)
    assert [x.id for x in page.data] == mine[:2] and page.has_more is True
    assert page.first_id == mine[0] and page.last_id == mine[1]  # type: ignore[attr-defined]
    assert [x.id for x in page] == mine  # the SDK pages on with after=last_id
    last = client(env).chat.completions.list(metadata={"test": "paging"}, limit=2, after=mine[1])
    assert [x.id for x in last.data] == mine[2:] and last.has_more is False
    theirs = [x.id for x in client(env, "sk-t2").chat.completions.list(metadata={"test": "paging"})]
    assert len(theirs) == 3 and not set(theirs) & set(mine)


def test_a_model_is_read_from_config_for_the_callers_team(env: Env) -> None:
    forget_upstream(env)
    assert client(env).models.retrieve("gpt-4o").owned_by == "mock"
    assert client(env, "sk-t2").models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    for model in ("gpt-4o", "no-such-model"):  # t2 may use only gpt-4o-mini
        with pytest.raises(openai.NotFoundError) as caught:
            client(env, "sk-t2").models.retrieve(model)
        assert caught.value.code == "model_not_found"
    assert upstream_paths(env) == []


# ---- another team ---------------------------------------------------------------------------------------
def test_another_team_can_neither_see_nor_touch_a_teams_objects(env: Env) -> None:
    resp = response(env, background=True)
    made = stored_completion(env, test="cross")
    other = client(env, "sk-t2")
    forget_upstream(env)
    not_found(lambda: other.responses.retrieve(resp.id), resp.id)
    not_found(lambda: other.responses.delete(resp.id), resp.id)
    not_found(lambda: other.responses.cancel(resp.id), resp.id)
    not_found(lambda: other.responses.input_items.list(resp.id), resp.id)
    not_found(
        lambda: other.responses.create(model="gpt-4o-mini", input="Go on.", previous_response_id=resp.id),
        resp.id,
        "previous_response_not_found",
    )
    not_found(
        lambda: other.responses.input_tokens.count(previous_response_id=resp.id, input="x"),
        resp.id,
        "previous_response_not_found",
    )
    not_found(lambda: other.chat.completions.retrieve(made.id), made.id)
    not_found(lambda: other.chat.completions.update(made.id, metadata={"k": "v"}), made.id)
    not_found(lambda: other.chat.completions.delete(made.id), made.id)
    not_found(lambda: other.chat.completions.messages.list(made.id), made.id)
    not_found(lambda: other.chat.completions.list(after=made.id), made.id)
    assert upstream_paths(env) == []  # not one of these reached the provider
    assert [x.id for x in other.chat.completions.list(metadata={"test": "cross"})] == []
    # and nothing was done to them: the owner still has both, untouched
    assert client(env).responses.retrieve(resp.id).status == "queued"
    assert client(env).chat.completions.retrieve(made.id).metadata == {"test": "cross"}


def test_an_id_quotagate_never_saw_is_404_without_asking_the_provider(env: Env) -> None:
    c = client(env)
    forget_upstream(env)
    not_found(lambda: c.responses.retrieve("resp_never"), "resp_never")
    not_found(lambda: c.responses.cancel("resp_never"), "resp_never")
    not_found(lambda: c.chat.completions.retrieve("chatcmpl-never"), "chatcmpl-never")
    not_found(
        lambda: c.responses.create(model="gpt-4o-mini", input="x", previous_response_id="resp_never"),
        "resp_never",
        "previous_response_not_found",
    )
    # a conversation is a team's only once created through quotagate's /v1/conversations
    not_found(lambda: c.conversations.retrieve("conv_1"), "conv_1")
    not_found(lambda: c.responses.create(model="gpt-4o-mini", input="x", conversation="conv_1"), "conv_1")
    not_found(lambda: c.responses.create(model="gpt-4o-mini", input="x", conversation={"id": "conv_2"}), "conv_2")
    assert upstream_paths(env) == []


def test_the_list_limit_is_the_providers_to_validate(env: Env) -> None:
    c = client(env)
    stored_completion(env, test="limit")
    for limit in (0, 101):  # quotagate's own page size stays sane; the client's value goes upstream as given
        forget_upstream(env)
        with pytest.raises(openai.BadRequestError) as caught:  # the mock, like OpenAI, takes 1..100
            c.chat.completions.list(limit=limit, metadata={"test": "limit"})
        assert caught.value.param == "limit"
        assert [r["query"]["limit"] for r in mock_requests(env.mock)] == [str(limit)]
    assert len(c.chat.completions.list(limit=1, metadata={"test": "limit"}).data) == 1


# ---- conversations --------------------------------------------------------------------------------------
def test_the_owner_creates_reads_updates_fills_continues_and_deletes_a_conversation(env: Env) -> None:
    c = client(env)
    conv = c.conversations.create(items=[{"role": "user", "content": "Hello."}], metadata={"topic": "demo"})
    assert c.conversations.retrieve(conv.id).metadata == {"topic": "demo"}
    assert c.conversations.update(conv.id, metadata={"topic": "other"}).metadata == {"topic": "other"}
    added = c.conversations.items.create(conv.id, items=[{"role": "user", "content": "More."}])
    item_id = added.data[0].id
    assert item_id is not None
    assert c.conversations.items.retrieve(item_id, conversation_id=conv.id).id == item_id
    reply = c.responses.create(model="gpt-4o-mini", input="Go on.", conversation=conv.id)
    assert reply.output_text
    assert len(c.conversations.items.list(conv.id).data) == 4  # two added, the new input, the reply
    c.conversations.items.delete(item_id, conversation_id=conv.id)
    assert len(c.conversations.items.list(conv.id).data) == 3
    c.conversations.delete(conv.id)
    forget_upstream(env)
    with pytest.raises(openai.NotFoundError, match=conv.id):  # still the team's; the provider says it is gone
        c.conversations.retrieve(conv.id)
    assert upstream_paths(env) == [f"GET /v1/conversations/{conv.id}"]


def test_another_team_can_neither_see_nor_use_a_teams_conversation(env: Env) -> None:
    c = client(env)
    conv = c.conversations.create(items=[{"role": "user", "content": "Mine."}])
    item_id = c.conversations.items.list(conv.id).data[0].id
    assert item_id is not None
    other = client(env, "sk-t2")
    forget_upstream(env)
    not_found(lambda: other.conversations.retrieve(conv.id), conv.id)
    not_found(lambda: other.conversations.update(conv.id, metadata={"k": "v"}), conv.id)
    not_found(lambda: other.conversations.delete(conv.id), conv.id)
    not_found(lambda: other.conversations.items.list(conv.id), conv.id)
    not_found(lambda: other.conversations.items.create(conv.id, items=[{"role": "user", "content": "x"}]), conv.id)
    not_found(lambda: other.conversations.items.retrieve(item_id, conversation_id=conv.id), conv.id)
    not_found(lambda: other.conversations.items.delete(item_id, conversation_id=conv.id), conv.id)
    conversations: tuple[Conversation, ...] = (conv.id, {"id": conv.id})
    for conversation in conversations:  # continuing it is refused before anything is reserved
        with pytest.raises(openai.NotFoundError) as caught:
            other.responses.create(model="gpt-4o-mini", input="Go on.", conversation=conversation)
        assert caught.value.param == "conversation" and f"'{conv.id}'" in caught.value.message
    not_found(lambda: other.responses.input_tokens.count(model="gpt-4o-mini", conversation=conv.id), conv.id)
    assert upstream_paths(env) == []
    assert [i.id for i in c.conversations.items.list(conv.id).data] == [item_id]  # untouched


# ---- compaction: governed, and continues only the team's own response ------------------------------------
def test_compact_is_charged_and_continues_only_the_teams_response(env: Env) -> None:
    c = client(env)
    first = response(env)
    raw = c.responses.with_raw_response.compact(model="gpt-4o-mini", input="Summarise this, please.")
    compacted = raw.parse()
    assert compacted.object == "response.compaction" and compacted.output[-1].type == "compaction"
    assert c.responses.compact(model="gpt-4o-mini", previous_response_id=first.id).usage.output_tokens > 0
    rows = ledger_rows(env, {raw.headers["x-quotagate-request-id"]})
    assert [(r[1], r[2], r[4], r[5], r[7]) for r in rows] == [("responses.compact", "t1", 200, "ok", 1)]
    assert rows[0][6] > 0 and rows[0][8] == compacted.usage.input_tokens  # priced from the provider's usage
    forget_upstream(env)
    not_found(
        lambda: client(env, "sk-t2").responses.compact(model="gpt-4o-mini", previous_response_id=first.id),
        first.id,
        "previous_response_not_found",
    )
    no_model = httpx.post(
        env.gw.url + "/v1/responses/compact", json={"input": "x"}, headers={"Authorization": "Bearer sk-t1"}
    )
    assert no_model.status_code == 400 and no_model.json()["error"]["param"] == "model"
    assert upstream_paths(env) == []


# ---- models ---------------------------------------------------------------------------------------------
def test_a_model_is_deleted_upstream_only_for_a_team_that_may_use_it(env: Env) -> None:
    forget_upstream(env)
    assert client(env).models.delete("gpt-4o").deleted is True
    assert upstream_paths(env) == ["DELETE /v1/models/gpt-4o"]
    forget_upstream(env)
    for model in ("gpt-4o", "no-such-model"):  # t2 may use only gpt-4o-mini
        with pytest.raises(openai.NotFoundError) as caught:
            client(env, "sk-t2").models.delete(model)
        assert caught.value.code == "model_not_found"
    assert upstream_paths(env) == []


def test_an_unauthenticated_caller_is_refused_before_any_lookup(env: Env) -> None:
    with pytest.raises(openai.AuthenticationError):
        client(env, "sk-wrong").responses.retrieve("resp_never")


# ---- counted --------------------------------------------------------------------------------------------
def requests_counted(env: Env) -> dict[tuple[str, str, str], float]:
    text = httpx.get(env.gw.url + "/metrics").text
    return {
        (s.labels["team"], s.labels["model"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(text)
        if family.name == "quotagate_requests"
        for s in family.samples
        if s.name == "quotagate_requests_total"
    }


def stateful_durations(env: Env) -> float:
    text = httpx.get(env.gw.url + "/metrics").text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        if family.name == "gen_ai_client_operation_duration_seconds"
        for s in family.samples
        if s.name.endswith("_count") and s.labels["gen_ai_operation_name"] == "stateful"
    )


def ledger_rows(env: Env, request_ids: set[str]) -> list[tuple[Any, ...]]:
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(env.db) as con:
            rows = con.execute(
                "SELECT request_id, endpoint, team, provider, status, outcome, cost_micro_usd, charged, input_tokens "
                "FROM ledger"
            ).fetchall()
        found = [r for r in rows if r[0] in request_ids]
        if len(found) == len(request_ids) or time.monotonic() > deadline:
            return sorted(found, key=lambda r: str(r[1]))
        time.sleep(0.05)


def test_each_request_is_counted_and_in_the_ledger_at_no_cost(env: Env) -> None:
    made = response(env)
    before, durations = requests_counted(env), stateful_durations(env)
    ok = client(env).responses.with_raw_response.retrieve(made.id)
    with pytest.raises(openai.NotFoundError) as refused:
        client(env, "sk-t2").responses.retrieve(made.id)
    listed = client(env).chat.completions.with_raw_response.list(limit=1)
    after = requests_counted(env)
    assert after[("t1", "other", "ok")] - before[("t1", "other", "ok")] == 2
    assert after[("t2", "other", "invalid_request")] - before.get(("t2", "other", "invalid_request"), 0) == 1
    assert stateful_durations(env) - durations == 3
    ids = {
        ok.headers["x-quotagate-request-id"],
        refused.value.response.headers["x-quotagate-request-id"],
        listed.headers["x-quotagate-request-id"],
    }
    rows = ledger_rows(env, ids)
    assert [(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]) for r in rows] == [
        ("chat.list", "t1", "", 200, "ok", 0, 0, None),
        ("responses.get", "t1", "mock", 200, "ok", 0, 0, None),
        ("responses.get", "t2", "", 404, "invalid_request", 0, 0, None),
    ]
    usage = httpx.get(
        env.gw.url + "/admin/usage", params={"team": "t2"}, headers={"Authorization": "Bearer admin-secret"}
    ).json()
    unmodelled = [row for row in usage["teams"][0]["usage"] if row["model"] == ""]  # the refusal named no model
    assert unmodelled and unmodelled[0]["requests"] >= 1
    assert unmodelled[0]["input_tokens"] == unmodelled[0]["output_tokens"] == unmodelled[0]["cost_micro_usd"] == 0


# ---- the stream tap reads the id of the object streamed -------------------------------------------------
@pytest.mark.parametrize("strip", [False, True])
def test_stream_tap_reads_the_first_events_id(strip: bool) -> None:
    chat = StreamTap(strip_usage_chunk=strip)
    for piece in (b': ping\n\ndata: {"id":"chatcmpl-1","obj', b'ect":"chat.completion.chunk","choices":[]}\r\n\r\n'):
        chat.feed(piece)
    chat.feed(b'data: {"id":"chatcmpl-2","choices":[]}\n\n')
    assert chat.object_id == "chatcmpl-1"
    responses = StreamTap(strip_usage_chunk=strip)
    responses.feed(b'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_1"}}')
    responses.finish()
    assert responses.object_id == "resp_1"
    empty = StreamTap(strip_usage_chunk=strip)
    empty.feed(b"data: [DONE]\n\n")
    assert empty.object_id is None
