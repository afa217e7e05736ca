"""The run directory: its file names, the records' column types, and how they are read.

docs/CONTRACTS.md section 4 describes the records in prose; this module is the
same contract for code. Observe writes hops from access logs and the
inventory; verify and report read every file. All of them read JSON lines
with DuckDB through `load_jsonl`, so a file with millions of lines is never
looped over in Python -- unless it is corrupt.

Nothing recorded is dropped silently. A run killed mid-write leaves a torn
last line; a disk full or a crash can leave garbage anywhere. `load_jsonl`
skips such lines and returns them as `SkippedLine`s (file, line number,
reason), which the verifier puts into the verdict and the terminal. The
common case costs nothing extra: one strict DuckDB read, which raises on any
malformed line. Only the files that fail it are scanned line by line in
Python, which copies their good lines to a temporary file tagged with their
line numbers and names every bad one; DuckDB then reads the copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.contract.files import write_atomic

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

# Every file and directory name of a run directory (docs/CONTRACTS.md §4): the
# stage that writes one and the stages that read it import the name from here.
RUN_FILE = "run.json"
REQUESTS_FILE = "requests.jsonl"
ACCESSLOG_DIR = "accesslogs"
INVENTORY_FILE = "inventory.jsonl"
ENTRYPOINTS_FILE = "entrypoints.jsonl"
UPSTREAM_STATS_FILE = "upstream-stats.jsonl"
PREFLIGHT_FILE = "preflight.json"
HOPS_FILE = "hops.jsonl"  # an export (tests, people); the record is HOPS_PARQUET_FILE
HOPS_PARQUET_FILE = "hops.parquet"
CHAOS_FILE = "chaos.jsonl"
PLAN_FILE = "plan.json"
CHAOS_DIR = "chaos"  # chaos/<NN>-<stem>/ per experiment
JOURNAL_FILE = "journal.json"  # in each chaos/<NN>-<stem>/
EXPERIMENT_FILE = "experiment.json"  # in each chaos/<NN>-<stem>/
VERDICT_FILE = "verdict.json"
REPORT_FILE = "report.html"
JUNIT_FILE = "junit.xml"
ARTIFACTS_DIR = "artifacts"
MANIFESTS_DIR = "manifests"  # the rendered directory the run used
TOPOLOGY_FILE = "topology.yaml"  # in the rendered directory
HOPS_BUILD_FILE = "hops-build.json"  # what observe built hops.jsonl from (verify consumes hops.jsonl when current)
RECORDING_FILE = "recording.jsonl"  # what went wrong while recording (collector, flush, inventory, artifacts)
# how long a counter snapshot waits for one sidecar's admin: a pod with an access-log line that began this long
# after a snapshot started was up all through its read (the verifier's proof that a snapshot missed a live pod)
SNAPSHOT_ADMIN_TIMEOUT_S = 5.0
# the longest interval at which any backend's sidecars flush their access-log buffer (rendered Envoy: 1 s through
# --file-flush-interval-msec; local: 0.2 s): the lines a sidecar wrote in its last interval die with it when it is
# killed, and the verifier must not read their absence as a log that was lost
ACCESS_LOG_FLUSH_S = 1.0
HOST_FILE = "host.jsonl"  # the harness host's CPU while recording (harness.observe.host)
USERS_FILE = "users.json"  # what the users were configured with: their think time (harness.traffic.runner)
PROBE_BUDGET_FILE = "probe-budget.json"  # the zone probes' rate fitted to this machine (harness.traffic.budget)
CLOCK_FILE = "clock.jsonl"  # the runner's clock against the nodes' (harness.contract.clock), separate clocks only
COLLECTED_FILE = "collected.json"  # how far the access logs copied into the run reach (`collected_until`)
LINK_WATCH_FILE = "link-baseline.json"  # `harness chaos`'s answers to a degradation's question (contract.linkwatch)
LINK_ASK_FILE = "link-baseline-ask.json"  # ... and the chaos process's questions: zone -> token


class FaultKind(StrEnum):
    """chaos.jsonl's `kind`: the chaos actions write it and the verifier judges a fault by it (the one list)."""

    SERVICE_DOWN = "service-down"  # the listed services have no live instance left in the zone
    ZONE_DOWN = "zone-down"  # every node of the zone is down
    LINK_DEGRADED = "link-degraded"  # latency / loss on the zone's service link
    PARTITION = "partition"  # the zone is cut off from the Region


