"""The scheduler's plan: chunks and task slices of a validated configuration. Pure, no I/O.

The configuration (`runner.config.schedule.ScheduleConfig`) is the original sensor cursor. The plan is
lazy: chunks are generated as they run, so memory and `--plan` time do not grow with the size of a team
id range.

Two levels of chunking, as in the original:

- a **chunk** (R12.4/R12.5) is what one launched run covers: `chunk_size` teams of the list, or a
  sub-range of `chunk_size` team ids. Each chunk is built by dbt once (vars `team_ids`, or
  `min_team_id`/`max_team_id`) and applied under its own job id; it is the unit of progress.
- a **task** (R11.1) is a slice of `teams_per_chunk` of the teams the chunk's build selected; tasks of
  a chunk are applied with up to `max_concurrent_tasks` at once, and carry the original's chunk ids
  (`teams_<first>_<last>`, `team_<id>`) in the ledger and the metrics.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from runner.config.schedule import ScheduleConfig, sample_ids


@dataclass(frozen=True)
class Chunk:
    """What one launched run covers: a slice of the team list or a sub-range of team ids."""

    label: str  # R12.4/R12.5 tag value: "<i>-<end>" list indices, or "<s>-<e>" team ids
    team_ids: tuple[int, ...] | None = None
    min_team_id: int | None = None
    max_team_id: int | None = None

    @property
    def by_range(self) -> bool:
        return self.team_ids is None

    def key(self) -> str:
        """Identifier part of the chunk's job id: `teams-<i>-<end>` or `range-<s>-<e>`."""
        return ("range-" if self.by_range else "teams-") + self.label

    def job_id(self, schedule_id: str) -> str:
        return f"{schedule_id}-{self.key()}"

    def describe(self) -> str:
        if self.team_ids is not None:
            return f"teams {sample_ids(self.team_ids, 5)} (list positions {self.label})"
        return f"team ids {self.min_team_id}..{self.max_team_id}"

    def tags(self) -> dict[str, str]:
        """The original's run tags (R12.4, R12.5)."""
        if self.team_ids is not None:
            return {
                "reconciliation_team_ids_range": self.label,
                "reconciliation_team_count": str(len(self.team_ids)),
                "owner": "team-ingestion",
            }
        return {"reconciliation_range": self.label, "owner": "team-ingestion"}

    def selects(self, team_id: int, excluded: Sequence[int] = ()) -> bool:
        if team_id in excluded:
            return False
        if self.team_ids is not None:
            return team_id in self.team_ids
        assert self.min_team_id is not None and self.max_team_id is not None
        return self.min_team_id <= team_id <= self.max_team_id

    def run_settings(self, config: ScheduleConfig) -> dict[str, Any]:
        """R12.6: the configuration the run gets (team filter plus the common settings)."""
        selection: dict[str, Any] = (
            {"team_ids": list(self.team_ids)}
            if self.team_ids is not None
            else {"min_team_id": self.min_team_id, "max_team_id": self.max_team_id}
        )
        if config.exclude_team_ids:
            selection["exclude_team_ids"] = list(config.exclude_team_ids)
        settings = {
            **selection,
            "bug_window_start": config.bug_window_start,
            "bug_window_end": config.bug_window_end,
            "dry_run": config.dry_run,
            "backup_enabled": config.backup_enabled,
            "batch_size": config.batch_size,
            "teams_per_chunk": config.teams_per_chunk,
            "team_ch_props_fetch_window_seconds": config.window_seconds,
            "person_batch_size": config.person_batch_size,
        }
        if config.semantics != "original":
            settings["semantics"] = config.semantics
        if config.max_rate is not None:
            settings["max_rate"] = config.max_rate
        return settings

    def dbt_vars(self, config: ScheduleConfig, source_database: str | None = None) -> dict[str, Any]:
        """The vars of this chunk's dbt build (see dbt_project.yml)."""
        dbt_vars: dict[str, Any] = {
            "bug_window_start": config.bug_window_start,
            "bug_window_end": config.bug_window_end,
            "window_seconds": config.window_seconds,
            "person_batch_size": config.person_batch_size,
        }
        if self.team_ids is not None:
            dbt_vars["team_ids"] = list(self.team_ids)
        else:
            dbt_vars["min_team_id"], dbt_vars["max_team_id"] = self.min_team_id, self.max_team_id
        if config.exclude_team_ids:
            dbt_vars["exclude_team_ids"] = list(config.exclude_team_ids)
        if config.semantics != "original":
            dbt_vars["semantics"] = config.semantics
        if source_database:
            dbt_vars["source_database"] = source_database
        return dbt_vars

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "team_ids": list(self.team_ids) if self.team_ids is not None else None,
            "min_team_id": self.min_team_id,
            "max_team_id": self.max_team_id,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Chunk:
        ids = data.get("team_ids")
        return cls(
            label=str(data["label"]),
            team_ids=tuple(int(t) for t in ids) if ids is not None else None,
            min_team_id=data.get("min_team_id"),
            max_team_id=data.get("max_team_id"),
        )


