"""Record files kept columnar as they are collected: Parquet segments of the JSON-lines records.

Why: a 10-hour nightly records ~50M hops (~17 GB of access-log JSON). Parsing
that JSON when the run ends would take minutes; the verdict must come in a
minute within 2 GB. So the JSON lines are turned into typed Parquet segments
*while the run goes on* (the access-log collector calls `compact` every
`COMPACT_EVERY_S` and once more when it stops), and readers read the segments
plus only the JSON not yet compacted (the "tail"). The raw JSON-lines files
stay what they are (the collector's raw copy, the recorder's output, an
export for people and tools); the Parquet segments are what verify and the
report read.

Layout (docs/CONTRACTS.md section 4, `columnar/`)::

    <run>/columnar/<kind>/<seq>.parquet   typed columns (harness.contract.rundir) + `filename`
                                          (the source file, relative to the run directory)
    <run>/columnar/<kind>/state.json      {"segments": [...], "files": {rel: {"offset", "lines"}},
                                           "skipped": [[file, line, reason], ...], "rows": n}

A segment counts only once `state.json` lists it (written atomically after
the segment is renamed into place), so a compaction killed halfway leaves at
most an unlisted file that the next one overwrites. `offset` is the byte
offset up to which a file is compacted (always just after a newline), `lines`
how many lines precede it, so a line skipped later is still named by its
line number in the original file. Corrupt and truncated lines are found and
named by `harness.contract.rundir.load_jsonl` exactly as before; the ones in the
compacted part are kept in `skipped`. Compaction reads only complete lines:
a line still being written is left for the next pass (or, at the end, for the
reader, which names it "truncated last line").

Nothing here imports the rest of the harness except `harness.contract.rundir`, so
observe (which compacts) and verify/report (which read) share it without
breaking the layering.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.contract.files import write_atomic
from harness.contract.requestid import request_id_sql
from harness.contract.rundir import (
    ACCESSLOG_COLUMNS,
    ACCESSLOG_DIR,
    ACCESSLOG_TS_SQL,
    ACCESSLOG_VALID_SQL,
    ARRIVAL_IP_SQL,
    REQUEST_COLUMNS,
    REQUESTS_FILE,
    TS_VALID_SQL,
    SkippedLine,
    load_jsonl,
    sql_str,
)
from harness.errors import InputError

if TYPE_CHECKING:
    from duckdb import DuckDBPyConnection

COLUMNAR_DIR = "columnar"
STATE_FILE = "state.json"
COMPACT_EVERY_S = 30.0  # the collector's cadence: a 10 h run has ~1200 segments per kind, each a few MB
COPY_BLOCK = 8 << 20


@dataclass(frozen=True)
class Kind:
    """One kind of record file that is kept columnar."""

    name: str
    columns: dict[str, str]
    valid_sql: str
    what: str
    # (column, type, SQL over `columns`): computed once, at compaction
    derived: tuple[tuple[str, str, str], ...] = ()
    # source columns read only for `derived`, not kept (a derived column may take the name of one)
    transient: frozenset[str] = frozenset()

    @property
    def out_types(self) -> dict[str, str]:
        """Every column a reader gets besides `filename`, with its type."""
        kept = {c: t for c, t in self.columns.items() if c not in self.transient}
        return {**kept, **{name: typ for name, typ, _ in self.derived}}

    @property
    def out_columns(self) -> list[str]:
        """Every column a reader gets besides `filename`."""
        return list(self.out_types)

    def files(self, run_dir: Path) -> list[Path]:
        if self.name == "accesslogs":
            return sorted((run_dir / ACCESSLOG_DIR).glob("*.jsonl"))
        return [run_dir / REQUESTS_FILE]


# `ts`: the line's start time in epoch seconds, parsed once (Envoy writes ISO text; parsing fifty
# million of them is a quarter of what a verdict would otherwise spend)
# `request_id`: the harness's id of the user request a line carries (harness.contract.requestid), else NULL
# `arrival_ip`: an inbound line's caller's IP (harness.contract.rundir.ARRIVAL_IP_SQL), else NULL
ACCESSLOGS = Kind(
    "accesslogs",
    ACCESSLOG_COLUMNS,
    ACCESSLOG_VALID_SQL,
    "start_time",
    (
        ("ts", "DOUBLE", ACCESSLOG_TS_SQL),
        ("request_id", "BIGINT", request_id_sql("r.request_id")),
        ("arrival_ip", "VARCHAR", ARRIVAL_IP_SQL),
    ),
    frozenset({"request_id", "downstream_remote_address", "downstream_direct_remote_address", "x_forwarded_for"}),
)
REQUESTS = Kind("requests", REQUEST_COLUMNS, TS_VALID_SQL, "ts")
KINDS = (ACCESSLOGS, REQUESTS)


def state_file(kind: Kind) -> str:
    """The kind's compaction state, relative to the run directory: where a missing segment is reported
    (`read_records`), so a verdict can tell whose records it held."""
    return f"{COLUMNAR_DIR}/{kind.name}/{STATE_FILE}"


def _state_path(run_dir: Path, kind: Kind) -> Path:
    return run_dir / state_file(kind)


def load_state(run_dir: Path, kind: Kind) -> dict[str, Any]:
    """The kind's compaction state; an absent or unreadable one means "nothing compacted yet"."""
    empty: dict[str, Any] = {"segments": [], "files": {}, "skipped": [], "rows": 0}
    try:
        doc = json.loads(_state_path(run_dir, kind).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return empty
    if not isinstance(doc, dict) or not isinstance(doc.get("segments"), list) or not isinstance(doc.get("files"), dict):
        return empty
    doc.setdefault("skipped", [])
    doc.setdefault("rows", 0)
    return doc


def _write_state(run_dir: Path, kind: Kind, state: dict[str, Any]) -> None:
    write_atomic(_state_path(run_dir, kind), json.dumps(state))


def _rel(run_dir: Path, f: Path) -> str:
    try:
        return str(f.relative_to(run_dir))
    except ValueError:
        return str(f)


def _copy_range(src: Path, dst: Path, start: int, end: int) -> None:
    """Bytes [start, end) of `src` into `dst` (sequential blocks: a tail may be gigabytes)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with src.open("rb") as fin, dst.open("wb") as fout:
        fin.seek(start)
        left = end - start
        while left > 0:
            block = fin.read(min(COPY_BLOCK, left))
            if not block:
                break
            fout.write(block)
            left -= len(block)


def _complete_end(path: Path, start: int, size: int) -> int:
    """The offset just after the last newline in [start, size), or `start` when there is none."""
    with path.open("rb") as fh:
        pos = size
        while pos > start:
            step = min(1 << 16, pos - start)
            fh.seek(pos - step)
            block = fh.read(step)
            i = block.rfind(b"\n")
            if i >= 0:
                return pos - step + i + 1
            pos -= step
    return start


def _load_chunks(
    con: DuckDBPyConnection,
    table: str,
    kind: Kind,
    run_dir: Path,
    chunks: list[tuple[Path, int, int, int]],
    tmp: Path,
) -> list[SkippedLine]:
    """Table `table` (kind's columns + `filename` relative to the run) from byte ranges of files.

    `chunks`: (file, start, end, lines before start). A range that starts at 0
    is read in place; any other is copied to `tmp` first (DuckDB reads whole
    files). Skipped lines are named by their file and line number in the
    original file.
    """
    files: list[Path] = []
    origin: dict[str, tuple[Path, int]] = {}
    for i, (f, start, end, before) in enumerate(chunks):
        if start == 0 and end >= f.stat().st_size:
            src = f
        else:
            src = tmp / str(i) / f.name  # same base name: readers take the pod from it
            _copy_range(f, src, start, end)
        files.append(src)
        origin[str(src)] = (f, before)
    skipped = load_jsonl(con, f"{table}_raw", files, kind.columns, valid_sql=kind.valid_sql, filename=True,
                         what=kind.what)  # fmt: skip
    out: list[SkippedLine] = []
    for s in skipped:
        # load_jsonl names the file it read; map a copied range back to its original and line
        src_path = next((p for p in origin if p == s.file or p.endswith("/" + s.file)), None)
        if src_path is None:
            out.append(s)
            continue
        f, before = origin[src_path]
        out.append(SkippedLine(_rel(run_dir, f), s.line + before, s.reason))
    con.execute("CREATE TEMP TABLE __origin (src VARCHAR, rel VARCHAR)")
    con.executemany("INSERT INTO __origin VALUES (?, ?)", [[k, _rel(run_dir, v[0])] for k, v in origin.items()])
    kept = [c for c in kind.columns if c not in kind.transient]
    cols = ", ".join([f'r."{c}"' for c in kept] + [f'{sql} AS "{name}"' for name, _, sql in kind.derived])
    con.execute(
        f"CREATE TEMP TABLE {table} AS SELECT {cols}, o.rel AS filename "
        f"FROM {table}_raw r JOIN __origin o ON o.src = r.filename"
    )
    con.execute(f"DROP TABLE {table}_raw")
    con.execute("DROP TABLE __origin")
    return out


def compact(run_dir: Path, kind: Kind) -> int:
    """Turn the complete lines appended since the last call into one Parquet segment; return its rows.

    Safe to call while the files are being appended to (only whole lines are
    taken) and from one thread at a time per run directory (the collector's).
    """
    import duckdb

    run_dir = Path(run_dir)
    state = load_state(run_dir, kind)
    chunks: list[tuple[Path, int, int, int]] = []
    for f in kind.files(run_dir):
        rel = _rel(run_dir, f)
        pos = state["files"].get(rel, {"offset": 0, "lines": 0})
        try:
            size = f.stat().st_size
        except FileNotFoundError:
            continue
        if size <= pos["offset"]:
            continue  # nothing new (the collector only appends)
        end = _complete_end(f, pos["offset"], size)
        if end > pos["offset"]:
            chunks.append((f, int(pos["offset"]), end, int(pos["lines"])))
    if not chunks:
        return 0
    seg_dir = run_dir / COLUMNAR_DIR / kind.name
    seg_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="eh-compact-", dir=seg_dir))
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET threads = 1")  # a background chore during the run: leave the cores to the run
        con.execute("SET TimeZone = 'UTC'")
        skipped = _load_chunks(con, "seg", kind, run_dir, chunks, tmp)
        row = con.execute("SELECT count(*) FROM seg").fetchone()
        rows = int(row[0]) if row else 0
        name = f"{len(state['segments']) + 1:06d}.parquet"
        part = tmp / name
        con.execute(f"COPY seg TO {sql_str(part)} (FORMAT PARQUET, COMPRESSION ZSTD)")
        os.replace(part, seg_dir / name)
        for f, start, end, before in chunks:
            lines = before + _count_range_lines(f, start, end)
            state["files"][_rel(run_dir, f)] = {"offset": end, "lines": lines}
        state["segments"].append(name)
        state["skipped"] += [[s.file, s.line, s.reason] for s in skipped]
        state["rows"] = int(state["rows"]) + rows
        _write_state(run_dir, kind, state)
        return rows
    finally:
        con.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _count_range_lines(path: Path, start: int, end: int) -> int:
    n = 0
    with path.open("rb") as fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            block = fh.read(min(COPY_BLOCK, left))
            if not block:
                break
            n += block.count(b"\n")
            left -= len(block)
    return n


def compact_all(run_dir: Path) -> int:
    """`compact` every kind; returns the rows added."""
    return sum(compact(run_dir, k) for k in KINDS)


def check_parquet(con: DuckDBPyConnection, files: list[Path], run_dir: Path) -> None:
    """InputError naming the first file whose Parquet footer cannot be read (a copy cut short, a file overwritten).

    DuckDB would raise its own error at the first query (later still for a
    view), out of `harness verify` as a traceback: bad input is one line
    naming the file, exit 2. The footer is what a truncated file loses first.
    """
    import duckdb

    for f in files:
        try:
            con.execute("SELECT count(*) FROM parquet_metadata(?)", [str(f)]).fetchone()
        except duckdb.Error as exc:
            why = str(exc).splitlines()[0].replace(f" '{f}'", "")  # the file is named once, relative to the run
            raise InputError(_rel(run_dir, f), "", f"not a readable Parquet file ({why})") from None


def read_records(
    con: DuckDBPyConnection, table: str, run_dir: Path, kind: Kind, *, view: bool = False
) -> list[SkippedLine]:
    """Create `table` (kind's columns + `filename`, relative to the run) from segments and the tail.

    The segments `state.json` lists, plus every byte of the JSON-lines files
    past the compacted offset (all of a file nothing compacted yet), read with
    `load_jsonl`'s rules. Returns every skipped line: the ones compaction
    found and the tail's. Reads the run directory only. With `view`, `table`
    is a temporary view over the Parquet files (and a table `<table>_tail`):
    for a caller that scans the records once into something smaller.
    """
    run_dir = Path(run_dir)
    state = load_state(run_dir, kind)
    seg_dir = run_dir / COLUMNAR_DIR / kind.name
    segments = [seg_dir / s for s in state["segments"] if (seg_dir / s).is_file()]
    skipped = [SkippedLine(str(f), int(n), str(r)) for f, n, r in state["skipped"]]
    check_parquet(con, segments, run_dir)
    if len(segments) < len(state["segments"]):
        # a segment listed but gone: its records cannot be recovered from here; say so, re-read nothing twice
        skipped.append(SkippedLine(_rel(run_dir, _state_path(run_dir, kind)), 1, "a listed Parquet segment is missing"))
    chunks: list[tuple[Path, int, int, int]] = []
    for f in kind.files(run_dir):
        if not f.is_file():
            continue
        pos = state["files"].get(_rel(run_dir, f), {"offset": 0, "lines": 0})
        size = f.stat().st_size
        if size > int(pos["offset"]):
            chunks.append((f, int(pos["offset"]), size, int(pos["lines"])))
    cols = ", ".join(f'"{c}"' for c in kind.out_columns)
    parts: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="eh-tail-"))
    try:
        if chunks:
            skipped += _load_chunks(con, f"{table}_tail", kind, run_dir, chunks, tmp)
            parts.append(f"SELECT {cols}, filename FROM {table}_tail")
        if segments:
            parts.insert(0, _segments_sql(con, segments, kind.out_types))
        if not parts:
            col_defs = ", ".join(f'"{k}" {v}' for k, v in kind.out_types.items())
            con.execute(f"CREATE TABLE {table} ({col_defs}, filename VARCHAR)")
        elif view:
            con.execute(f"CREATE TEMP VIEW {table} AS " + " UNION ALL ".join(f"({p})" for p in parts))
        else:
            con.execute(f"CREATE TABLE {table} AS " + " UNION ALL ".join(f"({p})" for p in parts))
            con.execute(f"DROP TABLE IF EXISTS {table}_tail")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(skipped, key=lambda s: (s.file, s.line))


def _segments_sql(con: DuckDBPyConnection, files: list[Path], types: dict[str, str]) -> str:
    """SELECT of `types` and `filename` over the Parquet `files`, read from their footers once.

    A run recorded before a column existed (its segments lack it) still reads: a column no segment has is a
    typed NULL, and where the segments differ (a run compacted by an older harness and resumed by a newer one)
    their columns are matched by name. The verdict then treats the column as absent (for `request_id`: the
    entry hops are judged by time alone), rather than failing on a run it judged before.
    """
    listed = "[" + ", ".join(sql_str(f) for f in files) + "]"
    schemas: dict[str, set[str]] = {str(f): set() for f in files}
    for fname, col in con.execute(f"SELECT file_name, name FROM parquet_schema({listed})").fetchall():
        schemas.setdefault(str(fname), set()).add(str(col))
    present = set().union(*schemas.values())
    cols = ", ".join(f'"{c}"' if c in present else f'NULL::{t} AS "{c}"' for c, t in types.items())
    by_name = ", union_by_name = true" if len({frozenset(c) for c in schemas.values()}) > 1 else ""
    return f"SELECT {cols}, filename FROM read_parquet({listed}{by_name})"
