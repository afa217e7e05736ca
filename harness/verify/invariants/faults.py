"""Per-fault measurement: one scope per fault kind, then the failover, recovery, impact and losses they share.

A fault kind decides only *what* is asked of the pairs of its zone
(`scope.SCOPES`, which e2e's cool-down asks too): which must fail over to the Region, which must recover, whose
locality is not judged meanwhile. The measurements themselves are the same
for every kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from harness.contract.inventory import SLACK_S
from harness.observe.hops import host_ip_sql
from harness.verify import expected
from harness.verify.invariants.base import CheckBase
from harness.verify.invariants.scope import FaultScope
from harness.verify.invariants.sql import (
    FAILOVER_PENDING_SQL,
    HOP_TS_SLACK_S,
    INF,
    NO_HOST_SQL,
    RECOVERY_EVIDENCE_ALPHA,
    REQUEST_OK_SQL,
    Window,
    hop_text,
    merge_intervals,
    spans_sql,
    sql_str,
)
from harness.verify.rundata import Fault, zone_is_edge
from harness.verify.verdict import (
    FAIL,
    PASS,
    UNVERIFIED,
    FaultResult,
    PairResult,
    iso,
    seconds,
)

Exclusion = tuple[str, str, float, float]  # (caller zone, upstream, from, to): locality not judged then


@dataclass(frozen=True)
class FailoverSpan:
    """A pair's failover under way, judged by maxFailoverS: its failed hops in [start, until) are reported apart.

    With no `killed_ips` the span is a failover pair's (its failed hops to the
    zone's own instance qualify, STALE_SQL); with IPs a Region pair's
    (`FaultMeasurer._detection`), whose failed hops to one of the pods the
    fault killed qualify (availability's `_under_way_hops`).
    """

    zone: str  # the callers' zone
    upstream: str
    callers: tuple[str, ...]  # the services calling `upstream` there
    start: float  # the inject
    until: float  # the failover instant, at most maxFailoverS past the fault's effect (`effective_at`)
    killed_ips: tuple[str, ...] = ()


@dataclass
class Failover:
    """The failover half of one fault: per-pair results, the slowest failover, hops lost on the way."""

    ok: bool = True
    messages: list[str] = field(default_factory=list)
    effective_at: float = 0.0  # when the fault took effect (`CheckBase.effective_at`): failover_s counts from it
    failover_s: float | None = None
    instant: float | None = None  # the slowest pair's failover instant (losses count up to it)
    resolution_s: float | None = None
    window_ends: list[float] = field(default_factory=list)
    lost_hops: int = 0
    spans: list[FailoverSpan] = field(default_factory=list)  # each measured pair's [inject, instant)


@dataclass
class Recovery:
    """The recovery half of one fault: per-upstream recovery times and the slowest one."""

    ok: bool = True
    messages: list[str] = field(default_factory=list)
    values: dict[str, float | None] = field(default_factory=dict)  # upstream -> recovery_s (None: unmeasured)
    recovery_s: float | None = None
    resolution_s: float | None = None


@dataclass
class FaultMeasurements:
    """Everything the fault measurement hands to the rest of the verdict."""

    results: list[FaultResult] = field(default_factory=list)
    fallback_pairs: list[PairResult] = field(default_factory=list)
    exclusions: list[Exclusion] = field(default_factory=list)  # for locality
    impact: list[tuple[Fault, float]] = field(default_factory=list)  # (fault, end of its impact window)
    unrecovered: list[str] = field(default_factory=list)  # fallback failures: outages nobody injected, not recovered
    under_way: list[FailoverSpan] = field(default_factory=list)  # for availability: losses judged by time


class FaultMeasurer(CheckBase):
    """Per-fault failover, recovery, impact window and losses (the `fallback` invariant's numbers)."""

    def _down_spans(self) -> list[Exclusion]:
        """(caller zone, upstream, from, until + maxRecoveryS) of every pair whose upstream went down or spilled."""
        out: list[Exclusion] = []
        for z, u, _ in self.pairs:
            for lo, hi in self._not_whole(z, u):
                end = INF if hi is None else hi + self.slo.max_recovery_s
                out.append((z, u, lo, min(end, max(self.run_end, lo))))
        return out

    def _fault_hops(self) -> None:
        """The view `fhops`: the hops of faulted zones and of pairs whose upstream went down.

        Every per-fault and per-outage measurement reads only these. A view, not
        a copy: each of those queries bounds `ts`, so it reads only the row groups
        of its own window (a long run's hops are stored in time order,
        segment by segment); a copy of half a 10-hour run's hops took 5 s and the memory
        the long joins after it then spilled to disk for.
        """
        spans = [
            (f.zone, "", f.inject, self._next_fault_in_zone(f, f.restore if f.restore is not None else f.inject))
            for f in self.run.faults
        ]
        spans += [(z, "", lo, hi) for z, _, lo, hi in self._down_spans()]
        # a declared fault's pairs are measured after its whole cascade (`_declared_recovery`): one zone's
        # dependants Ready again late kept the window of every zone's open, but not these hops, and the zones
        # back long before showed "no traffic after the cascade" though their users were served
        for f in self.run.faults:
            if expected.declared(f):
                end, upto = self.cascade_window(f)
                deps = expected.dependants(self.t, f.spof)
                if end < INF:
                    spans += [(z, "", end, upto) for z, u, _ in self.pairs if u in deps]
        merged = merge_intervals(spans)
        cond = spans_sql("caller_zone", [(z, lo, hi) for z, _, lo, hi in merged])
        self.con.execute(f"CREATE OR REPLACE TEMP VIEW fhops AS SELECT * FROM hops WHERE {cond}")

    def _failover_end(self, f: Fault, upstream: str, fault_end: float) -> tuple[float, str]:
        """Where the failover window ends: the restore, or earlier when the upstream is up again in the zone.

        From the inventory's readiness, not from the timeline (a pod is
        recorded ready before the local backend's sidecars are told of it),
        and from the hops themselves: the first success of a replacement.
        """
        end, why = fault_end, "restore"
        for lo, hi in self.run.down.get(self.run.up_key(f.zone, upstream), []):
            if hi is not None and hi > f.inject and lo <= fault_end:
                end, why = (hi, "ready again") if hi < fault_end else (fault_end, "restore")
                break
        # A pod that did not exist at the inject (the Deployment's replacement) serving the zone's calls is the
        # zone's instance back, whatever the records' clocks say: on kind/EKS the inventory is a watch and the
        # endpoints reach Envoy on their own path, so its first hop can come milliseconds before the recorded
        # ready (and the restore kill_pod records at it). Left in the window, that in-zone success read as
        # "not failed over yet" and a clean failover became "no failover to the Region".
        first_new = self._one(
            """
            SELECT min(h.ts) FROM hops h
            WHERE h.caller_zone = ? AND h.upstream = ? AND h.ok AND h.serving_zone = ? AND h.ts >= ? AND h.ts < ?
              AND h.serving_pod IN (SELECT pod FROM intervals GROUP BY pod HAVING min(start_ts) > ?)
            """,
            [f.zone, upstream, f.zone, f.inject, end, f.inject],
        )
        if first_new is not None:
            return float(first_new), "a replacement served"
        return end, why

    # -- the measurements every kind shares ----------------------------------------
    def _failover(self, f: Fault, scope: FaultScope, fault_end: float, pair_results: dict[str, PairResult]) -> Failover:
        """Per failover pair: the first instant after which successful hops are all Region-served and no hop
        is sent to the zone's own (dead) instance any more.

        Envoy's workers learn of an ejection one by one, and until each has,
        its attempts go to the dead instance: a wide-topology run had failed
        hops there up to 459 ms after the kill while others were Region-served
        from 34 ms on. The failover is complete when the last of them is past
        (`STALE_SQL`); judged from the first Region success alone, those
        losses fell after the "failover" and were counted by chance (8 of 10
        identical runs had 2 to 5 of them). So is each hop that found no
        host at all (UH, NR: `FAILOVER_PENDING_SQL`): a chain whose Region
        target is healthy always has one, so a pair flapping between the
        Region and "no healthy upstream" for seconds has not failed over
        steadily, and its failover time runs to the last of them (it was
        measured from the first Region success and passed).

        The failover time runs from when the fault took effect (`effective_at`: its pods dead, at most when its
        primitive had acted), not from its inject record, written before the primitive ran: the window still
        opens at the inject (a hop the killed pods served meanwhile is in-zone, so the instant comes after it).
        An instant before that start (an AZ's callers served by the Region, the killed pod among it, which served
        on: a fault that never took effect, which coverage fails) is a failover of 0 s, never a negative one.
        """
        out = Failover(effective_at=self.effective_at(f))
        start = out.effective_at
        measured: list[tuple[float, float | None, float]] = []
        unasked = 0  # pairs whose callers were down through the fault
        for u, callers in scope.failover:
            end, why = self._failover_end(f, u, fault_end)
            back = self._callers_back(f, u, callers, f.inject, end)
            if back is None:  # down through the fault (another fault of the zone): nothing of theirs to fail over
                pair_results[u] = PairResult(
                    caller_zone=f.zone, upstream=u, status=PASS, fault=f.fault,
                    counts={"hops_during": 0, "failover_s": None, "failover_window_end": end},
                    message=f"{f.zone} -> {u}: its callers ({', '.join(callers)}) were down from before fault "
                    f"{f.fault} to its end and called nothing: no failover to measure",
                )  # fmt: skip
                unasked += 1
                continue
            pstart = max(start, back)
            out.window_ends.append(end)
            w = self._measure(
                f.zone,
                u,
                callers,
                f.inject,
                end,
                "serving_kind = 'region'",
                hi_open=True,
                stale_sql=FAILOVER_PENDING_SQL,
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
                    "failover_s": None if w.instant is None else max(0.0, w.instant - pstart),
                    "failover_resolution_s": w.resolution,
                    "failover_window_end": end,
                    "lost_hops": w.lost,
                },
                first_offenders=w.offenders,
            )
            pair_results[u] = pr
            out.lost_hops += w.lost
            first = f", first at {hop_text(w.offenders[0])}" if w.offenders else ""
            if w.hops == 0:
                pr.status = FAIL
                pr.message = f"fallback: {f.zone} -> {u}: no traffic during fault {f.fault}: failover unverified"
            elif w.instant is None:
                pr.status = FAIL
                misplaced = (
                    f"last served outside the Region or sent to the zone's own instance at {iso(w.last_misplaced)}, "
                    if w.last_misplaced
                    else ""
                )
                pr.message = (
                    f"fallback: {f.zone} -> {u}: no failover to the Region during fault {f.fault} "
                    f"(window {iso(f.inject)} .. {iso(end)}, ended by the {why}; {w.hops} hops, {w.failed} "
                    f"failed, {misplaced}{w.good} Region-served){first}"
                )
            else:
                d = max(0.0, w.instant - pstart)
                measured.append((d, w.resolution, w.instant))
                # until the failover, or maxFailoverS past the fault's effect when slower: the rest counts as any loss
                until = w.instant if d <= self.slo.max_failover_s else pstart + self.slo.max_failover_s
                out.spans.append(FailoverSpan(f.zone, u, tuple(callers), f.inject, until))
                clock = self._clock_bound(f.zone)
                if d + clock > self.slo.max_failover_s:
                    # within the SLO as measured, past it only with the clock's bound: the clock leaves it undecided
                    pr.status = UNVERIFIED if clock_alone(d, self.slo.max_failover_s, clock) else FAIL
                    pr.message = (
                        f"fallback: {f.zone} -> {u}: failover "
                        f"{over_slo(d, w.resolution, self.slo.max_failover_s, 'maxFailoverS', clock)} "
                        f"in fault {f.fault}{first}"
                    )
            if pr.status in (FAIL, UNVERIFIED):
                out.ok = False
                out.messages.append(pr.message)
        if scope.failover and measured and len(measured) + unasked == len(scope.failover):
            out.failover_s, out.resolution_s, out.instant = max(measured, key=lambda x: x[0])
        return out

    def _callers_back(self, f: Fault, u: str, callers: list[str], at: float, end: float) -> float | None:
        """When the pair's callers were there to call `u` from `at` on (`f`'s inject for its failover, the restore
        for its recovery): `at`, or, where every one of them was down at it from before `f` began (the inventory's
        readiness: another fault of the zone took them down) and called `u` not once meanwhile, the first one's
        return; None when none was back before `end`.

        A LAX public-api killed, then its product-api while it was down: the replacement public-api found the
        Region's product-api at once, and measured from the product-api's kill its failover read the ten seconds
        it was away (past maxFailoverS: the correct mesh failed), or, down through the whole kill, "no traffic:
        failover unverified"; its recovery read the time from the product-api's restore to the public-api's
        return (past maxRecoveryS when that was longer). Callers `f` itself took down are not asked: their
        return is part of its recovery. A caller the inventory says down that still called (a pod unready but
        running, a withdrawal Envoy had not learnt) is judged from `at` as ever: its calls are the record."""
        returns = []
        for c in callers:
            spans = self.run.down.get(self.run.up_key(f.zone, c), [])
            back = [INF if hi is None else hi for lo, hi in spans if lo < f.inject and (hi is None or hi > at)]
            if not back:
                return at  # this caller was up at `at`, or down by `f` alone
            returns.append(min(back))
        back_at = min(returns)
        # a replacement's first hop may come before its recorded ready (the inventory is a watch): the slack
        called = self._one(
            "SELECT count(*) FROM fhops WHERE caller_zone = ? AND upstream = ? AND list_contains(?, caller_service) "
            "AND ts >= ? AND ts < ?",
            [f.zone, u, callers, at, min(back_at, end) - SLACK_S],
        )
        if called:
            return at
        return back_at if back_at < end else None

    def _recovery(self, f: Fault, scope: FaultScope, pair_results: dict[str, PairResult]) -> Recovery:
        """Per recovery pair: the first instant after the restore from which hops are served where they belong."""
        out = Recovery()
        if f.restore is None:
            out.ok = False
            out.messages.append(
                f"fallback: {f.zone}: fault {f.fault} never recovers: no restore record "
                f"(injected at {iso(f.inject)}, run ends {iso(self.run_end)})"
            )
            out.values = {u: None for u, _ in scope.recovery}
            return out
        nxt = self.next_inject(f.zone, f.restore, f)
        hi = nxt if nxt is not None else max(self.run_end, f.restore)
        measured: list[tuple[float, float | None]] = []
        for u, callers in scope.recovery:
            since = self._back_at(f, u)
            # callers another fault of the zone had taken down before this one and kept down past its restore
            if (back := self._callers_back(f, u, callers, since, hi)) is not None and back > since:
                out.messages.append(
                    f"{f.zone} -> {u}: recovery after fault {f.fault} measured from {iso(back)}, when its callers "
                    f"({', '.join(callers)}), down from before the fault, were back"
                )
                since = back
            w = self._recovery_window(f, u, callers, hi, nxt, since)
            self._bound_cut_off(f, callers, w)
            pr = pair_results.get(u) or PairResult(
                caller_zone=f.zone, upstream=u, status=PASS, fault=f.fault, counts={}, first_offenders=[]
            )
            pair_results[u] = pr
            rec = None if w.instant is None else w.instant - since
            out.values[u] = rec
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
            failure = self._recovery_failure(f, u, w, rec)
            msg = failure or self._recovery_unshown(f, u, callers, w, hi)
            # not shown (no in-zone hop yet, or too few after it) before the zone's next fault: left to it
            if msg and (rec is None or not failure) and (g := self._superseded_by(f, u)) is not None:
                out.messages.append(
                    f"{f.zone} -> {u}: recovery after fault {f.fault} not measurable: fault {g.fault} began "
                    f"{g.inject - f.restore:.3f}s after the restore and its own recovery must show the pair back"
                )
                msg = ""
            elif msg and (rec is None or not failure) and (cut := self._cut_short_by(f, callers)) is not None:
                msg, note = self._recovery_after_cut(f, u, callers, cut, pr)
                out.messages += [note] if note else []
            elif msg and (rec is None or not failure) and nxt is None:
                msg = self._ended_before_due(f, u, w, rec, msg, hi)
            if not msg:
                msg = self._pods_left_out(f, u, callers, hi)
            if msg:
                undecided = failure and rec is not None and clock_alone(rec, self.slo.max_recovery_s,
                                                                        self._clock_bound(f.zone))  # fmt: skip
                pr.status = FAIL if pr.status == FAIL or not undecided else UNVERIFIED
                pr.message = f"{pr.message}; {msg}" if pr.message else msg
                if not pr.first_offenders:
                    pr.first_offenders = w.offenders
                out.ok = False
                out.messages.append(msg)
        if out.values and len(measured) == len(out.values):
            out.recovery_s, out.resolution_s = max(measured, key=lambda x: x[0])
        return out

    def _superseded_by(self, f: Fault, u: str) -> Fault | None:
        """The zone's next fault, when it began before `f`'s recovery of pair (zone, u) could be shown and
        before maxRecoveryS had passed, and asks that recovery of the pair itself after its own restore.

        The mesh takes time to use a restored instance (Consul's endpoint change reaches Envoy in about a
        second: the hops stay with the Region meanwhile), and the experiments may follow each other faster
        (the next steady-state probe and counter snapshot, well under a second on an idle machine): the
        window to the next inject then holds no in-zone hop, or none at all, and "never recovers" failed a
        mesh that a busier machine, starting the next fault a second later, passed. A next fault that takes
        the pair's upstream down again, or the whole zone (zone-down, partition, a degraded link), measures the
        pair's recovery after its own restore (`SCOPES`): a mesh that never recovered fails there. A next
        fault that does not (a kill of another service) cut the window short (`_cut_short_by`).
        """
        return self._asks_recovery_of(self.cut_by(f), u)

    def _asks_recovery_of(self, g: Fault | None, u: str) -> Fault | None:
        """`g`, when it measures the recovery of pair (g.zone, u) after its own restore (`SCOPES`), else None."""
        if g is None:
            return None
        return g if any(v == u for v, _ in self.scope(g).recovery) else None

    def _left_to_next(self, zone: str, u: str, since: float) -> Fault | None:
        """The zone's next fault after `since`, when it began within maxRecoveryS of it and asks the recovery of
        pair (zone, u) after its own restore (it takes `u` or the zone down, or degrades its link: `SCOPES`).

        For a declared single point of failure's cascade, which ends in the Region (`_declared_recovery`),
        what `_superseded_by` is for a fault of the zone: a recovery cut short by the zone's next fault is
        that fault's to show, and a mesh that never came back fails there.
        """
        return self._asks_recovery_of(self.next_within_recovery(zone, since), u)

    def _bound_cut_off(self, f: Fault, callers: list[str], w: Window) -> None:
        """A pair whose callers fault `f` cut off has no hop while cut off: what the zone's requests met bounds
        its recovery instant from below (`_last_not_yet`), so its resolution says how far the records place it."""
        assert f.restore is not None
        if w.instant is not None and self._cut_off(f, callers):
            mark = self._last_not_yet(f.zone, callers, f.restore, w.instant)
            if mark is not None and (w.prev_bad is None or mark > w.prev_bad):
                w.prev_bad = mark

    def _cut_short_by(self, f: Fault, callers: list[str]) -> tuple[Fault, list[str]] | None:
        """The zone's next fault, when it began within maxRecoveryS of `f`'s restore (None when there is none),
        with what it took down on the pair's way: a caller, a service on the way from the zone's entry to one (as
        `_cut_off`), or the entry point; nothing of it (an empty list) when it took down something else.

        A kill of the caller (public-api), or of the entry before it (frontend), a moment after the callee's
        (product-api) restore leaves the pair no hop to show it back before that inject, and the next fault's
        own recovery is not the pair's: `_recovery_after_cut` measures the pair after that fault's restore.
        So does a next fault that took down something else of the zone (a kill of LAX's product-api half a
        second after the restore of its public-api, for pair LAX -> public-api): the window to its inject held
        the frontend's last second on the Region (Consul hands Envoy a restored endpoint in about a second) and
        no in-zone hop, and "never recovers" failed a mesh that a machine one second slower to start the next
        experiment passed. The pair's hops while that fault is on are its (an ejection of the public-api while
        it answers errors without its product-api is the mesh's reaction to it), so they are not read as this
        recovery; the hops after its restore are the pair's next record.
        """
        g = self.cut_by(f)
        if g is None:
            return None
        # the callers, or a service on the way to them (frontend, the entry point): either leaves the pair no hop
        path = expected.dependants(self.t, tuple(callers)) & (set(g.services) | self._node_fault_services(g))
        return g, sorted(path) or ([f"{f.zone}'s entry point"] if g.entry_down else [])

    def _recovery_after_cut(
        self, f: Fault, u: str, callers: list[str], cut: tuple[Fault, list[str]], pr: PairResult, said: str = ""
    ) -> tuple[str, str]:
        """(failure, note) of pair (f.zone, u), whose recovery after `f` the zone's next fault cut short
        (`_cut_short_by`: taking its callers down, or anything else of the zone): the pair is measured after that
        fault's restore, as after `f`'s.

        The next experiment may start before Consul's endpoint change reaches Envoy (about a second), and a kill
        of the callers then leaves the pair no hop at all until they are back: the verdict failed the mesh as
        unverified, while a machine one second slower to start the next experiment passed it. The callers' hops
        after that restore are the pair's next record, and they show the pair where it belongs or not; so its
        recovery is measured there, by the same rules (the first good hop after the last misplaced one or
        the last that found no host, shown against a spill, within maxRecoveryS of that restore). A mesh that
        never takes the zone's upstream back still serves those hops elsewhere and fails ("never recovers",
        after that restore). A fault that was never restored leaves it unverified; one that took the pair's
        upstream or the zone down itself asks the recovery after its own restore (`_superseded_by`).

        A window after that restore cut short again by the zone's next fault is measured after that one's
        restore in turn (`said`: the cuts before, for the message), as the cool-down waits for it
        (`FaultScoping.cut_chain`): kills of LAX's product-api, its public-api 0.3 s after that restore and its
        frontend 0.3 s after the next left product-api's pair no hop before the third inject, and "never
        recovers" failed the mesh that a machine starting the third experiment 5 s later passed.
        """
        assert f.restore is not None
        g, hit = cut
        did = f"took down {', '.join(hit)}" if hit else "began"
        gap = f"{g.inject - f.restore:.3f}s"
        why = (
            f"{said}, then fault {g.fault} {did} {gap} after that fault's restore"
            if said
            else f"fault {g.fault} {did} {gap} after the restore of {f.fault}, before the mesh could show the pair back"
        )
        if g.restore is None:
            return (
                f"fallback: {f.zone} -> {u}: recovery after fault {f.fault} unverified, not shown missing: {why}, "
                "and was never restored",
                "",
            )
        later = replace(f, restore=g.restore)  # the pair's window begins with its callers' return
        nxt = self.next_inject(f.zone, g.restore, g)
        hi = nxt if nxt is not None else max(self.run_end, g.restore)
        w = self._recovery_window(later, u, callers, hi, nxt)
        self._bound_cut_off(g, callers, w)  # its callers were down until then: the zone's records bound it
        rec = None if w.instant is None else w.instant - g.restore
        pr.counts.update({"recovery_after_cut_s": rec, "recovery_after_cut_resolution_s": w.resolution})
        failure = self._recovery_failure(later, u, w, rec)
        msg = failure or self._recovery_unshown(later, u, callers, w, hi)
        if msg and (rec is None or not failure) and (h := self._superseded_by(later, u)) is not None:
            return "", f"{f.zone} -> {u}: recovery after fault {f.fault} not measurable: {why}; left to {h.fault}"
        if msg and (rec is None or not failure) and (again := self._cut_short_by(later, callers)) is not None:
            return self._recovery_after_cut(later, u, callers, again, pr, said=why)
        if msg and (rec is None or not failure) and nxt is None:
            msg = self._ended_before_due(later, u, w, rec, msg, hi)
        if msg:
            return f"{msg}: measured after the restore of fault {g.fault} at {iso(g.restore)}, as {why}", ""
        assert rec is not None and w.instant is not None
        return "", (
            f"{f.zone} -> {u}: recovery after fault {f.fault} not measurable: {why}; back where it belongs "
            f"{seconds(rec, w.resolution)} after the restore of {g.fault}, at {iso(w.instant)}"
        )

    def _ended_before_due(self, f: Fault, u: str, w: Window, rec: float | None, msg: str, hi: float) -> str:
        """`msg`, why the recovery of pair (f.zone, u) was not shown in its window [restore, hi], unless the run's
        end cut that window before maxRecoveryS had passed: then the recovery is unverified, and says so.

        Within maxRecoveryS a pair still served from the Region (or still spilling) is no failure: Consul hands
        Envoy a restored endpoint in about a second, and outlier ejections run out their time. A run that ends
        first (a game day's traffic stopped by hand; e2e's cool-down once stopped the users after 20 requests
        per zone, a second at 20 requests a second, and now waits for the records to show the recovery or for
        maxRecoveryS: `harness.verify.pending`) shows the recovery when a hop lands in its last moments, and
        else nothing either way: read as "fault
        ... never recovers", the verdict claimed a failure at 2 requests a second that the same mesh showed
        recovered at 20, and on a longer run at any rate. The verdict still fails (unverified), and says the
        records stop before the pair could be shown back. A window the SLO's time fills is judged as before.
        """
        assert f.restore is not None
        if hi >= f.restore + self.slo.max_recovery_s:
            return msg
        ended = (
            f"unverified, not shown missing: the run ended {max(0.0, hi - f.restore):.3f}s after the restore at "
            f"{iso(f.restore)}, before maxRecoveryS ({self.slo.max_recovery_s:g}s) had passed"
        )
        if rec is not None:  # shown back, by too few hops to rule out a mesh still spilling
            return f"{msg}: {ended} (a run that goes on longer after its last restore shows it)"
        if w.hops == 0:
            head = f"fallback: {f.zone} -> {u}: fault {f.fault}: no traffic after restore at {iso(f.restore)}"
            return f"{head} (recovery {ended})"
        seen = f"{w.hops} hops after it, {w.failed} failed, none where it belongs after the last served elsewhere" + (
            f" at {iso(w.last_misplaced)}" if w.last_misplaced is not None else ""
        )
        first = f", first at {hop_text(w.offenders[0])}" if w.offenders else ""
        return (
            f"fallback: {f.zone} -> {u}: recovery after fault {f.fault} {ended} ({seen}: a run that goes on longer "
            f"after its last restore shows it){first}"
        )

    def _detection(self, f: Fault) -> list[FailoverSpan]:
        """Region pairs whose calls still went to the pods the fault killed: the mesh had not yet learned of it.

        Region callers spread their calls over every AZ's pods (no failover
        pair: the other AZs simply carry on). When an AZ's node dies, the
        calls Envoy sends its pods before the endpoints are withdrawn hang
        (a dead node answers nothing) until a user gives up: in an
        az-node-loss run a hop 190 ms after the kill, 10 s long. How many
        requests that catches is the request rate times a detection delay
        of milliseconds; counted, 1 of a window's 190 sat one request below
        the budget, and two would have failed a correct mesh. As for a
        failover pair: the span runs from the inject to the last failed hop
        sent to one of those pods, at most maxFailoverS past when the fault
        took effect (`effective_at`; a mesh slower than that has the rest counted). The killed pods: those
        whose IP was let go between the inject and the restore, and those on
        the nodes a node fault stopped (`rundata._node_fault_pods`: on
        kind/EKS the API lets their IPs go only after the restore).
        """
        end = f.restore if f.restore is not None else max(self.run_end, f.inject)
        bound = self.effective_at(f) + self.slo.max_failover_s
        # every service the fault killed a pod of, also those it left an instance of (a two-node AZ losing one)
        killed = set(f.services) | self._node_fault_services(f)
        out: list[FailoverSpan] = []
        for z, u, callers in self.pairs:
            if zone_is_edge(self.t, z) or u not in killed:
                continue
            # a node fault's pods died at the inject, whenever the API's view let their IPs go (kind/EKS: after
            # the restore; rundata._node_fault_pods)
            rows = self.con.execute(
                "SELECT DISTINCT ip FROM intervals WHERE zone = ? AND service = ? AND ip IS NOT NULL "
                "AND start_ts < ? AND end_ts BETWEEN ? AND ? "
                "UNION SELECT ip FROM node_fault_pods WHERE fault = ? AND inject = ? AND zone = ? AND service = ? "
                "AND ip IS NOT NULL",
                [f.zone, u, f.inject, f.inject, end, f.fault, f.inject, f.zone, u],
            ).fetchall()
            ips = tuple(sorted(str(r[0]) for r in rows))
            if not ips:
                continue
            dead = ", ".join("'" + sql_str(i) + "'" for i in ips)
            last = self._one(
                f"SELECT max(ts) FROM hops WHERE caller_zone = ? AND upstream = ? AND NOT ok "
                f"AND {host_ip_sql('upstream_host')} IN ({dead}) "
                f"AND ts < ? AND {self._reaches(f.inject)}",
                [z, u, bound],
            )
            if last is not None:
                out.append(FailoverSpan(z, u, tuple(callers), f.inject, min(float(last) + 1e-6, bound), ips))
        return out

    def _back_at(self, f: Fault, upstream: str) -> float:
        """Where the recovery of pair (f.zone, upstream) is measured from: the restore, or earlier when the
        inventory shows the upstream ready again in the zone before the restore was recorded.

        The SLO is restore -> back in-zone, and the restore is the instant the zone's instance is back: kill_pod
        records it at the replacement's first `ready` event, but a timeline that wrote it later (one that waited
        for readiness before writing it, a game day's hand-written record) moved the start of the clock, and a
        mesh that took 12 s to send the zone's calls back to a ready replacement passed a 10 s maxRecoveryS when
        the record came 5 s after the readiness: same mesh, another verdict by when a line was written. The
        failover window already ends at that readiness (`_failover_end`); the recovery now starts from it. A
        held fault (unready, partition, link) is recorded before it is undone, its readiness after: the restore.
        Only for an upstream the fault itself took down (its `services`): another outage of it that ended during
        a fault of something else is not this fault's end.
        """
        assert f.restore is not None
        if upstream not in f.services:
            return f.restore
        spans = [(lo, hi) for lo, hi in self.run.down.get(self.run.up_key(f.zone, upstream), [])
                 if (hi is None or hi > f.inject) and lo <= f.restore]  # fmt: skip
        if any(hi is None or hi >= f.restore for _, hi in spans):
            return f.restore  # still (or again) down at the restore: back only after it
        ends = [hi for _, hi in spans if hi is not None]
        return max(ends) if ends else f.restore

    def _recovery_window(
        self, f: Fault, u: str, callers: list[str], hi: float, nxt: float | None, since: float | None = None
    ) -> Window:
        """The pair's recovery after `f`'s restore (`since`: the instant the upstream was back, `_back_at`): in-zone
        again before the pair's next outage, if it was.

        The window first ends where the pair's upstream next went down or
        spilled after the restore (an unplanned restart, a replica unready):
        the misplaced hops of that later outage are its own (locality's
        readiness exclusions judge them), not this fault's. Measured to `hi`
        they made the fault "recover" after them, 70 s late, or within the
        SLO with a wrong figure, by when the later outage happened. Only when
        the pair was not back before that outage is the window widened past
        it, one outage at a time. So does a later fault in another zone that
        takes down a Region-only service the pair's upstream calls
        (`_shared_outages`: a postgres primary killed in one AZ fails every
        zone's product-api calls): its failed hops are its own, and counted
        as this fault's they made an AZ node loss "recover" 14 s late, its
        impact window then charged with the primary's declared losses.
        """
        assert f.restore is not None
        start = f.restore if since is None else since
        good = self.expected_sql(f.zone, u)
        later = sorted(
            {lo for lo, _ in self._not_whole(f.zone, u) if f.restore < lo < hi}
            | {g.inject for g in self._shared_outages(f, u) if f.restore < g.inject < hi}
        )
        for cut in later:
            w = self._measure(f.zone, u, callers, start, cut, good, hi_open=True, next_fault=nxt, stale_sql=NO_HOST_SQL)
            if w.instant is not None:
                return w
        return self._measure(f.zone, u, callers, start, hi, good, next_fault=nxt, stale_sql=NO_HOST_SQL)

    def _pods_left_out(self, f: Fault, u: str, callers: list[str], hi: float) -> str:
        """Why a pod of `u` in fault `f`'s zone, ready after the restore, is shown never taken back into service by
        the mesh ("" when none is): its callers' hops all went to the other pods they spread over.

        A recovery is judged by where the pair's hops went: for an edge zone its own zone, for an availability
        zone the Region as a whole (Consul CE spreads a Region caller's calls over every AZ's pods). So an AZ
        whose product-api came back Ready after a node or pod kill, and which the Region's callers never
        called again (its endpoint never back in their Envoys), passed at once: the other AZ's pod served every
        hop, in the Region. So did an edge zone of two replicas whose replacement was never used beside the
        one that survived. The Region is left one instance short for the next fault (a Local Zone failing over
        to it), and the fault's own service never came back.

        Envoy spreads a pool's calls over every healthy endpoint (round robin, no locality in CE): a pod the
        mesh took back gets about 1/k of the n hops its callers sent to the k ready pods of its pool (the zone's
        for an edge zone, every AZ's for an AZ). Judged over the recovery's own bound, from when the pod was
        ready after the restore to maxRecoveryS after the restore: one that served no hop in all that time
        while its callers sent n hops to the pool is not back within maxRecoveryS when a mesh that took it back
        would leave it none only with a chance (1 - 1/k)^n below `RECOVERY_EVIDENCE_ALPHA`. No claim when the
        zone's next fault or the end of the run comes before that bound (a mesh slow to take it back is still
        within the SLO), when the pod went unready again before it, or with too few hops to tell.
        """
        assert f.restore is not None
        if f.kind not in ("service-down", "zone-down"):
            return ""
        until = f.restore + self.slo.max_recovery_s
        if until > hi:
            return ""
        edge = zone_is_edge(self.t, f.zone)
        pool_zones = [f.zone] if edge else [z.name for z in self.t.region_zones]
        pods = {p: r for p, r in self.run.pod_ready.items() if r.service == u and r.zone in pool_zones}
        for pod, place in sorted(pods.items()):
            span = next(((lo, end) for lo, end in place.spans if end > f.restore and lo < until), None)
            if place.zone != f.zone or span is None or span[1] < until or self._return_unrecorded(f, pod):
                continue
            since = max(span[0], f.restore)
            if self._one("SELECT count(*) FROM hops WHERE serving_pod = ? AND ts >= ? AND ts < ?", [pod, since, until]):
                continue
            pool = sorted(p for p, r in pods.items() if any(a < until and b > since for a, b in r.spans))
            caller_sql = "caller_zone = ?" if edge else "caller_kind = 'region'"
            n = int(
                self._one(
                    f"SELECT count(*) FROM hops WHERE {caller_sql} AND upstream = ? "
                    "AND list_contains(?, caller_service) AND list_contains(?, CAST(serving_pod AS VARCHAR)) "
                    "AND ts >= ? AND ts < ?",
                    ([f.zone] if edge else []) + [u, callers, pool, since, until],
                )
                or 0
            )
            chance = (1.0 - 1.0 / len(pool)) ** n
            if n and chance < RECOVERY_EVIDENCE_ALPHA:
                where = f.zone if edge else f"the Region ({', '.join(pool_zones)})"
                return (
                    f"fallback: {f.zone} -> {u}: {pod} in {f.zone}, ready from {iso(since)} after fault {f.fault}, "
                    f"served none of the {n} hops {', '.join(callers)} in {f.zone if edge else 'the Region'} sent "
                    f"to {u}'s {len(pool)} pods in {where} up to maxRecoveryS after the restore ({iso(until)}; a "
                    f"mesh that took it back leaves it none with a chance of {chance:.1g}): it never came back into "
                    "service"
                )
        return ""

    def _return_unrecorded(self, f: Fault, pod: str) -> bool:
        """Whether `pod` was on a node fault `f` stopped in an inventory without readiness events: when it came
        back is not on record. The one reading of readiness (`rundata._readiness`) counts it ready throughout
        there (no `ready` would end the `unready` its node's stop implies), which is what a zone's outages
        need, but "ready after the restore" would then be a guess, and `_pods_left_out` claims nothing of it."""
        if self.run.readiness_events:
            return False
        return bool(self._one("SELECT count(*) FROM node_fault_pods WHERE fault = ? AND pod = ?", [f.fault, pod]))

    def _shared_outages(self, f: Fault, u: str) -> list[Fault]:
        """Later faults of other zones that take down a Region-only service the pair's upstream `u` reaches.

        Region-placed services serve every zone, so their outage is every zone's: each zone's calls through
        `u` fail with it, whichever zone the fault was injected in.
        """
        region = {s.name for s in self.t.services if s.placement.value == "region"}
        return [
            g
            for g in self.run.faults
            if g is not f and g.zone != f.zone and g.inject > (f.restore or f.inject)
            and g.kind in ("service-down", "zone-down")
            and any(u in expected.dependants(self.t, (s,)) for s in set(g.services) & region)
        ]  # fmt: skip

    def _recovery_failure(self, f: Fault, u: str, w: Window, rec: float | None) -> str:
        """Why the recovery of pair (f.zone, u) fails, or "" when it does not."""
        assert f.restore is not None
        first = f", first at {hop_text(w.offenders[0])}" if w.offenders else ""
        if w.hops == 0:
            return (
                f"fallback: {f.zone} -> {u}: fault {f.fault} never recovers: no traffic after "
                f"restore at {iso(f.restore)} (recovery unverified)"
            )
        if rec is None:
            return (
                f"fallback: {f.zone} -> {u}: fault {f.fault} never recovers: no steady successful "
                f"{'in-zone' if 'caller_zone' in self.expected_sql(f.zone, u) else 'Region'} service "
                f"after restore at {iso(f.restore)} ({w.hops} hops, {w.failed} failed){first}"
            )
        clock = self._clock_bound(f.zone)
        if rec + clock > self.slo.max_recovery_s:
            return (
                f"fallback: {f.zone} -> {u}: recovery "
                f"{over_slo(rec, w.resolution, self.slo.max_recovery_s, 'maxRecoveryS', clock)} after fault "
                f"{f.fault}{first}"
            )
        return ""

    def _recovery_unshown(self, f: Fault, u: str, callers: list[str], w: Window, hi: float) -> str:
        """Why fault `f`'s measured recovery of pair (f.zone, u) is not shown by the hops after it, or ""
        (`_unshown`: the fault's spill while the pair's upstream was not whole, and after the restore)."""
        assert f.restore is not None
        return self._unshown(f.zone, u, callers, w, f.inject, f.restore, hi, f"recovery after fault {f.fault}")

    def _unshown(
        self,
        zone: str,
        u: str,
        callers: list[str],
        w: Window,
        inject: float,
        restore: float,
        hi: float,
        what: str,
        after_what: str = "the restore",
    ) -> str:
        """Why a measured recovery of pair (zone, u) at `w.instant` is not shown by the hops after it (up to `hi`),
        or "": the evidence rule of every recovery, a fault's own (`_recovery_unshown`) and a declared single
        point of failure's cascade's (`_declared_cascade_failures`), which ends at `restore` begun at `inject`.
        The shares are read by `FaultScoping.recovery_unshown`, which e2e's cool-down asks too
        (`harness.verify.pending._shown`): one rule, so the cool-down waits for no evidence the verdict does not ask.

        Recovery is the first good hop after the last misplaced one. A pair
        that still sends a share `p` of its hops elsewhere has a "last
        misplaced" hop shortly before the run ends, and a few good hops after
        it by chance: that read as a recovery. The hops after the instant
        show it only when a mesh still sending that share elsewhere would
        rarely have served them all where they belong: (1 - p)^n below
        RECOVERY_EVIDENCE_ALPHA (`recovery_chance`). `p` is read twice, and
        each must be met:
        - during the fault, over the intervals the inventory shows the pair's
          upstream not whole (down, or too few ready: the spill by design; one
          of two replicas lost: ~30 %); any other misplaced hop is judged by
          locality, which excludes nothing then (a link-degraded fault's 1 %
          retried to the Region is not a spill). Left out: hops served where
          they belong by a pod the inventory had already taken out of service
          (`OUT_OF_SERVICE_SQL`). Every backend records a pod unready or gone
          first, and Consul and the sidecars learn of it about a second later;
          the zone's calls meanwhile still reach the pod, and each seemed a
          share kept in the zone. At one request a second, a `make_unready` of 6 s
          whose first two such hops landed in that second read as a mesh
          sending 67 % elsewhere. The four in-zone hops up to the zone's next
          fault then failed fallback. The same mesh passed when one landed
          there. The failover and `_not_taken_effect` judge those hops;
        - after the restore, up to the instant: a mesh that took the zone's
          instance back for only part of its calls (every other one still to
          the Region) after a whole failover "recovered" on the last three
          in-zone hops before e2e's cool-down stopped the users.
        A share of 1 (a whole failover, or a clean switch back) is shown
        undone by the first good hop; a share of 0 has nothing to show.
        Asked of a fault's recovery only, a zone that kept sending every other call to the Region after a
        declared cascade (the database back, its product-api Ready) "recovered" on the one in-zone hop after
        the last Region one before the run ended, and locality, which left the cascade out up to that instant,
        judged nothing after it.
        """
        if w.instant is None:
            return ""
        after = int(
            self._one(
                "SELECT count(*) FROM fhops WHERE caller_zone = ? AND upstream = ? "
                "AND list_contains(?, caller_service) AND ok AND ts >= ? AND ts <= ?",
                [zone, u, callers, w.instant, hi],
            )
            or 0
        )
        unshown = self.recovery_unshown("fhops", zone, u, callers, inject, restore, w.instant, after, after_what)
        if unshown is None:
            return ""
        return (
            f"fallback: {zone} -> {u}: {what} not shown: {after} good hops after "
            f"{iso(w.instant)} (until {iso(hi)}), and a mesh still sending {unshown.misplaced / unshown.ok:.0%} of "
            f"them elsewhere, {unshown.label}, would serve that many where they belong with chance "
            f"{unshown.chance:.2g} (>= {RECOVERY_EVIDENCE_ALPHA:g})"
        )

    def _impact_end(self, f: Fault, rc: Recovery) -> float:
        """The end of the fault's impact window: restore + recovery (or the SLO bound when unmeasured)."""
        if f.restore is None:
            return max(self.run_end, f.inject)
        if rc.recovery_s is not None:
            # the recovery instant is read from the zone's hops, the restore and the users' requests are the
            # runner's: on separate clocks the truth is up to the zone's bound later (`_clock_bound`)
            return f.restore + rc.recovery_s + self._clock_bound(f.zone)
        if rc.values:
            return f.restore + self.slo.max_recovery_s
        return f.restore

    def _losses(
        self, f: Fault, scope: FaultScope, fo: Failover, fault_end: float, impact_end: float
    ) -> tuple[int, int]:
        """(lost requests, lost hops) from the inject to the failover instant, or to the end of the window.

        By lifetime, as availability's windows: a request or hop in flight at the inject that failed is
        the fault's (counted from its start it was not, though availability charged it to the fault).
        Requests of every zone the fault affects (`_affected_zones`: a Region-only service's fault fails
        the users of every zone whose calls reach it, not only those entering its AZ).
        """
        lost_hops = fo.lost_hops
        if scope.failover:
            lost_until = fo.instant if fo.instant is not None else fault_end
            for u, callers in scope.failover:  # in flight at the kill: begun before the window `_measure` counts
                lost_hops += int(
                    self._one(
                        f"SELECT count(*) FROM hops WHERE caller_zone = ? AND upstream = ? AND "
                        f"list_contains(?, caller_service) AND ts < ? AND {self._reaches(f.inject)} AND NOT ok",
                        [f.zone, u, callers, f.inject],
                    )
                    or 0
                )
        else:
            lost_until = impact_end
            for u, callers in scope.recovery:
                lost_hops += int(
                    self._one(
                        f"SELECT count(*) FROM hops WHERE caller_zone = ? AND upstream = ? AND "
                        f"list_contains(?, caller_service) AND {self._reaches(f.inject)} AND ts <= ? AND NOT ok",
                        [f.zone, u, callers, lost_until],
                    )
                    or 0
                )
        zones = self._affected_zones(f, set(self.user_zones))
        lost_requests = int(
            self._one(
                f"SELECT count(*) FROM requests WHERE list_contains(?, zone) AND {self._reaches(f.inject, 'requests')} "
                f"AND ts <= ? AND NOT {REQUEST_OK_SQL}",
                [zones, lost_until],
            )
            or 0
        )
        return lost_requests, lost_hops

    def measure_fault(self, f: Fault, out: FaultMeasurements) -> None:
        """One fault: its kind's scope, then failover, recovery, impact window, exclusions and losses."""
        scope = self.scope(f)
        fault_end = f.restore if f.restore is not None else max(self.run_end, f.inject)
        pair_results: dict[str, PairResult] = {}
        fo = self._failover(f, scope, fault_end, pair_results)
        rc = self._recovery(f, scope, pair_results)
        impact_end = self._impact_end(f, rc)
        out.impact.append((f, impact_end))
        out.under_way.extend(fo.spans)
        out.under_way.extend(self._detection(f))
        for u in scope.excluded:
            rec = rc.values.get(u)
            end = INF if f.restore is None else f.restore + (rec if rec is not None else self.slo.max_recovery_s)
            out.exclusions.append((f.zone, u, f.inject, end))
            self.excused_until[(id(f), f.zone, u)] = end
        # a declared single point of failure's cascade failures fail the fault and, as any fallback failure, the
        # `fallback` invariant (its pairs): the fault's result alone left the table saying fallback passed
        cascade = self._declared_cascade_failures(f) if expected.declared(f) else []
        rc.ok = rc.ok and not cascade
        rc.messages += [p.message for p in cascade]
        lost_requests, lost_hops = self._losses(f, scope, fo, fault_end, impact_end)
        out.fallback_pairs.extend(pair_results.values())
        out.fallback_pairs.extend(cascade)
        out.results.append(
            FaultResult(
                fault=f.fault,
                kind=f.kind,
                zone=f.zone,
                services=list(f.services),
                entry_down=f.entry_down,
                inject=f.inject,
                restore=f.restore,
                failover_s=fo.failover_s,
                lost_requests=lost_requests,
                lost_hops=lost_hops,
                recovery_s=rc.recovery_s,
                passed=fo.ok and rc.ok,
                messages=scope.messages + fo.messages + rc.messages,
                failover_resolution_s=fo.resolution_s,
                recovery_resolution_s=rc.resolution_s,
                failover_end=max(fo.window_ends) if fo.window_ends else None,
                effective_at=fo.effective_at,
            )
        )

    def _declared_cascade_failures(self, f: Fault) -> list[PairResult]:
        """What a declared single point of failure does not excuse in its cascade (fallback failures).

        Each a failed `fallback` pair of the fault (caller zone, upstream, message), so the invariant fails
        with the fault and the report lists it where it happened, not only the fault's own result.

        Its budget covers the errors of every zone while the database is down
        and the dependants follow it (`expected.impact_end`); it does not cover
        a zone that stays broken after the Region is serving again:
        - a zone whose service is still down once the Region has it ready again
          (longer than maxFailoverS after that) must fail over to the Region,
          as for any service down in a zone; one that stays down longer than
          maxRecoveryS after that is not back after the restore;
        - every edge pair depending on it must come back in-zone after the
          cascade (`_declared_recovery`); one that does not within maxRecoveryS,
          or has no traffic to show it, fails as any recovery does.
        Asked of nothing, a zone whose public-api kept calling the Region's
        product-api to the end, or whose product-api stayed down with no
        failover (100 % of its users failing, inside the declared 99 %), passed.
        In the stored stability runs every zone's cascade ended within 1.4 s of
        the Region's.
        """
        out: list[PairResult] = []

        def failed(zone: str, upstream: str, message: str, hops: int, failures: int | None) -> PairResult:
            counts: dict[str, float | int | None] = {"cascade_hops": hops, "cascade_failed": failures}
            return PairResult(zone, upstream, FAIL, counts, message=message, fault=f.fault)

        cascade = self._cascade(f)
        for z, u, callers in self.pairs:
            if not zone_is_edge(self.t, z) or self._placement(u) != "edge" or u not in cascade:
                continue
            back = self.region_back(f, u)
            for _lo, hi in self._began_in_fault(f, (z, u)):
                end = INF if hi is None else hi
                if back >= INF or end - back <= self.slo.max_failover_s:
                    continue  # the zone's own cascade ended with the Region's, or the Region never came back
                until = min(end, max(self.run_end, back))
                w = self._measure(z, u, list(callers), back, until, "serving_kind = 'region'", hi_open=True,
                                  stale_sql=FAILOVER_PENDING_SQL)  # fmt: skip
                if w.hops and w.instant is None:
                    out.append(failed(z, u,
                        f"fallback: {z} -> {u}: no failover to the Region while {u} had no ready pod in {z} "
                        f"after the Region's was ready again at {iso(back)} (fault {f.fault}, declared single "
                        f"point of failure {', '.join(f.spof)}: {w.hops} hops, {w.failed} failed)", w.hops, w.failed,
                    ))  # fmt: skip
                if (self.run_end if end >= INF else end) - back > self.slo.max_recovery_s:
                    out.append(failed(z, u,
                        f"fallback: {u} had no ready pod in {z} until {iso(hi)}, longer than maxRecoveryS "
                        f"({self.slo.max_recovery_s:g}s) after the Region's was ready again at {iso(back)}: "
                        f"not back after the restore of {f.fault}", w.hops, w.failed,
                    ))  # fmt: skip
        end, recoveries = self._declared_recovery(f)
        asked = {(z, u): c for z, u, c in self.cascade_recovery_pairs(f)}  # what e2e's cool-down waits for too
        for z, u, instant, rw in recoveries:  # the window it measured (None: the cascade never ended, judged above)
            if rw is None or (z, u) not in asked:
                continue
            # back, and shown back by the hops after it as a fault's own recovery is (`_unshown`): a zone still
            # sending a share of its calls to the Region has a "last misplaced" hop just before the run ends
            what = f"back in-zone after the cascade of fault {f.fault} (ended at {iso(end)})"
            upto = end if rw.hi is None else rw.hi
            unshown = self._unshown(z, u, list(asked[(z, u)]), rw, f.inject, end, upto, what, "its end")
            if instant is not None and not unshown:
                continue
            if self._left_to_next(z, u, end) is not None:  # cut short by the zone's next fault, whose recovery asks it
                continue
            # the records stop before maxRecoveryS after the cascade (and before the zone's next fault): the pair
            # not back yet is unverified, not shown missing (`_ended_before_due`); a longer run shows it either way
            cut = self.run_end < end + self.slo.max_recovery_s and self.next_inject(z, end) is None
            if unshown:
                ended = (
                    f": unverified, not shown missing: the run ended {max(0.0, self.run_end - end):.3f}s after the "
                    f"cascade, before maxRecoveryS ({self.slo.max_recovery_s:g}s) had passed (a run that goes on "
                    "longer shows it)"
                )
                out.append(failed(z, u, unshown + (ended if cut else ""), rw.hops, rw.failed))
            elif rw.hops and cut:
                out.append(failed(z, u,
                    f"fallback: {z} -> {u}: back in-zone after the cascade of fault {f.fault} ended at {iso(end)} "
                    f"unverified, not shown missing: the run ended {max(0.0, self.run_end - end):.3f}s after it, "
                    f"before maxRecoveryS ({self.slo.max_recovery_s:g}s) had passed ({rw.hops} hops, {rw.failed} "
                    "failed, none where it belongs after the last served elsewhere: a run that goes on longer shows "
                    "it)", rw.hops, rw.failed,
                ))  # fmt: skip
            elif rw.hops:
                out.append(failed(z, u,
                    f"fallback: {z} -> {u}: not back in-zone within maxRecoveryS after the cascade of fault "
                    f"{f.fault} ended at {iso(end)} ({rw.hops} hops, {rw.failed} failed, last served elsewhere "
                    f"at {iso(rw.last_misplaced)})", rw.hops, rw.failed,
                ))  # fmt: skip
            else:
                out.append(failed(z, u,
                    f"fallback: {z} -> {u}: no traffic after the cascade of fault {f.fault} ended at {iso(end)} "
                    "(recovery unverified)", 0, None,
                ))  # fmt: skip
        return out

    def faults(self) -> FaultMeasurements:
        """Measure each fault; then the locality exclusions of every interval an upstream was down."""
        self._fault_hops()
        out = FaultMeasurements()
        for f in self.run.faults:
            self.measure_fault(f, out)
        self.impact_ends = {id(f): hi for f, hi in out.impact}
        exclusions, out.unrecovered = self._readiness_exclusions()
        out.exclusions += exclusions
        out.exclusions += self._declared_exclusions()
        return out

    def _declared_exclusions(self) -> list[tuple[str, str, float, float]]:
        """Locality is not judged for what depends on a declared single point of failure while it is down.

        Its dependants answer errors in every zone (product-api without its
        database), so Envoy's outlier detection ejects healthy-looking local
        instances and sends hops to the Region before readiness notices: where
        they went says nothing about routing. Excluded from the inject to the
        pair's recovery after the cascade (`_declared_recovery`; `maxRecoveryS`
        past the cascade when unmeasured).
        """
        out: list[tuple[str, str, float, float]] = []
        for f in self.run.faults:
            if not expected.declared(f):
                continue
            end, recoveries = self._declared_recovery(f)
            for z, u, instant, _w in recoveries:
                if self._placement(u) != "edge":
                    continue
                if end >= INF:
                    out.append((z, u, f.inject, INF))
                else:
                    out.append((z, u, f.inject, instant if instant is not None else end + self.slo.max_recovery_s))
        return out

    def _readiness_exclusions(self) -> tuple[list[tuple[str, str, float, float]], list[str]]:
        """(exclusions, failures): locality is judged only while the pair's upstream is up and whole: each down
        or spill interval until its recovery.

        Spill (`rundata.spills`): with fewer than 1/1.4 of its pods ready,
        Envoy sends part of the zone's traffic to the Region by design (one of
        two replicas unready: 30 %), so where those hops went says nothing
        against the mesh. Recovery after the upstream is whole again is
        measured like a fault's (first in-zone hop after the last misplaced
        one), within maxRecoveryS; unmeasured, the window runs maxRecoveryS
        past the instant it was whole.

        An edge pair still served elsewhere maxRecoveryS after an outage no
        recorded fault explains (a readiness flap) fails fallback: nothing
        else judged it. The exclusion alone let a blip that came back within
        maxRecoveryS of the last one hide a pair that never returned in-zone:
        locality never judged it again, and the blips were notes. A recovery
        cut short by the zone's next outage, fault or the end of the run was
        not yet due, and a fault's own recovery is its own rule's.
        """
        out: list[tuple[str, str, float, float]] = []
        failures: list[str] = []
        limit = self.slo.max_recovery_s
        for z, u, callers in self.pairs:
            if self._placement(u) != "edge":
                continue
            intervals = self._not_whole(z, u)
            owed: tuple[float, float] | None = None  # (from, whole seconds since): a return not yet shown
            for i, (lo, hi) in enumerate(intervals):
                if hi is None:
                    out.append((z, u, lo, INF))
                    continue
                nxt = intervals[i + 1][0] if i + 1 < len(intervals) else INF
                # the zone's next fault ends the window at its inject, not when its pods are gone: hops it
                # fails in between are its own, and would leave this recovery unmeasured (then the window
                # ran maxRecoveryS on, over every fault of a burst, and locality judged nothing after it)
                fault_next = self.next_inject(z, hi) or INF
                nxt = min(nxt, fault_next)
                bound = min(hi + limit, nxt, max(self.run_end, hi))
                w = self._measure(z, u, list(callers), hi, bound, self.expected_sql(z, u),
                                  next_fault=nxt if nxt < INF else None)  # fmt: skip
                out.append((z, u, lo, w.instant if w.instant is not None else hi + limit))
                if (
                    not zone_is_edge(self.t, z)
                    or w.instant is not None
                    or self.faults_meeting(*self.run.up_key(z, u), lo, hi)[1]
                ):
                    owed = None  # back in-zone, a Region caller (no elsewhere to be), or a fault's to judge
                elif w.last_misplaced is not None:  # still served elsewhere when the window ended
                    since, whole = owed if owed is not None else (hi, 0.0)
                    owed = (since, whole + bound - hi)
                    if owed[1] >= limit:
                        failures.append(
                            f"fallback: {z} -> {u}: not back in-zone within maxRecoveryS ({limit:g}s) after {u} "
                            f"there was whole again at {iso(since)} (an outage outside any recorded fault; whole "
                            f"for {owed[1]:.0f}s since, between its next ones): served elsewhere until "
                            f"{iso(w.last_misplaced)}"
                        )
                        owed = None
                if bound >= fault_next:
                    owed = None  # the zone's next fault measures its own recovery from here
        return out, failures

    def _unplanned_outages(self) -> tuple[list[str], list[str]]:
        """(notes, failures): intervals a service of the topology had no ready pod in a zone, or too few for
        Envoy to keep its traffic there (spill), outside every recorded fault.

        A note each: a readiness flap under load is a second or two, and the
        mesh routes around it by design (locality is not judged then). One
        that lasts longer than maxRecoveryS, or is still on when the run ends
        that long after it began, also fails fallback: an outage nobody
        injected that did not recover within the time the SLO gives any
        recovery, during which the zone's traffic went to the Region (or
        nowhere) and locality could not be judged. It passed as a note: a
        zone's product-api that never came back after a crash was a PASS.
        One still on at the end but younger than that is only a note: its
        recovery was not yet due.
        """
        notes: list[str] = []
        failures: list[str] = []
        names = {s.name for s in self.t.services}
        limit = self.slo.max_recovery_s
        # (zone, service) -> its outages outside every recorded fault, (from, to)
        unexplained: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for down, what in (
            (self.run.down, "had no ready pod"),
            (self.run.spill, "had too few ready pods to keep its traffic (Envoy spills below 1/1.4 ready)"),
        ):
            for (zone, service), intervals in sorted(down.items()):
                if service not in names:
                    continue
                region = zone == self.t.region
                for lo, hi in intervals:
                    if hi is not None and hi - lo < HOP_TS_SLACK_S:
                        # shorter than the access log's clock (whole ms): two pods' readiness written a few
                        # microseconds apart in one control-loop tick; no hop can be placed in it, so it says
                        # nothing ("from 12:23:03.351Z to 12:23:03.351Z")
                        continue
                    mine, met = self.faults_meeting(zone, service, lo, hi)
                    if met:
                        failures += self._outlasting(service, zone, what, lo, hi, met)
                        continue
                    # begun as a fault of the zone was undone (a restarted node's pods start over): its own
                    restored = [f for f in mine if f.restore is not None and f.restore <= lo <= f.restore + limit]
                    where = "the Region" if region else zone
                    text = f"{service} {what} in {where} from {iso(lo)} to {iso(hi)}"
                    text += f" after the restore of {restored[-1].fault}" if restored else " outside any recorded fault"
                    lasted = (hi if hi is not None else self.run_end) - lo
                    if down is self.run.down and not restored:
                        unexplained.setdefault((zone, service), []).append((lo, lo + max(0.0, lasted)))
                    if lasted > limit:
                        until = "" if hi is not None else ", still when the run ended"
                        cause = "not back after the restore" if restored else "an outage nobody injected"
                        failures.append(
                            f"fallback: {text}{until}: {lasted:.0f}s, longer than maxRecoveryS ({limit:g}s) - "
                            f"{cause} that did not recover, its zone's traffic served elsewhere (or not at all) and "
                            "locality not judged meanwhile"
                        )
                    notes.append(text + " (locality not judged then)")
        failures += self._outages_adding_up(unexplained, limit)
        return notes, failures

    def _outages_adding_up(
        self, unexplained: dict[tuple[str, str], list[tuple[float, float]]], limit: float
    ) -> list[str]:
        """A fallback failure per (zone, service) whose outages nobody injected cover more than half of some
        stretch of maxRecoveryS.

        Each such outage is a note while it is shorter than maxRecoveryS (a readiness flap under load: a second
        or two, routed around by design), and locality is not judged during it. Judged one by one, a zone's
        product-api that crash-looped (ten seconds down, two up, nine times, no fault) had its zone's traffic
        in the Region for three quarters of the run and passed with nine notes. A service that is down most of
        any maxRecoveryS is an outage nobody injected that did not recover, however it is cut up. Judged by a
        stretch, not by their sum over the run: the same occasional flaps add up past any bound in a night-long
        run, and the verdict would depend on the run's length.
        """
        out = []
        for (zone, service), spans in sorted(unexplained.items()):
            if len(spans) < 2:
                continue  # one alone is judged above
            worst, start = max(
                (sum(max(0.0, min(hi, lo0 + limit) - max(lo, lo0)) for lo, hi in spans), lo0) for lo0, _ in spans
            )
            if worst <= limit / 2:
                continue
            count = sum(1 for lo, _ in spans if start <= lo < start + limit)
            where = "the Region" if zone == self.t.region else zone
            out.append(
                f"fallback: {service} had no ready pod in {where} {count} times outside any recorded fault in the "
                f"{limit:g}s (maxRecoveryS) from {iso(start)}, {worst:.0f}s of them: more than half, outages nobody "
                "injected that kept coming back, its zone's traffic served elsewhere (or not at all) and locality "
                "not judged meanwhile"
            )
        return out

    def _outlasting(
        self, service: str, zone: str, what: str, lo: float, hi: float | None, met: list[Fault]
    ) -> list[str]:
        """A fallback failure when an outage (or spill) that met recorded faults outlasts them by more than
        maxRecoveryS; none while it does not, or when another rule judges it.

        The faults it met explain it while they last and for the recovery time the SLO gives after their
        restore (`FaultScoping.outage_explained_until`, which e2e's cool-down waits on too), not for the rest of
        the run: skipped as "during a fault" for as long as it lasted, a zone's product-api that crashed during
        a kill of its public-api and never came back, or the postgres replica that never caught up after a
        declared primary kill, PASSED without a note, the zone's traffic served from the Region to the end and
        locality not judged meanwhile.
        """
        ref = self.outage_explained_until(zone, service, met)
        if ref is None:
            return []
        lasted = (hi if hi is not None else self.run_end) - ref
        if lasted <= self.slo.max_recovery_s:
            return []
        last = next(f for f in met if self.explained_until(f, zone, service) == ref)
        where = "the Region" if zone == self.t.region else zone
        until = iso(hi) if hi is not None else "the end of the run"
        return [
            f"fallback: {service} {what} in {where} from {iso(lo)} (during fault {last.fault}) to {until}: "
            f"{lasted:.0f}s after {iso(ref)}, longer than maxRecoveryS ({self.slo.max_recovery_s:g}s) - not back "
            "after the fault, its zone's traffic served elsewhere (or not at all) and locality not judged meanwhile"
        ]


def over_slo(measured: float, resolution: float | None, limit: float, name: str, clock: float = 0.0) -> str:
    """Why a measured failover or recovery fails its SLO: a breach the hops show, or one they cannot rule out.

    The measured instant is the first good hop after the last one not yet good, so the true instant lies in
    [measured - resolution, measured]. Past the limit at its lower end, a hop shows the breach. Past it only at
    the upper end, the traffic was too sparse to tell (a 4.9 s failover against maxFailoverS 5 s, sampled every
    0.2 s, is first seen at 5.06 s): that is unverified, and unverified fails (a mesh failing over in 5.4 s, seen
    at 4.6 s and 5.5 s, looks the same); the message says which, and that more traffic into the zone (the
    probes) resolves it, rather than passing a pair whose SLO the records cannot show met.
    `clock`: where the nodes keep their own clocks, how far the zone's hops may sit from where they happened
    on the runner's clock, which stamps the inject and the restore (`CheckBase._clock_bound`); it widens the
    interval on both sides, and only a runner closer to the zones narrows it.
    """
    lo, hi = measured - (resolution or 0.0) - clock, measured + clock
    if lo > limit:
        return f"took {seconds(measured, resolution)} > {name} {limit:g}s"
    why = "traffic too sparse to resolve it; more requests into the zone do"
    if clock > 0.0 and measured <= limit:
        why = (
            f"its zone's clock is known to within ± {clock * 1000:.1f} ms of the runner's, which stamped the "
            "fault and probed the zone's clock: a runner in the zones' VPC (as --workers-in-zone needs: its "
            "workers reach the runner there) narrows it"
        )
    elif clock > 0.0:
        why += f" (its zone's clock bound ± {clock * 1000:.1f} ms included)"
    where = f"the hops place it between {lo:.3f} s and {hi:.3f} s"
    return f"not shown within {name} {limit:g}s: {where} (unverified: {why})"


def clock_alone(measured: float, limit: float, clock: float) -> bool:
    """Whether a figure the hops show within its SLO is past it only with its zone's clock bound added.

    Why: on separate clocks the figure is the zone's hops against the runner's inject or restore, so the
    truth may be up to the bound (`CheckBase._clock_bound`) longer. A runner far from the zones (a CI VM 120 ms
    round trip from a Local Zone: ±60 ms) can carry a bound that reaches past the SLO for a figure within it:
    that figure is not shown within its SLO (it fails), but nothing in the mesh is shown wrong either, so its
    pair says unverified (with the bound and the way out: `over_slo`), not failed; the other rules stand.
    """
    return clock > 0.0 and measured <= limit < measured + clock
