"""Randomised: inserts of events, override rows and person rows interleaved with builds; after every
build the incremental diff equals a `--full-refresh` build of the same sources, row for row.

Fixed seeds, 4 sequences of 5 builds (20 interleavings), two in each mode. Each step ingests a small
random batch at an advancing ingestion clock - events with timestamps anywhere from before
bug_window_start to after `now` (late ones inside windows already built, some exactly at W0, W1, the
previous `now`, window edges), merges, reassignments and withdrawn overrides, new person versions and
deletions, now and then a new team - part of it stamped up to 50 minutes before the clock (visible
late, inside the overlap) - and now and then moves `now` on by 1 or 30 hours. The full build is also checked
against the oracle (tests/reference_rules.py).
"""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, datetime, timedelta

import models_harness as mh
import pytest
import reference_rules as rr

pytestmark = pytest.mark.integration

W0, W1 = "2026-01-06 20:01:00", "2026-01-07 14:52:00"
KEYS = ("plan", "email", "src", "n")
VALUES = ('"free"', '"pro"', '"team"', "1", "1.0", "true", '{"a":1}', "null", '""')
SEQUENCES = [(11, 0), (12, 3600), (13, 0), (14, 1800)]  # (seed, window_seconds)
STEPS = 5


def fmt(value: datetime) -> str:
    return value.strftime(rr.TIME_FORMAT)


