"""The scheduler's configuration: the original sensor cursor, parsed, validated and loaded.

The configuration is the original sensor cursor (spec R12.1): a JSON object naming the teams (an
explicit `team_ids` list, or an inclusive `range_start`/`range_end`), how many teams one launched run
covers (`chunk_size`), the caps (`max_concurrent_jobs` <= 50, `max_concurrent_tasks` <= 100) and the
settings every run gets (R12.6). Unlike the original, unknown fields are an error naming the closest
known one (a typo such as `dryrun` must never turn a dry run into writes). `exclude_team_ids` is
accepted too (the original could not pass exclusions through its sensor), and `max_rate` (persons per
second for every apply of the schedule). Team ids are positive and within Postgres `bigint`.

Validation follows R12.2's order (first failure wins) and then checks what the original left to
chance: types, time formats, the window's order. Every message names the field and the value.

`load_files` reads the configuration file and `--team-ids-from` (a CSV); the chunk plan built from a
configuration is `runner.rules.scheduling`.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import json
import logging
import math
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.config.settings import ConfigError

log = logging.getLogger("runner.schedule")

MAX_CONCURRENT_JOBS_CAP = 50
MAX_CONCURRENT_TASKS_CAP = 100

DEFAULT_CHUNK_SIZE = 1000
DEFAULT_MAX_CONCURRENT_JOBS = 5
DEFAULT_MAX_CONCURRENT_TASKS = 10
DEFAULT_TEAMS_PER_CHUNK = 100
DEFAULT_BATCH_SIZE = 100
DEFAULT_PERSON_BATCH_SIZE = 10_000
DEFAULT_PERSONS_DB_ENV_VAR = "PERSONS_DB_WRITER_URL"

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# Team ids are Postgres bigints (the ledger and progress tables store them as such).
MAX_TEAM_ID = 2**63 - 1
# JSON numbers written as floats (`1e12`) count as integers when exact.
_MAX_EXACT_FLOAT = 2**53

# Every field of the cursor; any other field is an error (exit 2) naming the closest of these. Adding a
# field: add it here and read it in `validate`.
KNOWN_FIELDS = frozenset(
    {
        "team_ids",
        "range_start",
        "range_end",
        "exclude_team_ids",
        "chunk_size",
        "max_concurrent_jobs",
        "max_concurrent_tasks",
        "bug_window_start",
        "bug_window_end",
        "dry_run",
        "backup_enabled",
        "batch_size",
        "teams_per_chunk",
        "team_ch_props_fetch_window_seconds",
        "person_batch_size",
        "persons_db_env_var",
        "semantics",
        "next_team_index",
        "next_chunk_start",
        "max_rate",
    }
)

EXAMPLE_CURSORS = """\
Example (explicit teams):
  {"team_ids": [1, 2, 3], "chunk_size": 1000, "max_concurrent_jobs": 5, "max_concurrent_tasks": 10,
   "bug_window_start": "2026-01-06 20:01:00", "bug_window_end": "2026-01-07 14:52:00"}
Example (team id range, inclusive):
  {"range_start": 1, "range_end": 100000, "chunk_size": 1000, "max_concurrent_jobs": 5,
   "max_concurrent_tasks": 10, "bug_window_start": "2026-01-06 20:01:00",
   "bug_window_end": "2026-01-07 14:52:00"}
