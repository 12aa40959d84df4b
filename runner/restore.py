"""`runner restore`: put persons back to the state one job's backup rows recorded (spec §13).

The backup rows of the job are read team by team in keyset pages ordered by `(team_id, person_id)`
(R13.2), so memory holds one page whatever the job's size. Each page is handled in chunks cut at batch
boundaries, like apply: the persons' rows are locked (`FOR UPDATE SKIP LOCKED`, 3 attempts), the
restore rules (`runner.restore_rules`) compute what to write, and `runner.persons.write_chunk` writes,
in the batch's transaction and with a fixed number of statements, the restore's *own* backup rows
(job id = the restore job id, so that the restore can itself be undone), the updates (version = current
+ 1, NULL counting as 0) and the outbox rows. Every `batch_size` processed persons the batch is
committed and its outbox rows are produced to Kafka (`runner.publisher`); the broker confirms them
asynchronously and every message must be confirmed by the end of the run, or its team fails and the
rows wait in the outbox. Unpublished messages of earlier runs are published before anything else.

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

Crash tests stop the process at the fault points of apply (`runner.faults`): `before_commit`,
`after_commit`, `mid_publish`, `after_batch`.

Counts follow the original (R13.3): `restored` counts real writes, `skipped` everything else; a dry
run therefore counts every entry as skipped, while its person lines say what would be restored.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import UUID

import psycopg

from runner import faults, ledger, metrics, outbox, pacing, persons
from runner.engine_rules import (
    CHANGED_UNDER_WRITE,
    HELD_PAST_LOCK_TIMEOUT,
    INVALID_VALUE,
    KEPT_MESSAGES,
    LOCK_ATTEMPTS,
    LOCK_RETRY_WAITS,
    PERSON_FAILURES,
    RETRY_WAIT_BUDGET,
    TEAM_FAILED,
    VERSION_CONFLICT,
    finished_team_status,
)
from runner.merge import json_dumps, json_loads
from runner.publisher import Publisher, PublishError, drain
from runner.restore_rules import (
    PersonState,
    metadata_delta,
    restore_change,
    restore_operations,
    validate_strategy,
)
from runner.settings import ConfigError

log = logging.getLogger("runner.restore")

RESTORED = "restored"
SKIPPED = "skipped"
NOT_FOUND = "not_found"
OUTCOMES = (RESTORED, SKIPPED, NOT_FOUND, VERSION_CONFLICT, INVALID_VALUE, TEAM_FAILED)

APPLICATION_NAME = "person_property_restore"  # R13.3
JOB_NAME = "person_property_restore_job"
METRIC_PREFIX = "person_property_restore_"
LEDGER_KIND = "restore"

BACKUP_TABLE = "posthog_person_reconciliation_backup"
_BACKUP_COLUMNS = (
    "person_id, uuid, properties, properties_last_updated_at, properties_last_operation, "
    "properties_after, properties_last_updated_at_after, properties_last_operation_after"
)


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
    max_rate: float | None = None  # persons per second (runner.pacing); None = unlimited

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


@dataclass(frozen=True, slots=True)
class BackupEntry:
    team_id: int
    person_id: int
    uuid: UUID
    before: PersonState
    after: PersonState | None


@dataclass(slots=True)
class PersonRestore:
    entry: BackupEntry
    outcome: str
    properties_before: dict[str, Any] | None = None
    properties_after: dict[str, Any] | None = None
    version_before: int | None = None
    version_after: int | None = None
    already_restored: bool = False
    reason: str | None = None  # why the person failed (invalid_value, version_conflict)


@dataclass
class TeamRestore:
    team_id: int
    backups: int
    status: str = ledger.RUNNING
    error: str | None = None
    outcomes: Counter[str] = field(default_factory=Counter)
    restored: int = 0
    already_restored: int = 0
    commits: int = 0
    duration_seconds: float = 0.0
    # Entries not restored (version_conflict, invalid_value): (uuid, outcome, reason), the first ones.
    failures: list[tuple[str, str, str]] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return sum(self.outcomes.values())

    @property
    def skipped(self) -> int:
        return self.processed - self.restored


@dataclass
class RestoreRun:
    config: RestoreConfig
    teams: list[TeamRestore] = field(default_factory=list)
    error: str | None = None
    duration_seconds: float = 0.0
    published_backlog: int = 0
    metrics: list[metrics.Counter] = field(default_factory=list)
    quarantined: int = 0  # messages of this restore Kafka rejected for good (runner.outbox): exit 1

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


def _filters(cfg: RestoreConfig) -> tuple[str, dict[str, Any]]:
    clauses = ["job_id = %(job)s"]
    params: dict[str, Any] = {"job": cfg.job_id}
    if cfg.team_ids:
        clauses.append("team_id = ANY(%(teams)s)")
        params["teams"] = list(cfg.team_ids)
    if cfg.person_ids:
        clauses.append("person_id = ANY(%(pks)s)")
        params["pks"] = list(cfg.person_ids)
    if cfg.person_uuids:
        clauses.append("uuid = ANY(%(uuids)s)")
        params["uuids"] = list(cfg.person_uuids)
    return " AND ".join(clauses), params


def select_teams(conn: psycopg.Connection, cfg: RestoreConfig) -> list[tuple[int, int]]:
    """(team id, backup rows selected) per team, ascending. Raises ConfigError when the job has no
    backup rows, or when a team, person id or uuid given as a filter matches none of them."""
    known = conn.execute(f"SELECT 1 FROM {BACKUP_TABLE} WHERE job_id = %s LIMIT 1", (cfg.job_id,)).fetchone()
    if known is None:
        raise ConfigError(
            f"no backup rows for job id {cfg.job_id!r}: nothing to restore "
            "(check the id with the run ledger; dry runs and --no-backup runs write no backups)"
        )
    where, params = _filters(cfg)
    counts = [
        (int(team), int(n))
        for team, n in conn.execute(
            f"SELECT team_id, count(*) FROM {BACKUP_TABLE} WHERE {where} GROUP BY team_id ORDER BY team_id",
            params,
        )
    ]
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
            found = {
                row[0]
                for row in conn.execute(f"SELECT DISTINCT {column} FROM {BACKUP_TABLE} WHERE {where}", params)
            }
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
    where, params = _filters(cfg)
    params = {**params, "team": team_id, "n": cfg.backup_batch_size}
    after: int | None = None
    while True:
        keyset = "" if after is None else "AND (team_id, person_id) > (%(team)s, %(after)s)"
        rows = conn.execute(
            f"SELECT {_BACKUP_COLUMNS} FROM {BACKUP_TABLE} WHERE {where} AND team_id = %(team)s {keyset} "
            "ORDER BY team_id, person_id LIMIT %(n)s",
            {**params, "after": after},
        ).fetchall()
        if rows:
            yield [_entry(team_id, row) for row in rows]
        if len(rows) < cfg.backup_batch_size:
            return
        after = int(rows[-1][0])


def _entry(team_id: int, row: Sequence[Any]) -> BackupEntry:
    person_id, uuid, props, updated, operation, props_after, updated_after, operation_after = row
    after = None if props_after is None else PersonState.of(props_after, updated_after, operation_after)
    return BackupEntry(team_id, int(person_id), uuid, PersonState.of(props, updated, operation), after)


def check_restore_job_id(conn: psycopg.Connection, cfg: RestoreConfig) -> None:
    """A restore job id names one restore of one job; reusing it resumes that restore."""
    if cfg.restore_job_id == cfg.job_id:
        raise ConfigError("--restore-job-id must differ from --job-id (the restore writes its own backups)")
    row = conn.execute(
        "SELECT kind, config->>'source_job_id' FROM recon_run WHERE job_id = %s", (cfg.restore_job_id,)
    ).fetchone()
    if row is None:
        taken = conn.execute(
            f"SELECT 1 FROM {BACKUP_TABLE} WHERE job_id = %s LIMIT 1", (cfg.restore_job_id,)
        ).fetchone()
        if taken is not None:
            raise ConfigError(f"job id {cfg.restore_job_id!r} already has backup rows; choose another")
        return
    kind, source = row
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
    restored and skipped after success, an error counter after failure."""
    labels = {"job_name": job_name, "chunk_id": metrics.chunk_id([team.team_id])}
    values: list[tuple[str, float, dict[str, str]]] = [
        ("persons_processed_total", team.processed, {}),
        ("duration_seconds_total", team.duration_seconds, {}),
    ]
    if team.status == ledger.SUCCEEDED:
        values += [("persons_restored_total", team.restored, {}), ("persons_skipped_total", team.skipped, {})]
    else:
        values.append(("error", 1, {"reason": "error"}))
    return [metrics.Counter(METRIC_PREFIX + name, {**labels, **extra}, float(v)) for name, v, extra in values]


