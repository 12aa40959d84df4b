"""Counters with the original job's names and labels (R11.5), written to ClickHouse's
`custom_metrics_counter_events` (§2.8). Writing metrics never fails a run: errors are logged and
swallowed, as in the original.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from clickhouse_connect.driver.client import Client

from runner.stores.warehouse import ident

log = logging.getLogger("runner.metrics")  # its name before the move: same log lines

JOB_NAME = "person_property_reconciliation_job"
PREFIX = "person_property_reconciliation_"


@dataclass(frozen=True, slots=True)
class Counter:
    name: str
    labels: dict[str, str]
    increment: float


def apply_counters(
    chunk: str,
    *,
    processed: int,
    updated: int,
    skipped: int,
    teams_succeeded: int,
    failed_team_ids: Sequence[int],
    duration_seconds: float,
    job_name: str = JOB_NAME,
) -> list[Counter]:
    """One error counter per failed team, then the six chunk counters (always, even when zero)."""
    labels = {"job_name": job_name, "chunk_id": chunk}
    counters = [
        Counter(f"{PREFIX}error", {**labels, "team_id": str(team), "reason": "error"}, 1.0)
        for team in failed_team_ids
    ]
    for name, value in (
        ("persons_processed_total", processed),
        ("persons_updated_total", updated),
        ("persons_skipped_total", skipped),
        ("teams_succeeded_total", teams_succeeded),
        ("teams_failed_total", len(failed_team_ids)),
        ("duration_seconds_total", duration_seconds),
    ):
        counters.append(Counter(PREFIX + name, dict(labels), float(value)))
    return counters


def write(client: Client, database: str, counters: Sequence[Counter]) -> bool:
    """Insert the counters; False (logged) when ClickHouse refused them."""
    if not counters:
        return True
    try:
        rows = "\n".join(
            json.dumps({"name": c.name, "labels": c.labels, "increment": c.increment}) for c in counters
        )
        client.raw_insert(
            f"{ident(database)}.custom_metrics_counter_events",
            ["name", "labels", "increment"],
            rows.encode(),
            fmt="JSONEachRow",
        )
        return True
    except Exception as exc:  # noqa: BLE001 - metrics must never fail the run (R11.5)
        log.warning("could not write metrics to ClickHouse: %s", exc)
        return False
