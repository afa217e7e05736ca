"""`harness.testing`: the in-memory backend users test their own code against.

It is only as good as its likeness: its pods are where the renderer puts
them, its routing is what the verifier expects of Consul CE, and its records
go through observe and the verifier unchanged -- including a misroute, which
the verifier must catch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import harness.testing
from harness.backends.base import CHAOS_PRIMITIVES, Backend
from harness.errors import BackendError
from harness.observe import AccessLogCollector, build_hops
from harness.render.naming import workloads
from harness.testing import FakeBackend, ManualClock
from harness.topology import load_topology
from harness.verify import verify
from tests.conftest import FIXTURES

LAX, LAS = "us-west-2-lax-1a", "us-west-2-las-1a"
AZS = {"us-west-2a", "us-west-2b"}


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend(FIXTURES / "topology.yaml", clock=ManualClock())


def _unready_window(fake: FakeBackend) -> None:
    """A second of traffic before, during and after LAX's product-api is unready (one fault window)."""
    fake.traffic(seconds=1.0)
    fake.set_pod_unready(LAX, "product-api")
    fake.traffic(seconds=1.0)
    fake.set_pod_ready(LAX, "product-api")
    fake.traffic(seconds=1.0)


def _hops(run: Path) -> list[dict[str, object]]:
    build_hops(run)
    return [json.loads(x) for x in (run / "hops.jsonl").read_text().splitlines()]


def test_exports_and_protocol() -> None:
    assert set(harness.testing.__all__) == {"FakeBackend", "FakeRequest", "ManualClock", "MemoryLogSource"}
    assert isinstance(FakeBackend(clock=ManualClock()), Backend)  # every abstract method is implemented


def test_pods_are_where_the_renderer_puts_them(fake: FakeBackend) -> None:
    t = load_topology(FIXTURES / "topology.yaml")
    placed = workloads(t, t.edition)
    want = sorted((w.zone.name, w.service.name, w.consul_name) for w in placed for _ in range(w.replicas))
    got = sorted((p.zone, p.service, p.consul_service) for p in fake.inventory().pods(alive_only=True))
    assert got == want
    assert all(p.node in fake.nodes() and fake.nodes()[p.node] == p.zone for p in fake.inventory().pods())
    assert len({p.ip for p in fake.inventory().pods()}) == len(fake.inventory().pods())


def test_healthy_mesh_serves_in_zone_and_passes_locality(fake: FakeBackend, tmp_path: Path) -> None:
    reqs = fake.traffic(seconds=1.0)
    assert reqs and all(r.ok for r in reqs)
    run = fake.write_run(tmp_path / "run")
    for h in _hops(run):
        if h["upstream"] == "postgres":  # Region-only: served in the Region from everywhere
            assert h["serving_zone"] in AZS
        else:
            assert h["serving_zone"] == h["caller_zone"]
    verdict = verify(run)
    assert verdict.invariant("locality").passed and verdict.invariant("shared-services").passed
    # the fake writes no preflight or counters: the verdict says so instead of passing (unverified is a failure)
    assert not verdict.passed and "preflight" in verdict.invariant("config").message


def test_unready_zone_fails_over_to_the_region_never_another_local_zone(fake: FakeBackend, tmp_path: Path) -> None:
    assert fake.set_pod_unready(LAX, "product-api")
    assert not fake.inventory().ready_pods() or all(
        p.zone != LAX or p.service != "product-api" for p in fake.inventory().ready_pods()
    )
    reqs = fake.traffic(seconds=0.5, zones=[LAX])
    assert all(r.ok for r in reqs)
    hops = _hops(fake.write_run(tmp_path / "run"))
    served = {h["serving_zone"] for h in hops if h["upstream"] == "product-api"}
    assert served and served <= AZS
    # as Envoy logs a failover chain: the aggregate cluster, named as the primary, whichever child served; hash-
    # prefixed as Consul names the rendered chains (the callers' 2 s differ from the Region target's 5 s)
    primary = re.compile(r"[0-9a-f]{8}~product-api-lax-1a\.")
    clusters = {h["upstream_cluster"] for h in hops if h["upstream"] == "product-api"}
    assert clusters and all(primary.match(str(c)) for c in clusters), clusters
    fake.set_pod_ready(LAX, "product-api")
    back = fake.request(LAX)
    assert any(primary.match(str(h["upstream_cluster"])) for h in back.hops)


def test_partition_cuts_region_only_upstreams(fake: FakeBackend) -> None:
    fake.partition_zone(LAX)
    req = fake.request(LAX)
    assert req.status == 502
    last = req.hops[-1]
    assert last["path"] == "/postgres" and last["response_flags"] == "UF" and last["upstream_host"] is None
    fake.heal_zone(LAX)
    assert fake.request(LAX).ok