class World:
    """The sources of one sequence, grown step by step with a seeded generator."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.clock = datetime(2026, 1, 7, 0, 0, tzinfo=UTC)
        self.now = datetime(2026, 1, 7, 6, 0, tzinfo=UTC)
        self.edges = [rr.utc(W0), rr.utc(W1), rr.utc(W1) - timedelta(microseconds=1)]
        self.teams: dict[int, list[uuid.UUID]] = {}
        self.versions: dict[uuid.UUID, int] = {}
        self.override_versions: dict[tuple[int, str], int] = {}
        self.serial = 0

    def uid(self) -> uuid.UUID:
        self.serial += 1
        return uuid.UUID(int=self.rng.getrandbits(128))

    def distinct_ids(self, team: int) -> list[str]:
        return [f"t{team}-d{i}" for i in range(6)]

    def ingested(self) -> datetime:
        """The clock, or up to 50 minutes before it (a row that became visible late)."""
        if self.rng.random() < 0.3:
            return self.clock - timedelta(minutes=self.rng.randint(1, 50))
        return self.clock

    def properties(self) -> str:
        members = {
            k: json.loads(self.rng.choice(VALUES)) for k in self.rng.sample(KEYS, self.rng.randint(0, 3))
        }
        return json.dumps(members)

    def new_team(self, env: mh.ModelsEnv) -> None:
        team = max(self.teams, default=0) + 1
        persons = [self.uid() for _ in range(5)]
        self.teams[team] = persons
        rows = []
        for person in persons:
            self.versions[person] = 1
            rows.append(rr.PersonRow(person, team, self.properties(), 0, 1, self.ingested(), 1))
        env.insert_persons(rows)

    def timestamp(self) -> datetime:
        roll = self.rng.random()
        if roll < 0.25:
            return self.rng.choice(self.edges)
        low, high = rr.utc(W0) - timedelta(hours=1), self.now + timedelta(hours=2)
        moment = low + (high - low) * self.rng.random()
        if roll < 0.4:  # on a whole hour, a window edge in windowed mode
            moment = moment.replace(minute=1, second=0, microsecond=0)
        return moment

    def event_properties(self) -> str:
        document: dict = {}
        if self.rng.random() < 0.6:
            document["$set"] = {k: json.loads(self.rng.choice(VALUES)) for k in self.rng.sample(KEYS, 2)}
        if self.rng.random() < 0.4:
            document["$set_once"] = {self.rng.choice(KEYS): json.loads(self.rng.choice(VALUES))}
        if self.rng.random() < 0.3:
            document["$unset"] = [self.rng.choice(KEYS)]
        if self.rng.random() < 0.05:
            return '{"$set": {"plan": '  # malformed
        return json.dumps(document)

    def step(self, env: mh.ModelsEnv) -> None:
        rng = self.rng
        self.clock += timedelta(minutes=rng.choice((10, 40, 90, 200)))
        if not self.teams or rng.random() < 0.25:
            self.new_team(env)
        events = []
        for _ in range(rng.randint(10, 30)):
            team = rng.choice(list(self.teams))
            distinct = rng.choice(self.distinct_ids(team))
            owner = rng.choice(self.teams[team]) if rng.random() < 0.95 else self.uid()
            events.append(
                rr.Event(self.uid(), team, distinct, owner, self.timestamp(), self.event_properties())
            )
        # one ingestion time per insert: split the events in two inserts, one possibly late-visible
        half = len(events) // 2
        env.insert_events(events[:half], ingested_at=self.clock)
        env.insert_events(events[half:], ingested_at=self.ingested())

        overrides = []
        for _ in range(rng.randint(0, 3)):
            team = rng.choice(list(self.teams))
            distinct = rng.choice(self.distinct_ids(team))
            version = self.override_versions.get((team, distinct), 0) + 1
            self.override_versions[(team, distinct)] = version
            deleted = int(version > 1 and rng.random() < 0.3)
            person = rng.choice(self.teams[team])
            overrides.append(
                rr.OverrideRow(team, distinct, person, deleted, version, self.ingested(), version, 0)
            )
        env.insert_overrides(overrides)

        persons = []
        for _ in range(rng.randint(0, 3)):
            team = rng.choice(list(self.teams))
            person = rng.choice(self.teams[team])
            deleted = int(rng.random() < 0.15)
            version = self.versions[person] + (100 if deleted else 1)
            self.versions[person] = version
            persons.append(
                rr.PersonRow(
                    person,
                    team,
                    "{}" if deleted else self.properties(),
                    deleted,
                    version,
                    self.ingested(),
                    version,
                )
            )
        env.insert_persons(persons)
        self.edges.append(self.now)
        # `now` moves on in about a third of the steps: dbt parses the project again whenever a var
        # changes, which costs more than the build here
        self.now += timedelta(hours=rng.choice((0, 0, 0, 1, 30)))


def comparable(env: mh.ModelsEnv) -> tuple[dict, dict]:
    diff = {(r[0], r[2]): r[:16] for r in env.diff_rows()}
    summary = {r[0]: r[:11] for r in env.summary_rows()}
    return diff, summary


@pytest.fixture(scope="module")
def envs(tmp_path_factory: pytest.TempPathFactory) -> tuple[mh.ModelsEnv, mh.ModelsEnv]:
    # one dbt target path for both: dbt then reuses the parsed project between their runs
    target = tmp_path_factory.mktemp("dbt-rand")
    incremental = mh.ModelsEnv("posthog_random_it", "recon_random_it", target)
    full = mh.ModelsEnv("posthog_random_it", "recon_random_full_it", target)
    return incremental, full


@pytest.mark.parametrize(("seed", "window_seconds"), SEQUENCES)
def test_interleaved_inserts_and_builds_equal_a_full_refresh(
    envs: tuple[mh.ModelsEnv, mh.ModelsEnv], seed: int, window_seconds: int
) -> None:
    incremental, full = envs
    incremental.init_sources()
    incremental.drop_models()
    full.drop_models()
    world = World(seed)
    for step in range(STEPS):
        world.step(incremental)
        dbt_vars = {
            "bug_window_start": W0,
            "bug_window_end": W1,
            "now": fmt(world.now),
            "window_seconds": window_seconds,
            "person_batch_size": 2,
        }
        incremental.run(dbt_vars)
        full.run(dbt_vars, extra=["--full-refresh"])
        got, expected = comparable(incremental), comparable(full)
        where = f"seed {seed}, step {step}"
        assert got[0] == expected[0], f"{where}: " + mh.explain_mismatch(got[0], expected[0])
        assert got[1] == expected[1], f"{where}: " + mh.explain_mismatch(got[1], expected[1])
        result = full.oracle(mh.config_from_vars(dbt_vars))
        oracle = mh.oracle_content(result)
        content = mh.diff_content(full.diff_rows())
        assert content == oracle, f"{where}: " + mh.explain_mismatch(content, oracle)
