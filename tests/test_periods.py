"""Periods of the analysis commands: dates (UTC midnight), RFC 3339 times, times ago; ``A..B`` with the end
excluded; bad input is a ``PeriodError`` saying what is accepted, and exit code 2 from the commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.analysis.periods import Period, PeriodError, parse_bound, parse_period, parse_since
from proxy.cli import main

NOW = 1_773_144_030.0  # 2026-03-10T12:00:30Z
MAR4 = 1_772_582_400.0  # 2026-03-04T00:00:00Z


def test_a_date_is_utc_midnight() -> None:
    assert parse_bound("2026-03-04", NOW) == MAR4
    assert parse_period("2026-03-04..2026-03-11", NOW) == Period(MAR4, MAR4 + 7 * 86_400)


def test_rfc3339_times() -> None:
    assert parse_bound("2026-03-04T12:00:00Z", NOW) == MAR4 + 43_200
    assert parse_bound("2026-03-04T12:00:00.5z", NOW) == MAR4 + 43_200.5
    assert parse_bound("2026-03-04T13:00:00+01:00", NOW) == MAR4 + 43_200
    assert parse_bound("2026-03-04T12:00:00", NOW) == MAR4 + 43_200  # no offset: UTC
    assert parse_bound("2026-03-04 12:00:00Z", NOW) == MAR4 + 43_200


@pytest.mark.parametrize(
    ("text", "ago"), [("30m", 1800), ("2h", 7200), ("7d", 7 * 86_400), ("2w", 14 * 86_400), ("90s", 90), ("0d", 0)]
)
def test_relative_times_are_before_now(text: str, ago: float) -> None:
    assert parse_bound(text, NOW) == NOW - ago


def test_periods_and_since() -> None:
    assert parse_period("14d..7d", NOW) == Period(NOW - 14 * 86_400, NOW - 7 * 86_400)
    assert parse_period(" 7d .. 0d ", NOW) == Period(NOW - 7 * 86_400, NOW)
    assert parse_period("2026-03-04..0d", NOW) == Period(MAR4, NOW)
    assert parse_since("30d", NOW) == Period(NOW - 30 * 86_400, NOW)
    assert parse_since("2026-03-04", NOW) == Period(MAR4, NOW)
    assert parse_since("2026-03-04..2026-03-05", NOW) == Period(MAR4, MAR4 + 86_400)
    assert Period(MAR4, MAR4 + 86_400).label() == "2026-03-04..2026-03-05"
    assert Period(MAR4 + 1800, NOW).label() == "2026-03-04T00:30:00Z..2026-03-10T12:00:30Z"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("yesterday..0d", "cannot read 'yesterday' as a time: give a date (2026-03-04)"),
        ("7d", "'7d' is not a period: give START..END"),
        ("7d..", "both ends of START..END are needed"),
        ("1d..7d", "the end (2026-03-03T12:00:30Z) is not after the start (2026-03-09T12:00:30Z)"),
        ("2026-02-30..0d", "'2026-02-30' is not a valid date"),
        ("2026-03-04T25:00Z..0d", "is not a valid RFC 3339 time"),
        ("1d..2d..3d", "is not a period"),
        ("-7d..0d", "cannot read '-7d' as a time"),
    ],
)
def test_bad_periods_say_what_is_accepted(text: str, message: str) -> None:
    with pytest.raises(PeriodError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        parse_period(text, NOW)


def test_a_since_in_the_future_is_an_error() -> None:
    with pytest.raises(PeriodError, match="is not before now"):
        parse_since("2099-01-01", NOW)
    with pytest.raises(PeriodError, match="is not before now"):
        parse_since("0d", NOW)


@pytest.mark.parametrize(
    "argv",
    [
        ["explain", "--period", "7d..0d", "--baseline", "soon"],
        ["whatif", "--policy", "p.yaml", "--since", "lately"],
        ["reprice", "--prices", "p.yaml", "--since", "2026-13-01"],
    ],
)
def test_the_commands_exit_2_on_a_bad_period(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "q.yaml"
    cfg.write_text(
        "store: sqlite:///./l.db\nproviders: {p: {base_url: 'http://127.0.0.1:1/v1'}}\n"
        "models: {m: {provider: p, price: {input: 1, output: 1}}}\n"
    )
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--config", str(cfg)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("quotagate: --") and ("give" in err or "not a valid" in err)
