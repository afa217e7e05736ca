"""The verdict: what `verify` concludes about one run directory.

Plain dataclasses rather than pydantic models: the verdict is produced by the
verifier only (never parsed from user input), and its JSON form is pinned by
`docs/verdict-schema.json` (versioned by `SCHEMA_VERSION`), which is what CI,
the report and post-mortem tooling consume. Keys are snake_case except the
top-level `schemaVersion`, which follows the other versioned files of the
project.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

SCHEMA_VERSION = "4"
# Package data (docs/verdict-schema.json links here): the schema ships with the verifier that writes verdicts
SCHEMA_PATH = Path(str(files("harness.verify").joinpath("verdict-schema.json")))

# Invariant names, in the order the design lists them (and the report shows them).
LOCALITY = "locality"
HUB_AND_SPOKE = "hub-and-spoke"
FALLBACK = "fallback"
SHARED_SERVICES = "shared-services"
AVAILABILITY = "availability"
CALL_GRAPH = "call-graph"
EXPERIMENT_RAN = "experiment-ran"
COVERAGE = "coverage"
CONFIG = "config"
INVARIANTS = (
    LOCALITY,
    HUB_AND_SPOKE,
    FALLBACK,
    SHARED_SERVICES,
    AVAILABILITY,
    CALL_GRAPH,
    EXPERIMENT_RAN,
    COVERAGE,
    CONFIG,
)

# Pair status values: "no-traffic" is neither a pass nor a fail by itself; the
# invariant decides (see invariants.py) whether missing traffic is fatal.
PASS = "pass"
FAIL = "fail"
NO_TRAFFIC = "no-traffic"
NOT_APPLICABLE = "n/a"
UNVERIFIED = "unverified"
MAX_SKIPPED_LISTED = 100


def iso(ts: float | None) -> str:
    """UTC ISO-8601 with milliseconds: messages must be readable next to pod logs."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"


def seconds(value: float | None, resolution: float | None = None) -> str:
    """A measured time with its resolution, e.g. `0.210 s ±0.030`.

    The resolution is the gap between the records that bound the instant, so
    printing milliseconds without it would claim a precision the traffic did
    not give. `-` when nothing was measured.
    """
    if value is None:
        return "-"
    if resolution is None:
        return f"{value:.3f} s"
    return f"{value:.3f} s ±{resolution:.3f}"


@dataclass
class PairResult:
    """One (caller zone, upstream) pair under one invariant (and, for fallback, one fault)."""

    caller_zone: str
    upstream: str
    status: str
    counts: dict[str, float | int | None] = field(default_factory=dict)
    first_offenders: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""
    fault: str | None = None


@dataclass
class WindowResult:
    """Availability over one time window (a fault's impact window or the steady state)."""

    window: str
    start: float | None
    end: float | None
    requests: int
    failed: int
    error_rate: float | None
    excluded_requests: int
    excluded_failed: int
    status: str
    message: str = ""
    first_offenders: list[dict[str, Any]] = field(default_factory=list)
    # failed user requests whose hop a kill cut off and whose retry Envoy's concurrent-retry limit refused
    # (flags UO and UC): reported, not in `failed` (DEFINITIONS["availability"])
    retry_overflow: int = 0
    # failed user requests with a failed hop of a failover pair before its failover instant (within maxFailoverS
    # of the inject) that spent its retries on the zone's own instance (URX, or UO with UF) or found no host (UH):
    # the failover's losses, reported, not in `failed` (DEFINITIONS["availability"])
    failover_under_way: int = 0
    # the window per zone users entered ({zone, requests, failed, error_rate, status}): a zone's users fail the
    # window when their failures are beyond the budget's chance, though the rate over every zone is within it
    by_zone: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CheckResult:
    """One piece of evidence an invariant judged that is not a zone pair or a time window.

    Examples: a preflight check (config), an experiment's journal
    (experiment-ran), a fault's coverage in one zone and window (coverage), a
    sidecar's counters to a host in another edge zone (hub-and-spoke), an
    undeclared call (call-graph).
    """

    subject: str
    status: str  # pass | fail | unverified | n/a
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class InvariantResult:
    name: str
    passed: bool
    message: str
    pairs: list[PairResult] = field(default_factory=list)
    windows: list[WindowResult] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)