Common optional fields: dry_run (false), backup_enabled (true), batch_size (100), teams_per_chunk (100),
team_ch_props_fetch_window_seconds (0 = single pass, > 0 = windowed), person_batch_size (10000),
exclude_team_ids ([]), semantics ("original" or "replay", see dbt_project.yml)."""


@dataclass(frozen=True)
class ScheduleConfig:
    """A validated cursor. Exactly one of `team_ids` and (`range_start`, `range_end`) is set."""

    bug_window_start: str
    bug_window_end: str
    team_ids: tuple[int, ...] | None = None
    range_start: int | None = None
    range_end: int | None = None
    exclude_team_ids: tuple[int, ...] = ()
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_concurrent_jobs: int = DEFAULT_MAX_CONCURRENT_JOBS
    max_concurrent_tasks: int = DEFAULT_MAX_CONCURRENT_TASKS
    teams_per_chunk: int = DEFAULT_TEAMS_PER_CHUNK
    dry_run: bool = False
    backup_enabled: bool = True
    batch_size: int = DEFAULT_BATCH_SIZE
    window_seconds: int = 0
    person_batch_size: int = DEFAULT_PERSON_BATCH_SIZE
    persons_db_env_var: str = DEFAULT_PERSONS_DB_ENV_VAR
    semantics: str = "original"
    next_team_index: int | None = None
    next_chunk_start: int | None = None
    max_rate: float | None = None  # persons per second per apply; None = unlimited
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def by_range(self) -> bool:
        return self.team_ids is None

    @property
    def diff_mode(self) -> str:
        """R14.1: `team_ch_props_fetch_window_seconds` <= 0 selects the single-pass diff."""
        return "windowed" if self.window_seconds > 0 else "single_pass"

    def selection(self) -> str:
        if self.team_ids is not None:
            count = len(self.team_ids)
            text = f"{count} team{'' if count == 1 else 's'} {sample_ids(self.team_ids)}"
        else:
            text = f"team ids {self.range_start}..{self.range_end}"
        if self.exclude_team_ids:
            text += f" excluding {sample_ids(self.exclude_team_ids)}"
        return text

    def identity(self) -> dict[str, Any]:
        """What the schedule computes (teams, window, mode, chunking). Caps, batch sizes, dry_run and
        progress fields may change between invocations of one schedule."""
        identity: dict[str, Any] = {
            "team_ids": list(self.team_ids) if self.team_ids is not None else None,
            "range": [self.range_start, self.range_end] if self.by_range else None,
            "exclude_team_ids": sorted(self.exclude_team_ids),
            "chunk_size": self.chunk_size,
            "bug_window": [self.bug_window_start, self.bug_window_end],
            "window_seconds": self.window_seconds,
            "person_batch_size": self.person_batch_size,
        }
        if self.semantics != "original":  # schedules of the default keep their ids
            identity["semantics"] = self.semantics
        return identity

    def schedule_id(self) -> str:
        """Derived from `identity()`, so that invoking the same file again resumes the schedule."""
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()
        return f"sched-{digest[:12]}"

    def to_cursor(self) -> dict[str, Any]:
        """The configuration as a cursor again (unknown fields included), with normalised values."""
        cursor: dict[str, Any] = dict(self.extra)
        if self.team_ids is not None:
            cursor["team_ids"] = list(self.team_ids)
        else:
            cursor["range_start"], cursor["range_end"] = self.range_start, self.range_end
        cursor.update(
            {
                "chunk_size": self.chunk_size,
                "max_concurrent_jobs": self.max_concurrent_jobs,
                "max_concurrent_tasks": self.max_concurrent_tasks,
                "bug_window_start": self.bug_window_start,
                "bug_window_end": self.bug_window_end,
                "dry_run": self.dry_run,
                "backup_enabled": self.backup_enabled,
                "batch_size": self.batch_size,
                "teams_per_chunk": self.teams_per_chunk,
                "team_ch_props_fetch_window_seconds": self.window_seconds,
                "person_batch_size": self.person_batch_size,
                "persons_db_env_var": self.persons_db_env_var,
            }
        )
        if self.exclude_team_ids:
            cursor["exclude_team_ids"] = list(self.exclude_team_ids)
        if self.semantics != "original":
            cursor["semantics"] = self.semantics
        if self.next_team_index is not None:
            cursor["next_team_index"] = self.next_team_index
        if self.next_chunk_start is not None:
            cursor["next_chunk_start"] = self.next_chunk_start
        if self.max_rate is not None:
            cursor["max_rate"] = self.max_rate
        return cursor


def sample_ids(ids: Sequence[int], n: int = 10) -> str:
    """The first `n` ids, for messages: `[1, 2, 3, ...]`."""
    shown = ", ".join(map(str, ids[:n]))
    return f"[{shown}{', ...' if len(ids) > n else ''}]"


_SHOW = reprlib.Repr()
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxstring, _SHOW.maxother = 2, 5, 5, 60, 60


def _show(value: Any) -> str:
    """A short repr for messages, safe on huge or deeply nested values."""
    return _SHOW.repr(value)


class _DuplicateKey(ValueError):
    pass


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook refusing a key given twice (json.loads would keep the last one silently)."""
    members: dict[str, Any] = {}
    for key, value in pairs:
        if key in members:
            raise _DuplicateKey(key)
        members[key] = value
    return members


