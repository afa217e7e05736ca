"""Recoveries not on record yet: what e2e's cool-down waits for before it stops the traffic.

The verdict measures a pair's recovery from the hops after its zone's last
restore; a run whose records stop first, before maxRecoveryS has passed, leaves
it unverified (`FaultMeasurer._ended_before_due`), and the verdict fails. A
cool-down that stops the users after a count of requests (20 per zone: one
second at 20 requests a second) made that depend on the machine and the rate:
Consul hands Envoy a restored endpoint in about a second, a kind or EKS
replacement takes longer, and an experiment with no pause after its last
action left the same correct mesh passed on one run and unverified on the next.

So the cool-down also asks the records themselves, as they are now: the hops
of the run so far (observe's `create_hops` over the access logs the collector
has copied and the inventory followed into the run directory), and for each
zone whose last fault was restored, each pair that fault asks back where it
belongs, as the verdict scopes it (`invariants.scope.FaultScoping.scope`, the
verdict's own: the services a kill took down, every service a node fault
killed a pod of, listed or not (a node kill in a zone with more nodes lists
only the services it left with no pod there, often none), every pair of a zone
down or partitioned (a partition lists no service, yet its zone's callers
eject their own product-api while it answers errors without its database)),
and after a declared single point of failure's cascade every Local Zone's
pairs depending on it (`FaultScoping.cascade_recovery_pairs`: the fault is in
the Region, yet the verdict asks them back in-zone within maxRecoveryS of the
cascade's end, and the generic count of requests is met by shop pages that
need no database while postgres re-seeds): `GOOD_HOPS` successful hops served
where the pair's hops belong (its zone, or the Region for an AZ's callers)
after the pair's last hop that was not one (failed, or served elsewhere). That
is the verdict's recovery instant with hops behind it, and as many as the
verdict's evidence rule asks (`FaultScoping.recovery_unshown`, the verdict's own): a mesh that sent part of the
pair's calls elsewhere during the fault, or after the restore before the
instant, shows its recovery only with enough good hops that such a mesh would
rarely have served them all in the zone. Three were taken as shown after a
restore that sent every other call to the Region. A pair is no longer waited
for once maxRecoveryS has passed since its restore (the cascade's end): the
verdict decides it from then on (back late, or never back), but one back
before then by too few hops yet for the verdict's evidence rule, which reads
the hops after the instant however late they come (`_evidence_owed`).

Each caller's hops count only up to where every caller of the pair is on
record (`_complete_until`): the sidecars' logs reach the run directory each on
its own flush schedule, and one caller's good hops read before another's last
misplaced ones were taken as the recovery.

It also waits for each outage nobody injected that is still on, until it is
over or maxRecoveryS has passed since it began (`_open_outages`): the verdict
fails one that lasts that long and notes a younger one still on at the end, so
stopping the users as it began passed a zone whose product-api never came back.

Only reads the run directory; an unreadable moment (a segment being
compacted, a line half written) is a "not yet".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import duckdb

from harness.contract.clock import read_clock
from harness.contract.rundir import ACCESS_LOG_FLUSH_S, UPSTREAM_STATS_FILE, FaultKind, collected_until, load_jsonl
from harness.observe.collector import POLL_INTERVAL_S
from harness.observe.hops import INVENTORY_FILE, create_hops, load_inventory
from harness.topology import Topology
from harness.verify import expected
from harness.verify.invariants.scope import FaultScoping, measured_to_the_end
from harness.verify.invariants.sql import (
    HOP_END_SQL,
    INF,
    spans_sql,
    sql_str,
)
from harness.verify.invariants.users import (
    LINK_BASELINE_S,
    LINK_BOUND_SQL,
    LINK_EFFECT_MIN_HOPS,
    LINK_KIND_SQL,
    link_back_mark,
    link_excess_ctes,
    link_shown_back,
    reaches_link,
)
from harness.verify.rundata import (
    HOP_OK_SQL,
    Fault,
    faults_of,
    live_run,
    serving_kind_sql,
    settled_of,
    topology_tables,
)
from harness.verify.verdict import iso

GOOD_HOPS = 3
"""Successful hops where they belong after the pair's last bad one that put its recovery on record."""

RECORDS_LAG_S = ACCESS_LOG_FLUSH_S + POLL_INTERVAL_S
"""How far behind now a sidecar's records reach at most on an idle machine: its Envoy flushes a finished call's
line within ACCESS_LOG_FLUSH_S, and the collector copies it within its poll. A caller whose newest line is older
made no call since (but one still in flight, which a line logs when it ends, as for every caller). Where the
collector records how far it got (`collected_until`), that is the bound: its polls are that far apart only when
each is quick and no compaction falls between them."""


