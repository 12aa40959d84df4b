"""Dagster definitions (optional extra `recon[dagster]`): the reconciliation as a Dagster job launched
by a sensor that reads the original JSON cursor, as PostHog ran it.

- `person_property_reconciliation_job`, one run per scheduler chunk (its run config is the original's
  R12.6 run configuration): `discover_teams` builds the chunk's diff with dbt and returns the teams the
  build selected; `plan_team_chunks` fans them out in slices of `teams_per_chunk` (R11.1 chunk ids as
  mapping keys); `reconcile_chunk` applies one slice (the same function `runner schedule` uses, under
  the Dagster run id as job id, so the ledger and `runner report` see it); `summarize` sets the run's
  ledger status and fails the Dagster run when a team failed (the original's chunk tasks succeeded
  regardless, R11.4; we make failures visible). Ops share nothing but their inputs: each opens its own
  connections, and dbt writes its artifacts to a temporary directory of its own.
- `person_property_reconciliation_scheduler`, a sensor (stopped by default, every 30 s) whose cursor is
  the configuration and the progress (R12.1 to R12.7): it validates the cursor, counts active runs of
  the job (queued, not started, starting, started), launches up to `max_concurrent_jobs - active` runs
  with the original tags, and writes `next_team_index` / `next_chunk_start` back. Progress is recorded
  at launch, as in the original; `runner report` finds the teams that failed.

Where the job may run:
- embedded ClickHouse (chDB): one process per engine path, so the runs must execute in the process
  that holds the engine, one at a time, with the in-process executor and `ReconDbt(mode="in_process")`
  (the sensor then sets `in_process` execution and ignores `max_concurrent_tasks`).
- ClickHouse server: the multiprocess executor runs up to `max_concurrent_tasks` slices at once; with
  `ReconDbt(mode="dbt_cli")` dbt runs as a subprocess through dagster-dbt. Builds of concurrent runs
  must not overlap (dbt's intermediate tables of the same models would collide): the build op is in
  the pool `recon_dbt`; give it a limit of 1 in the Dagster instance (`concurrency: pools:`).
"""

# No `from __future__ import annotations`: Dagster reads the ops' annotations at definition time.
import json
import tempfile
from dataclasses import asdict
from typing import Any

from dagster import Config as DagsterConfig
from dagster import (
    ConfigurableResource,
    DagsterRunStatus,
    DefaultSensorStatus,
    Definitions,
    DynamicOut,
    DynamicOutput,
    Failure,
    OpExecutionContext,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    job,
    op,
    sensor,
)

from runner.config import schedule, settings
from runner.config.schedule import ScheduleConfig
from runner.config.settings import ConfigError
from runner.jobs.chunk_run import (
    SUCCEEDED,
    Built,
    DbtInvoker,
    Targets,
    TeamOutcome,
    apply_chunk,
    apply_task,
    build_chunk,
    dbt_in_process,
    finish_run,
    ledger_config,
)
from runner.rules import scheduling
from runner.rules.scheduling import Chunk
from runner.stores import diffs, warehouse
from runner.stores.metrics import JOB_NAME

DBT_POOL = "recon_dbt"
ACTIVE_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


class ReconciliationRunConfig(DagsterConfig):
    """One run's configuration: the original's R12.6 fields (team list or team id range)."""

    bug_window_start: str
    bug_window_end: str
    team_ids: list[int] | None = None
    min_team_id: int | None = None
    max_team_id: int | None = None
    exclude_team_ids: list[int] = []
    dry_run: bool = False
    backup_enabled: bool = True
    batch_size: int = schedule.DEFAULT_BATCH_SIZE
    teams_per_chunk: int = schedule.DEFAULT_TEAMS_PER_CHUNK
    team_ch_props_fetch_window_seconds: int = 0
    person_batch_size: int = schedule.DEFAULT_PERSON_BATCH_SIZE
    persons_db_env_var: str = schedule.DEFAULT_PERSONS_DB_ENV_VAR
    semantics: str = "original"
    max_rate: float | None = None
    chunk_label: str | None = None


