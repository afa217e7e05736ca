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
  log names only the last attempt's host); so does a call an edge zone's
  sidecar logged on its inbound listener from a pod of another zone (the
  line's DOWNSTREAM_REMOTE_ADDRESS is the caller pod's IP: the serving side's
  record of a hop, the one left when the caller's line died in its buffer
  with its counters, `RoutingChecks._arrived_across`); calls arriving at a
  pod the inventory never had (its zone unknown) from a sidecar that died
  within its last flush interval after them are unverified, which fails. A host no inventory record
  explains, or a hop with no host (no healthy one on the route), counts in
  the zone its Envoy cluster is named for (the route).
  No counter snapshots (no `start`/`end` snapshot, or a sidecar that made
  hops and was up at the end missing from `end`) leave attempts
  unverified, which fails.
- Fallback, per service-down fault of (Z, S) and pair (Z, S) for callers of S
  in Z that are not themselves down: the failover window runs from the inject
  to the restore or to the instant S is up again in Z (inventory readiness),
  whichever is first (exclusive); failover instant F = the first successful
  Region-served hop after the last successful hop served outside the Region,
  the last failed hop sent to the zone's own (dead) instance and the last
  failed hop that found no upstream host (UH, NR: the chain had no healthy
  target; a pair flapping to it has not failed over steadily);
  `failover_s` = F - inject (F - the callers' return, when all of them were
  down at the inject by another fault of the zone and called nothing
  meanwhile; none back before the window ends: no failover to measure). Recovery, for every pair the fault touched whose
  upstream is edge-placed: R = the first successful hop served where it
  belongs (in-zone, or the Region for Region callers) after the last
  successful hop served elsewhere and the last failed hop that found no
  upstream host, within [restore, next fault in the zone or end of run];
  `recovery_s` = R - restore (R - the instant the inventory shows the
  upstream ready again in the zone, and the window from it, when that came
  before the restore's record: `FaultMeasurer._back_at`; R - the callers'
  return, and the window from it, when another fault of the zone had taken
  all of them down before this one and kept them down past that, and they
  called nothing meanwhile: `FaultMeasurer._callers_back`). No hop at all for the pair during
  the fault (or after the restore) is a failure (unverified); a fault without
  a restore record never recovers. Every service a node fault killed a pod
  of must recover, also one its zone kept an instance of (spilling
  meanwhile). A pair that spilled a share p of its hops while its upstream
  was not whole has recovered only when its n good hops after R make
  (1 - p)^n < 1e-3: a mesh that never stopped spilling has a "last
  misplaced" hop just before the run ends. A declared single point of
  failure's cascade (dependants down in every zone): a zone still without a
  dependant more than maxFailoverS after the Region has it ready again must
  fail over to the Region, one without it more than maxRecoveryS fails, and
  every edge pair depending on it must be back in-zone within maxRecoveryS
  after the cascade, with traffic to show it, up to its zone's next fault
  (one that measures the pair's recovery after its own restore is left it),
  measured and shown as any recovery (the last hop that found no host, the
  (1 - p)^n < 1e-3 rule against its share sent elsewhere in and after the
  cascade: `FaultMeasurer._unshown`).
  A service without (enough) ready pods in a zone outside every recorded
  fault is a note, and fails fallback when it
  lasts longer than `maxRecoveryS` (an outage nobody injected that did not
  recover); one that met recorded faults fails it when it lasts longer than
  `maxRecoveryS` past their last restore (not back after the fault).
- Resolution of F (or R): F minus the last record of the pair before F that
  was not good (failed, or served in the wrong place), or minus the window's
  start when there was none: the true instant lies in [F - resolution, F].
  A recovery pair whose callers the fault cut off (the zone's entry point, a
  caller or a service on a call path from the entry to it was down) has no
  hops while cut off; the last user request entering the zone before R that
  failed, and the last hop from the zone to a service on the way to its
  callers that failed or was served elsewhere, bound R too (at their start).
  F (R) breaches maxFailoverS (maxRecoveryS) only when F - resolution does:
  a hop then shows the pair not yet failed over (back); judged at F, the
  verdict followed the request rate. Where the nodes keep their own clocks,
  F (R) is within its SLO only with its zone's clock bound added: the hops
  were put on the runner's clock, which stamped the fault, to within it.
  A recovery not shown before the zone's
  next fault, which began within maxRecoveryS and asks the pair's recovery
  after its own restore (it takes the pair's upstream or the zone down, or
  degrades its link), is left to that fault; one whose callers that fault
  took down is measured after that fault's restore, by the same rules (the
  callers' next hops are the pair's next record; never restored: unverified).
  A recovery not shown when the run ended before maxRecoveryS after the
  restore had passed is unverified (fails), not "never recovers".
  After a service-down or zone-down fault, each pod of a service it took
  down that is ready in the zone again must be back in service within
  maxRecoveryS of the restore: one that served none of the n hops the
  pair's callers sent to its pool's k pods (the zone's; for an AZ every
  AZ's, which CE spreads Region calls over) from its ready to maxRecoveryS
  after the restore fails when (1 - 1/k)^n < 1e-3
  (`FaultMeasurer._pods_left_out`; no claim when the zone's next fault or
  the run's end comes first): judged by where the hops went alone, an AZ's
  replacement no caller ever called recovered at once (its peer in the
  other AZ is "the Region").
- Shared services: hops to Region-placed upstreams must be served in an
  availability zone (zero tolerance; unattributed hosts count as violations)
  and must be routed: a hop that found no upstream host (NR, UH ...) fails,
  except before the first user request (bring-up: the mesh converges before
  traffic starts), during a fault that took the caller's zone down or cut it
  off or the service itself, or while the service had no ready pod, each until
  `maxRecoveryS` after it (NR, no route, is never excused).
- Call graph: every hop's (caller service -> upstream service) is an edge the
  topology declares (logical names); a hop whose caller or upstream cannot be
  identified is unverified and fails; so does a call on an undeclared edge
  that only a sidecar's upstream counters show (a pooled TCP connection is
  logged when it closes: counters grown since the previous snapshot, the host
  placed by who held its address then). Consul's intentions must deny every
  undeclared call (preflight.json `intentions` checks, plus `refused-probe`
  where the backend can make one).
- Availability: per fault, failed user requests / user requests during
  [inject, restore + recovery] <= `errorBudget`, and the same over the steady
  state, and per zone users entered: a zone whose failed requests are beyond
  what the budget's rate leaves to chance at its traffic (binomial, below
  `ZONE_BUDGET_ALPHA`) fails the window though the rate over every zone is
  within it. Requests entering a zone whose entry point was down (a fault with
  `entry_down`, over its impact window: until its zone recovered, which
  fallback judges against maxRecoveryS; or entrypoints.jsonl within the
  window of a fault of that zone that can take the entry down) are excluded
  and reported; otherwise they count.
  A failed request is tied to a failover under way or a retry overflow by a
  marked hop within its lifetime whose caller is in the request's entry zone,
  or, for a request entering an AZ, in any AZ (Consul CE spreads Region calls
  over every AZ). A declared single point of failure's budget covers each
  zone's users over the cascade that reaches them (the zone's own services,
  the Region's it calls, the single point of failure; an AZ's: the whole
  Region) and the zone's own recovery after it, not until the last zone's
  (`UserChecks._impact_end_for_users`); later, they are the steady state's.
  A window without requests fails ("no traffic").
