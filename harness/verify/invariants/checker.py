"""`Checker`: every check over one loaded run, assembled into the verdict."""

from __future__ import annotations

from harness.verify import evidence, expected
from harness.verify.invariants.faults import FaultMeasurer
from harness.verify.invariants.routing import RoutingChecks
from harness.verify.invariants.sql import DEFINITIONS
from harness.verify.invariants.users import UserChecks
from harness.verify.verdict import (
    CONFIG,
    EXPERIMENT_RAN,
    FAIL,
    FALLBACK,
    MAX_SKIPPED_LISTED,
    PASS,
    UNVERIFIED,
    CheckResult,
    InvariantResult,
    RunInfo,
    Verdict,
)


class Checker(FaultMeasurer, RoutingChecks, UserChecks):
    """Runs every check over one loaded run; `verdict()` assembles the result."""

    def _document_invariant(self, name: str, result: tuple[list[str], list[CheckResult], str]) -> InvariantResult:
        failures, checks, ok_text = result
        return InvariantResult(name, not failures, self._summary(name, failures, ok_text), checks=checks)

    # -- assembly ------------------------------------------------------------
    def verdict(self) -> Verdict:
        fx = self.faults()
        locality = self.locality(fx.exclusions)
        hub = self.hub_and_spoke()
        shared = self.shared_services()
        availability = self.availability(fx.impact, fx.under_way)
        call_graph = self.call_graph()
        chaos_records = int(self._one("SELECT count(*) FROM chaos") or 0)
        ran = self._document_invariant(EXPERIMENT_RAN, evidence.experiment_ran(self.run, chaos_records))
        coverage = self.coverage()
        config = self._document_invariant(CONFIG, evidence.config(self.run))
        fb_fail = [p.message for p in fx.fallback_pairs if p.status in (FAIL, UNVERIFIED)]  # unverified fails
        fb_fail += [m for f in fx.results for m in f.messages if "no restore record" in m]
        outage_notes, outage_failures = self._unplanned_outages()
        fb_fail += outage_failures + fx.unrecovered
        n_measured = sum(1 for f in fx.results if f.failover_s is not None)
        fallback = InvariantResult(
            FALLBACK,
            not fb_fail,
            self._summary(
                FALLBACK,
                fb_fail,
                f"{len(fx.results)} faults: {n_measured} failovers within {self.slo.max_failover_s:g}s, "
                f"recoveries within {self.slo.max_recovery_s:g}s",
            ),
            pairs=fx.fallback_pairs,
        )
        # a fault also fails when its own availability window or its coverage does
        by_name = {w.window: w for w in availability.windows}
        for fr in fx.results:
            w = by_name.get(f"fault {fr.fault}")
            if w is not None and w.status != PASS:
                fr.passed = False
                fr.messages.append(w.message)
            for c in coverage.checks:
                if c.detail.get("fault") == fr.fault and c.status == UNVERIFIED:
                    fr.passed = False
                    fr.messages.append(c.message)
        counts = self.con.execute(
            "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM inventory), "
            "(SELECT count(*) FROM hops WHERE resolved), "
            "(SELECT count(*) FROM hops WHERE coalesce(upstream_host, '') <> '' AND serving_zone IS NULL), "
            "(SELECT count(*) FROM upstream_stats)"
        ).fetchone()
        assert counts is not None
        notes = list(self.run.notes) + outage_notes
        for fr, f in zip(fx.results, self.run.faults, strict=True):
            if f.fault in self.declared:  # the single point of failure and its errors, stated pass or fail
                fr.expected = self.declared[f.fault]
                notes.insert(0, expected.note(f, fr.expected))
        if counts[3]:
            notes.append(f"{counts[3]} hops have an upstream host that no inventory record explains (unattributed)")
        if not self.run.entrypoints_present:
            notes.append("no entrypoints.jsonl: requests at a down entry point cannot be told apart")
        skipped = self.run.skipped
        by_file: dict[str, list[int]] = {}
        for s in skipped:
            by_file.setdefault(s.file, []).append(s.line)
        for fname, lines in by_file.items():
            shown = ", ".join(str(n) for n in lines[:10]) + (" ..." if len(lines) > 10 else "")
            notes.append(f"{fname}: {len(lines)} corrupt or truncated line(s) skipped (line {shown})")
        meta = self.run.meta
        if meta.partial:
            notes.insert(
                0,
                f"partial run: run.json says status {meta.status or '?'} at stage {meta.stage or '?'}"
                f"{'' if meta.ended is not None else ', never ended'}; judged on what was recorded",
            )
        hb = self.run.hops_build
        info = RunInfo(
            run_dir=str(self.run.run_dir),
            topology=self.t.name,
            region=self.t.region,
            edition=self.t.edition.value,
            start=self.run.start,
            end=self.run.end,
            hops=self.total_hops,
            requests=int(counts[0]),
            inventory_events=int(counts[1]),
            chaos_records=chaos_records,
            hops_resolved_from_inventory=int(counts[2]),
            hops_unattributed=int(counts[3]),
            slo={
                "inZoneShare": self.slo.in_zone_share,
                "errorBudget": self.slo.error_budget,
                "maxFailoverS": self.slo.max_failover_s,
                "maxRecoveryS": self.slo.max_recovery_s,
            },
            definitions=dict(DEFINITIONS),
            notes=notes,
            partial=meta.partial,
            run_status=meta.status if meta.present else None,
            stopped_at=meta.stage if meta.partial else None,
            hops_source=self.run.hops_source,
            accesslog_lines=hb.accesslog_lines if hb else 0,
            inbound_lines=hb.inbound_lines if hb else 0,
            upstream_stats_records=int(counts[4]),
            readiness_events=self.run.readiness_events,
            skipped_records_total=len(skipped),
            skipped_records=[
                {"file": s.file, "line": s.line, "reason": s.reason} for s in skipped[:MAX_SKIPPED_LISTED]
            ],
        )
        return Verdict(
            run=info,
            invariants=[locality, hub, fallback, shared, availability, call_graph, ran, coverage, config],
            faults=fx.results,
        )
