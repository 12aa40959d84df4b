import re

import clickhouse_connect
from clickhouse_connect.datatypes.registry import get_from_name
from clickhouse_connect.driver.query import QueryResult
from dbt.adapters.clickhouse.httpclient import ChHttpClient

_SELECT = re.compile(r"^\s*(select|with)\b", re.IGNORECASE)


class ChdbClient(ChHttpClient):
    """dbt-clickhouse's client wrapper with the transport swapped for in-process chDB."""

    def _create_client(self, credentials):  # type: ignore[no-untyped-def]
        return clickhouse_connect.get_client(
            interface="chdb", path=credentials.path, settings=self._conn_settings
        )

    def query(self, sql, **kwargs):  # type: ignore[no-untyped-def]
        result = super().query(sql, **kwargs)
        if result.column_names or result.result_rows or not _SELECT.match(sql):
            return result
        # chDB returns an empty result without its columns, where the HTTP interface keeps them; dbt
        # needs them (unit tests expecting no rows, `dbt show` of an empty model): ask for the shape.
        described = super().query(f"DESCRIBE TABLE ({sql})", **kwargs).result_rows
        return QueryResult(
            [],
            column_names=tuple(row[0] for row in described),
            column_types=tuple(get_from_name(row[1]) for row in described),
        )
