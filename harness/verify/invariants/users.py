"""The user-request invariants: availability per fault and in the steady state, coverage of each fault."""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

from harness.columnar import REQUESTS, state_file
from harness.contract.clock import CLOCK_TOLERANCE_S, RunClock
from harness.contract.requestid import REQUEST_ID_HEADER
from harness.contract.rundir import (
    ACCESS_LOG_FLUSH,
    ACCESS_LOG_FLUSH_S,
    CLOCK_FILE,
    RECORD_STEPS,
    REQUESTS_FILE,
    USERS_FILE,
)
from harness.contract.settled import LINK_BASELINE_HOPS
from harness.contract.settled import reaches_link as settled_reaches_link
from harness.contract.users import ANSWER_TIMEOUT_S, CONNECT_TIMEOUT_S, WAIT_ENV, users_quiet_bound
from harness.observe.hops import host_ip_sql
from harness.topology import ENTRY_API_UPSTREAM, Topology
from harness.verify import expected
from harness.verify.invariants.base import KEEPS_RUNNING, CheckBase
from harness.verify.invariants.faults import FailoverSpan
from harness.verify.invariants.sql import (
    DEAD_PODS_SQL,
    HOP_END_SQL,
    HOP_TS_SLACK_S,
    INF,
    IS_PROBE_SQL,
    MAX_OFFENDERS,
    REQUEST_END_SQL,
    REQUEST_FIELDS,
    REQUEST_OK_SQL,
    STALE_SQL,
    ZONE_BUDGET_ALPHA,
    binomial_sf,
    request_text,
    spans_sql,
    sql_str,
)
from harness.verify.rundata import NODE_FAULT_ACTIONS, Fault, stops_nodes
from harness.verify.verdict import (
    AVAILABILITY,
    COVERAGE,
    FAIL,
    NOT_APPLICABLE,
    PASS,
    UNVERIFIED,
    CheckResult,
    InvariantResult,
    WindowResult,
    iso,
)

# `_served_but_silent`: successful hops a pod served after its own last access-log line (or with none), or while
# its log has no line (a gap), that make its log incomplete, and how long after that last line they must begin (a
# request's duration and the flush interval are far shorter)
SILENT_MIN_HOPS = 10
SILENT_LAG_S = 10.0
# a served hop's own call starts inside the served hop's lifetime; both are stamped by Envoy (whole milliseconds)
# on their own nodes' clocks, each put on the runner's within CLOCK_TOLERANCE_S (clock.jsonl): the widest that
# can be, for what is dated against a primitive's record (the gap rule itself takes each zone's measured bound,
# `UserChecks._gap_slack_sql`)
SILENT_GAP_SLACK_S = 2 * CLOCK_TOLERANCE_S + 2 * HOP_TS_SLACK_S
# what a sidecar killed with its node had not flushed is lost (Envoy's buffer: the rendered flush interval, the
# longest of ours), and on kind the restarted kubelet brings the same pod back, whose log then goes on: those
# served hops are no gap
SILENT_UNFLUSHED_S = ACCESS_LOG_FLUSH_S
# `_users_gaps`: a zone whose users had no request in flight for longer than this while the run's users went on.
# A user's requests follow each other a think time apart (EH_WAIT, 0.1-0.5 s by default) and a hung one covers
# its own span up to locust's timeout (10 s), so a stretch this long without one is users gone, not slow ones.
# The least bound: users configured to think longer (users.json's wait_s) get their longest think time plus a
# request's timeouts (`harness.contract.users.users_quiet_bound`), so a slow-think-time run is not failed
USERS_GAP_S = 2 * SILENT_LAG_S
# `_entry_silent`: the users' entry service's nginx passes `/api` (the GraphQL requests, the zone probes and the
# clock probes) to its sidecar's ENTRY_API_UPSTREAM (harness.render.hashicups.nginx_conf; the local stand-in
# follows the rendered config); `GET /` it answers itself. A request's locust name is "METHOD /path ...".
ENTRY_API_NAME_RE = r"^[A-Z]+ /api([/? ]|$)"
ENTRY_API_SQL = f"regexp_matches(coalesce(name, ''), '{ENTRY_API_NAME_RE}')"  # a request (row) through /api

# `_link_not_slowed`: a degraded service link adds its latency to every round trip across it, so the median of
# the zone's hops that wait on the link must grow by at least this share of it (half: one-way netem or a relay's
# half each way, rounding and a few hops that never reach the link all fit in the other half), on at least this
# many such hops (e2e's warm-up asks for as many before a first fault that degrades a link: one figure)
LINK_EFFECT_SHARE = 0.5
LINK_EFFECT_MIN_HOPS = LINK_BASELINE_HOPS
# ... against the same hops in this stretch before the fault (outside the windows of the faults that reach the
# link: the zone's own and the Region's, `UserChecks._reaches_link`), and not before the run settled (the probe
# budget's decision, `RunData.settled`): the link as it was just before, not hours ago in a long run (and each
# fault then reads minutes of records, not all of them since the start), nor in the cold, probe-stepping warm-up
LINK_BASELINE_S = 600.0
# hops that wait on a zone's service link: HTTP hops served outside the caller's zone, and those served by a
# service that calls a Region-only upstream itself (each of its requests makes a round trip across the link: the
# real product-api queries postgres on every route the mesh calls, its /health included); TCP hops are left out,
# as Envoy logs a pooled connection once, with its whole life as its duration
LINK_BOUND_SQL = """
    status > 0 AND ok AND duration_ms IS NOT NULL AND serving_zone IS NOT NULL
    AND (serving_zone <> caller_zone OR upstream IN (
        SELECT c.caller FROM calls c JOIN services s ON s.name = c.upstream WHERE s.placement = 'region'))
"""

# ... compared kind with kind: a hop served in its caller's zone by a service that queries the Region pays the
# link on each of its round trips (product-api's 1 + N: 19 with the seed), one served by the Region crosses it
# once. A degradation that makes the zone fail over while it is on (a readiness probe timing out over the slow
# link) trades the first for the second, and the median of the mix fell below the baseline's: in a correct run
# PHX's in-zone product-api hops went from 529 to 2193 ms, its 27 hops served by the Region took 74 ms, and the
# mix's 189 ms against 546 "did not take effect". A shift the other way would show an effect a degradation never
# had. So each hop is measured against its own kind's median in the baseline (`link_excess_ctes`), and a kind
# with fewer than LINK_EFFECT_MIN_HOPS there has none: its hops are left out (not compared with another kind's)
LINK_KIND_SQL = "upstream || CASE WHEN serving_zone <> caller_zone THEN ' served outside' ELSE ' in-zone' END"


# `_clock_checks`: what was stamped on which unbounded nodes, by the detail key naming those nodes ({nodes})
UNBOUNDED_STAMPS = {
    "unmeasured_nodes": "the hops of its sidecars on node(s) {nodes} were stamped by clocks neither a probe (no probe "
    "line was logged there) nor the requests between them and a measured node bounded",
    "unmeasured_request_nodes": "its users' requests were stamped by in-zone locust workers on node(s) {nodes}, whose "
    "clocks neither a probe nor the requests between them and a measured node bounded ('?': the records do not say "
    "the worker's node)",
}


def unbounded_clock_text(zone_clock: str, stamped: str) -> str:
    """The coverage message of a zone whose own clock is bounded but some of whose records were `stamped` on
    nodes none of its measurements bounded (`UNBOUNDED_STAMPS`): one wording for hops and requests alike."""
    return (
        f"coverage: clock: {zone_clock}: but {stamped}, and were put on the runner's clock by the offset of other "
        "nodes: which of them fell in each fault window is unverified"
    )


def link_excess_ctes(bound: str, baseline: str) -> str:
    """The CTEs `bound` (the query `bound`: hops that wait on a link, with a `kind` column, `LINK_KIND_SQL`),
    `kinds` (each kind's baseline: its hops matching the SQL filter `baseline`, when at least
    `LINK_EFFECT_MIN_HOPS`) and `excess` (every bound hop, with `excess_ms` over its kind's baseline median, NULL
    for a kind without one). One definition for the verdict and e2e's cool-down."""
    return f"""bound AS ({bound}),
        kinds AS (SELECT kind, count(*) AS n, median(duration_ms) AS base FROM bound WHERE {baseline}
                  GROUP BY kind HAVING count(*) >= {LINK_EFFECT_MIN_HOPS}),
        excess AS (SELECT bound.*, bound.duration_ms - kinds.base AS excess_ms
                   FROM bound LEFT JOIN kinds ON kinds.kind = bound.kind)"""


# ... and the pod whose node's link such a hop waits on (kind sets and clears a zone's link rules node by node):
# the caller's when the hop itself crosses, the serving pod's when that pod's own call to the Region does
LINK_POD_SQL = "CASE WHEN serving_zone <> caller_zone THEN caller_pod ELSE coalesce(serving_pod, caller_pod) END"


def link_back_mark(effect: float, latency_ms: float) -> float:
    """The median excess (`link_excess_ctes`: a hop's duration over its kind's baseline median) under which a
    degraded link's hops after its restore show it cleared: the larger of `LINK_EFFECT_SHARE` of the added latency
    (the mark the effect was shown by) and half the effect measured (`effect`, the same hops' median excess while
    it was on).

    Half the measured effect, not of the latency alone: a hop that makes many round trips across the link (the
    product-api image's 1 + N queries to postgres per /coffees, 19 with the seed) pays the latency on each, so
    with the link still slow its hops sit near the effect, far above half the latency, and a busy machine's
    spread around the baseline is no longer within a few milliseconds of that mark.
    """
    return max(LINK_EFFECT_SHARE * latency_ms, effect / 2)


def link_shown_back(n_after: int, median_after: float | None, n_fast: int, mark: float | None) -> bool:
    """Whether the hops that wait on a degraded link after its restore show it cleared (verdict and cool-down alike).

    One hop faster than the added latency proves it (`n_fast`): with the latency on, every round trip across the
    link pays it. But a hop that makes many round trips, or a busy machine, takes longer than the latency with
    the link healthy too: against a 60 ms latency, a 2-core machine saturated by a run's own load held the zone's
    hops at a 485 ms median before the fault, 1282 ms during it and 502 ms after its restore, not one under
    60 ms before or after, and "did not end at its restore" failed a rollback that worked (the same mesh passed
    on a quiet machine); on EKS, 19 round trips of a few ms each to postgres do the same. So
    `LINK_EFFECT_MIN_HOPS` hops or more after it (of kinds with a baseline) at a median excess over their kind's
    baseline (`median_after`, `link_excess_ctes`) under `mark` (`link_back_mark`) show it too.
    `mark` None (no baseline or no effect measured): only a fast hop shows it.
    """
    if n_fast > 0:
        return True
    if mark is None or median_after is None or n_after < LINK_EFFECT_MIN_HOPS:
        return False
    return float(median_after) < mark


def reaches_link(t: Topology, g: Fault, zone: str) -> bool:
    """Fault `g` can change how long `zone`'s hops that wait on its link take (`harness.contract.settled`'s rule,
    which a degradation's wait for its baseline reads too). Shared with e2e's cool-down (`harness.verify.pending`),
    which waits for a degraded link shown back as this reads it."""
    return settled_reaches_link(t, g.zone, zone)