# recording steps (`harness.e2e.recording`) whose failure leaves the mesh's own records incomplete: the verdict
# fails what they may miss as unverified (coverage); the others (host load, artifacts) are notes
ACCESS_LOG_FLUSH = "access-log flush"
ACCESS_LOG_COLLECTOR = "access-log collector"
RECORD_FILES = "record files"
RECORD_STEPS = (ACCESS_LOG_FLUSH, ACCESS_LOG_COLLECTOR, RECORD_FILES)
# the clock probes (harness.traffic.clock): a note; what they failed to bound fails on its own (coverage, clock)
CLOCK_PROBES = "clock probes"
# a sidecar's container log the kubelet rotated (harness.backends.kube.logs): a note; a gap it cost fails on its own
LOG_ROTATION = "log rotation"


def record_problem(run_dir: Path, what: str, message: str) -> None:
    """Append one line to `recording.jsonl`: a recording step failed; the verifier reports it in the verdict's notes."""
    rec = {"ts": time.time(), "what": what, "message": message}
    with (run_dir / RECORDING_FILE).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec) + "\n")


def write_collected(path: Path, polled: float) -> None:
    """Record (atomically) that every access-log line its source had delivered by `polled` (this machine's clock,
    epoch seconds) is in the run directory: the collector writes it after each poll it completed, with when that
    poll began."""
    write_atomic(path, json.dumps({"polled": polled}) + "\n")  # read by the cool-down at any instant


def collected_until(run_dir: Path) -> float | None:
    """How far the sidecars' calls are on record in the run directory while it is being recorded: the start of
    the collector's last completed poll (`COLLECTED_FILE`) less `ACCESS_LOG_FLUSH_S` (a call's line is flushed
    within that of its end). None when there is no such record (a run recorded before it, or by hand) or it is
    unreadable: then nothing is known beyond what the caller assumes.

    Why it is read and not assumed: the collector's polls follow each other `POLL_INTERVAL_S` apart only on an
    idle machine. Each poll reads every source, and between two of them it compacts the records into Parquet,
    which on a long run or a busy machine takes seconds; the lines meanwhile wait in the sources.
    """
    try:
        rec = json.loads((run_dir / COLLECTED_FILE).read_text(encoding="utf-8"))
        return float(rec["polled"]) - ACCESS_LOG_FLUSH_S
    except (OSError, ValueError, TypeError, KeyError):
        return None


def hop_inputs(run_dir: Path) -> list[list[Any]]:
    """What hops are built from, as (file, size, mtime_ns): access logs, inventory, topology, clock record.

    observe writes it next to hops.jsonl (`HOPS_BUILD_FILE`); verify takes
    hops.jsonl as built only while these (and hops.jsonl itself) are unchanged.
    """
    # the access logs' Parquet segments count through their state (harness.columnar): a new segment changes it
    segments = run_dir / "columnar" / "accesslogs" / "state.json"
    # the clock record: the hops' times are corrected by the offsets it measured (harness.contract.clock)
    files = [*sorted((run_dir / ACCESSLOG_DIR).glob("*.jsonl")), segments, run_dir / INVENTORY_FILE,
             topology_path(run_dir), run_dir / CLOCK_FILE]  # fmt: skip
    out: list[list[Any]] = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        out.append([str(f.relative_to(run_dir)), st.st_size, st.st_mtime_ns])
    return out


def topology_path(run_dir: Path) -> Path:
    """The run's topology: `manifests/topology.yaml`, else a `topology.yaml` at the top (hand-made runs).

    When neither exists the first is returned, so the loader names it in its error.
    """
    for candidate in (run_dir / MANIFESTS_DIR / TOPOLOGY_FILE, run_dir / TOPOLOGY_FILE):
        if candidate.is_file():
            return candidate
    return run_dir / MANIFESTS_DIR / TOPOLOGY_FILE


