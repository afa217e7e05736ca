"""The verifier's shared vocabulary: definitions, SQL fragments, record texts, window arithmetic."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.contract.clock import CLOCK_CARRY_LIMIT_S, CLOCK_TOLERANCE_S
from harness.contract.users import PROBE_ENDPOINT
from harness.observe.hops import host_ip_sql
from harness.verify.verdict import iso

# A hop or request is *in* a window when its lifetime overlaps it, not only when it
# started inside: a request in flight at the kill was served (or failed) because of
# the fault although Envoy and locust stamp it with its start.
HOP_END_SQL = "(ts + coalesce(duration_ms, 0) / 1000.0)"
REQUEST_END_SQL = "(ts + coalesce(latency_ms, 0) / 1000.0)"
RECOVERY_EVIDENCE_ALPHA = 1e-3
"""A recovery is shown when a mesh still sending a share of its hops elsewhere (during the fault's spill, or
after the restore) would serve the hops after it all where they belong with a chance below this: the verdict's
rule (`FaultScoping.recovery_unshown`), which e2e's cool-down asks too (`harness.verify.pending`)."""


def recovery_chance(misplaced: int, ok: int, after: int) -> float | None:
    """The chance that a mesh sending `misplaced` of its `ok` successful hops elsewhere serves `after` successful
    hops in a row where they belong; None when that share says nothing (none misplaced, or all of them: a whole
    failover, or a clean switch back, is shown undone by the first good hop)."""
    if ok <= 0 or misplaced <= 0 or misplaced >= ok:
        return None
    return float((1.0 - misplaced / ok) ** after)


HOP_TS_SLACK_S = 0.001  # a hop's ts is Envoy's START_TIME: whole milliseconds, truncated

