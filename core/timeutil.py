"""Time inside omnibed is tz-aware UTC; providers convert at their edge with these helpers.
Also the settings in seconds that users give omnibed in its environment."""

from __future__ import annotations

import math
import os
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from omnibed.core.errors import UsageError

_WALLTIME = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_CLOCK = re.compile(r"^(\d+):([0-5]\d)(?::([0-5]\d))?$")
MAX_WALLTIME = timedelta(days=365)  # longer than any testbed grants


def utcnow() -> datetime:
    """The current time, tz-aware UTC."""
    return datetime.now(UTC)


def require_utc(moment: datetime) -> datetime:
    """Return `moment` unchanged if it is tz-aware UTC; raise ValueError otherwise."""
    if moment.tzinfo is None or moment.utcoffset() != timedelta(0):
        raise ValueError(f"{moment!r} is not a tz-aware UTC datetime")
    return moment


def to_utc(moment: datetime, assume_zone: str | None = None) -> datetime:
    """Convert an aware datetime to UTC; a naive one is read in `assume_zone` or refused."""
    if moment.tzinfo is None:
        if assume_zone is None:
            raise ValueError(f"{moment!r} has no time zone and none was given")
        moment = moment.replace(tzinfo=ZoneInfo(assume_zone))
    return moment.astimezone(UTC)


def in_zone(moment: datetime, zone: str) -> datetime:
    """The same instant as a wall-clock time in `zone` (e.g. Europe/Paris for OAR)."""
    return require_utc(moment).astimezone(ZoneInfo(zone))


def from_epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def parse_walltime(text: str) -> timedelta:
    """Parse `1h`, `30m`, `1h30m`, `2d`, `90s` or `HH:MM[:SS]` into a timedelta longer than
    zero and at most :data:`MAX_WALLTIME`; ValueError saying what to write otherwise."""
    value = text.strip().lower()
    clock = _CLOCK.match(value)
    match = _WALLTIME.match(value)
    if clock:
        days, (hours, minutes, seconds) = 0, (int(part or 0) for part in clock.groups())
    elif value and match and any(match.groups()):
        days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    else:
        raise ValueError(
            f"walltime {text!r} is not understood: write e.g. 1h, 30m, 1h30m, 2d or 01:30:00"
        )
    seconds = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if seconds > MAX_WALLTIME.total_seconds():
        raise ValueError(f"walltime {text!r} is too long: at most {MAX_WALLTIME.days} days")
    if seconds <= 0:
        raise ValueError(f"walltime {text!r} must be longer than zero")
    return timedelta(seconds=seconds)


def format_walltime(duration: timedelta) -> str:
    """`HH:MM:SS` as OAR and most schedulers want it."""
    total = int(duration.total_seconds())
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def seconds_setting(name: str, default: float, least: float, zero: str = "") -> float:
    """Seconds from the environment variable `name` (`default` when unset or empty).
    UsageError naming it unless a finite number of at least `least`; `zero` says what 0
    means, in that error."""
    text = os.environ.get(name, "")
    meaning = f" (0: {zero})" if zero else ""
    try:
        seconds = float(text) if text else default
    except ValueError:
        raise UsageError(f"{name}={text!r} is not a number of seconds{meaning}") from None
    if not math.isfinite(seconds) or seconds < least:
        raise UsageError(f"{name}={text!r} must be {least:g} or more seconds{meaning}")
    return seconds