# The access-log line every sidecar writes: Consul's JSON format (ProxyDefaults accessLogs.jsonFormat, written
# by render.consul; the local sidecars use it as is), field -> Envoy command operator. ACCESSLOG_COLUMNS reads it.
ACCESS_LOG_FIELDS: dict[str, str] = {
    "start_time": "%START_TIME%",
    "route_name": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "response_flags": "%RESPONSE_FLAGS%",
    "response_code_details": "%RESPONSE_CODE_DETAILS%",
    "connection_termination_details": "%CONNECTION_TERMINATION_DETAILS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "duration": "%DURATION%",
    "upstream_service_time": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "x_forwarded_for": "%REQ(X-FORWARDED-FOR)%",
    "user_agent": "%REQ(USER-AGENT)%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "authority": "%REQ(:AUTHORITY)%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
    "upstream_local_address": "%UPSTREAM_LOCAL_ADDRESS%",
    "downstream_local_address": "%DOWNSTREAM_LOCAL_ADDRESS%",
    "downstream_remote_address": "%DOWNSTREAM_REMOTE_ADDRESS%",
    # not in Consul's default format: the connection's peer (the calling pod), which DOWNSTREAM_REMOTE_ADDRESS is
    # not when the request carries X-Forwarded-For (`ARRIVAL_IP_SQL`)
    "downstream_direct_remote_address": "%DOWNSTREAM_DIRECT_REMOTE_ADDRESS%",
    "requested_server_name": "%REQUESTED_SERVER_NAME%",
    "upstream_transport_failure_reason": "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
}


REQUEST_COLUMNS = {
    "ts": "DOUBLE",
    "zone": "VARCHAR",
    "endpoint": "VARCHAR",
    "name": "VARCHAR",
    "status": "INTEGER",
    "latency_ms": "DOUBLE",
    "ok": "BOOLEAN",
    "error": "VARCHAR",
    # the id the request carried into the mesh (harness.contract.requestid); null for a request without one
    "request_id": "BIGINT",
    # the node whose clock stamped `ts` (an in-zone locust worker's, harness.traffic.inzone); null when the
    # runner stamped it, and in runs recorded before it existed
    "node": "VARCHAR",
}
INVENTORY_COLUMNS = {
    "ts": "DOUBLE",
    "event": "VARCHAR",
    "pod": "VARCHAR",
    "ip": "VARCHAR",
    "node": "VARCHAR",
    "zone": "VARCHAR",
    "service": "VARCHAR",
    "consul_service": "VARCHAR",
    "namespace": "VARCHAR",
}
HOP_COLUMNS = {
    "ts": "DOUBLE",
    "caller_pod": "VARCHAR",
    "caller_service": "VARCHAR",
    "caller_zone": "VARCHAR",
    "upstream": "VARCHAR",
    "upstream_cluster": "VARCHAR",
    "upstream_host": "VARCHAR",
    "serving_pod": "VARCHAR",
    "serving_zone": "VARCHAR",
    "status": "INTEGER",
    "flags": "VARCHAR",
    "duration_ms": "DOUBLE",
}
CHAOS_COLUMNS = {
    "ts": "DOUBLE",
    "fault": "VARCHAR",
    "phase": "VARCHAR",
    "action": "VARCHAR",
    "kind": "VARCHAR",
    "zone": "VARCHAR",
    "service": "VARCHAR",
    "services": "VARCHAR[]",
    "entry_down": "BOOLEAN",
    # an experiment's declared single point of failure (harness/chaos/expected.py), inject lines only
    "expected_error_budget": "DOUBLE",
    "single_point_of_failure": "VARCHAR[]",
    "expected_why": "VARCHAR",
    "node": "VARCHAR",  # kill_node: the node stopped
    # degrade_link: what it added to the link's round trip (inject lines only)
    "latency_ms": "DOUBLE",
    "loss_percent": "DOUBLE",
}
ENTRYPOINT_COLUMNS = {
    "ts": "DOUBLE",
    "zone": "VARCHAR",
    "url": "VARCHAR",
    "up": "BOOLEAN",
    "reason": "VARCHAR",
}
UPSTREAM_STATS_COLUMNS = {
    "ts": "DOUBLE",
    "label": "VARCHAR",
    "pod": "VARCHAR",
    "cluster": "VARCHAR",
    "host": "VARCHAR",
    "cx_total": "BIGINT",
    "cx_connect_fail": "BIGINT",
    "rq_total": "BIGINT",
    "rq_error": "BIGINT",
    "rq_timeout": "BIGINT",
    "cx_active": "BIGINT",  # gauges (harness.chaos.upstream_stats.GAUGES); absent in older runs
    "rq_active": "BIGINT",
    "health_flags": "VARCHAR",
}
RECORDING_COLUMNS = {"ts": "DOUBLE", "what": "VARCHAR", "message": "VARCHAR"}
HOST_COLUMNS = {"ts": "DOUBLE", "busy": "DOUBLE", "cpus": "INTEGER"}
# The access-log fields observe needs (read as text: Envoy writes numbers for
# some fields and null for empty ones, and other backends may quote them).
ACCESSLOG_COLUMNS = {
    "start_time": "VARCHAR",
    "response_code": "VARCHAR",
    "response_flags": "VARCHAR",
    "duration": "VARCHAR",
    "upstream_host": "VARCHAR",
    "upstream_cluster": "VARCHAR",
    "caller_pod": "VARCHAR",
    "caller_service": "VARCHAR",
    "direction": "VARCHAR",
    # read for the harness's request ids only (`harness.columnar.ACCESSLOGS` keeps them as a BIGINT): the
    # inner hops' UUIDs, one per line, would be most of a long run's columnar bytes
    "request_id": "VARCHAR",
    # read for an inbound line's caller only (`ARRIVAL_IP_SQL`; `harness.columnar.ACCESSLOGS` keeps its IP, on
    # inbound lines alone): an outbound line's is its own app's loopback address
    "downstream_remote_address": "VARCHAR",
    "downstream_direct_remote_address": "VARCHAR",
    "x_forwarded_for": "VARCHAR",
}
# A record without a usable time cannot be placed on the run's timeline: it is skipped and named.
TS_VALID_SQL = "ts IS NOT NULL"
ACCESSLOG_TS_SQL = "coalesce(try_cast(start_time AS DOUBLE), epoch_us(try_cast(start_time AS TIMESTAMPTZ)) / 1e6)"
ACCESSLOG_VALID_SQL = f"{ACCESSLOG_TS_SQL} IS NOT NULL"
# an access-log line of a request the sidecar received for its own app (consul-dataplane's inbound listener;
# kind-style lines name no direction: their upstream is the local app), not a hop the app made
INBOUND_SQL = (
    "coalesce(direction = 'inbound' OR (direction IS NULL AND (coalesce(upstream_cluster, '') = 'local_app' "
    "OR regexp_matches(coalesce(upstream_host, ''), '^(127\\.[0-9.]+|\\[::1\\]|::1):[0-9]+$'))), false)"
)