MAX_OFFENDERS = 5
# below this chance of a correct mesh's in-zone hops, a spill's share fails locality (`RoutingChecks._spill_share`)
SPILL_ALPHA = 1e-6
# below this chance of a zone's failed user requests at the error budget's rate, the zone's users fail the window's
# availability though the window's rate over every zone is within it (`UserChecks._by_zone`)
ZONE_BUDGET_ALPHA = 1e-3
# a hop whose caller no inventory record places (inventory lost or cut short): its pair is named so, and locality
# fails the run for it (`RoutingChecks._unplaced_callers`)
UNPLACED = "(no zone)"
CALLER_ZONE_SQL = f"coalesce(caller_zone, '{UNPLACED}')"
# a hop whose upstream cluster no service owns (call-graph fails the run for it): its hub-and-spoke pair is named so
UNNAMED = "(no service)"
UPSTREAM_SQL = f"coalesce(upstream, '{UNNAMED}')"
# pods the inventory removed (every interval ended) / still up at the end of the run
DEAD_PODS_SQL = "SELECT pod FROM intervals GROUP BY pod HAVING count(*) FILTER (WHERE end_ts IS NULL) = 0"
LIVE_PODS_SQL = "SELECT pod FROM intervals GROUP BY pod HAVING count(*) FILTER (WHERE end_ts IS NULL) > 0"
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
    "its upstream was down (each until the measured recovery, else + maxRecoveryS), >= inZoneShare; hops from "
    "callers no inventory record places, and hops with neither an upstream host nor an Envoy response flag, = "
    "unverified = fail; a pair without traffic (an edge or a Region caller's) = unverified = fail; while it "
    "spilled (outside faults) the in-zone count must not be below what keeping min(1, 1.4 x ready / registered) "
    "gives with chance >= 1e-6",
    "hub_and_spoke": "no hop of an edge caller served in another edge zone, none of a Region caller served in an "
    "edge zone, and no such host with cx_total + cx_connect_fail + rq_total > 0 in any sidecar's upstream "
    "counters (attempts a retry hid), and no call an edge zone's sidecar logged inbound from a pod of another zone "
    "(the line's downstream address: the serving side's record, left when the caller's died in its buffer; a line "
    "with X-Forwarded-For and no downstream_direct_remote_address, as Consul's default format writes it, names no "
    "caller: such lines at a pod another zone's dead sidecar calls, in its last flush interval = unverified = fail); "
    "a host no inventory record explains at the time, or no host at all (no "
    "healthy one on the route), counts in the zone its Envoy "
    "cluster is named for (when a cluster names another zone's instances), else in the zone of the last pod that "
    "held the address (an endpoint Envoy kept), else it is unverified = fail; a hop with neither an upstream host "
    "nor a response flag, or counters of a sidecar no inventory record places, = unverified = fail; no start/end "
    "counter snapshot, or a sidecar that made hops and was up at the end missing from the end snapshot, or one "
    "that died after hops missed by a snapshot after its last one while its access log shows it up (hops before "
    "it and past its 5 s admin timeout; per Envoy: a pod back under its name after a new address or a re-creation "
    "runs a new one, its counters from zero) = unverified = fail",
    "failover_s": "first successful Region-served hop after the last successful non-Region hop, the last failed "
    "hop sent to the zone's own instance and the last failed hop that found no upstream host (UH, NR: the chain had "
    "no healthy target), minus when the fault took effect (the fault's effective_at: its inject, or for a fault "
    "that kills pods (kill_pod, kill_node, zone_outage; not make_unready) the last successful hop one of the pods "
    "it took down served after the inject, never later than its inject counter snapshot, taken once its primitive "
    "had acted: a docker stop or a drain takes seconds, while the pods still serve); "
    "the window begins at the inject and ends (exclusive) at the restore or when the upstream is up again in the "
    "zone, whichever is first; a pair whose callers were all down at the inject (another fault of the zone) and "
    "called nothing meanwhile is measured from the first one's return (inventory readiness), and has no failover "
    "to measure when none returned before the window's end",
    "recovery_s": "first successful hop served where it belongs after the last misplaced successful hop and the "
    "last failed hop that found no upstream host, minus restore (or minus the instant the inventory shows the "
    "upstream ready again in the zone, when that came before the restore's record: the clock of a restore recorded "
    "late starts at the readiness; or minus the callers' return, when another fault of the zone had taken all of "
    "them down before this one and kept them down past that instant, and they called nothing meanwhile); "
    "measured up to the pair's next outage or spill "
    "after the restore, or a later fault elsewhere that takes down a Region-only service the pair's upstream "
    "calls (their misplaced and failed hops are their own), "
    "past it only when the pair was not back before it; a recovery not shown before the zone's next fault, which "
    "began within maxRecoveryS and measures the pair's recovery after its own restore, is left to it; one whose "
    "callers that fault took down is measured after that fault's restore by the same rules (the pair's next hops; "
    "unverified when it was never restored); one not shown when the run ended before maxRecoveryS after the restore "
    "had passed is unverified (a failure, not a recovery shown missing); "
    "every service a node fault killed a pod of must recover, "
    "also one the zone kept an instance of; a pair that spilled a share p of its hops while its upstream was not "
    "whole in the fault (hops a pod the inventory had taken out of service served in-zone left out: the mesh "
    "not yet told) has recovered only when the n good hops after the instant make (1 - p)^n < 1e-3 (a mesh "
    "still spilling would rarely give them); a declared single point of failure's cascade: a zone still without "
    "a dependant longer than maxFailoverS after the Region has it ready again must fail over to the Region, and "
    "one without it longer than maxRecoveryS fails, and every edge pair depending on it must be back in-zone "
    "within maxRecoveryS after the cascade, with traffic to show it, measured up to its zone's next fault (one that "
    "began within maxRecoveryS and measures the pair's recovery after its own restore is left it), as any "
    "recovery: after the last misplaced successful hop and the last that found no upstream host, and shown by "
    "the same (1 - p)^n < 1e-3 rule, p the pair's share sent elsewhere while its upstream was not whole in the "
    "cascade and after the cascade's end before the instant (unverified when the run ended before maxRecoveryS "
    "after the cascade had passed); after a service-down or zone-down fault, a pod of a service it took down that is "
    "ready in the zone again and served none of the n hops the pair's callers sent to its pool's k ready pods (the "
    "zone's; an AZ's: every AZ's) from its ready to maxRecoveryS after the restore never came back into service when "
    "(1 - 1/k)^n < 1e-3 (no claim when the zone's next fault or the run's end comes first, or with fewer hops)",
    "resolution_s": "gap between the records bounding the failover/recovery instant: the instant minus the last "
    "failed or misplaced hop before it (or minus the window start); for a recovery whose callers the fault cut off "
    "(entry point, a caller or a service on its call path down in the zone) also the moment the first of the "
    "pair's callers in the zone was ready, and in an edge zone (callers reached only from inside it, unlike an AZ's) "
    "the last user request entering the zone that failed and the last hop from the zone to a service on the way to "
    "the pair's callers that failed or was served elsewhere, at their start; the true value lies in "
    "[value - resolution, value]",
    "lost": "failed requests entering the zone (every zone whose calls reach a faulted Region-only service) and "
    "failed hops of the affected pairs, in flight at or begun after the inject, until the failover "
    "(or the end of the fault window)",
    "availability": "failed / all user requests per fault window [inject, restore + recovery] and in steady state, "
    "excluding requests entering zones whose entry point is down (entry_down faults over their impact window, "
    "until the zone recovered; entrypoints.jsonl only inside the window of a fault of that zone that can take the "
    "entry down: otherwise they count), and those that "
    "got no answer at all (status 0) while a node fault had killed some of the zone's frontends that the entry "
    "point still listed (until each is unready, removed or moved in the inventory); a failed "
    "request is tied to a hop starting at most 1 ms before it (Envoy's start times are whole milliseconds; where the "
    "nodes keep their own clocks and requests are on the runner's, also the zone's clock uncertainty either side) "
    "whose caller is in the request's entry zone, or for a request entering an availability zone in any of them "
    "(Consul CE spreads Region calls over every AZ); "
    "a failed "
    "request of a service-down or zone-down fault's zone during its window with a hop of that zone to a service the "
    "fault took down flagged UO and UC, sent to the instance the fault took down (a kill terminated it in flight "
    "and Envoy's concurrent-retry limit, 3 and not configurable in Consul CE, refused its retry) is reported as "
    "retry_overflow, not counted; a failed request "
    "with a failed hop of a failover pair whose retries were all spent on the zone's own instance (URX), whose "
    "connect failure there had its retry refused by that limit (UO with UF) or that found no host (UH), before the "
    "pair's failover "
    "instant (in flight at the inject or started after it; at most maxFailoverS after the fault took effect, its "
    "effective_at) is reported as "
    "failover_under_way, not counted (the failover's "
    "loss, judged by its time in fallback), and so is one with a failed hop of a Region pair sent to a pod the "
    "fault killed (an AZ's node: Envoy still sent there until the endpoints were withdrawn), in flight at the "
    "inject or started after it, at most maxFailoverS after the fault took effect; a declared "
    "single point of failure's window lasts, per zone users entered, over the cascade that reaches that zone's "
    "users (down intervals that began during it of the zone's own services, the Region's services it calls, the "
    "single point of failure; for an availability zone every AZ's and the Region's) and until each of the zone's "
    "(an AZ's: every AZ's) pairs of its dependants served again after that (measured recovery within "
    "maxRecoveryS: ejections run out); the zone's requests after that are the steady state's; "
    "every window (a declared budget's too) is judged on the shoppers' requests only (endpoint <> 'probe': the "
    "zone probes each need every service of the chain, into the zones the experiments act on, at the rate the "
    "probe budget sets from how busy the machine is), the probes' count said apart; "
    "each window also per zone users entered (by_zone): a zone whose failed requests are beyond what the budget's "
    f"rate leaves to chance at its traffic (binomial upper tail below {ZONE_BUDGET_ALPHA:g}) fails the window though "
    "the rate over every zone is within the budget",
    "coverage": "each fault has user requests (shoppers': the zone probes, which availability leaves out, do not "
    "count) entering its zone (and, for a fault on a Region-only service, every "
    "zone with users whose calls reach it) at an up entry point in flight during [inject, restore] "
    "(unless the fault takes the entry down by design) and after (restore, next fault in the zone / end of run, "
    "at most maxRecoveryS, or the users' quiet bound (users.json's longest think time + a request's timeouts) "
    "when longer; a next fault that began first extends it to that fault's restore, or as far past "
    "it when it took the zone's entry point down]; "
    "a window without them is unverified = fail; so is a zone of the topology no shopper's request entered all "
    "run while other zones' shoppers were recorded (zone probes alone do not count); so are a failed recording "
    "step of the "
    "sidecars' records (recording.jsonl; a flush problem of a pod that died is a note), a sidecar whose "
    "counters grew with no access-log line (unless it died before a flush interval, 1 s, had passed since the first "
    "snapshot or served hop that shows it calling: its lines died unflushed), and one of a service whose upstreams "
    "are all HTTP that served >= 10 "
    "successful hops its log shows no call of its own for (none, or none for 10 s after its last line, or, its log "
    "going on, none during the served hop's lifetime, to Envoy's millisecond stamps, widened by the clock "
    "tolerance only where the nodes keep their own clocks: a gap, except in the last flush interval before a node "
    "fault killed it, which it did after the later of its inject and the pod's last served hop and before its "
    "primitive had acted, its inject counter snapshot); and a zone with >= 10 successful user requests through "
    "/api (GraphQL and zone probes; "
    "GET / and failed requests need no call) during whose lifetime (the request-to-hop slack either side) no entry "
    "pod of the zone (frontend) logged a call while the zone's entry logs go on after them (a gap), or that began "
    "more than 10 s after the zone's entry logs' last line (cut short, or none), except requests overlapping a "
    "fault of the zone that can take its entry down or a node "
    "fault that killed one of its entry pods (from a flush interval before its inject to its restore), the 10 s "
    "before an entry pod's inventory interval ended, and a down entry point; user requests an entry sidecar "
    "logged by their id (X-Request-Id) that no record of requests.jsonl names, begun more than their connect and "
    "answer timeouts (and the zone's clock bound) before the users' last recorded request (with in-zone workers, "
    "also before a fault that took the worker's zone or node down, to its restore): the users' records are "
    "incomplete, what those users met unverified; a fault must show it took effect: no "
    "pod it took "
    "down (node faults: "
    "the pods on its nodes; others: its services' pods in its zone at the inject) serves or makes a successful hop "
    "more than maxFailoverS after its primitive had returned (its inject counter snapshot; none: the inject) and "
    "before the restore (or before it is ready again; a pod made "
    "unready keeps running: only its serving counts), at least one pod is hit, and a partition has a failed hop "
    "out of its zone or connect failures, errors or timeouts towards another zone growing in its sidecars' "
    "counters between its inject and restore snapshots (per Envoy: one restarted between them, a new inventory "
    "interval or a counter gone down, counts from zero), and no successful user request through /api entering it "
    "(which needs the Region's postgres) begun more than maxFailoverS after its primitive had returned (likewise) "
    "and answered before its "
    "restore; a degraded link (its declared latency L > 0) slows the "
    "zone's successful HTTP hops that wait on the link (served outside the zone, or by a service with a Region-only "
    "upstream) lying wholly in it, outside the zone's and the Region's other faults (inject to restore), each "
    "measured against its own kind's median (its upstream, served in the zone or outside it: a hop of 1 + N "
    "queries pays the link N + 1 times, one served by the Region once; a kind with fewer than 5 hops there is "
    "left out) in the 10 minutes before it, to a median excess >= L/2, from when the run settled on (the probe "
    "budget's "
    "decision: its last window's end + 0.25 s; none recorded: the whole 10 minutes), "
    "outside the impact windows of the zone's and the Region's faults, on >= 5 such hops each (no "
    "baseline is not 0 ms), and they are "
    "back after the restore (until maxRecoveryS or the zone's next fault): no pod whose node's link they wait on "
    "(the caller when the hop is served outside the zone, else the serving pod, whose own Region call crosses) "
    "has >= 5 of them with a median excess over the larger of L/2 and half the excess measured during it, and "
    "not one faster than L, which no hop can be while the "
    "latency is on (per pod: kind clears a zone's nodes one by one; a machine busy with the catch-up keeps a "
    "median up, not every hop); when not one of them up to the zone's next fault is faster than L, the rest of "
    "maxRecoveryS after the restore outside the impact windows of those faults decides: >= 5 such hops and one "
    "faster than L, else the recovery is unverified; otherwise the fault is unverified = fail",
    "clock": "a hop's time is Envoy's START_TIME on its caller's node; where the nodes keep their own clocks "
    "(clock.jsonl: EKS seen from a CI runner) it is put on the runner's clock, which stamps faults, inventory "
    "events and user requests, by its caller's zone's offset: probes through each zone's entry point (POST "
    "/api?eh-clock=<id>) sent and answered at runner times [sent, received] and logged by the zone's sidecars at "
    "node time L with duration d give offset in [L + d - received, L + 1 ms - sent], intersected per batch (at "
    "the start and the end "
    "of the run), the hull of both batches bounding the drift; hops are corrected by its middle, and a zone whose "
    f"sidecars made hops with no probe found in a batch, contradicting probes, a clock that moved more than "
    f"{CLOCK_TOLERANCE_S * 1000:g} ms between the batches, or a bound wider than the inventory's "
    f"{CLOCK_CARRY_LIMIT_S:g} s IP slack is unverified = fail (coverage); a narrower bound, however far the runner, "
    "is carried by the rules: a failover or recovery figure is within its SLO only with the zone's bound "
    "added (the truth may lie that much later; within it as measured but not with the bound: that pair is "
    "unverified, naming the bound), the locality windows, the failover's in-flight start, the impact window's "
    "end and the tie and gap slacks are widened by it; without clock.jsonl (local, kind: one clock) nothing is "
    "corrected, "
    "unless run.json says runner_clock separate (EKS): then the record is lost and every hop unverified = fail",
    "unplanned_outage": "a service of the topology with no ready pod in a zone, or too few to keep its traffic "
    "there (spill), outside every recorded fault: a note; lasting longer than maxRecoveryS (or still on at the end "
    "of the run that long after it began) it also fails fallback (an outage nobody injected that did not recover), "
    "and so do two or more of a service in a zone, without ready pod, that cover more than half of some "
    "maxRecoveryS (outages that keep coming back: a crash loop); "
    "one that met recorded faults fails fallback when it lasts longer than maxRecoveryS past their last restore "
    "(a declared single point of failure's cascade: past its return; its edge pairs are judged as recoveries)",
    "no_traffic": "a fault or edge pair without records is a failure (unverified), a Region pair is only reported",
    "shared_services": "hops to Region-only services are served in the Region and routed (a hop without upstream "
    "host fails, except before the first user request (bring-up), during a fault that took the caller's zone or the "
    "service down or while the service had no ready pod, each until maxRecoveryS after it; NR is never excused) "
    "and no pod of one ran outside the Region's zones (in an edge zone or one the topology does not list: "
    "inventory); a TCP pair with no hops is reported, not failed (Envoy logs TCP hops when connections close), "
    "unless no sidecar of the zone has a connection to it in its upstream counters (unverified = fail)",
    "call_graph": "every hop's caller service -> upstream service is declared by the topology (logical names; an "
    "unidentified caller or upstream is unverified = fail), and so is every call a sidecar's upstream counters "
    "show (connections, connect failures or requests to a host grown since its previous snapshot of it, placed by "
    "who held the address then: a pooled TCP connection is logged only when it closes); preflight.json's "
    "intentions checks show Consul denies "
    "every undeclared call (and a refused-probe check where the backend could make one)",
    "config": "every preflight.json check (crd-synced, discovery-chain, instances-passing) passed; no preflight.json "
    "or no check of a kind = unverified = fail",
    "experiment_ran": "the run completed (run.json status complete with `ended`; see partial), and every "
    "experiment in plan.json has a chaostoolkit journal with status completed, the steady "
    "state met before the method, every planned action in run[] with status succeeded, every fault its output "
    "names recorded in chaos.jsonl, every other method activity and every rollback succeeded, and no deviation "
    "(the hypothesis checked and met after the method: a journal without that check after it, when its experiment "
    "has a hypothesis, is unverified); "
    "no plan and no chaos records = nothing planned (pass); chaos records without a plan = unverified = fail",
    "partial": "run.json says the run did not complete (status other than complete, or no `ended`): the verdict "
    "judges what was recorded and fails experiment-ran (what the run did not record is unverified); so does a "
    "run without run.json",
    "skipped_records": "lines of record files that are not JSON objects or lack their time field are skipped and "
    "listed (file, line, reason)",
}

