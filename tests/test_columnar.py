"""Records kept columnar as they are collected (harness.columnar) and the IP-at-time rule as pieces.

What must hold: a run compacted into Parquet segments while it was written
(part compacted, part still JSON, a torn line left for later) gives the same
verdict as the same run read from JSON alone, and every corrupt line is still
named by its line number in the original file; the collector compacts on its
own; a run whose JSON was exported away reads from its segments; and the
piecewise lookup of the IP-at-time rule answers exactly what the rule
answers row by row, at every boundary.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import duckdb

from harness.backends.base import LogSource
from harness.columnar import ACCESSLOGS, REQUESTS, compact, compact_all, load_state, read_records
from harness.observe import AccessLogCollector
from harness.observe.hops import _nearest_interval_sql, resolve_ips
from tests.test_verify_soundness import KILL, LAX, pod_of, run
from tests.verdicts import verify


def _split(path: Path, keep_lines: int) -> bytes:
    """Cut `path` after `keep_lines` lines; return the rest (to append later, as a running writer would)."""
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:keep_lines]))
    return b"".join(lines[keep_lines:])


def _insert(path: Path, at: int, line: bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines.insert(at, line)
    path.write_bytes(b"".join(lines))


def test_compacted_run_gives_the_same_verdict_and_names_corrupt_lines_by_original_line(tmp_path: Path) -> None:
    d = run(tmp_path, faults=[KILL])
    caller = pod_of(d, LAX, "public-api")["pod"]
    log = d / "accesslogs" / f"{caller}.jsonl"
    _insert(d / "requests.jsonl", 100, b'{"ts": 17641000, "zone": "us-west-2-lax-1a", "end\n')
    _insert(log, 3, b"\x00\x00\x00\x00\n")
    reference = verify(d)  # everything read from JSON lines
    assert not (d / "columnar").exists()

    # As during the run: the first part compacted, the rest written after it, the last line torn.
    rest_req, rest_log = _split(d / "requests.jsonl", 200), _split(log, 10)
    with (d / "requests.jsonl").open("ab") as fh:
        fh.write(rest_req[:37])  # a line being written while the compaction runs: left for later
    assert compact_all(d) > 0
    state = load_state(d, ACCESSLOGS)
    assert state["segments"] == ["000001.parquet"] and state["files"][f"accesslogs/{caller}.jsonl"]["lines"] == 10
    assert state["skipped"] == [[f"accesslogs/{caller}.jsonl", 4, "not JSON (corrupt or truncated)"]]
    assert load_state(d, REQUESTS)["files"]["requests.jsonl"]["lines"] == 200
    with (d / "requests.jsonl").open("ab") as fh:
        fh.write(rest_req[37:])
    with log.open("ab") as fh:
        fh.write(rest_log + b'{"start_time": "2025-11-')  # torn last line of a killed pod, in the JSON tail

    v = verify(d)
    assert v.run.hops == reference.run.hops and v.run.requests == reference.run.requests
    assert v.passed == reference.passed and v.run.hops_source == "accesslogs"
    assert [(f.fault, f.failover_s, f.recovery_s) for f in v.faults] == [
        (f.fault, f.failover_s, f.recovery_s) for f in reference.faults
    ]
    n_log = len(log.read_bytes().splitlines())
    assert v.run.skipped_records == [
        {"file": f"accesslogs/{caller}.jsonl", "line": 4, "reason": "not JSON (corrupt or truncated)"},
        {"file": f"accesslogs/{caller}.jsonl", "line": n_log, "reason": "truncated last line"},
        {"file": "requests.jsonl", "line": 101, "reason": "not JSON (corrupt or truncated)"},
    ]

    # Everything compacted, then the JSON exported away: the segments alone give the same verdict.
    log.write_bytes(log.read_bytes()[: log.read_bytes().rfind(b"\n") + 1])  # the torn line never completes
    assert compact(d, ACCESSLOGS) > 0 and compact(d, ACCESSLOGS) == 0  # nothing new: no empty segment
    shutil.rmtree(d / "accesslogs")
    only_segments = verify(d)
    assert only_segments.run.hops == reference.run.hops and only_segments.run.hops_source == "accesslogs"


def test_read_records_without_compaction_reads_the_json_in_place(tmp_path: Path) -> None:
    (tmp_path / "requests.jsonl").write_text(json.dumps({"ts": 1.0, "zone": "z", "ok": True}) + "\n[1]\n")
    con = duckdb.connect()
    skipped = read_records(con, "r", tmp_path, REQUESTS)
    assert con.execute("SELECT ts, zone, filename FROM r").fetchall() == [(1.0, "z", "requests.jsonl")]
    assert [s.text() for s in skipped] == ["requests.jsonl:2: not a JSON object (list)"]


class _Lines(LogSource):
    def __init__(self, pod: str, lines: list[str]) -> None:
        self.pod, self.lines = pod, lines

    def read(self):  # type: ignore[no-untyped-def]
        out, self.lines = self.lines, []
        yield from out


def test_collector_compacts_while_it_runs_and_when_it_stops(tmp_path: Path) -> None:
    rec = {"start_time": "2025-11-25T19:46:40.000Z", "upstream_host": "10.0.0.1:80", "direction": "outbound"}
    src = _Lines("p1", [json.dumps(rec)] * 5)
    c = AccessLogCollector(lambda: [src], tmp_path / "accesslogs", 0.01, compact_run_dir=tmp_path, compact_every_s=0)
    c.start()
    c.stop()
    state = load_state(tmp_path, ACCESSLOGS)
    assert state["rows"] == 5 and state["files"]["accesslogs/p1.jsonl"] == {"offset": (tmp_path / "accesslogs" /
                                                                                       "p1.jsonl").stat().st_size,
                                                                            "lines": 5}  # fmt: skip
    assert c.compact_errors == []


def test_pieces_answer_exactly_what_the_rule_answers_row_by_row() -> None:
    """Random IP histories (reuse, gaps shorter and longer than the slack, open ends) and rows at every boundary."""
    rng = random.Random(7)
    con = duckdb.connect()
    con.execute("CREATE TABLE intervals (pod VARCHAR, ip VARCHAR, zone VARCHAR, service VARCHAR, "
                "consul_service VARCHAR, start_ts DOUBLE, end_ts DOUBLE)")  # fmt: skip
    rows, points = [], []
    for ip in range(12):
        t = rng.choice([0.0, 50.0, 3000.0])
        for k in range(rng.randint(1, 6)):
            start = t + rng.choice([0.0, 0.3, 0.5, 1.0, 1.7, 2.0, 90.0])
            end = None if k == 5 or rng.random() < 0.15 else start + rng.choice([0.2, 1.0, 2.5, 61.0, 400.0])
            rows.append([f"p{ip}-{k}", f"10.0.0.{ip}", f"z{k % 3}", "svc", "svc", start, end])
            offsets = (-2.0, -1.0, -0.5, -1e-6, 0.0, 1e-6, 0.5, 1.0, 1.5, 2.0)
            points += [(f"10.0.0.{ip}", x + d) for x in (start, end) if x is not None for d in offsets]
            if end is None:
                break
            t = end
    con.executemany("INSERT INTO intervals VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    points += [(f"10.0.0.{rng.randrange(13)}", rng.uniform(-10, 5000)) for _ in range(3000)]
    con.execute("CREATE TABLE src (id BIGINT, ts DOUBLE, ip VARCHAR)")
    con.executemany("INSERT INTO src VALUES (?, ?, ?)", [[i, ts, ip] for i, (ip, ts) in enumerate(points)])
    resolve_ips(con, "src", "by_pieces", 1.0)
    per_row = ("WITH" + _nearest_interval_sql("serving", "src", "ip", "ip").rstrip(",")
               + " SELECT id, pod, zone, service FROM serving").replace("$SLACK", "1.0")  # fmt: skip
    expected = sorted(con.execute(per_row).fetchall())
    got = sorted(con.execute("SELECT id, pod, zone, service FROM by_pieces").fetchall())
    assert len(expected) > 1000
    assert got == expected


def test_request_ids_are_kept_as_numbers_and_only_the_harness_ones(tmp_path: Path) -> None:
    """An access-log line's `request_id` is kept only when it is the harness's (`eh-` and hex: the id a user
    request carried), as the BIGINT `requests.jsonl` records: the mesh's own UUIDs, one per inner hop, are never
    stored (the Parquet column is a number, not text), and a malformed id is no id."""
    logs = tmp_path / "accesslogs"
    logs.mkdir()
    ids = ["eh-7fffffffffffffff", "eh-00000000000000ff", "6c1d2a0e-3f4b-4c5d-9e8f-0a1b2c3d4e5f", "eh-zz", None, ""]
    lines = [{"start_time": f"2025-11-26T00:00:0{i}.000Z", "request_id": rid} for i, rid in enumerate(ids)]
    (logs / "frontend-lax-0.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert compact(tmp_path, ACCESSLOGS) == len(ids)
    seg = tmp_path / "columnar" / "accesslogs" / "000001.parquet"
    con = duckdb.connect()
    types = dict(con.execute(f"SELECT name, type FROM parquet_schema('{seg}')").fetchall())
    assert types["request_id"] == "INT64"
    read_records(con, "t", tmp_path, ACCESSLOGS)
    got = [r[0] for r in con.execute("SELECT request_id FROM t ORDER BY ts").fetchall()]
    assert got == [2**63 - 1, 255, None, None, None, None]


def test_segments_written_before_a_column_existed_read_it_as_null(tmp_path: Path) -> None:
    """A run compacted by an older harness (segments without `request_id`) and resumed or verified by this one:
    the records read, the missing column NULL in the old segments and a number in the new."""
    logs = tmp_path / "accesslogs"
    logs.mkdir()
    f = logs / "frontend-lax-0.jsonl"
    f.write_text(json.dumps({"start_time": "2025-11-26T00:00:01.000Z", "request_id": "eh-0000000000000001"}) + "\n")
    assert compact(tmp_path, ACCESSLOGS) == 1
    seg = tmp_path / "columnar" / "accesslogs" / "000001.parquet"
    con = duckdb.connect()
    con.execute(f"COPY (SELECT * EXCLUDE (request_id) FROM '{seg}') TO '{seg}.old' (FORMAT PARQUET)")
    shutil.move(f"{seg}.old", seg)
    for only_old in (True, False):
        if not only_old:
            with f.open("a") as fh:
                fh.write(json.dumps({"start_time": "2025-11-26T00:00:02.000Z", "request_id": "eh-02"}) + "\n")
            assert compact(tmp_path, ACCESSLOGS) == 1
        c = duckdb.connect()
        read_records(c, "t", tmp_path, ACCESSLOGS)
        got = [r[0] for r in c.execute("SELECT request_id FROM t ORDER BY ts").fetchall()]
        assert got == ([None] if only_old else [None, 2])