@dataclass(frozen=True)
class Pending:
    """A pair whose recovery after `fault`'s restore is not on record yet; the verdict decides it from `due` on."""

    fault: str
    zone: str
    upstream: str
    callers: tuple[str, ...]
    restore: float
    due: float
    inject: float = -math.inf  # the fault's: its share of hops sent elsewhere asks for more evidence
    good: str = "serving_zone = caller_zone"  # SQL: a hop served where it belongs (`FaultScoping.expected_sql`)
    outage: bool = False  # an outage nobody injected (`_open_outages`): `fault` says what; no pair, no hop asked
    link: bool = False  # a degraded link not shown back yet (`_links_not_back`): no pair, a hop across it asked
    evidence: bool = False  # back before maxRecoveryS, by too few hops yet for the verdict (`_evidence_owed`)

    def __str__(self) -> str:
        if self.outage:
            return f"{self.upstream} in {self.zone} ({self.fault})"
        if self.link:
            return f"{self.zone}'s link back (after {self.fault})"
        if self.evidence:
            return f"{self.zone} -> {self.upstream} (after {self.fault}: back, too few hops after it yet)"
        return f"{self.zone} -> {self.upstream} (after {self.fault})"


def _watched(s: FaultScoping) -> list[Pending]:
    """What the verdict will ask back where it belongs, as it scopes it (`FaultScoping`):

    - after each zone's last fault, restored (and one the last began inside of and outlived:
      `measured_to_the_end`), the pairs of its kind's scope (`FaultScoping.scope`), e.g. a node
      fault's every service that lost a pod on the node, listed or not, and every pair of a zone down or
      partitioned;
    - after each declared single point of failure's cascade (`FaultScoping.cascade_window`: every outage that
      began while it was on is over), every Local Zone's pairs depending on it
      (`FaultScoping.cascade_recovery_pairs`) in a zone with no fault since (that one measures the pair itself).
      Until the cascade is over they wait for it, at most maxRecoveryS past the last of their services' return
      in the Region: a zone's service still down then fails the verdict ("longer than maxRecoveryS after the
      Region's was ready again"), however long the run goes on.
    """
    last = measured_to_the_end(s.run.faults)
    out = [
        Pending(
            f.fault,
            f.zone,
            u,
            tuple(callers),
            f.restore,
            f.restore + s.slo.max_recovery_s,
            f.inject,
            good=s.expected_sql(f.zone, u),
        )
        for f in last
        if f.restore is not None  # always (`measured_to_the_end`): said for the type checker
        for u, callers in s.scope(f).recovery
    ]
    out += _deferred(s, last)
    for f in s.run.faults:
        if not expected.declared(f) or f.restore is None:
            continue
        end, _ = s.cascade_window(f)
        asked = [(z, u, c) for z, u, c in s.cascade_recovery_pairs(f) if s.next_inject(z, end) is None]
        if end >= INF:  # not over yet: its pairs cannot show their return before it is
            backs = [b for _z, u, _c in asked if (b := s.region_back(f, u)) < INF]
            since, due = INF, max(backs, default=f.restore) + s.slo.max_recovery_s
        else:
            since, due = end, end + s.slo.max_recovery_s
        # from the inject: the share the pair sent elsewhere during the cascade asks for evidence, as the verdict's
        # rule reads it (`FaultMeasurer._unshown`)
        out += [
            Pending(f.fault, z, u, callers, since, due, f.inject, good=s.expected_sql(z, u)) for z, u, callers in asked
        ]
    return out


def _deferred(s: FaultScoping, last: list[Fault]) -> list[Pending]:
    """The pairs of the faults before each zone's last one, restored, that the verdict measures after the last
    one's restore instead of their own: each of them cut short by the zone's next fault, the last of them by the
    last one (`FaultScoping.cut_chain`: each next fault began within maxRecoveryS of the restore before it), the
    pair's recovery not on record by then (`FaultMeasurer._cut_short_by`, `_recovery_after_cut`), and no later
    fault of the chain asking the pair itself (then it is that one's pair, `_superseded_by`). Watched from the
    last restore on, against the share the pair sent elsewhere since its fault's inject, as the verdict reads
    it: the cool-down read only the last fault's pairs, and a kill of LAX's public-api followed half a second
    after its restore by a kill of LAX's product-api stopped the users once product-api's pair was back,
    public-api's pair not yet on record after that restore. A chain of three is followed to its first fault,
    as the verdict follows it. Waited for whether or not the window before the next inject showed it (the
    records then are the verdict's to read): a correct mesh shows it with its first few hops after the last
    restore.
    """
    out: list[Pending] = []
    for g in last:
        if g.restore is None:
            continue
        asked = {u for u, _ in s.scope(g).recovery}
        for f in s.cut_chain(g):  # latest first: a pair a later fault of the chain asks is that one's
            mine = [(u, callers) for u, callers in s.scope(f).recovery if u not in asked]
            asked |= {u for u, _ in mine}
            out += [
                Pending(f.fault, g.zone, u, tuple(callers), g.restore, g.restore + s.slo.max_recovery_s, f.inject,
                        good=s.expected_sql(g.zone, u))
                for u, callers in mine
            ]  # fmt: skip
    return out