# SQL: a hop of a failover pair whose (last) attempt went to the caller's own zone, i.e. to the instance the
# fault took down: the pair has not failed over yet (see FaultMeasurer._failover). Past the inventory's slack
# after the pod's removal its IP is nobody's (serving_zone NULL): then the IP a gone pod of the zone's upstream
# held says it.
STALE_SQL = (
    "(serving_zone = caller_zone OR (serving_zone IS NULL AND EXISTS (SELECT 1 FROM intervals i "
    f"WHERE i.ip = {host_ip_sql('upstream_host')} AND i.zone = caller_zone AND i.service = upstream "
    "AND i.end_ts IS NOT NULL AND i.end_ts <= ts)))"
)

# SQL: a failed hop of a failover pair that shows it has not (steadily) failed over yet: sent to the zone's own
# dead instance (STALE_SQL), or sent nowhere (no upstream host: UH, NR): the failover chain had no healthy target.
# With the Region target healthy a failed-over pair always has a host; a "no healthy upstream" after the first
# Region success is the mesh flapping back to nowhere (outlier ejection of the Region's hosts, a target that comes
# and goes), and the steady Region service the failover time measures begins only after the last of them.
NO_HOST_SQL = "(coalesce(upstream_host, '') = '')"
# SQL: a hop that names no upstream host and no Envoy response flag saying why. Envoy logs the host of every
# request it sent upstream, and a flag (UH, NR, UF, DC, ...) on every one it could not: a line with neither claims
# an answer from nowhere the log shows. Where it was served, and so locality and hub-and-spoke, is unverified (it
# counted as a failed hop, and a pair of only such hops passed locality with no share at all).
HOSTLESS_SQL = f"({NO_HOST_SQL} AND coalesce(flags, '-') IN ('-', ''))"
FAILOVER_PENDING_SQL = f"({NO_HOST_SQL} OR {STALE_SQL})"
# A recovery (back in-zone, `_measure`'s good instant) is likewise not complete while the pair's hops still find no
# host: the pair is served nowhere, which is not "back where it belongs" (it was measured from the first in-zone
# success and a pair alternating with "no healthy upstream" long after the restore recovered "at once").

