"""``quotagate whatif``: a crafted history replayed against a proposed policy, team by team: trims (and the
tokens they remove), rejections, output caps, budget refusals and the day a budget runs out, downgrades, the
cost then and the would-be cost; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.analysis import whatif as whatif_module
from proxy.analysis.periods import parse_period
from proxy.analysis.whatif import TeamReplay, whatif
from proxy.cli import main
from proxy.store.base import LedgerRecord
from tests.analysis_rows import PRICES, Load, day, load, row, settings, write_sqlite
from tests.pg_server import pg_server, postgres_url

__all__ = ["load", "pg_server", "postgres_url"]  # fixtures

SINCE = parse_period("2026-03-01..2026-03-08", 0)
D1, D2 = day("2026-03-02"), day("2026-03-03")
POLICY: dict[str, Any] = {
    "trimmer": {"max_input_tokens": 1000, "on_context_overflow": "trim"},
    "rejecter": {"max_input_tokens": 1000},
    "capped": {"max_output_tokens": 100},
    "budget": {"max_output_tokens": 200, "budgets": [{"window": "day", "usd": 0.001}]},
    "downgrader": {
        "max_output_tokens": 200,
        "budgets": [{"window": "month", "usd": 0.01, "warn_at": 0.5, "downgrade_to": "gpt-4.1-nano"}],
    },
    "refused-down": {
        "max_output_tokens": 200,
        "budgets": [{"window": "month", "usd": 0.005, "warn_at": 0.9, "downgrade_to": "gpt-4.1-nano"}],
    },
}


def history() -> list[LedgerRecord]:
    rows = [row(D1 + i, "trimmer", system=200, history=2000, new=100) for i in range(4)]  # 2300 -> trimmed
    rows += [row(D1 + 10 + i, "trimmer", system=900, new=200) for i in range(2)]  # 1100, nothing to drop
    rows.append(row(D1 + 20, "trimmer", system=None, new=1500))  # an older row: no parts to trim
    rows.append(row(D1 + 21, "trimmer", "text-embedding-3-small", system=0, new=1500, output=0, endpoint="embeddings"))
    rows += [row(D1 + 30 + i, "trimmer", system=200, history=300, new=100) for i in range(3)]  # fits
    rows += [row(D1 + 40 + i, "rejecter", history=2000 * (i % 2)) for i in range(4)]
    rows += [row(D1 + 50 + i, "capped", output=200, output_cap=200) for i in range(3)]
    rows += [row(d + 60 + i, "budget") for d in (D1, D2) for i in range(6)]  # 210 micro-USD each
    rows += [row(D1 + 80 + i, "downgrader", "gpt-4o") for i in range(6)]  # 3500 micro-USD each
    rows += [row(D1 + 90 + i, "refused-down", "gpt-4o") for i in range(3)]
    rows += [row(D1 + 100 + i, "same", history=700) for i in range(5)]
    rows.append(row(D1 + 110, "same", charged=False))
    return rows


def by_team(teams: list[TeamReplay]) -> dict[str, TeamReplay]:
    return {t.team: t for t in teams}


async def test_a_crafted_history(load: Load) -> None:
    rows = history()
    got = by_team(await whatif(await load(rows), settings(**POLICY), SINCE))
    cost = {t: sum(r.cost_micro_usd for r in rows if r.team == t and r.charged) for t in got}
    assert all(got[t].cost_micro == cost[t] for t in got)
    t = got["trimmer"]
    assert (t.requests, t.trimmed, t.rejected, t.budget_refused, t.downgraded) == (11, 4, 4, 0, 0)
    assert t.trimmed_tokens == 4 * 1400  # 10 history turns of 200: 7 dropped to fit 1000
    trimmed_cost = PRICES["gpt-4o-mini"].cost(_usage(900, 200))
    assert t.would_cost_micro == 4 * trimmed_cost + sum(r.cost_micro_usd for r in rows[8:11])
    assert (got["rejecter"].rejected, got["rejecter"].would_cost_micro) == (2, 2 * rows[11].cost_micro_usd)
    c = got["capped"]
    assert (c.output_capped, c.would_cost_micro) == (3, 3 * PRICES["gpt-4o-mini"].cost(_usage(600, 100)))
    b = got["budget"]  # 1000 micro-USD a day, 210 a request reserved at its worst case (200 output): 4 a day
    assert (b.budget_refused, b.would_cost_micro, b.ran_out) == (
        4,
        8 * 210,
        {"day usd": ("2026-03-02", 2, "2026-03-03")},
    )
    assert b.to_json()["budget_ran_out"] == [{"budget": "day usd", "first_day": "2026-03-02", "days": 2}]
    g = got["downgrader"]  # past half of 10000 after two gpt-4o requests: the rest on gpt-4.1-nano
    nano = PRICES["gpt-4.1-nano"].cost(_usage(600, 200))
    assert (g.downgraded, g.budget_refused, g.would_cost_micro) == (4, 0, 2 * 3500 + 4 * nano)
    r = got["refused-down"]  # 5000: the second gpt-4o would not fit, the cheaper model does
    assert (r.downgraded, r.budget_refused, r.would_cost_micro) == (2, 0, 3500 + 2 * nano)
    s = got["same"]
    assert (s.would_cost_micro, s.not_charged, s.trimmed + s.rejected + s.downgraded + s.budget_refused) == (
        s.cost_micro,
        1,
        0,
    )


def _usage(inp: int, out: int) -> Any:
    from proxy.usage import Usage

    return Usage(inp, 0, out, 0, None, None, None)


async def test_pages_of_rows_sharing_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [row(D1 + i // 4, "budget") for i in range(30)]  # four rows per second
    await write_sqlite(tmp_path / "l.db", rows)
    from proxy.analysis.db_sqlite import SqliteLedgerDB

    db = SqliteLedgerDB(tmp_path / "l.db")
    whole = await whatif(db, settings(**POLICY), SINCE)
    monkeypatch.setattr(whatif_module, "PAGE", 3)
    paged = await whatif(db, settings(**POLICY), SINCE)
    assert [t.to_json() for t in paged] == [t.to_json() for t in whole]
    assert (paged[0].requests, paged[0].budget_refused) == (30, 26)


def _files(tmp_path: Path, policy: dict[str, Any]) -> tuple[str, str]:
    cfg, pol = tmp_path / "q.yaml", tmp_path / "policy.yaml"
    cfg.write_text(
        orjson.dumps(
            {
                "store": f"sqlite:///{tmp_path / 'l.db'}",
                "providers": {"openai": {"base_url": "http://127.0.0.1:1/v1", "api_key": "sk-x"}},
                "models": {m: {"provider": "openai"} for m in PRICES},
                "teams": {"trimmer": {"max_input_tokens": 5000, "max_output_tokens": 4000}, "budget": {}},
            }
        ).decode()
    )
    pol.write_text(orjson.dumps(policy).decode())  # JSON is YAML
    return str(cfg), str(pol)


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(write_sqlite(tmp_path / "l.db", history()))
    cfg, pol = _files(tmp_path, {"teams": POLICY})
    argv = ["whatif", "--config", cfg, "--policy", pol, "--since", "2026-03-01..2026-03-08"]
    assert main([*argv, "--format", "json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    keys = {"team", "requests", "cost_usd", "would_cost_usd", "rejected", "trimmed", "downgraded", "budget_refused"}
    assert all(keys <= set(t) for t in doc["teams"])
    trimmer = next(t for t in doc["teams"] if t["team"] == "trimmer")
    assert (trimmer["trimmed"], trimmer["rejected"], trimmer["trimmed_tokens"]) == (4, 4, 5600)
    assert any("cache hits are assumed unchanged" in line for line in doc["limits"])
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "trimmer" in text and "day usd 2026-03-02 (2d)" in text and "output that a trim" in text


def test_proposed_prices(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(write_sqlite(tmp_path / "l.db", history()))
    cfg, pol = _files(tmp_path, {"models": {"gpt-4o-mini": {"price": {"input": 0.30, "output": 1.20}}}})
    assert (
        main(["whatif", "--config", cfg, "--policy", pol, "--since", "2026-03-01..2026-03-08", "--format", "json"]) == 0
    )
    same = next(t for t in orjson.loads(capsys.readouterr().out)["teams"] if t["team"] == "same")
    assert same["would_cost_micro_usd"] == 2 * same["cost_micro_usd"]  # every rate of gpt-4o-mini doubled


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"teams": {"budget": {"budgets": [{"window": "day", "usd": 1, "warn_at": 0.5, "downgrade_to": "gpt-9"}]}}},
         "teams.budget.budgets.0.downgrade_to: unknown model 'gpt-9'"),
        ({"teams": {"trimmer": {"on_context_overflow": "shrink"}}}, "teams.trimmer.on_context_overflow"),
        ({"store": "memory://"}, "only teams, models, keys and price_table may be proposed, not ['store']"),
        ([1, 2], "must be a YAML mapping"),
    ],
)  # fmt: skip
def test_a_bad_policy_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: Any, message: str) -> None:
    cfg, pol = _files(tmp_path, policy)
    with pytest.raises(SystemExit) as exc:
        main(["whatif", "--config", cfg, "--policy", pol])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