# --- the restore -----------------------------------------------------------------------------------


class _Batch:
    """Counts of the open batch; they join the team's once the batch is committed (or closed)."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.reset()

    def reset(self) -> None:
        self.persons = 0
        self.writes = 0
        self.outbox: list[persons.OutboxBatch] = []
        self.kept_messages = 0
        self.outcomes.clear()
        self.failures: list[tuple[str, str, str]] = []
        self.restored = 0
        self.already = 0

    def add(self, result: PersonRestore, *, written: bool) -> None:
        if result.outcome in PERSON_FAILURES:
            self.failures.append((str(result.entry.uuid), result.outcome, result.reason or ""))
        self.persons += 1
        self.outcomes[result.outcome] += 1
        self.restored += written or result.already_restored
        self.already += result.already_restored

    def merge_into(self, team: TeamRestore) -> None:
        team.failures += self.failures[: max(0, ledger.FAILURES_KEPT - len(team.failures))]
        team.outcomes.update(self.outcomes)
        team.restored += self.restored
        team.already_restored += self.already
        self.reset()


class Restorer:
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
        self.pg_url = pg_url
        self.publisher = publisher
        self.sink = sink
        self.write_metrics = write_metrics
        self.throttle = pacing.Throttle(config.max_rate, 0, f"restore {config.restore_job_id}")
        self.conn: psycopg.Connection | None = None
        self._control = persons.Control(pg_url, APPLICATION_NAME)
        self.started_at = datetime.now(UTC).isoformat()

    def run(self) -> RestoreRun:
        """Restore every selected team. Raises ConfigError (nothing written) for an unknown job id or
        filters that match no backup row."""
        cfg = self.config
        started = time.monotonic()
        run = RestoreRun(cfg)
        try:
            teams = select_teams(self.control, cfg)
            check_restore_job_id(self.control, cfg)
            log.info(
                "Restoring job %s as %s (strategy %s%s): %d backup rows in %d teams",
                cfg.job_id,
                cfg.restore_job_id,
                cfg.strategy,
                ", dry run" if cfg.dry_run else "",
                sum(n for _, n in teams),
                len(teams),
            )
            self.sink.restore_started(run, teams)
            self.throttle.start(sum(n for _, n in teams))
            if not cfg.dry_run:
                assert self.publisher is not None
                ledger.start_run(self.control, cfg.restore_job_id, LEDGER_KIND, cfg.ledger_view())
                try:
                    run.published_backlog = drain(self.control, self.publisher)
                except PublishError as exc:
                    run.error = f"unpublished messages of earlier runs could not be published: {exc}"
                    log.error("Not starting the restore: %s", run.error)
            if run.error is None:
                try:
                    self.conn = self._connect()
                    for team_id, backups in teams:
                        team = self._restore_team(team_id, backups)
                        run.teams.append(team)
                        self.sink.team_done(team)
                    self._confirm_deliveries(run.teams)
                    if not cfg.dry_run:
                        run.quarantined = self._control.call(outbox.job_quarantined, cfg.restore_job_id)
                except psycopg.OperationalError as exc:
                    # Postgres stayed unreachable past the reconnection attempts: the restore ends
                    # here, the teams it finished counted, the rest failed.
                    run.error = f"lost the connection to Postgres: {str(exc).strip()}"
                    log.error("Stopping the restore: %s", run.error)
                    done = {t.team_id for t in run.teams}
                    run.teams += [
                        TeamRestore(
                            team_id, backups, status=ledger.FAILED, error=f"not finished: {run.error}"
                        )
                        for team_id, backups in teams
                        if team_id not in done
                    ]
            else:
                run.teams = [
                    TeamRestore(team_id, backups, status=ledger.FAILED, error=f"not started: {run.error}")
                    for team_id, backups in teams
                ]
            run.duration_seconds = time.monotonic() - started
            run.metrics = [counter for team in run.teams for counter in team_counters(team)]
            if not cfg.dry_run:
                self._write_metrics(run.metrics)
                try:
                    status = ledger.FAILED if run.failed else ledger.SUCCEEDED
                    self._control.call(ledger.finish_run, cfg.restore_job_id, status)
                except psycopg.OperationalError as exc:
                    log.error("Could not record the end of restore %s: %s", cfg.restore_job_id, exc)
            failed = [t.team_id for t in run.teams if t.status != ledger.SUCCEEDED]
            if failed:
                log.warning("Restore %s: teams failed: %s", cfg.restore_job_id, failed)
            log.info(
                "Restore %s done: processed=%d restored=%d skipped=%d, %d teams failed (%.1fs)",
                cfg.restore_job_id,
                run.total("processed"),
                run.total("restored"),
                run.total("skipped"),
                len(failed),
                run.duration_seconds,
            )
            self.sink.restore_finished(run)
            return run
        finally:
            if self.conn is not None:
                self.conn.close()
            self._control.close()
            if self.publisher is not None:
                self.publisher.close()

    @property
    def control(self) -> psycopg.Connection:
        """The ledger's autocommit connection (reopened when it was lost)."""
        return self._control.get()

    def _connect(self) -> psycopg.Connection:
        conn = persons.connect(self.pg_url, read_only=self.config.dry_run, exact=True)
        conn.execute("SELECT set_config('application_name', %s, false)", (APPLICATION_NAME,))
        conn.commit()
        return conn

    def _write_metrics(self, counters: list[metrics.Counter]) -> None:
        if self.write_metrics is None or not counters:
            return
        try:
            self.write_metrics(counters)
        except Exception as exc:  # noqa: BLE001 - metrics never fail a run (R11.5)
            log.warning("could not write restore metrics: %s", exc)

    def _confirm_deliveries(self, teams: list[TeamRestore]) -> None:
        """Every message produced must be confirmed by the end of the run; a team with unconfirmed
        messages fails (they stay in the outbox for the next run)."""
        if self.publisher is None:
            return
        failures = self._control.call(self.publisher.confirm)
        for team in teams:
            error = failures.get(team.team_id)
            if error is None:
                continue
            log.error("Team %d: %s", team.team_id, error)
            team.status = ledger.FAILED
            team.error = f"{team.error}; {error}" if team.error else error
            self._record_team(team)

    # --- team -------------------------------------------------------------------------------------

    def _restore_team(self, team_id: int, backups: int) -> TeamRestore:
        cfg = self.config
        if self.conn is None or self.conn.closed or self.conn.broken:
            # A failed team left its connection lost: a new one (bounded backoff; raising ends the run).
            if self.conn is not None:
                self.conn.close()
            self.conn = self._connect()
        started = time.monotonic()
        team = TeamRestore(team_id, backups)
        batch = _Batch()
        log.info("Team %d: restoring %d backup rows (batch_size %d)", team_id, backups, cfg.batch_size)
        resumed = False
        if not cfg.dry_run:
            self._control.call(ledger.start_team, cfg.restore_job_id, team_id, metrics.chunk_id([team_id]))
            row = self._control.call(
                lambda conn: conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM recon_outbox WHERE job_id = %s AND team_id = %s)",
                    (cfg.restore_job_id, team_id),
                ).fetchone()
            )
            resumed = bool(row and row[0])
        retry: list[BackupEntry] = []
        try:
            assert self.conn is not None
            for page in iter_backup_pages(self.conn, cfg, team_id):
                for chunk in self._cut(page, batch):
                    if batch.persons == 0:  # --max-rate waits only while no batch holds row locks
                        self.throttle.before_batch()
                    self.throttle.count(len(chunk))
                    self._restore_chunk(team_id, chunk, batch, resumed, retry)
                    if cfg.batch_size and batch.persons >= cfg.batch_size:
                        self._close_batch(team, batch)
            self._close_batch(team, batch)
            held, retry = retry, []
            self._retry_held(team, held)
            team.status, team.error = finished_team_status(team.outcomes)
        except Exception as exc:  # noqa: BLE001 - the team's error boundary (R13.6), then the next team
            for entry in retry:  # never written: reported as team_failed with the open batch
                batch.persons += 1
                self.sink.person(PersonRestore(entry, VERSION_CONFLICT))
            self._fail_team(team, batch, exc)
        team.duration_seconds = time.monotonic() - started
        log.info(
            "Team %d %s: processed=%d restored=%d skipped=%d commits=%d (%.1fs)",
            team_id,
            team.status,
            team.processed,
            team.restored,
            team.skipped,
            team.commits,
            team.duration_seconds,
        )
        self._record_team(team)
        return team

    def _record_team(self, team: TeamRestore) -> None:
        if self.config.dry_run:
            return
        self._control.call(
            ledger.finish_team,
            self.config.restore_job_id,
            team.team_id,
            status=team.status,
            error=team.error,
            processed=team.processed,
            updated=team.restored,
            skipped=team.skipped,
            outcomes={
                **{o: team.outcomes.get(o, 0) for o in OUTCOMES},
                "already_restored": team.already_restored,
                "failures": [
                    {"person_uuid": u, "outcome": o, "reason": reason} for u, o, reason in team.failures
                ],
            },
            commits=team.commits,
            duration_seconds=team.duration_seconds,
        )

    def _cut(self, page: list[BackupEntry], batch: _Batch) -> Iterator[list[BackupEntry]]:
        """Slices of a page that never cross a batch boundary (the batch fills as slices are handled)."""
        size = self.config.batch_size
        start = 0
        while start < len(page):
            room = size - batch.persons if size else len(page)
            yield page[start : start + room]
            start += room

    def _fail_team(self, team: TeamRestore, batch: _Batch, exc: Exception) -> None:
        """Roll back the open batch (its persons become `team_failed`); committed batches stay, and
        their messages are confirmed with everyone else's at the end of the run."""
        log.exception("Team %d failed: %s", team.team_id, exc)
        assert self.conn is not None
        try:
            self.conn.rollback()
        except psycopg.Error:
            pass
        if self.conn.broken or self.conn.closed:
            self.conn.close()  # reopened when the next team starts
        team.outcomes[TEAM_FAILED] += batch.persons
        batch.reset()
        self.sink.batch_failed()
        team.status = ledger.FAILED
        team.error = f"{type(exc).__name__}: {exc}"

    def _close_batch(self, team: TeamRestore, batch: _Batch) -> None:
        """Commit a batch that wrote anything and produce its outbox batches (deliveries are confirmed
        asynchronously); a batch that wrote nothing only releases its row locks."""
        assert self.conn is not None
        if batch.persons == 0:
            return
        if batch.writes and not self.config.dry_run:
            assert self.publisher is not None
            faults.point("before_commit")
            self.conn.commit()
            team.commits += 1
            # Committed: it counts as restored whatever happens to its publishing (its outbox rows wait
            # for the next run if that fails).
            outbox, persons_in_batch, writes = batch.outbox, batch.persons, batch.writes
            batch.merge_into(team)
            self.sink.batch_closed()
            faults.point("after_commit")
            produced = sum(self.publisher.produce_batch(self.control, b) for b in outbox)
            self._control.call(self.publisher.mark_published)
            log.info(
                "Team %d: committed restore batch %d (%d persons, %d restored), %d messages sent to Kafka",
                team.team_id,
                team.commits,
                persons_in_batch,
                writes,
                produced,
            )
            faults.point("after_batch")
            return
        self.conn.rollback()
        batch.merge_into(team)
        self.sink.batch_closed()

    # --- chunk ------------------------------------------------------------------------------------

    def _restore_chunk(
        self, team_id: int, chunk: list[BackupEntry], batch: _Batch, resumed: bool, retry: list[BackupEntry]
    ) -> None:
        cfg = self.config
        assert self.conn is not None
        uuids = [e.uuid for e in chunk]
        done = persons.applied_by_job(self.conn, cfg.restore_job_id, team_id, uuids) if resumed else {}
        rows, held = self._lock(team_id, [u for u in uuids if u not in done])
        self._settle_chunk(team_id, chunk, batch, rows, held, done, retry)

    def _retry_held(self, team: TeamRestore, entries: list[BackupEntry]) -> None:
        """Issue 11, faults 5/7/8: entries whose row another transaction held (or that changed under the
        write) are tried once more at the end of their team, in a batch of their own: each row lock is
        waited for (bounded by lock_timeout), the row re-read, the strategy applied to it. Those still
        conflicted stay version_conflict (the team is then incomplete)."""
        if not entries:
            return
        assert self.conn is not None
        log.info("Team %d: retrying %d entries, waiting for their rows", team.team_id, len(entries))
        deadline = time.monotonic() + RETRY_WAIT_BUDGET
        rows: dict[UUID, persons.PgPerson] = {}
        held: set[UUID] = set()
        for entry in entries:
            row = persons.lock_waiting(self.conn, team.team_id, entry.uuid, wait=time.monotonic() < deadline)
            if row == persons.HELD:
                held.add(entry.uuid)
            elif isinstance(row, persons.PgPerson):
                rows[entry.uuid] = row
        batch = _Batch()
        self._settle_chunk(team.team_id, entries, batch, rows, held, {}, None)
        self._close_batch(team, batch)

    def _settle_chunk(
        self,
        team_id: int,
        chunk: list[BackupEntry],
        batch: _Batch,
        rows: dict[UUID, persons.PgPerson],
        held: set[UUID],
        done: dict[UUID, persons.AppliedByJob],
        retry: list[BackupEntry] | None,
    ) -> None:
        """Decide, write and report a chunk whose rows are locked. Entries whose row was held or changed
        under the write go to `retry` (the end-of-team retry), or, when it is None, end version_conflict."""
        cfg = self.config
        assert self.conn is not None
        metadata = _metadata(self.conn, team_id, [row.id for row in rows.values()])
        writes: list[persons.PersonWrite] = []
        results: list[PersonRestore] = []
        for entry in chunk:
            pg = rows.get(entry.uuid)
            write = None
            if entry.uuid in done:
                result = _already_restored(entry, done[entry.uuid])
            elif entry.uuid in held:
                if retry is not None:
                    retry.append(entry)
                    continue
                reason = HELD_PAST_LOCK_TIMEOUT
                result = PersonRestore(entry, VERSION_CONFLICT, reason=reason)
            elif pg is None or pg.id != entry.person_id:
                result = PersonRestore(entry, NOT_FOUND)
            else:
                result, write = self._decide(entry, pg, metadata[pg.id])
            if result.outcome in (NOT_FOUND, VERSION_CONFLICT):
                log.warning(
                    "Person %s (id %d) of team %d: %s", entry.uuid, entry.person_id, team_id, result.outcome
                )
            if write is not None:
                writes.append(write)
            results.append(result)
        failed: dict[UUID, tuple[str, str]] = {}
        if writes:
            keep = batch.kept_messages + len(writes) <= KEPT_MESSAGES
            try:
                written = persons.write_chunk(
                    self.conn, cfg.restore_job_id, team_id, writes, backup=True, keep_messages=keep
                )
            except Exception:
                for result in results:  # they count as team_failed
                    batch.add(result, written=False)
                    self.sink.person(result)
                raise
            for chunk_outbox in written.outbox:
                batch.outbox.append(chunk_outbox)
                batch.kept_messages += len(chunk_outbox.messages or ())
            batch.writes += len(writes) - len(written.lost) - len(written.invalid)
            failed = {u: (VERSION_CONFLICT, CHANGED_UNDER_WRITE) for u in written.lost}
            failed.update({u: (INVALID_VALUE, reason) for u, reason in written.invalid.items()})
        written_uuids = {w.person.uuid for w in writes}
        for result in results:
            uuid = result.entry.uuid
            if uuid in failed and failed[uuid][0] == VERSION_CONFLICT and retry is not None:
                retry.append(result.entry)
                continue
            if uuid in failed:
                result.outcome, result.reason = failed[uuid]
                result.properties_after = result.version_after = None
                log.warning("Person %s of team %d: %s", uuid, team_id, result.reason)
            batch.add(result, written=uuid in written_uuids and uuid not in failed)
            self.sink.person(result)

    def _lock(self, team_id: int, uuids: list[UUID]) -> tuple[dict[UUID, persons.PgPerson], set[UUID]]:
        """Lock (dry run: read) the rows; returns them and the uuids whose rows another transaction
        held on every attempt. A uuid in neither has no row."""
        assert self.conn is not None
        lock = not self.config.dry_run
        rows: dict[UUID, persons.PgPerson] = {}
        waiting = list(uuids)
        for attempt in range(LOCK_ATTEMPTS):
            if attempt:
                log.info("Team %d: %d persons locked by another transaction; retrying", team_id, len(waiting))
                time.sleep(LOCK_RETRY_WAITS[attempt - 1])
            rows.update(persons.lock_persons(self.conn, team_id, waiting, lock=lock))
            unlocked = [u for u in waiting if u not in rows]
            waiting = sorted(persons.existing_uuids(self.conn, team_id, unlocked)) if unlocked else []
            if not waiting:
                break
        return rows, set(waiting)

    def _decide(
        self, entry: BackupEntry, pg: persons.PgPerson, metadata: tuple[Any, Any]
    ) -> tuple[PersonRestore, persons.PersonWrite | None]:
        current = PersonState.of(pg.properties, *metadata)
        change = restore_change(self.config.strategy, entry.before, entry.after, current)
        if change is None:
            return PersonRestore(entry, SKIPPED, pg.properties, pg.properties, pg.version, pg.version), None
        version_after = (pg.version or 0) + 1
        result = PersonRestore(
            entry, RESTORED, pg.properties, change.state.properties, pg.version, version_after
        )
        if self.config.dry_run:
            return result, None
        updated_at_set, operation_set, removed = metadata_delta(current, change.state)
        write = persons.PersonWrite(
            person=pg,
            properties_json=json_dumps(change.state.properties),
            updated_at_set_json=json_dumps(updated_at_set),
            operation_set_json=json_dumps(operation_set),
            metadata_removed=removed,
            version_after=version_after,
            pending_operations_json=json_dumps(restore_operations(change, self.started_at)),
        )
        return result, write


def _metadata(conn: psycopg.Connection, team_id: int, ids: list[int]) -> dict[int, tuple[Any, Any]]:
    """The metadata maps of rows this transaction just locked (or, in a dry run, read)."""
    if not ids:
        return {}
    rows = conn.execute(
        "SELECT id, properties_last_updated_at, properties_last_operation FROM posthog_person "
        "WHERE team_id = %s AND id = ANY(%s)",
        (team_id, ids),
    ).fetchall()
    return {int(pid): (updated, operation) for pid, updated, operation in rows}


def _already_restored(entry: BackupEntry, earlier: persons.AppliedByJob) -> PersonRestore:
    """A person an earlier attempt of this restore job restored: reported as that write, not redone."""
    message = json.loads(earlier.payload)
    return PersonRestore(
        entry,
        RESTORED,
        properties_after=json_loads(message["properties"]),
        version_after=earlier.version,
        already_restored=True,
    )
