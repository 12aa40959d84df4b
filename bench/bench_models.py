"""Benchmark of the dbt models against the floor and the original job's approach, full and incremental.

    .venv/bin/python bench/bench_models.py --sizes 1000000,5000000 --repeats 3

For each size it seeds PostHog-shaped data with `runner.local.seed` (fixed seed; 10 teams, one person per
20 events, five days of events, the default bug window; events ingested a few seconds after their
timestamp), then for each mode (single pass, and windowed with one-hour windows) and each repeat:

1. the floor: one scan of the events from bug_window_start to the end extracting `$set`, `$set_once`
   and `$unset` (with the models' cheap substring test; the plain three-JSONExtractRaw scan is printed
   too);
2. the original job's approach, re-expressed from the spec (bench/original_job.py): its single diff
   query per team (single pass), or its step 1 plus per-window aggregation queries merged in Python
   and compared in Python (windowed); in the first `--original-repeats` repeats (default 1);
3. a full build: drop the models, `dbt run` up to the end of the data;
4. one more hour on time: a copy of the last hour one hour later, then an incremental `dbt run`;
5. an hour of late events: a copy of the bug window's fifth hour (same timestamps, new uuids) ingested
   after that, then another incremental `dbt run` (same `now`);
6. the appended rows are deleted again.

Every figure is a median over the repeats; ratios are taken per repeat. Model times are the sum of
dbt's per-model execution times; dbt's fixed start-up (wall time minus model time) is reported apart.
The builds run as an hourly schedule runs them: the same `--vars` every time (the build's `now` goes
through the environment variable RECON_NOW, read only at run time), so dbt's partial parsing stays
warm; the one re-parse a change of `--vars` costs is measured once per mode (`parse_s`).

Where the time goes: the embedded engine is started with its query log on, and after every build the
bench prints per model what ClickHouse reports in `system.query_log` (queries, summed
query_duration_ms, read_rows, read_bytes, written_rows, the largest memory_usage of one query) and the
build's peak memory (the largest memory_usage of any query of the build; dbt runs one query at a time).

Not a test: it prints, and writes the figures as JSON to bench/results/. It runs in this process on
its own embedded ClickHouse path (default: a temporary directory), so it does not touch the project's
`.recon` engine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
SOURCE_DB = "posthog_bench"
SCHEMA = "recon_bench"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
MODES = {"single_pass": 0, "windowed": 3600}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000000,5000000", help="comma-separated numbers of events")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size and mode (median reported)")
    parser.add_argument("--teams", type=int, default=10)
    parser.add_argument("--events-per-person", type=int, default=20)
    parser.add_argument("--modes", default="single_pass,windowed")
    parser.add_argument(
        "--chdb-path", default=None, help="embedded engine path (default: a temporary directory)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--original-repeats",
        type=int,
        default=1,
        help="repeats that also time the original job's approach (slow in windowed mode; at least 1: "
        "every ratio to the original needs it)",
    )
    parser.add_argument(
        "--plot",
        default=None,
        help="draw time vs events (full, +1h, late, original, floor per mode) into this PNG",
    )
    parser.add_argument(
        "--from-results",
        default=None,
        help="comma-separated result JSON files to plot (with --plot) instead of running the bench",
    )
    parser.add_argument(
        "--top-queries",
        type=int,
        default=0,
        help="also print the N longest queries of every build, as the engine's query log has them",
    )
    args = parser.parse_args()
    if args.original_repeats < 1:
        parser.error("--original-repeats must be at least 1 (the ratios to the original need one run of it)")
    return args


QUERY_LOG_CONFIG = """<clickhouse>
    <query_log>
        <database>system</database>
        <table>query_log</table>
        <flush_interval_milliseconds>1000</flush_interval_milliseconds>
    </query_log>
