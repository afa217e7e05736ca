"""`CheckBase`: one loaded run and the queries every check uses (hops of a pair, windows, placement)."""

from __future__ import annotations

from typing import Any, NamedTuple

from harness.contract.clock import CLOCK_CARRY_LIMIT_S
from harness.verify import expected
from harness.verify.invariants.scope import FaultScoping
from harness.verify.invariants.sql import (
    HOP_END_SQL,
    HOP_FIELDS,
    INF,
    MAX_MESSAGES,
    MAX_OFFENDERS,
    NO_HOST_SQL,
    REQUEST_END_SQL,
    Window,
    iso,
)
from harness.verify.rundata import Fault, RunData, pods_taken_down, stops_nodes, unread_failures, zone_is_edge

# fault actions whose pods keep running, out of their Services' endpoints: they receive nothing, but may still call
# out on their own (a database pool's connections), so only serving shows whether such a fault took effect
KEEPS_RUNNING = frozenset({"make_unready"})


class Applied(NamedTuple):
    """When a fault's primitive is taken to have acted (`CheckBase._applied_at`), and how a message names it."""

    at: float  # its inject counter snapshot, else its inject record
    named: str  # "its primitive had returned at ... (the inject counter snapshot; ...)" or "the inject at ..."


class DeclaredRecovery(NamedTuple):
    """A pair depending on a declared single point of failure, after its cascade (`_declared_recovery`)."""

    zone: str
    upstream: str
    instant: float | None  # back where it belongs (None: not within maxRecoveryS, or the cascade never ended)
    window: Window | None  # the measurement over [cascade end, + maxRecoveryS] (None: the cascade never ended)


