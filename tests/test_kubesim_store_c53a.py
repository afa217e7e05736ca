"""`tests.kubesim.Store`: the simulation's objects, indexed per resource, list what a scan of the store listed."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.kubesim import Key, Store

KEYS = st.tuples(
    st.sampled_from(["v1", "apps/v1"]), st.sampled_from(["pods", "services"]), st.sampled_from([None, "a", "b"]),
    st.sampled_from(["x", "y", "z"]),
)  # fmt: skip
OPS = st.lists(st.tuples(st.sampled_from(["set", "del", "pop", "pop-default", "clear"]), KEYS, st.integers()))


@given(OPS)
def test_each_resource_lists_what_a_scan_of_the_store_lists_in_its_order(ops: list[tuple[str, Key, int]]) -> None:
    store, plain = Store(), dict[Key, Any]()
    for op, key, n in ops:
        if op == "set":
            store[key] = plain[key] = {"n": n}
        elif op == "del" and key in plain:
            del store[key], plain[key]
        elif op == "pop":
            assert store.pop(key, None) == plain.pop(key, None)
        elif op == "pop-default":
            assert store.pop(key, n) == plain.pop(key, n)
        elif op == "clear" and n % 5 == 0:
            store.clear()
            plain.clear()
        assert dict(store) == plain
        for av in ("v1", "apps/v1"):
            for pl in ("pods", "services"):
                scanned = [((k[2], k[3]), o) for k, o in plain.items() if k[:2] == (av, pl)]
                assert list(store.of(av, pl).items()) == scanned


def test_writes_the_index_would_miss_are_refused() -> None:
    store = Store()
    for write in (
        lambda: store.update({("v1", "pods", "a", "x"): {}}),
        lambda: store.setdefault(("v1", "pods", "a", "x"), {}),
        store.popitem,
    ):
        with pytest.raises(NotImplementedError):
            write()
    assert not store and not store.of("v1", "pods")


def test_a_template_hash_follows_the_templates_content_not_its_dict() -> None:
    """`ClusterSim._template_hash` keeps a hash per template dict: an equal template elsewhere hashes alike, a patched
    Deployment's template (a new dict) gets its own, and a template dict hashed before is not taken for a new
    one that reuses its id once it is gone (the cache holds the dict)."""
    from tests.kubesim import ClusterSim

    sim = ClusterSim()
    sim.ensure_namespace("ns")
    template = {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "a", "image": "a:1"}]}}
    sim.create("apps/v1", "deployments", "ns", {"metadata": {"name": "d"}, "spec": {"template": template}})
    stored = sim.get("apps/v1", "deployments", "ns", "d")
    assert stored is not None
    first = sim._template_hash(stored["spec"]["template"])
    assert sim._template_hash(stored["spec"]["template"]) == first == sim._template_hash(dict(template))
    sim.patch(
        "apps/v1",
        "deployments",
        "ns",
        "d",
        {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a:2"}]}}}},
    )
    patched = sim.get("apps/v1", "deployments", "ns", "d")
    assert patched is not None and sim._template_hash(patched["spec"]["template"]) != first
    for image in ("b:1", "b:2", "b:3"):  # short-lived dicts: ids CPython may reuse
        assert sim._template_hash({"spec": {"containers": [{"image": image}]}}) != sim._template_hash(
            {"spec": {"containers": [{"image": image + "x"}]}}
        )


def test_a_steady_deployment_still_follows_its_pods_its_spec_and_its_replicasets() -> None:
    """`ClusterSim._reconcile_deployment` skips a sync whose inputs are the objects of its last sync that changed
    nothing (`_steady`); every change after that is still seen: a pod gone, a pod Ready, the replicas, the
    template, a ReplicaSet's count."""
    from tests.kubesim import ClusterSim

    sim = ClusterSim()
    sim.ensure_namespace("ns")
    template = {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "a", "image": "a:1"}]}}
    spec = {"replicas": 2, "selector": {"matchLabels": {"app": "a"}}, "template": template}
    sim.create("apps/v1", "deployments", "ns", {"metadata": {"name": "d"}, "spec": spec})

    def settle() -> dict[str, Any]:
        for _ in range(4):
            sim._workloads_tick()
        d = sim.get("apps/v1", "deployments", "ns", "d")
        assert d is not None
        uid = str(d["metadata"]["uid"])
        assert uid in sim._steady, "settled: the last sync changed nothing"
        return dict(d.get("status") or {})

    def pods() -> list[dict[str, Any]]:
        return sim.items("v1", "pods", "ns")

    assert settle()["replicas"] == 2 and len(pods()) == 2
    sim._remove(("v1", "pods", "ns", pods()[0]["metadata"]["name"]))  # gone (no kubelet here to wait for)
    assert len(pods()) == 1
    assert settle()["replicas"] == 2 and len(pods()) == 2
    ready = {"conditions": [{"type": "Ready", "status": "True"}], "podIP": "10.0.0.9"}
    sim.patch("v1", "pods", "ns", pods()[0]["metadata"]["name"], {"status": ready})
    assert settle()["readyReplicas"] == 1
    sim.patch("apps/v1", "deployments", "ns", "d", {"spec": {"replicas": 3}})
    assert settle()["replicas"] == 3 and len(pods()) == 3
    patched = {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "a:2"}]}}}}
    sim.patch("apps/v1", "deployments", "ns", "d", patched)
    status = settle()
    hashes = {
        p["metadata"]["labels"]["pod-template-hash"] for p in pods() if not p["metadata"].get("deletionTimestamp")
    }
    assert len(hashes) == 2 and status["updatedReplicas"] >= 1, (hashes, status)
    d = sim.get("apps/v1", "deployments", "ns", "d")
    assert d is not None
    for rs in sim.replicasets[str(d["metadata"]["uid"])].values():  # a ReplicaSet's count changed from outside
        rs.replicas += 1
    sim._workloads_tick()
    assert len(pods()) > 3 + 1


