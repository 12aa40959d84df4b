"""dbt adapter `chdb`: dbt-clickhouse running on the in-process ClickHouse engine chDB.

Only the client is replaced (chDB instead of HTTP); every macro and materialisation comes from
dbt-clickhouse through `dependencies=["clickhouse"]`, so SQL is identical to production.
"""

from dbt.adapters.base import AdapterPlugin
from dbt.adapters.chdb.connections import ChdbConnectionManager  # noqa: F401
from dbt.adapters.chdb.credentials import ChdbCredentials
from dbt.adapters.chdb.impl import ChdbAdapter
from dbt.include import chdb

Plugin = AdapterPlugin(
    adapter=ChdbAdapter,  # type: ignore[arg-type]
    credentials=ChdbCredentials,
    include_path=chdb.PACKAGE_PATH,
    dependencies=["clickhouse"],
)