class CheckBase(FaultScoping):
    """One loaded run and the helpers every check shares; `checker.Checker` joins the checks."""

    def __init__(self, run: RunData) -> None:
        super().__init__(run)
        self.total_hops = int(self._one("SELECT count(*) FROM hops") or 0)
        # the zones users entered (asked by each fault: a scan of every request each time)
        self.user_zones = frozenset(
            str(r[0]) for r in self.con.execute("SELECT DISTINCT zone FROM requests WHERE zone IS NOT NULL").fetchall()
        )
        # the longest hop and request (seconds): how far before a window a row may start and still reach it
        # (`_reaches`)
        self.longest = {
            "hops": float(self._one("SELECT max(coalesce(duration_ms, 0)) FROM hops") or 0.0) / 1000.0,
            "requests": float(self._one("SELECT max(coalesce(latency_ms, 0)) FROM requests") or 0.0) / 1000.0,
        }
        self.entry_down = self._entry_down_spans()
        # each fault's impact window's end (restore + its measured recovery), by fault identity: set by
        # `FaultMeasurer.faults`, read by the checks after it (a link's baseline, `UserChecks._quiet_spans`)
        self.impact_ends: dict[int, float] = {}
        # (fault identity, its zone, upstream) -> the end of the fault's locality excuse for that pair: the restore
        # plus the pair's measured recovery (maxRecoveryS when unmeasured): set by `FaultMeasurer.measure_fault`,
        # read by the spill rule (`RoutingChecks._spill_excused_until`), which excuses no longer than locality does
        self.excused_until: dict[tuple[int, str, str], float] = {}
        # the services users enter through: what a fault must take down to excuse a down entry point
        # (`UserChecks._can_take_entry_down`)
        self.entry_services = self.t.entry_services
        self.declared: dict[str, dict[str, Any]] = {}  # fault -> its declared single point of failure, judged
        # (fault, inject) -> `_declared_recovery` (locality's exclusions and availability's windows both ask)
        self._recovered: dict[tuple[str, float], tuple[float, list[DeclaredRecovery]]] = {}
        # (fault, inject) -> `effective_at` (the failover's start and the detection's bound both ask, per fault)
        self._effective: dict[tuple[str, float], float] = {}

    # -- helpers -------------------------------------------------------------
    def _one(self, sql: str, params: list[Any] | None = None) -> Any:
        row = self.con.execute(sql, params or []).fetchone()
        return None if row is None else row[0]

    def _reaches(self, lo: float, table: str = "hops") -> str:
        """SQL: the row's lifetime reaches `lo` (it ends at or after it), a hop's or (`table` requests) a request's.

        The bound on ts that the longest row allows comes first: DuckDB skips the row groups before it by
        their ts range. Without it each fault's query read every row from the start of the run, and a long
        run (a fault every few minutes) took time in the square of its length. A millisecond more than the
        longest row, so float rounding never drops one the end condition keeps.
        """
        end = REQUEST_END_SQL if table in ("requests", "req_marked") else HOP_END_SQL
        longest = self.longest["requests" if end is REQUEST_END_SQL else "hops"]
        return f"(ts >= {float(lo) - longest - 0.001!r} AND {end} >= {float(lo)!r})"

    def _hops(
        self, where: str, params: list[Any], limit: int = MAX_OFFENDERS, table: str = "hops"
    ) -> list[dict[str, Any]]:
        cols = ", ".join(HOP_FIELDS)
        rows = self.con.execute(
            f"SELECT {cols} FROM {table} WHERE {where} ORDER BY ts LIMIT {int(limit)}", params
        ).fetchall()
        return [dict(zip(HOP_FIELDS, r, strict=True)) for r in rows]

    def _clock_bound(self, zone: str) -> float:
        """How far the zone's hops may lie from where they happened on the runner's clock (seconds).

        Where the nodes keep their own clocks (clock.jsonl) a hop is put on the runner's clock, which stamps
        the faults, by the middle of its zone's measured offset interval (or its node's, measured through request
        pairs: the widest of the zone's clocks is taken): the truth is within its half-width
        either side, so a failover or recovery figure may be that much smaller than the truth. Judged
        against an SLO, the figure must be within it with that bound added. 0 on one clock (local, kind),
        and for a zone whose offset was not measured (coverage fails it as unverified).
        """
        clock = self.run.clock
        return 0.0 if clock is None else clock.bound(zone) or 0.0

    def _capped_bound(self, zone: str, unmeasured: float = 0.0) -> float:
        """`_clock_bound` as a slack between records stamped on different clocks: at least 0, at most
        CLOCK_CARRY_LIMIT_S; `unmeasured` for a zone whose offset was not measured. 0 on one clock.

        Why capped: a zone measured wider than the bound the rules carry (`CLOCK_CARRY_LIMIT_S`, the
        inventory's IP slack), or not at all, is failed as unverified by coverage (`UserChecks._clock_checks`)
        whatever the other rules say, so a slack beyond it would only widen what those rules excuse in the
        run's other records (a request tied to a hop seconds off, a lost log line hidden by a neighbour) for a
        verdict that fails anyway. Up to it the bound is carried whole: a runner far from the zones (a CI VM
        120 ms round trip from a Local Zone, +-60 ms) is no failure by itself. Why the caller picks
        `unmeasured`: the rules err on opposite sides. The request-to-hop tie (`UserChecks._tie_slack`) takes
        0, the hop's own stamp only: a loss tied to no hop counts against the budget, never excused on a
        guess. The gap rule (`UserChecks._gap_slack_sql`) takes the tolerance, the widest a kept clock may
        be off: a pod's log is not called incomplete on a guess either. One helper, so the cap and the
        measured bound are read one way by every rule that dates records across clocks.
        """
        clock = self.run.clock
        if clock is None:
            return 0.0
        known = clock.bound(zone)
        return unmeasured if known is None else min(max(known, 0.0), CLOCK_CARRY_LIMIT_S)

    # A failure per record file with lines the loader had to skip (`rundata.unread_failures`)
    _unread = staticmethod(unread_failures)

    @staticmethod
    def _summary(name: str, failures: list[str], ok_text: str) -> str:
        if not failures:
            return f"{name}: {ok_text}"
        more = f" (and {len(failures) - MAX_MESSAGES} more)" if len(failures) > MAX_MESSAGES else ""
        return "; ".join(failures[:MAX_MESSAGES]) + more

    def _protocol(self, u: str) -> str:
        return self.t.service(u).protocol  # u is a topology upstream (pairs, a service's upstreams): known

    def _affected_zones(self, f: Fault, user_zones: set[str]) -> list[str]:
        """The fault's zone, and, for a fault on a Region-only service (postgres), every zone whose users' calls
        reach it: they are all affected, and each must show its users during and after it (coverage) and
        counts its failed users among the fault's lost requests."""
        reach = self._cascade(f)
        others = {z for z, u, _ in self.pairs if u in reach and z in user_zones and z != f.zone}
        return [f.zone, *sorted(others)]

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
        next_fault: float | None = None,
        stale_sql: str | None = None,
    ) -> Window:
        """First instant after which successful hops are all `good_sql`, in [lo, hi] ([lo, hi) if `hi_open`).

        `next_fault`: the inject of the zone's next fault; a hop still in
        flight then (its lifetime reaches it) is that fault's, not this window's.
        `stale_sql`: failed hops that show the mesh still sending where it
        should no longer (a failover's attempts at the zone's dead instance):
        the instant comes only after the last of them, as after a misplaced
        success.
        """
        params = [zone, upstream, callers, lo, hi]
        upper = "<" if hi_open else "<="
        base = f"caller_zone = ? AND upstream = ? AND list_contains(?, caller_service) AND ts >= ? AND ts {upper} ?"
        if next_fault is not None:
            base += f" AND {HOP_END_SQL} < ?"
            params.append(next_fault)
        row = self.con.execute(
            f"""
            WITH w AS (SELECT ts, ok, coalesce(({good_sql}), false) AS good,
                              coalesce(({stale_sql or "false"}), false) AS stale FROM fhops WHERE {base}),
                 b AS (SELECT max(ts) FILTER (WHERE (ok AND NOT good) OR (NOT ok AND stale)) AS last_bad FROM w),
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
        w = Window(lo, int(row[0]), int(row[1]), int(row[2]), row[3], row[4], int(row[5]), row[6], hi=hi)
        until = w.instant if w.instant is not None else hi
        w.offenders = self._hops(
            f"{base} AND ts <= ? AND NOT (ok AND coalesce(({good_sql}), false))", [*params, until], table="fhops"
        )
        return w

    def _cut_off(self, f: Fault, callers: list[str]) -> bool:
        """True when the fault left the pair's callers without traffic: the zone's entry point, a caller or a
        service on a call path from the entry to a caller was down in the zone.

        Such a pair has no hops at all while it is cut off, so its own records
        cannot bound its recovery; the zone's user requests and the hops
        leading to its callers can (`_last_not_yet`).
        """
        return f.entry_down or bool(expected.dependants(self.t, tuple(callers)) & set(f.services))

    def _last_not_yet(self, zone: str, callers: list[str], lo: float, before: float) -> float | None:
        """The last record in [lo, before) showing the zone not yet serving through a cut-off pair.

        Anywhere: the pair's callers had no Ready pod in the zone (no call
        reaches a pod before it is Ready; a call it makes on its own is on
        record as a hop of the pair). In an edge zone also: a user request
        entering the zone that failed, or a hop to one of the pair's callers
        (or a service on the way to them) from the zone that failed or was
        served elsewhere, taken at its start: the zone's callers are reached
        only from inside the zone. Not in an AZ: Region callers anywhere
        reach its pods (Envoy spreads Region calls over every AZ), so its
        failed entry says nothing about its callers (that bound claimed
        ±80 ms for a recovery the AZ's caller had been Ready for 305 ms of).
        """
        marks = [self._callers_ready(zone, callers, lo, before)]
        if zone_is_edge(self.t, zone):
            marks.append(self._one("SELECT max(ts) FROM requests WHERE zone = ? AND NOT ok AND ts >= ? AND ts < ?",
                                   [zone, lo, before]))  # fmt: skip
            for s in sorted(expected.dependants(self.t, tuple(callers))):
                marks.append(
                    self._one(
                        f"SELECT max(ts) FROM fhops WHERE caller_zone = ? AND upstream = ? AND ts >= ? AND ts < ? "
                        f"AND NOT (ok AND coalesce(({self.expected_sql(zone, s)}), false))",
                        [zone, s, lo, before],
                    )
                )
        found = [float(m) for m in marks if m is not None]
        return max(found) if found else None

    def _callers_ready(self, zone: str, callers: list[str], lo: float, before: float) -> float | None:
        """When the first of `callers` got a Ready pod in `zone`, if none had one at `lo` and one did before `before`.

        None when a caller was Ready at `lo` (readiness shows nothing then)
        or none became Ready before `before`.
        """
        first = INF
        for c in callers:
            down_at_lo = [hi for d_lo, hi in self.run.down.get((zone, c), []) if d_lo <= lo and (hi is None or hi > lo)]
            if not down_at_lo:
                return None
            if down_at_lo[0] is not None:
                first = min(first, down_at_lo[0])
        return first if first < before else None

    def _declared_recovery(self, f: Fault) -> tuple[float, list[DeclaredRecovery]]:
        """A declared fault's cascade end, and per pair depending on its single point of failure the instant
        the pair served again after it (None: not within `maxRecoveryS`, or the cascade never ended).

        The cascade (readiness) ends first; the mesh serves a moment later:
        the callers' outlier detection ejected the dependants while they
        answered errors (product-api without its database), and those
        ejections run out their time after the pods are Ready again (a
        stability run: 1.2 s of "no healthy upstream" from every zone after
        the last product-api was Ready). Measured like any recovery: the
        first good hop after which the pair's hops stay good and find a host
        (`NO_HOST_SQL`), shown by the hops after it as any recovery is
        (`FaultMeasurer._unshown`, judged in `_declared_cascade_failures`), up to the pair's
        zone's next fault (its hops then are that fault's, as for a fault's own
        recovery: a kill of the zone's product-api half a second after the
        cascade, held longer than maxRecoveryS, failed the mesh "not back
        in-zone after the cascade", and a shorter one stretched the declared
        fault's window over its own).
        """
        if (f.fault, f.inject) in self._recovered:
            return self._recovered[(f.fault, f.inject)]
        end, _ = self.cascade_window(f)
        out = self._recovered_after(f, end)
        self._recovered[(f.fault, f.inject)] = (end, out)
        return end, out

    def _recovered_after(self, f: Fault, end: float, zone: str | None = None) -> list[DeclaredRecovery]:
        """Per pair (of `zone`, or every zone) depending on declared fault `f`'s single point of failure, the
        instant it served again after the cascade ended at `end` (INF: never; then nothing is measured): the
        last zone's cascade end for `_declared_recovery`, a zone's own for its users' window."""
        upto = min(end + self.slo.max_recovery_s, max(self.run_end, end))
        deps = expected.dependants(self.t, f.spof)
        out: list[DeclaredRecovery] = []
        for z, u, callers in self.pairs:
            if u not in deps or (zone is not None and z != zone):
                continue
            w = None
            if end < INF:
                nxt = self.next_inject(z, end)
                bound = min(upto, INF if nxt is None else nxt)
                w = self._measure(z, u, list(callers), end, bound, self.expected_sql(z, u), next_fault=nxt,
                                  stale_sql=NO_HOST_SQL)  # fmt: skip
            out.append(DeclaredRecovery(z, u, None if w is None else w.instant, w))
        return out

    def _next_fault_in_zone(self, f: Fault, after: float) -> float:
        nxt = self.next_inject(f.zone, after, f)
        return nxt if nxt is not None else max(self.run_end, after)

    # -- when a fault acted (`_acted_at`, `_died_at`, `effective_at`) -------------------------------------------

    def _returned_at(self, f: Fault) -> float | None:
        """When fault `f`'s primitive had returned: its inject counter snapshot, taken right after it
        (harness.chaos.actions._held_fault), between the inject and the restore (the run's end when it has
        none). None when the records have no such snapshot: the primitive raised (the timeline writes the
        restore and takes no snapshot), the snapshot found no sidecar to read, or a run from before snapshots.

        The timeline writes the inject *before* calling the primitive (as the restore before undoing it,
        `_undone_at`), and a primitive takes its time: kind's `docker stop` of a node returns once the node's
        container has stopped, after systemd's shutdown of its units, seconds on a busy machine. What the fault
        did, it did between the inject and this instant. The one reading of that instant: `_acted_at` (what
        the fault may have done by then) and coverage's allowance (`UserChecks._not_taken_effect`) share it.
        """
        end = f.restore if f.restore is not None else max(self.run_end, f.inject)
        snap = self._one(
            "SELECT min(ts) FROM upstream_stats WHERE label = ? AND ts >= ? AND ts <= ?",
            [f"inject {f.fault}", f.inject, end],
        )
        return None if snap is None else float(snap)

    def _applied_at(self, f: Fault) -> Applied:
        """From when fault `f` is judged to be on, for the rules that ask whether it showed its effect (coverage's
        `_effect_due` for pods and partitions, `_link_not_slowed` for a degraded link): when its primitive had
        returned (`_returned_at`), else its inject record, and a message's words for which of the two it is.

        The one fallback: without the snapshot the records do not say when the primitive returned, and the rules
        run from the inject record, never from the restore that `_acted_at`'s upper bound falls back to (from there
        anything the fault's pods did would be excused, a kill that never took effect with it). Each rule spelled
        that fallback itself, and only the pods' message said when it was taken; a degraded link judged without
        its snapshot said nothing of why its window began at the record.
        """
        returned = self._returned_at(f)
        if returned is None:
            return Applied(
                f.inject,
                f"the inject at {iso(f.inject)} (no inject counter snapshot: when its primitive returned is unknown)",
            )
        return Applied(
            returned,
            f"its primitive had returned at {iso(returned)} (the inject counter snapshot; inject {iso(f.inject)})",
        )

    def _acted_at(self, f: Fault) -> float:
        """The latest instant the records allow for fault `f`'s primitive to have acted: when it had returned
        (`_returned_at`), else its restore (the run's end when it has none): without the snapshot, anything
        up to the restore may have been its doing. An upper bound (how late a pod may have died), never an
        allowance: a rule that excused what a fault's pods did before this instant would excuse, for a fault
        without its snapshot, a kill that never took effect.
        """
        snap = self._returned_at(f)
        if snap is not None:
            return snap
        return f.restore if f.restore is not None else max(self.run_end, f.inject)

    def _hit_pods(self, f: Fault) -> tuple[list[str], str]:
        """The pods a fault took down, and how they are named in a message.

        `rundata.pods_taken_down`: a node fault's, those on its stopped nodes; any other fault that takes services
        down (kill_pod, make_unready; zone-down without a node record), the pods of its services in its zone alive
        at the inject. Asked only of faults that take pods down (service-down, zone-down).
        """
        pods = pods_taken_down(self.con, f)
        if stops_nodes(f):
            where = f"node {f.node}" if f.action == "kill_node" else f"the nodes of {f.zone}"
            return pods, f"no pod ran on {where} at the inject"
        return pods, f"no pod of {', '.join(f.services) or 'any service'} ran in {f.zone} at the inject"

    def _died_at(self, f: Fault, pods: list[str], slack: float = 0.0) -> dict[str, float]:
        """Per pod of `pods` that fault `f` took down: the earliest instant the records allow for its death, the
        later of the inject and the last successful hop it served up to when the primitive had acted
        (`_acted_at`, plus `slack` for a clock that is not the runner's). A pod not in the result served no
        such hop: it died from the inject.

        The one rule for when a fault's primitive killed a pod: the timeline records the inject *before* the
        primitive runs, and the primitive takes its time: kind's `kill_node` / `zone_outage` is `docker stop`
        of the node's container (its STOPSIGNAL SIGRTMIN+3 is a systemd shutdown, and containerd.service's
        KillMode=process leaves the pod containers running until PID 1 exits at its end: seconds), the
        existing-cluster backend's `kill_node` a cordon and drain (evictions, graceful termination). The pods
        serve meanwhile, and what they served shows they were alive; the snapshot after the primitive returned
        bounds their death from above, whatever they seem to serve after it. Asked by the gap rule of a killed
        pod's access log (`UserChecks._served_but_silent`, per pod) and by the failover's start
        (`effective_at`, over every pod the fault took down).
        """
        if not pods:
            return {}
        done = self._acted_at(f) + slack
        rows = self.con.execute(
            "SELECT CAST(serving_pod AS VARCHAR) AS pod, max(ts) FROM hops WHERE ok AND ts >= ? AND ts <= ? "
            "AND CAST(serving_pod AS VARCHAR) IN (SELECT unnest(?::VARCHAR[])) GROUP BY 1",
            [f.inject, done, pods],
        ).fetchall()
        return {str(p): max(f.inject, float(ts)) for p, ts in rows if ts is not None}

    def effective_at(self, f: Fault) -> float:
        """When fault `f` took effect: the inject, or, for a fault whose primitive kills pods (`_hit_pods`: a
        node's, a zone's, a service's in its zone; not a pod made unready, which `KEEPS_RUNNING`, nor a
        partition or a degraded link, which act at once), the last instant one of them was still alive by
        `_died_at`, never later than when the primitive had acted (`_acted_at`).

        A fault's failover is measured from it (`FaultMeasurer._failover`). From the inject record, the time a
        `docker stop` took counted as failover while the node's pods still served the users: the same mesh
        measured 0.56 s after a stop of 50 ms and passed, and 5.11 s after a stop of 4.6 s, failing
        maxFailoverS (5 s). A mesh that fails over late is as late after the pods died as after the inject.
        """
        if f.kind not in ("service-down", "zone-down") or f.action in KEEPS_RUNNING or f.unknown_kind is not None:
            return f.inject
        key = (f.fault, f.inject)
        if key not in self._effective:  # the records do not change while the checks read them
            died = self._died_at(f, self._hit_pods(f)[0])
            self._effective[key] = max(died.values(), default=f.inject)
        return self._effective[key]
