"""The person records the rules decide on and the store reads and writes: a locked Postgres row, a
computed write, what the job already wrote, and a person's result (`PersonOutcome`, typed by the job's
item: apply's `PersonDiff`, restore's `BackupEntry`). Plain data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from uuid import UUID

ItemT = TypeVar("ItemT")


@dataclass(frozen=True, slots=True)
class PgPerson:
    id: int
    uuid: UUID
    properties: dict[str, Any]
    version: int | None
    is_identified: bool
    created_at: str  # UTC, as the Kafka message writes it (§2.7)
    # Read only with `lock_persons(..., with_metadata=True)` (None when the column is NULL).
    last_updated_at: dict[str, Any] | None = None
    last_operation: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class PersonWrite:
    """One computed update; JSON columns are already serialised.

    The properties are written either as a change merged in Postgres (`set_json`/`set_once_json` minus
    their dropped keys over the stored properties minus `metadata_removed`: apply, exact), or whole
    (`properties_json`: restore). The metadata maps likewise as a delta (`updated_at_set_json`/
    `operation_set_json` over the stored maps after removing `metadata_removed`: apply), or whole
    (`last_updated_at_json`/`last_operation_json` replace them: restore). The Kafka message is built in
    the same statement from the properties Postgres then holds."""

    person: PgPerson
    version_after: int
    pending_operations_json: str
    properties_json: str | None = None
    set_json: str = "{}"
    set_dropped: list[str] = field(default_factory=list)
    set_once_json: str = "{}"
    set_once_dropped: list[str] = field(default_factory=list)
    updated_at_set_json: str = "{}"
    operation_set_json: str = "{}"
    metadata_removed: list[str] = field(default_factory=list)
    last_updated_at_json: str | None = None
    last_operation_json: str | None = None

    def metadata_columns(self) -> tuple[str, str, list[str] | None]:
        if self.last_updated_at_json is not None or self.last_operation_json is not None:
            return self.last_updated_at_json or "{}", self.last_operation_json or "{}", None
        return self.updated_at_set_json, self.operation_set_json, self.metadata_removed


@dataclass(frozen=True, slots=True)
class AppliedByJob:
    """A person this job already updated in an earlier invocation (found through the outbox)."""

    version: int
    payload: str


@dataclass(slots=True)
class PersonOutcome(Generic[ItemT]):
    """A person's result, as a job's rules decide it and the batch engine settles and counts it
    (`runner.engine`): the job's item, the outcome, the state before and after (None where nothing was
    written), whether an earlier attempt of the job wrote it (found through its outbox rows: reported as
    that write, never written again), and why a person failed."""

    item: ItemT
    outcome: str
    properties_before: dict[str, Any] | None = None
    properties_after: dict[str, Any] | None = None
    version_before: int | None = None
    version_after: int | None = None
    already_done: bool = False
    reason: str | None = None  # why the person failed (invalid_value, version_conflict)