def parse_cursor(text: str | None, source: str = "the configuration") -> dict[str, Any]:
    """R12.2 rules 1 and 2: a cursor must exist and be a JSON object (each key given once)."""
    if text is None or not text.strip():
        raise ConfigError(f"{source} is empty: nothing to schedule.\n{EXAMPLE_CURSORS}")
    try:
        cursor = json.loads(text, object_pairs_hook=_unique_members)
    except _DuplicateKey as exc:
        raise ConfigError(f"{source} gives the field {_show(exc.args[0])} more than once") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source} is not valid JSON ({exc.msg}): {text[:100]!r}") from exc
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply to be a schedule configuration") from None
    if not isinstance(cursor, dict):
        raise ConfigError(f"{source} must be a JSON object, got: {text[:100]!r}")
    return cursor


def _is_int(value: Any) -> bool:
    if isinstance(value, float):
        return value.is_integer() and abs(value) <= _MAX_EXACT_FLOAT
    return isinstance(value, int) and not isinstance(value, bool)


def _int(cursor: dict[str, Any], name: str, default: int | None = None) -> int | None:
    value = cursor.get(name)
    if value is None:
        return default
    if not _is_int(value):
        raise ConfigError(f"{name} must be an integer, got {_show(value)}")
    return int(value)