def chunk_of_run(run: dict[str, Any]) -> tuple[ScheduleConfig, Chunk]:
    """The scheduler configuration and chunk a run covers, validated like a cursor."""
    common = {
        key: run[key]
        for key in (
            "bug_window_start",
            "bug_window_end",
            "exclude_team_ids",
            "dry_run",
            "backup_enabled",
            "batch_size",
            "teams_per_chunk",
            "team_ch_props_fetch_window_seconds",
            "person_batch_size",
            "persons_db_env_var",
            "semantics",
            "max_rate",
        )
        if run.get(key) is not None
    }
    team_ids = run.get("team_ids")
    if team_ids:
        config = schedule.validate(
            {**common, "team_ids": team_ids, "chunk_size": len(team_ids), "max_concurrent_tasks": 1}
        )
        assert config.team_ids is not None
        label = run.get("chunk_label") or f"0-{len(config.team_ids) - 1}"
        return config, Chunk(label=label, team_ids=config.team_ids)
    low, high = run.get("min_team_id"), run.get("max_team_id")
    if low is None or high is None:
        raise ConfigError("a run needs team_ids, or both min_team_id and max_team_id")
    config = schedule.validate(
        {
            **common,
            "range_start": low,
            "range_end": high,
            "chunk_size": high - low + 1,
            "max_concurrent_tasks": 1,
        }
    )
    return config, Chunk(label=f"{low}-{high}", min_team_id=low, max_team_id=high)


class ReconDbt(ConfigurableResource):  # type: ignore[type-arg]
    """How `discover_teams` runs dbt. `in_process` (default) is required with the embedded engine;
    `dbt_cli` runs dbt as a subprocess through dagster-dbt (for a ClickHouse server; `target` selects
    the profile's output, e.g. `prod`)."""

    mode: str = "in_process"
    target: str | None = None

    def invoker(self) -> DbtInvoker:
        if self.mode == "in_process":

            def in_process(dbt_vars: dict[str, Any]) -> str:
                # Artifacts and logs of this build in a directory of its own: nothing shared on disk.
                with tempfile.TemporaryDirectory(prefix="recon-dbt-") as scratch:
                    extra = ["--target-path", scratch, "--log-path", scratch]
                    if self.target:
                        extra += ["--target", self.target]
                    return dbt_in_process(extra)(dbt_vars)

            return in_process
        if self.mode == "dbt_cli":
            return self._dbt_cli

        raise ConfigError(f"ReconDbt mode must be in_process or dbt_cli, got {self.mode!r}")

    def _dbt_cli(self, dbt_vars: dict[str, Any]) -> str:
        from dagster_dbt import DbtCliResource

        project = settings.project_dir()
        dbt = DbtCliResource(
            project_dir=str(project), profiles_dir=str(project / "profiles"), target=self.target
        )
        invocation = dbt.cli(["run", "--vars", json.dumps(dbt_vars)]).wait()
        return str(invocation.get_artifact("run_results.json")["metadata"]["invocation_id"])


def _summary_json(team: diffs.TeamSummary) -> dict[str, Any]:
    return asdict(team)


@op(pool=DBT_POOL, description="Build the chunk's diff with dbt; returns the teams the build selected.")
def discover_teams(
    context: OpExecutionContext, config: ReconciliationRunConfig, recon_dbt: ReconDbt
) -> dict[str, Any]:
    run = config.model_dump()
    schedule_config, chunk = chunk_of_run(run)
    targets = Targets.resolve(schedule_config)
    built: Built = build_chunk(schedule_config, chunk, targets, recon_dbt.invoker())
    if built.error is not None:
        failed = apply_chunk(schedule_config, chunk, context.run_id, built, targets)  # records the failure
        raise Failure(description=failed.error, metadata={"teams_failed": len(failed.teams)})
    context.add_output_metadata({"team_count": len(built.teams), "invocation_id": built.invocation_id or ""})
    return {"run": run, "teams": [_summary_json(t) for t in built.teams]}


@op(out=DynamicOut(), description="One output per slice of teams_per_chunk teams (R11.1).")
def plan_team_chunks(context: OpExecutionContext, discovered: dict[str, Any]):  # type: ignore[no-untyped-def]
    schedule_config, _ = chunk_of_run(discovered["run"])
    ids = [t["team_id"] for t in discovered["teams"]]
    by_id = {t["team_id"]: t for t in discovered["teams"]}
    slices = scheduling.task_slices(ids, schedule_config.teams_per_chunk)
    context.log.info(f"{len(ids)} teams in {len(slices)} chunks")
    for task_id, members in slices:
        yield DynamicOutput(
            {"run": discovered["run"], "task": task_id, "teams": [by_id[t] for t in members]},
            mapping_key=task_id,
        )


@op(description="Apply one slice of teams; every team's outcome goes to the run ledger (R11.2).")
def reconcile_chunk(context: OpExecutionContext, task: dict[str, Any]) -> dict[str, Any]:
    schedule_config, chunk = chunk_of_run(task["run"])
    targets = Targets.resolve(schedule_config)
    teams = [diffs.TeamSummary(**t) for t in task["teams"]]
    outcomes = apply_task(
        schedule_config,
        context.run_id,
        task["task"],
        teams,
        targets,
        ledger_config(schedule_config, chunk, None),
    )
    result = chunk_result(task["task"], outcomes)
    context.add_output_metadata({k: v for k, v in result.items() if k != "teams_results"})
    failed = [t for t in outcomes if t.status != SUCCEEDED]
    if failed:
        context.log.warning(f"chunk {task['task']}: teams failed: {[t.team_id for t in failed]}")
    return result