def _open(faults: list[Fault], t: Topology, now: float) -> list[Fault]:
    """Each zone's last fault restored less than maxRecoveryS ago (`measured_to_the_end`), and every restored
    declared fault (its cascade may end later): those whose pairs the verdict may still ask."""
    recent = [f for f in measured_to_the_end(faults) if now < (f.restore or 0.0) + t.slo.max_recovery_s]
    return recent + [f for f in faults if expected.declared(f) and f.restore is not None and f not in recent]


def pending_recoveries(run_dir: Path, topology: Topology, now: float) -> list[Pending]:
    """The pairs whose recovery the run's records do not show yet and whose maxRecoveryS has not passed, and
    the outages outside every fault still on and younger than maxRecoveryS (`_open_outages`)."""
    faults = faults_of(run_dir, topology)
    candidates = _open(faults, topology, now)
    links = [f for f in faults if _link_open(f, topology, now)]
    con = duckdb.connect()
    try:
        load_inventory(con, run_dir / INVENTORY_FILE, topology, root=run_dir)
        scoping = FaultScoping(live_run(con, run_dir, topology))
        outages = _open_outages(scoping, now)
        if not _open(faults, topology, -math.inf) and not links:
            return outages  # no pair the verdict could ask, no link: no hop read
        _phops(con, run_dir, topology)
        asked = _watched(scoping)
        watched = [w for w in asked if now < w.due]
        reached = _reached(run_dir, now)
        owed = [e for w in asked if now >= w.due and (e := _evidence_owed(con, scoping, w, reached, now)) is not None]
        if not watched and not links:
            return owed + outages
        return (
            [w for w in watched if not _shown(con, scoping, w, reached)]
            + owed
            + _links_not_back(con, scoping, run_dir, now)
            + outages
        )
    except (duckdb.Error, OSError):  # unreadable right now: not yet, for each fault that may ask a pair or a link
        return [Pending(f.fault, f.zone, "(records unreadable)", (), f.restore or now,
                        (f.restore or now) + topology.slo.max_recovery_s, f.inject)
                for f in candidates + [f for f in links if f not in candidates]]  # fmt: skip
    finally:
        con.close()


def _phops(con: duckdb.DuckDBPyConnection, run_dir: Path, topology: Topology) -> None:
    """View `phops`: the run's hops so far (over the inventory already in `con`) with the columns the verdict's rules
    read (`rundata`'s hops table): where each hop was served, and `ok`. The cool-down's and the link hold's reads."""
    create_hops(con, run_dir, topology, inventory_loaded=True)
    con.execute(f"CREATE TEMP VIEW phops AS SELECT *, {serving_kind_sql(topology)} AS serving_kind, "
                f"coalesce(({HOP_OK_SQL}), false) AS ok FROM hops")  # fmt: skip


def _link_open(f: Fault, t: Topology, now: float) -> bool:
    """A degraded link restored less than maxRecoveryS ago, with a latency the verdict reads its effect by."""
    return (
        f.kind == FaultKind.LINK_DEGRADED
        and f.restore is not None
        and (f.latency_ms or 0.0) > 0
        and now < f.restore + t.slo.max_recovery_s
    )