def host_ip_sql(column: str) -> str:
    """SQL: the IP of an Envoy `host:port` (IPv6 in brackets), NULL when empty."""
    return (
        f"(CASE WHEN coalesce({column}, '') IN ('', '-') THEN NULL "
        f"WHEN {column} LIKE '[%' THEN regexp_extract({column}, '^\\[([^\\]]*)\\]', 1) "
        f"WHEN length({column}) - length(replace({column}, ':', '')) = 1 THEN split_part({column}, ':', 1) "
        f"ELSE {column} END)"
    )


# an inbound line's caller: the IP of the connection's peer (the calling pod's: the mesh's mTLS goes from pod to
# pod; a user's request entering a frontend names a node or a load balancer, no pod), NULL on an outbound line
# (its own app on loopback). What shows a call into a zone the caller may not reach when the caller's own line of
# it is lost (`harness.observe.hops.create_arrivals`). The peer is DOWNSTREAM_DIRECT_REMOTE_ADDRESS. Not
# DOWNSTREAM_REMOTE_ADDRESS when the request carries X-Forwarded-For: Consul builds the inbound listener's HTTP
# connection manager without use_remote_address (agent/xds/listeners.go makeHTTPFilter), and Envoy then logs the
# last X-Forwarded-For address there (conn_manager_utility.cc: "used as the downstream address for logging"),
# e.g. the users' address an ALB appended and nginx passed on to public-api. A line without the direct address
# (Consul's default format, an operator's ProxyDefaults) is read by DOWNSTREAM_REMOTE_ADDRESS only without
# X-Forwarded-For; with it, its caller is unknown: UNPLACED_ARRIVAL, so the verdict can say what it could not check
# (`harness.observe.hops.create_arrivals`' `<table>_unplaced`).
UNPLACED_ARRIVAL = "?"
_XFF_EMPTY_SQL = "coalesce(x_forwarded_for, '') IN ('', '-')"
ARRIVAL_IP_SQL = (
    f"(CASE WHEN {INBOUND_SQL} THEN coalesce({host_ip_sql('downstream_direct_remote_address')}, "
    f"CASE WHEN {_XFF_EMPTY_SQL} THEN {host_ip_sql('downstream_remote_address')} ELSE '{UNPLACED_ARRIVAL}' END) END)"
)
# the pod an access-log file belongs to: its name (accesslogs/<pod>.jsonl), from DuckDB's `filename` column
FILE_POD_SQL = r"regexp_replace(regexp_extract(filename, '[^/]*$'), '\.jsonl$', '')"


