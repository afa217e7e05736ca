"""`FaultScoping`: what the verdict asks of which pairs after each fault, from the run's faults and inventory only.

The verdict's `FaultMeasurer` and e2e's cool-down (`harness.verify.pending`)
both ask it: the cool-down waits for exactly the recoveries the verdict will
ask for, so they must not be two copies of one rule that drift apart (a
partition, a node kill in a zone with more nodes and a declared single point
of failure's cascade were each asked by the verdict and not watched by the
cool-down). Nothing here reads hops or user requests: the cool-down asks it of
a run still going, every few hundred milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

from harness.topology import Placement
from harness.verify import expected
from harness.verify.invariants.sql import INF, RECOVERY_EVIDENCE_ALPHA, merge_intervals, recovery_chance
from harness.verify.rundata import Fault, RunData, pairs, zone_is_edge

Pairs = list[tuple[str, list[str]]]  # (upstream, its callers) of one zone

# SQL: each pod's readiness changes (pod, ts, gone: out of service from then on) from the inventory, and a node
# fault's pods out of service from its inject (as `rundata._readiness` reads them): `FaultScoping.recovery_unshown`
OUT_OF_SERVICE_SQL = (
    "SELECT CAST(pod AS VARCHAR) AS pod, ts, event IN ('unready', 'removed') AS gone FROM inv "
    "WHERE event IN ('added', 'ready', 'unready', 'removed') "
    "UNION ALL SELECT CAST(pod AS VARCHAR), inject, true FROM node_fault_pods"
)


def union(*lists: list[tuple[float, float | None]]) -> list[tuple[float, float | None]]:
    """Intervals [lo, hi) (hi None: open to the end) merged where they overlap or touch (`merge_intervals`)."""
    merged = merge_intervals([("", "", lo, INF if hi is None else hi) for xs in lists for lo, hi in xs])
    return [(lo, None if hi >= INF else hi) for _z, _u, lo, hi in merged]


class Unshown(NamedTuple):
    """A recovery the hops after it do not show (`FaultScoping.recovery_unshown`): the share read `label`."""

    label: str  # which share: "as during the fault", "as after the restore"
    ok: int  # the pair's successful hops in it
    misplaced: int  # those of them served elsewhere
    chance: float  # that a mesh still sending that share elsewhere serves the hops after the instant all in place


def next_inject(faults: list[Fault], zone: str, after: float, other_than: Fault | None = None) -> float | None:
    """The inject of `zone`'s next fault among `faults` after `after` (not fault `other_than`); None: none."""
    nxt = [g.inject for g in faults if g.zone == zone and g is not other_than and g.inject > after]
    return min(nxt, default=None)


def measured_to_the_end(faults: list[Fault]) -> list[Fault]:
    """The restored faults whose recovery window runs to the run's end: no fault of their zone began after their
    restore (`FaultMeasurer._recovery`'s window ends at the zone's next inject). Each zone's last fault, and one
    it began inside of and outlived (a long kill of LAX's public-api with a kill of its product-api begun and
    restored meanwhile): its pairs are measured from its own restore on, not the last fault's."""
    return [f for f in faults if f.restore is not None and next_inject(faults, f.zone, f.restore, f) is None]


@dataclass
class FaultScope:
    """What one fault kind asks of the pairs of its zone (see `SCOPES`)."""

    failover: Pairs = field(default_factory=list)  # must fail over to the Region during the fault
    recovery: Pairs = field(default_factory=list)  # must come back where they belong after the restore
    excluded: list[str] = field(default_factory=list)  # upstreams whose locality is not judged meanwhile
    messages: list[str] = field(default_factory=list)  # said about the fault, not failures by themselves