def _links_not_back(con: duckdb.DuckDBPyConnection, s: FaultScoping, run_dir: Path, now: float) -> list[Pending]:
    """Each degraded link restored less than maxRecoveryS ago that the records do not show back yet, as the
    verdict reads it (`UserChecks._link_not_slowed`): not one hop of its zone that waits on the link
    (`LINK_BOUND_SQL`), begun once the rules were off (the restore's counter snapshot, `_undone_at`) and over,
    took less than the added latency, outside the other faults that reach the link (`reaches_link`): up to the
    zone's next fault, or else up to maxRecoveryS after the restore outside their windows (taken here to
    maxRecoveryS past their restore, at least the verdict's impact window).

    The pairs of a degraded link's zone stay in-zone throughout, so their good hops after the restore record
    showed the fault's "recovery" at once, and the cool-down stopped the users on them. But the timeline writes the
    restore before the primitive clears the link (kind: `docker exec` on each of the zone's nodes, seconds on a
    busy machine), and the counter snapshot comes after it: every hop across the link up to then was rightly
    slow, and at a zone's one request a second the users stopped before one crossed the cleared link. The verdict
    then failed the correct mesh ("not shown to have ended at its restore", unverified), and passed it when the
    rules came off quicker. Due, as a pair, maxRecoveryS after the restore: the verdict decides from then on.
    """
    limit = s.slo.max_recovery_s
    links = [f for f in s.run.faults if _link_open(f, s.t, now)]
    if not links:
        return []
    load_jsonl(con, "restore_snaps", [run_dir / UPSTREAM_STATS_FILE], {"ts": "DOUBLE", "label": "VARCHAR"},
               root=run_dir)  # fmt: skip
    topology_tables(con, s.t)  # the call graph and placements `LINK_BOUND_SQL` reads, as the verdict's
    out: list[Pending] = []
    for f in links:
        assert f.restore is not None
        nxt = s.next_inject(f.zone, f.restore, f)
        hi = min(f.restore + limit, nxt if nxt is not None else INF)
        snap = con.execute(
            "SELECT min(ts) FROM restore_snaps WHERE label = ? AND ts >= ? AND ts < ?",
            [f"restore {f.fault}", f.restore, hi],
        ).fetchone()
        undone = f.restore if snap is None or snap[0] is None else float(snap[0])
        others = [g for g in s.run.faults if g is not f and reaches_link(s.t, g, f.zone)]
        narrow = [("", g.inject, g.restore if g.restore is not None else now) for g in others]
        wide = [("", g.inject, (g.restore if g.restore is not None else now) + limit) for g in others]
        windows = [(hi, narrow)] + ([(f.restore + limit, wide)] if hi < f.restore + limit else [])
        ctes, mark = _link_back_mark(con, s, f, others, now)
        if not any(_link_back(con, f, ctes, undone, upto, busy, mark) for upto, busy in windows):
            out.append(Pending(f.fault, f.zone, "(link)", (), f.restore, f.restore + limit, f.inject, link=True))
    return out


def _link_ctes(zone: str, baseline: str) -> str:
    """`link_excess_ctes` over the records read so far: `zone`'s ok hops that wait on its link (`LINK_BOUND_SQL`),
    each kind's baseline the hops matching `baseline`."""
    bound = (
        f"SELECT ts, {HOP_END_SQL} AS te, duration_ms, {LINK_KIND_SQL} AS kind "
        f"FROM phops WHERE caller_zone = '{sql_str(zone)}' AND ({LINK_BOUND_SQL})"
    )
    return link_excess_ctes(bound, baseline)


def _in(lo: float, hi: float, busy: list[tuple[str, float, float]], closed: bool = False) -> str:
    """SQL: a hop begun at or after `lo` and over before `hi` (at `hi` too when `closed`), outside `busy`."""
    return f"ts >= {lo!r} AND te {'<=' if closed else '<'} {hi!r} AND NOT {spans_sql(None, busy, HOP_END_SQL)}"


def _link_back_mark(
    con: duckdb.DuckDBPyConnection, s: FaultScoping, f: Fault, others: list[Fault], now: float
) -> tuple[str, float | None]:
    """The verdict's stretches for `f`'s link (`UserChecks._link_not_slowed`): the CTEs of the zone's hops with
    their excess over their kind's baseline, the hops in the `LINK_BASELINE_S` before the fault (not before the run
    settled), and the excess mark for the link shown back (`link_back_mark`) from the same hops during it, each
    outside the other faults that reach the link (here to maxRecoveryS past their restore, at least the verdict's
    impact windows). The mark is None when the baseline or the fault has fewer than `LINK_EFFECT_MIN_HOPS`: then
    only a fast hop shows it."""
    assert f.restore is not None
    limit = s.slo.max_recovery_s
    since = f.inject - LINK_BASELINE_S if s.run.settled is None else max(f.inject - LINK_BASELINE_S, s.run.settled)
    quiet = [("", g.inject, (g.restore if g.restore is not None else now) + limit) for g in others]
    ctes = _link_ctes(f.zone, _in(since, f.inject, quiet))
    overlap = [("", g.inject, g.restore if g.restore is not None else now) for g in others]
    row = con.execute(
        f"WITH {ctes} SELECT count(excess_ms), median(excess_ms) FROM excess WHERE {_in(f.inject, f.restore, overlap)}"
    ).fetchone()
    if row is None or row[1] is None or int(row[0]) < LINK_EFFECT_MIN_HOPS:
        return ctes, None
    return ctes, link_back_mark(float(row[1]), float(f.latency_ms or 0.0))