def start_position(config: ScheduleConfig) -> int:
    """Where the plan starts: `next_team_index` (default 0) or `next_chunk_start` (default range_start)."""
    if config.team_ids is not None:
        return config.next_team_index or 0
    assert config.range_start is not None
    return config.next_chunk_start if config.next_chunk_start is not None else config.range_start


def iter_chunks(config: ScheduleConfig, position: int | None = None) -> Iterator[tuple[Chunk, int]]:
    """Chunks from `position` on (R12.4 / R12.5), each with the position after it."""
    pos = start_position(config) if position is None else position
    if config.team_ids is not None:
        ids = config.team_ids
        while pos < len(ids):
            end = min(pos + config.chunk_size, len(ids))
            yield Chunk(label=f"{pos}-{end - 1}", team_ids=ids[pos:end]), end
            pos = end
    else:
        assert config.range_end is not None
        while pos <= config.range_end:
            end = min(pos + config.chunk_size - 1, config.range_end)
            yield Chunk(label=f"{pos}-{end}", min_team_id=pos, max_team_id=end), end + 1
            pos = end + 1


def plan_chunks(config: ScheduleConfig) -> list[Chunk]:
    """Every chunk as a list: for small plans and tests; `runner schedule` iterates `iter_chunks`."""
    return [chunk for chunk, _ in iter_chunks(config)]


def chunk_count(config: ScheduleConfig, position: int | None = None) -> int:
    """How many chunks `iter_chunks` yields, computed without generating them."""
    pos = start_position(config) if position is None else position
    if config.team_ids is not None:
        remaining = len(config.team_ids) - pos
    else:
        assert config.range_end is not None
        remaining = config.range_end - pos + 1
    return max(0, -(-remaining // config.chunk_size))


@dataclass(frozen=True)
class Launch:
    """One sensor tick (R12.3 to R12.5): the chunks to launch now and the cursor to write back."""

    chunks: list[Chunk]
    cursor: dict[str, Any]
    skip_reason: str | None = None


def plan_launch(cursor: dict[str, Any], config: ScheduleConfig, active_runs: int) -> Launch:
    """The original sensor's decision for one tick. Progress is recorded at launch (R12.7)."""
    available = max(0, config.max_concurrent_jobs - active_runs)
    if available == 0:
        return Launch(
            [], cursor, f"at max concurrency: {active_runs} active runs of {config.max_concurrent_jobs}"
        )
    position = start_position(config)
    if config.team_ids is not None and position >= len(config.team_ids):
        return Launch([], cursor, f"complete: all {len(config.team_ids)} teams launched")
    if config.by_range and position > (config.range_end or 0):
        return Launch([], cursor, f"complete up to range_end {config.range_end}")
    chunks: list[Chunk] = []
    for chunk, after in iter_chunks(config, position):
        chunks.append(chunk)
        position = after
        if len(chunks) >= available:
            break
    progress_field = "next_team_index" if config.team_ids is not None else "next_chunk_start"
    return Launch(chunks, {**cursor, progress_field: position})


def task_slices(team_ids: Sequence[int], teams_per_chunk: int) -> list[tuple[str, list[int]]]:
    """R11.1: the sorted teams in slices of `teams_per_chunk`, each with its chunk id."""
    ordered = sorted(team_ids)
    size = max(1, teams_per_chunk)
    slices = [ordered[i : i + size] for i in range(0, len(ordered), size)]
    return [(chunk_id(s), s) for s in slices]


def chunk_id(team_ids: Sequence[int]) -> str:
    """R11.1: `teams_<first>_<last>` for several teams, `team_<id>` for one."""
    if len(team_ids) == 1:
        return f"team_{team_ids[0]}"
    if not team_ids:
        return "teams_none"
    return f"teams_{team_ids[0]}_{team_ids[-1]}"
