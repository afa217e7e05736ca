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
Local Zone whose last fault took services down (or the zone, or cut it off:
a partition, whose callers eject their own product-api while it answers
errors without its database) and was restored, each pair of that zone whose
upstream runs there and the fault took down (every such pair for a zone down
or partitioned, as the verdict asks): `GOOD_HOPS` successful hops served in
the zone after the pair's last hop that was not one (failed, or served
elsewhere). That is the verdict's recovery instant with hops behind it, and as
many as the verdict's evidence rule asks (`recovery_chance`): a mesh that sent
part of the pair's calls elsewhere during the fault, or after the restore
before the instant, shows its recovery only with enough good hops that such a
mesh would rarely have served them all in the zone. Three were taken as shown
after a restore that sent every other call to the Region. A pair
is no longer waited for once maxRecoveryS has passed since its restore: the
verdict decides it from then on (back, or never back).

Only reads the run directory; an unreadable moment (a segment being
compacted, a line half written) is a "not yet".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import duckdb

from harness.observe.hops import create_hops
from harness.topology import Placement, Topology
from harness.verify.invariants.sql import RECOVERY_EVIDENCE_ALPHA, recovery_chance
from harness.verify.rundata import HOP_OK_SQL, faults_of, pairs

GOOD_HOPS = 3
"""Successful in-zone hops after the pair's last bad one that put its recovery on record."""

TAKES_SERVICES_DOWN = ("service-down", "zone-down")
IMPAIRS_ZONE = ("zone-down", "partition")
"""Fault kinds whose recovery the verdict asks of every pair of the zone with an in-zone upstream, listed or not
(`FaultMeasurer.scope_zone_impaired`): a partition lists no service, yet its zone's callers eject their own
product-api while it answers errors without its database, and come back in-zone only once the ejections run out."""


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

    def __str__(self) -> str:
        return f"{self.zone} -> {self.upstream} (after {self.fault})"


def _watched(run_dir: Path, t: Topology) -> list[Pending]:
    """The pairs of each Local Zone's last fault, when it took services down or cut the zone off and was restored:
    the listed services' pairs, and for a zone down or partitioned every pair of the zone (`IMPAIRS_ZONE`)."""
    last = {f.zone: f for f in faults_of(run_dir, t)}  # sorted by inject: each zone's last one stays
    edge = {z.name for z in t.zones if z.is_edge}
    in_zone = {s.name for s in t.services if s.placement is not Placement.REGION}
    return [
        Pending(f.fault, f.zone, upstream, callers, f.restore, f.restore + t.slo.max_recovery_s, f.inject)
        for f in last.values()
        if f.restore is not None and f.kind in (*TAKES_SERVICES_DOWN, *IMPAIRS_ZONE) and f.zone in edge
        for zone, upstream, callers in pairs(t)
        if zone == f.zone and upstream in in_zone and (upstream in f.services or f.kind in IMPAIRS_ZONE)
    ]


def pending_recoveries(run_dir: Path, topology: Topology, now: float) -> list[Pending]:
    """The pairs whose recovery the run's records do not show yet and whose maxRecoveryS has not passed."""
    watched = [w for w in _watched(run_dir, topology) if now < w.due]
    if not watched:
        return []
    con = duckdb.connect()
    try:
        create_hops(con, run_dir, topology)
        out = []
        for w in watched:
            if not _shown(con, w):
                out.append(w)
        return out
    except (duckdb.Error, OSError):
        return watched  # unreadable right now: not yet
    finally:
        con.close()


def _shown(con: duckdb.DuckDBPyConnection, w: Pending) -> bool:
    """`GOOD_HOPS` good hops after the pair's last bad one since the restore, and enough of them for the verdict's
    evidence rule against the share it sent elsewhere during the fault and after the restore before them.

    Taken over the whole fault (the verdict reads the intervals the upstream was not whole in it), the share is
    at most the verdict's in a correct mesh, so the cool-down asks at least as many hops as the verdict will.
    """
    row = con.execute(
        f"""
        WITH p AS (SELECT ts, ok, ok AND serving_zone IS NOT DISTINCT FROM $zone AS good
                   FROM (SELECT ts, coalesce(({HOP_OK_SQL}), false) AS ok, serving_zone FROM hops
                         WHERE caller_zone = $zone AND upstream = $upstream AND list_contains($callers, caller_service)
                           AND ts >= $inject)),
             b AS (SELECT coalesce(max(ts) FILTER (WHERE NOT good AND ts >= $restore), $never) AS last_bad FROM p),
             i AS (SELECT min(p.ts) FILTER (WHERE good AND p.ts >= $restore AND p.ts > b.last_bad) AS instant
                   FROM p, b)
        SELECT count(*) FILTER (WHERE good AND p.ts >= $restore AND p.ts > b.last_bad),
               count(*) FILTER (WHERE ok AND p.ts < $restore),
               count(*) FILTER (WHERE ok AND NOT good AND p.ts < $restore),
               count(*) FILTER (WHERE ok AND p.ts >= $restore AND p.ts < i.instant),
               count(*) FILTER (WHERE ok AND NOT good AND p.ts >= $restore AND p.ts < i.instant)
        FROM p, b, i
        """,
        {"zone": w.zone, "upstream": w.upstream, "callers": list(w.callers), "inject": w.inject,
         "restore": w.restore, "never": -math.inf},
    ).fetchone()  # fmt: skip
    if not row or int(row[0]) < GOOD_HOPS:
        return False
    after = int(row[0])
    for ok, misplaced in ((int(row[1]), int(row[2])), (int(row[3]), int(row[4]))):
        chance = recovery_chance(misplaced, ok, after)
        if chance is not None and chance >= RECOVERY_EVIDENCE_ALPHA:
            return False
    return True