class UserChecks(CheckBase):
    """What the users saw: failed requests within the error budget, traffic in every fault window."""

    def availability(self, impact: list[tuple[Fault, float]], under_way: list[FailoverSpan]) -> InvariantResult:
        """Failed user requests per fault window and in the steady state, against the error budget.

        Two kinds of failed request are reported apart, not counted (each
        bounded by what it is judged by instead): those a kill cut off in
        flight over Envoy's retry limit (`_overflow_hops`), and those lost
        while a failover was under way (`_under_way_hops`: the fallback
        invariant judges that time against maxFailoverS).
        """
        ends = [(f, self._impact_end_for_users(f, hi)) for f, hi in impact]
        # (fault, the end of its impact window for its own zone's users): what the checks of the fault's own
        # zone below use; a declared fault's window over every zone users entered is `ends`' per-zone map
        impact = [(f, by_zone.get(f.zone, hi)) for f, (hi, by_zone) in ends]
        # a down entry point excuses its zone's failed requests only inside the window of a fault of that zone
        # that can take the entry down: otherwise nobody explains the outage, and users saw it (a crashing
        # frontend passed as "reported apart", outside any fault or during a product-api kill). A fault that takes
        # the entry down by design (`entry_down`: a partition, a zone down) excuses them over its impact window,
        # its recovery included: a healed zone serves again only once its pods are Ready and the ejections of
        # its Region hosts ran out (seconds on a correct mesh), a restarted node's entry is down from the restore
        # on, and how long that may take is the recovery's SLO (maxRecoveryS), which fallback judges. Capped at
        # the restore, every partition and node kill of the corpus failed its zone's budget on a correct mesh.
        excluded = [(f.zone, f.inject, hi) for f, hi in impact if f.entry_down] + [
            (zone, max(lo, f.inject), min(hi, f_hi))
            for zone, lo, hi in self.entry_down
            for f, f_hi in impact
            if f.zone == zone and lo < f_hi and f.inject < hi and self._can_take_entry_down(f)
        ]
        # a node fault that killed some of a zone's frontends but not all: the entry point stays up and still
        # sends users to the dead ones until the API says they are gone; those get no answer at all
        silent = self._entry_dead_targets(impact)
        self._overflow_hops(impact)
        self._under_way_hops(under_way)
        # Envoy's START_TIME is whole milliseconds (truncated), a request's ts is not: the request's first hop
        # starts in the same millisecond and is stamped up to 1 ms before it. Without that slack whether a loss
        # was excused depended on which hop of the request failed (the first never matched, the second did).
        self._mark_failed_requests()
        # a declared fault's window ends per zone users entered (`_impact_end_for_users`), the others' at `hi`
        in_fault = " OR ".join(
            [spans_sql(None, [("", f.inject, hi) for f, (hi, by_zone) in ends if not by_zone], REQUEST_END_SQL)]
            + [self._declared_window_sql(f, hi, by_zone) for f, (hi, by_zone) in ends if by_zone]
        )
        self.con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE req_marked AS
            SELECT r.* EXCLUDE (overflow, under_way),
                   NOT {REQUEST_OK_SQL} AND NOT r.overflow AND NOT r.under_way AS failed,
                   NOT {REQUEST_OK_SQL} AND r.overflow AS overflow,
                   NOT {REQUEST_OK_SQL} AND r.under_way AND NOT r.overflow AS under_way,
                   {spans_sql("zone", excluded, REQUEST_END_SQL)}
                   OR ({spans_sql("zone", silent, REQUEST_END_SQL)} AND NOT {REQUEST_OK_SQL}
                       AND coalesce(r.status, 0) = 0) AS excluded,
                   {in_fault} AS in_fault
            FROM (
                SELECT q.*, coalesce(m.overflow, false) AS overflow, coalesce(m.under_way, false) AS under_way
                FROM requests q LEFT JOIN failed_marks m ON m.id = q.rowid
            ) r
            """
        )
        windows: list[WindowResult] = []
        budget = self.slo.error_budget
        for f, (hi, by_zone) in ends:
            where = (
                self._declared_window_sql(f, hi, by_zone)
                if by_zone
                else f"ts <= {float(hi)!r} AND {self._reaches(f.inject, 'req_marked')}"
            )
            w = self._window(f"fault {f.fault}", f.inject, hi, where, [], expected.budget(f, budget), f.spof)
            windows.append(w)
            if expected.declared(f):
                self.declared[f.fault] = expected.statement(f, w.requests, w.failed)
        windows.append(self._window("steady state", None, None, "NOT in_fault", []))
        failures = [w.message for w in windows if w.status != PASS]
        worst = max((w.error_rate for w in windows if w.error_rate is not None), default=None)
        ok_text = f"{len(windows)} windows within the {budget * 100:g}% error budget" + (
            f" (worst {worst * 100:.2f}%)" if worst is not None else ""
        )
        if self.declared:  # say which windows had a budget of their own, and why
            ok_text = (
                f"{len(windows)} windows within their error budgets: "
                + "; ".join(
                    f"fault {fid} {d['errorRate'] * 100 if d['errorRate'] is not None else 0:.2f}% within the "
                    f"{d['errorBudget'] * 100:g}% declared for single point of failure "
                    f"{', '.join(d['singlePointOfFailure'])}"
                    for fid, d in self.declared.items()
                )
                + f"; the others within the SLO's {budget * 100:g}%"
            )
        # said also when every window passes: users did see these fail
        # distinct requests: fault windows overlap (a burst's), and a sum over them counted one request in each
        row = self.con.execute(
            f"SELECT count(*) FILTER (WHERE overflow AND NOT {IS_PROBE_SQL}), "
            f"count(*) FILTER (WHERE under_way AND NOT {IS_PROBE_SQL}), "
            f"count(*) FILTER (WHERE {IS_PROBE_SQL}), count(*) FILTER (WHERE {IS_PROBE_SQL} AND failed) "
            "FROM req_marked WHERE NOT excluded"
        ).fetchone()
        ok_text += self._apart(int(row[0]), int(row[1])) if row else ""
        if row and int(row[2]):
            ok_text += f"; {int(row[2])} zone-probe requests not counted ({int(row[3])} failed)"
        # a user request whose line could not be read (or whose compacted segment is gone) may have failed
        failures += self._unread(
            AVAILABILITY,
            (sk for sk in self.run.skipped if sk.file in (REQUESTS_FILE, state_file(REQUESTS))),
            "user requests",
        )
        return InvariantResult(
            AVAILABILITY, not failures, self._summary(AVAILABILITY, failures, ok_text), windows=windows
        )

    def _mark_failed_requests(self) -> None:
        """Table `failed_marks` (id: the request's rowid): whether a failed request had a hop of
        `overflow_hops` / `under_way_hops` of its zone within its lifetime, widened by the tie slack: a hop
        whose caller is in the request's entry zone, or for a request entering an AZ in any AZ (`_tie_zone_sql`).

        Only failed requests are asked (the marks excuse failures), each of them by an ASOF join: the last
        marked hop starting before the request's end (plus slack) is the latest one it can have, so it is
        within the lifetime iff it starts after the request's start (minus slack). A correlated EXISTS took
        time in requests x marked hops: minutes for a long run, or for a broken mesh with many of them.
        """
        slack = self._tie_slack_sql("zone")
        tie = self._tie_zone_sql("zone")
        self.con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE failed_marks AS
            WITH f AS (SELECT rowid AS id, {tie} AS tie, ts - {slack} AS lower,
                              {REQUEST_END_SQL} + {slack} - {HOP_TS_SLACK_S!r} AS upper
                       FROM requests WHERE NOT {REQUEST_OK_SQL} AND zone IS NOT NULL),
                 o AS (SELECT {tie} AS tie, ts FROM overflow_hops WHERE zone IS NOT NULL),
                 u AS (SELECT {tie} AS tie, ts FROM under_way_hops WHERE zone IS NOT NULL)
            SELECT f.id, coalesce(o.ts >= f.lower, false) AS overflow, coalesce(u.ts >= f.lower, false) AS under_way
            FROM f ASOF LEFT JOIN o ON f.tie = o.tie AND f.upper >= o.ts
                   ASOF LEFT JOIN u ON f.tie = u.tie AND f.upper >= u.ts
            """
        )

    def _tie_zone_sql(self, zone_sql: str) -> str:
        """SQL: the zone a failed request (by its entry zone) and a marked hop (by its caller zone) are tied in.

        An edge zone's own name: its users are served by its own callers only (each zone's entry selects its
        own pods; the hub-and-spoke design keeps them there). Every AZ is the Region (`RunData.up_key`): Consul
        CE spreads Region calls over every AZ's pods, so a user entering us-west-2b is served by
        public-api-2a as often as by public-api-2b. Tied by its entry zone alone, the same failover's loss
        was reported apart for a user entering us-west-2a and counted for one entering us-west-2b, and a
        correct mesh failed availability by which AZ its users happened to enter.
        """
        region = [z.name for z in self.t.region_zones]
        if not region:
            return f"CAST({zone_sql} AS VARCHAR)"
        names = ", ".join("'" + sql_str(z) + "'" for z in region)
        # the Region's name is no zone's (zone names extend it: us-west-2 -> us-west-2a)
        return (
            f"(CASE WHEN CAST({zone_sql} AS VARCHAR) IN ({names}) THEN '{sql_str(self.t.region)}' "
            f"ELSE CAST({zone_sql} AS VARCHAR) END)"
        )

    def _tie_slack_sql(self, zone_sql: str, own: bool = False) -> str:
        """SQL for how far a request's hop may lie outside its lifetime on the records' clocks, per entry zone.
        `own`: the hop is one of the entry zone's own callers' (the entry's), not any AZ's for an AZ.

        HOP_TS_SLACK_S before it (Envoy's START_TIME is whole milliseconds, truncated); where the nodes keep
        their own clocks (clock.jsonl) and the requests were stamped on the runner's, also the zone's offset
        uncertainty on both sides: its hops were put on the runner's clock by the middle of the measured
        interval, so they may sit up to that far from where they happened. With probes logged near one end
        of their round trip (a fast request path, a slow answer) a bound of ±46 ms (within the 50 ms
        tolerance) moved a failover's hops 45 ms off their requests: none was tied to the failover under way,
        and its losses failed the budget that one clock passed. In-zone workers stamp a zone's requests with
        their node's clock, put on the runner's by that node's offset: where every hop of the zone was logged
        on that same node, one clock and one correction leave no relative error; otherwise the request's
        node's error and the hop's node's add up (`_tie_slack`).
        """
        cases = [
            f"WHEN {zone_sql} = '{sql_str(zone)}' THEN {slack!r}"
            for zone in sorted(self.user_zones)
            if (slack := self._tie_slack(zone, own)) != HOP_TS_SLACK_S
        ]
        if not cases:
            return repr(HOP_TS_SLACK_S)
        return f"(CASE {' '.join(cases)} ELSE {HOP_TS_SLACK_S!r} END)"

    def _tie_slack(self, zone: str, own: bool = False) -> float:
        """`_tie_slack_sql` for one zone: its clock's measured bound, for the hops' error against requests on the
        runner's clock. Not capped at CLOCK_TOLERANCE_S: a runner 120 ms round trip from an edge zone bounds it to
        ±60 ms, and capped at 50 ms the failover's losses of a correct mesh fell outside their hops' lifetimes
        and failed the budget (before, such a zone was unverified whatever its rules said).

        With in-zone workers the requests carry their worker's node's error too (each node put on the runner's
        clock by the middle of its own interval): twice the bound, unless the zone's requests and hops were all
        stamped on one node, whose one correction leaves them where they were against each other (no slack
        then). Before, in-zone requests got none at all: a worker on n2 measured exactly, hops on n1 measured
        to ±45 ms with its middle 45 ms off, and a 2 s failover's 8 losses, tied to no hop, failed the budget
        the same mesh passes on one clock.

        An AZ's request is tied to any AZ's hops (`_tie_zone_sql`), so the hops' part is the widest bound of
        the AZs, not the entry AZ's: us-west-2b's users failed over to public-api-2a lost requests whose failed
        hops were logged on a us-west-2a node measured to ±45 ms with its middle 45 ms off; us-west-2b's own
        ±2.5 ms left them outside their requests' lifetimes, and the budget the same mesh passes on one clock
        failed."""
        clock = self.run.clock
        if clock is None:
            return HOP_TS_SLACK_S
        # the hops a zone's request is tied to: its own zone's callers', or for an AZ every AZ's (`_tie_zone_sql`),
        # each put on the runner's clock by its own node's offset: their error is the widest of those zones' bounds
        region = {z.name for z in self.t.region_zones}
        tied = region if zone in region and not own else {zone}
        hops = max(self._capped_bound(z) for z in tied)
        if not clock.requests_in_zones:
            return HOP_TS_SLACK_S + hops
        hop_nodes = set().union(*(self._hop_nodes.get(z, set()) for z in tied))
        stamped = self._request_nodes.get(zone, set())
        if len(stamped) == 1 and "?" not in stamped and hop_nodes <= stamped:
            return HOP_TS_SLACK_S
        # ... and the request its worker's node's error (the entry zone's bound)
        return HOP_TS_SLACK_S + self._capped_bound(zone) + hops

    def _entry_dead_targets(self, impact: list[tuple[Fault, float]]) -> list[tuple[str, float, float]]:
        """(zone, from, to): a node fault killed some of the zone's entry pods (frontend), not all of them.

        The zone's entry point is then up (it has a live frontend) and not
        `entry_down`, but it keeps sending users to the dead ones for as long
        as the API lists them (kind's kube-proxy, an ALB until its health
        checks, the local entry): a node's pods stay Ready until the node
        grace period, longer than the fault. A user sent there gets no answer
        at all (no HTTP status: a timeout, a reset), which is the fault's
        doing, not the mesh's; an HTTP error from a live frontend still
        counts. The window runs from the inject until the API stops listing
        each killed frontend (its first unready, removed or new-IP event),
        within the fault's impact window. Before, on a two-node AZ losing one
        node, one in five of the AZ's users' requests failed the run.
        """
        entry = sorted(self.entry_services)
        out: list[tuple[str, float, float]] = []
        names = ", ".join("'" + sql_str(e) + "'" for e in entry)
        for f, hi in impact:
            if f.entry_down or f.action not in NODE_FAULT_ACTIONS:
                continue
            ends = self.con.execute(
                f"""
                SELECT (SELECT min(d.ts) FROM inv d WHERE d.pod = n.pod AND d.ts > n.inject
                          AND d.event IN ('unready', 'removed', 'ip'))
                FROM node_fault_pods n WHERE n.fault = ? AND n.inject = ? AND n.zone = ? AND n.service IN ({names})
                """,
                [f.fault, f.inject, f.zone],
            ).fetchall()
            if ends:
                out.append((f.zone, f.inject, max(hi if e is None else min(float(e), hi) for (e,) in ends)))
        return out

    def _can_take_entry_down(self, f: Fault) -> bool:
        """The fault is the zone's entry going down by design, takes the zone down, or takes down a service users
        enter through (one no service calls, placed in the zones: frontend)."""
        return f.entry_down or f.kind == "zone-down" or bool(self.entry_services & set(f.services))

    def _apart(self, overflow: int, under_way: int) -> str:
        """What a window (or the whole run) reported apart, in the same words everywhere."""
        out = ""
        if overflow:
            out += (
                f"; {overflow} more failed in flight at a kill over Envoy's 3 concurrent retries (reported apart, "
                "not counted: Consul CE cannot raise that limit)"
            )
        if under_way:
            out += (
                f"; {under_way} more failed while a failover was under way (reported apart, not counted: the "
                f"fallback invariant judges its time against maxFailoverS {self.slo.max_failover_s:g}s)"
            )
        return out

    def _overflow_hops(self, impact: list[tuple[Fault, float]]) -> None:
        """Hops a kill cut off whose retry Envoy's concurrent-retry limit refused (flags UO and UC).

        The killed pod's connections are terminated mid-request (UC); the
        rendered retry policy (`reset`) retries each, but Envoy allows only 3
        retries in flight per upstream cluster at once (its `max_retries`
        circuit breaker, which Consul CE leaves at Envoy's default: a config
        entry cannot raise it), and a retry over it fails at once (UO). How
        many requests that hits is how many were in flight to the pod at that
        instant (0 to 5 in ten identical runs here), not how the mesh routes:
        counted against the budget it failed one run in ten of a correct mesh.
        Only hops of the fault's own zone to the services it took down, in
        flight at some time in its window, qualify: a hop the kill cut off
        began before the inject by definition (one 104 ms before it was
        counted, by when it had started); a failure without UO (no retry
        policy, a misroute) is counted as before. And only hops whose (last)
        attempt went to the instance the fault took down (`STALE_SQL`): the
        retry Envoy refused never got a host, so the line names the killed
        pod. The same flags on a hop served by the Region (its connections
        reset over and over after the failover, a Region pod overloaded by
        the zone's traffic) are no kill's artefact: excused, a fault whose
        users failed throughout on the Region passed availability.
        """
        spans = []
        for f, hi in impact:
            if f.kind not in ("service-down", "zone-down"):
                continue
            services = " OR ".join(f"upstream = '{sql_str(s)}'" for s in f.services) or "true"
            spans.append(f"({spans_sql('caller_zone', [(f.zone, f.inject, hi)], HOP_END_SQL)} AND ({services}))")
        where = " OR ".join(spans) or "false"
        self.con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE overflow_hops AS
            SELECT caller_zone AS zone, ts FROM hops
            WHERE contains(coalesce(flags, ''), 'UO') AND contains(coalesce(flags, ''), 'UC') AND ({where})
              AND coalesce({STALE_SQL}, false)
            """
        )

    def _under_way_hops(self, under_way: list[FailoverSpan]) -> None:
        """Failed hops of a pair whose failover was under way: [inject, failover instant), to the zone's own
        instance (or to no host).

        Until the mesh has detected the loss (outlier detection, or Consul
        marking the instance critical), the zone's calls go to the dead
        instance; with Consul CE's retry policy (no retry host predicate) all
        of a request's attempts can go there in the milliseconds before the
        ejection reaches Envoy's workers (`503 URX,UF`, 86 ms after a kill in
        one clean-clone run). How many requests that catches is the request
        rate times a detection delay of milliseconds: 0, 1 or 2 in identical
        runs, against a budget that allowed 0 of the window's 98 requests.
        The failover's time is what the SLO bounds (maxFailoverS, judged by
        the fallback invariant, which fails a slower one), so the losses
        before it are that failover's, reported in `lost_requests` and apart
        here. A hop in flight at the inject whose retries then met the dead
        instance is one of them (its first attempt began before the kill).
        The instant comes only after the last hop still sent to the
        zone's own instance (`FaultMeasurer._failover`: workers learn of an
        ejection one by one), and the span ends maxFailoverS past the inject
        at the latest. Only a hop whose retries were all spent on the zone's
        own instance (URX), whose connect failure there had its retry refused
        by Envoy's concurrent-retry limit (UO with UF), or that found no host
        (UH) qualifies: a connect failure or reset nobody retried (no retry
        policy: `UF` or `UC` alone), a hop served in another zone (a
        misroute) or any other failure counts as before.
        """
        spans, region = [], []
        for s in under_way:  # a failover pair always has callers that stayed up
            names = ", ".join("'" + sql_str(c) + "'" for c in s.callers)
            span = (
                f"(caller_zone = '{sql_str(s.zone)}' AND upstream = '{sql_str(s.upstream)}' "
                f"AND caller_service IN ({names}) "
                # in flight at the inject (the runner's), to within the zone's clock bound (`_clock_bound`); the
                # failover instant `until` is read from the same zone's hops: on their own clock
                f"AND ts < {float(s.until)!r} AND {self._reaches(s.start - self._clock_bound(s.zone))})"
            )
            if s.killed_ips:  # a Region pair (`_detection`): any failure of a hop sent to a pod the fault killed
                dead = ", ".join("'" + sql_str(i) + "'" for i in s.killed_ips)
                region.append(f"({span} AND {host_ip_sql('upstream_host')} IN ({dead}))")
            else:
                spans.append(span)
        where = " OR ".join(spans) or "false"
        self.con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE under_way_hops AS
            SELECT caller_zone AS zone, ts FROM hops
            WHERE NOT ok AND ((({where}) AND (
                ({STALE_SQL} AND (  -- the zone's own instance, with every retry spent there or refused by the limit
                    contains(coalesce(flags, ''), 'URX')
                    OR (contains(coalesce(flags, ''), 'UO') AND contains(coalesce(flags, ''), 'UF'))))
                OR (coalesce(upstream_host, '') = '' AND contains(coalesce(flags, ''), 'UH'))  -- no host yet
            )) OR {" OR ".join(region) or "false"})
            """
        )

    def _impact_end_for_users(self, f: Fault, hi: float) -> tuple[float, dict[str, float]]:
        """(`hi`, {}); for a declared fault, per zone users may enter: over the cascade that reaches the zone's
        users and until the zone's dependants serve again after it (and the latest of those, for the window).

        The mesh's own recovery after the cascade (ejections running out) is
        the fault's impact, not the steady state's: counted there, how many
        requests it failed decided the verdict run by run (4 of 10 runs of
        one experiment failed the steady state's budget, the others passed).
        A pair that did not serve again within `maxRecoveryS` extends nothing:
        what fails after the cascade then counts against the steady state.
        The single point of failure's own pairs are not asked: no outlier
        detection ejects it (the rendered override), and its hops over pooled
        TCP connections start when a pool reconnects, not when users are
        served (one did 5 s after every user request succeeded again).

        Per zone (`expected.zone_keys`: the zone's own services, the single
        point of failure, for an AZ the whole Region): the declared budget
        covers a zone's users until its own cascade and recovery end, not
        until the last zone's. Ended with the LAST zone's, a zone back with
        the Region had 36 s of its own unrelated failures (half its users)
        judged at the declared 90 % while another zone's product-api came
        back late. The AZs are one: Consul CE spreads Region calls over them.
        """
        if not expected.declared(f):
            return hi, {}
        cascade_end, recoveries = self._declared_recovery(f)
        restore = f.restore if f.restore is not None else INF
        region = {z.name for z in self.t.region_zones}
        zones = sorted({z.name for z in self.t.zones} | set(self.user_zones))
        ends: dict[str, float] = {}
        for z in zones:
            keys = expected.zone_keys(self.run, f, z)
            zc = expected.impact_end(self.run, f, restore, keys)  # the zone's cascade end, as `cascade_window`
            rs = recoveries if zc == cascade_end else self._recovered_after(f, zc, z)  # the last zone's: measured
            back = [r.instant for r in rs if r.zone == z and r.upstream not in f.spof]
            ends[z] = max([expected.impact_end(self.run, f, hi, keys), *(b for b in back if b is not None)])
        if region:  # users entering one AZ are served by every AZ's pods
            last = max(ends[z] for z in region)
            ends.update(dict.fromkeys(region, last))
        return max([hi, *ends.values()]), ends

    def _declared_window_sql(self, f: Fault, hi: float, by_zone: dict[str, float]) -> str:
        """SQL: a user request (row) is in declared fault `f`'s window: its lifetime overlaps [inject, its entry
        zone's end] (`_impact_end_for_users`); one without a zone, [inject, `hi`] (the latest zone's end)."""
        zoned = spans_sql("zone", [(z, f.inject, end) for z, end in sorted(by_zone.items())], REQUEST_END_SQL)
        zoneless = spans_sql(None, [("", f.inject, hi)], REQUEST_END_SQL)
        return f"(coalesce({zoned}, false) OR (zone IS NULL AND {zoneless}))"

    def _window(
        self,
        name: str,
        lo: float | None,
        hi: float | None,
        where: str,
        params: list[Any],
        budget: float | None = None,
        spof: tuple[str, ...] = (),
    ) -> WindowResult:
        """Availability of one window's shoppers against `budget` (the SLO's unless the fault declared its own), the
        zone probes said apart."""
        budget = self.slo.error_budget if budget is None else budget
        declared = f" declared for single point of failure {', '.join(spof)}" if spof else ""
        # The budget is the shoppers' (a declared one's `why`: the share of their requests that needs the single
        # point of failure). The zone probes are the harness's instrument, each a coffees query through every
        # service of the chain into the zones the experiments act on, at the rate the probe budget set from how
        # busy the machine was: counted, they weighed a probed zone's failures by the machine, and the same mesh
        # (a zone failing 1 in 25 of its requests) passed at 2 probes a second and failed at 33, in a fault's
        # window as in the steady state; a declared budget passed (77.8 %) or failed (98.8 %) by the probe rate.
        # Left out of every window and said; their hops are judged by the routing invariants as before.
        # one scan: the shoppers' counts and the probes' apart
        shopper = f"NOT {IS_PROBE_SQL}"
        row = self.con.execute(
            f"""
            SELECT count(*) FILTER (WHERE {shopper} AND NOT excluded),
                   count(*) FILTER (WHERE {shopper} AND NOT excluded AND failed),
                   count(*) FILTER (WHERE {shopper} AND excluded),
                   count(*) FILTER (WHERE {shopper} AND excluded AND failed),
                   count(*) FILTER (WHERE {shopper} AND NOT excluded AND overflow),
                   count(*) FILTER (WHERE {shopper} AND NOT excluded AND under_way),
                   count(*) FILTER (WHERE {IS_PROBE_SQL}), count(*) FILTER (WHERE {IS_PROBE_SQL} AND failed)
            FROM req_marked WHERE {where}
            """,
            params,
        ).fetchone()
        assert row is not None
        n, failed, ex, ex_failed, overflow, under_way, probes, probes_failed = (int(x) for x in row)
        needs = ": each needs it" if spof else ""
        apart = f"; {probes} zone-probe requests not counted ({probes_failed} failed{needs})" if probes else ""
        where = f"({where}) AND {shopper}"
        rate = failed / n if n else None
        w = WindowResult(
            name, lo, hi, n, failed, rate, ex, ex_failed, PASS, retry_overflow=overflow, failover_under_way=under_way
        )
        excl = (
            f", {ex} requests excluded (entry point down, or sent by it to a frontend the fault killed; "
            f"{ex_failed} failed)"
            if ex
            else ""
        )
        excl += self._apart(overflow, under_way) + apart
        w.by_zone = self._by_zone(where, params, budget)
        offenders = [z for z in w.by_zone if z["status"] == FAIL]
        if n == 0:
            w.status = FAIL
            w.message = f"availability: {name}: no traffic (no user requests{excl})"
        elif offenders and not (rate is not None and rate > budget):
            w.status = FAIL
            names = ", ".join("'" + sql_str(z["zone"]) + "'" for z in offenders)
            w.first_offenders = self._failed_requests(f"({where}) AND zone IN ({names})", params)
            named = "; ".join(
                f"{z['zone']}: {z['failed']}/{z['requests']} ({z['error_rate'] * 100:.2f}%)" for z in offenders
            )
            first = f", first at {request_text(w.first_offenders[0])}" if w.first_offenders else ""
            w.message = (
                f"availability: {name}: {failed}/{n} user requests failed ({(rate or 0) * 100:.2f}%), within the "
                f"{budget * 100:g}% budget{declared} over every zone, but not in {named}: more failures than the "
                f"budget leaves to chance at that zone's traffic (below {ZONE_BUDGET_ALPHA:g}){excl}{first}"
            )
        elif rate is not None and rate > budget:
            w.status = FAIL
            w.first_offenders = self._failed_requests(where, params)
            by_zone = ", ".join(
                f"{z['zone']}: {z['failed']}" for z in sorted(w.by_zone, key=lambda z: -z["failed"]) if z["failed"]
            )
            first = f", first at {request_text(w.first_offenders[0])}" if w.first_offenders else ""
            w.message = (
                f"availability: {name}: {failed}/{n} user requests failed ({rate * 100:.2f}% > "
                f"{budget * 100:g}% budget{declared}; {by_zone}){excl}{first}"
            )
        elif spof:
            w.message = (
                f"availability: {name}: {failed}/{n} user requests failed ({(rate or 0) * 100:.2f}%), within the "
                f"{budget * 100:g}% budget{declared}{excl}"
            )
        return w

    def _by_zone(self, where: str, params: list[Any], budget: float) -> list[dict[str, Any]]:
        """The window per zone users entered, each zone's users judged against `budget` on their own.

        The window's rate pools every zone, so a zone whose users failed at
        ten times the budget passed when its share of the traffic was a
        tenth (an edge city is a small share of a wide topology's users). A
        zone fails when its failed requests are beyond what the budget's rate
        leaves to chance at its traffic (binomial, below ZONE_BUDGET_ALPHA):
        a few requests per zone and window would fail a correct mesh on one
        unlucky request if its own rate were held to the budget.
        """
        rows = self.con.execute(
            f"""
            SELECT zone, count(*) FILTER (WHERE NOT excluded), count(*) FILTER (WHERE NOT excluded AND failed)
            FROM req_marked WHERE {where} GROUP BY zone ORDER BY zone
            """,
            params,
        ).fetchall()
        out: list[dict[str, Any]] = []
        for zone, n, failed in rows:
            n, failed = int(n), int(failed)
            rate = failed / n if n else None
            beyond = rate is not None and rate > budget and binomial_sf(failed, n, budget) < ZONE_BUDGET_ALPHA
            out.append(
                {"zone": str(zone), "requests": n, "failed": failed, "error_rate": rate,
                 "status": FAIL if beyond else PASS}
            )  # fmt: skip
        return out

    def _failed_requests(self, where: str, params: list[Any]) -> list[dict[str, Any]]:
        cols = ", ".join(REQUEST_FIELDS)
        rows = self.con.execute(
            f"SELECT {cols} FROM req_marked WHERE {where} AND failed AND NOT excluded "
            f"ORDER BY ts LIMIT {MAX_OFFENDERS}",
            params,
        ).fetchall()
        return [dict(zip(REQUEST_FIELDS, r, strict=True)) for r in rows]

    def _records_incomplete(self) -> list[str]:
        """What says the mesh's own records of the run are incomplete: each leaves what they miss unverified.

        - a recording step that failed for the sidecars' records (`recording.jsonl`: an access-log flush or
          collector, the record files): lines may be missing, and a verdict on the rest would pass the hops
          nobody saw. A flush problem of a pod that died is not one: what its sidecar had not flushed died
          with it (the Kubernetes backends say so for every killed pod), as its counters did;
        - a sidecar whose counters say it sent requests (rq_total grew) but whose access log has no line:
          its calls exist and were never judged.
        """
        dead = {str(r[0]) for r in self.con.execute(DEAD_PODS_SQL).fetchall()}
        out = []
        steps = ", ".join(f"'{w}'" for w in RECORD_STEPS)
        for what, message in self.con.execute(
            f"SELECT what, message FROM recording WHERE what IN ({steps}) ORDER BY ts"
        ).fetchall():
            pod = str(message or "").split(":", 1)[0]
            if what == ACCESS_LOG_FLUSH and pod in dead:
                continue  # a dead sidecar's unflushed lines are lost by nature, as its counters are: a note
            out.append(
                f"coverage: recording: {what}: {message}: the sidecars' records may be incomplete, so what they "
                "miss is unverified"
            )
        rows = [(p, n) for p, n, unflushed in self._counted_without_lines() if not unflushed]
        if rows:
            pods = ", ".join(f"{p} ({int(n)} requests)" for p, n in rows[:MAX_OFFENDERS])
            out.append(
                f"coverage: {len(rows)} sidecars sent requests by their own counters but have no access-log line "
                f"({pods}{' ...' if len(rows) > MAX_OFFENDERS else ''}): their calls are unverified"
            )
        if silent := self._served_but_silent():
            pods = ", ".join(
                "; ".join(
                    ([f"{n} after {'its last line at ' + iso(last) if last is not None else 'no line at all'}"] if n
                     else [])
                    + ([f"{g} while its log had no line, first at {iso(first)}"] if g else [])
                ).join((f"{p} (", ")"))
                for p, n, last, g, first in silent[:MAX_OFFENDERS]
            )  # fmt: skip
            out.append(
                f"coverage: {len(silent)} sidecars served hops their callers logged, each of which makes calls to "
                f"an HTTP upstream, without access-log lines of their own for them ({pods}"
                f"{' ...' if len(silent) > MAX_OFFENDERS else ''}): their access logs are missing, cut short or "
                "have gaps, so where their calls went is unverified"
            )
        if entry := self._entry_silent():
            zones = "; ".join(
                f"{z}: {n} requests, first at {iso(first)}"
                + (
                    f" ({stopped} after its entry logs' last line{' at ' + iso(last) if last else ''})"
                    if stopped
                    else ""
                )
                for z, n, first, stopped, last in entry[:MAX_OFFENDERS]
            )
            out.append(
                f"coverage: the entry sidecars ({', '.join(self._entry_api_services())}) of {len(entry)} zones "
                "logged no call for successful user requests through /api (none with the request's id, or "
                "without ids none within its lifetime), though the zone's "
                f"entry logs go on after them or stopped more than {SILENT_LAG_S:g}s before them ({zones}"
                f"{' ...' if len(entry) > MAX_OFFENDERS else ''}): their access logs have gaps or were cut short, so "
                "where the entry's calls went then is unverified"
            )
        if lost := self._requests_unrecorded():
            zones = "; ".join(f"{z}: {n}, first at {iso(first)}" for z, n, first in lost[:MAX_OFFENDERS])
            out.append(
                f"coverage: the entry sidecars logged user requests by their ids that have no record in "
                f"{REQUESTS_FILE} ({zones}): the users' records are incomplete (a worker's records that never "
                "arrived), so what those users met is unverified"
            )
        if blind := self._entry_ids_lost():
            zones = "; ".join(f"{z}: {n} requests with ids, {pods} {svc} pods" for z, n, svc, pods in blind)
            out.append(
                f"coverage: the entry sidecars of {len(blind)} zones logged none of their users' request ids "
                f"({REQUEST_ID_HEADER} replaced or dropped on the way to the sidecar?), and with several entry "
                f"pods in a zone the time rule cannot see a gap in one pod's log behind the others' ({zones}): "
                "where the entry's calls went is unverified"
            )
        return out

    def _requests_unrecorded(self) -> list[tuple[str, int, float]]:
        """(zone, requests, the first one's start): user requests an entry sidecar logged by their id
        (`request_ids_unrecorded`) that no record of requests.jsonl names.

        Each request through `/api` carries an id of its own the users record (harness.contract.requestid), and
        only they send one: an entry line naming an id no record has is a request whose record was lost (an
        in-zone worker's records that never arrived, a locust process gone with what it had not written).
        Availability judges the records alone, so a user of LAX whose requests all met 503s, its records lost,
        passed beside the zone's other users, whose requests fill every gap `_users_gaps` looks for. Not asked:
        requests begun within their timeouts (and the zone's clock bound) of the users' last recorded start,
        which the users may have had in hand when they were stopped, and a run whose records name no id at all
        (recorded before they did). The line's START_TIME is put on the runner's clock by the zone's offset.
        """
        row = self.con.execute("SELECT max(ts), count(request_id) FROM requests WHERE ts IS NOT NULL").fetchone()
        if row is None or row[0] is None or not row[1]:
            return []
        last = float(row[0])
        offsets = self.run.clock.offsets() if self.run.clock is not None else {}
        downs = self._workers_taken_down()
        counts: dict[str, list[float]] = {}
        for zone, ts in self.con.execute(
            "SELECT coalesce(zone, '?'), ts FROM request_ids_unrecorded WHERE ts IS NOT NULL ORDER BY ts"
        ).fetchall():
            at = float(ts) - offsets.get(str(zone), 0.0)
            in_hand = CONNECT_TIMEOUT_S + ANSWER_TIMEOUT_S + self._capped_bound(str(zone))
            if at >= last - in_hand:
                continue
            if any(lo - in_hand <= at <= hi for lo, hi in downs.get(str(zone), ())):
                continue
            counts.setdefault(str(zone), []).append(at)
        return [(z, len(ts), min(ts)) for z, ts in sorted(counts.items())]

    def _workers_taken_down(self) -> dict[str, list[tuple[float, float]]]:
        """Zone -> (inject, restore) of each fault that took down the nodes its in-zone locust workers ran on.

        With `--workers-in-zone` a zone's users run in a worker pod on the zone's own nodes: a zone outage drains
        them and a node kill stops the worker's node, and the worker dies with the requests it had in hand, which
        the zone's entry sidecar had logged (a correct mesh failed every zone outage as "records incomplete").
        The runner's users (every other run) outlive any zone's fault: nothing is excused for them.
        """
        if self.run.clock is None or not self.run.clock.requests_in_zones:
            return {}
        nodes: dict[str, set[str]] = {}
        for zone, node in self.con.execute(
            "SELECT DISTINCT zone, node FROM requests WHERE zone IS NOT NULL AND node IS NOT NULL"
        ).fetchall():
            nodes.setdefault(str(zone), set()).add(str(node))
        out: dict[str, list[tuple[float, float]]] = {}
        for f in self.run.faults:
            hi = f.restore if f.restore is not None else math.inf
            for zone, on in nodes.items():
                if (f.kind == "zone-down" and f.zone == zone) or (f.node is not None and f.node in on):
                    out.setdefault(zone, []).append((f.inject, hi))
        return out

    def _entry_ids_lost(self) -> list[tuple[str, int, str, int]]:
        """(zone, requests, entry service, its replicas): zones where the request ids do not reach the entry log.

        `_entry_silent` falls back to its time rule in a zone none of whose entry lines names an id. That is
        sound where the zone has one entry pod at a time; with more (the topology's replicas: the same config
        gives the same verdict) a pod's gap hides behind the other pods' lines, so the zone is unverified when
        its users' requests carried ids (a run recorded with them) and its entry logged lines, none with an id.
        """
        entry = [s for s in self.t.services if s.name in self._entry_api_services() and s.replicas > 1]
        if not entry:
            return []
        names = {s.name for s in entry}
        logged = sorted({z for z, svc in self._entry_last_lines if svc in names})  # zones whose entry logged
        rows = self.con.execute(
            f"""
            SELECT r.zone, count(*) FROM requests r
            WHERE r.request_id IS NOT NULL AND coalesce(r.ok, false) AND {ENTRY_API_SQL}
              AND list_contains(?, r.zone)
              AND r.zone NOT IN (SELECT DISTINCT CAST(zone AS VARCHAR) FROM request_ids WHERE zone IS NOT NULL)
            GROUP BY r.zone ORDER BY r.zone
            """,
            [logged],
        ).fetchall()
        return [(str(z), int(n), entry[0].name, entry[0].replicas) for z, n in rows]

    @cached_property
    def _entry_last_lines(self) -> dict[tuple[str, str], float]:
        """(zone, entry service) -> the time of its last entry line (`_entry_api_services`' hops).

        Asked once, apart from the queries that use it (`_entry_silent`, `_entry_ids_lost`): a CTE the gap
        query read twice was materialised, every entry hop of a long run held in memory beside the join (50M
        hops: out of memory), and each asking it again scanned every hop.
        """
        entry = self._entry_api_services()
        if not entry:
            return {}
        rows = self.con.execute(
            "SELECT CAST(caller_zone AS VARCHAR), CAST(caller_service AS VARCHAR), max(ts) FROM hops "
            "WHERE caller_zone IS NOT NULL AND list_contains(?, CAST(caller_service AS VARCHAR)) GROUP BY ALL",
            [entry],
        ).fetchall()
        return {(str(z), str(svc)): float(ts) for z, svc, ts in rows}

    def _entry_api_services(self) -> list[str]:
        """The entry services whose `/api` goes through their own sidecar (those calling `ENTRY_API_UPSTREAM`)."""
        return sorted(
            s.name for s in self.t.services if s.name in self.entry_services and ENTRY_API_UPSTREAM in s.upstreams
        )

    def _entry_silent_spans(self) -> list[tuple[str, float, float]]:
        """(zone, from, to): where a zone's entry log may lack lines of requests that succeeded, by design.

        - A fault of the zone that can take its entry down (`_can_take_entry_down`: frontend killed, the zone
          down) or a node fault that killed one of its entry pods (`node_fault_pods`), from
          `SILENT_UNFLUSHED_S` (plus the clock slack) before its inject to its restore (or the end of the run):
          the killed sidecar's last flush interval died in its buffer, the kill itself takes a while after
          the inject is recorded (a node's `docker stop`), and on kind the same pod comes back after the
          restore with its log going on under the same name. The zone's other entry pods' logs are whole,
          but which requests they served nobody can tell.
        - The end of any entry pod's inventory interval (removed, new IP): `SILENT_LAG_S` before it (the watch
          sees a death late) to just after it, for a sidecar that died outside a fault.
        - entrypoints.jsonl's down spans: users there got no answer (not ok), or one from a pod going away.
        """
        slack = self._wide_slack
        entry = self._entry_api_services()
        killed = {
            (str(fid), float(inject))
            for fid, inject in self.con.execute(
                "SELECT DISTINCT fault, inject FROM node_fault_pods WHERE list_contains(?, service)", [entry]
            ).fetchall()
        }
        out = [
            (f.zone, f.inject - SILENT_UNFLUSHED_S - slack,
             (f.restore if f.restore is not None else max(self.run_end, f.inject)) + slack)
            for f in self.run.faults
            if self._can_take_entry_down(f) or (f.fault, f.inject) in killed
        ]  # fmt: skip
        out += [
            (str(z), float(end) - SILENT_LAG_S, float(end) + slack)
            for z, end in self.con.execute(
                "SELECT zone, end_ts FROM intervals WHERE list_contains(?, service) AND end_ts IS NOT NULL "
                "AND zone IS NOT NULL",
                [entry],
            ).fetchall()
        ]
        return out + list(self.entry_down)

    def _entry_silent(self) -> list[tuple[str, int, float, int, float | None]]:
        """Zones whose entry sidecars' log has a gap while their users' requests show them calling.

        The gap rule of `_served_but_silent` reads a pod's serving from its callers' logs; the entry's callers
        are users, whose requests (requests.jsonl) name a zone, not a pod, so a stretch missing in the middle
        of a zone's frontend sidecar log passed (30 s of LAX's, in an audit): a stretch of its calls crossing
        to another Local Zone would hide in it. Each successful user request through `/api`
        (`ENTRY_API_NAME_RE`: the GraphQL queries and zone probes; `GET /` is answered by the frontend itself,
        a failed request or a 4xx may be answered without a call) was passed by one of the zone's entry pods
        to its sidecar's public-api upstream: a hop whose caller is the entry service in the request's zone
        (each zone's entry selects only that zone's pods: the local relay, kind's per-zone NodePort Service,
        EKS's per-zone ALB or operator URL, in-zone workers' entry Service) starting within the request's
        lifetime, widened by the request-to-hop slack (`_tie_slack_sql`: Envoy's millisecond stamps, and the
        zone's clock uncertainty where the nodes keep their own clocks). `SILENT_MIN_HOPS` or more such
        requests without one, while the zone's entry logs have a line after them (a gap) or begun more than
        `SILENT_LAG_S` after the zone's entry logs' last line (cut short: a `kubectl logs -f` stream that does
        not follow a rotation, a collector that lost it; or none at all), make the zone's entry logs
        incomplete. A log that stopped passed as "not a gap" (70 s of LAX's users' calls unjudged), though
        `_served_but_silent` asks the same of every other sidecar; the lag is far beyond a request and the
        flush interval, and the logs are flushed before they are read. Not asked: requests overlapping
        `_entry_silent_spans` (a killed entry pod's last flush interval, a down entry point).
        By id where there is one: each request through `/api` carries its own id (harness.contract.requestid)
        and the entry sidecar logs it, so a request is without its hop when no entry line of its zone names
        its id (`request_ids`), whatever other lines the zone has in its lifetime. With two entry pods in a
        zone, the time rule let the other pod's hops cover a gap in one (each served half the requests at
        the same moments). Such a request is counted when the zone's entry logs go on after it ended (a gap)
        or begun more than `SILENT_LAG_S` after their last line (cut short), as above. A zone none of whose
        entry lines names an id (a run recorded without them, a proxy that replaced the header) and a
        request without one are judged by the time rule alone.
        Returns (zone, requests without a hop, the first of them, how many of them came after the zone's entry
        logs stopped, their last line).
        """
        entry = self._entry_api_services()
        if not entry:
            return []
        names = ", ".join(f"'{sql_str(n)}'" for n in entry)
        slack = self._tie_slack_sql("zone", own=True)  # tied to the entry zone's own entry hops (`q.zkey = e.zone`)
        skip = spans_sql("zone", self._entry_silent_spans(), REQUEST_END_SQL)
        last: dict[str, float] = {}
        for (z, _svc), ts in self._entry_last_lines.items():
            last[z] = max(ts, last.get(z, ts))
        key = self.run.hop_key
        literals = {f"'{sql_str(z)}'": ts for z, ts in last.items()}
        whens = " ".join(f"WHEN {key(name)} THEN {ts!r}" for name, ts in literals.items())
        last_line = f"(CASE n.zkey {whens} ELSE NULL::DOUBLE END)" if last else "NULL::DOUBLE"
        # the zone is carried through the join as the hops' ENUM (`RunData.hop_key`): a string key and payload
        # made the sort of a long run's requests twice as slow; the few candidates get their name back
        rows = self.con.execute(
            f"""
            WITH ids AS (SELECT zone AS zkey, request_id FROM request_ids WHERE zone IS NOT NULL),
                 id_zones AS (SELECT DISTINCT zkey FROM ids),
                 q AS (SELECT {key("zone")} AS zkey, ts, latency_ms, ts - {slack} AS lo,
                              ts + latency_ms / 1000.0 + {slack} AS hi, request_id
                       FROM requests
                       WHERE zone IS NOT NULL AND coalesce(ok, false) AND coalesce(status, 0) BETWEEN 200 AND 399
                         AND latency_ms IS NOT NULL AND {ENTRY_API_SQL}),
                 e AS (SELECT caller_zone AS zone, ts FROM hops
                       WHERE caller_zone IS NOT NULL AND caller_service IN ({names})),
                 nxt AS (SELECT q.*, e.ts AS next_hop,
                                q.request_id IS NOT NULL AND q.zkey IN (SELECT zkey FROM id_zones) AS by_id
                         FROM q ASOF LEFT JOIN e ON q.zkey = e.zone AND q.lo <= e.ts),
                 -- the spans excused by design are a long filter: asked of the few candidates only
                 cand AS (SELECT CAST(n.zkey AS VARCHAR) AS zone, n.ts, n.latency_ms, {last_line} AS last_line,
                                 n.next_hop IS NULL OR (n.by_id AND n.hi >= {last_line}) AS stopped FROM nxt n
                          WHERE CASE WHEN n.by_id THEN
                                    NOT EXISTS (SELECT 1 FROM ids i WHERE i.zkey = n.zkey
                                                AND i.request_id = n.request_id)
                                    AND (n.hi < {last_line} OR n.ts > {last_line} + {SILENT_LAG_S})
                                ELSE (n.next_hop IS NOT NULL AND n.next_hop > n.hi)
                                     OR (n.next_hop IS NULL AND n.ts > coalesce({last_line}, -{INF}) + {SILENT_LAG_S})
                                END)
            SELECT zone, count(*), min(ts), count(*) FILTER (WHERE stopped), any_value(last_line) FROM cand
            WHERE NOT ({skip})
            GROUP BY zone HAVING count(*) >= {SILENT_MIN_HOPS} ORDER BY zone
            """
        ).fetchall()
        return [
            (str(z), int(n), float(first), int(stopped), None if last is None else float(last))
            for z, n, first, stopped, last in rows
        ]

    def _http_callers(self) -> list[str]:
        """Services whose upstreams are all HTTP: each request they serve is a call of their own, logged as a hop
        when it ends (a TCP upstream's hop is logged when its pooled connection closes, maybe never)."""
        return [s.name for s in self.t.services if s.upstreams and all(self._protocol(u) != "tcp" for u in s.upstreams)]

    def _counted_without_lines(self) -> list[tuple[str, int, bool]]:
        """(pod, requests, unflushed) per sidecar whose counters grew with no access-log line of its own.

        `unflushed`: the pod died and nothing shows it made a request more than `ACCESS_LOG_FLUSH_S` before
        its death, so every line it wrote may have sat in the buffer its kill discarded (kill_pod's 1 s grace has
        the kubelet SIGKILL Envoy 2 s on, long before consul-dataplane's 30 s shutdown grace would have it quit and
        flush; a stopped node's Envoy writes nothing more). A replacement ready at one fault's restore
        and killed by the next a moment later, with the "before" snapshot of the second between its first
        requests and its death, had its calls counted and its lines lost: on a slower machine the same
        experiments leave it a flush interval longer and it had a line. What shows an earlier request: a
        snapshot in which its counters had already grown, taken more than the flush interval before its death,
        or a successful hop it served (its callers logged it) that began then, when its service calls an HTTP
        upstream on every request (`_served_but_silent`'s reading). A pod alive at the end of the run has no
        such excuse: its buffer is flushed before the logs are read.

        Envoy writes an access-log line when the stream ends: an HTTP request when it completes, a TCP upstream's
        connection (one tcp_proxy "request") when it closes. rq_total counts a request when it starts, so every
        request still under way when the counters are read (the rq_active gauge at that read) is counted and not
        logged yet, in a correct mesh: the real product-api's postgres pool (Go database/sql, no max lifetime)
        holds the connections its DB wait opened for the pod's life (a replacement product-api's counters show
        them from its first snapshot on, with no line), and an HTTP call hung on a partitioned upstream is counted
        for seconds before it ends. So exactly the requests in flight at each read owe no line yet, on any
        cluster; the ended ones do (a pooled connection beyond the two idle ones, closed on release; an HTTP
        request that completed). An HTTP cluster's excuse was once TCP-only: a read that landed while a pod's
        first calls were under way failed a correct mesh as unverified. A run whose snapshots have no gauge
        (older collectors) cannot tell an open request from a lost line: all owe one. Where the open ones went
        is judged from the counters themselves (`_attempts`, `_pods_bypassing`).

        A pod a node fault killed died when `_died_at` says (`_node_kills`), not at the inject record: the
        timeline records the inject before the primitive runs, and a `docker stop` or a drain takes seconds while
        the node's pods serve on. Dated at the record, a pod that made calls before it (the fault's "before"
        snapshot) and went on serving for seconds was excused as if killed within a flush interval of them; and
        one whose counters grew after the primitive had returned (it was not dead then) was excused as well.
        """
        http = self._http_callers()
        kills = self._node_kills
        rows = self.con.execute(
            f"""
            WITH per_pod AS (
                SELECT st.pod, st.label, min(st.ts) AS ts,
                       -- a request is logged when its stream ends (an HTTP request completes, a TCP connection
                       -- closes: product-api's pooled postgres ones stay open while the pod lives): the ones under
                       -- way when read (rq_active, at that read) owe no line yet
                       sum(coalesce(st.rq_total, 0) - coalesce(st.rq_active, 0)) AS rq
                FROM upstream_stats st
                GROUP BY st.pod, st.label),
                 base AS (SELECT pod, coalesce(max(rq) FILTER (WHERE label = 'start'), 0) AS rq0 FROM per_pod
                          GROUP BY pod),
                 grew AS (
                SELECT p.pod, max(p.rq) - any_value(b.rq0) AS rq, min(p.ts) FILTER (WHERE p.rq > b.rq0) AS first
                FROM per_pod p JOIN base b USING (pod) GROUP BY p.pod),
                 ended AS (
                SELECT pod, max(end_ts) AS ended, max(start_ts) AS born, any_value(service) AS service
                FROM intervals WHERE pod IN ({DEAD_PODS_SQL}) GROUP BY pod),
                 -- a dead pod a node fault killed (none of its intervals began after that kill was done): it died
                 -- in [died, done] (`_node_kills`); any other died when its last interval ended
                 kill AS (SELECT pod, max(died) AS died, max(done) AS done FROM {kills} GROUP BY pod),
                 death AS (
                SELECT e.pod, e.service, CASE WHEN e.born <= k.done THEN k.died ELSE e.ended END AS at,
                       CASE WHEN e.born <= k.done THEN k.done END AS done
                FROM ended e LEFT JOIN kill k USING (pod))
            SELECT g.pod, g.rq,
                   d.at IS NOT NULL AND g.first >= d.at - ? AND NOT EXISTS (
                       SELECT 1 FROM hops h WHERE CAST(h.serving_pod AS VARCHAR) = g.pod AND h.ok
                       AND list_contains(?, d.service) AND h.ts < d.at - ?)
                   -- counters that grew after the kill was done: the pod lived on, and so did its log
                   AND NOT EXISTS (
                       SELECT 1 FROM per_pod a WHERE a.pod = g.pod AND a.ts > d.done
                       AND a.rq > (SELECT coalesce(max(b.rq), 0) FROM per_pod b WHERE b.pod = g.pod
                                   AND b.ts <= d.done))
            FROM grew g LEFT JOIN death d USING (pod)
            WHERE g.rq > 0 AND g.pod NOT IN (SELECT DISTINCT CAST(caller_pod AS VARCHAR) FROM hops
                                             WHERE caller_pod IS NOT NULL)
            ORDER BY g.pod
            """,
            [ACCESS_LOG_FLUSH_S, http, ACCESS_LOG_FLUSH_S],
        ).fetchall()
        return [(str(p), int(n), bool(u)) for p, n, u in rows]

    def _clock_checks(self) -> list[CheckResult]:
        """Each zone whose sidecars made hops has its nodes' clock bounded against the runner's (clock.jsonl).

        Only where the run says its nodes keep their own clocks (EKS from a CI runner): there a hop's time
        is Envoy's START_TIME on the caller's node, every fault, inventory event and user request the
        runner's, and the verdict compares them to the millisecond. The hops were corrected by the zone's
        measured offset (`harness.contract.clock`); a zone whose offset is not bounded (no probe, a clock that
        moved, a bound past the inventory's IP slack) leaves which of its hops fell before or after each inject
        unknown: unverified. A bound wider than CLOCK_TOLERANCE_S passes here: a CI runner 120 ms round trip
        from the Local Zones bounded every edge zone to ±60 ms and this check failed a correct mesh every night,
        though each rule can carry the bound (`_clock_bound`): the rules do, and one the bound stops from
        deciding (a failover whose ± reaches past maxFailoverS) says unverified itself (`faults.over_slo`).
        With in-zone locust workers the users' requests are stamped in their entry zone's pods, and each zone
        they entered is asked the same, and also for the node each request names (its worker's:
        `_request_nodes_unmeasured`). A run with one clock (local, kind: no clock.jsonl) has no such check.
        A run whose run.json says its nodes keep their own clocks but whose clock.jsonl is lost gets one check,
        unverified: no zone was measured, so none of its hops can be set against the runner's records (one
        message for the lost file, not one per zone, which would each blame that zone's probes).
        """
        clock = self.run.clock
        if clock is None:
            return []
        if clock.record_missing:
            text = (
                f"coverage: clock: {clock.why}: the nodes keep their own clocks, but {CLOCK_FILE} is missing or "
                "records nothing, so no zone's offset was measured: its hops' times cannot be set against the "
                "runner's faults and requests, and which fell in each fault window is unverified"
            )
            return [CheckResult("clock", UNVERIFIED, text, {"record": CLOCK_FILE, "why": clock.why})]
        sql = "SELECT DISTINCT caller_zone FROM hops WHERE caller_zone IS NOT NULL"
        if clock.requests_in_zones:  # the users' requests were stamped in the zones too (in-zone locust workers)
            sql += " UNION SELECT DISTINCT zone FROM requests WHERE zone IS NOT NULL"
        zones = sorted(str(r[0]) for r in self.con.execute(sql).fetchall())
        unmeasured = self._hop_nodes_unmeasured(clock)
        unstamped = self._request_nodes_unmeasured(clock)
        out = []
        for zone in zones:
            zc = clock.zone(zone)
            detail: dict[str, Any] = {"zone": zone, "offset_s": zc.offset, "uncertainty_s": zc.uncertainty,
                      "lo_s": zc.lo, "hi_s": zc.hi, "lines": zc.lines, "nodes": list(zc.nodes), "drift_s": zc.drift,
                      "tolerance_s": CLOCK_TOLERANCE_S}  # fmt: skip
            paired = sorted((c for c in (clock.nodes or {}).values() if c.zone == zone), key=lambda c: c.node)
            if paired:
                detail["node_clocks"] = {c.node: {"offset_s": c.offset, "uncertainty_s": c.uncertainty,
                                                   "lo_s": c.lo, "hi_s": c.hi, "via": list(c.via), "pairs": c.pairs,
                                                   "problem": c.problem} for c in paired}  # fmt: skip
            said = "".join(f"; {c.text()}" for c in paired)
            nodes_of = {"unmeasured_nodes": unmeasured.get(zone), "unmeasured_request_nodes": unstamped.get(zone)}
            key = next((k for k, nodes in nodes_of.items() if nodes), None)  # the hops' first: its own sidecars'
            if zc.bounded and key is not None:
                nodes = nodes_of[key] or []
                detail[key] = nodes
                text = unbounded_clock_text(f"{zc.text()}{said}", UNBOUNDED_STAMPS[key].format(nodes=", ".join(nodes)))
                out.append(CheckResult(f"clock {zone}", UNVERIFIED, text, detail))
                continue
            if zc.bounded:
                detail["carried_s"] = carried = self._clock_bound(zone)
                wide = "" if carried <= CLOCK_TOLERANCE_S else (
                    f": ± {carried * 1000:.1f} ms, wider than the {CLOCK_TOLERANCE_S * 1000:g} ms tolerance (the "
                    "runner is far from the zone), is carried by every rule that sets its hops against the "
                    "runner's records (failover and recovery ± it, the locality and failover windows and the gap "
                    "and tie slacks widened by it); a runner in the zones' VPC (as --workers-in-zone needs) "
                    "narrows it")  # fmt: skip
                out.append(CheckResult(f"clock {zone}", PASS, f"clock: {zc.text()}{said}{wide}", detail))
                continue
            text = (
                f"coverage: clock: {zc.text()}: its hops' times (its nodes' clock) cannot be set against the "
                "runner's faults and requests, so which fell in each fault window is unverified"
            )
            out.append(CheckResult(f"clock {zone}", UNVERIFIED, text, detail))
        return out

    def _hop_nodes_unmeasured(self, clock: RunClock) -> dict[str, list[str]]:
        """zone -> the nodes (inventory) of pods that made hops there that none of the zone's probe lines came from.

        Why: a hop's START_TIME is its caller's *node* clock, and each node keeps its own (chrony per instance);
        the probes bound only the clocks of the nodes whose sidecars logged them (`ZoneClock.nodes`), and the
        zone's offset is their intersection. A node no probe reached may be any distance off: correcting its
        hops by another node's offset passed a failover over maxFailoverS on a node a second behind. A pod the
        inventory names no node for is asked too (its node is unknown: '?'); one the inventory saw on two nodes (a
        StatefulSet's pod rescheduled) needs both."""
        measured = {
            z: clock.measured_nodes(z)
            for z in {*(clock.zones or {}), *(c.zone for c in (clock.nodes or {}).values() if c.zone)}
        }
        out: dict[str, list[str]] = {}
        for zone, nodes in sorted(self._hop_nodes.items()):
            for node in sorted(nodes):
                if node not in measured.get(zone, set()):
                    out.setdefault(zone, []).append(node)
        return out

    @cached_property
    def _hop_nodes(self) -> dict[str, set[str]]:
        """zone -> the nodes (inventory; '?' where it names none) of the pods that made its hops: their clocks
        stamped them."""
        rows = self.con.execute(
            """
            SELECT DISTINCT CAST(h.caller_zone AS VARCHAR), coalesce(nullif(p.node, ''), '?')
            FROM (SELECT DISTINCT caller_zone, caller_pod FROM hops WHERE caller_zone IS NOT NULL) h
            LEFT JOIN (SELECT DISTINCT pod, node FROM inventory WHERE nullif(node, '') IS NOT NULL) p
                   ON p.pod = CAST(h.caller_pod AS VARCHAR)
            """
        ).fetchall()
        out: dict[str, set[str]] = {}
        for zone, node in rows:
            out.setdefault(str(zone), set()).add(str(node))
        return out

    @cached_property
    def _request_nodes(self) -> dict[str, set[str]]:
        """zone -> the nodes whose clocks stamped its users' requests (`node`, an in-zone worker's; '?' where the
        record names none)."""
        rows = self.con.execute(
            "SELECT DISTINCT CAST(zone AS VARCHAR), coalesce(nullif(node, ''), '?') FROM requests "
            "WHERE zone IS NOT NULL"
        ).fetchall()
        out: dict[str, set[str]] = {}
        for zone, node in rows:
            out.setdefault(str(zone), set()).add(str(node))
        return out

    def _request_nodes_unmeasured(self, clock: RunClock) -> dict[str, list[str]]:
        """zone -> the nodes that stamped its users' requests (in-zone workers' `node`) whose clock is not bounded.

        Why: such a request is put on the runner's clock by its node's offset (`rundata._requests_on_runner_clock`),
        and only a node a probe or a chain of request pairs measured has one; the zone's offset stands in for the
        rest, and it bounds other nodes' clocks only. A request whose record names no node ('?': a worker
        without `EH_NODE`, a run recorded before the field) is on an unknown clock too. Requests the runner
        stamped (no in-zone workers) are on the runner's clock: nothing to ask."""
        if not clock.requests_in_zones:
            return {}
        out: dict[str, list[str]] = {}
        for zone, nodes in sorted(self._request_nodes.items()):
            measured = clock.measured_nodes(zone)
            for node in sorted(nodes):
                if node not in measured:
                    out.setdefault(zone, []).append(node)
        return out

    @cached_property
    def _node_kills(self) -> str:
        """Temp table (pod, died, done), its name: each pod a node fault killed, dated by the one rule
        (`_died_at`): it died no earlier than `died`, the later of the inject and the last successful hop it
        served, and no later than `done`, when the primitive had acted (`_acted_at`). Both widened by
        `SILENT_GAP_SLACK_S`: the hops are stamped on the nodes' clocks, the primitive's return on the runner's.

        The death of a killed sidecar excuses the access-log lines it had not flushed, in the log's gaps
        (`_served_but_silent`) and in a log with no line at all (`_counted_without_lines`): both date it here,
        as the failover's start does (`effective_at`). A pod a later fault killed again has a row per kill.
        """
        wide = self._wide_slack
        self.con.execute("CREATE OR REPLACE TEMP TABLE node_kills (pod VARCHAR, died DOUBLE, done DOUBLE)")
        kills: list[tuple[str, float, float]] = []
        for f in self.run.faults:
            if stops_nodes(f):
                pods, done = self._hit_pods(f)[0], self._acted_at(f) + wide
                died = self._died_at(f, pods, wide)
                kills += [(p, died.get(p, f.inject), done) for p in pods]
        if kills:
            self.con.executemany("INSERT INTO node_kills VALUES (?, ?, ?)", kills)
        return "node_kills"

    @cached_property
    def _wide_slack(self) -> float:
        """`SILENT_GAP_SLACK_S`, or where a zone's measured clock bound is wider than the tolerance (a far runner),
        twice the widest such bound plus Envoy's stamps: what is dated against a primitive's record on the
        runner's clock may lie that far off on any zone's (the rules carry the bound: `_clock_checks`; 0 on one
        clock, and for a zone not measured, which is unverified anyway)."""
        widest = max((self._capped_bound(z.name) for z in self.t.zones), default=0.0)
        return max(float(SILENT_GAP_SLACK_S), 2 * widest + 2 * HOP_TS_SLACK_S)

    def _gap_slack_sql(self, caller_zone_sql: str, serving_zone_sql: str) -> str:
        """SQL: how far a served hop (stamped on its caller's node) and the serving pod's own call (on its node)
        may lie apart from where they happened against each other: Envoy's millisecond stamps, plus, where the
        nodes keep their own clocks, each zone's measured bound (`_capped_bound`: wider than the tolerance too, the
        far runner's zones are judged with it; unmeasured, the zone is unverified anyway and the tolerance is
        taken)."""
        if self.run.clock is None:
            return repr(2 * HOP_TS_SLACK_S)

        def bound_sql(zone_sql: str) -> str:
            cases = []
            for z in self.t.zones:
                b = self._capped_bound(z.name, unmeasured=CLOCK_TOLERANCE_S)
                name = self.run.hop_key(f"'{sql_str(z.name)}'")
                cases.append(f"WHEN {zone_sql} = {name} THEN {b!r}")
            return f"(CASE {' '.join(cases)} ELSE {CLOCK_TOLERANCE_S!r} END)"

        return f"({2 * HOP_TS_SLACK_S!r} + {bound_sql(caller_zone_sql)} + {bound_sql(serving_zone_sql)})"

    def _served_but_silent(self) -> list[tuple[str, int, float | None, int, float | None]]:
        """Sidecars whose own access log is missing, stops or has a gap while their callers' logs show them serving.

        A sidecar is only seen through its own records: with no access log (and no counters) at all, a log
        that stopped mid-run (a rotation `kubectl logs -f` does not follow, a collector that lost the stream),
        or one with a stretch missing in the middle (a stream reconnected after a while, a lost chunk), every
        call it made meanwhile is unjudged, and the pair's other replicas, or its own lines before and after,
        still fill the pair: a Region-served (or another zone's) stretch of its calls hides in the gap. Its
        callers' logs show it kept serving: a successful hop served by a pod of a service whose every request
        calls an HTTP upstream (public-api -> product-api: each GraphQL query reads the products) means a call
        of its own, logged by its sidecar.

        - Stopped: `SILENT_MIN_HOPS` or more successful hops served by the pod that began more than
          `SILENT_LAG_S` after its own last access-log line (or with none at all). The lag is far beyond a
          request's duration and the access-log flush interval (0.2 s local, 1 s rendered), so the lines a
          killed sidecar had not flushed, or the last second of the run, never count; a pod that served nothing
          (a zone whose entry was down, a replacement ready at the very end) is asked nothing.
        - Gap: served hops (2xx/3xx: a 4xx may be answered without calling on) during whose lifetime the pod
          began no call of its own although its log goes on after them. Its own call starts after the served
          hop starts and before it ends (the served hop's duration includes it), so this needs no lag: only the
          two nodes' clock bounds (`_gap_slack_sql`, where the nodes keep their own clocks) and Envoy's
          millisecond stamps. Except hops begun in
          the last flush interval before a node fault killed the pod (`SILENT_UNFLUSHED_S`): its sidecar died
          with those lines in its buffer, and on kind the same pod is back after the restore, its log going on,
          so a busy pod made a correct mesh unverified by how many requests fell in that second. The pod died
          somewhere between the inject (recorded before the primitive) and the moment the primitive had acted
          (`_acted_at`: kind's `docker stop` returns once the node's container has stopped, seconds later on a
          busy machine), and not before the last hop it served: the excused interval is the flush interval
          before the later of the inject and that last hop, up to the primitive's return. Pinned to the inject,
          a `docker stop` of 2 s put the lost second past it, and the same mesh was unverified at 30 requests a
          second where a 50 ms stop passed it. `SILENT_MIN_HOPS` or
          more such hops make the log incomplete; one flush lost at a kill is the "stopped" case (no line after).

        Only services whose upstreams are all HTTP are asked: a TCP upstream's hop is logged when its pooled
        connection closes, maybe never (product-api -> postgres), and frontend's callers are users, whose
        requests name no pod: its log is asked per zone by `_entry_silent`.

        Counters alone are no sounder witness: rq_total counts every attempt, retries included, while the
        access log names only the last attempt's host, so rq_total above the lines naming a host is normal.
        Returns (pod, hops after its last line, its last line, hops in gaps, the first of those).
        """
        http = self._http_callers()
        if not http:
            return []
        names = ", ".join(f"'{sql_str(n)}'" for n in http)
        # where the nodes share the runner's clock (no clock.jsonl: local, kind) only Envoy's millisecond stamps
        # separate the two hops: the clocks' tolerance there let any line of a busy pod within 100 ms stand for a
        # lost one, and half its lines lost over 40 s passed. Where they keep their own, the served hop's caller's
        # clock and the pod's own are each put on the runner's within their zone's measured bound, not the
        # tolerance: the same 100 ms passed the same lost lines on EKS with every zone measured to 2.5 ms
        # (`_gap_slack_sql`). The node kill's excused flush interval keeps the wide slack on either clock, and
        # runs to when the kill was done (`_acted_at`: the kill lags its record).
        wide = self._wide_slack
        slack = self._gap_slack_sql("h.caller_zone", "h.serving_zone")
        kills = self._node_kills  # each pod a node fault killed, and when it died (`_died_at`)
        rows = self.con.execute(
            f"""
            WITH served AS (SELECT h.serving_pod AS pod, h.ts, h.status, h.ts - {slack} AS lo,
                                   h.ts + coalesce(h.duration_ms, 0) / 1000.0 + {slack} AS hi
                            FROM hops h
                            WHERE h.serving_pod IS NOT NULL AND h.ok AND h.upstream IN ({names})),
                 -- only the lines of pods that served (a long run's other lines are most of its hops); the pod
                 -- columns share one dictionary, so they are compared as they are stored
                 own AS (SELECT caller_pod AS pod, ts FROM hops
                         WHERE caller_pod IN (SELECT DISTINCT pod FROM served)),
                 last AS (SELECT pod, max(ts) AS last_line FROM own GROUP BY pod),
                 nxt AS (SELECT s.*, o.ts AS next_line FROM served s ASOF LEFT JOIN own o
                         ON s.pod = o.pod AND s.lo <= o.ts),
                 judged AS (
                    SELECT n.pod, n.ts, l.last_line,
                           n.next_line IS NULL AND n.ts > coalesce(l.last_line, -{INF}) + {SILENT_LAG_S} AS stopped,
                           n.next_line IS NOT NULL AND n.next_line > n.hi AND coalesce(n.status, 0) BETWEEN 200 AND 399
                               AS gap
                    FROM nxt n LEFT JOIN last l ON l.pod = n.pod),
                 -- the few candidates only: the last flush interval before a node fault killed the pod is no gap:
                 -- it died after the later of the inject and the last hop it served, and before the kill was done
                 cand AS (
                    SELECT j.pod, j.ts, j.last_line, j.stopped,
                           j.gap AND NOT EXISTS (
                               SELECT 1 FROM {kills} k WHERE k.pod = j.pod AND j.ts <= k.done
                                 AND j.ts >= k.died - {float(SILENT_UNFLUSHED_S) + wide!r}) AS gap
                    FROM judged j WHERE j.stopped OR j.gap)
            SELECT CAST(pod AS VARCHAR) AS p, count(*) FILTER (WHERE stopped), any_value(last_line),
                   count(*) FILTER (WHERE gap), min(ts) FILTER (WHERE gap)
            FROM cand WHERE stopped OR gap
            GROUP BY p HAVING count(*) >= {SILENT_MIN_HOPS} ORDER BY p
            """
        ).fetchall()
        return [
            (str(p), int(n), None if last is None else float(last), int(g), None if first is None else float(first))
            for p, n, last, g, first in rows
        ]

    def _cut_in_counters(self, f: Fault) -> bool:
        """Whether the zone's sidecars counted connect failures, errors or timeouts towards hosts of other zones
        between the partition's inject and restore snapshots. Envoy logs a TCP hop when its connection closes:
        a pooled database connection that hung through the cut is logged after it, from its start before it,
        so a correct partition may leave no failed hop inside its window; its counters still show the cut.

        Per Envoy: a sidecar that restarted between the two snapshots counts from zero, so its restore read is
        all its growth, not that read less the old Envoy's. Another Envoy is one of another inventory interval
        (a pod back under its name: a new address, or re-created), or, where the inventory has no record of it
        (a crash or an OOM kill restarts the container in place, keeping the pod and its address), one whose
        counters went down, which an Envoy's never do (a reset, as Prometheus reads a counter's). Subtracted
        across a restart, the old Envoy's earlier failures hid the new one's (a sum below zero: "not shown"
        on a correct mesh), and one host's reset hid another's growth."""
        counters = ("cx_total", "cx_connect_fail", "rq_total", "rq_error", "rq_timeout")
        went_down = " OR ".join(f"coalesce(r.{c}, 0) < coalesce(i.{c}, 0)" for c in counters)
        n = self._one(
            f"""
            WITH envoy AS (SELECT s.*, v.start_ts AS envoy FROM upstream_stats s
                           ASOF LEFT JOIN intervals v ON v.pod = s.pod AND s.ts >= v.start_ts
                           WHERE s.label IN (?, ?)),
                 grown AS (
                SELECT CASE WHEN i.pod IS NULL OR r.envoy IS DISTINCT FROM i.envoy OR {went_down} THEN 0
                            ELSE coalesce(i.cx_connect_fail, 0) + coalesce(i.rq_error, 0) + coalesce(i.rq_timeout, 0)
                       END AS before,
                       coalesce(r.cx_connect_fail, 0) + coalesce(r.rq_error, 0) + coalesce(r.rq_timeout, 0) AS now
                FROM envoy r LEFT JOIN envoy i
                  ON i.label = ? AND i.pod = r.pod AND i.cluster = r.cluster AND i.host = r.host
                WHERE r.label = ? AND r.caller_zone = ? AND r.host_zone IS NOT NULL AND r.host_zone <> ?)
            SELECT coalesce(sum(now - before), 0) FROM grown
            """,
            [f"inject {f.fault}", f"restore {f.fault}", f"inject {f.fault}", f"restore {f.fault}", f.zone, f.zone],
        )
        return bool(n and n > 0)

    def _not_taken_effect(self, f: Fault) -> str:
        """Why the records do not show that fault `f` took effect ("" when they do): a fault that did nothing
        never exercised the failover, and "stayed in-zone" everywhere proves nothing then.

        - A fault that takes pods down: each pod it hit is dead or out of the mesh once its primitive has
          returned, so it neither serves nor makes a successful hop. Allowed: maxFailoverS after that instant
          (`_effect_due`; the mesh has that long to stop using the pod by the SLO); one that served or called
          later, before the restore, was not taken down (a kill_pod whose pod kept serving, an unready pod left
          in the catalog, a node kill whose pods kept answering), or the mesh kept using it longer than the SLO
          allows. No pod hit at all is a fault that hit nothing. A pod made unready keeps running
          (`KEEPS_RUNNING`): only its serving counts, not its own calls.
        - A partition cuts the zone from every other: a hop from it served outside it that failed while it
          lasted shows the cut; none (every such hop answered, or there were none) leaves it unshown. Users
          served through it while it was on show it did not hold (`_partition_leaked`).
        - A degraded link slows every round trip across it (`_link_not_slowed`).
        Before: a kill of an entry service or an AZ's pod, a zone outage or a partition that changed nothing
        passed with every hop in-zone.
        """
        end = f.restore if f.restore is not None else max(self.run_end, f.inject)
        if f.kind == "partition":
            if leaked := self._partition_leaked(f, end):
                return leaked
            n = self._one(
                "SELECT count(*) FROM hops WHERE caller_zone = ? AND serving_zone IS NOT NULL "
                "AND serving_zone <> caller_zone AND NOT ok AND ts >= ? AND ts < ?",
                [f.zone, f.inject, end],
            )
            if n or self._cut_in_counters(f):
                return ""
            return (
                f"coverage: fault {f.fault}: the partition of {f.zone} is not shown to have cut anything: no hop "
                f"from {f.zone} to another zone failed from {iso(f.inject)} to {iso(end)}, and no connect failure, "
                f"error or timeout towards another zone grew in its sidecars' upstream counters (fault unverified)"
            )
        if f.kind == "link-degraded":
            return self._link_not_slowed(f, end)
        if f.kind not in ("service-down", "zone-down"):
            return ""
        hit, none_text = self._hit_pods(f)
        if not hit:
            return f"coverage: fault {f.fault}: {none_text}: the fault hit nothing (fault unverified)"
        after, since = self._effect_due(f)
        # each pod until the restore, or until the inventory has it ready again after it went unready in the fault
        # (an older timeline wrote the restore after waiting for readiness: readiness, not the order of two
        # writers, ends the fault for the pod)
        row = self.con.execute(
            """
            WITH hit AS (SELECT unnest(?::VARCHAR[]) AS pod),
                 down AS (SELECT h.pod, min(i.ts) AS lo FROM hit h LEFT JOIN inv i ON i.pod = h.pod
                          AND i.event IN ('unready', 'removed') AND i.ts >= ? GROUP BY h.pod),
                 span AS (SELECT d.pod, least(?, coalesce(min(i.ts), ?)) AS hi FROM down d LEFT JOIN inv i
                          ON i.pod = d.pod AND i.event = 'ready' AND i.ts > d.lo GROUP BY d.pod),
                 used AS (SELECT ts, CAST(serving_pod AS VARCHAR) AS pod FROM hops WHERE ok AND ts > ?
                          UNION ALL SELECT ts, CAST(caller_pod AS VARCHAR) FROM hops WHERE ok AND ts > ? AND ?)
            SELECT count(*), min(u.ts), max(u.ts), list(DISTINCT u.pod ORDER BY u.pod)[:5]
            FROM used u JOIN span s ON s.pod = u.pod AND u.ts < s.hi
            """,
            [hit, f.inject, end, end, after, after, f.action not in KEEPS_RUNNING],
        ).fetchone()
        if not row or not row[0]:
            return ""
        return (
            f"coverage: fault {f.fault}: did not take effect: {', '.join(row[3])} (taken down by it) served or made "
            f"{row[0]} successful hops from {iso(row[1])} to {iso(row[2])}, more than maxFailoverS "
            f"({self.slo.max_failover_s:g}s) after {since} and before "
            f"{'the restore' if f.restore is not None else 'the end of the run'} (the failover was never "
            "exercised, or the mesh kept using them beyond the SLO: fault unverified)"
        )

    def _effect_due(self, f: Fault) -> tuple[float, str]:
        """The instant by which fault `f` must show its effect (`_not_taken_effect`, `_partition_leaked`):
        maxFailoverS after its primitive had returned (`_returned_at`, the inject counter snapshot), and how a
        message names where that ran from.

        Not from the inject record: the timeline writes it before the primitive runs, and the primitive's own
        time then counted against the SLO. kind's `kill_node` / `zone_outage` is a `docker stop` during which
        the node's pods rightly serve (systemd's shutdown; containerd.service's KillMode=process leaves them
        running until PID 1 exits; up to docker's 10 s), a partition one iptables-restore per node, one
        `docker exec` after another: the same correct mesh passed coverage after a 50 ms stop and was
        unverified after a 6 s one. What the allowance is for stays inside it: the mesh's own time to stop
        using a pod (EDS, outlier ejection), an enforcer applying a NetworkPolicy after the API took it (EKS).
        Without the snapshot (the primitive raised, no sidecar answered the snapshot, a run from before them)
        it runs from the inject record, not from the restore that `_acted_at`'s upper bound falls back to: the
        records then do not say when the primitive returned, and from the restore anything the pods served
        would be excused, a kill that never took effect with it. A slow fault without its snapshot is
        unverified (the message says why), never passed on no evidence; a quick one still shows its effect.
        """
        applied = self._applied_at(f)
        return applied.at + self.slo.max_failover_s, applied.named

    def _partition_leaked(self, f: Fault, end: float) -> str:
        """Why the records show partition `f` did not hold while it was on ("" when they do not).

        A successful user request through the zone's entry `/api` needs the Region across the cut link when the
        entry's API upstream's calls reach a Region-only service (public-api -> product-api -> postgres): the
        zone has no instance of it, and the Region is what the partition cuts it from. One that began more than
        maxFailoverS after the partition's primitive had returned (`_effect_due`: an enforcer takes its time
        after the API took the policy) and was answered before the restore (written before the heal) crossed a
        link that was to be cut. One failed hop at the start was
        enough to show the cut, so a rule that held for a second of a 20 s partition PASSED as a partition
        survived and recovered (a NetworkPolicy an enforcer stopped applying, a rule flushed). Requests stamped
        in the zones' pods (their nodes' clocks) are held to the restore less the zone's clock bound.
        """
        needed = [
            s.name
            for s in self.t.services
            if s.placement.value == "region" and ENTRY_API_UPSTREAM in expected.dependants(self.t, (s.name,))
        ]
        if not needed or not self._entry_api_services():
            return ""
        in_zones = self.run.clock is not None and self.run.clock.requests_in_zones
        until = end - (self._clock_bound(f.zone) if in_zones else 0.0)
        due, since = self._effect_due(f)
        row = self.con.execute(
            f"SELECT count(*), min(ts), max({REQUEST_END_SQL}) FROM requests WHERE zone = ? AND {REQUEST_OK_SQL} "
            f"AND {ENTRY_API_SQL} AND ts >= ? AND {REQUEST_END_SQL} <= ?",
            [f.zone, due, until],
        ).fetchone()
        if not row or not row[0]:
            return ""
        return (
            f"coverage: fault {f.fault}: the partition of {f.zone} did not take effect throughout: {row[0]} user "
            f"requests through /api entering {f.zone} were served from {iso(row[1])} to {iso(row[2])}, more than "
            f"maxFailoverS ({self.slo.max_failover_s:g}s) after {since} and before the restore, "
            f"though each needs {', '.join(needed)} across the cut link (fault unverified)"
        )

    def _link_not_slowed(self, f: Fault, end: float) -> str:
        """Why the records do not show that degraded link `f` slowed the zone, and then no longer ("" when they do).

        Every round trip across the link pays the added latency, so the zone's hops that wait on the link
        (`LINK_BOUND_SQL`) and lie wholly inside the fault must take, at the median, at least
        `LINK_EFFECT_SHARE` of it more than the same kind of hop (`LINK_KIND_SQL`: upstream, served in the zone
        or outside it) in the `LINK_BASELINE_S` before it outside the impact windows (inject to restore + measured
        recovery) of the faults that reach them (each kind's median, `link_excess_ctes`; a kind with too few there
        is left out): the zone's own and the Region's (`_reaches_link`). A fault of another Local Zone does not:
        hub-and-spoke, the zone's calls never go there. Outside every fault of the run, each window running
        maxRecoveryS (60 s) past its restore, a link slowed by the third action of the first experiment was
        measured against the warm-up alone, whose cold, probe-budgeted requests took twice as long (104 ms against
        49 ms just before it), and its 80 ms effect was "not shown". So the baseline begins no earlier than the run
        settled (`RunData.settled`: the probe budget's decision; a run with none on record reads the stretch whole): a
        degradation that is the run's first fault was measured against that warm-up too, and whether it "took
        effect" depended on how cold and busy the machine was then (e2e's warm-up now gives it a settled
        baseline: `harness.chaos.actions.degrade_link` waits for it).
        A degradation that never reached the link (a rule on the wrong interface, a relay out of the path)
        leaves them as fast as ever; "traffic stayed in-zone under latency" proves nothing then. Before, it
        passed. Fewer than `LINK_EFFECT_MIN_HOPS` such hops in the fault or before it (no baseline: read as 0 ms,
        any hop slower than half the latency "showed" it), or no latency declared (loss alone), cannot show
        it: unverified too. The hops in flight while another fault that reaches the link is on are left out of
        the fault's own stretch as of the baseline: an AZ lost meanwhile slowed them as much, and an inert
        degradation passed. After the restore (until maxRecoveryS or the zone's next fault) the same hops must
        be back under that mark: a rollback that left the latency on leaves the zone slow for whatever runs
        next, and its recovery was never shown. "After" begins once the rules are off (`_undone_at`): the
        timeline writes the restore before the primitive clears the link. "Inside" begins, the same way, once
        they are on (`_returned_at`, the inject's counter snapshot; the inject record without it): the timeline
        writes the inject before the primitive sets the link (kind: `docker exec` on each of the zone's nodes),
        and the hops that began in between are not slowed. From the record, they diluted the median: the same
        mesh showed the effect after a quick primitive and "did not take effect" after a slow one.
        """
        head = f"coverage: fault {f.fault}: the degradation of {f.zone}'s link"
        if not f.latency_ms or f.latency_ms <= 0:
            return f"{head} declares no added latency: the access log cannot show it took effect (fault unverified)"
        quiet = [(g.inject, self._impact_or_due(g)) for g in self.run.faults if self._reaches_link(g, f.zone)]
        since = f.inject - LINK_BASELINE_S
        if self.run.settled is not None:
            since = max(since, self.run.settled)
        quiet = [(lo, hi) for lo, hi in quiet if lo <= f.inject and hi >= since - self.longest["hops"] - 0.001]
        outside = (
            f"te < {float(f.inject)!r} AND te >= {since!r} AND "
            f"NOT {spans_sql(None, [('', lo, hi) for lo, hi in quiet], HOP_END_SQL)}"
        )
        # during it, hops in flight while another fault that reaches the link is on (inject to restore, as after
        # it below) say nothing of this one: an AZ lost in the Region, or the zone's own kill, can slow them as much
        # as the latency would, and an inert degradation overlapped by one passed. (Not to that fault's impact
        # end: a recovery left to this fault, `_superseded_by`, has its end at maxRecoveryS, not measured.)
        meets = [g for g in self.run.faults if g is not f and self._reaches_link(g, f.zone) and g.inject < end
                 and (g.restore is None or g.restore >= f.inject - self.longest["hops"] - 0.001)]  # fmt: skip
        overlap = [("", g.inject, g.restore if g.restore is not None else self.run_end) for g in meets]
        inside = f"ts >= ? AND te <= ? AND NOT {spans_sql(None, overlap, HOP_END_SQL)}"
        on = self._applied_at(f)  # the link is slowed from when the primitive had returned
        applied = min(on.at, end)
        restore = f.restore if f.restore is not None else INF
        after_hi = min(restore + self.slo.max_recovery_s, self._next_fault_in_zone(f, restore))
        after_lo = self._undone_at(f, after_hi)
        # after it, hops in flight during another fault (a Region one slowing postgres, say) say nothing of this one
        others = [("", g.inject, g.restore if g.restore is not None else self.run_end)
                  for g in self.run.faults if g is not f and self._reaches_link(g, f.zone)]  # fmt: skip
        # ... and when the stretch up to the zone's next fault shows no hop back, the rest of maxRecoveryS after the
        # restore outside the windows (to their measured recovery) of the faults that reach the link
        wide_hi = restore + self.slo.max_recovery_s
        last = max(end, wide_hi) if wide_hi < INF else end
        others = [(z, lo, hi) for z, lo, hi in others if lo <= last and hi >= after_lo - self.longest["hops"] - 0.001]
        after = f"ts >= ? AND te <= ? AND NOT {spans_sql(None, others, HOP_END_SQL)}"
        # only the hops of this fault's stretch of the run (see `_reaches`)
        first = since - self.longest["hops"] - 0.001
        bound = (
            f"SELECT {LINK_POD_SQL} AS link_pod, ts, {HOP_END_SQL} AS te, duration_ms, {LINK_KIND_SQL} AS kind "
            f"FROM hops WHERE caller_zone = '{sql_str(f.zone)}' AND ts >= {first!r} AND ts <= {float(last)!r} "
            f"AND {LINK_BOUND_SQL}"
        )
        ctes = link_excess_ctes(bound, outside)
        row = self.con.execute(
            f"""
            WITH {ctes}
            SELECT count(excess_ms) FILTER (WHERE {inside}), median(excess_ms) FILTER (WHERE {inside}),
                   (SELECT coalesce(sum(n), 0) FROM kinds), (SELECT string_agg(kind || ' ' || round(base) || ' ms', ', '
                                                             ORDER BY kind) FROM kinds),
                   count(excess_ms) FILTER (WHERE {after}), median(excess_ms) FILTER (WHERE {after}),
                   count(*) FILTER (WHERE {after} AND duration_ms < ?)
            FROM excess
            """,
            [applied, end, applied, end, after_lo, after_hi, after_lo, after_hi, after_lo, after_hi,
             float(f.latency_ms)],
        ).fetchone()  # fmt: skip
        assert row is not None
        n, during, n_base, kinds = int(row[0]), row[1], int(row[2]), str(row[3] or "")
        n_after, after_median, n_back = int(row[4]), row[5], int(row[6])
        mark = LINK_EFFECT_SHARE * f.latency_ms
        against = (
            f"each against its own kind's median before it outside the faults that reach the link ({n_base} hops: "
            f"{kinds}): {LINK_EFFECT_SHARE:g} x the added {f.latency_ms:g} ms is {mark:.0f} ms"
        )
        span = f"from {iso(applied)} to {iso(end)} (since {on.named})"
        if meets:
            span += f" outside the other faults that reach the link then ({', '.join(g.fault for g in meets)})"
        if n_base < LINK_EFFECT_MIN_HOPS:
            # no baseline is not a baseline of 0 ms: against it any hop slower than half the latency "showed" it
            settled = "" if since == f.inject - LINK_BASELINE_S else f" since the run settled at {iso(since)}"
            return (
                f"{head} is not shown: no kind of hop from {f.zone} that waits on the link has "
                f"{LINK_EFFECT_MIN_HOPS} in the {LINK_BASELINE_S:g} s before it{settled} outside the faults that "
                f"reach the link: nothing to measure the added {f.latency_ms:g} ms against; fault unverified)"
            )
        if n < LINK_EFFECT_MIN_HOPS:
            return (
                f"{head} is not shown: {n} hops from {f.zone} that wait on the link, of a kind with a baseline "
                f"({kinds}), lie wholly {span} (fewer than {LINK_EFFECT_MIN_HOPS}: the access log cannot show the "
                f"added {f.latency_ms:g} ms; fault unverified)"
            )
        if float(during) < mark:
            return (
                f"{head} did not take effect: the {n} hops from {f.zone} that wait on the link took a median of "
                f"{float(during):.0f} ms more than before {span}, {against} (fault unverified)"
            )
        back_mark = link_back_mark(float(during), float(f.latency_ms))
        if not link_shown_back(n_after, after_median, n_back, back_mark) and f.restore is not None:
            # not one hop up to the zone's next fault shows the link back (none faster than the latency, which none
            # can be while it is on): too few to judge a pod by (the next fault 1 s after the restore, or probes the
            # budget slowed) passed a rollback that left the latency on. The rest of maxRecoveryS after the restore
            # decides, outside the windows of the faults that reach the link up to their measured recovery (a
            # restarted pod's cold hops are slow)
            after_hi = wide_hi
            busy = [("", g.inject, self._impact_or_due(g)) for g in self.run.faults
                    if g is not f and self._reaches_link(g, f.zone) and g.inject <= after_hi
                    and self._impact_or_due(g) >= after_lo - self.longest["hops"] - 0.001]  # fmt: skip
            after = f"ts >= ? AND te <= ? AND NOT {spans_sql(None, busy, HOP_END_SQL)}"
            wide = self.con.execute(
                f"WITH {ctes} SELECT count(excess_ms), median(excess_ms), "
                f"count(*) FILTER (WHERE duration_ms < ?) FROM excess WHERE {after}",
                [float(f.latency_ms), after_lo, after_hi],
            ).fetchone()
            assert wide is not None
            n_after, after_median, n_back = int(wide[0]), wide[1], int(wide[2])
            back = link_shown_back(n_after, after_median, n_back, back_mark)
            if not back and n_after < LINK_EFFECT_MIN_HOPS:
                return (
                    f"{head} is not shown to have ended at its restore: {n_after} hops from {f.zone} that wait on "
                    f"the link from {iso(after_lo)} to {iso(after_hi)} outside the faults that reach the link, none "
                    f"faster than the added {f.latency_ms:g} ms (fewer than {LINK_EFFECT_MIN_HOPS}; recovery "
                    "unverified)"
                )
            if not back:
                return (
                    f"{head} did not end at its restore: not one of the {n_after} hops from {f.zone} that wait on the "
                    f"link from {iso(after_lo)} to {iso(after_hi)} outside the faults that reach the link took less "
                    f"than the added {f.latency_ms:g} ms, nor was their median excess over their kind's baseline "
                    f"{float(after_median or 0.0):.0f} ms under {back_mark:.0f} ms (half the effect measured during "
                    f"it, {float(during):.0f} ms, or {LINK_EFFECT_SHARE:g} x the latency) (recovery unverified)"
                )
        # no pod can have LINK_EFFECT_MIN_HOPS after the restore where the zone has fewer
        stuck = ""
        if n_after >= LINK_EFFECT_MIN_HOPS:
            stuck = self._link_still_on(f, ctes, after, after_lo, after_hi, back_mark)
        if stuck:
            return (
                f"{head} did not end at its restore: the {n_after} hops from {f.zone} that wait on the link "
                f"took a median of {float(after_median or 0.0):.0f} ms more than before from {iso(after_lo)} to "
                f"{iso(after_hi)}, {against}; not one of {stuck} took less than the added {f.latency_ms:g} ms, "
                f"at a median under {back_mark:.0f} ms (half the effect measured during it) (recovery unverified)"
            )
        return ""

    def _link_still_on(self, f: Fault, ctes: str, after: str, lo: float, hi: float, mark: float) -> str:
        """The pods of `f`'s zone whose hops after the restore all paid the added latency ("" for none).

        While the latency is on, every round trip across the link pays it: a hop that waits on the link can take
        no less (the relay and netem never deliver early), however fast or idle the machine. A slow median
        after the restore is not enough to say the rollback left it on: a 2-core machine saturated by the
        catch-up after an 8 s degradation (100 % busy for the 3.3 s up to the next fault) held the median at
        115 ms against a mark of 77 in a correct run, though 1 hop in 10 took under 57 ms. A pod with
        `LINK_EFFECT_MIN_HOPS` hops after the restore, a median at or over `mark` (`link_back_mark`) and not one
        hop below the added latency is the rollback's signature, on all of the zone's nodes or on one (kind clears each
        node's rules apart). Judged per pod, not behind the zone's median: with the latency left on one node
        of two, half the zone's hops were back and the zone's median sat near the mark. The pod is the one whose
        node's link a hop waits on (`LINK_POD_SQL`), not always its caller: public-api calls every product-api
        pod of its zone, and it is the serving pod's query to postgres that crosses. `ctes` and `after` are
        `_link_not_slowed`'s: the zone's hops that wait on the link with their excess over their kind's baseline
        (`link_excess_ctes`; the median is of that excess), and the stretch after the restore.
        """
        rows = self.con.execute(
            f"""
            WITH {ctes}
            SELECT link_pod, count(excess_ms), median(excess_ms) FROM excess WHERE {after}
            GROUP BY link_pod
            HAVING count(excess_ms) >= ? AND median(excess_ms) >= ? AND count(*) FILTER (WHERE duration_ms < ?) = 0
            ORDER BY link_pod
            """,
            [lo, hi, LINK_EFFECT_MIN_HOPS, float(mark), float(f.latency_ms or 0.0)],
        ).fetchall()
        return ", ".join(f"{pod}'s {n} (median {float(med):.0f} ms more)" for pod, n, med in rows)

    def _impact_or_due(self, g: Fault) -> float:
        """Where fault `g`'s effect on its zone ends: its impact window's end (restore + measured recovery), or
        maxRecoveryS past its restore when it was not measured."""
        if id(g) in self.impact_ends:
            return self.impact_ends[id(g)]
        return (g.restore if g.restore is not None else self.run_end) + self.slo.max_recovery_s

    def _reaches_link(self, g: Fault, zone: str) -> bool:
        return reaches_link(self.t, g, zone)

    def _undone_at(self, f: Fault, before: float) -> float:
        """When the records show fault `f` undone: its restore's counter snapshot, taken once the primitive acted
        (before `before`), else the restore itself (INF: never restored).

        The timeline writes the restore *before* calling the primitive that undoes the fault (so that no verdict
        depends on which of two threads wrote first), and clearing a link's rules takes a while (kind: `docker
        exec` on each of the zone's nodes, 0.5 s on a busy machine): the zone's hops that began in between still
        wait on the degraded link. Judged from the restore, a next experiment 0.8 s later left a window of
        mostly such hops, and at 10 requests a second and more (five of them) "did not end at its restore"
        failed a rollback that worked, while at 2 a second the window held too few to judge. A rollback that
        left the latency on is as slow after the snapshot as before it.
        """
        if f.restore is None:
            return INF
        snap = self._one(
            "SELECT min(ts) FROM upstream_stats WHERE label = ? AND ts >= ? AND ts < ?",
            [f"restore {f.fault}", f.restore, before],
        )
        return f.restore if snap is None else float(snap)

    @cached_property
    def _users_gap(self) -> tuple[float, str]:
        """(seconds, why): how long a zone's users may leave it with no request in flight (`_users_gaps`).

        A user thinks up to its longest think time between two requests (users.json, `RunData.users_wait_s`)
        and a request without an answer ends within its timeouts: a bound of `USERS_GAP_S` failed a correct run
        whose users were set to think longer (EH_WAIT=30: every zone with one user "went silent"), as unverified.
        Runs that do not record it, and think times well below it, keep `USERS_GAP_S`, so a zone that went
        silent is still caught as soon as before.
        """
        wait = self.run.users_wait_s
        if wait is None or users_quiet_bound(wait) <= USERS_GAP_S:
            return USERS_GAP_S, ""
        return users_quiet_bound(wait), (
            f": the users' longest think time {wait:g}s ({WAIT_ENV}, {USERS_FILE}) and a request's "
            f"{CONNECT_TIMEOUT_S:g}s connect and {ANSWER_TIMEOUT_S:g}s answer timeouts"
        )

    @property
    def _after_s(self) -> float:
        """How long after a restore coverage's "after" window looks for a shopper's request: maxRecoveryS, or the
        users' quiet bound (`_users_gap`) when that is longer.

        The window is there for a request that began after the restore; a zone whose users think longer than
        maxRecoveryS allows (EH_WAIT=55: users_quiet_bound 68 s against 60 s) sends its next one after the window
        closed however correct the mesh: "no user requests ... after the fault: recovery unverified", though e2e's
        cool-down waited for that request (`harness.e2e.cool_down`, to the same bound) and it is on record. Users
        gone are still caught: none by then, or `_users_gaps` on the zone's quiet spell past the same bound.
        """
        return max(self.slo.max_recovery_s, self._users_gap[0])

    def _zones_without_shoppers(self) -> list[tuple[str, int]]:
        """(zone, zone-probe requests): the topology's zones no shopper's request entered all run, when some
        other zone's shoppers were recorded (a run with none at all fails availability's "no traffic").

        Why: availability judges the shoppers' requests only, and `_users_gaps` runs from a zone's first shopper
        on, so a zone with none was left to its pairs' "no traffic". Zone probes into it (`harness traffic`
        probes every zone on top of its `-u` shoppers, which locust hands out round robin: `-u 3` over six zones
        leaves three with probes alone), or its sidecars' logs of users whose records were lost (an in-zone
        worker's records that never arrived), gave every pair hops, and the run passed with nobody's experience
        of the zone judged. e2e's warm-up waits for every zone's shoppers before the first fault; a run without
        them in a zone has that zone unverified.
        """
        shopper = f"NOT {IS_PROBE_SQL}"
        rows = self.con.execute(
            f"""
            SELECT CAST(zone AS VARCHAR), count(*) FILTER (WHERE {shopper}), count(*) FILTER (WHERE {IS_PROBE_SQL})
            FROM requests WHERE zone IS NOT NULL GROUP BY zone
            """
        ).fetchall()
        shoppers = {str(z): int(n) for z, n, _ in rows}
        probes = {str(z): int(p) for z, _, p in rows}
        if not any(shoppers.values()):
            return []
        return [(z.name, probes.get(z.name, 0)) for z in self.t.zones if not shoppers.get(z.name)]

    def _users_gaps(self) -> list[tuple[str, float, float]]:
        """(zone, from, to): stretches longer than `_users_gap` in which no shopper's request entering the zone
        was in flight ([ts, ts + latency]), within the run's users' traffic: from the zone's first request to the
        last one of any zone.

        Why: coverage asks each fault's zones during and after it, and nothing else. A zone whose users stopped
        (a locust worker gone, in-zone workers on a node that died) before the first fault, or went away for a
        minute between two faults elsewhere, had its routing then on no record, and the run passed: the verdict
        says the mesh routed every zone in-zone all run. A zone with no shopper at all is
        `_zones_without_shoppers`'; the start of a zone's users is left to the warm-up.
        """
        shopper = f"NOT {IS_PROBE_SQL}"
        rows = self.con.execute(
            f"""
            WITH r AS (SELECT CAST(zone AS VARCHAR) AS zone, ts, {REQUEST_END_SQL} AS hi FROM requests
                       WHERE zone IS NOT NULL AND ts IS NOT NULL AND {shopper}),
                 last AS (SELECT max(ts) AS last_ts FROM r),
                 o AS (SELECT zone, ts, max(hi) OVER (PARTITION BY zone ORDER BY ts, hi
                                                      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS covered
                       FROM r),
                 gaps AS (
                SELECT zone, covered AS lo, ts AS hi FROM o WHERE covered IS NOT NULL AND ts - covered > ?
                UNION ALL
                SELECT zone, max(hi), any_value(last_ts) FROM r, last GROUP BY zone
                HAVING any_value(last_ts) - max(hi) > ?)
            SELECT zone, lo, hi FROM gaps ORDER BY lo, zone
            """,
            [self._users_gap[0], self._users_gap[0]],
        ).fetchall()
        return [(str(z), float(lo), float(hi)) for z, lo, hi in rows]

    def coverage(self) -> InvariantResult:
        """Each fault has user requests entering each zone it affects during and after it (see DEFINITIONS)."""
        checks: list[CheckResult] = []
        failures: list[str] = []
        user_zones = set(self.user_zones)
        for f in self.run.faults:
            for zone in self._affected_zones(f, user_zones):
                during_end = f.restore if f.restore is not None else max(self.run_end, f.inject)
                windows: list[tuple[str, float, float, bool]] = [("during", f.inject, during_end, True)]
                if f.restore is not None:
                    nxt = self.next_inject(zone, f.restore, f)
                    after_end = min(self.run_end, f.restore + self._after_s)
                    if nxt is not None and nxt < after_end:
                        # the zone's next fault began first: its window holds the users the recovery met (cut at
                        # its inject, a burst of faults a few hundred ms apart had users "after" or not by chance)
                        g_end = min((g.restore if g.restore is not None else self.run_end)
                                    for g in self.run.faults if g.zone == zone and g.inject == nxt)  # fmt: skip
                        after_end = min(after_end, max(nxt, g_end))
                        if any(g.entry_down for g in self.run.faults if g.zone == zone and g.inject == nxt):
                            # it took the entry point down: no user reaches the zone until its restore, and the
                            # recovery is measured with those after it (`FaultMeasurer._recovery_after_cut`)
                            after_end = min(self.run_end, max(after_end, g_end + self._after_s))
                    windows.append(("after", f.restore, after_end, False))
                for name, lo, hi, closed in windows:
                    subject = f"{f.fault} {zone} {name}"
                    span = f"{'[' if closed else '('}{iso(lo)}, {iso(hi)}]"
                    # during: a request in flight at any time in the fault met it (users whose requests hung from
                    # just before the inject to past the restore had none that *began* in it: unverified, by
                    # tens of milliseconds); after: one that began after the restore, to show the recovery
                    since = (
                        self._reaches(lo, "requests")
                        if name == "during"
                        else (f"ts {'>=' if closed else '>'} {float(lo)!r}")
                    )
                    # the zone's down spans that can hold a request's ts here (a long run has many elsewhere)
                    first_ts = lo - self.longest["requests"] - 0.001 if name == "during" else lo
                    entry_down = spans_sql(
                        "zone", [s for s in self.entry_down if s[0] == zone and s[1] <= hi and s[2] >= first_ts]
                    )
                    # the shoppers, as availability judges them: a zone probe is the harness's instrument, left out
                    # of every availability window, so a window only probes entered had no user to judge (every
                    # request entering LAX during a kill failed, all of them probes, and the run passed)
                    shopper = f"NOT {IS_PROBE_SQL}"
                    row = self.con.execute(
                        f"""
                    SELECT count(*) FILTER (WHERE NOT {entry_down} AND {shopper}),
                           count(*) FILTER (WHERE {entry_down} AND {shopper}),
                           min(ts) FILTER (WHERE NOT {entry_down} AND {shopper}),
                           count(*) FILTER (WHERE NOT {entry_down} AND NOT {shopper})
                    FROM requests WHERE zone = ? AND {since} AND ts <= ?
                    """,
                        [zone, hi],
                    ).fetchone()
                    assert row is not None
                    n, at_down, first, probes = int(row[0]), int(row[1]), row[2], int(row[3])
                    detail = {"fault": f.fault, "zone": zone, "window": name, "start": lo, "end": hi,
                          "requests": n, "requests_at_down_entry": at_down, "first": first}  # fmt: skip
                    if name == "during" and f.entry_down and zone == f.zone:
                        why = f"{zone}'s entry point is down by design during {f.fault}"
                        checks.append(CheckResult(subject, NOT_APPLICABLE, why, detail))
                        continue
                    if n > 0:
                        checks.append(CheckResult(subject, PASS, f"{n} user requests entering {zone} {span}", detail))
                        continue
                    why = f" ({at_down} only at a down entry point)" if at_down else ""
                    if probes:
                        why += (
                            f" (only {probes} zone-probe requests, the harness's own, which availability leaves out: "
                            "what users met is unjudged)"
                        )
                    if hi <= lo:
                        why = " (the run ended at the restore)" if name == "after" else " (empty window)"
                    text = (
                        f"coverage: fault {f.fault}: no user requests entering {zone} {name} the fault {span}{why}: "
                        f"{'failover' if name == 'during' else 'recovery'} unverified"
                    )
                    failures.append(text)
                    checks.append(CheckResult(subject, UNVERIFIED, text, detail))
            if text := self._not_taken_effect(f):
                failures.append(text)
                checks.append(CheckResult(f"{f.fault} effect", UNVERIFIED, text, {"fault": f.fault, "zone": f.zone}))
        for zone, probes in self._zones_without_shoppers():
            seen = f" (only {probes} zone-probe requests, which availability leaves out)" if probes else ""
            text = (
                f"coverage: {zone}: no shopper's request entered it all run{seen} while the run's users went on "
                "in other zones: its users' availability, and the routing their calls met, are on no record "
                "(unverified)"
            )
            failures.append(text)
            checks.append(CheckResult(f"{zone} users", UNVERIFIED, text, {"zone": zone, "probes": probes}))
        for zone, lo, hi in self._users_gaps():
            text = (
                f"coverage: {zone}: no user request entering it in flight from {iso(lo)} to {iso(hi)} "
                f"({hi - lo:.0f}s, longer than {self._users_gap[0]:g}s{self._users_gap[1]}) while the run's users "
                "went on: the zone's routing "
                "then is on no record (unverified)"
            )
            failures.append(text)
            checks.append(CheckResult(f"{zone} users", UNVERIFIED, text, {"zone": zone, "start": lo, "end": hi}))
        for text in self._records_incomplete():
            failures.append(text)
            checks.append(CheckResult("records", UNVERIFIED, text))
        for check in self._clock_checks():
            checks.append(check)
            if check.status != PASS:
                failures.append(check.message)
        n_ok = sum(1 for c in checks if c.status == PASS)
        ok_text = f"{n_ok} fault windows had user traffic in their zone" if self.run.faults else "no faults to cover"
        return InvariantResult(COVERAGE, not failures, self._summary(COVERAGE, failures, ok_text), checks=checks)
