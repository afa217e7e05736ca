"""Verify a run directory against the routing invariants (docs/CONTRACTS.md §4).

The verifier reads records only: it imports nothing of the backends, traffic,
chaos or CLI, so it judges a run from any backend or one copied from another
machine. Public API:

- `verify(run_dir) -> Verdict`: load and check (raises `harness.errors.InputError`
  when the run directory or its topology is unusable).
- `Verdict.passed`, `Verdict.to_json()`, `Verdict.to_dict()`, `Verdict.from_dict()`.
- `write_verdict(run_dir, verdict) -> Path`: writes `run_dir/verdict.json`.
- `load_verdict(path) -> Verdict`: reads one back (schema version checked).
- `print_summary(verdict, console)`: rich tables for the CLI.
- `pending_recoveries(run_dir, topology, now) -> [Pending]`: for a run still going, the recoveries its records
  do not show yet (e2e's cool-down waits for them); `link_baseline_owed(run_dir, topology, zone, now)`: the
  baseline a degradation of the zone's link begun now would lack after an earlier fault reached the link (e2e
  waits for it before such an experiment); `link_baseline_lasts(...)`: until when nothing is owed if no fault
  comes meanwhile (e2e's look-ahead).
- For the report (which must not reach into the verifier's modules): `judged`,
  `load_run` and `RunData` (the run's records in DuckDB), `pairs`, the SQL
  predicates the invariants use (`IN_ZONE_SQL`, `HUB_VIOLATION_SQL`,
  `REQUEST_OK_SQL`) and the formatters `iso`, `seconds`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from harness.contract.rundir import VERDICT_FILE
from harness.errors import InputError
from harness.verify.invariants import DEFINITIONS, HUB_VIOLATION_SQL, IN_ZONE_SQL, REQUEST_OK_SQL, Checker
from harness.verify.penalty import fallback_penalty
from harness.verify.pending import LinkBaseline, Pending, link_baseline_lasts, link_baseline_owed, pending_recoveries
from harness.verify.rundata import RunData, load_run, pairs
from harness.verify.summary import print_summary
from harness.verify.verdict import (
    AVAILABILITY,
    CALL_GRAPH,
    CONFIG,
    COVERAGE,
    EXPERIMENT_RAN,
    FALLBACK,
    HUB_AND_SPOKE,
    INVARIANTS,
    LOCALITY,
    SCHEMA_PATH,
    SCHEMA_VERSION,
    SHARED_SERVICES,
    CheckResult,
    FaultResult,
    InvariantResult,
    LatencyStats,
    PairResult,
    RunInfo,
    Verdict,
    WindowResult,
    ZonePenalty,
    iso,
    seconds,
)


@contextlib.contextmanager
def judged(run_dir: Path | str, threads: int | None = None) -> Iterator[tuple[RunData, Verdict]]:
    """Load the run once, verify it, and lend the loaded run with its verdict to the caller (the report).

    The database is closed when the block ends; nothing else reloads or
    re-derives the records meanwhile (`verify` is this without the lending).
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise InputError(str(path), "", "run directory does not exist")
    run = load_run(path, threads=threads)
    try:
        verdict = Checker(run).verdict()
        verdict.fallback_penalty = fallback_penalty(run)  # information for the terminal and the report
        yield run, verdict
    finally:
        run.con.close()


def verify(run_dir: Path | str, threads: int | None = None) -> Verdict:
    """Check every invariant over the records in `run_dir` and return the verdict.

    `threads` caps DuckDB's worker threads (default: all cores).
    """
    with judged(run_dir, threads) as (_run, verdict):
        return verdict


def write_verdict(run_dir: Path | str, verdict: Verdict) -> Path:
    """Write `verdict.json` into the run directory (atomically: a reader never sees half)."""
    out = Path(run_dir) / VERDICT_FILE
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(verdict.to_json() + "\n", encoding="utf-8")
    tmp.replace(out)
    return out


def load_verdict(path: Path | str) -> Verdict:
    p = Path(path)
    try:
        return Verdict.from_dict(json.loads(p.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(str(p), "", f"not a readable verdict: {exc}") from None


__all__ = [
    "AVAILABILITY",
    "CALL_GRAPH",
    "CONFIG",
    "COVERAGE",
    "DEFINITIONS",
    "EXPERIMENT_RAN",
    "FALLBACK",
    "HUB_AND_SPOKE",
    "HUB_VIOLATION_SQL",
    "INVARIANTS",
    "IN_ZONE_SQL",
    "LOCALITY",
    "REQUEST_OK_SQL",
    "SCHEMA_PATH",
    "SCHEMA_VERSION",
    "SHARED_SERVICES",
    "CheckResult",
    "FaultResult",
    "InvariantResult",
    "LatencyStats",
    "LinkBaseline",
    "PairResult",
    "Pending",
    "RunData",
    "RunInfo",
    "Verdict",
    "WindowResult",
    "ZonePenalty",
    "iso",
    "judged",
    "link_baseline_lasts",
    "link_baseline_owed",
    "load_run",
    "load_verdict",
    "pairs",
    "pending_recoveries",
    "print_summary",
    "seconds",
    "verify",
    "write_verdict",
]
