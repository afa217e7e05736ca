"""Consul Enterprise paths no test ran: the chains the models name (`RenderedChains`) and the verdict's reading of
an Enterprise cluster name.

Every shipped topology is CE and the local emulation compiles CE only, so the Enterprise (namespaced) branch of
`harness.render.consul.RenderedChains` and the verifier's reading of a namespaced cluster ran in no test. Consul
Enterprise keeps each service's plain name in every zone and tells the zones apart by the mirrored namespace: a
target's cluster is its SNI, `<service>.<namespace>.<dc>.internal.<trust domain>` in the default partition
(consul `agent/connect/sni.go` ServiceSNI), so the zone a route goes to is in the SNI's second label, not its first.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.contract import names
from harness.render.consul import RenderedChains
from harness.render.naming import workloads
from harness.topology import Edition, Topology, load_topology
from harness.verify import HUB_AND_SPOKE
from harness.verify.synth import TRUST_DOMAIN, Scenario, write_run
from tests.conftest import REPO
from tests.test_verify_audit import why
from tests.test_verify_audit14 import KILL, LAS, LAX, _lax_calls_las
from tests.verdicts import verify

TOPOLOGIES = ["topology.yaml", "topology-wide.yaml", "topology-eu.yaml"]
T = load_topology(REPO / "fixtures" / "topology.yaml")


def _enterprise(t: Topology) -> Topology:
    return t.model_copy(update={"edition": Edition.ENTERPRISE})


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_enterprise_chains_stay_in_the_callers_namespace_or_fail_over_to_the_regions(name: str) -> None:
    """Every chain of every shipped topology rendered for Enterprise, as the models name it: an edge zone's
    caller resolves an edge-placed upstream in its own zone's namespace first and fails over to the Region
    namespace (the rendered ServiceResolver's `targets: [{service, namespace}]`); a Region-only upstream is
    redirected to the Region namespace from every edge namespace; a Region caller stays in the Region. No chain
    names another edge zone's namespace (hub-and-spoke). Each target's cluster is its SNI with the namespace
    (ServiceSNI), and the chain is customized exactly when the CE chain of the same call is: the editions differ
    in naming, never in how a chain is shaped."""
    t = _enterprise(load_topology(REPO / "fixtures" / name))
    ent = RenderedChains(t, Edition.ENTERPRISE, TRUST_DOMAIN)
    ce = RenderedChains(t, Edition.CE, TRUST_DOMAIN)
    region = names.REGION_NAMESPACE
    seen = 0
    for w in workloads(t, Edition.ENTERPRISE):
        for up_name in w.service.upstreams:
            up = t.service(up_name)
            got = ent.chain(w.service.name, w.zone.name, up_name)
            own = names.namespace(t, w.zone)
            if w.zone.is_edge and up.placement.value == "edge":
                want = ((up_name, own), (up_name, region))
            else:
                want = ((up_name, region),)
            assert got.targets == want, (w.zone.name, w.service.name, up_name)
            sni = f"{up_name}.{want[0][1]}.dc1.internal.{TRUST_DOMAIN}"
            assert got.route.split("~")[-1] == sni, got.route
            assert all(c.endswith(f"~{sni}") or c == sni for c in got.children), got.children
            plain = ce.chain(w.service.name, w.zone.name, up_name)
            assert (len(got.children), got.customized, got.connect_timeout_s) == (
                len(plain.children),
                plain.customized,
                plain.connect_timeout_s,
            ), (w.zone.name, w.service.name, up_name)
            seen += 1
    assert seen > 10


def _enterprise_kill_run(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run", Scenario(_enterprise(T), faults=[KILL], duration_s=120, rate_per_zone=12))


def test_an_enterprise_route_to_another_local_zones_namespace_that_found_no_host_fails_hub_and_spoke(
    tmp_path: Path,
) -> None:
    """Enterprise: a ServiceResolver sends LAX's product-api to LAS's namespace, where Envoy finds no healthy
    host: `503 UH`, no upstream host, the cluster `product-api.hashicups-las-1a...`. HOLE: the verdict read the
    zone of such a route off the cluster's first label, the Consul service, and knew only the zones CE's names
    stand for (`product-api-las-1a`); Enterprise's `product-api` is every zone's, so the route across the hub was
    neither placed nor unverified, and the run passed (the CE form of the same route fails:
    test_verify_audit14 `no-host`). The zone is now read off the service and its namespace together."""
    route = f"product-api.{names.namespace(T, T.zone(LAS))}.dc1.internal.{TRUST_DOMAIN}"
    d = _lax_calls_las(_enterprise_kill_run(tmp_path), 15.0, "no-host", route)
    v = verify(d)
    hub = v.invariant(HUB_AND_SPOKE)
    assert not v.passed and not hub.passed, why(v)
    assert f"hub-and-spoke: {LAX} -> {LAS}: 1 hops to product-api" in hub.message, hub.message


@pytest.mark.parametrize("where", ["none", "region", "own"])
def test_an_enterprise_run_without_a_cross_zone_route_passes(tmp_path: Path, where: str) -> None:
    """Controls: the same Enterprise run passes as it is, and with the same call on a route that found no host in
    the Region's namespace (its failover target during the kill) or in LAX's own: neither crosses the hub."""
    d = _enterprise_kill_run(tmp_path)
    if where != "none":
        ns = names.REGION_NAMESPACE if where == "region" else names.namespace(T, T.zone(LAX))
        d = _lax_calls_las(d, 15.0, "no-host", f"product-api.{ns}.dc1.internal.{TRUST_DOMAIN}")
    v = verify(d)
    assert v.invariant(HUB_AND_SPOKE).passed, why(v)
    if where == "none":
        assert v.passed, why(v)
