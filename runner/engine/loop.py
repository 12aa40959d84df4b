"""The batch engine `runner apply` and `runner restore` both run on (issue 11): the loop, written once.

A job (`runner.jobs.apply.ApplyJob`, `runner.jobs.restore.RestoreJob`; the interface: `runner.engine.job`)
supplies only what differs: the teams, the chunk source per team (diff table pages, backup pages), what to
read for a chunk's locked rows before deciding (apply: ClickHouse's historic state for three-way merges;
restore: the rows' metadata maps), the decision per person (pure functions: `runner.rules.apply`,
`runner.rules.restore`), how a person an earlier attempt of the job already wrote is reported, and its
ledger view and metrics. The engine does the rest, the same way for both:

- the ledger (`runner.stores.ledger`: run, teams with their counts by outcome, on an autocommit connection
  that is reopened when lost) and, before new work, the backlog: unpublished messages of earlier runs;
- per team: whether an earlier attempt of the job touched it; per chunk (`runner.engine.deciding`): the
  persons the job already wrote reported, the job's set-based write where it has one (apply: the persons
  at their baseline version locked, decided and written by one statement), the other rows locked with
  `SKIP LOCKED` in quick attempts, the job's prefetch and decision; the write
  (`runner.engine.writing`); every `batch_size` processed persons the batch is closed: committed if it
  wrote anything, else its row locks released (R9.11);
- pipelining: a reader thread reads the chunks a couple ahead (`runner.engine.reader`); batches (commit
  units) alternate between two connections, so while the writer thread writes and commits one batch,
  this thread already locks and decides the next on the other connection. The next batch's results are
  staged (and its writes sent) only once the one before it committed: commits and results stay in
  order, and a failed batch stops the team before the next one counts as processed. With a set-based
  write, a chunk that is a whole batch is decided and written by a writer thread too
  (`runner.engine.flights`), so two batches' statements run on two backends at once; it commits when it
  lands, in order, and is rolled back when the batch before it failed its team;
- publishing (`runner.engine.publishing`): a thread produces each committed batch's messages; at the end
  of the run every message must be confirmed, else the teams owning the unconfirmed ones fail, and
  messages of the job Kafka rejected for good are counted (`runner.stores.outbox` quarantine);
- the end-of-team retry (`runner.engine.retries`) of persons whose row was held or changed under the
  write, in a batch of their own; those still conflicted stay `version_conflict`;
- the team's error boundary (R11.2): a failing team's open batch is rolled back (its persons become
  `team_failed`), its committed batches count, and the run goes on with the next team; a lost Postgres
  connection fails the team being worked on, the next team gets new connections, and when Postgres
  stays away the run stops with the teams it did not finish failed;
- the team's status (`runner.rules.engine.finished_team_status`) and counters (`runner.engine.team_state`);
- where the run's time went (`runner.engine.stages`): wall and thread CPU seconds per stage (fetch, lock,
  prefetch, decide, results, write, commit, publish, the engine thread's waits), logged at INFO at the
  end of the run and returned in `EngineRun.stages` (apply's JSON summary: `"stages"`).

Fault points (`runner.config.faults`): `before_lock` (`runner.engine.deciding`), `before_commit`,
`after_commit` (`runner.engine.writing`: writer thread, or this one for a deciding flight),
`mid_publish` (`runner.stores.publisher`), `after_batch` (publishing thread, `runner.engine.publishing`).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from typing import Generic

import psycopg

from runner.engine import pacing
from runner.engine.batches import BatchPipeline
from runner.engine.job import EngineRun, EngineSink, ItemT, Job, PrefetchT, TeamT
from runner.engine.publishing import Publishing
from runner.engine.reader import ChunkReader
from runner.engine.stages import StageClock
from runner.engine.team_state import TeamState
from runner.rules.records import PersonOutcome
from runner.stores import ledger, outbox
from runner.stores.connections import APPLICATION_NAME, Control
from runner.stores.persons import job_touched_team
from runner.stores.publisher import Publisher, PublishError


class Engine(Generic[ItemT, TeamT, PrefetchT]):
    """A run of a job: its teams one after another, each inside its error boundary."""

    def __init__(
        self,
        job: Job[ItemT, TeamT, PrefetchT],
        *,
        pg_url: str,
        publisher: Publisher | None,
        sink: EngineSink[PersonOutcome[ItemT], TeamT],
        application_name: str = APPLICATION_NAME,
    ):
        if job.batch_size < 0:
            raise ValueError("batch_size must be >= 0")
        self.job = job
        self.log = job.log
        self.publisher = publisher
        self.sink = sink
        self.throttle = pacing.Throttle(job.max_rate, 0, job.label)  # --max-rate, progress
        self._control = Control(pg_url, application_name)
        self._reader: ChunkReader[ItemT] | None = None
        self.clock = StageClock()  # where the run's time goes (runner.engine.stages)
        # One thread publishes committed batches; the pipeline's writer thread writes and commits one
        # batch while this one prepares the next.
        self._publishing = (
            None if publisher is None else Publishing(publisher, self._control, self.log, self.clock)
        )
        self._batches = BatchPipeline(
            job, sink, self.throttle, self._publishing, self._finish_team, self.clock
        )

    @property
    def control(self) -> psycopg.Connection:
        """The ledger's autocommit connection (reopened when it was lost)."""
        return self._control.get()

    # --- run --------------------------------------------------------------------------------------

    def run(self, team_ids: Sequence[int], persons_total: int) -> EngineRun[TeamT]:
        """Run every given team; `persons_total` paces the progress. The job's metrics are computed
        (and written) before the ledger records the end of the run."""
        job = self.job
        started, cpu_started = time.monotonic(), time.process_time()
        run: EngineRun[TeamT] = EngineRun()
        self.throttle.start(persons_total)
        gc_thresholds = _quiet_gc()
        try:
            if not job.dry_run:
                assert self._publishing is not None
                self._control.call(ledger.start_run, job.ledger_job_id, job.ledger_kind, job.ledger_view())
                try:
                    run.published_backlog = self._publishing.backlog()
                except PublishError as exc:
                    run.error = f"unpublished messages of earlier runs could not be published: {exc}"
                    self.log.error("Not starting new work: %s", run.error)
            if run.error is None:
                try:
                    self._batches.open()
                    self._reader = ChunkReader(job.chunks, team_ids, self.clock)
                    for team_id in team_ids:
                        self._run_team(team_id, run.teams)
                    self._batches.land_last()
                    self._confirm_deliveries(run.teams)
                    if not job.dry_run:
                        run.quarantined = self._control.call(outbox.job_quarantined, job.ledger_job_id)
                except psycopg.OperationalError as exc:
                    # Postgres stayed unreachable past the reconnection attempts: the run ends here,
                    # with what was committed counted (the teams that finished) and the rest failed.
                    run.error = f"lost the connection to Postgres: {str(exc).strip()}"
                    self.log.error("Stopping the run: %s", run.error)
                    done = {t.team_id for t in run.teams}
                    run.teams += [
                        job.new_team(t, ledger.FAILED, f"not finished: {run.error}")
                        for t in team_ids
                        if t not in done
                    ]
            else:
                run.teams = [job.new_team(t, ledger.FAILED, f"not started: {run.error}") for t in team_ids]
            run.duration_seconds = time.monotonic() - started
            self.clock.add("run", run.duration_seconds, time.process_time() - cpu_started)
            run.stages = self.clock.summary()
            self.log.info(
                "Job %s stages (wall/thread CPU seconds, threads overlap; run %.2fs): %s",
                job.ledger_job_id,
                run.duration_seconds,
                self.clock.log_line(),
            )
            run.metrics = job.run_metrics(run)
            if not job.dry_run:
                self._finish_ledger(run)
            return run
        finally:
            if self._reader is not None:
                self._reader.close()
            self._batches.close()
            if self._publishing is not None:
                self._publishing.stop()
            self._control.close()
            if self.publisher is not None:
                self.publisher.close()
            gc.unfreeze()
            gc.set_threshold(*gc_thresholds)

    def close(self) -> None:
        """Release what `run` would have (a job that stops before running)."""
        self._batches.close()
        if self._publishing is not None:
            self._publishing.stop()
        self._control.close()
        if self.publisher is not None:
            self.publisher.close()

    def _finish_ledger(self, run: EngineRun[TeamT]) -> None:
        """Close the run in the ledger; after a lost connection also the teams it could not record
        (their true counts), on a fresh connection. Best effort: Postgres may still be away."""
        try:
            if run.error is not None:
                for team in run.teams:
                    self._record_team(team)
            status = ledger.FAILED if run.failed else ledger.SUCCEEDED
            self._control.call(ledger.finish_run, self.job.ledger_job_id, status)
        except psycopg.OperationalError as exc:
            self.log.error(
                "Could not record the end of job %s in the ledger: %s", self.job.ledger_job_id, exc
            )

    def _confirm_deliveries(self, teams: list[TeamT]) -> None:
        """Deliveries are confirmed asynchronously while later teams run; at the end every message must
        be confirmed. A team with unconfirmed messages fails (its rows wait in the outbox)."""
        if self._publishing is None:
            return
        failures = self._publishing.confirm()
        for team in teams:
            error = failures.get(team.team_id)
            if error is None:
                continue
            self.log.error("Team %d: %s", team.team_id, error)
            team.status = ledger.FAILED
            team.error = f"{team.error}; {error}" if team.error else error
            self._record_team(team)

    # --- team -------------------------------------------------------------------------------------

    def _run_team(self, team_id: int, finished: list[TeamT]) -> None:
        """Run one team. Its last batch may still be committing when this returns: the team is
        finished (ledger, sink, `finished`) once that batch landed, while the next team starts."""
        job = self.job
        assert self._reader is not None
        self._batches.ensure_conns()
        state: TeamState[ItemT, TeamT] = TeamState(job.new_team(team_id), finished)
        self.log.info("Team %d: %s", team_id, job.team_intro(team_id))
        try:
            if not job.dry_run:
                self._control.call(ledger.start_team, job.ledger_job_id, team_id, job.ledger_chunk(team_id))
                state.resumed = self._control.call(job_touched_team, job.ledger_job_id, team_id)
            self._batches.run(team_id, state, self._reader.team_chunks(team_id))
        except Exception as exc:  # noqa: BLE001 - the team's error boundary (R11.2)
            self._batches.abort(state, exc)
        finally:
            self._reader.finish_team(team_id)
        state.ran = True
        if not self._batches.in_flight(state):
            self._finish_team(state)

    def _finish_team(self, state: TeamState[ItemT, TeamT]) -> None:
        ran_to_end = state.team.status == ledger.RUNNING
        r = state.finish(self.job.uuid_of)
        if ran_to_end:
            if r.error:
                self.log.warning("Team %d %s", r.team_id, r.error)
            if r.processed == 0:
                self.log.info("Team %d: nothing to %s", r.team_id, self.job.nothing_to)
        self.log.info(
            "Team %d %s: processed=%d %s=%d skipped=%d commits=%d (%.1fs)",
            r.team_id,
            r.status,
            r.processed,
            self.job.updated_label,
            r.updated,
            r.skipped,
            r.commits,
            r.duration_seconds,
        )
        state.finished.append(r)
        self.sink.team_finished(r)
        self._record_team(r)

    def _record_team(self, r: TeamT) -> None:
        job = self.job
        if job.dry_run:
            return
        self._control.call(
            ledger.finish_team,
            job.ledger_job_id,
            r.team_id,
            status=r.status,
            error=r.error,
            processed=r.processed,
            updated=r.updated,
            skipped=r.skipped,
            outcomes={
                **{o: r.outcomes.get(o, 0) for o in job.outcomes},
                job.already_key: r.already_done,
                "failures": [
                    {"person_uuid": u, "outcome": o, "reason": reason} for u, o, reason in r.failures
                ],
            },
            commits=r.commits,
            duration_seconds=r.duration_seconds,
        )


def _quiet_gc() -> tuple[int, int, int]:
    """Keep the cyclic garbage collector from rescanning the whole heap while persons stream through.

    Every person allocates a few dozen containers (decoded JSON, rows, results), all freed by reference
    counting, yet their count triggers collections that rescan every long-lived object (the engine's,
    the imported modules'): about a third of the CPU per person. The objects alive at the start are
    frozen out of the scans and collections run less often; memory stays flat since nothing of the
    per-person data forms cycles. Returns the thresholds to restore."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    return thresholds
