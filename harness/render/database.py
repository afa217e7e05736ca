"""The Region database's read replica: a streaming standby of the postgres primary.

The reference design keeps one postgres primary in the Region and one
streaming read replica in another AZ of it. Both run the same image
(`hashicorpdemoapp/product-api-db`, i.e. the official ``postgres`` image plus
HashiCups' seed script): a physical replica needs the primary's exact major
version and binaries.

How the real image is made a standby (the official image has no replica mode
of its own; this is the usual way with it):

1. The container's command is `STANDBY_SCRIPT`. While ``$PGDATA`` holds no
   cluster yet, it clones the primary with ``pg_basebackup --wal-method=stream
   --write-recovery-conf``, retrying every second until the primary answers
   (a pod started before its primary, or while it is down). ``-R`` writes the
   standby configuration (``standby.signal`` and ``primary_conninfo`` from
   PostgreSQL 12 on, ``recovery.conf`` on the image's 11.6), so the server
   starts as a hot standby, read-only, and streams the primary's WAL.
2. It then ``exec``s the image's own ``docker-entrypoint.sh postgres`` with the
   container's args (`server_args`: ``max_connections`` at least the primary's), which
   skips initdb and the seed (``$PGDATA`` is no longer empty), gives the data
   directory to the ``postgres`` user and runs the server as that user.
3. The primary is reached *through the mesh*: ``PRIMARY_HOST:PRIMARY_PORT`` is
   the replica's own sidecar listener for its upstream ``postgres``
   (127.0.0.1:5432), so the WAL stream is a declared, intention-checked
   Region -> Region call (postgres-replica -> postgres), and the replica
   listens on its own port (``PGPORT``, 5433). On the primary the connection
   arrives from its sidecar on 127.0.0.1, which the image's initdb defaults
   already admit for replication (``host replication all 127.0.0.1/32``);
   ``wal_level=replica`` and ``max_wal_senders=10`` are PostgreSQL's defaults.

No automatic failover: nothing promotes the replica when the primary goes, and
product-api (v0.0.22, one ``db_connection``) reads and writes through the
primary only. The replica's consumers are read-only tools (reports,
backups, the harness's replication check); losing the primary's AZ is a single
point of failure the experiments declare (experiments/az-primary-loss.json).

The local backend recognises this command by `STANDBY_MARKER` and its
stand-in does the same with the same variables
(harness/backends/local/apps/postgres_standby.py).
"""

from __future__ import annotations

from typing import Any

from harness.render.naming import workloads
from harness.topology.model import Edition, Service, Topology

STANDBY_MARKER = "# edge-harness: postgres streaming standby (pg_basebackup -R, then the image's entrypoint)"

STANDBY_SCRIPT = f"""{STANDBY_MARKER}
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  mkdir -p "$PGDATA"
  until pg_basebackup --host="$PRIMARY_HOST" --port="$PRIMARY_PORT" --username="$POSTGRES_USER" \\
      --pgdata="$PGDATA" --wal-method=stream --write-recovery-conf --checkpoint=fast --no-password; do
    echo "standby: primary $PRIMARY_HOST:$PRIMARY_PORT not answering yet; retrying in 1 s" >&2
    find "$PGDATA" -mindepth 1 -delete
    sleep 1
  done
fi
exec docker-entrypoint.sh postgres "$@"
"""

STANDBY_COMMAND = ("/bin/bash", "-c", STANDBY_SCRIPT)
STANDBY_ARGV0 = "postgres-standby"  # the script's $0 (bash -c SCRIPT NAME ARGS...); ARGS go on to the server

# Connections a postgres allows: room for each pod that calls it. product-api (v0.0.22) keeps Go's
# database/sql defaults (no cap on open connections: each query in flight beyond two idle ones dials its own),
# so the image's default of 100 is a limit its callers can pass together under a burst: on the local backend,
# with the stand-in given the image's pool, after an AZ node's restore two product-apis held 88 and 81 and all
# of them 236 at once, and every product-api answered 500 ("sorry, too many clients already") for ~3 s. A
# platform sizes the database for its callers; the renderer does it from the topology (docs/local-emulation.md).
CONNECTIONS_PER_CALLER_POD = 64
RESERVED_CONNECTIONS = 10  # the tools' own (psql, the harness's replication check) and superuser_reserved's 3
DEFAULT_MAX_CONNECTIONS = 100  # the image's (PostgreSQL's) default: never rendered lower


def max_connections(t: Topology, db: Service) -> int:
    """`max_connections` for the database `db` and, when it is a read replica, for its primary's value: a hot
    standby refuses to start with fewer than its primary allows ("insufficient parameter settings")."""
    primary = t.service(db.replica_of) if db.replica_of is not None else db
    pods = sum(_pods(t, s) for s in t.services if primary.name in s.upstreams and s.replica_of is None)
    return max(DEFAULT_MAX_CONNECTIONS, CONNECTIONS_PER_CALLER_POD * pods + RESERVED_CONNECTIONS)


def _pods(t: Topology, svc: Service) -> int:
    """The pods of `svc` over the whole cluster: its Deployments' replicas (the edition changes names only)."""
    return sum(w.replicas for w in workloads(t, Edition.CE) if w.service.name == svc.name)


def server_args(t: Topology, db: Service) -> list[str]:
    """The options the image's entrypoint passes on to `postgres` (a first argument starting with "-")."""
    return ["-c", f"max_connections={max_connections(t, db)}"]


# Loopback, not "localhost": the sidecar's upstream listener is IPv4 only.
PRIMARY_HOST = "127.0.0.1"
STANDBY_STARTUP_FAILURES = 120  # pg_basebackup of the seeded primary, retried until it answers


def standby_env(t: Topology, svc: Service, base: dict[str, str]) -> dict[str, str]:
    """Environment of the replica container: the image's own variables plus the standby's."""
    assert svc.replica_of is not None
    primary = t.service(svc.replica_of)
    return {
        **base,
        "PGPORT": str(svc.container_port),
        "PGPASSWORD": base["POSTGRES_PASSWORD"],  # libpq: pg_basebackup and the WAL receiver
        "PRIMARY_HOST": PRIMARY_HOST,
        "PRIMARY_PORT": str(primary.container_port),
    }


def standby_container(t: Topology, svc: Service, main: dict[str, Any], base_env: dict[str, str]) -> None:
    """Turn the postgres container `main` into the replica's: command and environment."""
    main["command"] = list(STANDBY_COMMAND)
    main["args"] = [STANDBY_ARGV0, *server_args(t, svc)]
    main["env"] = [{"name": k, "value": v} for k, v in standby_env(t, svc, base_env).items()]
