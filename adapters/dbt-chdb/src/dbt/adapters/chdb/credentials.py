import os
from dataclasses import dataclass

from dbt.adapters.clickhouse.credentials import ClickHouseCredentials


@dataclass
class ChdbCredentials(ClickHouseCredentials):
    """ClickHouse credentials plus the on-disk path of the embedded engine."""

    path: str = ""

    @property
    def type(self) -> str:
        return "chdb"

    @property
    def unique_field(self) -> str:
        return self.path

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.path:
            raise ValueError("chdb profile: 'path' (directory of the embedded engine) is required")
        # chDB resolves relative paths against the working directory; pin it once.
        self.path = os.path.abspath(self.path)

    def _connection_keys(self) -> tuple[str, ...]:
        return ("path", "schema", "custom_settings")
