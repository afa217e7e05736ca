"""`verify` for tests: every verdict a test produces is validated against docs/verdict-schema.json.

The schema is what CI, the report and post-mortem tooling consume; a verdict
that drifts from it is a defect even when the test's own assertions hold. The
JSON round trip (`Verdict.from_dict`) is checked on the way.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema

from harness.verify import SCHEMA_PATH, Verdict
from harness.verify import verify as _verify
from harness.verify.synth import Scenario, write_run

SCHEMA = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def check_schema(v: Verdict) -> Verdict:
    data = json.loads(v.to_json())
    VALIDATOR.validate(data)
    assert Verdict.from_dict(data).to_dict() == data
    return v


def verify(run_dir: Path | str) -> Verdict:
    return check_schema(_verify(run_dir))


class Pristine:
    """Synthetic runs written once and copied for each use (a module-scoped fixture's: `Pristine(root)`).

    Why: write_run is seeded (`Scenario.seed`) and writes nothing of the directory it is given, so a copy is byte
    for byte the run it would write again; a busy 90-second run takes seconds to write and a test that edits or
    judges the same scenario several ways paid that each time. Each copy is the test's own to edit; the pristine
    run is never verified (verify caches the hops it builds in the directory).
    """

    def __init__(self, root: Path | None = None) -> None:
        self._root = root
        self._runs: dict[str, Path] = {}

    @property
    def root(self) -> Path:
        if self._root is None:  # the process's own (SHARED), removed when it exits
            self._root = Path(tempfile.mkdtemp(prefix="eh-pristine-"))
            atexit.register(shutil.rmtree, self._root, True)
        return self._root

    def run(self, dest: Path, sc: Scenario) -> Path:
        """A fresh copy of `sc`'s run at `dest` (written once per `Pristine`, keyed by the scenario's repr).

        A `dest` that exists already is written into as write_run writes into it (its access logs appended to)."""
        if dest.exists():
            return write_run(dest, sc)
        key = repr(sc)
        if (src := self._runs.get(key)) is None:
            src = self._runs[key] = write_run(self.root / f"run-{len(self._runs)}", sc)
        shutil.copytree(src, dest)
        return dest


# the runs of the scenarios many modules share (test_verify_soundness.run's), per test process
SHARED = Pristine()


# -- editing a run directory's records (the tests that plant a behaviour into a synthetic run) --------------
def failed_messages(v: Verdict) -> dict[str, str]:
    """Each failed invariant's message, by name: what a soundness test asks of a broken run."""
    return {i.name: i.message for i in v.invariants if not i.passed}


def rows(path: Path) -> list[dict[str, Any]]:
    """A JSON-lines record file as dicts."""
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def write_rows(path: Path, records: list[dict[str, Any]]) -> None:
    """Write records back as JSON lines."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


@functools.lru_cache(maxsize=4096)
def _utc_second(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())


def envoy_start(r: dict[str, Any]) -> float:
    """An Envoy access-log line's START_TIME (UTC, milliseconds) as epoch seconds.

    The float `datetime.timestamp()` gives for it (the microseconds over 10**6, rounded once), its whole-second
    part parsed once per second: the clock tests shift every line of a busy run, and strptime per line was most
    of their time."""
    text = r["start_time"]
    second, _, frac = text.rstrip("Z").partition(".")
    return (_utc_second(second) * 10**6 + int(frac.ljust(6, "0"))) / 10**6


def rebuilt(run_dir: Path) -> Path:
    """The run with its hops to be rebuilt from the access logs (as after an edit of them)."""
    for name in ("hops.jsonl", "hops.parquet", "hops-build.json"):
        (run_dir / name).unlink(missing_ok=True)
    return run_dir


def added_pod(run_dir: Path, zone: str, service: str) -> dict[str, Any]:
    """The inventory's first `added` record of `service` in `zone`."""
    inv = rows(run_dir / "inventory.jsonl")
    return next(e for e in inv if e["event"] == "added" and e["zone"] == zone and e["service"] == service)


def slow_primitive(run_dir: Path, stop_s: float, snapshot_s: float | None = None) -> Path:
    """The run with its fault's primitive taking `stop_s`: the inject is recorded `stop_s` before the fault took
    effect (harness.chaos.actions records it before the primitive runs), and the "inject" counter snapshot stays
    where the synthetic run took it, when the fault took effect (`snapshot_s` after the record instead: a
    primitive that returned before anything happened)."""
    chaos = rows(run_dir / "chaos.jsonl")
    fault, record = "", 0.0
    for c in chaos:
        if c["phase"] == "inject":
            c["ts"] -= stop_s
            fault, record = c["fault"], c["ts"]
    write_rows(run_dir / "chaos.jsonl", chaos)
    if snapshot_s is not None:
        stats = rows(run_dir / "upstream-stats.jsonl")
        for s in stats:
            if s.get("label") == f"inject {fault}":
                s["ts"] = record + snapshot_s
        write_rows(run_dir / "upstream-stats.jsonl", stats)
    return run_dir
