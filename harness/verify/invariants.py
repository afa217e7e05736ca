"""The five routing invariants and the per-fault measurements, as DuckDB queries.

Definitions (they are also written into every verdict, `run.definitions`, so a
reader of a copied verdict does not need this file):

- A hop *failed* when it has no upstream host, a 5xx status, or (TCP, status 0)
  an Envoy response flag. A hop is *served in* the zone of the pod behind its
  `upstream_host` -- also when it failed: a failed connection to another Local
  Zone is still an attempt to cross the hub.
- *Local* for an edge caller is its own zone; for a Region caller it is the
  whole Region (any availability zone): Consul CE has no locality-aware routing
  between AZs, and AZ-to-AZ traffic is not what this harness guards.
- Locality: per (caller zone, edge-placed upstream), over hops *outside* the
  pair's fault windows, in-zone hops / hops with an upstream host >= SLO
  `inZoneShare`. Hops without an upstream host are failures: they count
  against availability, not locality. Hops whose host cannot be attributed to
  a zone count as out of zone (the verifier cannot prove otherwise). A fault
  window of a pair runs from the inject to restore + the measured recovery (or
  + `maxRecoveryS` when recovery was not measured); service-down excludes the
  listed services' pairs, zone-down and partition all pairs of the zone (a
  partitioned zone's pods fail on their Region-only dependencies and may stay
  outlier-ejected for a while after the heal); link-degraded excludes nothing:
  under latency, traffic must stay in-zone.
- Hub-and-spoke: zero tolerance, in every window. A hop of an edge caller
  served in an edge zone other than its own, or of a Region caller served in an
  edge zone (or in a zone the topology does not know) fails it.
- Fallback, per service-down fault of (Z, S) and pair (Z, S) for callers of S
  in Z that are not themselves down: failover instant F = the first successful
  Region-served hop after the last successful hop served outside the Region,
  within [inject, restore]; `failover_s` = F - inject. Failed hops are neutral
  for F and counted as lost. Recovery, for every pair the fault touched
  (service-down: those pairs; zone-down, partition, link-degraded: every pair
  of the zone with an edge-placed upstream, the only ones with an in-zone
  service to come back to): R = the first successful hop served where it belongs (in-zone,
  or the Region for Region callers and Region-placed upstreams) after the last
  successful hop served elsewhere, within [restore, next fault in the zone or
  end of run]; `recovery_s` = R - restore. No hop at all for the pair during
  the fault (or after the restore) is a failure ("no traffic": unverified is
  not a pass); a fault without a restore record never recovers.
- Shared services: hops to Region-placed upstreams must be served in an
  availability zone (zero tolerance; unattributed hosts count as violations).
- Availability: per fault, failed user requests / user requests during
  [inject, restore + recovery] <= `errorBudget`, and the same over the steady
  state (time outside every fault window). Requests entering a zone whose
  entry point a fault took down (`entry_down`) are excluded during that
  fault's window, and reported. A window without requests fails ("no traffic").
- Lost requests / hops of a fault: failed requests entering the fault's zone,
  and failed hops of its affected pairs, from inject to F (service-down with
  mesh callers) or to the end of the fault's window (other faults, or when F
  never came).
- Pairs without any traffic: a pair whose caller zone is an edge zone fails
  ("no traffic": the run did not exercise the edge); a Region caller pair
  without traffic is reported as "no-traffic" and does not fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.verify.model import (
    AVAILABILITY,
    FAIL,
    FALLBACK,
    HUB_AND_SPOKE,
    LOCALITY,
    NO_TRAFFIC,
    PASS,
    SHARED_SERVICES,
    FaultResult,
    InvariantResult,
    PairResult,
    RunInfo,
    Verdict,
    WindowResult,
    iso,
)
from harness.verify.records import Fault, RunData, pairs, zone_is_edge

MAX_OFFENDERS = 5
MAX_MESSAGES = 3
INF = 1e300

HOP_FIELDS = (
    "ts",
    "caller_pod",
    "caller_service",
    "caller_zone",
    "upstream",
    "upstream_host",
    "serving_pod",
    "serving_zone",
    "status",
    "flags",
    "duration_ms",
)
REQUEST_FIELDS = ("ts", "zone", "name", "status", "latency_ms", "error")

DEFINITIONS = {
    "hop_failed": "no upstream host, status >= 500, or status 0 with an Envoy response flag",
    "local": "edge caller: its own zone; Region caller: any availability zone",
    "locality": "in-zone hops / hops with an upstream host, outside the pair's fault windows, >= inZoneShare",
    "hub_and_spoke": "no hop of an edge caller served in another edge zone, "
    "none of a Region caller served in an edge zone",
    "failover_s": "first successful Region-served hop after the last successful non-Region hop, minus inject; "
    "the window ends at the restore or at the first hop served in-zone by a replacement pod, whichever is first",
    "recovery_s": "first successful hop served where it belongs after the last misplaced successful hop, minus restore",
    "lost": "failed requests entering the zone and failed hops of the affected pairs, from inject to failover "
    "(or to the end of the fault window)",
    "availability": "failed / all user requests per fault window [inject, restore + recovery] and in steady state, "
    "excluding requests entering zones whose entry point is down",
    "no_traffic": "a fault or edge pair without records is a failure (unverified), a Region pair is only reported",
    "shared_services": "hops to Region-only services are served in the Region and no pod of one ran in an edge zone "
    "(inventory); a TCP pair with no hops is reported, not failed (Envoy logs TCP hops when connections close)",
}

# SQL: the hop is served in the caller's local zone (see module docstring).
IN_ZONE_SQL = "(CASE WHEN caller_kind = 'region' THEN serving_kind = 'region' ELSE serving_zone = caller_zone END)"
HUB_VIOLATION_SQL = (
    "(serving_zone IS NOT NULL AND ("
    "(caller_kind <> 'region' AND serving_zone <> caller_zone AND serving_kind <> 'region')"
    " OR (caller_kind = 'region' AND serving_kind <> 'region')))"
)


def hop_text(h: dict[str, Any]) -> str:
    """One offending hop, as a person reads it next to the pod logs."""
    host = h.get("upstream_host") or "(no upstream host)"
    where = h.get("serving_zone") or "unknown zone"
    pod = h.get("serving_pod") or "?"
    return (
        f"{iso(h.get('ts'))}: {h.get('caller_pod') or h.get('caller_service') or '?'} ({h.get('caller_zone')}) -> "
        f"{h.get('upstream')} at {host} ({pod} in {where}), status {h.get('status')} {h.get('flags') or '-'}"
    )


def request_text(r: dict[str, Any]) -> str:
    text = f"{iso(r.get('ts'))}: {r.get('name')} entering {r.get('zone')}, status {r.get('status')}"
    return f"{text} {r['error']}" if r.get("error") else text


@dataclass
class _Window:
    """A measurement over one pair in one time range: first good instant and losses."""

    hops: int = 0
    failed: int = 0
    good: int = 0
    last_misplaced: float | None = None
    instant: float | None = None
    lost: int = 0
    offenders: list[dict[str, Any]] = field(default_factory=list)


class Checker:
    """Runs every check over one loaded run; `verdict()` assembles the result."""

    def __init__(self, run: RunData) -> None:
        self.run = run
        self.con = run.con
        self.t = run.topology
        self.slo = run.topology.slo
        self.pairs = pairs(run.topology)
        self.run_end = run.end if run.end is not None else 0.0
        self.total_hops = int(self._one("SELECT count(*) FROM hops") or 0)

    # -- helpers -------------------------------------------------------------
    def _one(self, sql: str, params: list[Any] | None = None) -> Any:
        row = self.con.execute(sql, params or []).fetchone()
        return None if row is None else row[0]

    def _hops(
        self, where: str, params: list[Any], limit: int = MAX_OFFENDERS, table: str = "hops"
    ) -> list[dict[str, Any]]:
        cols = ", ".join(HOP_FIELDS)
        rows = self.con.execute(
            f"SELECT {cols} FROM {table} WHERE {where} ORDER BY ts LIMIT {int(limit)}", params
        ).fetchall()
        return [dict(zip(HOP_FIELDS, r, strict=True)) for r in rows]

    def _no_traffic_fails(self, caller_zone: str) -> bool:
        return zone_is_edge(self.t, caller_zone)

    @staticmethod
    def _summary(name: str, failures: list[str], ok_text: str) -> str:
        if not failures:
            return f"{name}: {ok_text}"
        more = f" (and {len(failures) - MAX_MESSAGES} more)" if len(failures) > MAX_MESSAGES else ""
        return "; ".join(failures[:MAX_MESSAGES]) + more

    # -- per-fault measurement ----------------------------------------------
    def _measure(self, zone: str, upstream: str, callers: list[str], lo: float, hi: float, good_sql: str) -> _Window:
        """First instant after which successful hops are all `good_sql`, in [lo, hi]."""
        params = [zone, upstream, callers, lo, hi]
        base = "caller_zone = ? AND upstream = ? AND list_contains(?, caller_service) AND ts >= ? AND ts <= ?"
        row = self.con.execute(
            f"""
            WITH w AS (SELECT ts, ok, ({good_sql}) AS good FROM fhops WHERE {base}),
                 b AS (SELECT max(ts) FILTER (WHERE ok AND NOT coalesce(good, false)) AS last_bad FROM w),
                 f AS (SELECT min(ts) FILTER (WHERE ok AND good AND ts > coalesce((SELECT last_bad FROM b), -{INF}))
                       AS instant FROM w)
            SELECT count(*), count(*) FILTER (WHERE NOT ok), count(*) FILTER (WHERE ok AND good),
                   (SELECT last_bad FROM b), (SELECT instant FROM f),
                   count(*) FILTER (WHERE NOT ok AND ts <= coalesce((SELECT instant FROM f), {INF}))
            FROM w
            """,
            params,
        ).fetchone()
        assert row is not None
        w = _Window(int(row[0]), int(row[1]), int(row[2]), row[3], row[4], int(row[5]))
        until = w.instant if w.instant is not None else hi
        w.offenders = self._hops(
            f"{base} AND ts <= ? AND NOT (ok AND coalesce(({good_sql}), false))", [*params, until], table="fhops"
        )
        return w

    def _fault_hops(self) -> None:
        """Copy the hops of the faulted zones, from inject to the next fault or the end, into `fhops`.

        Every per-fault measurement reads only these (one scan of `hops`
        instead of several per fault and pair). Windows of one zone are merged
        first so that no hop is copied twice.
        """
        spans = [
            (f.zone, "", f.inject, self._next_fault_in_zone(f, f.restore if f.restore is not None else f.inject))
            for f in self.run.faults
        ]
        merged = merge_intervals(spans)
        cond = spans_sql("caller_zone", [(z, lo, hi) for z, _, lo, hi in merged])
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE fhops AS SELECT * FROM hops WHERE {cond}")

    def _expected_sql(self, zone: str, upstream: str) -> str:
        try:
            edge_up = self.t.service(upstream).placement.value == "edge"
        except KeyError:
            edge_up = True
        if zone_is_edge(self.t, zone) and edge_up:
            return "serving_zone = caller_zone"
        return "serving_kind = 'region'"

    def _failover_end(self, f: Fault, upstream: str, fault_end: float) -> float:
        """Where the failover window ends: the restore, or earlier when a replacement already serves.

        A restore is recorded when the harness *sees* the replacement Ready,
        which can be a little after the mesh has started sending it traffic.
        Hops served in-zone by a pod that did not exist at injection are the
        recovery, not a failed failover, so the failover window stops at the
        first of them.
        """
        back = self._one(
            """
            SELECT min(h.ts) FROM fhops h JOIN inventory i ON i.pod = h.serving_pod AND i.event = 'added'
            WHERE h.caller_zone = ? AND h.upstream = ? AND h.ok AND h.serving_zone = h.caller_zone
              AND i.ts > ? AND h.ts >= ? AND h.ts <= ?
            """,
            [f.zone, upstream, f.inject, f.inject, fault_end],
        )
        return min(fault_end, float(back) - 1e-6) if back is not None else fault_end

    def _edge_pairs(self, zone_pairs: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
        """Pairs whose upstream is edge-placed: only they have an in-zone service to recover to.

        A Region-only upstream (postgres) is served from the Region before, during
        and after any fault (the shared-services invariant checks that); its TCP
        hops are logged only when a pooled connection closes, so "no traffic after
        restore" would say nothing about recovery.
        """
        return [(u, c) for u, c in zone_pairs if self._placement(u) != "region"]

    def _next_fault_in_zone(self, f: Fault, after: float) -> float:
        nxt = [g.inject for g in self.run.faults if g.zone == f.zone and g.fault != f.fault and g.inject > after]
        return min(nxt, default=max(self.run_end, after))

    def faults(
        self,
    ) -> tuple[list[FaultResult], list[PairResult], list[tuple[str, str, float, float]], list[tuple[Fault, float]]]:
        """Measure each fault; return results, fallback pairs, locality exclusions and impact windows."""
        self._fault_hops()
        results: list[FaultResult] = []
        fb_pairs: list[PairResult] = []
        exclusions: list[tuple[str, str, float, float]] = []
        impact: list[tuple[Fault, float]] = []
        for f in self.run.faults:
            zone_pairs = [(u, list(c)) for (z, u, c) in self.pairs if z == f.zone]
            down = set(f.services)
            fault_end = f.restore if f.restore is not None else max(self.run_end, f.inject)
            messages: list[str] = []
            ok = True
            failover_pairs: list[tuple[str, list[str]]] = []
            if f.kind == "service-down":
                for u, callers in zone_pairs:
                    alive = [c for c in callers if c not in down]
                    if u in down and alive:
                        failover_pairs.append((u, alive))
                recovery_pairs = failover_pairs
                excluded_upstreams = [u for u, _ in zone_pairs if u in down]
                if not failover_pairs:
                    messages.append(
                        f"no mesh caller of {', '.join(sorted(down)) or 'any service'} stays up in {f.zone}: "
                        "failover not applicable"
                    )
            elif f.kind in ("zone-down", "partition"):
                # A partitioned zone is impaired as a whole: its Region-only dependencies are out
                # of reach, its pods answer 5xx, and outlier detection may eject them for a while
                # after the heal. Locality is not judged then; recovery is.
                recovery_pairs = self._edge_pairs(zone_pairs)
                excluded_upstreams = [u for u, _ in zone_pairs]
            else:
                recovery_pairs = self._edge_pairs(zone_pairs)
                excluded_upstreams = []

            failover_s: float | None = None
            failover_instants: list[float] = []
            lost_hops = 0
            pair_results: dict[str, PairResult] = {}
            for u, callers in failover_pairs:
                w = self._measure(
                    f.zone, u, callers, f.inject, self._failover_end(f, u, fault_end), "serving_kind = 'region'"
                )
                pr = PairResult(
                    caller_zone=f.zone,
                    upstream=u,
                    status=PASS,
                    fault=f.fault,
                    counts={
                        "hops_during": w.hops,
                        "failed_during": w.failed,
                        "region_served_ok": w.good,
                        "failover_s": None if w.instant is None else w.instant - f.inject,
                        "lost_hops": w.lost,
                    },
                    first_offenders=w.offenders,
                )
                pair_results[u] = pr
                lost_hops += w.lost
                first = f", first at {hop_text(w.offenders[0])}" if w.offenders else ""
                if w.hops == 0:
                    pr.status = FAIL
                    pr.message = f"fallback: {f.zone} -> {u}: no traffic during fault {f.fault}: failover unverified"
                elif w.instant is None:
                    pr.status = FAIL
                    misplaced = (
                        f"last served outside the Region at {iso(w.last_misplaced)}, " if w.last_misplaced else ""
                    )
                    pr.message = (
                        f"fallback: {f.zone} -> {u}: no failover to the Region during fault {f.fault} "
                        f"({w.hops} hops, {w.failed} failed, {misplaced}{w.good} Region-served){first}"
                    )
                else:
                    d = w.instant - f.inject
                    failover_instants.append(w.instant)
                    if d > self.slo.max_failover_s:
                        pr.status = FAIL
                        pr.message = (
                            f"fallback: {f.zone} -> {u}: failover took {d:.2f}s > maxFailoverS "
                            f"{self.slo.max_failover_s:g}s in fault {f.fault}{first}"
                        )
                if pr.status == FAIL:
                    ok = False
                    messages.append(pr.message)
            if failover_pairs and len(failover_instants) == len(failover_pairs):
                failover_s = max(failover_instants) - f.inject

            # recovery
            recovery_s: float | None = None
            recovery_values: dict[str, float | None] = {}
            if f.restore is None:
                ok = False
                messages.append(
                    f"fallback: {f.zone}: fault {f.fault} never recovers: no restore record "
                    f"(injected at {iso(f.inject)}, run ends {iso(self.run_end)})"
                )
                for u, _ in recovery_pairs:
                    recovery_values[u] = None
            else:
                hi = self._next_fault_in_zone(f, f.restore)
                for u, callers in recovery_pairs:
                    w = self._measure(f.zone, u, callers, f.restore, hi, self._expected_sql(f.zone, u))
                    pr = pair_results.get(u) or PairResult(
                        caller_zone=f.zone, upstream=u, status=PASS, fault=f.fault, counts={}, first_offenders=[]
                    )
                    pair_results[u] = pr
                    rec = None if w.instant is None else w.instant - f.restore
                    recovery_values[u] = rec
                    pr.counts.update(
                        {"hops_after_restore": w.hops, "failed_after_restore": w.failed, "recovery_s": rec}
                    )
                    msg = ""
                    if w.hops == 0:
                        if self._no_traffic_fails(f.zone):
                            msg = (
                                f"fallback: {f.zone} -> {u}: fault {f.fault} never recovers: no traffic after "
                                f"restore at {iso(f.restore)} (recovery unverified)"
                            )
                    elif rec is None:
                        first = f", first at {hop_text(w.offenders[0])}" if w.offenders else ""
                        msg = (
                            f"fallback: {f.zone} -> {u}: fault {f.fault} never recovers: no steady successful "
                            f"{'in-zone' if 'caller_zone' in self._expected_sql(f.zone, u) else 'Region'} service "
                            f"after restore at {iso(f.restore)} ({w.hops} hops, {w.failed} failed){first}"
                        )
                    elif rec > self.slo.max_recovery_s:
                        first = f", first at {hop_text(w.offenders[0])}" if w.offenders else ""
                        msg = (
                            f"fallback: {f.zone} -> {u}: recovery took {rec:.2f}s > maxRecoveryS "
                            f"{self.slo.max_recovery_s:g}s after fault {f.fault}{first}"
                        )
                    if msg:
                        pr.status = FAIL
                        pr.message = f"{pr.message}; {msg}" if pr.message else msg
                        if not pr.first_offenders:
                            pr.first_offenders = w.offenders
                        ok = False
                        messages.append(msg)
                measured = [v for v in recovery_values.values() if v is not None]
                if recovery_values and len(measured) == len(recovery_values):
                    recovery_s = max(measured)

            # the fault's impact window: restore + recovery (or the SLO bound when unmeasured)
            if f.restore is None:
                impact_end = max(self.run_end, f.inject)
            elif recovery_s is not None:
                impact_end = f.restore + recovery_s
            elif recovery_values:
                impact_end = f.restore + self.slo.max_recovery_s
            else:
                impact_end = f.restore
            impact.append((f, impact_end))
            for u in excluded_upstreams:
                rec = recovery_values.get(u)
                end = INF if f.restore is None else f.restore + (rec if rec is not None else self.slo.max_recovery_s)
                exclusions.append((f.zone, u, f.inject, end))

            # losses
            if failover_pairs:
                lost_until = f.inject + failover_s if failover_s is not None else fault_end
            else:
                lost_until = impact_end
                for u, callers in recovery_pairs:
                    lost_hops += int(
                        self._one(
                            "SELECT count(*) FROM fhops WHERE caller_zone = ? AND upstream = ? AND "
                            "list_contains(?, caller_service) AND ts >= ? AND ts <= ? AND NOT ok",
                            [f.zone, u, callers, f.inject, lost_until],
                        )
                        or 0
                    )
            lost_requests = int(
                self._one(
                    f"SELECT count(*) FROM requests WHERE zone = ? AND ts >= ? AND ts <= ? AND NOT {REQUEST_OK_SQL}",
                    [f.zone, f.inject, lost_until],
                )
                or 0
            )
            fb_pairs.extend(pair_results.values())
            results.append(
                FaultResult(
                    fault=f.fault,
                    kind=f.kind,
                    zone=f.zone,
                    services=list(f.services),
                    entry_down=f.entry_down,
                    inject=f.inject,
                    restore=f.restore,
                    failover_s=failover_s,
                    lost_requests=lost_requests,
                    lost_hops=lost_hops,
                    recovery_s=recovery_s,
                    passed=ok,
                    messages=messages,
                )
            )
        return results, fb_pairs, exclusions, impact

    # -- invariants ----------------------------------------------------------
    def locality(self, exclusions: list[tuple[str, str, float, float]]) -> InvariantResult:
        self.con.execute("CREATE OR REPLACE TEMP TABLE loc_excl (zone VARCHAR, upstream VARCHAR, lo DOUBLE, hi DOUBLE)")
        merged = merge_intervals(exclusions)
        if merged:
            # merged, so a hop matches at most one window and the LEFT JOIN below never duplicates it
            self.con.executemany("INSERT INTO loc_excl VALUES (?, ?, ?, ?)", [list(e) for e in merged])
        rows = self.con.execute(
            f"""
            SELECT h.caller_zone, h.upstream, count(*),
                   count(*) FILTER (WHERE e.zone IS NOT NULL),
                   count(*) FILTER (WHERE e.zone IS NULL AND coalesce(h.upstream_host, '') = ''),
                   count(*) FILTER (WHERE e.zone IS NULL AND coalesce(h.upstream_host, '') <> ''),
                   count(*) FILTER (WHERE e.zone IS NULL AND coalesce({IN_ZONE_SQL}, false)),
                   count(*) FILTER (WHERE e.zone IS NULL AND coalesce(h.upstream_host, '') <> ''
                                     AND h.serving_zone IS NULL)
            FROM hops h
            LEFT JOIN loc_excl e ON e.zone = h.caller_zone AND e.upstream = h.upstream AND h.ts BETWEEN e.lo AND e.hi
            WHERE h.placement = 'edge'
            GROUP BY h.caller_zone, h.upstream
            """
        ).fetchall()
        return self._locality_result(rows)

    def _locality_result(self, rows: list[tuple[Any, ...]]) -> InvariantResult:
        data = {(r[0], r[1]): r[2:] for r in rows}
        keys = [(z, u) for (z, u, _) in self.pairs if self._placement(u) == "edge"]
        keys += sorted(k for k in data if k not in keys)
        results: list[PairResult] = []
        failures: list[str] = []
        shares: list[float] = []
        for z, u in keys:
            total, excluded, no_host, served, in_zone, unattributed = data.get((z, u), (0, 0, 0, 0, 0, 0))
            share = in_zone / served if served else None
            pr = PairResult(
                caller_zone=z,
                upstream=u,
                status=PASS,
                counts={
                    "hops": total,
                    "excluded_fault_windows": excluded,
                    "failed_no_host": no_host,
                    "considered": served,
                    "in_zone": in_zone,
                    "out_of_zone": served - in_zone,
                    "unattributed": unattributed,
                    "in_zone_share": share,
                },
            )
            if total == 0:
                pr.status = NO_TRAFFIC
                if self._no_traffic_fails(z):
                    pr.status = FAIL
                    pr.message = f"locality: {z} -> {u}: no traffic (locality unverified)"
            elif served - in_zone > 0:
                pr.first_offenders = self._offending_locality(z, u)
            if share is not None:
                shares.append(share)
                if share < self.slo.in_zone_share:
                    pr.status = FAIL
                    first = f", first at {hop_text(pr.first_offenders[0])}" if pr.first_offenders else ""
                    pr.message = (
                        f"locality: {z} -> {u}: {share * 100:.2f}% in-zone ({in_zone}/{served}) < "
                        f"{self.slo.in_zone_share * 100:g}% while the zone's {u} was healthy, "
                        f"{served - in_zone} hops served elsewhere{first}"
                    )
            if pr.status == FAIL:
                failures.append(pr.message)
            results.append(pr)
        if self.total_hops == 0:
            failures.insert(0, "locality: no hops recorded (hops.jsonl missing or empty): locality unverified")
        low = f" (lowest {min(shares) * 100:.2f}%)" if shares else ""
        msg = self._summary(
            LOCALITY, failures, f"{len(results)} pairs >= {self.slo.in_zone_share * 100:g}% in-zone{low}"
        )
        return InvariantResult(LOCALITY, not failures, msg, pairs=results)

    def _offending_locality(self, z: str, u: str) -> list[dict[str, Any]]:
        return self._hops(
            f"caller_zone = ? AND upstream = ? AND coalesce(upstream_host, '') <> '' "
            f"AND NOT coalesce({IN_ZONE_SQL}, false) "
            "AND NOT EXISTS (SELECT 1 FROM loc_excl e WHERE e.zone = hops.caller_zone AND e.upstream = hops.upstream "
            "AND hops.ts BETWEEN e.lo AND e.hi)",
            [z, u],
        )

    def _protocol(self, u: str) -> str:
        try:
            return self.t.service(u).protocol
        except KeyError:
            return "http"

    def _placement(self, u: str) -> str:
        try:
            return self.t.service(u).placement.value
        except KeyError:
            return "unknown"

    def hub_and_spoke(self) -> InvariantResult:
        rows = self.con.execute(
            f"""
            SELECT caller_zone, upstream, serving_zone, count(*) AS n
            FROM hops WHERE {HUB_VIOLATION_SQL} GROUP BY ALL ORDER BY min(ts)
            """
        ).fetchall()
        totals = {
            (r[0], r[1]): r[2]
            for r in self.con.execute("SELECT caller_zone, upstream, count(*) FROM hops GROUP BY ALL").fetchall()
        }
        by_pair: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for cz, u, sz, n in rows:
            by_pair.setdefault((cz, u), []).append((sz, int(n)))
        failures: list[str] = []
        results: list[PairResult] = []
        keys = [(z, u) for (z, u, _) in self.pairs]
        keys += sorted(k for k in totals if k not in keys)
        for z, u in keys:
            viol = by_pair.get((z, u), [])
            n_viol = sum(n for _, n in viol)
            pr = PairResult(
                caller_zone=z,
                upstream=u,
                status=PASS if totals.get((z, u), 0) else NO_TRAFFIC,
                counts={"hops": totals.get((z, u), 0), "violations": n_viol},
            )
            if viol:
                pr.status = FAIL
                pr.first_offenders = self._hops(f"caller_zone = ? AND upstream = ? AND {HUB_VIOLATION_SQL}", [z, u])
                parts = []
                for sz, n in viol:
                    first = self._hops(
                        f"caller_zone = ? AND upstream = ? AND serving_zone = ? AND {HUB_VIOLATION_SQL}", [z, u, sz], 1
                    )
                    parts.append(f"hub-and-spoke: {z} -> {sz}: {n} hops to {u}, first at {hop_text(first[0])}")
                pr.message = "; ".join(parts)
                failures.extend(parts)
            results.append(pr)
        if self.total_hops == 0:
            failures.insert(0, "hub-and-spoke: no hops recorded (hops.jsonl missing or empty): unverified")
        msg = self._summary(
            HUB_AND_SPOKE,
            failures,
            f"no hop crossed between edge zones or from the Region to an edge zone ({self.total_hops} hops)",
        )
        return InvariantResult(HUB_AND_SPOKE, not failures, msg, pairs=results)

    def shared_services(self) -> InvariantResult:
        viol = "(serving_kind IS NOT NULL AND serving_kind <> 'region')"
        rows = self.con.execute(
            f"""
            SELECT caller_zone, upstream, count(*),
                   count(*) FILTER (WHERE serving_kind = 'region'),
                   count(*) FILTER (WHERE {viol}),
                   count(*) FILTER (WHERE NOT ok)
            FROM hops WHERE placement = 'region' GROUP BY ALL
            """
        ).fetchall()
        data = {(r[0], r[1]): r[2:] for r in rows}
        keys = [(z, u) for (z, u, _) in self.pairs if self._placement(u) == "region"]
        keys += sorted(k for k in data if k not in keys)
        failures: list[str] = []
        results: list[PairResult] = []
        for z, u in keys:
            total, region, elsewhere, failed = data.get((z, u), (0, 0, 0, 0))
            pr = PairResult(
                caller_zone=z,
                upstream=u,
                status=PASS,
                counts={"hops": total, "served_region": region, "served_elsewhere": elsewhere, "failed": failed},
            )
            if total == 0:
                pr.status = NO_TRAFFIC
                # Envoy logs a TCP hop when its connection closes: a pooled connection kept open for
                # the whole run leaves no record, so silence is reported for TCP, not failed (the
                # placement check below still sees where the service ran).
                if self._no_traffic_fails(z) and self._protocol(u) != "tcp":
                    pr.status = FAIL
                    pr.message = f"shared-services: {z} -> {u}: no traffic (unverified)"
            if elsewhere:
                pr.status = FAIL
                pr.first_offenders = self._hops(f"caller_zone = ? AND upstream = ? AND {viol}", [z, u])
                zones = sorted({h["serving_zone"] or "unknown zone" for h in pr.first_offenders})
                pr.message = (
                    f"shared-services: {z} -> {u}: {elsewhere} hops to Region-only {u} served outside the Region "
                    f"({', '.join(zones)}), first at {hop_text(pr.first_offenders[0])}"
                )
            if pr.status == FAIL:
                failures.append(pr.message)
            results.append(pr)
        # Where Region-only services ran, from the inventory: a pod of one in an edge zone can serve
        # hops that pooled TCP connections never log, so its placement alone is a violation.
        misplaced = self.con.execute(
            """
            SELECT i.pod, i.service, i.zone, min(i.ts) FROM inventory i
            JOIN services s ON s.name = i.service JOIN zones z ON z.name = i.zone
            WHERE i.event = 'added' AND s.placement = 'region' AND z.kind <> 'region'
            GROUP BY ALL ORDER BY 4
            """
        ).fetchall()
        if misplaced:
            pod, svc, zone, ts = misplaced[0]
            failures.append(
                f"shared-services: {len(misplaced)} pod(s) of Region-only services ran outside the Region, "
                f"first {pod} ({svc}) in {zone} at {iso(ts)}"
            )
        if self.total_hops == 0:
            failures.insert(0, "shared-services: no hops recorded (hops.jsonl missing or empty): unverified")
        msg = self._summary(SHARED_SERVICES, failures, "every hop to a Region-only service was served in the Region")
        return InvariantResult(SHARED_SERVICES, not failures, msg, pairs=results)

    def availability(self, impact: list[tuple[Fault, float]]) -> InvariantResult:
        self.con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE req_marked AS
            SELECT r.*, NOT {REQUEST_OK_SQL} AS failed,
                   {spans_sql("zone", [(f.zone, f.inject, hi) for f, hi in impact if f.entry_down])} AS excluded,
                   {spans_sql(None, [("", f.inject, hi) for f, hi in impact])} AS in_fault
            FROM requests r
            """
        )
        windows: list[WindowResult] = []
        budget = self.slo.error_budget
        for f, hi in impact:
            windows.append(self._window(f"fault {f.fault}", f.inject, hi, "ts BETWEEN ? AND ?", [f.inject, hi]))
        windows.append(self._window("steady state", None, None, "NOT in_fault", []))
        failures = [w.message for w in windows if w.status != PASS]
        worst = max((w.error_rate for w in windows if w.error_rate is not None), default=None)
        ok_text = f"{len(windows)} windows within the {budget * 100:g}% error budget" + (
            f" (worst {worst * 100:.2f}%)" if worst is not None else ""
        )
        return InvariantResult(
            AVAILABILITY, not failures, self._summary(AVAILABILITY, failures, ok_text), windows=windows
        )

    def _window(self, name: str, lo: float | None, hi: float | None, where: str, params: list[Any]) -> WindowResult:
        row = self.con.execute(
            f"""
            SELECT count(*) FILTER (WHERE NOT excluded), count(*) FILTER (WHERE NOT excluded AND failed),
                   count(*) FILTER (WHERE excluded), count(*) FILTER (WHERE excluded AND failed)
            FROM req_marked WHERE {where}
            """,
            params,
        ).fetchone()
        assert row is not None
        n, failed, ex, ex_failed = (int(x) for x in row)
        rate = failed / n if n else None
        w = WindowResult(name, lo, hi, n, failed, rate, ex, ex_failed, PASS)
        excl = f", {ex} requests excluded (entry point down; {ex_failed} failed)" if ex else ""
        if n == 0:
            w.status = FAIL
            w.message = f"availability: {name}: no traffic (no user requests{excl})"
        elif rate is not None and rate > self.slo.error_budget:
            w.status = FAIL
            w.first_offenders = self._failed_requests(where, params)
            zones = self.con.execute(
                f"SELECT zone, count(*) FROM req_marked WHERE {where} AND failed AND NOT excluded "
                "GROUP BY zone ORDER BY 2 DESC",
                params,
            ).fetchall()
            by_zone = ", ".join(f"{z}: {c}" for z, c in zones)
            first = f", first at {request_text(w.first_offenders[0])}" if w.first_offenders else ""
            w.message = (
                f"availability: {name}: {failed}/{n} user requests failed ({rate * 100:.2f}% > "
                f"{self.slo.error_budget * 100:g}% budget; {by_zone}){excl}{first}"
            )
        return w

    def _failed_requests(self, where: str, params: list[Any]) -> list[dict[str, Any]]:
        cols = ", ".join(REQUEST_FIELDS)
        rows = self.con.execute(
            f"SELECT {cols} FROM req_marked WHERE {where} AND failed AND NOT excluded "
            f"ORDER BY ts LIMIT {MAX_OFFENDERS}",
            params,
        ).fetchall()
        return [dict(zip(REQUEST_FIELDS, r, strict=True)) for r in rows]

    # -- assembly ------------------------------------------------------------
    def verdict(self) -> Verdict:
        fault_results, fb_pairs, exclusions, impact = self.faults()
        locality = self.locality(exclusions)
        hub = self.hub_and_spoke()
        shared = self.shared_services()
        availability = self.availability(impact)
        fb_fail = [p.message for p in fb_pairs if p.status == FAIL]
        fb_fail += [m for f in fault_results for m in f.messages if "no restore record" in m]
        n_measured = sum(1 for f in fault_results if f.failover_s is not None)
        fallback = InvariantResult(
            FALLBACK,
            not fb_fail,
            self._summary(
                FALLBACK,
                fb_fail,
                f"{len(fault_results)} faults: {n_measured} failovers within {self.slo.max_failover_s:g}s, "
                f"recoveries within {self.slo.max_recovery_s:g}s",
            ),
            pairs=fb_pairs,
        )
        # a fault also fails when its own availability window does
        by_name = {w.window: w for w in availability.windows}
        for fr in fault_results:
            w = by_name.get(f"fault {fr.fault}")
            if w is not None and w.status != PASS:
                fr.passed = False
                fr.messages.append(w.message)
        counts = self.con.execute(
            "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM inventory), (SELECT count(*) FROM chaos), "
            "(SELECT count(*) FROM hops WHERE resolved), "
            "(SELECT count(*) FROM hops WHERE coalesce(upstream_host, '') <> '' AND serving_zone IS NULL)"
        ).fetchone()
        assert counts is not None
        notes = list(self.run.notes)
        if counts[4]:
            notes.append(f"{counts[4]} hops have an upstream host that no inventory record explains (unattributed)")
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
            chaos_records=int(counts[2]),
            hops_resolved_from_inventory=int(counts[3]),
            hops_unattributed=int(counts[4]),
            slo={
                "inZoneShare": self.slo.in_zone_share,
                "errorBudget": self.slo.error_budget,
                "maxFailoverS": self.slo.max_failover_s,
                "maxRecoveryS": self.slo.max_recovery_s,
            },
            definitions=dict(DEFINITIONS),
            notes=notes,
        )
        return Verdict(run=info, invariants=[locality, hub, fallback, shared, availability], faults=fault_results)