def _link_back(
    con: duckdb.DuckDBPyConnection,
    f: Fault,
    ctes: str,
    since: float,
    upto: float,
    busy: list[tuple[str, float, float]],
    mark: float | None,
) -> bool:
    """`f`'s zone's hops that wait on the link (`ctes`, `_link_back_mark`), in [since, upto] and outside `busy`,
    show it cleared as the verdict reads them (`link_shown_back`): one took less than the added latency, or enough
    of them sit at a median excess over their kind's baseline under `mark`."""
    row = con.execute(
        f"""
        WITH {ctes}
        SELECT count(excess_ms), median(excess_ms), count(*) FILTER (WHERE duration_ms < ?)
        FROM excess WHERE {_in(since, upto, busy, closed=True)}
        """,
        [float(f.latency_ms or 0.0)],
    ).fetchone()
    if row is None:
        return False
    return link_shown_back(int(row[0]), row[1], int(row[2]), mark)


def _open_outages(s: FaultScoping, now: float) -> list[Pending]:
    """Each outage nobody injected still on `now` (a service of the topology with no ready pod in a zone, or too
    few to keep its traffic there), begun less than maxRecoveryS ago: due when maxRecoveryS has passed since it
    began.

    The verdict fails such an outage once it has lasted longer than maxRecoveryS, also one still on at the end
    of a run that long after it began; younger at the end, it is a note (its recovery not yet due,
    `FaultMeasurer._unplanned_outages`). So a zone whose product-api crashed shortly before the cool-down and
    never came back passed when the users stopped at once, and failed when they went on: the verdict was the
    cool-down's length. Waiting for it puts it either back or past due on record.

    An outage a fault explains (`FaultScoping.faults_meeting`: a fault of its zone, or one whose cascade reaches
    it, on while it began or since) is waited for the same way, from when the verdict wants it over
    (`FaultScoping.outage_explained_until`: the restore, or a declared fault's single point of failure back)
    until maxRecoveryS after that: the verdict fails one that outlasts it (`FaultMeasurer._outlasting`) and
    says nothing of one still on at the end before then. Only the pairs of the fault's own scope were watched
    (`_watched`): LAX's product-api that crashed during a kill of LAX's public-api and never came back passed
    when the users stopped once public-api's pair showed back, and failed fallback on a run that went on for
    maxRecoveryS. One the verdict judges by another rule (`outage_explained_until` None: a fault never
    restored fails as such) is not waited for.
    """
    out = []
    names = {sv.name for sv in s.t.services}
    limit = s.slo.max_recovery_s
    for down, what in ((s.run.down, "no ready pod"), (s.run.spill, "too few ready pods")):
        for (zone, service), intervals in sorted(down.items()):
            for lo, hi in intervals:
                if hi is not None or service not in names:
                    continue
                met = s.faults_meeting(zone, service, lo, None)[1]
                if not met:
                    if now < lo + limit:
                        out.append(Pending(f"{what} since {iso(lo)}, outside any recorded fault", zone, service, (),
                                           lo, lo + limit, lo, outage=True))  # fmt: skip
                    continue
                ref = s.outage_explained_until(zone, service, met)
                if ref is not None and ref < INF and now < ref + limit:
                    out.append(Pending(f"{what} since {iso(lo)}, not back after {met[-1].fault}", zone, service, (),
                                       ref, ref + limit, lo, outage=True))  # fmt: skip
    return out


def _reached(run_dir: Path, now: float) -> float:
    """Up to when every sidecar's calls are on record in the run directory at `now`: `now` less `RECORDS_LAG_S`,
    or less, as far as the collector's own record says it got (`collected_until`).

    The collector's polls are `POLL_INTERVAL_S` apart only on an idle machine: each reads every source, and it
    compacts the records into Parquet between two of them (seconds on a long run or a busy machine). While it
    was behind by more than the assumed lag, a caller's hops not yet copied were read as none made: another
    caller's good hops counted as the recovery, the cool-down stopped the users, and the lagging caller's
    Region-served hops then came after them: the same correct mesh unverified ("the run ended") where an idle
    collector kept the users on until both callers were back.
    """
    reached = now - RECORDS_LAG_S
    polled = collected_until(run_dir)
    return reached if polled is None else min(reached, polled)


