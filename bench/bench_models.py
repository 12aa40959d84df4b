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
dbt's per-model execution times; dbt's fixed start-up (wall time minus model time, about 1.5-3 s
here whatever the size) is reported apart.

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
        help="repeats that also time the original job's approach (slow in windowed mode)",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    workdir = Path(args.chdb_path or tempfile.mkdtemp(prefix="recon-bench-"))
    os.environ["RECON_CHDB_PATH"] = str(workdir / "clickhouse" if not args.chdb_path else workdir)
    os.environ["RECON_TARGET_SCHEMA"] = SCHEMA
    os.environ.setdefault("RECON_PROJECT_DIR", str(PROJECT))
    sys.path.insert(0, str(PROJECT))

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
    if not args.chdb_path:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def dbt_run(dbt_vars: dict[str, Any], target_path: Path) -> tuple[float, float, dict[str, float]]:
    """In-process `dbt run`: (wall seconds, models' seconds, per-model seconds)."""
    from runner.jobs.dbt import run_dbt

    started = time.perf_counter()
    result = run_dbt(
        "run", {"source_database": SOURCE_DB, **dbt_vars}, ["--target-path", str(target_path), "-q"]
    )
    wall = time.perf_counter() - started
    per_model = {
        r.node.name: float(r.execution_time) for r in result.results if r.node.resource_type == "model"
    }
    return wall, sum(per_model.values()), per_model


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
    appended = late = 0
    original = None
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
        full_wall, full_models, models = dbt_run({**base, "now": end_text}, target_path)
        record(per_model["full"], models)
        appended = append_hour(client, end)
        hour_wall, hour_models, models = dbt_run({**base, "now": later}, target_path)
        record(per_model["hour"], models)
        late = append_late_hour(client, config, end)
        late_wall, late_models, models = dbt_run({**base, "now": later}, target_path)
        record(per_model["late"], models)
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
        "appended_events": appended,
        "late_events": late,
        **{
            f"{run}_per_model_s": {k: round(statistics.median(v), 3) for k, v in seconds.items()}
            for run, seconds in per_model.items()
        },
    }


def record(into: dict[str, list[float]], models: dict[str, float]) -> None:
    for name, seconds in models.items():
        into.setdefault(name, []).append(seconds)


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
    for run in ("full", "hour", "late"):
        print(f"     {run} per model: {row[f'{run}_per_model_s']}", flush=True)


def print_table(results: list[dict]) -> None:
    print(
        f"\n{'events':>10} {'mode':<11} {'floor':>7} {'original':>9} {'full':>7} {'startup':>8} "
        f"{'full/floor':>10} {'full/orig':>9} {'+1h/full':>8} {'late/full':>9}"
    )
    for r in results:
        print(
            f"{r['events']:>10,} {r['mode']:<11} {r['floor_s']:>6.2f}s {r['original_s']:>8.2f}s "
            f"{r['full_models_s']:>6.2f}s {r['startup_s']:>7.2f}s {r['full_models_over_floor']:>9.1f}x "
            f"{r['full_models_over_original']:>8.2f}x {100 * r['hour_models_over_full_models']:>7.0f}% "
            f"{100 * r['late_models_over_full_models']:>8.0f}%"
        )
    print(
        "\nfull, +1h and late are the models' own time (sum of dbt's per-model times); dbt's fixed start-up "
        "(wall minus models) is apart.\ngoals: full <= 2x floor and faster than the original; +1h and a late "
        "hour <= 10% of full at 5M events"
    )


if __name__ == "__main__":
    raise SystemExit(main())
