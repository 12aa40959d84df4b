"""The JSON lines `runner apply` and `runner restore` print with `--output json`: their sinks (what the
engine calls as persons are staged, batches close or roll back, teams and the run finish) and the lines.

A person's line is written once its batch committed; lines of a rolled-back batch come out as
`team_failed`. Staged lines wait in a spooled file, so memory stays flat even with `--batch-size 0`.
Numbers in the persons' values keep their exact text (`runner.rules.merge.json_dumps`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from typing import IO, Any

from runner.jobs.apply import OUTCOMES, TEAM_FAILED, PersonResult, RunResult, TeamResult
from runner.jobs.restore import OUTCOMES as RESTORE_OUTCOMES
from runner.jobs.restore import PersonRestore, RestoreRun, TeamRestore
from runner.rules.merge import diff_entries, json_dumps
from runner.stores import diffs, outbox

# --- apply ---------------------------------------------------------------------------------------


def person_line(result: PersonResult) -> dict[str, Any]:
    diff = result.item
    set_values, set_once_values, unset_keys, timestamps = diff_entries(diff)
    return {
        "type": "person",
        "team_id": diff.team_id,
        "person_uuid": str(diff.person_uuid),
        "outcome": result.outcome,
        "ch_version": diff.baseline_version,
        "set": set_values,
        "set_once": set_once_values,
        "unset": unset_keys,
        "timestamps": timestamps,
        "properties_before": result.properties_before,
        "properties_after": result.properties_after,
        "version_before": result.version_before,
        "version_after": result.version_after,
        "reason": result.reason,
    }


def semantics_of(teams: Sequence[diffs.TeamSummary]) -> str:
    """The diff's `semantics` var (teams kept from other builds may differ: all of them, joined)."""
    return "+".join(sorted({t.semantics for t in teams})) or "original"


def summary_line(run: RunResult) -> dict[str, Any]:
    return {
        "type": "summary",
        "job_id": run.job_id,
        "dry_run": run.dry_run,
        "teams": [
            {
                "team_id": t.team_id,
                "status": t.status,
                "error": t.error,
                "processed": t.processed,
                "updated": t.updated,
                "skipped": t.skipped,
                "commits": t.commits,
                "outcomes": {o: t.outcomes.get(o, 0) for o in OUTCOMES},
                "failures": [{"person_uuid": u, "outcome": o, "reason": r} for u, o, r in t.failures],
            }
            for t in run.teams
        ],
        "processed": run.total("processed"),
        "updated": run.total("updated"),
        "skipped": run.total("skipped"),
        "quarantined": run.quarantined,
        "quarantine_note": outbox.quarantine_note(run.job_id, run.quarantined) if run.quarantined else None,
        "stages": run.stages,  # wall and thread CPU seconds per stage (runner.engine.stages)
    }


class JsonSink:
    """JSON lines on stdout: a person's line is written once its batch closed; lines of a rolled-back
    batch come out as `team_failed`. Staged lines wait in a spooled file, so memory stays flat even with
    `--batch-size 0`."""

    def __init__(self, out: IO[str]):
        self.out = out
        self._semantics = "original"
        self._staged: Any = tempfile.SpooledTemporaryFile(
            max_size=32 * 1024 * 1024, mode="w+", encoding="utf-8"
        )

    def run_started(self, job_id: str, dry_run: bool, teams: Sequence[diffs.TeamSummary]) -> None:
        self._semantics = semantics_of(teams)

    def stage(self, result: PersonResult) -> None:
        self._staged.write(json_dumps(person_line(result)))  # numbers as their exact text
        self._staged.write("\n")

    def _drain(self) -> Any:
        self._staged.seek(0)
        yield from self._staged
        self._staged.seek(0)
        self._staged.truncate()

    def batch_closed(self) -> None:
        for line in self._drain():
            self.out.write(line)
        self.out.flush()

    def batch_failed(self) -> None:
        for line in self._drain():
            record = json.loads(line)
            record.update(outcome=TEAM_FAILED, properties_after=None, version_after=None)
            self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def team_finished(self, team: TeamResult) -> None:
        pass

    def run_finished(self, run: RunResult) -> None:
        self.out.write(json.dumps({**summary_line(run), "semantics": self._semantics}) + "\n")
        self.out.flush()


# --- restore -------------------------------------------------------------------------------------


def restore_person_line(result: PersonRestore) -> dict[str, Any]:
    entry = result.item
    return {
        "type": "person",
        "team_id": entry.team_id,
        "person_id": entry.person_id,
        "person_uuid": str(entry.uuid),
        "outcome": result.outcome,
        "properties_before": result.properties_before,
        "properties_after": result.properties_after,
        "version_before": result.version_before,
        "version_after": result.version_after,
        "reason": result.reason,
    }


def restore_team_line(team: TeamRestore) -> dict[str, Any]:
    return {
        "team_id": team.team_id,
        "status": team.status,
        "error": team.error,
        "processed": team.processed,
        "restored": team.updated,
        "skipped": team.skipped,
        "outcomes": {outcome: team.outcomes.get(outcome, 0) for outcome in RESTORE_OUTCOMES},
        "already_restored": team.already_done,
        "commits": team.commits,
        "failures": [{"person_uuid": u, "outcome": o, "reason": r} for u, o, r in team.failures],
    }


def restore_summary_line(run: RestoreRun) -> dict[str, Any]:
    cfg = run.config
    return {
        "type": "summary",
        "job_id": cfg.job_id,
        "restore_job_id": cfg.restore_job_id,
        "strategy": cfg.strategy,
        "dry_run": cfg.dry_run,
        "teams": [restore_team_line(t) for t in run.teams],
        "processed": run.total("processed"),
        "restored": run.total("updated"),
        "skipped": run.total("skipped"),
        "error": run.error,
        "quarantined": run.quarantined,
        "quarantine_note": (
            outbox.quarantine_note(cfg.restore_job_id, run.quarantined) if run.quarantined else None
        ),
    }


class RestoreJsonSink(JsonSink):
    """apply's JSON lines machinery (lines of a rolled-back batch come out as `team_failed`) with the
    restore's person and summary lines."""

    def restore_started(self, run: RestoreRun, teams: Sequence[tuple[int, int]]) -> None:
        pass

    def person(self, result: PersonRestore) -> None:
        self._staged.write(json_dumps(restore_person_line(result)) + "\n")  # numbers as their exact text

    def team_done(self, team: TeamRestore) -> None:
        pass

    def restore_finished(self, run: RestoreRun) -> None:
        self.out.write(json.dumps(restore_summary_line(run)) + "\n")
        self.out.flush()
