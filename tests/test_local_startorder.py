"""The local cluster creates the call graph's upstreams first (harness.backends.local.startorder)."""

from __future__ import annotations

from pathlib import Path

from harness.backends.local.cluster import validate
from harness.backends.local.startorder import start_order
from harness.render import render, write
from harness.render.manifests import load
from harness.topology import load_topology

REPO = Path(__file__).resolve().parents[1]


def test_upstreams_are_created_before_their_callers_in_every_zone(tmp_path: Path) -> None:
    write(render(load_topology(REPO / "fixtures" / "topology-wide.yaml")), tmp_path)
    spec, _ = validate(load(tmp_path))
    order = [d.app for d in start_order(spec.deployments)]
    assert sorted(order) == sorted(d.app for d in spec.deployments)  # every Deployment, once
    rank = {"postgres": 0, "postgres-replica": 1, "product-api": 1, "public-api": 2, "frontend": 3}
    assert [rank[a] for a in order] == sorted(rank[a] for a in order)
    # ties keep the manifests' order
    fronts = [d.where for d in spec.deployments if d.app == "frontend"]
    assert [d.where for d in start_order(spec.deployments) if d.app == "frontend"] == fronts
