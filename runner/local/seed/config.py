"""What a seeding run is asked for: `SeedConfig` and its checks, the fixed time anchors, UTC parsing."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from runner.config import settings

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
DEFAULT_START = "2026-01-05 00:00:00"
DEFAULT_DAYS = 5
DEFAULT_BUG_WINDOW_START = "2026-01-06 20:01:00"
DEFAULT_BUG_WINDOW_END = "2026-01-07 14:52:00"
DEFAULT_LOST_FRACTION = 0.3

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_time(value: str, name: str) -> datetime:
    try:
        return datetime.strptime(value.strip(), TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        raise settings.ConfigError(
            f"{name} must look like 'YYYY-MM-DD HH:MM:SS' (UTC), got {value!r}"
        ) from None


def micros(moment: datetime) -> int:
    """Microseconds since the epoch (exact, no float)."""
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True)
class SeedConfig:
    teams: int
    persons: int
    events: int
    seed: int
    start: str = DEFAULT_START
    days: int = DEFAULT_DAYS
    bug_window_start: str = DEFAULT_BUG_WINDOW_START
    bug_window_end: str = DEFAULT_BUG_WINDOW_END
    lost_fraction: float = DEFAULT_LOST_FRACTION

    def validate(self, now: datetime | None = None) -> None:
        if self.teams < 1:
            raise settings.ConfigError(f"--teams must be at least 1, got {self.teams}")
        if self.persons < self.teams:
            raise settings.ConfigError(
                f"--persons ({self.persons}) must be at least --teams ({self.teams}): "
                "every team gets a person"
            )
        if self.events < 0:
            raise settings.ConfigError(f"--events must not be negative, got {self.events}")
        if self.days < 1:
            raise settings.ConfigError(f"--days must be at least 1, got {self.days}")
        if not 0.0 <= self.lost_fraction <= 1.0:
            raise settings.ConfigError(f"--lost-fraction must be within [0, 1], got {self.lost_fraction}")
        start = parse_time(self.start, "--start")
        w0 = parse_time(self.bug_window_start, "--bug-window-start")
        w1 = parse_time(self.bug_window_end, "--bug-window-end")
        if w0 >= w1:
            raise settings.ConfigError(
                f"--bug-window-start ({self.bug_window_start}) must be before "
                f"--bug-window-end ({self.bug_window_end})"
            )
        end = start + timedelta(days=self.days)
        if end > (now or datetime.now(UTC)):
            raise settings.ConfigError(
                f"the events would reach {end:%Y-%m-%d %H:%M:%S}, which is in the future: "
                "move --start back or lower --days"
            )
        if w1 <= start or w0 >= end:
            raise settings.ConfigError(
                f"the bug window [{self.bug_window_start}, {self.bug_window_end}) lies outside the events' "
                f"range [{start:%Y-%m-%d %H:%M:%S}, {end:%Y-%m-%d %H:%M:%S})"
            )

    @property
    def start_us(self) -> int:
        return micros(parse_time(self.start, "--start"))

    @property
    def end_us(self) -> int:
        return self.start_us + self.days * 86_400_000_000

    @property
    def window_us(self) -> tuple[int, int]:
        return (
            micros(parse_time(self.bug_window_start, "--bug-window-start")),
            micros(parse_time(self.bug_window_end, "--bug-window-end")),
        )
