"""Writing the demo data to ClickHouse: the source tables (created if needed, emptied on reset), the
events as large TabSeparated inserts from a background thread while the generator runs, the person and
override rows as one insert each; and a fingerprint of the tables for determinism checks.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from runner.config import settings
from runner.local.seed.generator import EVENT_COLUMNS, OVERRIDE_COLUMNS, PERSON_COLUMNS, Dataset

# Keep every row of one insert: ReplacingMergeTree would otherwise collapse the history rows and the
# overrides' earlier versions at insert time.
# Times are sent as integer ticks of the column's precision (documented for DateTime64), which the
# basic parser reads exactly.
_INSERT_SETTINGS = {"optimize_on_insert": 0, "date_time_input_format": "basic"}


def prepare_clickhouse(cli: Any, database: str, reset: bool = True) -> None:
    """Create the source tables if needed; with `reset`, empty them."""
    from runner.local import sources
    from runner.stores import warehouse

    sources.init_sources(cli, database)
    if reset:
        for table in sources.SOURCE_TABLES:
            cli.command(f"TRUNCATE TABLE {warehouse.ident(database)}.{warehouse.ident(table)}")


def _insert(cli: Any, database: str, table: str, columns: Sequence[str], blocks: Iterable[bytes]) -> None:
    cli.raw_insert(
        f"{database}.{table}", list(columns), iter(blocks), settings=_INSERT_SETTINGS, fmt="TabSeparated"
    )


def write_clickhouse(dataset: Dataset, cli: Any, database: str, reset: bool = True) -> None:
    """Write a generated dataset (with its events in memory) to the ClickHouse sources."""
    prepare_clickhouse(cli, database, reset)
    if dataset.events_tsv:
        _insert(cli, database, "events", EVENT_COLUMNS, dataset.events_tsv)
    write_clickhouse_persons(dataset, cli, database)


def write_clickhouse_persons(dataset: Dataset, cli: Any, database: str) -> None:
    """Write the person and override rows (one insert each)."""
    if dataset.persons_tsv:
        _insert(cli, database, "person", PERSON_COLUMNS, dataset.persons_tsv)
    if dataset.overrides_tsv:
        _insert(cli, database, "person_distinct_id_overrides", OVERRIDE_COLUMNS, dataset.overrides_tsv)


class EventInserter:
    """Inserts event blocks from a background thread while the generator runs.

    The embedded engine releases the GIL while it parses and merges, so on two cores the insert of
    one batch overlaps the generation of the next. Batches are large (few parts, few merges).
    """

    def __init__(self, cli: Any, database: str, batch_bytes: int = 64 << 20):
        self._cli, self._database, self._batch_bytes = cli, database, batch_bytes
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="seed-events-insert", daemon=True)
        self._thread.start()

    def put(self, block: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(block)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        batch: list[bytes] = []
        size = 0
        while True:
            block = self._queue.get()
            if block is not None:
                batch.append(block)
                size += len(block)
            if batch and (block is None or size >= self._batch_bytes):
                try:
                    if self._error is None:
                        _insert(self._cli, self._database, "events", EVENT_COLUMNS, batch)
                except BaseException as exc:  # re-raised in the generating thread
                    self._error = exc
                batch, size = [], 0
            if block is None:
                return


def clickhouse_fingerprint(cli: Any, database: str | None = None) -> dict[str, tuple[int, int]]:
    """(row count, XOR of row hashes) per source table: equal for identical contents, any row order."""
    from runner.local import sources
    from runner.stores import warehouse

    db = warehouse.ident(database or settings.source_database())
    result = {}
    for table in sources.SOURCE_TABLES:
        rows = cli.query(
            f"SELECT count(), groupBitXor(cityHash64(tuple(*))) FROM {db}.{warehouse.ident(table)}"
        ).result_rows
        result[table] = (int(rows[0][0]), int(rows[0][1]))
    return result
