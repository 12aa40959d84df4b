"""`runner outbox`'s jobs: list, retry and discard the outbox messages that have not reached Kafka.

The states and their SQL are `runner.stores.outbox`; publishing is `runner.stores.publisher`. Every job
opens Postgres from the settings (and checks it first); `retry` also checks Kafka before it sends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runner.config import settings
from runner.config.settings import ConfigError
from runner.stores import outbox
from runner.stores.pg_schema import check_postgres, connect
from runner.stores.publisher import Publisher, check_broker

RETRY_PAGE = 1000  # messages read and produced per round of a retry


def _pg_url() -> str:
    url = settings.persons_db_url()
    if not url:
        raise ConfigError(f"no Postgres configured ({settings.ENV_PERSONS_DB})")
    check_postgres(url)
    return url


def _check_ids(conn: Any, selection: outbox.Selection, what: str) -> None:
    missing = outbox.missing_ids(conn, selection)
    if missing:
        raise ConfigError(
            f"outbox message(s) {missing} cannot be {what}: unknown, or not {' or '.join(selection.statuses)}"
        )


def list_messages(selection: outbox.Selection, limit: int) -> tuple[dict[str, int], list[outbox.Message]]:
    """Counts per state of every selected message, and the first `limit` of them, oldest first."""
    with connect(_pg_url(), autocommit=True) as conn:
        return outbox.counts(conn, selection), outbox.list_messages(conn, selection, limit)


@dataclass
class Retry:
    """What a retry did: `selected` messages per state before it; of the `taken` ones, `published`
    confirmed by Kafka, `quarantined` rejected for good (again), the rest not confirmed in time."""

    selected: dict[str, int] = field(default_factory=dict)
    taken: int = 0
    published: int = 0
    quarantined: int = 0
    failures: dict[int, str] = field(default_factory=dict)  # team id -> error

    @property
    def unconfirmed(self) -> int:
        return self.taken - self.published - self.quarantined

    @property
    def complete(self) -> bool:
        return self.published == self.taken


def retry(
    selection: outbox.Selection,
    *,
    publish_timeout: float,
    message_max_bytes: int | None,
    on_start: Callable[[dict[str, int]], None],
) -> Retry:
    """Produce the selected messages again. `on_start` gets the counts per state of what is about to
    be sent (not called when nothing is selected)."""
    pg_url = _pg_url()
    topic = settings.Settings.load().person_topic
    bootstrap = settings.kafka_bootstrap()
    if not bootstrap:
        raise ConfigError(f"no Kafka configured ({settings.ENV_KAFKA})")
    result = Retry()
    with connect(pg_url, autocommit=True) as conn:
        _check_ids(conn, selection, "retried")
        check_broker(bootstrap, topic)
        result.selected = outbox.counts(conn, selection)
        if not sum(result.selected.values()):
            return result
        on_start(result.selected)
        ids_taken: list[int] = []
        publisher = Publisher(bootstrap, topic, timeout=publish_timeout, message_max_bytes=message_max_bytes)
        try:
            for page in outbox.pages(conn, selection, page_size=RETRY_PAGE):
                ids_taken.extend(row[0] for row in page)
                publisher.produce_rows(page)
                publisher.mark_published(conn)
            result.failures = publisher.confirm(conn)
        finally:
            publisher.close()
        after = outbox.counts(conn, outbox.Selection(statuses=(outbox.PUBLISHED,), ids=tuple(ids_taken)))
    result.taken = len(ids_taken)
    result.published = after[outbox.PUBLISHED]
    result.quarantined = publisher.quarantined_total
    return result


def discard(selection: outbox.Selection, reason: str | None) -> list[int]:
    """Set the selected messages aside for good; the ids discarded."""
    with connect(_pg_url(), autocommit=True) as conn:
        _check_ids(conn, selection, "discarded")
        return outbox.discard(conn, selection, reason)
