"""`runner restore`: put persons back to the state one job's backup rows recorded (spec §13).

Restore is a job of the batch engine (`runner.engine`), the loop it shares with apply: ledger, backlog
of unpublished messages of earlier runs (published before anything else), row locks (`FOR UPDATE SKIP
LOCKED`, 3 attempts), writes, commits, publishing and delivery confirmation, the end-of-team retry,
the team's error boundary, counters, and the pipelining (backup pages read ahead on a thread of their
own, batches alternating between two connections, one committing while the next is locked, a
publishing thread). This module supplies what is restore's own (`RestoreJob`):

- the teams and the chunk source: the backup rows of the job (`runner.stores.backups`), team by team in keyset
  pages ordered by `(team_id, person_id)` (R13.2), so memory holds a few pages whatever the job's size,
  each page cut into chunks that never straddle a batch boundary;
- per chunk, before deciding: the metadata maps of the locked rows;
- the decision per entry (`runner.rules.restore`, pure): the strategy's state to write;
- an entry an earlier attempt of this restore job restored (found through its outbox rows) is reported
  as that write, never written twice;
- the ledger view (kind `restore`, the source job) and the metrics (per team, R13.6/R13.7).

`runner.stores.persons.write_chunk` writes, in the batch's transaction and with a fixed number of statements,
the restore's *own* backup rows (job id = the restore job id, so that the restore can itself be undone),
the updates (version = current + 1, NULL counting as 0) and the outbox rows. Every `batch_size`
processed entries the batch is committed and its outbox rows are produced to Kafka
(`runner.stores.publisher`); the broker confirms them asynchronously and every message must be
confirmed by the end of the run, or its team fails and the rows wait in the outbox.

Outcomes per backup entry:
- `restored`: written (in a dry run: would be), or restored by an earlier attempt of this restore job
  (found through its outbox rows; never written twice).
- `skipped`: the strategy finds nothing to restore (the person already holds the before-state, or
  every touched key changed since and `keep_newer` keeps it).
- `not_found`: no Postgres row with the backup's pk and uuid any more (a person deleted and recreated
  under the same uuid has another pk: it is not the person the job changed).
- `version_conflict`: another transaction held the row on each of 3 quick attempts to lock it, or the
  row changed under the write, and the end-of-team retry (waiting for the lock up to lock_timeout, then
  re-reading the row) did not get it either.
- `invalid_value`: Postgres refused the value; the entry alone fails, with its reason.
- `team_failed`: the entry's batch was rolled back because the team failed.

A team with `version_conflict` or `invalid_value` entries is `incomplete` (exit code 1). A committed
batch counts as restored even when publishing it fails afterwards.

Crash tests stop the process at the engine's fault points (`runner.config.faults`, `runner.engine`):
`before_commit`, `after_commit`, `mid_publish`, `after_batch`, `before_lock`.

Counts follow the original (R13.3): `restored` counts real writes, `skipped` everything else; a dry
run therefore counts every entry as skipped, while its person lines say what would be restored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

import psycopg

from runner.config.settings import ConfigError
from runner.engine.job import EngineRun, SetDecided, TeamCounts
from runner.engine.loop import Engine
from runner.rules import restore as restore_rules
from runner.rules.engine import INVALID_VALUE, NOT_FOUND, TEAM_FAILED, VERSION_CONFLICT
from runner.rules.records import PersonOutcome
from runner.rules.restore import (
    OUTCOMES,
    RESTORED,
    SKIPPED,
    BackupEntry,
    PersonRestore,
    validate_strategy,
)
from runner.rules.scheduling import chunk_id
from runner.stores import backups, connections, ledger, metrics, persons
from runner.stores.publisher import Publisher

__all__ = [
    "INVALID_VALUE",
    "NOT_FOUND",
    "OUTCOMES",
    "RESTORED",
    "SKIPPED",
    "TEAM_FAILED",
    "VERSION_CONFLICT",
    "BackupEntry",
    "PersonRestore",
    "RestoreConfig",
    "RestoreJob",
    "RestoreRun",
    "RestoreSink",
    "Restorer",
    "TeamRestore",
    "check_restore_job_id",
    "default_restore_job_id",
    "iter_backup_pages",
    "select_teams",
    "team_counters",
]

log = logging.getLogger("runner.restore")

APPLICATION_NAME = "person_property_restore"  # R13.3
JOB_NAME = "person_property_restore_job"
METRIC_PREFIX = "person_property_restore_"
LEDGER_KIND = "restore"

BACKUP_TABLE = backups.BACKUP_TABLE


def default_restore_job_id(job_id: str, now: datetime | None = None) -> str:
    return f"restore-{job_id}-{(now or datetime.now(UTC)):%Y%m%dT%H%M%SZ}"


@dataclass(frozen=True)
class RestoreConfig:
    job_id: str
    restore_job_id: str
    strategy: str = "keep_newer"
    dry_run: bool = False
    team_ids: tuple[int, ...] = ()
    person_ids: tuple[int, ...] = ()
    person_uuids: tuple[UUID, ...] = ()
    backup_batch_size: int = 1000
    batch_size: int = 100
    publish_timeout: float = 30.0
    max_rate: float | None = None  # persons per second (runner.engine.pacing); None = unlimited

    def __post_init__(self) -> None:
        validate_strategy(self.strategy)
        if self.backup_batch_size < 1:
            raise ValueError("backup_batch_size must be >= 1")
        if self.batch_size < 0:
            raise ValueError("batch_size must be >= 0")

    def ledger_view(self) -> dict[str, Any]:
        return {
            "source_job_id": self.job_id,
            "strategy": self.strategy,
            "team_ids": list(self.team_ids) or None,
            "person_ids": list(self.person_ids) or None,
            "person_uuids": [str(u) for u in self.person_uuids] or None,
            "backup_batch_size": self.backup_batch_size,
            "batch_size": self.batch_size,
            "publish_timeout": self.publish_timeout,
        }


@dataclass
class TeamRestore(TeamCounts):
    """A team of a restore, as the engine counts it: `updated` entries restored, `already_done` those an
    earlier attempt of this restore job restored (the ledger's `already_restored`), out of `backups`
    selected backup rows."""

    backups: int = 0


@dataclass
class RestoreRun:
    config: RestoreConfig
    teams: list[TeamRestore] = field(default_factory=list)
    error: str | None = None
    duration_seconds: float = 0.0
    published_backlog: int = 0
    metrics: list[metrics.Counter] = field(default_factory=list)
    quarantined: int = 0  # messages of this restore Kafka rejected for good (runner.stores.outbox): exit 1

    @property
    def failed(self) -> bool:
        return self.error is not None or any(t.status != ledger.SUCCEEDED for t in self.teams)

    def total(self, attribute: str) -> int:
        return sum(getattr(t, attribute) for t in self.teams)


class RestoreSink(Protocol):
    """Where results go. Person results of an open batch are provisional until `batch_closed`; after
    `batch_failed` they count as `team_failed`."""

    def restore_started(self, run: RestoreRun, teams: Sequence[tuple[int, int]]) -> None: ...
    def person(self, result: PersonRestore) -> None: ...
    def batch_closed(self) -> None: ...
    def batch_failed(self) -> None: ...
    def team_done(self, team: TeamRestore) -> None: ...
    def restore_finished(self, run: RestoreRun) -> None: ...


# --- reading backups -------------------------------------------------------------------------------


def _selection(cfg: RestoreConfig) -> backups.BackupSelection:
    return backups.BackupSelection(cfg.job_id, cfg.team_ids, cfg.person_ids, cfg.person_uuids)


def select_teams(conn: psycopg.Connection, cfg: RestoreConfig) -> list[tuple[int, int]]:
    """(team id, backup rows selected) per team, ascending. Raises ConfigError when the job has no
    backup rows, or when a team, person id or uuid given as a filter matches none of them."""
    if not backups.job_has_backups(conn, cfg.job_id):
        raise ConfigError(
            f"no backup rows for job id {cfg.job_id!r}: nothing to restore "
            "(check the id with the run ledger; dry runs and --no-backup runs write no backups)"
        )
    selection = _selection(cfg)
    counts = backups.backup_counts(conn, selection)
    unmatched: list[str] = []
    teams = {team for team, _ in counts}
    if cfg.team_ids:
        missing = sorted(set(cfg.team_ids) - teams)
        if missing:
            unmatched.append(f"team id(s) {missing}")
    for column, values, label in (
        ("person_id", cfg.person_ids, "person id(s)"),
        ("uuid", cfg.person_uuids, "person uuid(s)"),
    ):
        if values:
            found = backups.backup_values(conn, selection, column)
            missing_values = [str(v) for v in values if v not in found]
            if missing_values:
                unmatched.append(f"{label} {missing_values}")
    if unmatched:
        raise ConfigError(
            f"job {cfg.job_id!r} has no backup rows matching the filters for "
            + "; ".join(unmatched)
            + " (--person-id takes Postgres person pks; --person-uuid takes uuids)"
        )
    return counts


def iter_backup_pages(
    conn: psycopg.Connection, cfg: RestoreConfig, team_id: int
) -> Iterator[list[BackupEntry]]:
    """The team's selected backup rows in keyset pages of `backup_batch_size`, ordered by person pk."""
    for page in backups.backup_pages(conn, _selection(cfg), team_id, cfg.backup_batch_size):
        yield [BackupEntry.of_row(team_id, row) for row in page]


def check_restore_job_id(conn: psycopg.Connection, cfg: RestoreConfig) -> None:
    """A restore job id names one restore of one job; reusing it resumes that restore."""
    if cfg.restore_job_id == cfg.job_id:
        raise ConfigError("--restore-job-id must differ from --job-id (the restore writes its own backups)")
    run = ledger.run_of(conn, cfg.restore_job_id)
    if run is None:
        if backups.job_has_backups(conn, cfg.restore_job_id):
            raise ConfigError(f"job id {cfg.restore_job_id!r} already has backup rows; choose another")
        return
    kind, source = run
    if kind != LEDGER_KIND:
        raise ConfigError(
            f"job id {cfg.restore_job_id!r} already belongs to "
            f"{'an' if kind == 'apply' else 'a'} {kind} run; choose another"
        )
    if source != cfg.job_id:
        raise ConfigError(
            f"restore job {cfg.restore_job_id!r} restored job {source!r}, not {cfg.job_id!r}: choose another"
        )


# --- metrics ---------------------------------------------------------------------------------------


def team_counters(team: TeamRestore, job_name: str = JOB_NAME) -> list[metrics.Counter]:
    """R13.6/R13.7, one team = one task (`chunk_id` = `team_<id>`): processed and duration always,
    restored and skipped after success, an error counter after failure. An `incomplete` team ran to its
    end with some persons not restored: its restored and skipped persons are counted (they are
    committed) and so is the error."""
    labels = {"job_name": job_name, "chunk_id": chunk_id([team.team_id])}
    values: list[tuple[str, float, dict[str, str]]] = [
        ("persons_processed_total", team.processed, {}),
        ("duration_seconds_total", team.duration_seconds, {}),
    ]
    if team.status in (ledger.SUCCEEDED, ledger.INCOMPLETE):
        values += [("persons_restored_total", team.updated, {}), ("persons_skipped_total", team.skipped, {})]
    if team.status != ledger.SUCCEEDED:
        values.append(("error", 1, {"reason": "error"}))
    return [metrics.Counter(METRIC_PREFIX + name, {**labels, **extra}, float(v)) for name, v, extra in values]


# --- the restore -----------------------------------------------------------------------------------


class Restorer:
    """A `runner restore` run: the engine (`runner.engine.loop`) with restore's job."""

    def __init__(
        self,
        config: RestoreConfig,
        *,
        pg_url: str,
        publisher: Publisher | None,
        sink: RestoreSink,
        write_metrics: Callable[[list[metrics.Counter]], object] | None = None,
    ):
        if not config.dry_run and publisher is None:
            raise ValueError("a restore that writes needs a publisher")
        self.config = config
        self.sink = sink
        self.job = RestoreJob(config, pg_url, write_metrics)
        self.engine = Engine(
            self.job,
            pg_url=pg_url,
            publisher=publisher,
            sink=_EngineSink(sink),
            application_name=APPLICATION_NAME,
        )
        self.started_at = self.job.started_at

    @property
    def control(self) -> psycopg.Connection:
        """The ledger's autocommit connection (reopened when it was lost)."""
        return self.engine.control

    def run(self) -> RestoreRun:
        """Restore every selected team. Raises ConfigError (nothing written) for an unknown job id or
        filters that match no backup row."""
        cfg = self.config
        try:
            teams = select_teams(self.control, cfg)
            check_restore_job_id(self.control, cfg)
        except BaseException:
            self.engine.close()
            self.job.close()
            raise
        log.info(
            "Restoring job %s as %s (strategy %s%s): %d backup rows in %d teams",
            cfg.job_id,
            cfg.restore_job_id,
            cfg.strategy,
            ", dry run" if cfg.dry_run else "",
            sum(n for _, n in teams),
            len(teams),
        )
        run = RestoreRun(cfg)
        self.sink.restore_started(run, teams)
        self.job.backups = dict(teams)
        try:
            done = self.engine.run([team_id for team_id, _ in teams], sum(n for _, n in teams))
        finally:
            self.job.close()
        run.teams = done.teams
        run.error = done.error
        run.duration_seconds = done.duration_seconds
        run.published_backlog = done.published_backlog
        run.metrics = done.metrics
        run.quarantined = done.quarantined
        failed = [t.team_id for t in run.teams if t.status != ledger.SUCCEEDED]
        if failed:
            log.warning("Restore %s: teams failed: %s", cfg.restore_job_id, failed)
        log.info(
            "Restore %s done: processed=%d restored=%d skipped=%d, %d teams failed (%.1fs)",
            cfg.restore_job_id,
            run.total("processed"),
            run.total("updated"),
            run.total("skipped"),
            len(failed),
            run.duration_seconds,
        )
        self.sink.restore_finished(run)
        return run


class _EngineSink:
    """The restore's sink as the engine calls it."""

    def __init__(self, sink: RestoreSink):
        self._sink = sink

    def stage(self, result: PersonRestore) -> None:
        self._sink.person(result)

    def batch_closed(self) -> None:
        self._sink.batch_closed()

    def batch_failed(self) -> None:
        self._sink.batch_failed()

    def team_finished(self, team: TeamRestore) -> None:
        self._sink.team_done(team)


class RestoreJob:
    """What restore supplies to the batch engine (`runner.engine.job.Job`)."""

    ledger_kind = LEDGER_KIND
    set_based = False  # every person takes the per-person path (whole properties from backups)
    updated_outcome = RESTORED
    updated_label = "restored"
    nothing_to = "restore"
    outcomes: tuple[str, ...] = OUTCOMES
    already_key = "already_restored"
    backup = True  # the restore writes its own backups: it can itself be undone
    log = log

    def __init__(
        self,
        config: RestoreConfig,
        pg_url: str,
        write_metrics: Callable[[list[metrics.Counter]], object] | None = None,
    ):
        self.config = config
        self.pg_url = pg_url
        self.write_metrics = write_metrics
        self.ledger_job_id = config.restore_job_id
        self.label = f"restore {config.restore_job_id}"
        self.dry_run = config.dry_run
        self.batch_size = config.batch_size
        self.max_rate = config.max_rate
        self.started_at = datetime.now(UTC).isoformat()
        self.backups: dict[int, int] = {}
        self._reader: psycopg.Connection | None = None  # backup pages (reader thread)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

    def ledger_view(self) -> dict[str, Any]:
        return self.config.ledger_view()

    def ledger_chunk(self, team_id: int) -> str:
        return chunk_id([team_id])

    def team_intro(self, team_id: int) -> str:
        return f"restoring {self.backups.get(team_id, 0)} backup rows (batch_size {self.batch_size})"

    def new_team(self, team_id: int, status: str = ledger.RUNNING, error: str | None = None) -> TeamRestore:
        return TeamRestore(team_id, status=status, error=error, backups=self.backups.get(team_id, 0))

    def connect(self) -> psycopg.Connection:
        conn = connections.connect(self.pg_url, read_only=self.dry_run, exact=True)
        connections.name_session(conn, APPLICATION_NAME)
        return conn

    def _reader_conn(self, *, fresh: bool = False) -> psycopg.Connection:
        conn = self._reader
        if fresh or conn is None or conn.closed or conn.broken:
            if conn is not None:
                conn.close()
            self._reader = conn = connections.connect_reader(self.pg_url, APPLICATION_NAME, exact=True)
        return conn

    def chunks(self, team_id: int) -> Iterator[list[BackupEntry]]:
        """The team's backup pages cut at batch boundaries (reader thread). A page read on a connection
        found lost is read again, once, on a new one (reads are keyset pages: nothing repeats)."""
        size = self.batch_size
        in_batch = 0
        for page in self._pages(team_id):
            start = 0
            while start < len(page):
                room = size - in_batch if size else len(page)
                chunk = page[start : start + room]
                yield chunk
                start += len(chunk)
                in_batch = (in_batch + len(chunk)) % size if size else 0

    def _pages(self, team_id: int) -> Iterator[list[BackupEntry]]:
        pages = iter_backup_pages(self._reader_conn(), self.config, team_id)
        read = 0
        while True:
            try:
                page = next(pages)
            except StopIteration:
                return
            except psycopg.OperationalError:
                conn = self._reader
                if conn is None or not (conn.broken or conn.closed):
                    raise
                log.warning("Team %d: the connection reading backups was lost; reconnecting", team_id)
                pages = _skip(iter_backup_pages(self._reader_conn(fresh=True), self.config, team_id), read)
                continue
            read += len(page)
            yield page

    def uuid_of(self, item: BackupEntry) -> UUID:
        return item.uuid

    def describe(self, item: BackupEntry) -> str:
        return f"{item.uuid} (id {item.person_id})"

    def screen(
        self, team_id: int, chunk: list[BackupEntry]
    ) -> tuple[list[BackupEntry], dict[UUID, PersonRestore]]:
        return chunk, {}

    def prefetch(
        self,
        conn: psycopg.Connection,
        team_id: int,
        items: list[BackupEntry],
        rows: dict[UUID, persons.PgPerson],
    ) -> dict[int, tuple[Any, Any]]:
        """The metadata maps of the locked rows (this transaction's)."""
        return persons.person_metadata(conn, team_id, [row.id for row in rows.values()])

    def write_set(
        self, conn: psycopg.Connection, team_id: int, items: list[BackupEntry], *, keep_messages: bool
    ) -> SetDecided[BackupEntry] | None:
        """Restore has no set-based write: every person takes the per-person path."""
        return None

    def decide(
        self, item: BackupEntry, pg: persons.PgPerson, prefetched: dict[int, tuple[Any, Any]]
    ) -> tuple[PersonRestore, persons.PersonWrite | None]:
        return restore_rules.decide(
            self.config.strategy,
            item,
            pg,
            prefetched.get(pg.id),
            dry_run=self.dry_run,
            timestamp=self.started_at,
        )

    def already_done(self, item: BackupEntry, earlier: persons.AppliedByJob) -> PersonRestore:
        return restore_rules.already_restored(item, earlier)

    def unsettled(self, item: BackupEntry, outcome: str, reason: str | None = None) -> PersonRestore:
        return PersonOutcome(item, outcome, reason=reason)

    def run_metrics(self, run: EngineRun[TeamRestore]) -> list[metrics.Counter]:
        counters = [counter for team in run.teams for counter in team_counters(team)]
        if not self.dry_run and self.write_metrics is not None and counters:
            try:
                self.write_metrics(counters)
            except Exception as exc:  # noqa: BLE001 - metrics never fail a run (R11.5)
                log.warning("could not write restore metrics: %s", exc)
        return counters


def _skip(pages: Iterator[list[BackupEntry]], entries: int) -> Iterator[list[BackupEntry]]:
    """The pages past the first `entries` entries (whole pages: the page size does not change)."""
    for page in pages:
        if entries >= len(page):
            entries -= len(page)
            continue
        yield page[entries:]
        entries = 0