def test_kill_pod_replaces_with_new_ips_and_history(fake: FakeBackend) -> None:
    before = {p.pod: p.ip for p in fake.inventory().pods(alive_only=True) if p.zone == LAX}
    clock: ManualClock = fake.clock  # type: ignore[assignment]
    killed_at = clock.advance(1.0)
    killed = fake.kill_pod(LAX, "product-api")
    assert len(killed) == 1 and fake.inventory().get(killed[0]).ended == killed_at  # type: ignore[union-attr]
    assert not [p for p in fake.inventory().pods(alive_only=True) if p.zone == LAX and p.service == "product-api"]
    clock.advance(fake.replace_s + 0.3)  # looked at later than the replacement was due
    new = [p for p in fake.inventory().pods(alive_only=True) if p.zone == LAX and p.service == "product-api"]
    assert len(new) == 1 and new[0].pod not in before and new[0].ip not in before.values()
    assert new[0].started == killed_at + fake.replace_s and fake.inventory().is_ready(new[0].pod)
    inject, restore = fake.timeline
    assert (inject["phase"], restore["phase"], inject["kind"]) == ("inject", "restore", "service-down")
    assert (inject["ts"], restore["ts"]) == (killed_at, new[0].started)  # restored at the replacement's readiness


def test_zone_outage_and_restore(fake: FakeBackend) -> None:
    fake.zone_outage(LAX)
    assert not [p for p in fake.inventory().pods(alive_only=True) if p.zone == LAX]
    assert fake.request(LAX).status == 503  # the zone's entry is gone with it
    fake.restore_zone(LAX)
    assert fake.request(LAX).ok
    assert [(r["phase"], r["kind"], r["entry_down"]) for r in fake.timeline] == [
        ("inject", "zone-down", True),
        ("restore", "zone-down", False),
    ]


def test_faults_through_the_fake_are_judged_as_fault_windows(fake: FakeBackend, tmp_path: Path) -> None:
    """Its timeline is the chaos actions' (chaos.jsonl): failover inside a window is not a locality violation."""
    _unready_window(fake)
    fake.kill_pod(LAS, "public-api")
    fake.traffic(seconds=2.0)
    verdict = verify(fake.write_run(tmp_path / "run"))
    for name in ("locality", "shared-services", "fallback", "availability", "coverage"):
        assert verdict.invariant(name).passed, verdict.invariant(name).message
    assert [f.kind for f in verdict.faults] == ["service-down", "service-down"]
    assert all(f.passed and f.failover_s is not None and f.failover_s <= 0.05 for f in verdict.faults)


def test_collector_copies_the_same_lines_write_run_writes(fake: FakeBackend, tmp_path: Path) -> None:
    fake.traffic(seconds=0.2)
    with AccessLogCollector(fake.log_sources, tmp_path / "collected", interval_s=0.01) as col:
        pass
    run = fake.write_run(tmp_path / "run")
    for f in (run / "accesslogs").iterdir():
        assert (tmp_path / "collected" / f.name).read_text() == f.read_text()
    assert col.lines_written == sum(len(f.read_text().splitlines()) for f in (run / "accesslogs").iterdir())
    assert col.poll_once() == 0  # every line is read once


@pytest.mark.parametrize("misroute", [False, True])
def test_a_failover_to_another_local_zone_fails_the_verdict(
    fake: FakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, misroute: bool
) -> None:
    """The fake's records reach the verifier for real: the same run passes fallback and has no LZ -> LZ hop,
    until the mesh fails over to another Local Zone instead of the Region."""
    if misroute:
        route = fake._route

        def lz_to_lz(caller, upstream):  # type: ignore[no-untyped-def]
            if caller.info.zone == LAX and upstream == "product-api" and fake._pick(upstream, LAX, LAX) is None:
                return fake._pick(upstream, LAS, LAX), "-"
            return route(caller, upstream)

        monkeypatch.setattr(fake, "_route", lz_to_lz)
    _unready_window(fake)
    verdict = verify(fake.write_run(tmp_path / "run"))
    fallback, hub = verdict.invariant("fallback"), verdict.invariant("hub-and-spoke")
    assert fallback.passed is not misroute, fallback.message
    lz_to_lz_message = f"hub-and-spoke: {LAX} -> {LAS}: 20 hops to product-api"
    assert hub.message.startswith(lz_to_lz_message) is misroute, hub.message


def test_what_it_cannot_do_it_refuses(fake: FakeBackend) -> None:
    assert fake.capabilities() == CHAOS_PRIMITIVES
    with pytest.raises(BackendError):
        fake.envoy_admin("x", "/clusters")
    with pytest.raises(BackendError):
        fake.consul_api()
    with pytest.raises(TypeError):
        FakeBackend().traffic(seconds=0.1)


def test_manifests_are_the_rendered_topology_so_roles_resolve(fake: FakeBackend) -> None:
    from harness.chaos.roles import parse_role, resolve_values

    m = fake.manifests()
    assert m.topology == fake.topology and any(o["kind"] == "Deployment" for o in m.objects)
    assert parse_role("a Local Zone") is not None
    zone = resolve_values(["a Local Zone"], m.topology)["a Local Zone"]
    assert zone in {z.name for z in fake.topology.edge_zones}


def test_restore_of_a_node_that_is_up_changes_nothing(fake: FakeBackend) -> None:
    before = sorted(p.pod for p in fake.inventory().pods(alive_only=True))
    fake.restore_node("lax-1a-n1")
    assert sorted(p.pod for p in fake.inventory().pods(alive_only=True)) == before
