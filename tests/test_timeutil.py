"""Time conversion at the providers' edges: walltimes, zones, epochs; seconds settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from omnibed.core.errors import UsageError
from omnibed.core.timeutil import (
    format_walltime,
    from_epoch,
    in_zone,
    parse_walltime,
    require_utc,
    seconds_setting,
    to_utc,
    utcnow,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1h", timedelta(hours=1)),
        ("30m", timedelta(minutes=30)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("2d", timedelta(days=2)),
        ("90s", timedelta(seconds=90)),
        ("01:30:00", timedelta(hours=1, minutes=30)),
        ("2:05", timedelta(hours=2, minutes=5)),
    ],
)
def test_parse_walltime(text: str, expected: timedelta) -> None:
    assert parse_walltime(text) == expected


@pytest.mark.parametrize("text", ["", "1x", "h", "0m", "1:75", "-1h", "one hour"])
def test_parse_walltime_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="walltime"):
        parse_walltime(text)


def test_format_walltime_for_schedulers() -> None:
    assert format_walltime(timedelta(hours=26, minutes=3, seconds=9)) == "26:03:09"


def test_paris_wall_clock_both_sides_of_dst() -> None:
    winter = datetime(2026, 1, 15, 8, 0, tzinfo=UTC)
    summer = datetime(2026, 7, 15, 8, 0, tzinfo=UTC)
    assert in_zone(winter, "Europe/Paris").hour == 9
    assert in_zone(summer, "Europe/Paris").hour == 10


def test_to_utc_reads_naive_times_in_the_given_zone_only() -> None:
    naive = datetime(2026, 7, 15, 10, 0)
    assert to_utc(naive, assume_zone="Europe/Paris") == datetime(2026, 7, 15, 8, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="no time zone"):
        to_utc(naive)


def test_utc_helpers_are_aware() -> None:
    assert require_utc(utcnow()).tzinfo is not None
    assert from_epoch(0) == datetime(1970, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        require_utc(datetime(2026, 1, 1))


@pytest.mark.parametrize("text", ["366d", "9999999999d", "99999999999:00", "8785h"])
def test_parse_walltime_refuses_more_than_a_year(text: str) -> None:
    with pytest.raises(ValueError, match="at most 365 days"):
        parse_walltime(text)


@pytest.mark.parametrize("text", ["", None])
def test_a_seconds_setting_unset_or_empty_is_its_default(
    monkeypatch: pytest.MonkeyPatch, text: str | None
) -> None:
    if text is None:
        monkeypatch.delenv("OMNIBED_TEST_SECONDS", raising=False)
    else:
        monkeypatch.setenv("OMNIBED_TEST_SECONDS", text)
    assert seconds_setting("OMNIBED_TEST_SECONDS", 60, 4) == 60


def test_a_seconds_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIBED_TEST_SECONDS", "7.5")
    assert seconds_setting("OMNIBED_TEST_SECONDS", 60, 4) == 7.5


@pytest.mark.parametrize(
    ("text", "said"),
    [("soon", "is not a number of seconds"), ("3", "must be 4 or more seconds"),
     ("nan", "must be 4 or more"), ("inf", "must be 4 or more"), ("-1", "must be 4 or more")],
)
def test_a_bad_seconds_setting_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, text: str, said: str
) -> None:
    monkeypatch.setenv("OMNIBED_TEST_SECONDS", text)
    with pytest.raises(UsageError, match=f"OMNIBED_TEST_SECONDS='{text}' {said}"):
        seconds_setting("OMNIBED_TEST_SECONDS", 60, 4)
