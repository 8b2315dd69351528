"""``quotagate report`` end to end: a realistic ledger (four teams, three models, 60 days, team assistant's
re-sent history growing through the last 30), the real CLI, and the page opened in headless Chromium
(Debian's, through Playwright; never a downloaded browser): no console or page errors, nothing fetched but
the file, every chart drawn with data, the explanation and every team's budget burn on the page. A
full-page screenshot goes to ``$CI_ARTIFACTS`` (else tests/artifacts/); ``QUOTAGATE_REPORT_PNG=path``
also writes one there (docs/report.png is made so).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from proxy.cli import main
from proxy.store.base import LedgerRecord
from proxy.store.sqlite import SqliteStore
from tests.gateway import write_config

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("QUOTAGATE_CHROMIUM", "/usr/bin/chromium")
DAY = 86_400
ODD_TEAM = 'r&d <ops> "lab"'  # a ledger-only team whose name needs escaping

# (team, model, key, requests a day, input price, output price in micro-USD per token)
TRAFFIC: tuple[tuple[str, str, str, int, float, float], ...] = (
    ("assistant", "gpt-4o", "assistant-web", 120, 2.5, 10.0),
    ("search", "gpt-4o-mini", "search-api", 200, 0.15, 0.6),
    ("batch-jobs", "o4-mini", "nightly", 30, 1.1, 4.4),
    (ODD_TEAM, "gpt-4o-mini", "lab", 6, 0.15, 0.6),
)


def demo_records(now: float, days: int = 60, seed: int = 12) -> list[LedgerRecord]:
    """About 20,000 rows: assistant's history grows from 3K to 30K tokens a request over the last 30 days."""
    rng = random.Random(seed)
    out: list[LedgerRecord] = []
    for back in range(days, 0, -1):
        day_start = now - back * DAY
        growth = max(0.0, (30 - back) / 30) if back <= 30 else 0.0
        for team, model, key, per_day, p_in, p_out in TRAFFIC:
            weekend = team == "batch-jobs" and int(day_start // DAY) % 7 in (2, 3)
            for i in range(0 if weekend else rng.randint(per_day * 3 // 4, per_day * 5 // 4)):
                system, tools = 900, (1400 if team == "assistant" else 300)
                history = int(3000 + 27000 * growth) if team == "assistant" else rng.randint(0, 1500)
                new = rng.randint(50, 900)
                counted = system + tools + history + new
                output = rng.randint(80, 1200) if team != "batch-jobs" else rng.randint(1500, 6000)
                refused = rng.random() < 0.02
                cost = 0 if refused else round(counted * p_in + output * p_out)
                out.append(
                    LedgerRecord(
                        request_id=f"{team}-{back}-{i}",
                        ts=day_start + rng.uniform(0, DAY - 1),
                        team=team,
                        key_name=key,
                        model=model,
                        provider="openai",
                        endpoint="chat",
                        stream=rng.random() < 0.5,
                        status=429 if refused else 200,
                        outcome="budget_exceeded" if refused else "ok",
                        counted_input=counted,
                        counted_output=output,
                        input_tokens=None if refused else counted,
                        cached_input_tokens=0,
                        output_tokens=None if refused else output,
                        reasoning_tokens=0,
                        cost_micro_usd=cost,
                        latency_ms=800.0,
                        ttft_ms=200.0,
                        charged=not refused,
                        input_system=system,
                        input_tools=tools,
                        input_history=history,
                        input_new=new,
                        tags="support,<b>web</b>",
                    )
                )
    return out


async def write_sqlite(path: Path, records: list[LedgerRecord]) -> None:
    store = SqliteStore(path)
    await store.open()
    try:
        await store.write_ledger(records)
    finally:
        await store.close()


def write_ledger(path: Path, records: list[LedgerRecord]) -> None:
    asyncio.run(write_sqlite(path, records))


def demo_config(tmp: Path, db: Path, **teams: dict[str, Any]) -> Path:
    cfg: dict[str, Any] = {
        "store": f"sqlite:///{db}",
        "providers": {"openai": {"base_url": "https://api.openai.com/v1", "api_key": "sk-unused"}},
        "models": {
            "gpt-4o": {"provider": "openai"},
            "gpt-4o-mini": {"provider": "openai"},
            "o4-mini": {"provider": "openai"},
        },
        "teams": {
            "assistant": {"budgets": [{"window": "day", "usd": 40}, {"window": "month", "usd": 120}]},
            "search": {"budgets": [{"window": "month", "tokens": 200_000_000}]},
            "batch-jobs": {"budgets": [{"window": "day", "tokens": 20_000_000}]},
            **teams,
        },
        "keys": [
            {"team": "search", "name": "search-api", "key": "sk-search", "budgets": [{"window": "day", "usd": 0.05}]}
        ],
    }
    return write_config(tmp, cfg)


def artifacts_dir() -> Path:
    d = Path(os.environ.get("CI_ARTIFACTS") or ROOT / "tests" / "artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def chromium_or_skip() -> str:
    path = shutil.which(CHROMIUM) or (CHROMIUM if os.access(CHROMIUM, os.X_OK) else None)
    if path is None and os.environ.get("CI"):  # .ci/run installs chromium: in CI its absence is a failure
        pytest.fail(f"no chromium binary at {CHROMIUM} (CI=true: .ci/run should have installed Debian's chromium)")
    if path is None:
        pytest.skip(f"no chromium binary at {CHROMIUM} (CI installs Debian's chromium; set QUOTAGATE_CHROMIUM)")
    return path


@pytest.fixture
def report_html(tmp_path: Path) -> Path:
    db = tmp_path / "ledger.db"
    write_ledger(db, demo_records(time.time()))
    out = tmp_path / "report.html"
    assert main(["report", "--since", "30d", "--out", str(out), "--config", str(demo_config(tmp_path, db))]) == 0
    return out


def test_report_in_a_browser(report_html: Path) -> None:
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    html = report_html.read_text()
    assert "<script" not in html and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "<b>" not in html and "&lt;ops&gt;" in html  # client data escaped
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1024, "height": 900})
            errors: list[str] = []
            requests: list[str] = []
            page.on(
                "console",
                lambda m: errors.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
            )
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(report_html.as_uri(), wait_until="load")
            assert errors == []
            assert requests == [report_html.as_uri()]
            check_page(page)
            page.screenshot(path=str(artifacts_dir() / "report.png"), full_page=True)
            if os.environ.get("QUOTAGATE_REPORT_PNG"):  # the README's, at 0.8 px per CSS px: under 300 KB
                small = browser.new_page(viewport={"width": 960, "height": 900}, device_scale_factor=0.8)
                small.goto(report_html.as_uri(), wait_until="load")
                small.screenshot(path=os.environ["QUOTAGATE_REPORT_PNG"], full_page=True)
            check_print(page)
        finally:
            browser.close()


def check_page(page: Any) -> None:
    assert page.title() == "quotagate spend report"
    assert page.locator("h1").inner_text() == "quotagate spend report"
    for chart, min_marks in (("chart-spend", 100), ("chart-context", 100), ("chart-cost", 6)):
        svg = page.locator(f"svg#{chart}")
        box = svg.bounding_box()
        assert box is not None and box["width"] > 600 and box["height"] > 150, chart
        assert svg.get_attribute("role") == "img"
        label = page.locator(f"#{chart}-desc").text_content()
        assert label and len(label) > 40, chart
        marks = svg.locator("rect.mark")
        assert marks.count() > min_marks, chart
        sizes = marks.evaluate_all(
            "els => els.map(e => { const b = e.getBoundingClientRect(); return b.width * b.height; })"
        )
        assert all(s > 0 for s in sizes), chart
        assert svg.locator(".axis-title").count() == 2, chart
        tip = marks.first.locator("title").text_content()  # each mark's tooltip: its label and value
        assert tip and re.search(r"\S: [$\d]", tip), tip
        assert page.locator(f"#{chart}-h").is_visible()
    sentence = page.locator(".explain .sentence").inner_text()
    assert "history" in sentence and "assistant" in sentence, sentence
    effects = page.locator("table.effects tbody tr")
    assert effects.count() == 5
    assert any("history tokens per request" in effects.nth(i).inner_text() for i in range(5))
    burn = page.locator("table.burn tbody tr")
    teams = [burn.nth(i).locator("th").inner_text() for i in range(burn.count())]
    for team in ("assistant", "search", "batch-jobs"):
        assert team in teams
    assert "search \u00b7 key search-api" in teams
    assert page.locator("table.burn").inner_text().count("$") >= 4


def check_print(page: Any) -> None:
    """Printed (on a page narrower than the screen: nothing sticks out), the charts stay and the data tables
    (disclosures) go."""
    page.emulate_media(media="print")
    page.set_viewport_size({"width": 700, "height": 900})
    assert page.evaluate("document.documentElement.scrollWidth") <= 700
    assert page.locator("svg#chart-spend").is_visible()
    assert not page.locator("details.data").first.is_visible()
    assert page.locator("svg#chart-spend").bounding_box()["height"] > 100
    assert page.pdf(format="A4")[:5] == b"%PDF-"  # and it prints
