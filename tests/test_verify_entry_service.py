"""The zone's entry is the service users enter through (`harness.topology.ENTRY_SERVICE`), nothing else.

The verifier used to take every edge service that no other service calls as
an entry. A topology with one more such service (a metrics or admin app that
users never reach) then made a fault that killed it look like the zone's
entry going down: the zone's users' requests that got no answer in that
window were put down to the fault (the entry was "down") and its missing
entry lines were excused, so a mesh whose users hung for ten seconds passed.
The renderer, the backends, the chaos actions and the verifier now share one
name, and a topology without that service (or with it in the Region only)
is bad input.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import InputError
from harness.topology import ENTRY_SERVICE, Placement, Service, Topology, dump_topology, load_topology, parse_topology
from harness.topology.yamlload import safe_load
from harness.verify import AVAILABILITY
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.verdicts import verify

T = load_topology()
LAS = "us-west-2-las-1a"


def _with_extra_service(t: Topology) -> Topology:
    """An edge service no one calls and no user reaches, listed before the frontend."""
    extra = Service(name="metrics", placement=Placement.EDGE, port=9200, image="nginx:1.27", upstreams=("product-api",))
    return t.model_copy(update={"services": (extra, *t.services)})


def _data(t: Topology) -> dict[str, object]:
    data = safe_load(dump_topology(t))
    assert isinstance(data, dict)
    return data


def test_an_uncalled_service_users_never_reach_is_not_an_entry() -> None:
    t = parse_topology(_data(_with_extra_service(T)))
    assert t.entry_services == frozenset({ENTRY_SERVICE})


def test_an_entry_point_down_while_a_service_that_is_not_the_entry_is_killed_fails_the_run(tmp_path: Path) -> None:
    """LAS's frontend goes down for 8 s (entrypoints.jsonl says so, its users' requests are refused) while
    'metrics', which no user reaches, is killed there. Nothing explains that outage: availability fails. With
    'metrics' taken for an entry, the kill "could take the entry down" and the refused requests were reported
    apart: PASS."""
    t = parse_topology(_data(_with_extra_service(T)))
    kill = FaultSpec("kill-metrics-las", "service-down", LAS, ("metrics",), inject=30.0, restore=60.0)
    d = write_run(tmp_path / "r", Scenario(t, duration_s=90, rate_per_zone=4, faults=[kill]))
    t0 = Scenario(t).start
    rows = [json.loads(x) for x in (d / "requests.jsonl").read_text().splitlines() if x.strip()]
    for r in rows:
        if r["zone"] == LAS and t0 + 38 <= r["ts"] < t0 + 46:
            r.update(ok=False, status=0, latency_ms=1.0, error="connection refused")
    (d / "requests.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with (d / "entrypoints.jsonl").open("a") as fh:
        for ts, up, reason in ((38, False, "no ready frontend pod"), (46, True, "ready")):
            fh.write(json.dumps({"ts": t0 + ts, "zone": LAS, "url": "u", "up": up, "reason": reason}) + "\n")
    inv = verify(d).invariant(AVAILABILITY)
    assert not inv.passed and LAS in inv.message, inv.message


@pytest.mark.parametrize(
    "change,field",
    [
        (lambda d: d.update(services=[s for s in d["services"] if s["name"] != ENTRY_SERVICE]), "services"),
        (
            lambda d: next(s for s in d["services"] if s["name"] == ENTRY_SERVICE).update(placement="region"),
            "services[0].placement",
        ),
    ],
    ids=["no-frontend", "frontend-in-the-region"],
)
def test_a_topology_users_cannot_enter_every_zone_of_is_bad_input(change: object, field: str) -> None:
    data = _data(T)
    change(data)  # type: ignore[operator]
    with pytest.raises(InputError) as err:
        parse_topology(data, "t.yaml")
    assert err.value.field == field and ENTRY_SERVICE in str(err.value), str(err.value)