def _complete_until(con: duckdb.DuckDBPyConnection, w: Pending, reached: float) -> float:
    """Up to when the pair's hops are on record from every caller that may still make them: the oldest, over the
    pair's callers alive in its zone, of how far each one's records reach -- its newest line (a caller without a
    line yet: its start), or `reached` (`_reached`: how far every caller's calls are on record) when that is later.

    Each sidecar's log reaches the run directory on its own schedule (Envoy's flush interval, 1 s on kind and
    EKS, in its own phase; the collector's poll), so the records so far are a different stretch of each
    caller's calls. With two callers of a pair (the wide topology's two public-apis per zone), one had its
    in-zone hops on record while the other's last second, still served from the Region, was not: the cool-down
    took the first's good hops as the recovery and stopped the users, the second's Region-served hops then came
    after them, and the same mesh was unverified ("the run ended") where a poll one flush later kept the users
    on until both were back. Beyond this instant a caller's hops may still be missing; before it none can be
    (but a hop still in flight, which a line logs when it ends).

    A caller's newest line says how far its records reach only while it makes calls. One that makes none (the
    wide topology's second frontend in a zone after its outage, to which the entry sent no user connection)
    has records that reach up to `reached`, whatever its last line: read as reaching its last line,
    it held every good hop of the other caller off the record, and the cool-down waited its whole
    maxRecoveryS for a recovery the records had shown long before (the verdict then passed).
    """
    row = con.execute(
        """
        WITH alive AS (SELECT pod, min(start_ts) AS started FROM intervals
                       WHERE zone = $zone AND list_contains($callers, service)
                       GROUP BY pod HAVING count(*) FILTER (WHERE end_ts IS NULL) > 0),
             newest AS (SELECT CAST(caller_pod AS VARCHAR) AS pod, max(ts) AS newest FROM phops
                        WHERE caller_zone = $zone GROUP BY 1)
        SELECT min(greatest(coalesce(n.newest, a.started), $reached)) FROM alive a LEFT JOIN newest n ON n.pod = a.pod
        """,
        {"zone": w.zone, "callers": list(w.callers), "reached": reached},
    ).fetchone()
    return math.inf if row is None or row[0] is None else float(row[0])


def _back(
    con: duckdb.DuckDBPyConnection, w: Pending, reached: float, before: float = math.inf
) -> tuple[int, float | None, float | None]:
    """The pair's recovery so far, over its hops since the restore up to when every caller's are on record
    (`_complete_until`) and begun before `before`: how many good hops after its last bad one, the first of them (the
    verdict's recovery instant, None: none yet), and the newest of its hops (None: none)."""
    row = con.execute(
        f"""
        WITH p AS (SELECT ts, ok, ok AND coalesce(({w.good}), false) AS good FROM phops
                   WHERE caller_zone = $zone AND upstream = $upstream AND list_contains($callers, caller_service)
                     AND ts >= $restore AND ts <= $complete AND ts < $before),
             b AS (SELECT coalesce(max(ts) FILTER (WHERE NOT good), $never) AS last_bad FROM p)
        SELECT count(*) FILTER (WHERE good AND p.ts > b.last_bad),
               min(p.ts) FILTER (WHERE good AND p.ts > b.last_bad),
               max(p.ts)
        FROM p, b
        """,
        {"zone": w.zone, "upstream": w.upstream, "callers": list(w.callers), "restore": w.restore,
         "never": -math.inf, "complete": _complete_until(con, w, reached), "before": before},
    ).fetchone()  # fmt: skip
    if not row:
        return 0, None, None
    return int(row[0]), (None if row[1] is None else float(row[1])), (None if row[2] is None else float(row[2]))


def _evidence_owed(
    con: duckdb.DuckDBPyConnection, s: FaultScoping, w: Pending, reached: float, now: float
) -> Pending | None:
    """The pair `w`, past its due, when its records show it back before maxRecoveryS had passed (its recovery
    instant before `w.due`) by too few good hops yet for the verdict's evidence rule
    (`FaultScoping.recovery_unshown`): waited for until they do, or until a hop served elsewhere moves the instant
    past the SLO (the verdict decides it then), or until the pair makes no call for maxRecoveryS.

    The pair was waited for until maxRecoveryS after its restore alone, as if the verdict decided it from then on
    (back, or never back). But the evidence rule asks the hops after the instant, however late they come: a zone
    of two product-api replicas that lost one spilled ~30 % of its calls to the Region, as designed, and a
    recovery after it is shown by ~20 good hops in a row. Back at once, at a zone's one request a second and
    maxRecoveryS 10 s, the users stopped with 10 of them: the verdict failed the correct mesh ("not shown", a run
    that goes on longer shows it) and passed it at four requests a second, or on a run that went on.

    Each hop on record either adds to the evidence or, served elsewhere, moves the instant; so the wait ends
    after as many hops as the rule asks, past the SLO's instant at the latest. Due maxRecoveryS after the
    pair's newest hop: a pair its users stopped calling is left to the verdict.
    """
    after, instant, newest = _back(con, w, reached)
    if instant is None or instant >= w.due:
        return None  # not back by maxRecoveryS: the verdict decides it (never back, or late)
    if s.recovery_unshown("phops", w.zone, w.upstream, list(w.callers), w.inject, w.restore, instant, after) is None:
        return None
    due = max(w.due, newest if newest is not None else instant) + s.slo.max_recovery_s
    return replace(w, due=due, evidence=True) if now < due else None


