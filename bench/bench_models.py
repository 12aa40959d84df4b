"""Benchmark of the dbt models: `dbt run` per mode against the floor, and an incremental re-run.

    .venv/bin/python bench/bench_models.py --sizes 1000000,5000000 --repeats 3

For each size it seeds PostHog-shaped data with `runner.local.seed` (fixed seed; 10 teams, one person per 20
events, five days of events, the default bug window), then for each mode (single pass and windowed
with one-hour windows) and each repeat:

1. drops the models and times a full `dbt run` (events from bug_window_start to the end of the data);
2. appends one more hour of events (a copy of the last hour, one hour later, with new uuids) and times
   the incremental `dbt run` up to the end of that hour;
3. deletes the appended hour again.

The floor is one scan of the same events extracting `$set`, `$set_once` and `$unset` (with the same
cheap substring test the models use before parsing JSON; the plain three-JSONExtractRaw scan is
printed too). Every figure is a median over the repeats. Two times are given per run: the wall time of
the in-process `dbt run` (including dbt's start-up and project parsing, about 3-4 s on this machine
whatever the data size) and the models' own time (the sum of dbt's per-model execution times).

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
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    workdir = Path(args.chdb_path or tempfile.mkdtemp(prefix="recon-bench-"))
    os.environ["RECON_CHDB_PATH"] = str(workdir / "clickhouse" if not args.chdb_path else workdir)
    os.environ["RECON_TARGET_SCHEMA"] = SCHEMA
    os.environ.setdefault("RECON_PROJECT_DIR", str(PROJECT))
    sys.path.insert(0, str(PROJECT))

    from runner import warehouse
    from runner.local import seed as seed_module

    client = warehouse.client()
    target_path = workdir / "dbt-target"
    # load dbt, the adapter and the project once, so that the first timed run does not pay for it
    from runner.dbt_cli import run_dbt

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
            figures = bench_mode(client, config, end, MODES[mode], args.repeats, target_path)
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
    from runner.dbt_cli import run_dbt

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


def append_hour(client: Any, end: datetime) -> int:
    last = f"toDateTime64('{end:%Y-%m-%d %H:%M:%S}', 6, 'UTC')"
    client.command(
        f"INSERT INTO {SOURCE_DB}.events "
        "(uuid, event, properties, timestamp, team_id, distinct_id, person_id, _timestamp) "
        "SELECT generateUUIDv4(rowNumberInAllBlocks()), event, properties, timestamp + INTERVAL 1 HOUR, "
        f"team_id, distinct_id, person_id, _timestamp FROM {SOURCE_DB}.events "
        f"WHERE timestamp >= {last} - INTERVAL 1 HOUR AND timestamp < {last}"
    )
    return client.query(f"SELECT count() FROM {SOURCE_DB}.events WHERE timestamp >= {last}").result_rows[0][0]


def remove_appended(client: Any, end: datetime) -> None:
    client.command(
        f"ALTER TABLE {SOURCE_DB}.events "
        f"DELETE WHERE timestamp >= toDateTime64('{end:%Y-%m-%d %H:%M:%S}', 6, 'UTC') "
        "SETTINGS mutations_sync = 2"
    )


def bench_mode(
    client: Any, config: Any, end: datetime, window_seconds: int, repeats: int, target_path: Path
) -> dict:
    """Per repeat: the floor, a full build, one more hour of events, the incremental build.

    The floor is measured inside each repeat, next to the runs it is compared with, and the ratios are
    taken per repeat before the median: the machine's load then affects both sides alike.
    """
    base = {
        "bug_window_start": config.bug_window_start,
        "bug_window_end": config.bug_window_end,
        "window_seconds": window_seconds,
    }
    series: dict[str, list[float]] = {
        name: []
        for name in (
            "floor_s",
            "naive_floor_s",
            "full_wall_s",
            "full_models_s",
            "incremental_wall_s",
            "incremental_models_s",
            "full_wall_over_floor",
            "full_models_over_floor",
            "incremental_wall_over_full_wall",
            "incremental_models_over_full_models",
        )
    }
    per_model_full: dict[str, list[float]] = {}
    per_model_incr: dict[str, list[float]] = {}
    appended = 0
    for _ in range(repeats):
        floor, naive_floor = measure_floors(client, config.bug_window_start, end.strftime(TIME_FORMAT))
        drop_models(client)
        full_wall, full_models, per_model = dbt_run({**base, "now": end.strftime(TIME_FORMAT)}, target_path)
        for name, seconds in per_model.items():
            per_model_full.setdefault(name, []).append(seconds)
        appended = append_hour(client, end)
        try:
            later = (end + timedelta(hours=1)).strftime(TIME_FORMAT)
            incr_wall, incr_models, per_model = dbt_run({**base, "now": later}, target_path)
            for name, seconds in per_model.items():
                per_model_incr.setdefault(name, []).append(seconds)
        finally:
            remove_appended(client, end)
        for name, value in (
            ("floor_s", floor),
            ("naive_floor_s", naive_floor),
            ("full_wall_s", full_wall),
            ("full_models_s", full_models),
            ("incremental_wall_s", incr_wall),
            ("incremental_models_s", incr_models),
            ("full_wall_over_floor", full_wall / floor),
            ("full_models_over_floor", full_models / floor),
            ("incremental_wall_over_full_wall", incr_wall / full_wall),
            ("incremental_models_over_full_models", incr_models / full_models),
        ):
            series[name].append(value)
    return {
        **{name: statistics.median(values) for name, values in series.items()},
        "appended_events": appended,
        "full_per_model_s": {k: round(statistics.median(v), 3) for k, v in per_model_full.items()},
        "incremental_per_model_s": {k: round(statistics.median(v), 3) for k, v in per_model_incr.items()},
    }


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
        f"   {row['mode']:<11} full {row['full_wall_s']:6.2f}s wall / {row['full_models_s']:6.2f}s models; "
        f"floor {row['floor_s']:.2f}s (naive {row['naive_floor_s']:.2f}s); "
        f"+1h incremental {row['incremental_wall_s']:6.2f}s wall / "
        f"{row['incremental_models_s']:6.2f}s models",
        flush=True,
    )
    print(f"     full per model: {row['full_per_model_s']}", flush=True)
    print(f"     incremental per model: {row['incremental_per_model_s']}", flush=True)


def print_table(results: list[dict]) -> None:
    header = (
        f"\n{'events':>10} {'mode':<11} {'read':>9} {'floor':>7} {'full wall':>10} {'full models':>11} "
        f"{'wall/floor':>10} {'models/floor':>12} {'+1h wall':>9} {'+1h models':>10} {'+1h/full wall':>13} "
        f"{'+1h/full models':>15}"
    )
    print(header)
    for r in results:
        print(
            f"{r['events']:>10,} {r['mode']:<11} {r['events_read']:>9,} {r['floor_s']:>6.2f}s "
            f"{r['full_wall_s']:>9.2f}s {r['full_models_s']:>10.2f}s "
            f"{r['full_wall_over_floor']:>9.1f}x {r['full_models_over_floor']:>11.1f}x "
            f"{r['incremental_wall_s']:>8.2f}s {r['incremental_models_s']:>9.2f}s "
            f"{100 * r['incremental_wall_over_full_wall']:>12.0f}% "
            f"{100 * r['incremental_models_over_full_models']:>14.0f}%"
        )
    print("\ngoals: full run <= 2x the floor; incremental run of one new hour <= 10% of the full run")


if __name__ == "__main__":
    raise SystemExit(main())
