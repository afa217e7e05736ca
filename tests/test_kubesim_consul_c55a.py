"""Two controllers of the simulated cluster (`tests.kubesim.ClusterSim`) that run every 20 ms tick and repeated
work where nothing had changed, and what they must still see.

`_reconcile_entry`, consul-k8s' config-entry controller, for every config-entry CRD: one found synced is not read
again while it is the same object and its hour (the controller's resync period) lasts; every change to it is
still synced, and so is the hourly resync. The garbage collector (`_workloads_tick`): a pass that deleted nothing
is not made again before the store's next write; an orphan or an owner gone after a quiet time is still seen."""

from __future__ import annotations

from typing import Any

import pytest

import tests.kubesim as kubesim
from tests.kubesim import CONSUL_GROUP, ClusterSim

PLURAL = "servicedefaults"


def _sim() -> tuple[ClusterSim, float]:
    sim = ClusterSim()
    sim.install_consul({})
    sim.ensure_namespace("ns")
    spec = {"protocol": "http"}
    sim.create(CONSUL_GROUP, PLURAL, "ns", {"kind": "ServiceDefaults", "metadata": {"name": "web"}, "spec": spec})
    return sim, 1_000_000.0


def _synced(sim: ClusterSim, now: float, ticks: int = 4) -> tuple[dict[str, Any], float]:
    """Tick the controller past its sync delay; the CRD (Synced True) and the time the ticks reached."""
    for _ in range(ticks):
        now += 1.0
        sim._consul_tick(now)
    obj = sim.get(CONSUL_GROUP, PLURAL, "ns", "web")
    assert obj is not None
    cond = (obj.get("status") or {}).get("conditions") or [{}]
    assert cond[0].get("status") == "True", obj.get("status")
    return obj, now


def test_a_synced_entry_is_not_read_again_while_it_is_the_same_object(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tick used to parse each synced CRD's lastSyncedTime again (a tenth of a kind e2e's simulation thread)."""
    sim, now = _sim()
    obj, now = _synced(sim, now)
    parsed: list[str | None] = []
    real = kubesim.parse_time

    def counting(value: str | None) -> float | None:
        parsed.append(value)
        return real(value)

    monkeypatch.setattr(kubesim, "parse_time", counting)
    for _ in range(50):
        now += 0.02
        sim._consul_tick(now)
    assert parsed == [], f"{len(parsed)} times over 50 ticks of one unchanged synced CRD"
    assert sim.get(CONSUL_GROUP, PLURAL, "ns", "web") is obj  # nothing written meanwhile


def test_a_synced_entry_still_follows_its_spec_its_deletion_and_the_hourly_resync() -> None:
    sim, now = _sim()
    c = sim.consul
    assert c is not None
    obj, now = _synced(sim, now)
    assert c.entries[("ServiceDefaults", "web")] == {"protocol": "http"}
    # a spec change (a new generation) is synced into Consul
    sim.patch(CONSUL_GROUP, PLURAL, "ns", "web", {"spec": {"protocol": "grpc"}})
    obj, now = _synced(sim, now)
    assert obj["metadata"]["generation"] == 2 and obj["status"]["_simSyncedGeneration"] == 2
    assert c.entries[("ServiceDefaults", "web")] == {"protocol": "grpc"}
    # the hourly resync: the same object an hour after its last sync is synced again (a new lastSyncedTime)
    synced_at = kubesim.parse_time(obj["status"]["lastSyncedTime"])
    assert synced_at is not None
    sim._consul_tick(synced_at + 3600.5)
    again = sim.get(CONSUL_GROUP, PLURAL, "ns", "web")
    assert again is not None and again is not obj
    assert kubesim.parse_time(again["status"]["lastSyncedTime"]) == pytest.approx(synced_at + 3600.5, abs=1.0)
    now = synced_at + 3600.5
    # a deletion: the controller removes the entry from Consul and its finalizer, and the CRD goes
    sim.delete(CONSUL_GROUP, PLURAL, "ns", "web")
    for _ in range(4):
        now += 1.0
        sim._consul_tick(now)
    assert ("ServiceDefaults", "web") not in c.entries
    assert sim.get(CONSUL_GROUP, PLURAL, "ns", "web") is None


# -- the garbage collector (`ClusterSim._workloads_tick`) ------------------------------------------------------------
def _deployment(sim: ClusterSim) -> None:
    sim.ensure_namespace("ns")
    template = {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "a", "image": "a:1"}]}}
    spec = {"replicas": 2, "selector": {"matchLabels": {"app": "a"}}, "template": template}
    sim.create("apps/v1", "deployments", "ns", {"metadata": {"name": "d"}, "spec": spec})
    for _ in range(4):
        sim._workloads_tick()


def _live_pods(sim: ClusterSim) -> list[str]:
    return [p["metadata"]["name"] for p in sim.items("v1", "pods", "ns") if not p["metadata"].get("deletionTimestamp")]


def test_the_garbage_collector_does_not_scan_the_store_again_before_a_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every tick used to build the set of every object's uid and look at every pod's owners, with nothing written
    since the last pass."""
    sim = ClusterSim()
    _deployment(sim)
    scans: list[int] = []
    real = sim.objects.values

    def counting() -> Any:
        scans.append(1)
        return real()

    monkeypatch.setattr(sim.objects, "values", counting, raising=False)
    for _ in range(50):
        sim._workloads_tick()
    assert scans == [], f"{len(scans)} scans of the store over 50 ticks of a cluster where nothing was written"


def test_the_garbage_collector_still_deletes_a_pod_whose_owner_goes_after_a_quiet_time() -> None:
    sim = ClusterSim()
    _deployment(sim)
    assert len(_live_pods(sim)) == 2
    for _ in range(10):  # quiet: nothing to collect
        sim._workloads_tick()
    assert len(_live_pods(sim)) == 2
    # an orphan created meanwhile (its owner's uid is no object's) is collected at the next tick
    orphan = {"metadata": {"name": "orphan", "ownerReferences": [{"kind": "ReplicaSet", "name": "x", "uid": "gone"}]},
              "spec": {"containers": [{"name": "a", "image": "a:1"}]}}  # fmt: skip
    sim.create("v1", "pods", "ns", orphan)
    assert "orphan" in _live_pods(sim)
    sim._workloads_tick()
    assert "orphan" not in _live_pods(sim)
    for _ in range(10):
        sim._workloads_tick()
    # the Deployment removed without its controller's cascade: the garbage collector deletes its pods
    sim.paused.add("workloads")
    sim._remove(("apps/v1", "deployments", "ns", "d"))
    sim.paused.discard("workloads")
    sim._workloads_tick()
    assert _live_pods(sim) == []
