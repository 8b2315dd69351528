"""Anthropic accounting, unit by unit: usage normalisation (one rule), prices of cache writes and reads
and of the long-context tier to the micro-dollar, the stream reader (running totals, cut streams), the
error shape, the worst case of a request that writes the cache, and the learned pre-count factor."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.count import Counter
from proxy.count.anthropic import image_tokens
from proxy.errors import BudgetExceeded, ContextLengthExceeded, RateLimited, UpstreamError
from proxy.precount import Precount
from proxy.pricing import price_of
from proxy.protocols.anthropic_messages import MESSAGES, error_body
from proxy.protocols.anthropic_stream import AnthropicTap
from proxy.settings import Settings, parse
from proxy.usage import Usage, from_anthropic


def _settings(extra_models: dict[str, Any] | None = None) -> Settings:
    return parse(
        {
            "store": "memory://",
            "providers": {
                "anthropic": {"kind": "anthropic", "base_url": "https://api.anthropic.com/v1", "api_key": "k"}
            },
            "models": {
                "claude-sonnet-4-5": {"provider": "anthropic"},
                "claude-haiku-4-5": {"provider": "anthropic"},
                **(extra_models or {}),
            },
            "teams": {"a": {}},
            "keys": [{"key": "sk-a", "team": "a"}],
        }
    )


# -- usage: one rule -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"input_tokens": 12, "output_tokens": 7}, Usage(12, 0, 7, None, 0, 0)),
        (  # cache reads and writes are input; no split: the default 5-minute lifetime
            {"input_tokens": 3, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 40, "output_tokens": 5},
            Usage(143, 100, 5, None, 40, 0),
        ),
        (  # the split by lifetime
            {
                "input_tokens": 1,
                "cache_creation_input_tokens": 300,
                "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
                "output_tokens": 2,
                "output_tokens_details": {"thinking_tokens": 1},
            },
            Usage(301, 0, 2, 1, 100, 200),
        ),
        (  # a total above its split (a delta's running total): the rest at the default lifetime
            {
                "input_tokens": 1,
                "cache_creation_input_tokens": 350,
                "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
                "output_tokens": 2,
            },
            Usage(351, 0, 2, None, 150, 200),
        ),
        ({"output_tokens": 9}, Usage(None, 0, 9, None, 0, 0)),
        ("not an object", Usage()),
    ],
)
def test_anthropic_usage_is_normalised_by_one_rule(raw: Any, expected: Usage) -> None:
    assert from_anthropic(raw) == expected


# -- prices, hand-computed (claude-sonnet-4-5: in 3.00, read 0.30, write 5m 3.75, 1h 6.00, out 15.00) ---


@pytest.mark.parametrize(
    ("raw", "micro_usd"),
    [
        # 100 x 3 + 1000 x 3.75 + 50 x 15 = 300 + 3750 + 750
        (
            {"input_tokens": 100, "cache_creation_input_tokens": 1000, "output_tokens": 50},
            4800,
        ),
        # 10 x 3 + 2000 x 6.00 + 20 x 15 = 30 + 12000 + 300
        (
            {
                "input_tokens": 10,
                "cache_creation_input_tokens": 2000,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2000},
                "output_tokens": 20,
            },
            12330,
        ),
        # 5 x 3 + 10000 x 0.30 + 100 x 15 = 15 + 3000 + 1500
        ({"input_tokens": 5, "cache_read_input_tokens": 10000, "output_tokens": 100}, 4515),
        # long context: 150000 + 60000 read = 210000 > 200000, the whole request at the tier:
        # 150000 x 6.00 + 60000 x 0.60 + 1000 x 22.50 = 900000 + 36000 + 22500
        ({"input_tokens": 150000, "cache_read_input_tokens": 60000, "output_tokens": 1000}, 958500),
        # long context with writes: 199000 + 2000 (5m) = 201000 > 200000:
        # 199000 x 6.00 + 2000 x 7.50 + 10 x 22.50 = 1194000 + 15000 + 225
        ({"input_tokens": 199000, "cache_creation_input_tokens": 2000, "output_tokens": 10}, 1209225),
    ],
)
def test_cache_writes_reads_and_the_long_context_tier_cost_what_anthropic_bills(raw: Any, micro_usd: int) -> None:
    price = price_of(_settings().models["claude-sonnet-4-5"])
    assert price.cost(from_anthropic(raw)) == micro_usd
    assert price.unpriced == frozenset()


def test_a_model_without_cache_write_prices_charges_input_and_names_the_tokens_unpriced() -> None:
    s = _settings({"house-claude": {"provider": "anthropic", "price": {"input": 2, "output": 10}}})
    price = price_of(s.models["house-claude"])
    usage = from_anthropic({"input_tokens": 10, "cache_creation_input_tokens": 90, "output_tokens": 1})
    assert price.cost(usage) == 100 * 2 + 10  # writes at the input rate
    assert price.unpriced_tokens(usage) == {"cache_write_5m": 90}


def test_the_worst_case_of_a_request_that_writes_the_cache_is_priced_at_the_dearest_write_rate() -> None:
    price = price_of(_settings().models["claude-sonnet-4-5"])
    assert price.worst_case(1000, 100) == 1000 * 3 + 100 * 15
    assert price.worst_case(1000, 100, cache_writes=True) == 1000 * 6 + 100 * 15


# -- the stream: message_start, then running totals --------------------------------------------------


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


_START = _event(
    "message_start",
    {
        "message": {
            "id": "msg_1",
            "usage": {"input_tokens": 20, "cache_read_input_tokens": 500, "output_tokens": 1},
        }
    },
)


def _delta(text: str) -> bytes:
    return _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})


def test_stream_usage_is_message_start_merged_with_the_last_delta_never_added() -> None:
    tap = AnthropicTap()
    stream = (
        _START
        + _delta("Hello")
        + _event("message_delta", {"delta": {"stop_reason": None}, "usage": {"output_tokens": 10}})
        + _delta(" world")
        + _event("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 25}})
        + _event("message_stop", {})
    )
    relayed = b"".join(tap.feed(stream[i : i + 7]) for i in range(0, len(stream), 7)) + tap.finish()
    assert relayed == stream  # byte-transparent
    assert tap.usage == Usage(520, 500, 25, None, 0, 0)
    assert tap.object_id == "msg_1"
    assert tap.raw_usage == {"input_tokens": 20, "cache_read_input_tokens": 500, "output_tokens": 25}
    assert tap.output_text() == "Hello world"


def test_a_stream_cut_before_its_usage_delta_leaves_the_output_to_be_counted() -> None:
    tap = AnthropicTap()
    tap.feed(_START + _delta("partial answer"))
    tap.finish()
    assert tap.usage is not None
    assert tap.usage.input == 520
    assert tap.usage.output is None  # message_start's output_tokens is a placeholder, not the output
    assert tap.output_text() == "partial answer"


# -- errors in Anthropic's shape ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "status", "kind"),
    [
        (BudgetExceeded("team a is over budget"), 429, "rate_limit_error"),
        (RateLimited("slow down", kind="requests", headers={"retry-after": "3"}), 429, "rate_limit_error"),
        (ContextLengthExceeded("too long"), 400, "invalid_request_error"),
        (UpstreamError(529, {"type": "overloaded_error", "message": "Overloaded"}), 529, "overloaded_error"),
    ],
)
def test_errors_on_messages_are_in_anthropics_shape(err: Any, status: int, kind: str) -> None:
    got_status, headers, body = MESSAGES.protocol.render(err)
    assert got_status == status
    assert orjson.loads(body) == {"type": "error", "error": {"type": kind, "message": err.message}}
    assert error_body(err)["error"]["type"] == kind
    for name, value in err.headers.items():
        assert headers[name] == value


# -- counting and the pre-count factor ------------------------------------------------------------------


def test_image_tokens_follow_the_vision_guide() -> None:
    assert image_tokens(1000, 1000) == 1334  # 1,000,000 / 750, rounded up
    assert image_tokens(200, 200) == 54
    assert image_tokens(8000, 8000) == 1600  # scaled to 1568 px, capped


def test_the_local_count_is_inexact_and_the_bound_is_learned_from_traffic() -> None:
    s = _settings(
        {"learned": {"provider": "anthropic", "price": {"input": 1, "output": 1}, "precount": {"min_samples": 5}}}
    )
    counter = Counter()
    est = counter.anthropic("Be brief.", [{"role": "user", "content": "Hello there"}], None, model="x", encoding=None)
    assert not est.exact and est.tokens > 0
    pre = Precount(s)
    assert pre.factor("learned").value == 1.5 and not pre.factor("learned").learned  # before any traffic
    for ratio in (1.10, 1.12, 1.15, 1.11, 1.13, 1.14):
        pre.observe("learned", 1000, int(1000 * ratio))
    f = pre.factor("learned")
    assert f.learned and f.samples == 6
    assert f.value == pytest.approx(1.15 * 1.02)  # the highest of few samples, plus the margin
    bound = pre.bound("learned", est)
    assert bound.local == est.tokens and bound.tokens >= est.tokens * 1.15
    assert bound.parts.system + bound.parts.tools + bound.parts.history + bound.parts.new == bound.tokens


def test_a_version_1_sqlite_file_gains_the_new_ledger_columns(tmp_path: Path) -> None:
    from proxy.store import sqlite_ledger
    from proxy.store.sqlite_schema import SCHEMA_VERSION, create_schema

    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    old_columns = [
        c for c in sqlite_ledger.COLUMNS if c not in ("cache_write_5m_tokens", "cache_write_1h_tokens", "usage_raw")
    ]
    con.execute(f"CREATE TABLE ledger ({', '.join(old_columns)})")
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    con.execute("INSERT INTO schema_version VALUES (1)")
    con.commit()
    create_schema(con)
    have = {r[1] for r in con.execute("PRAGMA table_info(ledger)")}
    assert set(sqlite_ledger.COLUMNS) <= have
    assert con.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)
