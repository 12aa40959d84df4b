import clickhouse_connect
from dbt.adapters.clickhouse.httpclient import ChHttpClient


class ChdbClient(ChHttpClient):
    """dbt-clickhouse's client wrapper with the transport swapped for in-process chDB."""

    def _create_client(self, credentials):  # type: ignore[no-untyped-def]
        return clickhouse_connect.get_client(
            interface="chdb", path=credentials.path, settings=self._conn_settings
        )
