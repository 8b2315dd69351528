"""proxy.policy, pure: context cap (reject / trim), output cap (clamp / inject / defaults), model access."""

from __future__ import annotations

from typing import Any

import pytest

from proxy import policy
from proxy.count import Counter
from proxy.errors import ContextLengthExceeded, ModelNotFound
from proxy.settings import ModelSettings, TeamSettings, parse

# Each message weighs what its "w" says; the count is their sum, so every expectation is plain arithmetic.


def weight(messages: list[Any]) -> int:
    return sum(int(m["w"]) for m in messages)


def msg(role: str, w: int, **extra: Any) -> dict[str, Any]:
    return {"role": role, "content": f"{role}-{w}", "w": w, **extra}


def call(call_id: str, w: int) -> dict[str, Any]:
    return msg("assistant", w, tool_calls=[{"id": call_id, "type": "function", "function": {"name": "f"}}])


def tool(call_id: str, w: int) -> dict[str, Any]:
    return msg("tool", w, tool_call_id=call_id)


def orphaned_tools(messages: list[Any]) -> list[Any]:
    """Tool results whose call is not in an earlier assistant message of the same list."""
    seen: set[str] = set()
    orphans = []
    for m in messages:
        for c in m.get("tool_calls") or ():
            seen.add(c["id"])
        if m["role"] == "tool" and m["tool_call_id"] not in seen:
            orphans.append(m)
    return orphans


CONVERSATION = [
    msg("system", 5),  # 0 pinned
    msg("user", 10),  # 1 oldest turn
    msg("assistant", 10),  # 2
    call("c1", 3),  # 3 leaves with 4 and 5
    tool("c1", 20),  # 4
    tool("c1", 20),  # 5
    msg("developer", 4),  # 6 pinned, even mid-conversation
    msg("assistant", 7),  # 7
    msg("user", 6),  # 8 latest user turn: stays with everything after it
    call("c2", 2),  # 9
    tool("c2", 30),  # 10 after the latest user turn: never dropped
]
TOTAL = 117


def test_conversation_weight() -> None:
    assert weight(CONVERSATION) == TOTAL


def test_trim_under_cap_changes_nothing() -> None:
    kept, tokens, dropped = policy.trim("t", TOTAL, CONVERSATION, weight)
    assert kept is CONVERSATION
    assert (tokens, dropped) == (TOTAL, 0)


@pytest.mark.parametrize(
    ("cap", "kept_idx"),
    [
        (TOTAL - 1, [0, 2, 3, 4, 5, 6, 7, 8, 9, 10]),  # the oldest user turn goes first
        (TOTAL - 10, [0, 2, 3, 4, 5, 6, 7, 8, 9, 10]),  # exactly fits after one drop
        (TOTAL - 11, [0, 3, 4, 5, 6, 7, 8, 9, 10]),
        (TOTAL - 20, [0, 3, 4, 5, 6, 7, 8, 9, 10]),
        (TOTAL - 21, [0, 6, 7, 8, 9, 10]),  # the tool call leaves with both its results
        (TOTAL - 63, [0, 6, 7, 8, 9, 10]),
        (TOTAL - 64, [0, 6, 8, 9, 10]),
        (5 + 4 + 6 + 2 + 30, [0, 6, 8, 9, 10]),  # the floor: pinned + latest turn and after
    ],
)
def test_trim_drops_oldest_groups_until_it_fits(cap: int, kept_idx: list[int]) -> None:
    kept, tokens, dropped = policy.trim("t", cap, CONVERSATION, weight)
    assert kept == [CONVERSATION[i] for i in kept_idx]
    assert tokens == weight(kept) <= cap
    assert dropped == TOTAL - tokens
    assert orphaned_tools(kept) == []
    assert kept[0]["role"] == "system"


def test_trim_rejects_when_even_the_floor_does_not_fit() -> None:
    floor = 5 + 4 + 6 + 2 + 30
    with pytest.raises(ContextLengthExceeded) as e:
        policy.trim("team-a", floor - 1, CONVERSATION, weight)
    assert e.value.status == 400
    assert e.value.code == "context_length_exceeded"
    assert e.value.param == "messages"
    # OpenAI's own wording first, so that clients matching on it (LiteLLM's ContextWindowExceededError looks
    # for "this model's maximum context length is", LangChain for the code) recognise it; the team cap after.
    assert e.value.message == (
        f"This model's maximum context length is {floor - 1} tokens. However, your messages resulted in "
        f"{floor} tokens. Please reduce the length of the messages. (quotagate: team 'team-a' allows at most "
        f"{floor - 1} input tokens per request, max_input_tokens.)"
    )  # the count is the one after dropping all it could
    assert "this model's maximum context length is" in e.value.message.lower()