REQUEST_OK_SQL = "coalesce(ok, status BETWEEN 200 AND 399, false)"


def merge_intervals(intervals: list[tuple[str, str, float, float]]) -> list[tuple[str, str, float, float]]:
    """Union overlapping windows of the same (zone, upstream): few rows, plain Python is fine."""
    out: list[tuple[str, str, float, float]] = []
    for z, u, lo, hi in sorted(intervals):
        if out and out[-1][0] == z and out[-1][1] == u and lo <= out[-1][3]:
            out[-1] = (z, u, out[-1][2], max(hi, out[-1][3]))
        else:
            out.append((z, u, lo, hi))
    return out


def spans_sql(zone_column: str | None, spans: list[tuple[str, float, float]]) -> str:
    """A boolean SQL expression: the row's ts (and zone) falls in one of a few windows.

    Written out as literals because a range join of a million rows against a
    handful of windows is far slower in DuckDB than a filter it can evaluate
    during the scan. Values come from the verifier itself (floats and the
    topology's zone names), quoted all the same.
    """
    if not spans:
        return "false"
    parts = []
    for zone, lo, hi in spans:
        z = f"{zone_column} = '{zone.replace(chr(39), chr(39) * 2)}' AND " if zone_column else ""
        parts.append(f"({z}ts BETWEEN {float(lo)!r} AND {float(hi)!r})")
    return "(" + " OR ".join(parts) + ")"