def _shown(
    con: duckdb.DuckDBPyConnection, s: FaultScoping, w: Pending, reached: float, before: float = math.inf
) -> bool:
    """`GOOD_HOPS` good hops after the pair's last bad one since the restore, among the hops up to when every
    caller's are on record (`_complete_until`), and enough of them for the verdict's own evidence rule
    (`FaultScoping.recovery_unshown`: the share the pair sent elsewhere while its upstream was not whole since the
    fault's inject, and after the restore before them).

    The rule is the verdict's, not a copy: the cool-down read its share over every hop since the inject instead,
    which is no bound on the verdict's. A share of 1 (a clean switch back) asks nothing more of the verdict,
    while the same ten Region hops among the 640 in-zone ones of the five faults after them made a share of
    1.5 %, and the cool-down waited maxRecoveryS for 444 more hops of a recovery on record.
    """
    after, instant, _ = _back(con, w, reached, before)
    if after < GOOD_HOPS or instant is None:
        return False
    return s.recovery_unshown("phops", w.zone, w.upstream, list(w.callers), w.inject, w.restore, instant, after) is None


@dataclass(frozen=True)
class LinkBaseline:
    """A degradation of `zone`'s link begun now would have fewer than `LINK_EFFECT_MIN_HOPS` hops to be judged
    against (`link_baseline_owed`): `hops` so far; the verdict decides without them from `due` on."""

    zone: str
    hops: int
    due: float
    after: tuple[str, ...]  # the faults that reached the link, whose windows hold no baseline

    def __str__(self) -> str:
        return f"{self.zone}'s link baseline (after {', '.join(self.after)}: {self.hops} hops)"


def link_baseline_owed(run_dir: Path, topology: Topology, zone: str, now: float) -> LinkBaseline | None:
    """What a degradation of `zone`'s link begun `now` would lack: its baseline, as the verdict reads it
    (`UserChecks._link_not_slowed`), when the run's earlier faults that reach the link (`reaches_link`) leave it
    fewer than `LINK_EFFECT_MIN_HOPS` hops of a kind; None when it has them, or when nothing here can bring more.

    The baseline is the zone's hops that wait on the link since the run settled (the probe budget's decision,
    `harness.contract.settled`), outside each such fault's window: its inject to its restore and measured
    recovery. The first fault to reach the link waits for its baseline itself (`harness.chaos.actions
    `degrade_link`); after one that did, the action took the baseline to lie between the two, and did not wait.
    e2e begins its first fault as soon as the warm-up is complete, often the moment the run settled, and its
    experiments follow each other with no pause: a kill of LAX's product-api whose recovery took 5 s, followed by
    the service-link experiment 3.5 s after its restore, left the degradation not one settled hop outside the
    kill's window, and a correct mesh was "not shown" (unverified). Here each such fault's window ends at its
    pairs' recovery instant once the records show it (`_shown`, as the cool-down reads it), and is open while
    they do not. None too without a settled instant (the verdict reads the whole stretch, as the action does),
    with such a fault still on (the baseline is the stretch before it), or maxRecoveryS after the last of
    their restores (`due`: a recovery not on record by then is the verdict's to fail).
    """
    return _link_baseline(run_dir, topology, zone, now, lasting=False)[0]


def link_baseline_lasts(run_dir: Path, topology: Topology, zone: str, now: float) -> float:
    """Until when `link_baseline_owed` finds nothing owed for `zone` if no fault is injected after `now` (-inf: owed
    now): what an answer asked ahead of the gate (`harness.e2e.LinkLookahead`) may stand on.

    A baseline on record at `now` does not stay on record until the next inject. The window of the newest fault
    that reaches the link ends at its pairs' recovery instant, the first good hop after their last bad one up to
    the next fault: one call failed over after `now` (a correct mesh's replica briefly unready) moves it past that
    call, and every hop before it into the window. So here that fault's window is open (the hops after its inject
    are no baseline yet), and the baseline's stretch slides (`max(gate - LINK_BASELINE_S, settled)`): the answer
    lasts until the stretch has passed the hops it stands on (each kind's `LINK_EFFECT_MIN_HOPS`-th newest).
    """
    owed, until = _link_baseline(run_dir, topology, zone, now, lasting=True)
    return -INF if owed is not None else until