def test_trim_survives_entries_that_are_not_messages() -> None:
    """Whatever the provider will make of them, odd entries are ordinary droppable turns, never pinned."""
    odd: list[Any] = ["hello", 42, {"role": ["system"], "content": "x"}, None, msg("user", 6)]

    def count(messages: list[Any]) -> int:
        return sum(m["w"] if isinstance(m, dict) and "w" in m else 10 for m in messages)

    kept, tokens, dropped = policy.trim("t", 16, odd, count)
    assert kept == [None, odd[4]]
    assert (tokens, dropped) == (16, 30)
    with pytest.raises(ContextLengthExceeded):
        policy.trim("t", 5, odd, count)


def test_trim_with_nothing_droppable_reports_the_original_count() -> None:
    msgs = [msg("system", 50), msg("user", 60)]
    with pytest.raises(ContextLengthExceeded) as e:
        policy.trim("t", 100, msgs, weight)
    assert "resulted in 110 tokens" in e.value.message


def test_trim_keeps_every_trailing_message_when_there_is_no_user_turn() -> None:
    msgs = [msg("system", 1), msg("assistant", 10), msg("assistant", 5)]
    kept, tokens, dropped = policy.trim("t", 6, msgs, weight)
    assert kept == [msgs[0], msgs[2]]
    assert (tokens, dropped) == (6, 10)


def test_trim_with_the_real_counter_keeps_system_and_latest_turn() -> None:
    counter = Counter()

    def count(m: list[Any]) -> int:
        return counter.chat(m, None, model="gpt-4o-mini", encoding=None).tokens

    msgs = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "tell me a story " * 40},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "x", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "x", "content": "result " * 40},
        {"role": "user", "content": "and now?"},
    ]
    floor = count([msgs[0], msgs[4]])
    kept, tokens, dropped = policy.trim("t", floor, msgs, count)
    assert kept == [msgs[0], msgs[4]]
    assert tokens == floor
    assert dropped == count(msgs) - floor > 0


# ---- enforce_context ------------------------------------------------------------------------------------


def test_enforce_context_without_cap_or_under_it_is_a_no_op() -> None:
    assert policy.enforce_context("t", None, 10**6, CONVERSATION, weight) == (None, 10**6, 0)
    assert policy.enforce_context("t", TeamSettings(), 10**6, CONVERSATION, weight) == (None, 10**6, 0)
    team = TeamSettings(max_input_tokens=TOTAL, on_context_overflow="reject")
    assert policy.enforce_context("t", team, TOTAL, CONVERSATION, weight) == (None, TOTAL, 0)


def test_enforce_context_reject_names_the_cap_and_the_count() -> None:
    team = TeamSettings(max_input_tokens=100, on_context_overflow="reject")
    with pytest.raises(ContextLengthExceeded) as e:
        policy.enforce_context("team-r", team, TOTAL, CONVERSATION, weight)
    assert "maximum context length is 100 tokens" in e.value.message
    assert "team 'team-r' allows at most 100 input tokens" in e.value.message
    assert f"resulted in {TOTAL} tokens" in e.value.message
    assert e.value.param == "messages"


def test_enforce_context_names_the_prompt_field_of_the_endpoint() -> None:
    team = TeamSettings(max_input_tokens=5, on_context_overflow="trim")
    with pytest.raises(ContextLengthExceeded) as e:
        policy.enforce_context("t", team, 9, None, weight, param="input")
    assert e.value.param == "input" and e.value.code == "context_length_exceeded"


def test_enforce_context_trim() -> None:
    team = TeamSettings(max_input_tokens=TOTAL - 21, on_context_overflow="trim")
    kept, tokens, trimmed = policy.enforce_context("t", team, TOTAL, CONVERSATION, weight)
    assert kept == [CONVERSATION[i] for i in (0, 6, 7, 8, 9, 10)]
    assert (tokens, trimmed) == (TOTAL - 63, 63)


