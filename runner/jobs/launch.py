"""Starting `runner apply` and `runner restore` from the settings: check the stores before anything is
written, take the job id's lock, open the publisher, then run the job (`runner.jobs.apply`,
`runner.jobs.restore`) into the sink the command chose. A dry run takes no lock and opens no Kafka.
"""

from __future__ import annotations

from collections.abc import Sequence

from runner.config import settings
from runner.config.settings import ConfigError
from runner.jobs.apply import Applier, ApplyConfig, RunResult, Sink
from runner.jobs.restore import RestoreConfig, Restorer, RestoreRun, RestoreSink
from runner.stores import diffs, job_lock, metrics
from runner.stores import warehouse as wh
from runner.stores.pg_schema import check_postgres
from runner.stores.publisher import Publisher, check_broker


def select_teams(summaries: Sequence[diffs.TeamSummary], team_ids: Sequence[int]) -> list[diffs.TeamSummary]:
    """The teams of the diff summary to apply: `team_ids` (every team when empty); an id the summary
    does not hold is an error."""
    known = {t.team_id for t in summaries}
    unknown = sorted(set(team_ids) - known)
    if unknown:
        raise ConfigError(
            f"unknown team id(s) {unknown}: not in the diff summary (the teams the models selected)"
        )
    return [t for t in summaries if not team_ids or t.team_id in team_ids]


def _publisher(dry_run: bool, topic: str, timeout: float) -> Publisher | None:
    if dry_run:
        return None
    bootstrap = settings.kafka_bootstrap()
    assert bootstrap is not None
    check_broker(bootstrap, topic)
    return Publisher(bootstrap, topic, timeout=timeout)


def run_apply(config: ApplyConfig, sink: Sink) -> RunResult:
    cfg = settings.Settings.load()
    clickhouse = wh.client(cfg.clickhouse_url)
    teams = select_teams(diffs.read_team_summaries(clickhouse, cfg.target_schema), config.team_ids)
    pg_url = settings.persons_db_url()
    assert pg_url is not None
    check_postgres(pg_url)
    if not config.dry_run:
        job_lock.acquire(pg_url, "apply", config.job_id)  # one process per job id, released at exit
    applier = Applier(
        config,
        clickhouse=clickhouse,
        pg_url=pg_url,
        source_database=cfg.source_database,
        target_schema=cfg.target_schema,
        publisher=_publisher(config.dry_run, cfg.person_topic, config.publish_timeout),
        sink=sink,
    )
    return applier.run(teams)


def run_restore(config: RestoreConfig, sink: RestoreSink) -> RestoreRun:
    cfg = settings.Settings.load()
    pg_url = settings.persons_db_url()
    assert pg_url is not None
    check_postgres(pg_url)
    if not config.dry_run:  # one process per job id: the restore's own, and the job it undoes
        job_lock.acquire(pg_url, "restore", config.restore_job_id, config.job_id)
    publisher = _publisher(config.dry_run, cfg.person_topic, config.publish_timeout)

    def write_metrics(counters: list[metrics.Counter]) -> None:
        metrics.write(wh.client(cfg.clickhouse_url), cfg.source_database, counters)

    restorer = Restorer(config, pg_url=pg_url, publisher=publisher, sink=sink, write_metrics=write_metrics)
    return restorer.run()
