"""Benchmark of `runner apply`: persons per second with backups, outbox and Kafka, and peak memory, at
several sizes, beside a per-person baseline (the original job's approach) measured in the same run.

    .venv/bin/python bench/bench_apply.py                      # 10k, 100k and 1M persons
    .venv/bin/python bench/bench_apply.py --sizes 10k,100k --repeat 3

It starts its own local stack (`runner stack up` in a state directory of its own; stopped at the end
unless --keep-stack), generates PostHog-shaped persons with a fixed layout, and for every size and
repeat: resets Postgres, runs `runner apply` as a child process (wall time and the RSS high-water mark
of that process, from wait4), then runs the baseline as a child process over its own team.

Data per person: 10 properties (~350 bytes of JSON); the diff sets 2 keys, sets one absent key once
and unsets one key. One person in 50 has moved on in Postgres since the diff (three-way merge against
ClickHouse history), one in 200 is missing in Postgres (not_found).

The baseline is a faithful re-implementation of the original's per-person loop (R9.2): read the row,
merge in Python, insert the backup row, `UPDATE ... WHERE version = target`, commit every 100 persons,
then produce that batch to Kafka and flush. It runs over `--baseline-persons` persons (its rate does
not depend on the total), with the same merge code and connection settings as apply.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))
sys.path.insert(0, str(PROJECT / "tests" / "integration" / "apply"))

TEAMS = 10
BASELINE_TEAM = 999
UUID_PREFIX = "00000000-0000-4000-8000-"


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([kKmM]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    return int(match.group(1)) * {"": 1, "k": 1000, "m": 1_000_000}[match.group(2).lower()]


# --- ClickHouse data (run in a child process: chDB allows one process per engine path) -------------


def seed_clickhouse(persons: int, baseline_persons: int) -> None:
    from apply_support import ensure_tables

    from runner.stores import warehouse

    client = warehouse.client()
    ensure_tables(client)
    for table in ("recon.person_property_diff", "recon.person_property_diff_summary", "posthog.person"):
        client.command(f"TRUNCATE TABLE {table}")
    uuid_sql = f"toUUID(concat('{UUID_PREFIX}', leftPad(lower(hex(n)), 12, '0')))"
    props_sql = (
        'concat(\'{"plan": "free", "email": "user\', toString(n), \'@example.com", "legacy": "x", '
        '"count": \', toString(n), \', "tags": ["a", "b"], "country": "FR", "$browser": "Chrome", '
        '"utm_source": "newsletter", "score": 0.5, "name": "Person \', toString(n), \'"}\')'
    )
    # Persons 1..N in teams 1..TEAMS; the baseline's persons after them, in their own team.
    ranges = [
        (1, persons, f"toInt64(n % {TEAMS} + 1)"),
        (persons + 1, persons + baseline_persons, str(BASELINE_TEAM)),
    ]
    for first, last, team_sql in ranges:
        if last < first:
            continue
        numbers = f"(SELECT number + {first} AS n FROM numbers({last - first + 1}))"
        client.command(
            f"""
            INSERT INTO posthog.person
                (id, created_at, team_id, properties, is_identified, is_deleted, version)
            SELECT {uuid_sql}, toDateTime64('2025-11-03 10:20:30.123', 3), {team_sql}, {props_sql}, 1, 0, 3
            FROM {numbers}
            """
        )
        client.command(
            f"""
            INSERT INTO recon.person_property_diff
            SELECT {team_sql} AS team_id,
                   toUInt32(intDiv(intDiv(n - {first}, {TEAMS if first == 1 else 1}), 10000)) AS batch_index,
                   {uuid_sql} AS person_id, 3 AS baseline_version,
                   ['plan', 'count'], ['"paid"', toString(n + 1)],
                   [toDateTime64('2026-01-07 09:00:00', 6, 'UTC'),
                    toDateTime64('2026-01-07 09:30:00.5', 6, 'UTC')],
                   ['source'], ['"ads"'], [toDateTime64('2026-01-06 21:00:00', 6, 'UTC')],
                   ['legacy'], [toDateTime64('2026-01-07 10:00:00', 6, 'UTC')],
                   'single_pass', toDateTime64('2026-01-06 20:01:00', 6, 'UTC'),
                   toDateTime64('2026-01-07 14:52:00', 6, 'UTC'), now64(6), 'bench'
            FROM {numbers}
            """
        )
    client.command(
        f"""
        INSERT INTO recon.person_property_diff_summary
        SELECT team_id, 'single_pass', toDateTime64('2026-01-06 20:01:00', 6, 'UTC'),
               toDateTime64('2026-01-07 14:52:00', 6, 'UTC'), 0, 0, 0, count(), count(),
               toUInt32(max(batch_index) + 1), now64(6), 'bench'
        FROM recon.person_property_diff WHERE team_id != {BASELINE_TEAM} GROUP BY team_id
        """
    )


# --- Postgres data ---------------------------------------------------------------------------------


def reset_postgres(pg_url: str, persons: int, baseline_persons: int) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "TRUNCATE posthog_person, posthog_person_reconciliation_backup, recon_outbox, "
            "recon_outbox_batch, recon_run_team, recon_run RESTART IDENTITY"
        )
        conn.execute("SET synchronous_commit = off")
        conn.execute(
            f"""
            INSERT INTO posthog_person (created_at, properties_last_updated_at, properties_last_operation,
                                        properties, is_identified, uuid, team_id, version)
            SELECT '2025-11-03 10:20:30.123+00', '{{}}'::jsonb, NULL,
                   jsonb_build_object('plan', 'free', 'email', 'user' || n || '@example.com',
                                      'legacy', CASE WHEN n %% 50 = 0 THEN 'y' ELSE 'x' END,
                                      'count', n, 'tags', jsonb_build_array('a', 'b'), 'country', 'FR',
                                      '$browser', 'Chrome', 'utm_source', 'newsletter', 'score', 0.5,
                                      'name', 'Person ' || n),
                   true, ('{UUID_PREFIX}' || lpad(to_hex(n), 12, '0'))::uuid,
                   CASE WHEN n <= %(persons)s THEN n %% {TEAMS} + 1 ELSE {BASELINE_TEAM} END,
                   CASE WHEN n %% 50 = 0 AND n <= %(persons)s THEN 4 ELSE 3 END
            FROM generate_series(1, %(total)s) AS n
            WHERE n %% 200 != 0 OR n > %(persons)s
            """,
            {"persons": persons, "total": persons + baseline_persons},
        )
        # As a live table is: hint bits set, visibility map up to date, no autovacuum due mid-run.
        conn.execute("VACUUM ANALYZE posthog_person")


# --- the baseline (child process) ------------------------------------------------------------------


def run_baseline(topic: str) -> None:
    """The original's per-person loop over the baseline team; prints {"persons", "seconds"}."""
    import psycopg
    from confluent_kafka import Producer

    from runner.config import settings
    from runner.rules.merge import kafka_created_at, kafka_message, pending_operations_json, simple_merge
    from runner.stores import diffs, warehouse

    client = warehouse.client()
    pg_url = settings.persons_db_url()
    bootstrap = settings.kafka_bootstrap()
    assert pg_url and bootstrap
    producer = Producer({"bootstrap.servers": bootstrap, "log_level": 3})
    job_id = f"baseline-{uuid.uuid4()}"
    started = time.monotonic()
    # The original holds the team's diffs in memory as one list.
    team_diffs = list(diffs.iter_team_diffs(client, "recon", BASELINE_TEAM, 1_000_000_000))
    with psycopg.connect(pg_url) as conn:
        for name, value in (
            ("lock_timeout", "5s"),
            ("statement_timeout", "30min"),
            ("synchronous_commit", "off"),
        ):
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        batch: list[tuple[str, str]] = []
        for i, diff in enumerate(team_diffs, 1):
            row = conn.execute(
                "SELECT id, uuid, properties, properties_last_updated_at, properties_last_operation, "
                "version, "
                "is_identified, created_at FROM posthog_person WHERE team_id = %s AND uuid = %s",
                (BASELINE_TEAM, diff.person_uuid),
            ).fetchone()
            if row is not None:
                pid, puuid, props, updated, ops, version, identified, created = row
                merged = simple_merge(props, diff)
                updated_after, ops_after = merged.apply_metadata(updated, ops)
                target = version or 0
                props_json = json.dumps(merged.properties)
                conn.execute(
                    """
                    INSERT INTO posthog_person_reconciliation_backup (job_id, team_id, person_id, uuid,
                        properties, properties_last_updated_at, properties_last_operation, version,
                        is_identified, created_at,
                        is_user_id, pending_operations, properties_after, properties_last_updated_at_after,
                        properties_last_operation_after, version_after)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s, %s, %s, %s, %s)
                    ON CONFLICT (job_id, team_id, person_id) DO NOTHING
                    """,
                    (
                        job_id,
                        BASELINE_TEAM,
                        pid,
                        puuid,
                        json.dumps(props),
                        json.dumps(updated),
                        json.dumps(ops),
                        version,
                        identified,
                        created,
                        pending_operations_json(diff),
                        props_json,
                        json.dumps(updated_after),
                        json.dumps(ops_after),
                        target + 1,
                    ),
                )
                cur = conn.execute(
                    "UPDATE posthog_person SET properties = %s, properties_last_updated_at = %s, "
                    "properties_last_operation = %s, version = %s "
                    "WHERE team_id = %s AND uuid = %s AND version = %s",
                    (
                        props_json,
                        json.dumps(updated_after),
                        json.dumps(ops_after),
                        target + 1,
                        BASELINE_TEAM,
                        puuid,
                        target,
                    ),
                )
                if cur.rowcount == 1:
                    message = kafka_message(
                        puuid, BASELINE_TEAM, props_json, identified, kafka_created_at(created), target + 1
                    )
                    batch.append((str(puuid), message))
            if i % 100 == 0 or i == len(team_diffs):
                conn.commit()
                for _key, payload in batch:  # the original sends no message key
                    producer.produce(topic, value=payload.encode())
                producer.flush()
                batch = []
    print(json.dumps({"persons": len(team_diffs), "seconds": time.monotonic() - started}))