def chunk_result(chunk_id: str, outcomes: list[TeamOutcome]) -> dict[str, Any]:
    """R11.6, as returned and attached by the original's chunk task."""
    ids = [t.team_id for t in outcomes]
    failed = [t.team_id for t in outcomes if t.status != SUCCEEDED]
    return {
        "chunk_id": chunk_id,
        "team_ids": str(ids),
        "teams_count": len(ids),
        "teams_succeeded": len(ids) - len(failed),
        "teams_failed": len(failed),
        "failed_team_ids": str(failed),
        "persons_processed": sum(t.processed for t in outcomes),
        "persons_updated": sum(t.updated for t in outcomes),
        "persons_skipped": sum(t.skipped for t in outcomes),
        "teams_results": json.dumps([t.to_json() for t in outcomes]),
    }


@op(description="The run's totals; the run fails when a team failed.")
def summarize(context: OpExecutionContext, discovered: dict[str, Any], results: list[dict[str, Any]]) -> dict:
    schedule_config, _ = chunk_of_run(discovered["run"])
    totals: dict[str, Any] = {
        key: sum(int(r[key]) for r in results)
        for key in ("teams_count", "teams_succeeded", "teams_failed", "persons_processed", "persons_updated")
    }
    failed = sorted(
        t["team_id"] for r in results for t in json.loads(r["teams_results"]) if t["status"] != "success"
    )
    totals["failed_team_ids"] = str(failed)
    if results and not schedule_config.dry_run:
        finish_run(Targets.resolve(schedule_config), context.run_id, failed=bool(failed))
    context.add_output_metadata(totals)
    if failed:
        raise Failure(
            description=f"{len(failed)} teams failed: {failed[:20]}; list them with `runner report --job-id "
            f"{context.run_id}`",
            metadata=totals,
        )
    return totals


@job(
    name=JOB_NAME,
    description="Person property reconciliation for one chunk of teams (dbt build, then apply).",
)
def person_property_reconciliation_job() -> None:
    discovered = discover_teams()
    results = plan_team_chunks(discovered).map(reconcile_chunk).collect()
    summarize(discovered, results)


def run_config_for(config: ScheduleConfig, chunk: Chunk, embedded: bool) -> dict[str, Any]:
    """The launched run's configuration (R12.6) and its executor: in-process on the embedded engine,
    else multiprocess with `max_concurrent_tasks`."""
    settings_ = {**chunk.run_settings(config), "chunk_label": chunk.label}
    if config.persons_db_env_var != schedule.DEFAULT_PERSONS_DB_ENV_VAR:
        settings_["persons_db_env_var"] = config.persons_db_env_var
    execution = (
        {"in_process": {}} if embedded else {"multiprocess": {"max_concurrent": config.max_concurrent_tasks}}
    )
    return {"ops": {"discover_teams": {"config": settings_}}, "execution": {"config": execution}}


@sensor(
    job=person_property_reconciliation_job,
    name="person_property_reconciliation_scheduler",
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.STOPPED,
    description="Launches reconciliation runs over team chunks; configuration and progress are the cursor.",
)
def person_property_reconciliation_scheduler(context: SensorEvaluationContext):  # type: ignore[no-untyped-def]
    try:
        cursor = schedule.parse_cursor(context.cursor, "the sensor cursor")
        config = schedule.validate(cursor)
    except ConfigError as exc:
        return SkipReason(str(exc))  # R12.2: launch nothing, cursor unchanged
    active = context.instance.get_runs_count(RunsFilter(job_name=JOB_NAME, statuses=ACTIVE_STATUSES))
    launch = scheduling.plan_launch(cursor, config, active)
    if launch.skip_reason is not None:
        return SkipReason(launch.skip_reason)
    embedded = warehouse.is_embedded()
    context.update_cursor(json.dumps(launch.cursor))
    context.log.info(
        f"launching {len(launch.chunks)} runs ({active} active of {config.max_concurrent_jobs}): "
        f"{[c.label for c in launch.chunks]}"
    )
    return [
        RunRequest(run_config=run_config_for(config, chunk, embedded), tags=chunk.tags())
        for chunk in launch.chunks
    ]


defs = Definitions(
    jobs=[person_property_reconciliation_job],
    sensors=[person_property_reconciliation_scheduler],
    resources={"recon_dbt": ReconDbt()},
)