@dataclass(frozen=True)
class SkippedLine:
    """A line of a record file that could not be used: where it is and why."""

    file: str  # relative to the run directory when it is inside it
    line: int  # 1-based
    reason: str

    def text(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def sql_str(value: str | os.PathLike[str]) -> str:
    """A SQL string literal (file paths are interpolated: DuckDB table functions take no parameters there)."""
    return "'" + os.fspath(value).replace("'", "''") + "'"


def columns_sql(columns: dict[str, str]) -> str:
    return "{" + ", ".join(f"{sql_str(k)}: {sql_str(v)}" for k, v in columns.items()) + "}"


def read_json_sql(
    paths: Path | list[Path], columns: dict[str, str], *, filename: bool = False, ignore_errors: bool = False
) -> str:
    """`read_json(...)` over JSON-lines file(s) with fixed column types.

    Strict by default: a malformed line raises, so that `load_jsonl` can name
    it instead of DuckDB dropping or nulling it silently.
    """
    files = sql_str(paths) if isinstance(paths, Path) else "[" + ", ".join(sql_str(p) for p in paths) + "]"
    extra = ", filename=true" if filename else ""
    extra += ", ignore_errors=true" if ignore_errors else ""
    return (
        f"read_json({files}, format='newline_delimited', columns={columns_sql(columns)}, "
        f"maximum_object_size=16777216{extra})"
    )


def _rel(path: Path, root: Path | None) -> str:
    if root is not None:
        with contextlib.suppress(ValueError):
            return str(path.resolve().relative_to(root.resolve()))
    return str(path)


def _empty(con: DuckDBPyConnection, table: str, columns: dict[str, str], filename: bool) -> None:
    cols = ", ".join(f'"{k}" {v}' for k, v in columns.items())
    con.execute(f"CREATE TABLE {table} ({cols}{', filename VARCHAR' if filename else ''})")


def _ends_with_newline(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"


def _strict_ok(con: DuckDBPyConnection, path: Path, columns: dict[str, str], valid_sql: str) -> bool:
    """The file reads strictly and every record in it is valid."""
    import duckdb

    try:
        # every column is counted so that every field is parsed (projection pushdown would skip some)
        counts = ", ".join(f'count("{k}")' for k in columns)
        row = con.execute(
            f"SELECT count(*) FILTER (WHERE NOT ({valid_sql})), {counts} FROM {read_json_sql(path, columns)}"
        )
        bad = row.fetchone()
    except duckdb.Error:
        return False
    return bad is not None and int(bad[0]) == 0


def _clean_copy(src: Path, dst: Path) -> list[tuple[int, str]]:
    """Copy the JSON-object lines of `src` to `dst`, each tagged with `"__line": N`; return the bad lines.

    Python, line by line: only files that failed the strict read come here.
    """
    bad: list[tuple[int, str]] = []
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as fin, dst.open("wb") as fout:
        for n, raw in enumerate(fin, start=1):
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                bad.append((n, "not UTF-8 (corrupt)"))
                continue
            except ValueError:
                torn = not raw.endswith(b"\n")
                bad.append((n, "truncated last line" if torn else "not JSON (corrupt or truncated)"))
                continue
            if not isinstance(obj, dict):
                bad.append((n, f"not a JSON object ({type(obj).__name__})"))
                continue
            body = line.strip()[1:].lstrip()
            sep = b"" if body.startswith(b"}") else b", "
            fout.write(b'{"__line": %d%s%s\n' % (n, sep, body))
    return bad


def load_jsonl(
    con: DuckDBPyConnection,
    table: str,
    files: list[Path],
    columns: dict[str, str],
    *,
    valid_sql: str = TS_VALID_SQL,
    filename: bool = False,
    root: Path | None = None,
    what: str = "ts",
) -> list[SkippedLine]:
    """Create `table` (the typed `columns`, plus `filename` if asked) from JSON-lines `files`.

    Rows that are not JSON objects, or fail `valid_sql` (by default: no
    `ts`), are skipped and returned with file and line number; a field of the
    wrong type reads as NULL, like a missing one. Absent or empty files give
    an empty table of the same schema.
    """
    import duckdb

    present = [f for f in files if f.is_file() and f.stat().st_size > 0]
    if not present:
        _empty(con, table, columns, filename)
        return []
    names = ", ".join(f'"{k}"' for k in columns) + (", filename" if filename else "")
    # A file whose last line has no newline was cut while being written. DuckDB's multi-file scan
    # (CREATE TABLE AS SELECT, 2.0) drops such a torn last object silently instead of raising, so
    # those files take the slow path, where the line is named.
    torn = [f for f in present if not _ends_with_newline(f)]
    try:
        if torn:
            raise duckdb.Error("torn last line")
        con.execute(f"CREATE TABLE {table} AS SELECT {names} FROM {read_json_sql(present, columns, filename=True)}")
        row = con.execute(f"SELECT count(*) FILTER (WHERE NOT ({valid_sql})) FROM {table}").fetchone()
        if row is not None and int(row[0]) == 0:
            return []
        con.execute(f"DROP TABLE {table}")
    except duckdb.Error:
        con.execute(f"DROP TABLE IF EXISTS {table}")
    # Slow path, only for the files that are not clean.
    good = [f for f in present if f not in torn and _strict_ok(con, f, columns, valid_sql)]
    dirty = [f for f in present if f not in good]
    skipped: list[SkippedLine] = []
    tmp = Path(tempfile.mkdtemp(prefix="eh-records-"))
    try:
        copies: dict[str, Path] = {}
        for i, f in enumerate(dirty):
            dst = tmp / str(i) / f.name  # same base name: callers may read a pod name from it
            skipped += [SkippedLine(_rel(f, root), n, why) for n, why in _clean_copy(f, dst)]
            copies[str(dst)] = f
        parts = []
        if good:
            parts.append(f"SELECT {names} FROM {read_json_sql(good, columns, filename=True)}")
        cols = {"__line": "BIGINT", **columns}
        con.execute(
            f"CREATE TEMP TABLE __dirty AS SELECT *, ({valid_sql}) AS __ok "
            f"FROM {read_json_sql(list(map(Path, copies)), cols, filename=True, ignore_errors=True)}"
        )
        for fname, n in con.execute("SELECT filename, __line FROM __dirty WHERE NOT coalesce(__ok, false)").fetchall():
            skipped.append(SkippedLine(_rel(copies[fname], root), int(n), f"no valid {what}"))
        # filename of a cleaned copy -> the original file
        con.execute("CREATE TEMP TABLE __names (copy VARCHAR, orig VARCHAR)")
        con.executemany("INSERT INTO __names VALUES (?, ?)", [[c, str(o)] for c, o in copies.items()])
        sel = ", ".join(f'd."{k}"' for k in columns) + (", n.orig AS filename" if filename else "")
        parts.append(
            f"SELECT {sel} FROM __dirty d JOIN __names n ON n.copy = d.filename "
            "WHERE d.__ok ORDER BY d.filename, __line"
        )
        con.execute(f"CREATE TABLE {table} AS " + " UNION ALL ".join(f"({p})" for p in parts))
        con.execute("DROP TABLE __dirty")
        con.execute("DROP TABLE __names")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(skipped, key=lambda s: (s.file, s.line))


def read_json_doc(path: Path, root: Path | None = None) -> tuple[Any, SkippedLine | None]:
    """A whole-file JSON document (run.json, preflight.json, plan.json, a journal).

    Returns (data, None), (None, None) when the file is absent, or (None, SkippedLine) when it
    cannot be read as JSON (a run killed while writing it).
    """
    if not path.is_file():
        return None, None
    try:
        return json.loads(path.read_bytes()), None
    except UnicodeDecodeError:
        return None, SkippedLine(_rel(path, root), 1, "not UTF-8 (corrupt)")
    except json.JSONDecodeError as exc:
        return None, SkippedLine(_rel(path, root), exc.lineno, f"not JSON: {exc.msg}")
    except OSError as exc:
        return None, SkippedLine(_rel(path, root), 1, f"unreadable: {exc.strerror}")