</clickhouse>
"""


def open_engine(path: Path, workdir: Path) -> Any:
    """Start the embedded engine with its query log on (a config file, as clickhouse-local takes it).
    Every later connection to the same path in this process (the bench's client, dbt's adapter) joins
    this engine, so its queries are logged too. The handle must stay open for the whole run."""
    import chdb

    config = workdir / "query_log.xml"
    config.write_text(QUERY_LOG_CONFIG)
    path.mkdir(parents=True, exist_ok=True)
    return chdb.connect(f"file:{path}?config-file={config}")


def main() -> int:
    args = parse_args()
    if args.from_results:
        rows = [row for path in args.from_results.split(",") for row in json.loads(Path(path).read_text())]
        plot(rows, Path(args.plot or "docs/bench_models.png"))
        return 0
    global TOP_QUERIES
    TOP_QUERIES = args.top_queries
    workdir = Path(args.chdb_path or tempfile.mkdtemp(prefix="recon-bench-"))
    engine_path = workdir / "clickhouse" if not args.chdb_path else workdir
    os.environ["RECON_CHDB_PATH"] = str(engine_path)
    os.environ["RECON_TARGET_SCHEMA"] = SCHEMA
    os.environ.setdefault("RECON_PROJECT_DIR", str(PROJECT))
    sys.path.insert(0, str(PROJECT))
    engine = open_engine(engine_path, workdir if not args.chdb_path else Path(tempfile.mkdtemp()))

    from runner.local import seed as seed_module
    from runner.stores import warehouse

    client = warehouse.client()
    target_path = workdir / "dbt-target"
    # load dbt, the adapter and the project once, so that the first timed run does not pay for it
    from runner.jobs.dbt import run_dbt

    run_dbt("parse", None, ["--target-path", str(target_path), "-q"])
    results: list[dict[str, Any]] = []
    for size in [int(s) for s in args.sizes.split(",") if s.strip()]:
        print(f"\n== {size:,} events: seeding ...", flush=True)
        started = time.perf_counter()
        config = seed_module.SeedConfig(
            teams=args.teams,
            persons=max(args.teams, size // args.events_per_person),
            events=size,
            seed=args.seed,
        )
        dataset = seed_module.generate(config)
        seed_module.write_clickhouse(dataset, client, SOURCE_DB)
        del dataset
        end = datetime.strptime(config.start, TIME_FORMAT) + timedelta(days=config.days)
        print(f"   seeded in {time.perf_counter() - started:.0f}s", flush=True)
        read = events_read(client, config.bug_window_start, end.strftime(TIME_FORMAT))
        for mode in args.modes.split(","):
            figures = bench_mode(
                client, config, end, MODES[mode], args.repeats, target_path, args.original_repeats
            )
            row = {"events": size, "mode": mode, "events_read": read, **figures}
            results.append(row)
            print_row(row)
    print_table(results)
    out = PROJECT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"bench_models_{datetime.now():%Y%m%d_%H%M%S}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nfigures written to {path.relative_to(PROJECT)}")
    if args.plot:
        plot(results, Path(args.plot))
    # the engine writes its query log into its path when it shuts down: close every handle first
    client.close()
    engine.close()
    if not args.chdb_path:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def dbt_run(
    client: Any, dbt_vars: dict[str, Any], now: str, target_path: Path
) -> tuple[float, float, dict[str, float], dict[str, dict[str, float]]]:
    """In-process `dbt run` up to `now` (through RECON_NOW, so that `--vars` stay the same from one
    build to the next): (wall seconds, models' seconds, per-model seconds, per-model query log)."""
    from runner.jobs.dbt import run_dbt

    since = engine_clock(client)
    os.environ["RECON_NOW"] = now
    started = time.perf_counter()
    try:
        result = run_dbt(
            "run", {"source_database": SOURCE_DB, **dbt_vars}, ["--target-path", str(target_path), "-q"]
        )
    finally:
        os.environ.pop("RECON_NOW", None)
    wall = time.perf_counter() - started
    per_model = {
        r.node.name: float(r.execution_time) for r in result.results if r.node.resource_type == "model"
    }
    log = query_log(client, since)
    if TOP_QUERIES:
        print_top_queries(client, since, TOP_QUERIES)
    return wall, sum(per_model.values()), per_model, log


TOP_QUERIES = 0  # --top-queries


def print_top_queries(client: Any, since: Any, limit: int) -> None:
    rows = client.query(
        """
        SELECT
            splitByChar('.', extract(substring(query, 1, 500), '"node_id": "([^"]+)"'))[-1] AS model,
            query_duration_ms, read_rows, read_bytes / 1048576, memory_usage / 1048576,
            substring(replaceRegexpAll(replaceRegexpOne(query, '^/[*][^/]*[*]/', ''), '\\s+', ' '), 1, 90)
        FROM system.query_log
        WHERE type = 'QueryFinish' AND query_start_time_microseconds >= {since:DateTime64(6)}
            AND query NOT LIKE '%system.query_log%'
        ORDER BY query_duration_ms DESC
        LIMIT {limit:UInt32}
        """,
        parameters={"since": since, "limit": limit},
    ).result_rows
    for model, ms, read_rows, read_mib, memory_mib, text in rows:
        print(
            f"       {model:<36} {ms:>6} ms {read_rows:>11,} rows {read_mib:>7.1f} MiB read "
            f"{memory_mib:>6.0f} MiB mem  {text}",
            flush=True,
        )


def dbt_parse(dbt_vars: dict[str, Any], target_path: Path) -> float:
    """`dbt parse` with the builds' vars: what one change of `--vars` costs (a full re-parse), and the
    warm manifest the timed builds then reuse."""
    from runner.jobs.dbt import run_dbt

    started = time.perf_counter()
    run_dbt("parse", {"source_database": SOURCE_DB, **dbt_vars}, ["--target-path", str(target_path), "-q"])
    return time.perf_counter() - started


def engine_clock(client: Any) -> Any:
    return client.query("SELECT now64(6)").result_rows[0][0]


QUERY_LOG_FIGURES = ("queries", "duration_ms", "read_rows", "read_mib", "written_rows", "peak_mib", "cpu_s")


def query_log(client: Any, since: Any) -> dict[str, dict[str, float]]:
    """Per dbt node (from dbt's query comment; `other` for dbt's own metadata queries): the finished
    queries since `since` as the engine logged them; `build` sums them (its peak_mib is the build's
    peak: the largest memory_usage of one query, dbt running one query at a time)."""
    client.command("SYSTEM FLUSH LOGS")
    rows = client.query(
        """
        SELECT
            if(node = '', 'other', splitByChar('.', node)[-1]) AS model,
            count(),
            sum(query_duration_ms),
            sum(read_rows),
            sum(read_bytes) / 1048576,
            sum(written_rows),
            max(memory_usage) / 1048576,
            sum(ProfileEvents['OSCPUVirtualTimeMicroseconds']) / 1e6
        FROM (
            SELECT *, extract(substring(query, 1, 500), '"node_id": "([^"]+)"') AS node
            FROM system.query_log
            WHERE type = 'QueryFinish' AND query_start_time_microseconds >= {since:DateTime64(6)}
                AND query NOT LIKE '%system.query_log%'
        )
        GROUP BY model
        """,
        parameters={"since": since},
    ).result_rows
    figures = {row[0]: dict(zip(QUERY_LOG_FIGURES, (float(v) for v in row[1:]), strict=True)) for row in rows}
    figures["build"] = {
        name: (max if name == "peak_mib" else sum)(f[name] for f in figures.values())
        for name in QUERY_LOG_FIGURES
    }
    return figures


def drop_models(client: Any) -> None:
    client.command(f"CREATE DATABASE IF NOT EXISTS {SCHEMA}")
    for (name,) in client.query(
        "SELECT name FROM system.tables WHERE database = {db:String}", parameters={"db": SCHEMA}
    ).result_rows:
        client.command(f"DROP TABLE IF EXISTS {SCHEMA}.`{name}`")


APPENDED = 4242424242  # `_offset` of the rows a repeat appends, so that it can delete them again


def append_hour(client: Any, end: datetime) -> int:
    """One more hour of events on time: a copy of the last hour, one hour later, new uuids, ingested
    two seconds after their timestamp (like the seeded events)."""
    last = f"toDateTime64('{end:%Y-%m-%d %H:%M:%S}', 6, 'UTC')"
    client.command(
        f"INSERT INTO {SOURCE_DB}.events "
        "(uuid, event, properties, timestamp, team_id, distinct_id, person_id, _timestamp, _offset, "
        "inserted_at) "
        "SELECT generateUUIDv4(rowNumberInAllBlocks()), event, properties, timestamp + INTERVAL 1 HOUR, "
        "team_id, distinct_id, person_id, toDateTime(timestamp + INTERVAL 1 HOUR + INTERVAL 2 SECOND), "
        f"{APPENDED}, timestamp + INTERVAL 1 HOUR + INTERVAL 2 SECOND FROM {SOURCE_DB}.events "
        f"WHERE timestamp >= {last} - INTERVAL 1 HOUR AND timestamp < {last} AND _offset != {APPENDED}"
    )
    return client.query(f"SELECT count() FROM {SOURCE_DB}.events WHERE timestamp >= {last}").result_rows[0][0]


def append_late_hour(client: Any, config: Any, end: datetime) -> int:
    """An hour of late events: a copy (new uuids, same timestamps) of the events of the fifth hour of
    the bug window, ingested 90 minutes after the end of the data, so inside windows already built."""
    w0 = f"toDateTime64('{config.bug_window_start}', 6, 'UTC')"
    ingested = f"toDateTime64('{end + timedelta(minutes=90):%Y-%m-%d %H:%M:%S}', 6, 'UTC')"
    client.command(
        f"INSERT INTO {SOURCE_DB}.events "
        "(uuid, event, properties, timestamp, team_id, distinct_id, person_id, _timestamp, _offset, "
        "inserted_at) "
        "SELECT generateUUIDv4(rowNumberInAllBlocks()), event, properties, timestamp, team_id, distinct_id, "
        f"person_id, toDateTime({ingested}), {APPENDED}, {ingested} FROM {SOURCE_DB}.events "
        f"WHERE timestamp >= {w0} + INTERVAL 4 HOUR AND timestamp < {w0} + INTERVAL 5 HOUR "
        f"AND _offset != {APPENDED}"
    )
    return client.query(
        f"SELECT count() FROM {SOURCE_DB}.events WHERE _offset = {APPENDED} AND inserted_at = {ingested}"
    ).result_rows[0][0]


def remove_appended(client: Any) -> None:
    client.command(
        f"ALTER TABLE {SOURCE_DB}.events DELETE WHERE _offset = {APPENDED} SETTINGS mutations_sync = 2"
    )


SERIES = (
    "floor_s",
    "naive_floor_s",
    "original_s",
    "full_wall_s",
    "full_models_s",
    "startup_s",
    "hour_wall_s",
    "hour_models_s",
    "late_wall_s",
    "late_models_s",
    "full_models_over_floor",
    "full_models_over_original",
    "full_wall_over_original",
    "hour_models_over_full_models",
    "late_models_over_full_models",
    "hour_wall_over_full_wall",
    "late_wall_over_full_wall",
)


def bench_mode(
    client: Any,
    config: Any,
    end: datetime,
    window_seconds: int,
    repeats: int,
    target_path: Path,
    original_repeats: int,
) -> dict:
    """Per repeat: the floor, the original job's approach, a full build, one more hour of events on
    time and its incremental build, an hour of late events and its incremental build.

    The floor and the original are measured inside each repeat, next to the runs they are compared
    with, and the ratios are taken per repeat before the median: the machine's load then affects both
    sides alike. The original (slow in windowed mode) runs in the first `original_repeats` repeats.
    """
    import original_job  # bench/ is on sys.path when this file runs as a script

    base = {
        "bug_window_start": config.bug_window_start,
        "bug_window_end": config.bug_window_end,
        "window_seconds": window_seconds,
    }
    end_text = end.strftime(TIME_FORMAT)
    later = (end + timedelta(hours=1)).strftime(TIME_FORMAT)
    series: dict[str, list[float]] = {name: [] for name in SERIES}
    per_model: dict[str, dict[str, list[float]]] = {"full": {}, "hour": {}, "late": {}}
    logged: dict[str, dict[str, dict[str, list[float]]]] = {"full": {}, "hour": {}, "late": {}}
    appended = late = 0
    original = None
    parse = dbt_parse(base, target_path)
    for repeat in range(repeats):
        remove_appended(client)
        floor, naive_floor = measure_floors(client, config.bug_window_start, end_text)
        if repeat < original_repeats:
            started = time.perf_counter()
            if window_seconds:
                original_job.windowed(
                    client,
                    SOURCE_DB,
                    config.bug_window_start,
                    config.bug_window_end,
                    end_text,
                    window_seconds,
                )
            else:
                original_job.single_pass(
                    client, SOURCE_DB, config.bug_window_start, config.bug_window_end, end_text
                )
            original = time.perf_counter() - started
        drop_models(client)
        full_wall, full_models, models, log = dbt_run(client, base, end_text, target_path)
        record(per_model["full"], models)
        record_log(logged["full"], log)
        appended = append_hour(client, end)
        hour_wall, hour_models, models, log = dbt_run(client, base, later, target_path)
        record(per_model["hour"], models)
        record_log(logged["hour"], log)
        late = append_late_hour(client, config, end)
        late_wall, late_models, models, log = dbt_run(client, base, later, target_path)
        record(per_model["late"], models)
        record_log(logged["late"], log)
        values = {
            "floor_s": floor,
            "naive_floor_s": naive_floor,
            "original_s": original,
            "full_wall_s": full_wall,
            "full_models_s": full_models,
            "startup_s": full_wall - full_models,
            "hour_wall_s": hour_wall,
            "hour_models_s": hour_models,
            "late_wall_s": late_wall,
            "late_models_s": late_models,
            "full_models_over_floor": full_models / floor,
            "full_models_over_original": full_models / original,
            "full_wall_over_original": full_wall / original,
            "hour_models_over_full_models": hour_models / full_models,
            "late_models_over_full_models": late_models / full_models,
            "hour_wall_over_full_wall": hour_wall / full_wall,
            "late_wall_over_full_wall": late_wall / full_wall,
        }
        for name, value in values.items():
            series[name].append(value)
    remove_appended(client)
    return {
        **{name: statistics.median(values) for name, values in series.items()},
        "parse_s": parse,
        "appended_events": appended,
        "late_events": late,
        **{
            f"{run}_per_model_s": {k: round(statistics.median(v), 3) for k, v in seconds.items()}
            for run, seconds in per_model.items()
        },
        **{
            f"{run}_query_log": {
                model: {name: round(statistics.median(v), 3) for name, v in figures.items()}
                for model, figures in models.items()
            }
            for run, models in logged.items()
        },
        **{f"{run}_peak_mib": statistics.median(logged[run]["build"]["peak_mib"]) for run in logged},
    }


def record(into: dict[str, list[float]], models: dict[str, float]) -> None:
    for name, seconds in models.items():
        into.setdefault(name, []).append(seconds)


def record_log(into: dict[str, dict[str, list[float]]], log: dict[str, dict[str, float]]) -> None:
    for model, figures in log.items():
        for name, value in figures.items():
            into.setdefault(model, {}).setdefault(name, []).append(value)


def measure_floors(client: Any, start: str, end: str) -> tuple[float, float]:
    """One scan of the events from bug_window_start to the end, extracting $set, $set_once, $unset:
    with the models' substring test before parsing (the floor), and without it (the naive floor)."""
    scope = (
        f"FROM {SOURCE_DB}.events WHERE timestamp >= toDateTime64('{start}', 6, 'UTC') "
        f"AND timestamp < toDateTime64('{end}', 6, 'UTC')"
    )
    guarded = (
        "SELECT sum("
        "length(if(position(properties, '\"$set\"') > 0, JSONExtractRaw(properties, '$set'), '')) "
        "+ length(if(position(properties, '\"$set_once\"') > 0, "
        "JSONExtractRaw(properties, '$set_once'), '')) "
        "+ length(if(position(properties, '\"$unset\"') > 0, JSONExtractRaw(properties, '$unset'), ''))) "
        f"{scope} AND (position(properties, '$set') > 0 OR position(properties, '$unset') > 0)"
    )
    naive = (
        "SELECT sum(length(JSONExtractRaw(properties, '$set')) "
        "+ length(JSONExtractRaw(properties, '$set_once')) "
        f"+ length(JSONExtractRaw(properties, '$unset'))) {scope}"
    )
    timings = []
    for sql in (guarded, guarded, naive):  # the first pass warms the caches
        started = time.perf_counter()
        client.query(sql)
        timings.append(time.perf_counter() - started)
    return timings[1], timings[2]


def events_read(client: Any, start: str, end: str) -> int:
    return client.query(
        f"SELECT count() FROM {SOURCE_DB}.events WHERE timestamp >= toDateTime64('{start}', 6, 'UTC') "
        f"AND timestamp < toDateTime64('{end}', 6, 'UTC')"
    ).result_rows[0][0]


def print_row(row: dict) -> None:
    print(
        f"   {row['mode']:<11} floor {row['floor_s']:.2f}s (naive {row['naive_floor_s']:.2f}s); "
        f"original {row['original_s']:.2f}s; full {row['full_models_s']:.2f}s models / "
        f"{row['full_wall_s']:.2f}s wall (dbt start-up {row['startup_s']:.2f}s); "
        f"+1h {row['hour_models_s']:.2f}s; late hour {row['late_models_s']:.2f}s",
        flush=True,
    )
    print(
        f"     dbt re-parse after a change of --vars {row['parse_s']:.2f}s; peak memory per build: "
        f"full {row['full_peak_mib']:.0f} MiB, +1h {row['hour_peak_mib']:.0f} MiB, "
        f"late {row['late_peak_mib']:.0f} MiB",
        flush=True,
    )
    for run in ("full", "hour", "late"):
        print(
            f"     {run:<4} {'model':<42} {'dbt s':>6} {'queries':>7} {'query s':>7} {'cpu s':>6} "
            f"{'read rows':>11} {'read MiB':>8} {'written':>9} {'peak MiB':>8}"
        )
        seconds, log = row[f"{run}_per_model_s"], row[f"{run}_query_log"]
        for model in [*seconds, *(m for m in log if m not in seconds)]:
            f = log.get(model, {})
            print(
                f"          {model:<42} {seconds.get(model, float('nan')):>6.2f} {f.get('queries', 0):>7.0f} "
                f"{f.get('duration_ms', 0) / 1000:>7.2f} {f.get('cpu_s', 0):>6.2f} "
                f"{f.get('read_rows', 0):>11,.0f} {f.get('read_mib', 0):>8.1f} "
                f"{f.get('written_rows', 0):>9,.0f} {f.get('peak_mib', 0):>8.0f}",
                flush=True,
            )


def print_table(results: list[dict]) -> None:
    print(
        f"\n{'events':>10} {'mode':<11} {'floor':>7} {'original':>9} {'full':>7} {'startup':>8} "
        f"{'full/floor':>10} {'full/orig':>9} {'wall/orig':>9} {'+1h/full':>8} {'late/full':>9} "
        f"{'+1h wall':>8} {'late wall':>9} {'peak MiB':>14}"
    )
    for r in results:
        print(
            f"{r['events']:>10,} {r['mode']:<11} {r['floor_s']:>6.2f}s {r['original_s']:>8.2f}s "
            f"{r['full_models_s']:>6.2f}s {r['startup_s']:>7.2f}s {r['full_models_over_floor']:>9.1f}x "
            f"{r['full_models_over_original']:>8.2f}x {r['full_wall_over_original']:>8.2f}x "
            f"{100 * r['hour_models_over_full_models']:>7.0f}% "
            f"{100 * r['late_models_over_full_models']:>8.0f}% "
            f"{100 * r['hour_wall_over_full_wall']:>7.0f}% {100 * r['late_wall_over_full_wall']:>8.0f}% "
            f"{r['full_peak_mib']:>6.0f}/{r['hour_peak_mib']:.0f}/{r['late_peak_mib']:.0f}"
        )
    print(
        "\nfull, +1h and late are the models' own time (sum of dbt's per-model times); dbt's fixed "
        "start-up (wall minus models) is apart;\n+1h wall and late wall are ratios of wall times; "
        "peak MiB: full/+1h/late.\ntargets (issue 21, medians of 3 at 5M, both modes): full <= 1.0x the "
        "original single pass, windowed <= 0.2x the original, <= 4x the floor;\nsingle-pass full wall "
        "<= 1.2x the original; +1h and late hour <= 15% of full (models) and <= 25% (wall); start-up <= 1.0 s"
    )


def plot(rows: list[dict], path: Path) -> None:
    """Seconds against events, one panel per mode: the models' full build, +1 hour and late hour
    builds, the original job and the floor (medians as the table has them); peak memory on the right
    axis of each panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    figure, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    series = (
        ("full_models_s", "full build (models)", "-o"),
        ("hour_models_s", "+1 hour (models)", "-s"),
        ("late_models_s", "late hour (models)", "-^"),
        ("original_s", "original job", "--x"),
        ("floor_s", "floor (one scan)", ":."),
    )
    for axis, mode in zip(axes[0], modes, strict=True):
        points = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["events"])
        events = [r["events"] / 1e6 for r in points]
        for key, label, style in series:
            axis.plot(events, [r[key] for r in points], style, label=label)
        axis.set_title(mode.replace("_", " "))
        axis.set_xlabel("events (millions)")
        axis.set_ylabel("seconds (log scale)")
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
        memory = axis.twinx()
        memory.plot(events, [r.get("full_peak_mib", 0) for r in points], "-", color="grey", alpha=0.4)
        memory.set_ylabel("peak memory of the full build (MiB, grey)")
        axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    print(f"plot written to {path}")


if __name__ == "__main__":
    raise SystemExit(main())
