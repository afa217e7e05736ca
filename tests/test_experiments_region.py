"""The Region and Wavelength experiments resolve on every shipped topology, to the zones they mean.

The database experiments follow the primary ("the AZ of postgres": where the
renderer placed it), the AZ node loss takes the other AZ ("an AZ without
postgres": the Region carries on from the primary's), the Wavelength outage a
Wavelength Zone, and the burst every edge zone. Their `expected_errors`
declarations are checked before anything starts.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from harness.backends.base import CHAOS_PRIMITIVES
from harness.chaos import actions, plan_run
from harness.chaos.experiment import plan_experiment
from harness.chaos.roles import RoleError, resolve_values
from harness.errors import BackendError, InputError
from harness.render.naming import region_service_zones
from harness.topology import load_topology
from tests.test_chaos import LAX, FakeBackend
from tests.test_chaos import fake as fake  # the protocol fake's fixture, shared

REPO = Path(__file__).resolve().parents[1]
TOPOLOGIES = [REPO / "fixtures" / f for f in ("topology.yaml", "topology-wide.yaml", "topology-eu.yaml")]
NEW = ["az-primary-loss", "az-node-loss", "postgres-primary-kill", "wavelength-outage", "edge-pod-burst"]


def _planned(topo: Path) -> dict[str, Any]:
    t = load_topology(topo)
    return {p.file.stem: p for p in plan_run([REPO / "experiments" / f"{n}.json" for n in NEW], t, CHAOS_PRIMITIVES)}


@pytest.mark.parametrize("topo", TOPOLOGIES, ids=[t.stem for t in TOPOLOGIES])
def test_new_experiments_resolve_to_the_zones_they_mean(topo: Path) -> None:
    t = load_topology(topo)
    planned = _planned(topo)
    primary_az = [z.name for z in region_service_zones(t.service("postgres"), t)]
    replica_az = [z.name for z in region_service_zones(t.service("postgres-replica"), t)]
    assert len(primary_az) == 1 and replica_az and primary_az[0] not in replica_az
    assert planned["az-primary-loss"].roles == {"db_zone": primary_az[0]}
    assert planned["postgres-primary-kill"].roles == {"db_zone": primary_az[0]}
    other = planned["az-node-loss"].roles["zone"]
    assert not t.zone(other).is_edge and other != primary_az[0]  # the Region carries on from the primary's AZ
    wz = planned["wavelength-outage"].roles["zone"]
    assert t.zone(wz).type.value == "wavelength-zone"
    assert planned["edge-pod-burst"].roles == {"zones": [z.name for z in t.edge_zones]}
    burst = planned["edge-pod-burst"].data["method"][0]["provider"]
    assert burst["func"] == "kill_pod_burst" and burst["arguments"]["count"] == 20
    for name in ("az-primary-loss", "postgres-primary-kill"):  # declared, and only where the design says so
        args = planned[name].data["method"][0]["provider"]["arguments"]
        assert args["expected_errors"]["singlePointOfFailure"] == "postgres"
        assert 0 < args["expected_errors"]["errorBudget"] < 1  # a budget that can be exceeded
    for name in ("az-node-loss", "wavelength-outage", "edge-pod-burst"):
        assert "expected_errors" not in json.dumps(planned[name].data["method"])


def test_az_roles_by_service_placement() -> None:
    t = load_topology(TOPOLOGIES[0])
    got = resolve_values(["the AZ of postgres", "an AZ without postgres", "an AZ with postgres-replica"], t)
    assert got == {"the AZ of postgres": "us-west-2a", "an AZ without postgres": "us-west-2b",
                   "an AZ with postgres-replica": "us-west-2b"}  # fmt: skip
    with pytest.raises(RoleError, match="the topology has no service 'mysql'"):
        resolve_values(["the AZ of mysql"], t)
    with pytest.raises(RoleError, match="every AZ of the topology has postgres"):
        resolve_values(["an AZ without postgres", "another AZ without postgres"], t)


def test_a_bad_declaration_is_refused_with_its_field(tmp_path: Path) -> None:
    data = json.loads((REPO / "experiments" / "az-primary-loss.json").read_text())
    data["method"][0]["provider"]["arguments"]["expected_errors"]["errorBudget"] = 2
    f = tmp_path / "e.json"
    f.write_text(json.dumps(data))
    with pytest.raises(InputError) as exc:
        plan_experiment(f, load_topology(TOPOLOGIES[0]))
    field = "method[0].provider.arguments.expected_errors"
    assert str(exc.value) == f"{f}: {field}: errorBudget: a share of user requests between 0 and 1, got 2"


# -- the actions behind them, on the protocol fake of tests/test_chaos.py ---------------------------
def _timeline(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "chaos.jsonl").read_text().splitlines()]


def test_burst_kills_are_separate_faults_never_overlapping_in_a_zone(fake: FakeBackend, tmp_path: Path) -> None:
    out = actions.kill_pod_burst([LAX], "product-api", count=3, interval_s=0.0, settle_s=0.2)
    lines = _timeline(tmp_path)
    assert out["kills"] == 3 and [x["phase"] for x in lines].count("inject") == 3
    faults: dict[str, dict[str, float]] = {}
    for x in lines:
        faults.setdefault(x["fault"], {})[x["phase"]] = x["ts"]
    spans = sorted((f["inject"], f["restore"]) for f in faults.values())
    assert len(spans) == 3 and all(lo < hi for lo, hi in spans)
    for (_, restore), (nxt, _) in itertools.pairwise(spans):
        assert nxt >= restore + 0.2  # the zone's next kill waits for its replacement and the settle time
    alive = next(p.pod for p in fake.inv.pods(alive_only=True) if p.service == "product-api")
    assert spans[-1][1] == fake.inv.ready_since(alive)  # a restore is its replacement's `ready` event
    assert [c[0] for c in fake.calls] == ["kill_pod"] * 3


def test_burst_refuses_nonsense_counts(fake: FakeBackend) -> None:
    with pytest.raises(BackendError, match="count >= 1"):
        actions.kill_pod_burst([LAX], "product-api", count=0)


def test_node_of_a_service_and_the_declaration_reach_the_timeline(fake: FakeBackend, tmp_path: Path) -> None:
    decl = {"singlePointOfFailure": "product-api", "errorBudget": 0.5, "why": "test"}
    out = actions.kill_node(LAX, service="product-api", duration_s=0.05, expected_errors=decl)
    inject = _timeline(tmp_path)[0]
    assert out["node"] == "lax-1a-n1"
    assert inject["expected_error_budget"] == 0.5 and inject["single_point_of_failure"] == ["product-api"]
    assert inject["expected_why"] == "test"
    with pytest.raises(BackendError, match=r"no node of .* runs a public-api pod"):
        actions.kill_node(LAX, service="public-api", duration_s=0)
    with pytest.raises(BackendError, match="expected_errors: errorBudget"):
        actions.kill_pod(LAX, "product-api", expected_errors={"singlePointOfFailure": "x", "errorBudget": -1})