# --- the driver ------------------------------------------------------------------------------------


@dataclass
class Measured:
    seconds: float  # wall time
    rss_mib: int  # the child's own RSS high-water mark
    cpu: float  # the child's user + system CPU seconds
    postgres_cpu: float  # CPU seconds of the Postgres cluster meanwhile (backends included)
    broker_cpu: float  # CPU seconds of the Kafka broker meanwhile
    stdout: str
    stderr: str = ""


def _cpu_seconds(pid: int, children: bool = False) -> float:
    """utime + stime of a process (+ of its reaped children), from /proc; 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def _tree_cpu(root: int) -> float:
    """A server's CPU: its own, its reaped children's (exited backends) and its live children's."""
    total = _cpu_seconds(root, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == root:
                total += _cpu_seconds(int(entry.name))
    return total


def run_child(args: list[str], env: dict[str, str], servers: dict[str, int] | None = None) -> Measured:
    """Run a child to its end; its wall time, RSS high-water mark and CPU come from wait4."""
    servers = servers or {}
    before = {name: _tree_cpu(pid) for name, pid in servers.items()}
    started = time.monotonic()
    out_path = Path(env["RECON_STATE_DIR"]) / f"child-{uuid.uuid4().hex}"
    with open(f"{out_path}.out", "w") as out_file, open(f"{out_path}.err", "w") as err_file:
        proc = subprocess.Popen(args, env=env, cwd=PROJECT, stdout=out_file, stderr=err_file)
        _pid, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    after = {name: _tree_cpu(pid) for name, pid in servers.items()}
    out = Path(f"{out_path}.out").read_text()
    err = Path(f"{out_path}.err").read_text()
    Path(f"{out_path}.out").unlink()
    Path(f"{out_path}.err").unlink()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(
            f"{' '.join(args[-8:])} failed ({os.waitstatus_to_exitcode(status)}):\n{err[-3000:]}"
        )
    return Measured(
        seconds,
        usage.ru_maxrss // 1024,
        usage.ru_utime + usage.ru_stime,
        after.get("postgres", 0.0) - before.get("postgres", 0.0),
        after.get("kafka", 0.0) - before.get("kafka", 0.0),
        out,
        err,
    )


# The engine's stages (runner.engine.stages) in the order the split is printed; `run` is the whole run.
SHOWN_STAGES = (
    "fetch",
    "set_write",
    "lock",
    "prefetch",
    "decide",
    "results",
    "write",
    "commit",
    "publish",
    "wait_fetch",
    "wait_write",
    "wait_publish",
    "retry",
)


def parse_stages(stderr: str) -> dict[str, tuple[float, float]]:
    """The per-stage split runner apply logs at the end of the run (INFO): {stage: (wall s, CPU s)}."""
    match = re.search(r"stages \(wall/thread CPU seconds[^)]*\): (.*)", stderr)
    if match is None:
        return {}
    return {
        name: (float(wall), float(cpu))
        for name, wall, cpu in re.findall(r"(\w+) ([\d.]+)/([\d.]+)", match.group(1))
    }


def stage_table(stages: dict[str, tuple[float, float]], wall: float) -> list[str]:
    """Lines of the per-stage split: wall seconds, share of the run's wall time, thread CPU seconds."""
    lines = [f"    {'stage':<13} {'wall s':>8} {'share':>6} {'CPU s':>8}"]
    for name in SHOWN_STAGES:
        if name in stages:
            seconds, cpu = stages[name]
            lines.append(f"    {name:<13} {seconds:>8.2f} {seconds / wall:>6.0%} {cpu:>8.2f}")
    if "run" in stages:
        seconds, cpu = stages["run"]
        lines.append(f"    {'run (engine)':<13} {seconds:>8.2f} {seconds / wall:>6.0%} {cpu:>8.2f}")
    return lines


def create_topic(bootstrap: str, name: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    admin.create_topics([NewTopic(name, 3, 1)])[name].result()


def delete_topic(bootstrap: str, name: str) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    try:
        admin.delete_topics([name])[name].result()
    except Exception:  # noqa: BLE001 - only frees the broker's memory
        pass


def check_applied(pg_url: str, persons: int) -> dict[str, int]:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        updated, published = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE published_at IS NOT NULL) FROM recon_outbox_status "
            "WHERE job_id LIKE 'bench-%%'"
        ).fetchone()
        backups = conn.execute("SELECT count(*) FROM posthog_person_reconciliation_backup").fetchone()[0]
    expected = persons - persons // 200
    if not (updated == published == expected and backups >= expected):
        raise RuntimeError(f"apply incomplete: {updated} updated, {published} published, {expected} expected")
    return {"updated": updated, "published": published}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10k,100k,1M", help="comma-separated person counts (k/M suffixes)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size (medians are reported)")
    parser.add_argument("--batch-size", type=int, default=1000, help="runner apply --batch-size")
    parser.add_argument("--page-size", type=int, default=10_000, help="runner apply --page-size")
    parser.add_argument("--baseline-persons", type=parse_size, default=parse_size("5k"))
    parser.add_argument("--state-dir", type=Path, default=PROJECT / ".recon" / "bench")
    parser.add_argument("--keep-stack", action="store_true")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    parser.add_argument("_mode", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._mode:
        mode, *rest = args._mode
        if mode == "seed":
            seed_clickhouse(int(rest[0]), int(rest[1]))
        elif mode == "baseline":
            run_baseline(rest[0])
        return

    from runner.local import stack

    sizes = [parse_size(s) for s in args.sizes.split(",")]
    state = args.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    info = stack.up(state)
    pg_url, bootstrap = info["postgres"]["url"], info["kafka"]["bootstrap_servers"]
    servers = {"postgres": int(info["postgres"]["pid"]), "kafka": int(info["kafka"]["pid"])}
    # The children find the bench's stack through its state directory (recon never mixes production
    # settings with the local stack, so none of them may be set).
    base_env = {**os.environ, "RECON_STATE_DIR": str(state), "PYTHONPATH": str(PROJECT)}
    for name in ("RECON_FAULT", "PERSONS_DB_WRITER_URL", "KAFKA_BOOTSTRAP_SERVERS", "RECON_CLICKHOUSE_URL"):
        base_env.pop(name, None)
    me = [sys.executable, str(Path(__file__).resolve())]
    runner_cmd = [sys.executable, "-c", "from runner.cli import main; main()"]
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    results = []
    try:
        for size in sizes:
            env = {**base_env, "RECON_CHDB_PATH": str(state / f"clickhouse-{size}")}
            seeded = run_child([*me, "seed", str(size), str(args.baseline_persons)], env)
            print(f"\n== {size:,} persons (ClickHouse seeded in {seeded.seconds:.1f}s)", flush=True)
            runs, baselines = [], []
            for r in range(args.repeat):
                reset_postgres(pg_url, size, args.baseline_persons)
                topic = f"bench_person_{uuid.uuid4().hex[:8]}"
                create_topic(bootstrap, topic)
                run_env = {**env, "KAFKA_PERSON_TOPIC": topic}
                applied = run_child(
                    [
                        *runner_cmd,
                        "--log-level",
                        "INFO",  # a line per batch and team, and the per-stage split at the end
                        "apply",
                        "--job-id",
                        f"bench-{size}-{r}",
                        "--batch-size",
                        str(args.batch_size),
                        "--page-size",
                        str(args.page_size),
                    ],
                    run_env,
                    servers,
                )
                check_applied(pg_url, size)
                baseline = run_child([*me, "baseline", topic], run_env, servers)
                base = json.loads(baseline.stdout)
                delete_topic(bootstrap, topic)
                runs.append(applied)
                baselines.append((base["persons"] / base["seconds"], baseline, base["persons"]))
                print(
                    f"  run {r + 1}: apply {applied.seconds:.1f}s = {size / applied.seconds:,.0f} persons/s, "
                    f"peak RSS {applied.rss_mib} MiB, CPU per person: "
                    f"runner {applied.cpu / size * 1e6:.0f} us, "
                    f"Postgres {applied.postgres_cpu / size * 1e6:.0f} us, "
                    f"broker {applied.broker_cpu / size * 1e6:.0f} us;"
                    f" baseline {baselines[-1][0]:,.0f} persons/s (load {os.getloadavg()[0]:.1f})",
                    flush=True,
                )
                for line in stage_table(parse_stages(applied.stderr), applied.seconds):
                    print(line, flush=True)
            median = statistics.median
            rate = median([size / m.seconds for m in runs])
            base_rate = median([b[0] for b in baselines])
            results.append(
                {
                    "persons": size,
                    "apply_persons_per_s": rate,
                    "apply_peak_rss_mib": median([m.rss_mib for m in runs]),
                    "apply_cpu_us_per_person": median([m.cpu / size * 1e6 for m in runs]),
                    "postgres_cpu_us_per_person": median([m.postgres_cpu / size * 1e6 for m in runs]),
                    "broker_cpu_us_per_person": median([m.broker_cpu / size * 1e6 for m in runs]),
                    "baseline_persons_per_s": base_rate,
                    "baseline_cpu_us_per_person": median([b[1].cpu / b[2] * 1e6 for b in baselines]),
                    "baseline_postgres_cpu_us_per_person": median(
                        [b[1].postgres_cpu / b[2] * 1e6 for b in baselines]
                    ),
                    "ratio": rate / base_rate,
                    # Per stage: medians of (wall s, thread CPU s) over the runs (runner.engine.stages).
                    "stages": _median_stages([parse_stages(m.stderr) for m in runs]),
                    "wall_seconds": median([m.seconds for m in runs]),
                }
            )
    finally:
        if not args.keep_stack:
            stack.down(state, purge=True)

    print(
        f"\nrunner apply --batch-size {args.batch_size} --page-size {args.page_size} "
        "(backup, outbox, Kafka); "
        f"medians of {args.repeat} runs; baseline over {args.baseline_persons:,} persons; "
        f"CPU in microseconds per person (runner process / Postgres / Kafka broker)"
    )
    print(
        f"{'persons':>10}  {'apply/s':>9}  {'peak RSS':>9}  {'CPU runner/PG/broker':>21}  "
        f"{'baseline/s':>10}  {'baseline CPU':>13}  {'ratio':>6}"
    )
    for res in results:
        cpu = (
            f"{res['apply_cpu_us_per_person']:.0f}/{res['postgres_cpu_us_per_person']:.0f}/"
            f"{res['broker_cpu_us_per_person']:.0f}"
        )
        base_cpu = f"{res['baseline_cpu_us_per_person']:.0f}/{res['baseline_postgres_cpu_us_per_person']:.0f}"
        print(
            f"{res['persons']:>10,}  {res['apply_persons_per_s']:>9,.0f}  "
            f"{res['apply_peak_rss_mib']:>5.0f} MiB  "
            f"{cpu:>21}  {res['baseline_persons_per_s']:>10,.0f}  {base_cpu:>13}  {res['ratio']:>5.1f}x"
        )
    for res in results:
        print(
            f"\nwhere the time goes at {res['persons']:,} persons (medians; wall {res['wall_seconds']:.1f}s; "
            "stages of different threads overlap, share = stage wall / run wall):"
        )
        for line in stage_table(res["stages"], res["wall_seconds"]):
            print(line)
    if args.json:
        print(json.dumps(results))


def _median_stages(runs: list[dict[str, tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    names = {name for stages in runs for name in stages}
    return {
        name: (
            statistics.median([s[name][0] for s in runs if name in s]),
            statistics.median([s[name][1] for s in runs if name in s]),
        )
        for name in names
    }


if __name__ == "__main__":
    main()