# SQL: the hop is served in the caller's local zone (see module docstring).
IN_ZONE_SQL = "(CASE WHEN caller_kind = 'region' THEN serving_kind = 'region' ELSE serving_zone = caller_zone END)"
HUB_VIOLATION_SQL = (
    "(serving_zone IS NOT NULL AND ("
    "(caller_kind <> 'region' AND serving_zone <> caller_zone AND serving_kind <> 'region')"
    " OR (caller_kind = 'region' AND serving_kind <> 'region')))"
)
REQUEST_OK_SQL = "coalesce(ok, status BETWEEN 200 AND 399, false)"
IS_PROBE_SQL = f"coalesce(endpoint = '{PROBE_ENDPOINT}', false)"  # a zone probe's request, not a shopper's


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
class Window:
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
    hi: float | None = None  # where the measurement ended (`CheckBase._measure`): the hops after the instant up to it

    @property
    def resolution(self) -> float | None:
        if self.instant is None:
            return None
        return self.instant - max(self.prev_bad if self.prev_bad is not None else self.lo, self.lo)


def sql_str(s: str) -> str:
    """`s` inside single quotes in DuckDB SQL (names from the topology and the records)."""
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
    """A boolean SQL expression: the row's ts (and zone) falls in one of the windows.

    With `end_sql` (the row's end instant) the row's lifetime [ts, end] need
    only overlap the window: see HOP_END_SQL.

    Written out as literals because a range join of a million rows against a
    handful of windows is far slower in DuckDB than a filter it can evaluate
    during the scan. Values come from the verifier itself (floats and the
    topology's zone names), quoted all the same. A few windows are one OR;
    more (a long run has a fault every few minutes, and these expressions see
    every row) are merged per zone and searched as a binary tree of CASEs, so
    a row costs a few comparisons instead of two per window (`_span_tree`).
    Same value either way, NULLs included.
    """
    if not spans:
        return "false"
    if len(spans) <= SPAN_OR_MAX or any(lo > hi for _z, lo, hi in spans):
        return _spans_or(zone_column, spans, end_sql)
    end = end_sql or "ts"
    merged = merge_intervals([(z if zone_column else "", "", float(lo), float(hi)) for z, lo, hi in spans])
    by_zone: dict[str, list[tuple[float, float]]] = {}
    for z, _u, lo, hi in merged:
        by_zone.setdefault(z, []).append((lo, hi))
    if not zone_column:
        return _span_tree(by_zone[""], end)
    whens = " ".join(f"WHEN '{sql_str(z)}' THEN {_span_tree(w, end)}" for z, w in by_zone.items())
    # a NULL zone: the OR of `zone = z AND ...` is NULL where a window holds the row's time, else false
    anywhere = merge_intervals([("", "", lo, hi) for _z, _u, lo, hi in merged])
    in_any = _span_tree([(lo, hi) for *_x, lo, hi in anywhere], end)
    null_zone = f"(CASE WHEN ts IS NULL OR {in_any} THEN NULL ELSE false END)"
    return f"(CASE WHEN {zone_column} IS NULL THEN {null_zone} ELSE (CASE {zone_column} {whens} ELSE false END) END)"


