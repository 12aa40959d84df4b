"""`runner demo seed`: deterministic PostHog-shaped demo data with a bug window of lost updates.

What it writes (after creating the tables if needed, and by default emptying them first):

- ClickHouse `events`, `person`, `person_distinct_id_overrides` in the source database;
- Postgres `posthog_person`.

Because it empties PostHog's tables, it refuses a ClickHouse or Postgres that is not local (embedded
engine, loopback host or unix socket) unless `--allow-remote` is given.

The model behind the data:

- Teams get ids `1..teams`; persons are spread over them with decreasing weights (team 1 is the
  largest, every team has at least one person). `--persons` counts every person ever created,
  including the ones later merged away. With three or more teams the highest team id is *quiet*:
  none of its events inside the bug window carries a property operation, so team discovery (spec R4)
  must skip it.
- Every person has one to four distinct_ids. About 7% of the persons are merged into another person
  of their team, and a fifth of the merge targets are later merged again (chains B -> A -> C). Each
  re-assignment of a distinct_id is an override row with the next version (1, then 2 for chains), so
  the highest version wins. Events carry the person the distinct_id belonged to *at ingestion time*:
  before the merge the old person, after it the new one, so resolving through the overrides matters.
  Merged-away persons are deleted: their last ClickHouse row has `is_deleted = 1` (version + 100, as
  PostHog deletes) and they are absent from Postgres. A few distinct_ids carry an override to the wrong
  person that was later deleted (`is_deleted = 1` at a higher version): their events belong to the
  event's own `person_id`.
- Events lie in `[start, start + days)`, a fixed anchor: the data never depends on the wall clock and
  every timestamp is in the past. Most events are ordinary traffic; about a quarter carry `$set`,
  `$set_once` and/or `$unset` (a person's first event more often). Values are strings (some empty,
  some non-ASCII), numbers, booleans, arrays and nested objects; some are JSON null. There are
  blocklisted keys (spec R5.6), `$set`/`$set_once` that are not objects, `$unset` as an object
  (ignored), and malformed `properties` JSON. Within one event a key appears in one kind only, and
  the events of one resolved person have distinct timestamps, so the replay below is unambiguous.
- Truth: a person's properties are the replay, in timestamp order, of the operations of every event
  resolving to it (`$set` overwrites, `$set_once` only fills an absent key, `$unset` removes; nulls
  and blocklisted keys are ignored; malformed JSON and non-object forms produce nothing).
- The bug: of the events inside `[bug_window_start, bug_window_end)` that carry operations, a
  fraction (`--lost-fraction`) had their operations lost. The stored state (ClickHouse `person` and
  Postgres `posthog_person`, identical: uuid, team, properties, version, created_at, is_identified) is
  the replay without those events. `version` counts the events whose operations changed the person
  after the creating one; `properties_last_updated_at`/`properties_last_operation` describe only the
  creating event (spec R2.5).
- Oddities the pipeline must tolerate, each on about half a percent of the live persons: deleted in
  ClickHouse (tombstone row; half of them still in Postgres), present in ClickHouse but missing in
  Postgres, NULL `version` in Postgres; and about 5% have older versions as extra ClickHouse rows
  (ReplacingMergeTree history).

Serialisation mirrors production: event `properties` are compact JSON with raw UTF-8 (as the capture
SDKs send them); person `properties` in ClickHouse are Python's default `json.dumps` (", " and ": ",
non-ASCII escaped), as in the person Kafka message (spec §2.7); Postgres holds them as jsonb.

Everything random comes from `random.Random` streams seeded from `--seed`, so a seed gives identical
tables. Writing is bulk: events go to ClickHouse as large TabSeparated inserts from a background
thread while the generator runs (the engine releases the GIL), persons and overrides as one insert
each, Postgres as one COPY. About 2.5 s for 100k events and 20 s for 1M on two cores.

Modules, from the pure ones up:

- `semantics`: the property operations of one event and how they change a person (pure);
- `config`: `SeedConfig`, its checks, the fixed time anchors;
- `event_properties`: property values and the `$set`/`$set_once`/`$unset` text of events (pure);
- `population`: persons, merges and override rows, fates (pure);
- `generator`: `generate(SeedConfig) -> Dataset`, events and person rows (pure, no I/O);
- `clickhouse`, `postgres`: writing a dataset to each store, and the fingerprints of what is there;
- `run`: `seed(...) -> SeedResult`, one seeding run (what the command runs);
- `cli`: the `runner demo` group and `runner demo seed`.

Python API, here: `seed(...) -> SeedResult`, `generate(SeedConfig) -> Dataset`, `write_clickhouse`,
`write_postgres`, `operations_from_properties` / `apply_operations` (the replay semantics, used by the
tests to check the stored state), `clickhouse_fingerprint` / `postgres_fingerprint` (determinism).
"""

from runner.local.seed.clickhouse import clickhouse_fingerprint, prepare_clickhouse, write_clickhouse
from runner.local.seed.config import (
    DEFAULT_BUG_WINDOW_END,
    DEFAULT_BUG_WINDOW_START,
    DEFAULT_DAYS,
    DEFAULT_LOST_FRACTION,
    DEFAULT_START,
    TIME_FORMAT,
    SeedConfig,
    parse_time,
)
from runner.local.seed.generator import Dataset, generate
from runner.local.seed.postgres import postgres_fingerprint, write_postgres
from runner.local.seed.run import SeedResult, seed
from runner.local.seed.semantics import apply_operations, operations_from_properties

__all__ = [
    "DEFAULT_BUG_WINDOW_END",
    "DEFAULT_BUG_WINDOW_START",
    "DEFAULT_DAYS",
    "DEFAULT_LOST_FRACTION",
    "DEFAULT_START",
    "TIME_FORMAT",
    "Dataset",
    "SeedConfig",
    "SeedResult",
    "apply_operations",
    "clickhouse_fingerprint",
    "generate",
    "operations_from_properties",
    "parse_time",
    "postgres_fingerprint",
    "prepare_clickhouse",
    "seed",
    "write_clickhouse",
    "write_postgres",
]
