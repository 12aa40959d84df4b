"""The `chdb` dbt adapter runs dbt-clickhouse's materialisations on the embedded engine."""

from __future__ import annotations

from dbt.adapters.chdb import Plugin
from dbt.adapters.chdb.__version__ import version

# Source rows: (window, key, value, ts). Keys appear in several windows; the latest value per key
# is the one with the largest ts, whatever window it is in.
RAW_OPS = """
{{ config(materialized='table', engine='MergeTree()', order_by='(window_id, key, ts)') }}
select
    toUInt32(intDiv(number, 10) % 3) as window_id,
    concat('k', toString(number % 7)) as key,
    concat('v', toString(number)) as value,
    toDateTime64('2026-01-01 00:00:00', 6, 'UTC') + toIntervalSecond(number) as ts
from numbers(30)
"""

# Append-only aggregate states: re-inserting a window merges to the same result.
LATEST_BY_KEY = """
{{ config(
    materialized='incremental',
    incremental_strategy='append',
    engine='AggregatingMergeTree()',
    order_by='(key)',
) }}
select
    key,
    argMaxState(value, ts) as latest_value,
    maxState(ts) as last_ts,
    argMinState(value, ts) as first_value
from {{ ref('raw_ops') }}
{% if is_incremental() %}
where window_id in ({{ env_var('CHDB_TEST_WINDOWS', '0') }})
{% endif %}
group by key
"""

# delete+insert keyed by window: a re-run replaces exactly the windows it selects.
WINDOW_TOTALS = """
{{ config(
    materialized='incremental',
    incremental_strategy='delete+insert',
    unique_key='window_id',
    engine='MergeTree()',
    order_by='(window_id)',
) }}
select
    window_id,
    count() * {{ env_var('CHDB_TEST_WEIGHT', '1') }} as operations,
    max(ts) as last_ts
from {{ ref('raw_ops') }}
{% if is_incremental() %}
where window_id in ({{ env_var('CHDB_TEST_WINDOWS', '0') }})
{% endif %}
group by window_id
"""

MERGED = """
select key, argMaxMerge(latest_value) as latest, toString(maxMerge(last_ts)) as last_ts,
       argMinMerge(first_value) as first
from `{schema}`.latest_by_key group by key order by key
"""


def _expected_latest() -> list[tuple[str, str, str, str]]:
    rows: dict[str, tuple[str, str, str, str]] = {}
    for number in range(30):
        key = f"k{number % 7}"
        first = rows.get(key, (key, "", "", f"v{number}"))[3]
        rows[key] = (key, f"v{number}", f"2026-01-01 00:00:{number:02d}.000000", first)
    return sorted(rows.values())


def test_plugin_is_registered() -> None:
    assert Plugin.adapter.type() == "chdb"
    assert Plugin.dependencies == ["clickhouse"]
    assert version


def test_dbt_debug(dbt_project) -> None:
    result = dbt_project.invoke("debug")
    assert result.success


def test_table_model_is_rebuilt_not_appended(dbt_project, ch) -> None:
    dbt_project.model("raw_ops.sql", RAW_OPS)
    dbt_project.invoke("run")
    dbt_project.invoke("run")
    schema = dbt_project.schema
    assert ch.query(f"select count() from `{schema}`.raw_ops").result_rows == [(30,)]
    engine = ch.query(
        "select engine from system.tables where database = {db:String} and name = 'raw_ops'",
        parameters={"db": schema},
    ).result_rows
    assert engine == [("MergeTree",)]


def test_append_aggregate_states_merge_to_the_same_result(dbt_project, ch) -> None:
    dbt_project.model("raw_ops.sql", RAW_OPS)
    dbt_project.model("latest_by_key.sql", LATEST_BY_KEY)
    schema = dbt_project.schema
    dbt_project.invoke("run")  # first run: full build
    first = ch.query(MERGED.format(schema=schema)).result_rows
    parts_first = ch.query(f"select count() from `{schema}`.latest_by_key").result_rows[0][0]
    assert [tuple(row) for row in first] == _expected_latest()

    # Re-append windows already materialised (a retried or crashed run): same merged result.
    dbt_project.invoke("run", "--select", "latest_by_key", env={"CHDB_TEST_WINDOWS": "1, 2"})
    dbt_project.invoke("run", "--select", "latest_by_key", env={"CHDB_TEST_WINDOWS": "2"})
    again = ch.query(MERGED.format(schema=schema)).result_rows
    assert again == first
    rows_now = ch.query(f"select count() from `{schema}`.latest_by_key").result_rows[0][0]
    assert rows_now > parts_first  # the rows were appended, not replaced
    engine = ch.query(
        "select engine from system.tables where database = {db:String} and name = 'latest_by_key'",
        parameters={"db": schema},
    ).result_rows
    assert engine == [("AggregatingMergeTree",)]
    ch.command(f"optimize table `{schema}`.latest_by_key final")
    assert ch.query(MERGED.format(schema=schema)).result_rows == first


def test_delete_insert_replaces_selected_windows(dbt_project, ch) -> None:
    dbt_project.model("raw_ops.sql", RAW_OPS)
    dbt_project.model("window_totals.sql", WINDOW_TOTALS)
    schema = dbt_project.schema
    query = f"select window_id, operations from `{schema}`.window_totals order by window_id"
    dbt_project.invoke("run")
    assert ch.query(query).result_rows == [(0, 10), (1, 10), (2, 10)]

    dbt_project.invoke(
        "run", "--select", "window_totals", env={"CHDB_TEST_WINDOWS": "1, 2", "CHDB_TEST_WEIGHT": "5"}
    )
    assert ch.query(query).result_rows == [(0, 10), (1, 50), (2, 50)]

    # The same incremental run again: no duplicates, same result.
    dbt_project.invoke(
        "run", "--select", "window_totals", env={"CHDB_TEST_WINDOWS": "1, 2", "CHDB_TEST_WEIGHT": "5"}
    )
    assert ch.query(query).result_rows == [(0, 10), (1, 50), (2, 50)]


def test_empty_select_keeps_its_columns(chdb_path):
    """chDB drops the column list of an empty result; the adapter restores it (dbt needs it)."""
    from dbt.adapters.chdb.client import ChdbClient
    from dbt.adapters.chdb.credentials import ChdbCredentials

    client = ChdbClient(ChdbCredentials(path=chdb_path, schema="default"))
    result = client.query("select 1 as a, 'x' as b where 0")
    assert result.column_names == ("a", "b")
    assert [t.name for t in result.column_types] == ["UInt8", "String"]
    assert result.result_rows == []
