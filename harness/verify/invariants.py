"""The routing invariants and the per-fault measurements, as DuckDB queries.

Definitions (they are also written into every verdict, `run.definitions`, so a
reader of a copied verdict does not need this file):

- A hop *failed* when it has no upstream host, a 5xx status, or (TCP, status 0)
  an Envoy response flag. A hop is *served in* the zone of the pod behind its
  `upstream_host` -- also when it failed: a failed connection to another Local
  Zone is still an attempt to cross the hub.
- A user request *failed* when the load generator marked it `ok: false`: no
  HTTP response, a status outside 200-399, or a GraphQL answer with `errors`
  (the real public-api answers upstream failures with HTTP 200 + `errors`).
- *Local* for an edge caller is its own zone; for a Region caller it is the
  whole Region (any availability zone): Consul CE has no locality-aware routing
  between AZs, and AZ-to-AZ traffic is not what this harness guards.
- *Up*: a (zone, service) is up while at least one of its pods is ready
  (inventory `ready`/`unready`/`removed`); for Region callers the Region as a
  whole. Down intervals come from the inventory, not from the chaos timeline.
- Locality: per (caller zone, edge-placed upstream), over hops *outside* the
  pair's excluded windows, in-zone hops / hops with an upstream host >= SLO
  `inZoneShare`. Excluded: each fault window of the pair (inject to restore +
  the measured recovery, or + `maxRecoveryS` when unmeasured; service-down
  excludes the listed services' pairs, zone-down and partition all pairs of
  the zone, link-degraded nothing: under latency, traffic must stay in-zone)
  and each interval the pair's upstream was down, until the measured recovery
  after it came up again (or `maxRecoveryS`). Hops without an upstream host
  count against availability, not locality; hops whose host cannot be
  attributed count as out of zone.
- In a window: a hop or user request belongs to a fault or outage window when
  its lifetime [ts, ts + duration] overlaps it (Envoy and locust stamp it with
  its start; one in flight at the kill was served or failed because of it).
- Hub-and-spoke: zero tolerance, in every window. A hop of an edge caller
  served in an edge zone other than its own, or of a Region caller served in an
  edge zone (or in a zone the topology does not know) fails it; so does any
  *attempt*: a host in such a zone with connections, connection failures or
  requests in a sidecar's upstream counters (upstream-stats.jsonl; the access
  log names only the last attempt's host). No counter snapshots (or no
  `start`/`end` snapshot) leave attempts unverified, which fails.
- Fallback, per service-down fault of (Z, S) and pair (Z, S) for callers of S
  in Z that are not themselves down: the failover window runs from the inject
  to the restore or to the instant S is up again in Z (inventory readiness),
  whichever is first (exclusive); failover instant F = the first successful
  Region-served hop after the last successful hop served outside the Region;
  `failover_s` = F - inject. Recovery, for every pair the fault touched whose
  upstream is edge-placed: R = the first successful hop served where it
  belongs (in-zone, or the Region for Region callers) after the last
  successful hop served elsewhere, within [restore, next fault in the zone or
  end of run]; `recovery_s` = R - restore. No hop at all for the pair during
  the fault (or after the restore) is a failure (unverified); a fault without
  a restore record never recovers.
- Resolution of F (or R): F minus the last record of the pair before F that
  was not good (failed, or served in the wrong place), or minus the window's
  start when there was none: the true instant lies in [F - resolution, F].
- Shared services: hops to Region-placed upstreams must be served in an
  availability zone (zero tolerance; unattributed hosts count as violations)
  and must be routed: a hop that found no upstream host (NR, UH ...) fails,
  except before the first user request (bring-up: the mesh converges before
  traffic starts), during a fault that took the caller's zone down or cut it
  off or the service itself, or while the service had no ready pod, each until
  `maxRecoveryS` after it (NR, no route, is never excused).
- Call graph: every hop's (caller service -> upstream service) is an edge the
  topology declares (logical names); a hop whose caller or upstream cannot be
  identified is unverified and fails. Consul's intentions must deny every
  undeclared call (preflight.json `intentions` checks, plus `refused-probe`
  where the backend can make one).
- Availability: per fault, failed user requests / user requests during
  [inject, restore + recovery] <= `errorBudget`, and the same over the steady
  state. Requests entering a zone whose entry point was down (a fault with
  `entry_down`, or entrypoints.jsonl) are excluded and reported. A window
  without requests fails ("no traffic").
- Coverage, per fault and affected zone: user requests entering the zone at
  an entry point that was up, DURING [inject, restore] (not asked of a fault
  that takes the zone's entry down by design) and AFTER (restore, next fault
  in the zone / end of run, at most `maxRecoveryS`]. A window without them is
  unverified and fails.
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

from harness.verify import evidence
from harness.verify.model import (
    AVAILABILITY,
    CALL_GRAPH,
    CONFIG,
    COVERAGE,
    EXPERIMENT_RAN,
    FAIL,
    FALLBACK,
    HUB_AND_SPOKE,
    LOCALITY,
    MAX_SKIPPED_LISTED,
    NO_TRAFFIC,
    NOT_APPLICABLE,
    PASS,
    SHARED_SERVICES,
    UNVERIFIED,
    CheckResult,
    FaultResult,
    InvariantResult,
    PairResult,
    RunInfo,
    Verdict,
    WindowResult,
    iso,
    seconds,
)
from harness.verify.records import Fault, RunData, pairs, zone_is_edge

# A hop or request is *in* a window when its lifetime overlaps it, not only when it
# started inside: a request in flight at the kill was served (or failed) because of
# the fault although Envoy and locust stamp it with its start.
HOP_END_SQL = "(ts + coalesce(duration_ms, 0) / 1000.0)"
REQUEST_END_SQL = "(ts + coalesce(latency_ms, 0) / 1000.0)"

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
    "request_failed": "the load generator marked it ok=false: no HTTP response, a status outside 200-399, or an "
    "HTTP 200 whose GraphQL body carries `errors` (how the real public-api answers an upstream failure)",
    "hop": "one outbound access-log line of a sidecar, rebuilt from accesslogs/ + inventory on every verify "
    "(hops.jsonl is read only when the access logs are absent)",
    "inbound_line": "an access-log line of the serving side (direction inbound, upstream_cluster local_app, or an "
    "upstream host on loopback): not a hop, counted apart in run.inbound_lines",
    "serving_pod": "the pod that held the upstream host's IP at the hop's start (inventory history, 1 s slack)",
    "in_window": "a hop or user request is in a fault or outage window when its lifetime [ts, ts + duration] "
    "overlaps it: Envoy and locust stamp it with its start, so one in flight at the fault is the fault's",
    "local": "edge caller: its own zone; Region caller: any availability zone",
    "up": "a (zone, service) is up while >= 1 of its pods is ready (inventory ready/unready/removed; without "
    "readiness events a pod is ready from `added`); for Region callers the Region as a whole",
    "locality": "in-zone hops / hops with an upstream host, outside the pair's fault windows and the intervals "
    "its upstream was down (each until the measured recovery, else + maxRecoveryS), >= inZoneShare",
    "hub_and_spoke": "no hop of an edge caller served in another edge zone, none of a Region caller served in an "
    "edge zone, and no such host with cx_total + cx_connect_fail + rq_total > 0 in any sidecar's upstream "
    "counters (attempts a retry hid); no start/end counter snapshot = unverified = fail",
    "failover_s": "first successful Region-served hop after the last successful non-Region hop, minus inject; "
    "the window ends (exclusive) at the restore or when the upstream is up again in the zone, whichever is first",
    "recovery_s": "first successful hop served where it belongs after the last misplaced successful hop, minus restore",
    "resolution_s": "gap between the records bounding the failover/recovery instant: the instant minus the last "
    "failed or misplaced hop before it (or minus the window start); the true value lies in [value - resolution, "
    "value]",
    "lost": "failed requests entering the zone and failed hops of the affected pairs, from inject to failover "
    "(or to the end of the fault window)",
    "availability": "failed / all user requests per fault window [inject, restore + recovery] and in steady state, "
    "excluding requests entering zones whose entry point is down (entry_down faults, entrypoints.jsonl)",
    "coverage": "each fault has user requests entering its zone at an up entry point during [inject, restore] "
    "(unless the fault takes the entry down by design) and after (restore, next fault in the zone / end of run, "
    "at most maxRecoveryS]; a window without them is unverified = fail",
    "no_traffic": "a fault or edge pair without records is a failure (unverified), a Region pair is only reported",
    "shared_services": "hops to Region-only services are served in the Region and routed (a hop without upstream "
    "host fails, except before the first user request (bring-up), during a fault that took the caller's zone or the "
    "service down or while the service had no ready pod, each until maxRecoveryS after it; NR is never excused) "
    "and no pod of one ran in an edge zone (inventory); a TCP pair with no hops is reported, not failed (Envoy logs "
    "TCP hops when connections close)",
    "call_graph": "every hop's caller service -> upstream service is declared by the topology (logical names; an "
    "unidentified caller or upstream is unverified = fail); preflight.json's intentions checks show Consul denies "
    "every undeclared call (and a refused-probe check where the backend could make one)",
    "config": "every preflight.json check (crd-synced, discovery-chain, instances-passing) passed; no preflight.json "
    "or no check of a kind = unverified = fail",
    "experiment_ran": "every experiment in plan.json has a chaostoolkit journal with status completed, the steady "
    "state met before the method, every planned action in run[] with status succeeded, and no deviation; no plan "
    "and no chaos records = nothing planned (pass); chaos records without a plan = unverified = fail",
    "partial": "run.json says the run did not complete (status other than complete, or no `ended`): the verdict is "
    "judged on what was recorded",
    "skipped_records": "lines of record files that are not JSON objects or lack their time field are skipped and "
    "listed (file, line, reason)",
}

# SQL: the hop is served in the caller's local zone (see module docstring).
IN_ZONE_SQL = "(CASE WHEN caller_kind = 'region' THEN serving_kind = 'region' ELSE serving_zone = caller_zone END)"
HUB_VIOLATION_SQL = (
    "(serving_zone IS NOT NULL AND ("
    "(caller_kind <> 'region' AND serving_zone <> caller_zone AND serving_kind <> 'region')"
    " OR (caller_kind = 'region' AND serving_kind <> 'region')))"
)
REQUEST_OK_SQL = "coalesce(ok, status BETWEEN 200 AND 399, false)"


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
    """A measurement over one pair in one time range: first good instant, its resolution and losses."""

    lo: float
    hops: int = 0
    failed: int = 0
    good: int = 0
    last_misplaced: float | None = None
    instant: float | None = None
    lost: int = 0
    prev_bad: float | None = None
    offenders: list[dict[str, Any]] = field(default_factory=list)

    @property
    def resolution(self) -> float | None:
        if self.instant is None:
            return None
        return self.instant - max(self.prev_bad if self.prev_bad is not None else self.lo, self.lo)


@dataclass
class _Faults:
    results: list[FaultResult]
    fb_pairs: list[PairResult]
    exclusions: list[tuple[str, str, float, float]]
    impact: list[tuple[Fault, float]]


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
        self.entry_down = self._entry_down_spans()

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

    def _entry_down_spans(self) -> list[tuple[str, float, float]]:
        """(zone, from, to) while entrypoints.jsonl says the zone's entry point was down."""
        rows = self.con.execute("SELECT zone, ts, up FROM entrypoints WHERE zone IS NOT NULL ORDER BY zone, ts")
        spans: list[tuple[str, float, float]] = []
        opened: dict[str, float] = {}
        for zone, ts, up in rows.fetchall():
            if up is False and zone not in opened:
                opened[zone] = float(ts)
            elif up is True and zone in opened:
                spans.append((zone, opened.pop(zone), float(ts)))
        spans += [(z, lo, INF) for z, lo in opened.items()]
        return spans

    # -- per-fault measurement ----------------------------------------------
    def _measure(
        self,
        zone: str,
        upstream: str,
        callers: list[str],
        lo: float,
        hi: float,
        good_sql: str,
        hi_open: bool = False,
    ) -> _Window:
        """First instant after which successful hops are all `good_sql`, in [lo, hi] ([lo, hi) if `hi_open`)."""
        params = [zone, upstream, callers, lo, hi]
        upper = "<" if hi_open else "<="
        base = f"caller_zone = ? AND upstream = ? AND list_contains(?, caller_service) AND ts >= ? AND ts {upper} ?"
        row = self.con.execute(
            f"""
            WITH w AS (SELECT ts, ok, coalesce(({good_sql}), false) AS good FROM fhops WHERE {base}),
                 b AS (SELECT max(ts) FILTER (WHERE ok AND NOT good) AS last_bad FROM w),
                 f AS (SELECT min(ts) FILTER (WHERE ok AND good AND ts > coalesce((SELECT last_bad FROM b), -{INF}))
                       AS instant FROM w)
            SELECT count(*), count(*) FILTER (WHERE NOT ok), count(*) FILTER (WHERE ok AND good),
                   (SELECT last_bad FROM b), (SELECT instant FROM f),
                   count(*) FILTER (WHERE NOT ok AND ts <= coalesce((SELECT instant FROM f), {INF})),
                   max(ts) FILTER (WHERE ts < (SELECT instant FROM f) AND NOT (ok AND good))
            FROM w
            """,
            params,
        ).fetchone()
        assert row is not None
        w = _Window(lo, int(row[0]), int(row[1]), int(row[2]), row[3], row[4], int(row[5]), row[6])
        until = w.instant if w.instant is not None else hi
        w.offenders = self._hops(
            f"{base} AND ts <= ? AND NOT (ok AND coalesce(({good_sql}), false))", [*params, until], table="fhops"
        )
        return w

    def _down_spans(self) -> list[tuple[str, str, float, float]]:
        """(caller zone, upstream, down from, until + maxRecoveryS) of every pair whose upstream went down."""
        out: list[tuple[str, str, float, float]] = []
        for z, u, _ in self.pairs:
            for lo, hi in self.run.down.get(self.run.up_key(z, u), []):
                end = INF if hi is None else hi + self.slo.max_recovery_s
                out.append((z, u, lo, min(end, max(self.run_end, lo))))
        return out

    def _fault_hops(self) -> None:
        """Copy the hops of faulted zones and of pairs whose upstream went down into `fhops`.

        Every per-fault and per-outage measurement reads only these (one scan
        of `hops` instead of several per fault and pair). Windows of one zone
        are merged first so that no hop is copied twice.
        """
        spans = [
            (f.zone, "", f.inject, self._next_fault_in_zone(f, f.restore if f.restore is not None else f.inject))
            for f in self.run.faults
        ]
        spans += [(z, "", lo, hi) for z, _, lo, hi in self._down_spans()]
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

    def _failover_end(self, f: Fault, upstream: str, fault_end: float) -> tuple[float, str]:
        """Where the failover window ends: the restore, or earlier when the upstream is up again in the zone.

        From the inventory's readiness, not from the timeline: a pod is
        recorded ready before the sidecars are told of it, so no in-zone hop
        can precede this instant, whichever of two writers came first.
        """
        for lo, hi in self.run.down.get(self.run.up_key(f.zone, upstream), []):
            if hi is not None and hi > f.inject and lo <= fault_end:
                return (hi, "ready again") if hi < fault_end else (fault_end, "restore")
        return fault_end, "restore"

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

    def faults(self) -> _Faults:
        """Measure each fault; return results, fallback pairs, locality exclusions and impact windows."""
        self._fault_hops()
        out = _Faults([], [], [], [])
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
                # every pair whose upstream went down must come back in-zone, also when its callers went down too
                recovery_pairs = self._edge_pairs([(u, c) for u, c in zone_pairs if u in down])
                excluded_upstreams = [u for u, _ in zone_pairs if u in down]
                if not failover_pairs:
                    messages.append(
                        f"no mesh caller of {', '.join(sorted(down)) or 'any service'} stays up in {f.zone}: "
                        "no failover to measure"
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

            failover: list[tuple[float, float | None]] = []
            failover_ends: list[float] = []
            lost_hops = 0
            pair_results: dict[str, PairResult] = {}
            for u, callers in failover_pairs:
                end, why = self._failover_end(f, u, fault_end)
                failover_ends.append(end)
                w = self._measure(f.zone, u, callers, f.inject, end, "serving_kind = 'region'", hi_open=True)
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
                        "failover_resolution_s": w.resolution,
                        "failover_window_end": end,
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
                        f"(window {iso(f.inject)} .. {iso(end)}, ended by the {why}; {w.hops} hops, {w.failed} "
                        f"failed, {misplaced}{w.good} Region-served){first}"
                    )
                else:
                    d = w.instant - f.inject
                    failover.append((d, w.resolution))
                    if d > self.slo.max_failover_s:
                        pr.status = FAIL
                        pr.message = (
                            f"fallback: {f.zone} -> {u}: failover took {seconds(d, w.resolution)} > maxFailoverS "
                            f"{self.slo.max_failover_s:g}s in fault {f.fault}{first}"
                        )
                if pr.status == FAIL:
                    ok = False
                    messages.append(pr.message)
            failover_s = failover_res = None
            if failover_pairs and len(failover) == len(failover_pairs):
                failover_s, failover_res = max(failover, key=lambda x: x[0])

            # recovery
            recovery_s = recovery_res = None
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
                measured: list[tuple[float, float | None]] = []
                for u, callers in recovery_pairs:
                    w = self._measure(f.zone, u, callers, f.restore, hi, self._expected_sql(f.zone, u))
                    pr = pair_results.get(u) or PairResult(
                        caller_zone=f.zone, upstream=u, status=PASS, fault=f.fault, counts={}, first_offenders=[]
                    )
                    pair_results[u] = pr
                    rec = None if w.instant is None else w.instant - f.restore
                    recovery_values[u] = rec
                    if rec is not None:
                        measured.append((rec, w.resolution))
                    pr.counts.update(
                        {
                            "hops_after_restore": w.hops,
                            "failed_after_restore": w.failed,
                            "recovery_s": rec,
                            "recovery_resolution_s": w.resolution,
                        }
                    )
                    msg = ""
                    first = f", first at {hop_text(w.offenders[0])}" if w.offenders else ""
                    if w.hops == 0:
                        if self._no_traffic_fails(f.zone):
                            msg = (
                                f"fallback: {f.zone} -> {u}: fault {f.fault} never recovers: no traffic after "
                                f"restore at {iso(f.restore)} (recovery unverified)"
                            )
                    elif rec is None:
                        msg = (
                            f"fallback: {f.zone} -> {u}: fault {f.fault} never recovers: no steady successful "
                            f"{'in-zone' if 'caller_zone' in self._expected_sql(f.zone, u) else 'Region'} service "
                            f"after restore at {iso(f.restore)} ({w.hops} hops, {w.failed} failed){first}"
                        )
                    elif rec > self.slo.max_recovery_s:
                        msg = (
                            f"fallback: {f.zone} -> {u}: recovery took {seconds(rec, w.resolution)} > maxRecoveryS "
                            f"{self.slo.max_recovery_s:g}s after fault {f.fault}{first}"
                        )
                    if msg:
                        pr.status = FAIL
                        pr.message = f"{pr.message}; {msg}" if pr.message else msg
                        if not pr.first_offenders:
                            pr.first_offenders = w.offenders
                        ok = False
                        messages.append(msg)
                if recovery_values and len(measured) == len(recovery_values):
                    recovery_s, recovery_res = max(measured, key=lambda x: x[0])

            # the fault's impact window: restore + recovery (or the SLO bound when unmeasured)
            if f.restore is None:
                impact_end = max(self.run_end, f.inject)
            elif recovery_s is not None:
                impact_end = f.restore + recovery_s
            elif recovery_values:
                impact_end = f.restore + self.slo.max_recovery_s
            else:
                impact_end = f.restore
            out.impact.append((f, impact_end))
            for u in excluded_upstreams:
                rec = recovery_values.get(u)
                end = INF if f.restore is None else f.restore + (rec if rec is not None else self.slo.max_recovery_s)
                out.exclusions.append((f.zone, u, f.inject, end))

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
            out.fb_pairs.extend(pair_results.values())
            out.results.append(
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
                    failover_resolution_s=failover_res,
                    recovery_resolution_s=recovery_res,
                    failover_end=max(failover_ends) if failover_ends else None,
                )
            )
        out.exclusions += self._readiness_exclusions()
        return out

    def _readiness_exclusions(self) -> list[tuple[str, str, float, float]]:
        """Locality is judged only while the pair's upstream is up: each down interval until its recovery.

        Recovery after the upstream is ready again is measured like a fault's
        (first in-zone hop after the last misplaced one), within maxRecoveryS;
        unmeasured, the window runs maxRecoveryS past the instant it was up.
        """
        out: list[tuple[str, str, float, float]] = []
        for z, u, callers in self.pairs:
            if self._placement(u) != "edge":
                continue
            intervals = self.run.down.get(self.run.up_key(z, u), [])
            for i, (lo, hi) in enumerate(intervals):
                if hi is None:
                    out.append((z, u, lo, INF))
                    continue
                nxt = intervals[i + 1][0] if i + 1 < len(intervals) else INF
                bound = min(hi + self.slo.max_recovery_s, nxt, max(self.run_end, hi))
                w = self._measure(z, u, list(callers), hi, bound, self._expected_sql(z, u))
                out.append((z, u, lo, w.instant if w.instant is not None else hi + self.slo.max_recovery_s))
        return out

    def _outage_notes(self) -> list[str]:
        """Intervals a service of the topology had no ready pod in a zone, outside every recorded fault."""
        notes = []
        names = {s.name for s in self.t.services}
        for (zone, service), intervals in sorted(self.run.down.items()):
            if service not in names:
                continue
            region = zone == self.t.region
            for lo, hi in intervals:
                end = INF if hi is None else hi
                covered = any(
                    (f.zone == zone or (region and not zone_is_edge(self.t, f.zone)))
                    and f.inject <= end
                    and lo <= (INF if f.restore is None else f.restore)
                    for f in self.run.faults
                )
                if not covered:
                    where = "the Region" if region else zone
                    notes.append(
                        f"{service} had no ready pod in {where} from {iso(lo)} to {iso(hi)} outside any recorded "
                        "fault (locality not judged then)"
                    )
        return notes

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
            LEFT JOIN loc_excl e ON e.zone = h.caller_zone AND e.upstream = h.upstream
                 AND h.ts <= e.hi AND h.ts + coalesce(h.duration_ms, 0) / 1000.0 >= e.lo
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
            elif served == 0 and no_host == 0 and self._no_traffic_fails(z):
                pr.status = FAIL
                pr.message = (
                    f"locality: {z} -> {u}: all {total} hops fell in fault windows or while {u} was down in the "
                    "zone: no hop while it was healthy (locality unverified)"
                )
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
            failures.insert(0, "locality: no hops recorded (no access logs, hops.jsonl missing or empty): unverified")
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
            failures.insert(
                0, "hub-and-spoke: no hops recorded (no access logs, hops.jsonl missing or empty): unverified"
            )
        attempt_failures, checks, attempt_text = self._attempts()
        failures += attempt_failures
        msg = self._summary(
            HUB_AND_SPOKE,
            failures,
            f"no hop crossed between edge zones or from the Region to an edge zone ({self.total_hops} hops); "
            f"{attempt_text}",
        )
        return InvariantResult(HUB_AND_SPOKE, not failures, msg, pairs=results, checks=checks)

    def _attempts(self) -> tuple[list[str], list[CheckResult], str]:
        """Attempt evidence: hosts in a forbidden zone that a sidecar's counters say it tried."""
        labels = {r[0] for r in self.con.execute("SELECT DISTINCT label FROM upstream_stats").fetchall()}
        missing = [x for x in ("start", "end") if x not in labels]
        if not labels:
            return (
                ["hub-and-spoke: no upstream counters (upstream-stats.jsonl missing or empty): attempts a retry "
                 "may have hidden are unverified"],
                [CheckResult("upstream-stats", UNVERIFIED, "no counter snapshots")],
                "",
            )  # fmt: skip
        failures: list[str] = []
        checks: list[CheckResult] = []
        if missing:
            failures.append(
                f"hub-and-spoke: no {' or '.join(repr(m) for m in missing)} snapshot of the upstream counters: "
                "attempts are unverified"
            )
            checks.append(CheckResult("upstream-stats", UNVERIFIED, f"no {', '.join(missing)} snapshot"))
        rows = self.con.execute(
            """
            SELECT s.pod, s.caller_zone, s.cluster, s.host, s.host_pod, s.host_zone,
                   max(coalesce(s.cx_total, 0)), max(coalesce(s.cx_connect_fail, 0)), max(coalesce(s.rq_total, 0)),
                   max(coalesce(s.rq_error, 0)), arg_min(s.label, s.ts), min(s.ts)
            FROM upstream_stats s
            JOIN zones hz ON hz.name = s.host_zone
            LEFT JOIN zones cz ON cz.name = s.caller_zone
            WHERE s.caller_zone IS NOT NULL AND hz.kind = 'edge'
              AND (coalesce(cz.kind, 'edge') = 'region' OR s.host_zone <> s.caller_zone)
              AND coalesce(s.cx_total, 0) + coalesce(s.cx_connect_fail, 0) + coalesce(s.rq_total, 0) > 0
            GROUP BY ALL ORDER BY min(s.ts), s.pod, s.host
            """
        ).fetchall()
        for pod, cz, cluster, host, hpod, hz, cx, cf, rq, rqe, label, ts in rows:
            text = (
                f"hub-and-spoke: {cz} -> {hz}: attempted: {pod} ({cz}) tried {host} ({hpod or '?'} in {hz}) "
                f"in cluster {cluster}: cx_total {cx}, cx_connect_fail {cf}, rq_total {rq}, rq_error {rqe} "
                f"(first in the '{label}' snapshot at {iso(ts)})"
            )
            failures.append(text)
            detail = {"pod": pod, "caller_zone": cz, "cluster": cluster, "host": host, "host_pod": hpod,
                      "host_zone": hz, "cx_total": cx, "cx_connect_fail": cf, "rq_total": rq, "rq_error": rqe,
                      "first_snapshot": label, "ts": ts}  # fmt: skip
            checks.append(CheckResult(f"{pod} -> {host}", FAIL, text, detail))
        row = self.con.execute(
            "SELECT count(DISTINCT ts), count(DISTINCT pod), count(*) FILTER (WHERE caller_zone IS NULL), "
            "count(*) FILTER (WHERE host_zone IS NULL AND coalesce(cx_total, 0) + coalesce(rq_total, 0) > 0) "
            "FROM upstream_stats"
        ).fetchone()
        assert row is not None
        snaps, pods, unknown_pod, unknown_host = (int(x) for x in row)
        if unknown_pod:
            self.run.notes.append(f"{unknown_pod} upstream-counter lines are of sidecars the inventory does not know")
        if unknown_host:
            self.run.notes.append(
                f"{unknown_host} upstream-counter lines name hosts the inventory cannot attribute at that time"
            )
        return failures, checks, f"no attempt to a forbidden zone in {snaps} counter snapshots of {pods} sidecars"

    def shared_services(self) -> InvariantResult:
        viol = "(serving_kind IS NOT NULL AND serving_kind <> 'region')"
        excused = self._unrouted_excused_sql()
        not_routed = f"(coalesce(upstream_host, '') = '' AND (coalesce(flags, '') LIKE '%NR%' OR NOT {excused}))"
        rows = self.con.execute(
            f"""
            SELECT caller_zone, upstream, count(*),
                   count(*) FILTER (WHERE serving_kind = 'region'),
                   count(*) FILTER (WHERE {viol}),
                   count(*) FILTER (WHERE NOT ok),
                   count(*) FILTER (WHERE {not_routed})
            FROM hops WHERE placement = 'region' GROUP BY ALL
            """
        ).fetchall()
        data = {(r[0], r[1]): r[2:] for r in rows}
        keys = [(z, u) for (z, u, _) in self.pairs if self._placement(u) == "region"]
        keys += sorted(k for k in data if k not in keys)
        failures: list[str] = []
        results: list[PairResult] = []
        for z, u in keys:
            total, region, elsewhere, failed, unrouted = data.get((z, u), (0, 0, 0, 0, 0))
            pr = PairResult(
                caller_zone=z,
                upstream=u,
                status=PASS,
                counts={
                    "hops": total,
                    "served_region": region,
                    "served_elsewhere": elsewhere,
                    "failed": failed,
                    "not_routed": unrouted,
                },
            )
            parts = []
            if total == 0:
                pr.status = NO_TRAFFIC
                # Envoy logs a TCP hop when its connection closes: a pooled connection kept open for
                # the whole run leaves no record, so silence is reported for TCP, not failed (the
                # placement check below still sees where the service ran).
                if self._no_traffic_fails(z) and self._protocol(u) != "tcp":
                    parts.append(f"shared-services: {z} -> {u}: no traffic (unverified)")
            if elsewhere:
                pr.first_offenders = self._hops(f"caller_zone = ? AND upstream = ? AND {viol}", [z, u])
                zones = sorted({h["serving_zone"] or "unknown zone" for h in pr.first_offenders})
                parts.append(
                    f"shared-services: {z} -> {u}: {elsewhere} hops to Region-only {u} served outside the Region "
                    f"({', '.join(zones)}), first at {hop_text(pr.first_offenders[0])}"
                )
            if unrouted:
                offenders = self._hops(f"caller_zone = ? AND upstream = ? AND {not_routed}", [z, u])
                pr.first_offenders = (pr.first_offenders + offenders)[:MAX_OFFENDERS]
                flags = sorted({str(h["flags"]) for h in offenders})
                parts.append(
                    f"shared-services: {z} -> {u}: {unrouted} hops to Region-only {u} were not routed (no upstream "
                    f"host, flags {', '.join(flags)}) while no fault excused it, first at {hop_text(offenders[0])}"
                )
            if parts:
                pr.status = FAIL
                pr.message = "; ".join(parts)
                failures.extend(parts)
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
            failures.insert(
                0, "shared-services: no hops recorded (no access logs, hops.jsonl missing or empty): unverified"
            )
        msg = self._summary(
            SHARED_SERVICES, failures, "every hop to a Region-only service was routed to and served in the Region"
        )
        return InvariantResult(SHARED_SERVICES, not failures, msg, pairs=results)

    def _unrouted_excused_sql(self) -> str:
        """SQL: a hop without upstream host falls where a fault or an outage explains it (see DEFINITIONS).

        Before the first user request the mesh is still converging (apps open
        their database connections while the sidecars get their endpoints; the
        harness starts traffic once every pod is ready), so bring-up is not judged.
        """
        first_request = self._one("SELECT min(ts) FROM requests")
        parts: list[str] = [f"(ts < {float(first_request)!r})"] if first_request is not None else []
        slack = self.slo.max_recovery_s
        for f in self.run.faults:
            end = INF if f.restore is None else f.restore + slack
            if f.kind in ("zone-down", "partition"):
                parts.append(spans_sql("caller_zone", [(f.zone, f.inject, end)], HOP_END_SQL))
            for s in f.services:
                if self._placement(s) == "region":
                    parts.append(f"(upstream = '{_q(s)}' AND {spans_sql(None, [('', f.inject, end)], HOP_END_SQL)})")
        for (zone, service), intervals in self.run.down.items():
            if zone != self.t.region or self._placement(service) != "region":
                continue
            spans = [("", lo, INF if hi is None else hi + slack) for lo, hi in intervals]
            parts.append(f"(upstream = '{_q(service)}' AND {spans_sql(None, spans, HOP_END_SQL)})")
        return "(" + " OR ".join(parts) + ")" if parts else "false"

    def call_graph(self) -> InvariantResult:
        rows = self.con.execute(
            """
            SELECT h.caller_service, h.upstream, count(*) AS n, min(h.ts),
                   bool_or(c.caller IS NOT NULL) AS declared
            FROM hops h LEFT JOIN calls c ON c.caller = h.caller_service AND c.upstream = h.upstream
            GROUP BY 1, 2 ORDER BY min(h.ts)
            """
        ).fetchall()
        failures: list[str] = []
        checks: list[CheckResult] = []
        edges = 0
        for caller, upstream, n, _ts, declared in rows:
            if caller is None or upstream is None:
                first = self._hops(
                    "caller_service IS NOT DISTINCT FROM ? AND upstream IS NOT DISTINCT FROM ?", [caller, upstream], 1
                )
                text = (
                    f"call-graph: {n} hops whose {'caller' if caller is None else 'upstream'} could not be identified "
                    f"({caller or '?'} -> {upstream or '?'}): unverified, first at {hop_text(first[0])}"
                )
                failures.append(text)
                checks.append(CheckResult(f"{caller or '?'} -> {upstream or '?'}", UNVERIFIED, text, {"hops": n}))
            elif not declared:
                first = self._hops("caller_service = ? AND upstream = ?", [caller, upstream])
                zones = sorted({str(h["caller_zone"]) for h in first})
                text = (
                    f"call-graph: {caller} -> {upstream}: {n} hops on an edge the topology does not declare "
                    f"(from {', '.join(zones)}), first at {hop_text(first[0])}"
                )
                failures.append(text)
                checks.append(CheckResult(f"{caller} -> {upstream}", FAIL, text, {"hops": n, "first": first}))
            else:
                edges += 1
        int_failures, int_checks, int_text = evidence.intentions(self.run)
        failures += int_failures
        checks += int_checks
        if self.total_hops == 0:
            failures.insert(0, "call-graph: no hops recorded: the calls made are unverified")
        msg = self._summary(
            CALL_GRAPH, failures, f"every hop is on one of the {edges} declared edges it used; {int_text}"
        )
        return InvariantResult(CALL_GRAPH, not failures, msg, checks=checks)

    def availability(self, impact: list[tuple[Fault, float]]) -> InvariantResult:
        excluded = [(f.zone, f.inject, hi) for f, hi in impact if f.entry_down] + self.entry_down
        self.con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE req_marked AS
            SELECT r.*, NOT {REQUEST_OK_SQL} AS failed,
                   {spans_sql("zone", excluded, REQUEST_END_SQL)} AS excluded,
                   {spans_sql(None, [("", f.inject, hi) for f, hi in impact], REQUEST_END_SQL)} AS in_fault
            FROM requests r
            """
        )
        windows: list[WindowResult] = []
        budget = self.slo.error_budget
        for f, hi in impact:
            windows.append(
                self._window(f"fault {f.fault}", f.inject, hi, f"ts <= ? AND {REQUEST_END_SQL} >= ?", [hi, f.inject])
            )
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

    def coverage(self) -> InvariantResult:
        """Each fault has user requests entering its zone during and after it (see DEFINITIONS)."""
        entry_down = spans_sql("zone", self.entry_down)
        checks: list[CheckResult] = []
        failures: list[str] = []
        for f in self.run.faults:
            during_end = f.restore if f.restore is not None else max(self.run_end, f.inject)
            windows: list[tuple[str, float, float, bool]] = [("during", f.inject, during_end, True)]
            if f.restore is not None:
                after_end = min(
                    self._next_fault_in_zone(f, f.restore), self.run_end, f.restore + self.slo.max_recovery_s
                )
                windows.append(("after", f.restore, after_end, False))
            for name, lo, hi, closed in windows:
                subject = f"{f.fault} {f.zone} {name}"
                span = f"{'[' if closed else '('}{iso(lo)}, {iso(hi)}]"
                lower = ">=" if closed else ">"
                row = self.con.execute(
                    f"""
                    SELECT count(*) FILTER (WHERE NOT {entry_down}), count(*) FILTER (WHERE {entry_down}),
                           min(ts) FILTER (WHERE NOT {entry_down})
                    FROM requests WHERE zone = ? AND ts {lower} ? AND ts <= ?
                    """,
                    [f.zone, lo, hi],
                ).fetchone()
                assert row is not None
                n, at_down, first = int(row[0]), int(row[1]), row[2]
                detail = {"fault": f.fault, "zone": f.zone, "window": name, "start": lo, "end": hi,
                          "requests": n, "requests_at_down_entry": at_down, "first": first}  # fmt: skip
                if name == "during" and f.entry_down:
                    why = f"{f.zone}'s entry point is down by design during {f.fault}"
                    checks.append(CheckResult(subject, NOT_APPLICABLE, why, detail))
                    continue
                if n > 0:
                    checks.append(CheckResult(subject, PASS, f"{n} user requests entering {f.zone} {span}", detail))
                    continue
                why = f" ({at_down} only at a down entry point)" if at_down else ""
                if hi <= lo:
                    why = " (the run ended at the restore)" if name == "after" else " (empty window)"
                text = (
                    f"coverage: fault {f.fault}: no user requests entering {f.zone} {name} the fault {span}{why}: "
                    f"{'failover' if name == 'during' else 'recovery'} unverified"
                )
                failures.append(text)
                checks.append(CheckResult(subject, UNVERIFIED, text, detail))
        n_ok = sum(1 for c in checks if c.status == PASS)
        ok_text = f"{n_ok} fault windows had user traffic in their zone" if self.run.faults else "no faults to cover"
        return InvariantResult(COVERAGE, not failures, self._summary(COVERAGE, failures, ok_text), checks=checks)

    def _document_invariant(self, name: str, result: tuple[list[str], list[CheckResult], str]) -> InvariantResult:
        failures, checks, ok_text = result
        return InvariantResult(name, not failures, self._summary(name, failures, ok_text), checks=checks)

    # -- assembly ------------------------------------------------------------
    def verdict(self) -> Verdict:
        fx = self.faults()
        locality = self.locality(fx.exclusions)
        hub = self.hub_and_spoke()
        shared = self.shared_services()
        availability = self.availability(fx.impact)
        call_graph = self.call_graph()
        chaos_records = int(self._one("SELECT count(*) FROM chaos") or 0)
        ran = self._document_invariant(EXPERIMENT_RAN, evidence.experiment_ran(self.run, chaos_records))
        coverage = self.coverage()
        config = self._document_invariant(CONFIG, evidence.config(self.run))
        fb_fail = [p.message for p in fx.fb_pairs if p.status == FAIL]
        fb_fail += [m for f in fx.results for m in f.messages if "no restore record" in m]
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
            pairs=fx.fb_pairs,
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
        notes = list(self.run.notes) + self._outage_notes()
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


def _q(s: str) -> str:
    return s.replace("'", "''")


def merge_intervals(intervals: list[tuple[str, str, float, float]]) -> list[tuple[str, str, float, float]]:
    """Union overlapping windows of the same (zone, upstream): few rows, plain Python is fine."""
    out: list[tuple[str, str, float, float]] = []
    for z, u, lo, hi in sorted(intervals):
        if out and out[-1][0] == z and out[-1][1] == u and lo <= out[-1][3]:
            out[-1] = (z, u, out[-1][2], max(hi, out[-1][3]))
        else:
            out.append((z, u, lo, hi))
    return out


def spans_sql(zone_column: str | None, spans: list[tuple[str, float, float]], end_sql: str | None = None) -> str:
    """A boolean SQL expression: the row's ts (and zone) falls in one of a few windows.

    With `end_sql` (the row's end instant) the row's lifetime [ts, end] need
    only overlap the window: see HOP_END_SQL.

    Written out as literals because a range join of a million rows against a
    handful of windows is far slower in DuckDB than a filter it can evaluate
    during the scan. Values come from the verifier itself (floats and the
    topology's zone names), quoted all the same.
    """
    if not spans:
        return "false"
    parts = []
    for zone, lo, hi in spans:
        z = f"{zone_column} = '{_q(zone)}' AND " if zone_column else ""
        if end_sql is None:
            parts.append(f"({z}ts BETWEEN {float(lo)!r} AND {float(hi)!r})")
        else:
            parts.append(f"({z}ts <= {float(hi)!r} AND {end_sql} >= {float(lo)!r})")
    return "(" + " OR ".join(parts) + ")"


__all__ = ["DEFINITIONS", "Checker"]
