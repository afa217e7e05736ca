"""A Region-only HTTP service that a zone's callers never reached is unverified, where a TCP one may be silent.

Envoy logs an HTTP call per request, so a zone whose public-api declares a
Region-only HTTP upstream and made no hop to it in a whole run either never
called it or called it around the mesh: shared-services cannot say it was
served in the Region, and fails. (Pooled TCP, postgres, is logged when a
connection closes: its silence is judged by the sidecars' counters instead.)
The branch no test ran; the rest of the run is whole, so nothing else fails.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.topology import Placement, Service, Topology, load_topology
from harness.verify import SHARED_SERVICES
from harness.verify.synth import Scenario, write_run
from tests.test_verify_soundness import failed
from tests.verdicts import verify

LAX = "us-west-2-lax-1a"


def _with_region_http() -> Topology:
    t = load_topology()
    inventory = Service(name="inventory", placement=Placement.REGION, port=9400, image="example/inventory:1")
    services = [s.model_copy(update={"upstreams": (*s.upstreams, "inventory")}) if s.name == "public-api" else s
                for s in t.services]  # fmt: skip
    return t.model_copy(update={"services": (*services, inventory)})


def test_a_zone_that_never_reached_a_region_only_http_service_fails_shared_services(tmp_path: Path) -> None:
    d = write_run(tmp_path / "r", Scenario(_with_region_http(), duration_s=60, rate_per_zone=4, accesslogs="none"))
    assert verify(d).passed  # every zone's public-api called inventory, served in the Region
    hops = d / "hops.jsonl"
    rows = [json.loads(x) for x in hops.read_text().splitlines()]
    kept = [r for r in rows if not (r["upstream"] == "inventory" and r["caller_zone"] == LAX)]
    assert len(kept) < len(rows)
    hops.write_text("".join(json.dumps(r) + "\n" for r in kept))
    v = verify(d)
    assert failed(v) == {SHARED_SERVICES}, [i.message for i in v.invariants if not i.passed]
    assert f"shared-services: {LAX} -> inventory: no traffic (unverified)" in v.invariant(SHARED_SERVICES).message
