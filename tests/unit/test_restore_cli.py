"""`runner restore` without the stack: options, configuration checks, metrics and output shapes."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from uuid import UUID

import click
import pytest
from click.testing import CliRunner

from runner.cli import main
from runner.commands.restore import _team_table
from runner.jobs.output import restore_person_line as person_line
from runner.jobs.output import restore_summary_line as summary_line
from runner.jobs.restore import (
    BackupEntry,
    PersonRestore,
    RestoreConfig,
    RestoreRun,
    TeamRestore,
    default_restore_job_id,
    team_counters,
)
from runner.rules.restore import PersonState


def test_every_option_shows_its_environment_variable():
    command = main.get_command(click.Context(main), "restore")
    assert command is not None
    options = [p for p in command.params if isinstance(p, click.Option) and p.name != "help"]
    assert {o.opts[0] for o in options} >= {
        "--job-id", "--strategy", "--team-id", "--person-id", "--person-uuid", "--dry-run",
        "--restore-job-id", "--backup-batch-size", "--batch-size", "--output",
    }  # fmt: skip
    assert all(o.envvar and o.show_envvar for o in options)
    help_text = " ".join(CliRunner().invoke(main, ["restore", "--help"]).output.split())
    for option in options:
        assert f"env var: {option.envvar}" in help_text


@pytest.mark.parametrize("args", [["--strategy", "newest"], ["--backup-batch-size", "0"], []])
def test_bad_usage_exits_2_before_touching_anything(args, monkeypatch):
    monkeypatch.setenv("PERSONS_DB_WRITER_URL", "postgresql://nowhere.invalid/none")
    result = CliRunner().invoke(main, ["restore", *(["--job-id", "j"] if args else []), *args])
    assert result.exit_code == 2
    assert result.stdout == ""


def test_unknown_strategy_in_the_environment_is_named():
    result = CliRunner().invoke(main, ["restore", "--job-id", "j"], env={"RECON_RESTORE_STRATEGY": "newest"})
    assert result.exit_code == 2
    assert "'newest' is not one of 'keep_newer', 'restore_wins', 'full_overwrite'" in result.stderr


def test_config_rejects_unknown_strategy():
    with pytest.raises(ValueError, match="unknown restore strategy"):
        RestoreConfig(job_id="j", restore_job_id="r", strategy="newest")


def test_default_restore_job_id():
    assert default_restore_job_id("job-7", datetime(2026, 1, 20, 9, 5, 3, tzinfo=UTC)) == (
        "restore-job-7-20260120T090503Z"
    )


def team(status: str, **outcomes: int) -> TeamRestore:
    t = TeamRestore(4, status=status, outcomes=Counter(outcomes), backups=sum(outcomes.values()))
    t.updated = outcomes.get("restored", 0)
    t.duration_seconds = 1.5
    return t


def test_metrics_of_a_team_follow_r13_7():
    ok = {c.name: (c.labels, c.increment) for c in team_counters(team("succeeded", restored=2, skipped=1))}
    labels = {"job_name": "person_property_restore_job", "chunk_id": "team_4"}
    assert ok == {
        "person_property_restore_persons_processed_total": (labels, 3.0),
        "person_property_restore_duration_seconds_total": (labels, 1.5),
        "person_property_restore_persons_restored_total": (labels, 2.0),
        "person_property_restore_persons_skipped_total": (labels, 1.0),
    }
    failed = {c.name: c.labels for c in team_counters(team("failed", restored=1, team_failed=2))}
    assert set(failed) == {
        "person_property_restore_persons_processed_total",
        "person_property_restore_duration_seconds_total",
        "person_property_restore_error",
    }
    assert failed["person_property_restore_error"] == {**labels, "reason": "error"}
    # An incomplete team's committed work counts, and so does its error.
    incomplete = {c.name: c.increment for c in team_counters(team("incomplete", restored=3, skipped=1))}
    assert incomplete["person_property_restore_persons_restored_total"] == 3.0
    assert incomplete["person_property_restore_persons_skipped_total"] == 1.0
    assert incomplete["person_property_restore_error"] == 1.0


def test_output_shapes():
    entry = BackupEntry(4, 17, UUID(int=5), PersonState.of({"a": 1}, None, None), None)
    line = person_line(PersonRestore(entry, "restored", {"a": 2}, {"a": 1}, None, 1))
    assert line == {
        "type": "person",
        "team_id": 4,
        "person_id": 17,
        "person_uuid": str(UUID(int=5)),
        "outcome": "restored",
        "properties_before": {"a": 2},
        "properties_after": {"a": 1},
        "version_before": None,
        "version_after": 1,
        "reason": None,
    }
    run = RestoreRun(
        RestoreConfig(job_id="j", restore_job_id="r", dry_run=True), [team("succeeded", restored=2)]
    )
    summary = summary_line(run)
    assert (summary["restored"], summary["skipped"], summary["teams"][0]["outcomes"]["restored"]) == (2, 0, 2)
    table = _team_table(run).splitlines()
    assert table[0].split()[:5] == ["team", "status", "processed", "would", "restore"]
    assert table[-1].split()[:4] == ["total", "1/1", "ok", "2"]