def test_answers_kept_per_namespace_follow_every_write_of_its_pods() -> None:
    """`Store.version` moves with each write of a resource in a namespace (and only there); the Endpoints and owned
    pods kept on it (`ClusterSim._endpoint_addresses`, `_owned`) follow a pod added, Ready, terminating, gone."""
    from tests.kubesim import ClusterSim

    sim = ClusterSim()
    for ns in ("ns", "other"):
        sim.ensure_namespace(ns)
    owner = {"metadata": {"name": "o", "namespace": "ns", "uid": "u1"}}
    ref = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "o-1", "uid": "u1", "controller": True}]

    def pod(name: str, ip: str) -> dict[str, Any]:
        meta = {"name": name, "labels": {"app": "a"}, "ownerReferences": ref}
        return {"metadata": meta, "spec": {"containers": [{"name": "a"}]}, "status": {"podIP": ip}}

    def seen() -> tuple[list[tuple[str, bool]], list[str], list[str]]:
        eps = [(name, ready) for name, _uid, _ip, ready in sim._endpoint_addresses("ns", {"app": "a"})]
        owned, live = sim._owned(owner)
        return eps, [p["metadata"]["name"] for p in owned], [p["metadata"]["name"] for p in live]

    assert seen() == ([], [], [])
    before = sim.objects.version("v1", "pods", "ns")
    sim.create("v1", "pods", "ns", pod("p1", "10.0.0.1"))
    assert sim.objects.version("v1", "pods", "ns") != before
    assert seen() == ([("p1", False)], ["p1"], ["p1"])
    other = sim.objects.version("v1", "pods", "ns")
    sim.create("v1", "pods", "other", pod("q1", "10.0.0.5"))
    assert sim.objects.version("v1", "pods", "ns") == other  # another namespace's pods: not these
    assert seen() == ([("p1", False)], ["p1"], ["p1"])
    sim.patch("v1", "pods", "ns", "p1", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert seen() == ([("p1", True)], ["p1"], ["p1"])
    sim.create("v1", "pods", "ns", pod("p2", "10.0.0.2"))
    p1 = sim.get("v1", "pods", "ns", "p1")
    assert p1 is not None  # terminating, as a delete with grace leaves it (stored directly: no kubelet runs here)
    sim.objects[("v1", "pods", "ns", "p1")] = {**p1, "metadata": {**p1["metadata"], "deletionTimestamp": "x"}}
    assert seen() == ([("p2", False)], ["p1", "p2"], ["p2"])
    del sim.objects[("v1", "pods", "ns", "p1")]  # gone (the store's own delete: no kubelet runs here)
    assert seen() == ([("p2", False)], ["p2"], ["p2"])
    sim.objects.clear()
    assert seen() == ([], [], [])