@dataclass
class FaultResult:
    """Per-fault measurements (failover, loss, recovery) and the fault's own pass/fail."""

    fault: str
    kind: str
    zone: str
    services: list[str]
    entry_down: bool
    inject: float
    restore: float | None
    failover_s: float | None
    lost_requests: int
    lost_hops: int
    recovery_s: float | None
    passed: bool
    messages: list[str] = field(default_factory=list)
    failover_resolution_s: float | None = None
    recovery_resolution_s: float | None = None
    failover_end: float | None = None  # where the failover window ended (restore, or the upstream ready again)
    # a single point of failure the experiment declared, and its errors against the declared budget
    # (harness/verify/expected.py); None when the fault declared nothing
    expected: dict[str, Any] | None = None
    # when the fault took effect, from which failover_s counts: the inject, or later when its primitive took
    # its time to kill the pods (`CheckBase.effective_at`); None in verdicts written before it (the inject)
    effective_at: float | None = None


@dataclass
class RunInfo:
    run_dir: str
    topology: str
    region: str
    edition: str
    start: float | None
    end: float | None
    hops: int
    requests: int
    inventory_events: int
    chaos_records: int
    hops_resolved_from_inventory: int
    hops_unattributed: int
    slo: dict[str, float]
    definitions: dict[str, str]
    notes: list[str] = field(default_factory=list)
    partial: bool = False
    run_status: str | None = None  # run.json status (None: no run.json)
    stopped_at: str | None = None  # run.json stage when the run is partial
    hops_source: str = "none"  # accesslogs | hops.{parquet,jsonl} (observe, current) | hops.parquet | hops.jsonl | none
    accesslog_lines: int = 0
    inbound_lines: int = 0
    upstream_stats_records: int = 0
    readiness_events: bool = False
    skipped_records_total: int = 0
    skipped_records: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class LatencyStats:
    """Successful user requests of one window set: count and latency percentiles (ms)."""

    requests: int
    p50_ms: float | None
    p95_ms: float | None


@dataclass
class ZonePenalty:
    """One edge zone: in-zone vs served-from-the-Region latency, and the difference."""

    zone: str
    in_zone: LatencyStats
    fallback: LatencyStats
    penalty_p50_ms: float | None
    penalty_p95_ms: float | None
    fallback_windows: int
    fallback_s: float
    region_hops: int


@dataclass
class Verdict:
    run: RunInfo
    invariants: list[InvariantResult]
    faults: list[FaultResult]
    schema_version: str = SCHEMA_VERSION
    # information, never judged: what users paid while their zone was served from the Region
    fallback_penalty: list[ZonePenalty] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """A run passes only if every invariant and every fault passes."""
        return all(i.passed for i in self.invariants) and all(f.passed for f in self.faults)

    def invariant(self, name: str) -> InvariantResult:
        for inv in self.invariants:
            if inv.name == name:
                return inv
        raise KeyError(name)

    def fault(self, fault_id: str) -> FaultResult:
        for f in self.faults:
            if f.fault == fault_id:
                return f
        raise KeyError(fault_id)

    @property
    def failure_messages(self) -> list[str]:
        """Every failure message, invariants first: what the terminal prints after the tables.

        A fault's message already in a failed invariant's (a fallback pair's failure: its failover over the
        SLO, a declared cascade's zone not back) is not repeated under the fault: each failure is read once.
        One the invariant's summary left out ("and N more") still is.
        """
        shown = [i.message for i in self.invariants if not i.passed]
        out = list(shown)
        for f in self.faults:
            if not f.passed:
                out.extend(f"fault {f.fault}: {m}" for m in f.messages if not (m and any(m in s for s in shown)))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schemaVersion": self.schema_version,
            "passed": self.passed,
            "partial": self.run.partial,
            "run": asdict(self.run),
            "invariants": [asdict(i) for i in self.invariants],
            "faults": [asdict(f) for f in self.faults],
            "fallback_penalty": [asdict(p) for p in self.fallback_penalty],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        """Rebuild a verdict from its JSON form (report/junit of a copied run dir)."""
        if data.get("schemaVersion") != SCHEMA_VERSION:
            raise ValueError(
                f"unsupported verdict schemaVersion {data.get('schemaVersion')!r} (expected {SCHEMA_VERSION!r})"
            )
        invariants = [
            InvariantResult(
                name=i["name"],
                passed=i["passed"],
                message=i["message"],
                pairs=[PairResult(**p) for p in i.get("pairs", [])],
                windows=[WindowResult(**w) for w in i.get("windows", [])],
                checks=[CheckResult(**c) for c in i.get("checks", [])],
            )
            for i in data["invariants"]
        ]
        return cls(
            run=RunInfo(**data["run"]),
            invariants=invariants,
            faults=[FaultResult(**f) for f in data["faults"]],
            fallback_penalty=[
                ZonePenalty(
                    **{
                        **p,
                        "in_zone": LatencyStats(**p["in_zone"]),
                        "fallback": LatencyStats(**p["fallback"]),
                    }
                )
                for p in data.get("fallback_penalty", [])  # absent in verdicts written before it existed
            ],
        )
