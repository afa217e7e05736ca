"""Why a fault's failover or recovery time is "-": one short reason per empty cell.

A bare "-" in the fault table reads as "fine, nothing to see" or as "the
harness is broken", and an SRE cannot tell which without opening the report.
The verdict already holds the answer in structured form (the fault's kind,
its restore, and the `fallback` invariant's per-pair counts for that fault),
so the reason is derived from the verdict alone: the terminal and the report
can both print it, and a verdict copied from another machine gives the same
text. Nothing here parses message strings.

Two families of reasons, kept apart in the wording because they mean opposite
things for the verdict:
- ``n/a: ...`` nothing to measure by design (a slow link keeps traffic in the
  zone; a zone outage takes the callers down with their upstream);
- anything else (``unverified``, ``never ...``) is a measurement that should
  exist and does not, and the fault fails for it.
"""

from __future__ import annotations

from harness.verify.verdict import FAIL, UNVERIFIED, FaultResult, PairResult, Verdict

# Faults whose kind has no failover to the Region to measure, and why (FaultKind values).
NO_FAILOVER_BY_KIND = {
    "link-degraded": "n/a: traffic never left the zone (slow link, not down)",
    "zone-down": "n/a: the zone's callers are down with it",
    "partition": "n/a: the zone is cut off from the Region",
}


def fault_pairs(verdict: Verdict, fault: str) -> list[PairResult]:
    """The `fallback` invariant's (caller zone, upstream) pairs measured for one fault."""
    for inv in verdict.invariants:
        if inv.name == "fallback":
            return [p for p in inv.pairs if p.fault == fault]
    return []


def failover_reason(f: FaultResult, pairs: list[PairResult]) -> str | None:
    """Why `failover_s` is None (None when it was measured)."""
    if f.failover_s is not None:
        return None
    if f.kind in NO_FAILOVER_BY_KIND:
        return NO_FAILOVER_BY_KIND[f.kind]
    measured = [p for p in pairs if "hops_during" in p.counts]
    if not measured:
        if f.kind == "service-down":
            return "n/a: no mesh caller of it stays up in the zone"
        return f"n/a: no failover is measured for a {f.kind} fault"
    if any(not p.counts.get("hops_during") for p in measured):
        return "unverified: no traffic during the fault"
    return "never failed over to the Region"


def recovery_reason(f: FaultResult, pairs: list[PairResult]) -> str | None:
    """Why `recovery_s` is None (None when it was measured)."""
    if f.recovery_s is not None:
        return None
    if f.restore is None:
        return "never restored"
    measured = [p for p in pairs if "hops_after_restore" in p.counts]
    if not measured:
        return "n/a: no mesh call in the zone to come back"
    if any(not p.counts.get("hops_after_restore") for p in measured):
        failing = any(p.status in (FAIL, UNVERIFIED) for p in measured)
        return "unverified: no traffic after the restore" if failing else "n/a: no traffic after the restore"
    return "never recovered"


def cell(value: str, reason: str | None) -> str:
    """A fault-table cell: the measured value, or "-" followed by why."""
    return value if reason is None else f"- ({reason})"


def fault_reasons(verdict: Verdict) -> dict[str, tuple[str | None, str | None]]:
    """fault name -> (why no failover time, why no recovery time), None where the time was measured."""
    out: dict[str, tuple[str | None, str | None]] = {}
    for f in verdict.faults:
        pairs = fault_pairs(verdict, f.fault)
        out[f.fault] = (failover_reason(f, pairs), recovery_reason(f, pairs))
    return out
