"""Faults with declared expected errors: a single point of failure judged against its own budget.

An experiment may declare that a fault hits a single point of failure of the
design (the Region database's primary: nothing promotes the replica) and how
many user requests it may fail (harness/chaos/expected.py; chaos.jsonl
`expected_error_budget`, `single_point_of_failure`, `expected_why`). The
verifier then:

- judges that fault's availability window against the declared budget
  instead of the SLO's `errorBudget`, and fails it beyond the budget like any
  other window: declared is not the same as unlimited;
- extends the window over the cascade, per zone users entered: every
  (zone, service) that went down while the fault was on (product-api's
  readiness follows its database, in every zone) and reaches the zone's users
  (`zone_keys`), until it was up again and the zone's pairs served again, so
  errors the single point of failure explains are not charged to the steady
  state, and errors it does not explain (after the zone was whole again,
  however late another zone's cascade ran) still are;
- measures no failover for the declared service (it has nowhere to fail over
  to: that is what "single point of failure" means) and says so;
- does not judge locality for the services that depend on it (product-api,
  public-api, frontend: they answer errors everywhere and Envoy's outlier
  detection sends their callers anywhere) from the inject until they are back
  in-zone after the cascade (measured, or `maxRecoveryS`);
- states the single point of failure and its errors against the budget in
  the fault's result (`expected`) and in the run's notes, pass or fail:
  never hidden.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from typing import Any

from harness.topology import Topology
from harness.verify.rundata import Fault, RunData


def declared(f: Fault) -> bool:
    return f.expected_budget is not None


def impact_end(run: RunData, f: Fault, hi: float, keys: Container[tuple[str, str]] | None = None) -> float:
    """The end of a declared fault's impact window: `hi`, or later while its cascade lasts.

    The cascade is every down interval (inventory readiness, any zone) of a
    service the fault's cascade can reach users through (`cascade_services`)
    that began between the inject and the restore; one that never ended keeps
    the window open to the end of the run. With `keys`, only the
    intervals of those readiness keys (`zone_keys`: one zone's users' cascade).
    """
    if not declared(f):
        return hi
    restore = f.restore if f.restore is not None else float("inf")
    cascade = cascade_services(run.topology, f.spof)
    end = hi
    for key, intervals in run.down.items():
        if key[1] not in cascade or (keys is not None and key not in keys):
            continue
        for lo, up in intervals:
            if f.inject <= lo <= restore:
                end = max(end, up if up is not None else max(run.end or hi, hi))
    return end


def zone_keys(run: RunData, f: Fault, zone: str) -> set[tuple[str, str]]:
    """The readiness keys (`RunData.down`) whose cascade reaches the users entering `zone`.

    Its own services (`RunData.up_key`: the zone's, the Region's for
    Region-placed ones), the declared single point of failure's wherever it
    is, and for an availability zone every AZ's and the Region's (Consul CE
    spreads Region calls over every AZ: a user entering one is served by
    another's pods). Not another Local Zone's: hub-and-spoke, its cascade is
    not this zone's users' (a zone back with the Region had its own failures
    judged at the declared budget while another zone's cascade ran late).
    """
    t = run.topology
    region = {z.name for z in t.region_zones}
    in_region = zone in region
    region.add(t.region)
    own = {run.up_key(zone, s.name) for s in t.services}
    return own | {key for key in run.down if key[1] in f.spof or (in_region and key[0] in region)}


def _closure(start: Iterable[str], links: Mapping[str, Iterable[str]]) -> set[str]:
    """`start` and everything `links` leads to from it, transitively."""
    out, todo = set(start), list(start)
    while todo:
        for n in links.get(todo.pop(), ()):
            if n not in out:
                out.add(n)
                todo.append(n)
    return out


def dependants(t: Topology, spof: tuple[str, ...]) -> set[str]:
    """The declared services and every service whose calls reach them (transitively, by the call graph)."""
    callers: dict[str, list[str]] = {}
    for s in t.services:
        for u in s.upstreams:
            callers.setdefault(u, []).append(s.name)
    return _closure(spof, callers)


def users_reach(t: Topology) -> set[str]:
    """The services user requests reach: the entry services and every service their calls reach (call graph)."""
    return _closure(t.entry_services, {s.name: s.upstreams for s in t.services})


def cascade_services(t: Topology, spof: tuple[str, ...]) -> set[str]:
    """The services whose outage during a declared fault is its cascade: the declared ones, and the dependants
    (`dependants`) that user requests reach (`users_reach`).

    A dependant no user request reaches (postgres-replica streams from the primary, and nobody calls it) explains
    no user's failed request and no caller's stay in the Region. Counted as cascade, its outage that began during
    a postgres kill held every zone's declared window open (at the declared 99 % budget) and the cascade's
    recovery deadline back until it was Ready again: a zone failing 1 in 4 of its users for 50 s after the
    database was back, or staying on the Region 74 s after the cascade, passed.
    """
    return set(spof) | (dependants(t, spof) & users_reach(t))


def budget(f: Fault, slo_budget: float) -> float:
    return f.expected_budget if f.expected_budget is not None else slo_budget


def no_failover(f: Fault, upstream: str) -> bool:
    """A declared single point of failure has no failover to measure."""
    return upstream in f.spof


def statement(f: Fault, requests: int, failed: int) -> dict[str, Any]:
    """The verdict's `expected` block of a fault: what was declared and how the errors compare."""
    assert f.expected_budget is not None
    rate = failed / requests if requests else None
    return {
        "singlePointOfFailure": list(f.spof),
        "errorBudget": f.expected_budget,
        "why": f.expected_why,
        "requests": requests,
        "failed": failed,
        "errorRate": rate,
        "withinBudget": rate is not None and rate <= f.expected_budget,
    }


def note(f: Fault, block: dict[str, Any]) -> str:
    """One line for the run's notes (and the terminal): the single point of failure and its cost."""
    rate = block["errorRate"]
    share = (
        "no user requests"
        if rate is None
        else f"{block['failed']}/{block['requests']} user requests failed ({rate * 100:.1f}%)"
    )
    verdict = "within" if block["withinBudget"] else "BEYOND"
    why = f": {f.expected_why}" if f.expected_why else ""
    return (
        f"fault {f.fault}: single point of failure {', '.join(f.spof)} (declared){why}; {share}, "
        f"{verdict} the declared {block['errorBudget'] * 100:g}% budget"
    )
