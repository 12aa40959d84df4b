"""Stand-ins for recon's dbt macros, so that `sqlfluff lint` can render the models without dbt.

sqlfluff's jinja templater (see .sqlfluff, `library_path`) puts these functions in the template
context; they return representative SQL, never touch a database and need no vars.
"""

TS = "toDateTime64('2026-01-06 20:01:00', 6, 'UTC')"


def recon_vars() -> dict:
    return {
        "mode": "single_pass",
        "person_batch_size": 10000,
        "grid_seconds": 0,
        "now": "2026-01-20 00:00:00",
        "semantics": "original",
    }


def recon_ts(name: str) -> str:
    return TS


def recon_literal(value: object, kind: str, bare: bool = False) -> str:
    return f"'{value}'" if kind == "string" else str(value)


def recon_team_filter(column: str = "team_id") -> str:
    return f"{column} >= 0"


def recon_grid_filter(alias: str | None = None) -> str:
    return f"{alias + '.' if alias else ''}window_seconds = 0"


def recon_window_start(ts: str) -> str:
    return f"toStartOfHour({ts})"


def recon_nil_uuid() -> str:
    return "toUUID('00000000-0000-0000-0000-000000000000')"


def recon_blocklist_sql() -> str:
    return "['$browser', '$os']"


def recon_keep_other_teams(columns: str, added: dict | None = None) -> str:
    return ""


def recon_key_decisions(**_: str) -> str:
    return (
        "in_state and state_value != '' as in_set,\n"
        "        in_state as keep_set"
    )


class _NoRows:
    rows: list = []


def run_query(sql: str) -> _NoRows:
    return _NoRows()


def recon_check_now_not_behind_ledger() -> str:
    return ""


def recon_operation_type() -> str:
    return "Tuple(at DateTime64(6, 'UTC'), event_uuid UUID, position UInt32, value String)"


_STATES = [
    {"name": "last_set", "merge": "max", "type": "Nullable(String)", "expr": "max(value)"},
    {"name": "last_unset_at", "merge": "max", "type": "Nullable(String)", "expr": "max(value)"},
]


def recon_op_states() -> list:
    return _STATES


def recon_op_states_select(real: bool = True) -> str:
    return ",\n    ".join(
        f"cast({s['expr'] if real else 'null'} as "
        f"SimpleAggregateFunction({s['merge']}, {s['type']})) as {s['name']}"
        for s in _STATES
    )


def recon_op_states_merge(
    alias: str, prefix: str = "", condition: str | None = None, more: bool = False
) -> str:
    items = ",\n        ".join(f"{s['merge']}({alias}.{s['name']}) as {prefix}{s['name']}" for s in _STATES)
    return items + ("," if more else "")


def recon_op_states_present(alias: str) -> str:
    return f"({alias}.last_set is not null or {alias}.last_unset_at is not null)"


def recon_event_ingested_at(alias: str | None = None) -> str:
    return f"ifNull({alias + '.' if alias else ''}inserted_at, _timestamp)"


def recon_team_lookup(team_column: str, relation: str, value_column: str, default: str) -> str:
    return (
        f"transform({team_column}, (select groupArray(team_id) from {relation}), "
        f"(select groupArray({value_column}) from {relation}), {default})"
    )


def recon_overlap() -> str:
    return "toIntervalSecond(3600)"


def recon_final() -> str:
    return "final"


def recon_build_version() -> str:
    return "2"


def recon_in_scope(team: str, person: str) -> str:
    return "true"


def recon_op_states_columns(alias: str) -> str:
    return ",\n        ".join(f"{alias}.{s['name']} as {s['name']}" for s in _STATES)


def recon_op_states_names() -> str:
    return ",\n        ".join(s["name"] for s in _STATES)


def recon_diff_ledger() -> str:
    return "select team_id, max(built_until) as read_from from ledger_rows group by team_id"


def recon_dirty_relation() -> str:
    return "recon.dirty"


def recon_decisions(semantics: str, **_: str) -> str:
    return recon_key_decisions()


def recon_replay_needs_first_after(*_: str) -> str:
    return "last_unset_at is not null"


def recon_diff_grid_filter(alias: str | None = None) -> str:
    return recon_grid_filter(alias) + f" and {alias + '.' if alias else ''}semantics = 'original'"


def recon_has_long_digits(text: str) -> str:
    return f"match({text}, '\"-?[0-9]{{19,}}\"')"


def recon_unquote_big_integers(value: str, source: str) -> str:
    return f"if(match({source}, '[0-9]'), {value}, {value})"


def recon_members(object_json: str, source: str, enabled: str) -> str:
    members = f"JSONExtractKeysAndValuesRaw({object_json})"
    return f"if({enabled}, {members}, {members})"


def recon_built_relation() -> str:
    return "recon.built"


def recon_new_rows_filter(branch: str, **_: str) -> str:
    if branch == "all":
        return ""
    return "where timestamp >= (select min(read_from) from built)"


def recon_ingestion_index_settings() -> str:
    return ""