- Coverage, per fault and affected zone (its own; for a fault on a Region-only
  service also every zone with users whose calls reach it): user requests
  (shoppers': zone probes, left out of availability, do not count)
  entering the zone at an entry point that was up, in flight DURING
  [inject, restore] (not asked of a fault that takes the zone's entry down
  by design) and begun AFTER (restore, next fault
  in the zone / end of run, at most `maxRecoveryS`]. A window without them is
  unverified and fails.
- Lost requests / hops of a fault: failed requests entering the fault's zone
  (and every zone whose calls reach a faulted Region-only service), and
  failed hops of its affected pairs, in flight at the inject or begun after
  it, until F (service-down with mesh callers) or the end of the fault's
  window (other faults, or when F never came).
- Pairs without any traffic fail, an edge zone's ("no traffic": the run did
  not exercise the edge) and a Region caller's alike (then "none from the
  Region to an edge zone" went unexercised: unverified, so it fails; it was
  reported as "no-traffic" and passed).
- A hop that names no upstream host and no Envoy response flag saying why
  (`HOSTLESS_SQL`) fails locality for its pair and hub-and-spoke: Envoy logs
  a host for every request it sent and a flag for every one it could not, so
  where such a hop was served is unverified. Lines the loader could not read
  (an access log's, upstream-stats.jsonl's, requests.jsonl's, or a compacted
  Parquet segment listed but gone) fail the invariants they fed.
- An edge pair still served elsewhere maxRecoveryS (counted in time the
  upstream was whole) after an outage no recorded fault explains fails
  fallback (`FaultMeasurer._readiness_exclusions`).

Modules: `sql` (definitions, SQL fragments, interval helpers), `scope` (what each
fault asks of which pairs: the verdict's and e2e's cool-down's), `base` (the
loaded run and shared queries), `faults` (one scope per fault kind and the
measurements they share), `routing` (locality, hub-and-spoke, shared
services, call graph), `users` (availability, coverage), `checker`
(`Checker.verdict()`).
"""

from harness.verify.invariants.checker import Checker
from harness.verify.invariants.faults import FaultMeasurements
from harness.verify.invariants.scope import SCOPES, FaultScope
from harness.verify.invariants.sql import (
    DEFINITIONS,
    HUB_VIOLATION_SQL,
    IN_ZONE_SQL,
    REQUEST_OK_SQL,
    merge_intervals,
    spans_sql,
)

__all__ = [
    "DEFINITIONS",
    "HUB_VIOLATION_SQL",
    "IN_ZONE_SQL",
    "REQUEST_OK_SQL",
    "SCOPES",
    "Checker",
    "FaultMeasurements",
    "FaultScope",
    "merge_intervals",
    "spans_sql",
]