def _bool(cursor: dict[str, Any], name: str, default: bool) -> bool:
    value = cursor.get(name, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {_show(value)}")
    return value


def is_team_id(value: Any) -> bool:
    return _is_int(value) and 1 <= int(value) <= MAX_TEAM_ID


def team_id_problem(value: Any) -> str:
    """Why `value` is not a team id (positive, within Postgres bigint)."""
    if not _is_int(value):
        return f"{_show(value)} is not an integer"
    return f"{int(value)} is out of range (team ids are 1 to {MAX_TEAM_ID}, Postgres bigint)"


def _team_id(cursor: dict[str, Any], name: str) -> int | None:
    value = cursor.get(name)
    if value is None:
        return None
    if not is_team_id(value):
        raise ConfigError(f"{name} must be a team id: {team_id_problem(value)}")
    return int(value)


def _id_list(cursor: dict[str, Any], name: str) -> tuple[int, ...]:
    value = cursor.get(name)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{name} must be a list of team ids, got {_show(value)}")
    bad = [v for v in value if not is_team_id(v)]
    if bad:
        raise ConfigError(
            f"{name} must contain team ids only (positive integers within Postgres bigint): "
            + "; ".join(team_id_problem(v) for v in bad[:5])
        )
    return tuple(dict.fromkeys(int(v) for v in value))


def _rate(cursor: dict[str, Any], name: str) -> float | None:
    value = cursor.get(name)
    if value is None:
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number (persons per second), got {_show(value)}")
    return float(value)


def check_fields(cursor: dict[str, Any]) -> None:
    """Every field must be known; a typo names the field it probably meant."""
    for name in cursor:
        if name in KNOWN_FIELDS:
            continue
        close = difflib.get_close_matches(str(name), sorted(KNOWN_FIELDS), n=1, cutoff=0.6)
        known = ", ".join(sorted(KNOWN_FIELDS))
        hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {known}"
        raise ConfigError(f"unknown field {_show(name)} in the schedule configuration{hint}")


def parse_time(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string 'YYYY-MM-DD HH:MM:SS' (UTC), got {value!r}")
    try:
        return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as exc:
        raise ConfigError(f"{name} must be 'YYYY-MM-DD HH:MM:SS' (UTC), got {value!r}") from exc


def validate(cursor: dict[str, Any]) -> ScheduleConfig:
    """Unknown fields first, then R12.2 rules 3 to 7 in order, then the checks the original left to chance."""
    check_fields(cursor)
    team_ids_raw = cursor.get("team_ids")
    has_team_ids = team_ids_raw is not None and team_ids_raw != []
    has_range = cursor.get("range_start") is not None and cursor.get("range_end") is not None
    # 3, 4
    if has_team_ids and has_range:
        raise ConfigError(
            f"cannot specify both team_ids ({_short(team_ids_raw)}) and range_start/range_end "
            f"({_show(cursor.get('range_start'))}..{_show(cursor.get('range_end'))})"
        )
    if not has_team_ids and not has_range:
        raise ConfigError(
            "must specify either team_ids or both range_start and range_end "
            "(an empty team_ids list counts as absent)"
        )
    # 5
    chunk_size = _int(cursor, "chunk_size", DEFAULT_CHUNK_SIZE)
    assert chunk_size is not None
    if chunk_size <= 0:
        raise ConfigError(f"chunk_size must be positive, got {chunk_size}")
    max_jobs = _int(cursor, "max_concurrent_jobs", DEFAULT_MAX_CONCURRENT_JOBS)
    assert max_jobs is not None
    if max_jobs <= 0:
        raise ConfigError(f"max_concurrent_jobs must be positive, got {max_jobs}")
    if max_jobs > MAX_CONCURRENT_JOBS_CAP:
        raise ConfigError(f"max_concurrent_jobs {max_jobs} exceeds cap of {MAX_CONCURRENT_JOBS_CAP}")
    max_tasks = _int(cursor, "max_concurrent_tasks", DEFAULT_MAX_CONCURRENT_TASKS)
    assert max_tasks is not None
    if max_tasks <= 0:
        raise ConfigError(f"max_concurrent_tasks must be positive, got {max_tasks}")
    if max_tasks > MAX_CONCURRENT_TASKS_CAP:
        raise ConfigError(f"max_concurrent_tasks {max_tasks} exceeds cap of {MAX_CONCURRENT_TASKS_CAP}")
    # 6
    for name in ("bug_window_start", "bug_window_end"):
        if cursor.get(name) in (None, ""):
            raise ConfigError(f"{name} is required (format 'YYYY-MM-DD HH:MM:SS', UTC)")
    # 7
    range_start = range_end = None
    team_ids: tuple[int, ...] | None = None
    if has_range:
        range_start = _team_id(cursor, "range_start")
        range_end = _team_id(cursor, "range_end")
        assert range_start is not None and range_end is not None
        if range_start > range_end:
            raise ConfigError(f"range_start ({range_start}) must not be greater than range_end ({range_end})")
    else:
        team_ids = _id_list(cursor, "team_ids")

    # Beyond the original: types, formats and the window's order.
    w0 = parse_time(cursor["bug_window_start"], "bug_window_start")
    w1 = parse_time(cursor["bug_window_end"], "bug_window_end")
    if w0 >= w1:
        raise ConfigError(
            f"bug_window_start ({cursor['bug_window_start']}) must be before "
            f"bug_window_end ({cursor['bug_window_end']})"
        )
    teams_per_chunk = _int(cursor, "teams_per_chunk", DEFAULT_TEAMS_PER_CHUNK)
    batch_size = _int(cursor, "batch_size", DEFAULT_BATCH_SIZE)
    window_seconds = _int(cursor, "team_ch_props_fetch_window_seconds", 0)
    person_batch_size = _int(cursor, "person_batch_size", DEFAULT_PERSON_BATCH_SIZE)
    assert teams_per_chunk is not None and batch_size is not None
    assert window_seconds is not None and person_batch_size is not None
    if person_batch_size <= 0:
        raise ConfigError(f"person_batch_size must be positive, got {person_batch_size}")
    env_var = cursor.get("persons_db_env_var", DEFAULT_PERSONS_DB_ENV_VAR)
    if not isinstance(env_var, str) or not env_var:
        raise ConfigError(f"persons_db_env_var must name an environment variable, got {_show(env_var)}")
    semantics = cursor.get("semantics") or "original"
    if semantics not in ("original", "replay"):
        raise ConfigError(f"semantics must be 'original' or 'replay', got {_show(semantics)}")
    next_team_index = _int(cursor, "next_team_index")
    next_chunk_start = _team_id(cursor, "next_chunk_start")
    if next_team_index is not None and next_team_index < 0:
        raise ConfigError(f"next_team_index must not be negative, got {next_team_index}")
    return ScheduleConfig(
        bug_window_start=w0.strftime(TIME_FORMAT),
        bug_window_end=w1.strftime(TIME_FORMAT),
        team_ids=team_ids,
        range_start=range_start,
        range_end=range_end,
        exclude_team_ids=_id_list(cursor, "exclude_team_ids"),
        chunk_size=chunk_size,
        max_concurrent_jobs=max_jobs,
        max_concurrent_tasks=max_tasks,
        teams_per_chunk=max(1, teams_per_chunk),  # R11.1: values below 1 are treated as 1
        dry_run=_bool(cursor, "dry_run", False),
        backup_enabled=_bool(cursor, "backup_enabled", True),
        batch_size=max(0, batch_size),  # R14.1: <= 0 is a single commit per team
        window_seconds=max(0, window_seconds),
        person_batch_size=person_batch_size,
        persons_db_env_var=env_var,
        semantics=semantics,
        next_team_index=next_team_index,
        next_chunk_start=next_chunk_start,
        max_rate=_rate(cursor, "max_rate"),
    )


def _short(value: Any) -> str:
    return _show(value)


def load(
    text: str | None, *, source: str = "the configuration", team_ids: Sequence[int] | None = None
) -> ScheduleConfig:
    """Parse and validate a cursor; `team_ids` (from `--team-ids-from`) sets the team list."""
    cursor = parse_cursor(text, source)
    if team_ids is not None:
        if cursor.get("team_ids"):
            raise ConfigError(
                f"the team list is given twice: team_ids in {source} and --team-ids-from; keep one"
            )
        cursor = {**cursor, "team_ids": list(team_ids)}
    return validate(cursor)


def read_team_ids_csv(path: Path) -> list[int]:
    """Team ids from a CSV with a `team_id` column (the report's CSV), or one id per line. Every row
    counts; a warning names rows whose `status` says the team succeeded (the report was probably
    exported without `--status failed`)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read team ids from {path}: {exc.strerror}") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        return []
    header = [cell.strip() for cell in rows[0][1]]
    column, body = (header.index("team_id"), rows[1:]) if "team_id" in header else (0, rows)
    status_column = header.index("status") if "status" in header and "team_id" in header else None
    ids: list[int] = []
    succeeded: list[int] = []
    for line_no, row in body:
        cell = row[column].strip() if column < len(row) else ""
        try:
            ids.append(int(cell))
        except ValueError:
            raise ConfigError(f"{path} line {line_no}: team id must be an integer, got {cell!r}") from None
        if not is_team_id(ids[-1]):
            raise ConfigError(f"{path} line {line_no}: team id {team_id_problem(ids[-1])}")
        if status_column is not None and status_column < len(row) and row[status_column] == "succeeded":
            succeeded.append(ids[-1])
    if succeeded:
        log.warning(
            "%s lists %d teams that succeeded (%s); they run again too (export with --status failed)",
            path,
            len(succeeded),
            sample_ids(succeeded),
        )
    return list(dict.fromkeys(ids))


def load_files(config_file: Path, team_ids_from: Path | None, dry_run: bool) -> ScheduleConfig | None:
    """`runner schedule`'s configuration from its files; `dry_run` (the `--dry-run` flag) forces a dry
    run. None when `team_ids_from` names no team (nothing to do; the configuration is still parsed)."""
    try:
        text = config_file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read --config {config_file}: {exc.strerror}") from exc
    team_ids = None
    if team_ids_from is not None:
        team_ids = read_team_ids_csv(team_ids_from)
        if not team_ids:
            parse_cursor(text, str(config_file))
            return None
    config = load(text, source=str(config_file), team_ids=team_ids)
    if dry_run and not config.dry_run:
        config = validate({**config.to_cursor(), "dry_run": True})
    return config