def _link_baseline(
    run_dir: Path, topology: Topology, zone: str, now: float, lasting: bool
) -> tuple[LinkBaseline | None, float]:
    """`link_baseline_owed`'s answer and, with `lasting`, until when it lasts (`link_baseline_lasts`)."""
    settled = settled_of(run_dir)
    if settled is None:
        return None, INF  # the verdict reads the whole stretch: nothing slides, nothing to wait for
    reaching = [g for g in faults_of(run_dir, topology) if reaches_link(topology, g, zone) and g.inject <= now]
    if not reaching or any(g.restore is None for g in reaching):
        return None, (INF if not reaching else -INF)  # a fault on: asked again once it is restored
    due = max(float(g.restore or 0.0) for g in reaching) + topology.slo.max_recovery_s
    if now >= due:
        return None, INF
    after = tuple(g.fault for g in reaching)
    con = duckdb.connect()
    try:
        load_inventory(con, run_dir / INVENTORY_FILE, topology, root=run_dir)
        scoping = FaultScoping(live_run(con, run_dir, topology))
        _phops(con, run_dir, topology)
        topology_tables(con, topology)  # the call graph and placements `LINK_BOUND_SQL` reads, as the verdict's
        reached = _reached(run_dir, now)
        clock = read_clock(run_dir)

        def clock_bound(z: str) -> float:  # `CheckBase._clock_bound`: 0 on one clock or where unmeasured
            return 0.0 if clock is None else clock.bound(z) or 0.0

        windows: list[tuple[str, float, float]] = []
        ours = sorted((g for g in scoping.run.faults if g.fault in after and g.restore is not None),
                      key=lambda g: g.inject)  # fmt: skip
        for i, g in enumerate(ours):
            assert g.restore is not None
            # read up to the next fault that reaches the link, as the verdict measures a recovery up to the next
            # fault: that one's calls (a node kill's new public-api calling the Region before its product-api was
            # Ready) made an earlier kill's recovery "not shown" for good, its window open to now, no baseline
            nxt = ours[i + 1].inject if i + 1 < len(ours) else INF
            if lasting and nxt == INF:  # its recovery instant moves with any hop sent elsewhere before the next
                windows.append(("", g.inject, INF))
                continue
            end, shown, measured = g.restore, True, False
            for u, callers in scoping.scope(g).recovery:
                w = Pending(g.fault, g.zone, u, tuple(callers), g.restore, due, g.inject,
                            good=scoping.expected_sql(g.zone, u))  # fmt: skip
                instant = _back(con, w, reached, before=nxt)[1]
                if instant is None or not _shown(con, scoping, w, reached, before=nxt):
                    end, shown = nxt, False  # its recovery is not on record before the next one: no hop after its
                    break  # inject is a baseline up to there (the last one's: none yet)
                end, measured = max(end, instant), True
            if shown and measured:
                # the verdict's impact window ends at the recovery instant plus the zone's clock bound where the
                # nodes keep their own clocks (`_impact_end`): the instant is read from the zone's hops, put on the
                # runner's clock within that bound
                end += clock_bound(g.zone)
            windows.append(("", g.inject, end))
        since = max(now - LINK_BASELINE_S, settled)
        base = _in(since, now, windows)
        row = con.execute(
            f"""WITH {_link_ctes(zone, base)},
                     nth AS (SELECT ts, row_number() OVER (PARTITION BY kind ORDER BY ts DESC) AS r FROM bound
                             WHERE {base})
                SELECT (SELECT coalesce(sum(n), 0) FROM kinds),
                       (SELECT max(ts) FROM nth WHERE r = {LINK_EFFECT_MIN_HOPS})"""
        ).fetchone()
        hops = 0 if row is None else int(row[0])
        # the stretch of a later gate begins at max(gate - LINK_BASELINE_S, settled): a kind's baseline lasts while
        # its LINK_EFFECT_MIN_HOPS-th newest hop is in it, also when `due` is later: from `due` on nothing is owed at
        # all, but between the two the baseline is gone (asked again then, it is owed until `due`)
        until = due if row is None or row[1] is None else float(row[1]) + LINK_BASELINE_S
    except (duckdb.Error, OSError):  # unreadable right now: not yet
        return LinkBaseline(zone, 0, due, after), -INF
    finally:
        con.close()
    if hops < LINK_EFFECT_MIN_HOPS:
        return LinkBaseline(zone, hops, due, after), -INF
    return None, until