def test_enforce_context_trim_without_messages_rejects() -> None:
    team = TeamSettings(max_input_tokens=5, on_context_overflow="trim")
    with pytest.raises(ContextLengthExceeded, match="resulted in 9 tokens"):
        policy.enforce_context("t", team, 9, None, weight)


# ---- output cap ------------------------------------------------------------------------------------------

MODEL = ModelSettings(provider="p", max_output_tokens=16384, context_window=128000)


@pytest.mark.parametrize(
    ("requested", "team_cap", "expected"),
    [
        (500, 50, policy.OutputCap(50, 50)),  # clamped
        (None, 50, policy.OutputCap(50, 50)),  # injected
        (50, 50, policy.OutputCap(50, None)),  # at the cap: body untouched
        (20, 50, policy.OutputCap(20, None)),
        (0, 50, policy.OutputCap(0, None)),
    ],
)
def test_output_cap_with_team_cap(requested: int | None, team_cap: int, expected: policy.OutputCap) -> None:
    team = TeamSettings(max_output_tokens=team_cap)
    assert policy.output_cap(requested, team, MODEL, None, 100) == expected


def test_output_cap_defaults_without_team_cap() -> None:
    bare = ModelSettings(provider="p")
    assert policy.output_cap(300, None, MODEL, 16, 100) == policy.OutputCap(300, None)
    assert policy.output_cap(None, TeamSettings(), MODEL, 16, 100) == policy.OutputCap(16, None)
    assert policy.output_cap(None, None, MODEL, None, 100) == policy.OutputCap(16384, None)
    ctx_only = ModelSettings(provider="p", context_window=1000)
    assert policy.output_cap(None, None, ctx_only, None, 300) == policy.OutputCap(700, None)
    assert policy.output_cap(None, None, ctx_only, None, 3000) == policy.OutputCap(0, None)
    assert policy.output_cap(None, None, bare, None, 100) == policy.OutputCap(policy.FALLBACK_OUTPUT_CAP, None)


def test_output_reservation_never_exceeds_what_the_model_can_produce() -> None:
    """A cap of 2**64 is the provider's to refuse; reserving it would overflow the stores' integers."""
    assert policy.output_cap(2**64, None, MODEL, None, 100) == policy.OutputCap(128000, None)
    huge_team = TeamSettings(max_output_tokens=10**30)
    assert policy.output_cap(None, huge_team, MODEL, None, 100) == policy.OutputCap(128000, 10**30)
    bare = ModelSettings(provider="p")
    assert policy.output_cap(2**64, None, bare, None, 100) == policy.OutputCap(policy.MAX_RESERVED_OUTPUT, None)


# ---- input out of sight (stored context, no prompt field) -------------------------------------------------


def test_unseen_input_bound_is_the_context_window_capped_by_the_team() -> None:
    assert policy.unseen_input_bound(None, MODEL) == 128000
    assert policy.unseen_input_bound(TeamSettings(), MODEL) == 128000
    assert policy.unseen_input_bound(TeamSettings(max_input_tokens=4096), MODEL) == 4096
    assert policy.unseen_input_bound(TeamSettings(max_input_tokens=10**6), MODEL) == 128000
    bare = ModelSettings(provider="p")
    assert policy.unseen_input_bound(TeamSettings(max_input_tokens=4096), bare) == 4096
    assert policy.unseen_input_bound(None, bare) == 0  # nothing known: only what was counted is reserved


# ---- model access ----------------------------------------------------------------------------------------


def test_check_model() -> None:
    s = parse(
        {
            "price_table": None,
            "providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}},
            "models": {
                "a": {"provider": "p", "price": {"input": 1, "output": 2}},
                "b": {"provider": "p", "price": {"input": 1, "output": 2}},
            },
            "teams": {"open": {}, "narrow": {"models": ["a"]}},
        },
        env={},
    )
    assert policy.check_model(s, s.teams["open"], "b") is s.models["b"]
    assert policy.check_model(s, None, "b") is s.models["b"]
    assert policy.check_model(s, s.teams["narrow"], "a") is s.models["a"]
    with pytest.raises(ModelNotFound):
        policy.check_model(s, s.teams["narrow"], "b")
    with pytest.raises(ModelNotFound, match="`nope`"):
        policy.check_model(s, s.teams["open"], "nope")