class FaultScoping:
    """One run's faults and readiness (`RunData.faults`, `.down`, the table `node_fault_pods`): the fault kinds'
    scopes, a declared fault's cascade, where a pair's hops belong."""

    def __init__(self, run: RunData) -> None:
        self.run = run
        self.con = run.con
        self.t = run.topology
        self.slo = run.topology.slo
        self.pairs = pairs(run.topology)
        self.run_end = run.end if run.end is not None else 0.0

    def _placement(self, u: str) -> str:
        """ "unknown" for a fault's service the topology lacks (said in the notes; coverage fails the fault)."""
        try:
            return self.t.service(u).placement.value
        except KeyError:
            return "unknown"

    def _cascade(self, f: Fault) -> set[str]:
        """The services a fault on a Region-only service (postgres) reaches in every zone: those and every
        service whose calls reach them (`expected.dependants`); empty for a fault on no Region-only service."""
        region_only = tuple(sorted(sv for sv in f.services if self._placement(sv) == "region"))
        return expected.dependants(self.t, region_only) if region_only else set()

    @cached_property
    def _cascades(self) -> list[set[str]]:
        """`_cascade` of each of the run's faults, in order: `faults_meeting` asks for them per outage interval."""
        return [self._cascade(f) for f in self.run.faults]

    def faults_meeting(self, zone: str, service: str, lo: float, hi: float | None) -> tuple[list[Fault], list[Fault]]:
        """(the faults that concern `service` in `zone`, those of them whose [inject, restore] meets [lo, hi]).

        Concern: a fault of the zone, for the Region any fault of an AZ, and anywhere a fault whose cascade
        reaches the service (a postgres kill takes its dependants down everywhere).
        """
        region = zone == self.t.region
        mine = [
            f
            for f, cascade in zip(self.run.faults, self._cascades, strict=True)
            if f.zone == zone or (region and not zone_is_edge(self.t, f.zone)) or service in cascade
        ]
        end = INF if hi is None else hi
        return mine, [f for f in mine if f.inject <= end and lo <= (INF if f.restore is None else f.restore)]

    def explained_until(self, f: Fault, zone: str, service: str) -> float | None:
        """From when an outage of (zone, service) that met fault `f` must be over within maxRecoveryS: the
        restore. For a declared single point of failure, the restore for its own services, and for every other
        the instant they were back (a database re-seeded: the design cannot hasten it, and the cascade waits
        on it, as `FaultMeasurer._declared_cascade_failures` measures it).

        None when another rule judges it: a fault never restored fails as such; a declared fault's edge
        pairs are judged from the Region's return (`_declared_cascade_failures`); a single point of failure
        never back fails on its own services.
        """
        if f.restore is None:
            return None
        if not expected.declared(f) or service in f.spof:
            return f.restore
        cascade = self._cascade(f)
        if (
            service in cascade
            and zone_is_edge(self.t, zone)
            and self._placement(service) == "edge"
            and any(z == zone and u == service for z, u, _ in self.pairs)
        ):
            return None
        spof_back = self._spof_back(f)
        return None if spof_back >= INF else max(f.restore, spof_back)

    def outage_explained_until(self, zone: str, service: str, met: list[Fault]) -> float | None:
        """From when an outage of (zone, service) that met the faults `met` (`faults_meeting`) must be over within
        maxRecoveryS: the latest of their `explained_until`, None when another rule judges it (any of them None).

        The verdict fails such an outage that outlasts it by more than maxRecoveryS
        (`FaultMeasurer._outlasting`), and e2e's cool-down waits for one still on until then
        (`harness.verify.pending._open_outages`): one rule, so the two cannot disagree on when it is due.
        """
        refs = [self.explained_until(f, zone, service) for f in met]
        if not refs or any(r is None for r in refs):
            return None
        return max(r for r in refs if r is not None)

    def _not_whole(self, zone: str, upstream: str) -> list[tuple[float, float | None]]:
        """When the pair's upstream was down or spilling (`rundata.spills`), merged: locality is not judged then."""
        key = self.run.up_key(zone, upstream)
        return union(self.run.down.get(key, []), self.run.spill.get(key, []))

    def recovery_unshown(
        self,
        hops: str,
        zone: str,
        u: str,
        callers: list[str],
        inject: float,
        restore: float,
        instant: float,
        after: int,
        after_what: str = "the restore",
    ) -> Unshown | None:
        """The share a recovery of pair (zone, u) at `instant`, `after` successful hops after it, fails to rule
        out (`FaultMeasurer._unshown` says why the rule reads it so), or None when they show it: the one evidence
        rule of the verdict and of e2e's cool-down (`harness.verify.pending`), over `hops` (a table or view with
        the hop columns and `ok`), for a fault or cascade that began at `inject` and ended at `restore`.

        Two shares, each to be met: the pair's hops while the inventory shows its upstream not whole
        (`_not_whole`) between `inject` and `restore`, leaving out those a pod already out of service served
        where they belong; and its hops from `restore` up to `instant`. The cool-down read its own share over
        every hop since the inject: after a Wavelength Zone's outage whose frontend's first ten calls on its
        return went to the Region (public-api not ready yet: a clean switch back, shown by the first good hop,
        as the verdict read it), the zone's 640 in-zone hops through five product-api kills made a share of
        1.5 % that asked 444 hops more, and the cool-down waited maxRecoveryS for a recovery on record.
        """
        spans = [
            (max(lo, inject), min(restore, INF if up is None else up))
            for lo, up in self._not_whole(zone, u)
            if lo < restore and (up is None or up > inject)
        ]
        # (label, spans, leave out what pods out of service served): during the fault, a hop served where it belongs
        # by a pod the inventory had already taken out of service is the mesh not yet told (the inventory records
        # first, then Consul and the sidecars learn: about a second), not a share kept in the zone
        windows = [("as during the fault", spans, True), (f"as after {after_what}", [(restore, instant)], False)]
        good = self.expected_sql(zone, u)
        for label, spans_of, told in windows:
            if not spans_of:
                continue
            when = " OR ".join(f"(ts >= {lo!r} AND ts < {up!r})" for lo, up in spans_of)
            row = self.con.execute(
                f"""
                WITH w AS (SELECT ts, ok, coalesce(({good}), false) AS good, CAST(serving_pod AS VARCHAR) AS pod
                           FROM {hops} WHERE caller_zone = ? AND upstream = ? AND list_contains(?, caller_service)
                             AND ({when}))
                SELECT count(*) FILTER (WHERE ok), count(*) FILTER (WHERE ok AND NOT good) FROM w
                ASOF LEFT JOIN ({OUT_OF_SERVICE_SQL}) e ON e.pod = w.pod AND w.ts >= e.ts
                WHERE NOT (? AND w.ok AND w.good AND coalesce(e.gone, false))
                """,
                [zone, u, callers, told],
            ).fetchone()
            ok_during, misplaced = (int(row[0]), int(row[1])) if row else (0, 0)
            chance = recovery_chance(misplaced, ok_during, after)
            if chance is not None and chance >= RECOVERY_EVIDENCE_ALPHA:
                return Unshown(label, ok_during, misplaced, chance)
        return None

    def expected_sql(self, zone: str, upstream: str) -> str:
        """SQL over a hop of pair (zone, upstream): served where it belongs (the zone, or the Region)."""
        # upstream is a topology upstream (pairs, dependants): known
        if zone_is_edge(self.t, zone) and self.t.service(upstream).placement is Placement.EDGE:
            return "serving_zone = caller_zone"
        return "serving_kind = 'region'"

    def next_inject(self, zone: str, after: float, other_than: Fault | None = None) -> float | None:
        """The inject of `zone`'s next fault after `after` (not fault `other_than`), None when there is none.

        `other_than` is the fault itself, not its id: ids end in random hex, and two kills of one service in
        one zone that drew the same id skipped each other (the first's recovery ran over the second).
        """
        return next_inject(self.run.faults, zone, after, other_than)

    def next_within_recovery(self, zone: str, since: float, other_than: Fault | None = None) -> Fault | None:
        """`zone`'s next fault after `since` (a restore, or a cascade's end; not fault `other_than`), when it began
        before maxRecoveryS had passed since then: it cut that recovery's window short. None when there is none.

        The one rule of when a recovery is measured after a later restore instead: the verdict's
        (`FaultMeasurer._superseded_by`, `_cut_short_by`, `_left_to_next`) and the cool-down's
        (`harness.verify.pending._deferred`, through `cut_chain`), so the cool-down waits for exactly the pairs
        the verdict will measure after the zone's last restore.
        """
        nxt = self.next_inject(zone, since, other_than)
        if nxt is None or nxt >= since + self.slo.max_recovery_s:
            return None
        return next((x for x in self.run.faults if x.zone == zone and x is not other_than and x.inject == nxt), None)

    def cut_by(self, f: Fault) -> Fault | None:
        """The zone's next fault when it began within maxRecoveryS of fault `f`'s restore (`next_within_recovery`);
        None for a fault never restored (it fails as such) or with no such next fault."""
        return None if f.restore is None else self.next_within_recovery(f.zone, f.restore, f)

    def cut_chain(self, g: Fault) -> list[Fault]:
        """The zone's faults whose recovery windows reach `g` through `cut_by` (each cut short by the next, the
        last by `g`), latest first: a pair of theirs not shown before the next inject is measured after `g`'s
        restore, as the verdict measures it (`FaultMeasurer._recovery_after_cut`, one cut after another).

        Not only the fault just before `g`: kills of LAX's product-api, public-api and frontend, each 0.3 s after
        the previous restore, leave product-api's pair no hop until the frontend is back.
        """
        into: dict[int, list[Fault]] = {}
        for f in self.run.faults:
            if f.zone == g.zone and (h := self.cut_by(f)) is not None:
                into.setdefault(id(h), []).append(f)
        out: list[Fault] = []
        todo = [g]
        while todo:  # each fault cuts into one later one (`cut_by`): no cycle
            for f in sorted(into.get(id(todo.pop()), []), key=lambda x: x.inject, reverse=True):
                out.append(f)
                todo.append(f)
        return sorted(out, key=lambda x: x.inject, reverse=True)

    def _edge_pairs(self, zone_pairs: Pairs) -> Pairs:
        """Pairs whose upstream is edge-placed: only they have an in-zone service to recover to.

        A Region-only upstream (postgres) is served from the Region before, during
        and after any fault (the shared-services invariant checks that); its TCP
        hops are logged only when a pooled connection closes, so "no traffic after
        restore" would say nothing about recovery.
        """
        return [(u, c) for u, c in zone_pairs if self._placement(u) != "region"]

    def _node_fault_services(self, f: Fault) -> set[str]:
        """Every service a node fault killed a pod of in its zone (`rundata._node_fault_pods`).

        A node fault in a zone with more nodes leaves its services an instance
        there, so the chaos record (which lists the ones left with none) does
        not name them; yet they lost pods: Envoy keeps sending the dead ones
        calls until they are withdrawn, and spills to the Region while too few
        are left. Empty for any other fault.
        """
        rows = self.con.execute(
            "SELECT DISTINCT service FROM node_fault_pods WHERE fault = ? AND inject = ? AND zone = ?",
            [f.fault, f.inject, f.zone],
        ).fetchall()
        return {str(r[0]) for r in rows}

    # -- one scope per fault kind ----------------------------------------------
    def scope(self, f: Fault) -> FaultScope:
        """What fault `f` asks of the pairs of its zone: its kind's scope (`SCOPES`; any other kind is measured
        like link-degraded)."""
        zone_pairs = [(u, list(c)) for (z, u, c) in self.pairs if z == f.zone]
        return SCOPES.get(f.kind, FaultScoping.scope_link_degraded)(self, f, zone_pairs)

    def scope_service_down(self, f: Fault, zone_pairs: Pairs) -> FaultScope:
        """The listed services are down in the zone: their callers that stay up fail over to the Region,
        and every pair whose upstream went down must come back in-zone, also when its callers went down too.

        A node fault's other services (pods lost, an instance left: `_node_fault_services`) must come
        back in-zone as well: with one of two replicas left Envoy spills part of the zone's calls to the
        Region by design, and after the restore that must stop. Asked only of the listed services, a zone
        whose sidecars never took the returned replica back spilled to the end of the run and passed."""
        down = set(f.services)
        lost = down | self._node_fault_services(f)
        scope = FaultScope(
            recovery=self._edge_pairs([(u, c) for u, c in zone_pairs if u in lost]),
            excluded=[u for u, _ in zone_pairs if u in down],
        )
        for u, callers in zone_pairs:
            alive = [c for c in callers if c not in down]
            if u in down and alive and expected.no_failover(f, u):
                scope.messages.append(f"{u}: declared single point of failure, no failover to measure")
            elif u in down and alive:
                scope.failover.append((u, alive))
        if not scope.failover and not scope.messages:
            scope.messages.append(
                f"no mesh caller of {', '.join(sorted(down)) or 'any service'} stays up in {f.zone}: "
                "no failover to measure"
            )
        return scope

    def scope_zone_impaired(self, f: Fault, zone_pairs: Pairs) -> FaultScope:
        """Zone down or partitioned: the zone is impaired as a whole.

        Its Region-only dependencies are out of reach, its pods answer 5xx, and
        outlier detection may eject them for a while after the heal. Locality is
        not judged then; recovery is.
        """
        return FaultScope(recovery=self._edge_pairs(zone_pairs), excluded=[u for u, _ in zone_pairs])

    def scope_link_degraded(self, f: Fault, zone_pairs: Pairs) -> FaultScope:
        """Latency / loss on the service link: traffic must stay in-zone throughout (nothing excluded)."""
        return FaultScope(recovery=self._edge_pairs(zone_pairs))

    # -- a declared single point of failure's cascade (`FaultMeasurer._declared_cascade_failures`) ---------------
    def cascade_window(self, f: Fault) -> tuple[float, float]:
        """A declared fault's cascade end (INF: it never ended), and the end of the stretch after it in which
        the pairs depending on its single point of failure are to serve again (maxRecoveryS, the run's end)."""
        end = expected.impact_end(self.run, f, f.restore if f.restore is not None else INF)
        return end, min(end + self.slo.max_recovery_s, max(self.run_end, end))

    def cascade_recovery_pairs(self, f: Fault) -> list[tuple[str, str, tuple[str, ...]]]:
        """(zone, upstream, callers) that declared fault `f`'s cascade asks back where they belong after it ends
        (`cascade_window`): every Local Zone's pairs of an edge-placed service depending on its single point of
        failure (`expected.dependants`). Its own scope (`scope`) asks nothing of them: the fault is in the Region,
        and a Region-only service has no in-zone instance to recover to."""
        deps = expected.dependants(self.t, f.spof)
        return [(z, u, c) for z, u, c in self.pairs
                if u in deps and zone_is_edge(self.t, z) and self._placement(u) == "edge"]  # fmt: skip

    def _began_in_fault(self, f: Fault, key: tuple[str, str]) -> list[tuple[float, float | None]]:
        """The down intervals of readiness key `key` (`RunData.down`) that began while fault `f` was on."""
        restore = f.restore if f.restore is not None else INF
        return [(lo, hi) for lo, hi in self.run.down.get(key, []) if f.inject <= lo <= restore]

    def _spof_back(self, f: Fault) -> float:
        """When the declared single point of failure of fault `f` was back in the Region: the end of the last of
        its outages that began in the fault (INF: one never ended), or the restore (INF: never restored)."""
        restore = f.restore if f.restore is not None else INF
        return max(
            (INF if hi is None else hi for sv in f.spof for _lo, hi in self._began_in_fault(f, (self.t.region, sv))),
            default=restore,
        )

    def region_back(self, f: Fault, u: str) -> float:
        """When `u` was ready again in the Region after declared fault `f`: the end of the last of its Region
        outages that began in the fault, or when the single point of failure was back (INF: never)."""
        region = [INF if hi is None else hi for _lo, hi in self._began_in_fault(f, (self.t.region, u))]
        return max(region, default=self._spof_back(f))


ScopeFn = Callable[[FaultScoping, Fault, Pairs], FaultScope]
# Fault kind -> what it asks of its zone's pairs; any other kind is measured like link-degraded.
SCOPES: dict[str, ScopeFn] = {
    "service-down": FaultScoping.scope_service_down,
    "zone-down": FaultScoping.scope_zone_impaired,
    "partition": FaultScoping.scope_zone_impaired,
    "link-degraded": FaultScoping.scope_link_degraded,
}