# up to this many windows, `spans_sql` writes one OR (cheap enough, and readable in a query plan)
SPAN_OR_MAX = 8


def _spans_or(zone_column: str | None, spans: list[tuple[str, float, float]], end_sql: str | None) -> str:
    parts = []
    for zone, lo, hi in spans:
        z = f"{zone_column} = '{sql_str(zone)}' AND " if zone_column else ""
        if end_sql is None:
            parts.append(f"({z}ts BETWEEN {float(lo)!r} AND {float(hi)!r})")
        else:
            parts.append(f"({z}ts <= {float(hi)!r} AND {end_sql} >= {float(lo)!r})")
    return "(" + " OR ".join(parts) + ")"


def _span_tree(windows: list[tuple[float, float]], end: str) -> str:
    """Whether [ts, end] meets one of `windows` (disjoint, sorted): a binary search on `end` as nested CASEs.

    Disjoint and sorted, the windows' ends rise with their starts, so the row
    meets one iff it meets the last window starting at or before its end. DuckDB
    evaluates a CASE branch only on the rows that take it: log2(windows)
    comparisons a row.
    """

    def node(a: int, b: int) -> str:  # the count of windows starting at or before `end` is in [a, b]
        if a == b:
            # before every window: false (NULL for a NULL ts, as the OR's `ts <= hi AND ...` is)
            return "(ts IS NULL AND NULL)" if a == 0 else f"(ts <= {windows[a - 1][1]!r})"
        mid = (a + b + 1) // 2
        return f"(CASE WHEN {end} >= {windows[mid - 1][0]!r} THEN {node(mid, b)} ELSE {node(a, mid - 1)} END)"

    return node(0, len(windows))


def _binomial_log_pmf(n: int, p: float) -> Callable[[int], float]:
    """log P(X = i) for X ~ Binomial(n, p), 0 < p < 1 (lgamma: n of millions stays finite)."""
    lp, lq, head = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    return lambda i: head - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq


def binomial_cdf(x: int, n: int, p: float) -> float:
    """P(X <= x) for X ~ Binomial(n, p), summed in log space (n of a few thousand hops stays exact enough)."""
    if p >= 1.0:
        return 1.0 if x >= n else 0.0
    if p <= 0.0:
        return 1.0
    log_pmf = _binomial_log_pmf(n, p)
    return min(1.0, sum(math.exp(log_pmf(i)) for i in range(max(0, min(x, n)) + 1)))


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed upward from k in log space.

    Summed from the tail, not 1 - binomial_cdf: the chances judged are far
    below 1e-3, where the difference from 1 keeps no digits, and a long run's
    steady state has millions of requests (the terms past the mean fall
    geometrically, so few are summed).
    """
    if k <= 0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_pmf = _binomial_log_pmf(n, p)
    total = 0.0
    for i in range(k, n + 1):
        term = math.exp(log_pmf(i))
        total += term
        if i > n * p and term <= total * 1e-17:
            break
    return min(1.0, total)
