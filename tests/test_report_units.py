"""The report's parts without a browser: numbers for people, the SVG, the SQL aggregates on a small ledger,
budget projections, and an empty ledger (a page that says so)."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from proxy.analysis.db_sqlite import SqliteLedgerDB
from proxy.analysis.report_burn import Burn, budget_burn, project
from proxy.analysis.report_charts import bucket_label
from proxy.analysis.report_data import EDGES, CostBucket, bucket, cost_histogram, spend_by_day, spent_since
from proxy.analysis.report_format import (
    count,
    day_label,
    money,
    money_tick,
    nice_ticks,
    percent,
    signed_money,
    tokens,
)
from proxy.analysis.report_svg import Chart, Series, data_table, legend, stacked_bars
from proxy.cli import main
from proxy.settings import load
from proxy.store.base import LedgerRecord
from tests.test_report_browser import DAY, demo_config, write_ledger

NOW = 1_764_000_000.0  # 2025-11-24T16:00:00Z


def test_money_and_tokens_for_people() -> None:
    assert money(1_236_400_000) == "$1,236.40"
    assert money(0) == "$0.00"
    assert money(310) == "$0.00031"
    assert money(12_345.6) == "$0.01"
    assert signed_money(12_300_000) == "+$12.30"
    assert signed_money(-3_100_000) == "\u2212$3.10"
    assert tokens(11_800) == "11.8K tokens"
    assert tokens(950) == "950 tokens"
    assert tokens(2_650_000) == "2.65M tokens"
    assert tokens(14_321.7, unit=False) == "14.3K"
    assert count(12_345) == "12,345"
    assert percent(0.452) == "45%" and percent(0.004) == "0.4%" and percent(1.3) == "130%" and percent(0) == "0%"
    assert day_label(int(NOW // DAY)) == "Nov 24"


def test_axis_ticks() -> None:
    assert money_tick(0) == "$0"
    assert money_tick(25_000_000) == "$25"
    assert money_tick(1_500_000_000) == "$1.5K"
    assert money_tick(2_000) == "$0.002"
    assert money_tick(1_250_000) == "$1.25"
    assert nice_ticks(1.53) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert nice_ticks(7_900) == [0, 2000, 4000, 6000, 8000]
    assert nice_ticks(0) == [0.0, 1.0]
    ticks = nice_ticks(1313)
    assert ticks[-1] >= 1313 and len(ticks) <= 7


def test_cost_buckets_are_log_and_labelled() -> None:
    assert EDGES[:4] == (1, 2, 5, 10) and EDGES[-1] == 100_000_000
    assert bucket(0, 3) == CostBucket(0, 1, 3)
    assert bucket(9, 1) == CostBucket(500, 1000, 1)
    assert bucket(len(EDGES), 2) == CostBucket(100_000_000, None, 2)
    assert bucket_label(bucket(0, 1)) == "$0"
    assert bucket_label(bucket(12, 1)) == "$0.005\u2013$0.01"
    assert bucket_label(bucket(len(EDGES), 1)) == "\u2265 $100"


def chart(names: tuple[str, ...] = ("a", "b")) -> Chart:
    return Chart(
        "c1",
        "Spend <per> day",
        "A chart & its text",
        "Day",
        "USD",
        ("Nov 1", "Nov 2", "Nov 3"),
        tuple(Series(n, (1e6 * (1 + i), 0.0, 3e6), "#0072B2") for i, n in enumerate(names)),
        money,
        money_tick,
    )


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_svg_marks_labels_and_escaping() -> None:
    svg = stacked_bars(chart(("<script>x</script>", 'r&d "lab"')))
    parser = Tags()
    parser.feed(svg)
    rects = [a for t, a in parser.tags if t == "rect" and a.get("class") == "mark"]
    assert len(rects) == 4  # two series over three days, the zero day drawn not at all
    assert all(float(a["height"] or 0) > 0 and float(a["width"] or 0) > 0 for a in rects)
    svg_attrs = parser.tags[0][1]
    assert svg_attrs["role"] == "img" and svg_attrs["aria-labelledby"] == "c1-title c1-desc"
    assert '<title id="c1-title">Spend &lt;per&gt; day</title>' in svg
    assert '<desc id="c1-desc">A chart &amp; its text</desc>' in svg
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "r&amp;d &quot;lab&quot;" in svg
    assert svg.count('class="axis-title"') == 2
    assert "<script>" not in legend(chart(("<script>",)).series)
    table = data_table(chart(("<i>", "b")))
    assert "&lt;i&gt;" in table and "<i>" not in table and "$3.00" in table and "$6.00" in table  # and the total


def test_svg_with_no_data_does_not_divide_by_zero() -> None:
    empty = Chart("e", "t", "d", "x", "y", (), (), money, money_tick)
    assert "<svg" in stacked_bars(empty) and "rect" not in stacked_bars(empty)


def test_projection() -> None:
    start, end = NOW - 10 * DAY, NOW + 20 * DAY  # ten days into a thirty-day window
    assert project(0, 100, start, end, NOW) is None
    assert project(10, 100, start, end, NOW) is None  # 1/day: 90 more days, past the reset
    assert project(50, 100, start, end, NOW) == pytest.approx(NOW + 10 * DAY)
    assert project(100, 100, start, end, NOW) == NOW
    assert project(5, 100, NOW - 60, NOW + DAY, NOW) == pytest.approx(NOW + 95 * 720)  # an hour at least


def record(i: int, ts: float, team: str, cost: int, *, charged: bool = True, key: str = "k") -> LedgerRecord:
    return LedgerRecord(
        request_id=f"r{i}", ts=ts, team=team, key_name=key, model="gpt-4o-mini", provider="openai",
        endpoint="chat", stream=False, status=200, outcome="ok", counted_input=100, counted_output=10,
        input_tokens=100, cached_input_tokens=0, output_tokens=10, reasoning_tokens=0, cost_micro_usd=cost,
        latency_ms=1.0, ttft_ms=None, charged=charged, input_system=10, input_tools=0, input_history=60,
        input_new=30,
    )  # fmt: skip


def test_aggregates_in_sql(tmp_path: Path) -> None:
    day0 = int(NOW // DAY) * DAY
    rows = [
        record(1, day0 + 10, "a", 3),
        record(2, day0 + 20, "a", 700),
        record(3, day0 + 30, "b", 0),
        record(4, day0 + DAY + 5, "a", 1_500_000),
        record(5, day0 + DAY + 6, "a", 9_999, charged=False),  # not spend
        record(6, day0 - 5, "a", 42),  # before the period
    ]
    write_ledger(tmp_path / "l.db", rows)

    async def go() -> None:
        db = SqliteLedgerDB(tmp_path / "l.db")
        try:
            spend = await spend_by_day(db, day0, day0 + 2 * DAY)
            assert [(d.day - int(NOW // DAY), d.team, d.cost_micro, d.requests) for d in spend] == [
                (0, "a", 703, 2),
                (0, "b", 0, 1),
                (1, "a", 1_500_000, 1),
            ]
            hist = await cost_histogram(db, day0, day0 + 2 * DAY)
            assert hist[0] == CostBucket(0, 1, 1) and hist[-1] == CostBucket(1_000_000, 2_000_000, 1)
            assert sum(b.requests for b in hist) == 4
            assert {(b.low_micro, b.requests) for b in hist if b.requests} == {(0, 1), (2, 1), (500, 1), (1_000_000, 1)}
            spent = await spent_since(db, day0, day0 + 2 * DAY, by_key=False)
            assert spent == {("a", ""): (1_500_703, 330), ("b", ""): (0, 110)}
        finally:
            await db.close()

    asyncio.run(go())


def test_empty_ledger_is_a_page_saying_so(tmp_path: Path) -> None:
    db = tmp_path / "ledger.db"
    write_ledger(db, [])
    out = tmp_path / "empty.html"
    assert main(["report", "--since", "7d", "--out", str(out), "--config", str(demo_config(tmp_path, db))]) == 0
    html = out.read_text()
    assert '<h2 id="empty-h">No data</h2>' in html and "no charged request" in html
    assert "<svg" not in html
    assert re.search(r"<th scope='row'>assistant</th>", html)  # the budgets, at nothing spent
    assert "not before the window resets" in html and "$0.00" in html


def test_report_without_a_ledger_file_fails_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = demo_config(tmp_path, tmp_path / "missing.db")
    with pytest.raises(SystemExit) as e:
        main(["report", "--out", str(tmp_path / "x.html"), "--config", str(cfg)])
    assert e.value.code != 0 and "missing.db" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


def test_rows_without_input_parts_leave_that_chart_out(tmp_path: Path) -> None:
    """A ledger written before the input split (NULL parts): the context chart says so, the rest is drawn."""
    now = time.time()
    rows = [dataclasses.replace(record(i, now - i * 3600, "assistant", 2_000), input_system=None) for i in range(30)]
    write_ledger(tmp_path / "old.db", rows)
    out = tmp_path / "old.html"
    assert (
        main(
            ["report", "--since", "3d", "--out", str(out), "--config", str(demo_config(tmp_path, tmp_path / "old.db"))]
        )
        == 0
    )
    html = out.read_text()
    assert 'id="chart-spend"' in html and 'id="chart-cost"' in html and 'id="chart-context"' not in html
    assert "Nothing to chart: No request in the period recorded its input by part." in html


def test_a_bad_period_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_ledger(tmp_path / "l.db", [])
    cfg = str(demo_config(tmp_path, tmp_path / "l.db"))
    with pytest.raises(SystemExit) as e:
        main(["report", "--since", "last tuesday", "--out", str(tmp_path / "x.html"), "--config", cfg])
    assert e.value.code == 2 and "--since" in capsys.readouterr().err
    assert (
        main(["report", "--since", "2026-01-01..2026-01-08", "--out", str(tmp_path / "y.html"), "--config", cfg]) == 0
    )
    assert "2026-01-01 00:00 UTC</strong> to <strong>2026-01-08 00:00 UTC" in (tmp_path / "y.html").read_text()


def test_a_budget_in_its_own_calendar_burns_from_its_local_midnight(tmp_path: Path) -> None:
    paris_midnight = NOW - 17 * 3600  # NOW is 17:00 in Paris (UTC+1): its day began at 23:00 UTC
    rows = [record(1, NOW - 3600, "paris", 300_000), record(2, paris_midnight - 1800, "paris", 900_000)]
    write_ledger(tmp_path / "l.db", rows)
    paris_day = {"budgets": [{"window": "day", "usd": 1, "timezone": "Europe/Paris"}]}
    settings = load(demo_config(tmp_path, tmp_path / "l.db", paris=paris_day))

    async def go() -> list[Burn]:
        db = SqliteLedgerDB(tmp_path / "l.db")
        try:
            return await budget_burn(db, settings, NOW)
        finally:
            await db.close()

    (paris,) = [b for b in asyncio.run(go()) if b.team == "paris"]
    assert (paris.window, paris.window_start, paris.spent) == ("day@Europe/Paris", paris_midnight, 300_000)
    assert paris.daily_rate == pytest.approx(300_000 * 24 / 17)
    assert paris.exhausts_at is None  # 700K more at that rate takes 40 hours: the day ends in 7
