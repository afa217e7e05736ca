"""Contract tests of harness.backends.kube against a fake API server (kmock) on loopback.

The fake server and its fixtures live in `tests.kubefake`, shared with the
kind and existing backend tests.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.backends.kube import (
    LABEL_SERVING,
    InventoryWatcher,
    KubeCluster,
    KubeLogSource,
    KubeLogSources,
    LineStream,
    PodGone,
    access_log_record,
    split_timestamp,
)
from harness.backends.kube.api import KubeApiError
from harness.backends.kube.chaos import KILL_GRACE_S
from harness.contract.inventory import Inventory
from harness.errors import BackendError
from tests.conftest import wait_until
from tests.kubefake import NODES, T0, FakeApiServer, lax_pod, pod, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kubesim import answers_http

# -- apply --------------------------------------------------------------------


def test_apply_sends_every_rendered_object_in_order_namespaces_first(api: FakeApiServer, tmp_path: Path) -> None:
    m = rendered(tmp_path)
    c = api.cluster(tmp_path)
    api.install_consul()  # Consul's CRDs come with the chart
    before = len(api.writes())
    progress: list[str] = []
    applied = c.apply(m.objects, progress.append)

    posts = [(p, d) for meth, p, d in api.writes()[before:] if meth == "POST"]
    assert len(posts) == len(m.objects)
    expected = KubeCluster.apply_order(m.objects)
    assert [d for _p, d in posts] == [dict(o) for o in expected]
    kinds = [d["kind"] for _p, d in posts]
    n_ns = kinds.count("Namespace")
    assert kinds[:n_ns] == ["Namespace"] * n_ns and "Namespace" not in kinds[n_ns:]
    # Consul CRDs go to their group's URL in their namespace.
    pd = next(p for p, d in posts if d["kind"] == "ProxyDefaults")
    assert pd == "/apis/consul.hashicorp.com/v1alpha1/namespaces/consul/proxydefaults"
    assert (posts[0][0], posts[0][1]["kind"]) == ("/api/v1/namespaces", "Namespace")
    assert all(a.created for a in applied if (a.kind, a.name) != ("Namespace", "consul"))  # the chart made that one
    assert progress[-1].startswith(f"applied {len(m.objects)}/{len(m.objects)} ")


def test_reapply_patches_server_side_and_reports_not_created(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    c.apply_one({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "hashicups"}})
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "conf", "namespace": "hashicups"}}
    assert c.apply_one(cm).created is True
    again = c.apply_one({**cm, "metadata": {**cm["metadata"], "labels": {"x": "y"}}})
    assert again.created is False
    meth, path, query, body = api.requests()[-1]
    assert (meth, path) == ("PATCH", "/api/v1/namespaces/hashicups/configmaps/conf")
    assert query == {"fieldManager": "edge-harness", "force": "true"}
    assert body["metadata"]["labels"] == {"x": "y"}
    hdr = api.raw_requests()[-1].headers
    assert hdr["Content-Type"] == "application/apply-patch+yaml"


def test_an_existing_namespace_is_left_as_it_is(api: FakeApiServer, tmp_path: Path) -> None:
    """It may be the operator's (the release namespace of their Consul): its labels are not ours to take over."""
    c = api.cluster(tmp_path)
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "hashicups"}}
    assert c.apply_one(ns).created is True
    again = c.apply_one({**ns, "metadata": {"name": "hashicups", "labels": {"x": "y"}}})
    assert again.created is False
    assert [m for m, *_ in api.requests()[-1:]] == ["POST"]  # the create that met 409, and no PATCH after it


def test_unknown_kind_is_a_clear_error(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    with pytest.raises(
        BackendError, match=r"does not serve ExportedServices \(consul.hashicorp.com/v1alpha1\).*Consul"
    ):
        c.apply_one(
            {"apiVersion": "consul.hashicorp.com/v1alpha1", "kind": "ExportedServices", "metadata": {"name": "x"}}
        )


def test_delete_is_idempotent(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    c.apply_one({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}})
    c.apply_one({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "n"}})
    assert c.exists("v1", "ConfigMap", "n", "a")
    assert c.delete("v1", "ConfigMap", "n", "a") is True
    assert c.delete("v1", "ConfigMap", "n", "a") is False
    assert not c.exists("v1", "ConfigMap", "n", "a")


# -- readiness ----------------------------------------------------------------


def _deployment(name: str, ns: str, replicas: int) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": "x"}]}},
        },
    }


def test_wait_ready_times_out_naming_laggards_then_succeeds(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    api.seed(c, _deployment("a", "n", 2), _deployment("b", "n", 1))
    # no node to run them on: the pods stay Pending
    # (each laggard with the scheduler's reason once it has written one: none yet at the very first look)
    pend = r"( \(Pending: 0/0 nodes are available:\))?"
    why = r", (spec update not observed yet|0 of \d new replicas updated|0 of \d updated replicas available)"
    laggards = rf"not ready after 0s: n/a 0/2 ready{why}{pend}, n/b 0/1 ready{why}{pend}, n/c missing"
    with pytest.raises(BackendError, match=laggards):
        c.wait_deployments_ready([("n", "a"), ("n", "b"), ("n", "c")], timeout=0, poll=0.01)
    assert wait_until(lambda: len([p for p in c.pods("n") if p["status"].get("conditions")]) == 3)
    pending = c.pods("n")
    assert all(p["status"]["phase"] == "Pending" for p in pending)
    assert pending[0]["status"]["conditions"][0]["message"] == "0/0 nodes are available: "
    api.seed(c, NODES[0])  # a node joins: the scheduler binds, the kubelet starts them, readiness passes
    progress: list[str] = []
    c.wait_deployments_ready([("n", "a"), ("n", "b")], timeout=10, progress=progress.append, poll=0.05)
    assert progress[0] == "deployments ready 0/2" and progress[-1] == "deployments ready 2/2"
    ready = c.pods("n")
    assert all(p["spec"]["nodeName"] == "edge-worker" and p["status"]["podIP"].startswith("10.244.1.") for p in ready)


def test_stale_generation_is_not_ready(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    api.seed(c, NODES[0], _deployment("a", "n", 1))
    c.wait_deployments_ready([("n", "a")], timeout=10, poll=0.05)
    api.sim.paused.add("workloads")  # the controller has not seen the next spec yet
    c.request(
        "PATCH",
        "/apis/apps/v1/namespaces/n/deployments/a",
        body={"spec": {"replicas": 1, "template": {"metadata": {"labels": {"app": "a", "v": "2"}}}}},
        content_type="application/merge-patch+json",
    )
    d = c.request("GET", "/apis/apps/v1/namespaces/n/deployments/a")
    assert (d["metadata"]["generation"], d["status"]["observedGeneration"], d["status"]["readyReplicas"]) == (2, 1, 1)
    state = c.deployments_ready([("n", "a")])[("n", "a")]
    assert not state.done and state.waiting == "spec update not observed yet"


def _retemplate(c: KubeCluster, name: str, labels: dict[str, str], spec: dict[str, Any] | None = None) -> None:
    """A re-apply whose pod template changed (EKS nightly: a new image, an annotation): a rollout."""
    tpl: dict[str, Any] = {"metadata": {"labels": labels}}
    if spec is not None:
        tpl["spec"] = spec
    c.request(
        "PATCH",
        f"/apis/apps/v1/namespaces/n/deployments/{name}",
        body={"spec": {"template": tpl}},
        content_type="application/merge-patch+json",
    )


def _status(c: KubeCluster, name: str) -> tuple[Any, ...]:
    d = c.request("GET", f"/apis/apps/v1/namespaces/n/deployments/{name}")
    st = d.get("status") or {}
    keys = ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas")
    return (d["metadata"]["generation"], st.get("observedGeneration"), *(st.get(k) for k in keys))


def test_a_rollout_whose_new_pods_never_come_up_is_not_ready_while_the_old_pods_serve(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """A re-`up` on an existing cluster with a changed pod template starts a rollout: the Deployment controller
    makes a new ReplicaSet and scales it up within maxSurge (25 %, rounded up: 1 of 2) while the old pods keep
    serving, scaled down only as new ones become available (maxUnavailable 25 % of 2, rounded down: 0). Mid-
    rollout the status says replicas 3, updatedReplicas 1, readyReplicas 2 (sync.go calculateStatus): the
    readiness rule counted readyReplicas >= replicas and returned, with only the old template serving. kubectl
    rollout status (DeploymentStatusViewer) waits until every replica is updated, no old one is left and the
    updated ones are available. Here the new template asks for a node label no node has: it never comes up."""
    c = api.cluster(tmp_path)
    api.seed(c, NODES[0], _deployment("a", "n", 2))
    c.wait_deployments_ready([("n", "a")], timeout=10, poll=0.05)
    _retemplate(c, "a", {"app": "a", "v": "2"}, {"nodeSelector": {"edge-harness.io/none": "x"}})
    # the controller's own counts once it synced the new generation: the new pod Pending, both old ones Ready
    assert wait_until(lambda: _status(c, "a") == (2, 2, 3, 1, 2, 2, 1)), _status(c, "a")
    with pytest.raises(BackendError, match=r"not ready after 1s: n/a 2/2 ready, 1 of 2 new replicas updated"):
        c.wait_deployments_ready([("n", "a")], timeout=1, poll=0.05)
    state = c.deployments_ready([("n", "a")])[("n", "a")]
    assert not state.done and (state.ready, state.desired) == (2, 2)


def test_a_stalled_rollout_of_four_stops_where_maxsurge_and_maxunavailable_let_the_controller_go(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """The fake's rollout is the controller's (rolling.go): 4 replicas allow one surge pod and one unavailable
    (25 %: rounded up, down). First sync: the new ReplicaSet to 1, the old one from 4 to 3 (3 stay available).
    The new pods never become available, so the old one goes no lower (maxScaledDown = 5 - 3 - 2 = 0) while
    the new one grows to what the surge allows (3 + 2 = 5): replicas 5, updated 2, ready and available 3 (the
    old ones), unavailable 2 of the 5 the ReplicaSets want; and the harness waits."""
    c = api.cluster(tmp_path)
    api.seed(c, NODES[0], _deployment("a", "n", 4))
    c.wait_deployments_ready([("n", "a")], timeout=10, poll=0.05)
    _retemplate(c, "a", {"app": "a", "v": "2"}, {"nodeSelector": {"edge-harness.io/none": "x"}})
    assert wait_until(lambda: _status(c, "a") == (2, 2, 5, 2, 3, 3, 2)), _status(c, "a")
    live = [p for p in c.pods("n") if not p["metadata"].get("deletionTimestamp")]
    assert sorted(p["metadata"]["labels"].get("v", "1") for p in live) == ["1", "1", "1", "2", "2"]
    assert c.deployments_ready([("n", "a")])[("n", "a")].waiting == "2 of 4 new replicas updated"


def test_a_rollout_is_ready_once_the_old_pods_are_gone_and_the_new_ones_available(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """The control: a rollout whose new pods come up finishes (new ReplicaSet at 2, old one at 0, nothing old
    left) and the wait returns then, with every pod of the new template, none terminating."""
    c = api.cluster(tmp_path)
    api.seed(c, NODES[0], _deployment("a", "n", 2))
    c.wait_deployments_ready([("n", "a")], timeout=10, poll=0.05)
    old = {p["metadata"]["name"] for p in c.pods("n")}
    _retemplate(c, "a", {"app": "a", "v": "2"})
    c.wait_deployments_ready([("n", "a")], timeout=20, poll=0.05)
    assert _status(c, "a") == (2, 2, 2, 2, 2, 2, None)
    pods = c.pods("n")
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 2 and not old & {p["metadata"]["name"] for p in live}
    assert all(p["metadata"]["labels"].get("v") == "2" for p in live)
    assert c.deployments_ready([("n", "a")])[("n", "a")].done


def test_the_fake_refuses_a_deployment_whose_availability_would_wait_on_the_wall_clock(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """kubesim's rollout counts a pod available once Ready (podutil.IsPodAvailable with minReadySeconds 0, the
    rendered Deployments' value): `minReadySeconds` would make availability a wall-clock wait the harness's
    polls race, so the fake refuses it by name, on create and on a later spec change, rather than ignore it."""
    c = api.cluster(tmp_path)
    slow = _deployment("s", "n", 1)
    slow["spec"]["minReadySeconds"] = 5
    with pytest.raises((BackendError, KubeApiError), match=r"spec\.minReadySeconds is not modelled"):
        api.seed(c, slow)
    api.seed(c, _deployment("a", "n", 1))
    with pytest.raises((BackendError, KubeApiError), match=r"spec\.minReadySeconds is not modelled"):
        c.request(
            "PATCH",
            "/apis/apps/v1/namespaces/n/deployments/a",
            body={"spec": {"minReadySeconds": 5}},
            content_type="application/merge-patch+json",
        )
    spec = c.request("GET", "/apis/apps/v1/namespaces/n/deployments/a")["spec"]
    assert "minReadySeconds" not in spec


# -- nodes, cordon, drain -----------------------------------------------------


def test_nodes_map_to_zones_with_addresses(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    api.seed(c, *NODES)
    assert c.nodes()["edge-worker3"] == "us-west-2-lax-1a"
    assert c.nodes()["edge-control-plane"] == ""
    info = {n.name: n for n in c.node_infos()}
    assert info["edge-worker3"].internal_ip == "172.18.0.4"
    assert info["edge-worker3"].pod_cidrs == ("10.244.3.0/24",)
    assert info["edge-worker3"].zone_type == "local-zone"


def test_drain_cordons_and_kills_pods_on_the_node_but_not_daemonsets(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    # the pods' owners are named, not created: the cluster's garbage collector (a kube-controller-manager
    # controller) would delete them at its next tick, 20 ms on, and a drain later than that found none to drain
    # (tests/test_drain_race_c55a.py); the drain is judged here with the controllers stopped
    api.sim.call(lambda: api.sim.paused.add("workloads"))
    ds_pod = pod("kube-proxy-x", "kube-system", "z", "kube-proxy", "", "172.18.0.4", "edge-worker3")
    ds_pod["metadata"]["ownerReferences"] = [{"kind": "DaemonSet", "name": "kube-proxy"}]
    # a Deployment's pod (its ReplicaSet re-creates it); one no controller owns stays (kube.chaos.unmanaged)
    p1 = lax_pod("p1", "10.244.3.5")
    p1["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": "product-api-x", "controller": True}]
    api.seed(
        c,
        *NODES,
        p1,
        pod("p2", "hashicups", "us-west-2a", "product-api", "product-api", "10.244.1.5", "edge-worker"),
        ds_pod,
    )
    assert c.drain("edge-worker3") == ["hashicups-lax-1a/p1"]
    writes = api.writes()[-2:]
    assert writes[0][:2] == ("PATCH", "/api/v1/nodes/edge-worker3")
    assert writes[0][2] == {"spec": {"unschedulable": True}}
    assert writes[1][:2] == ("DELETE", "/api/v1/namespaces/hashicups-lax-1a/pods/p1")
    assert api.requests()[-1][2] == {"gracePeriodSeconds": str(KILL_GRACE_S)}
    assert {n.name: n.unschedulable for n in c.node_infos()}["edge-worker3"] is True
    c.uncordon("edge-worker3")
    assert {n.name: n.unschedulable for n in c.node_infos()}["edge-worker3"] is False


def _server_pod(name: str, node_name: str) -> dict[str, Any]:
    """A running pod of the operator's Consul server StatefulSet (the chart's `consul-server`) on `node_name`."""
    p = pod(name, "consul", "us-west-2a", "consul", "", "10.244.1.9", node_name)
    p["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "consul-server",
                                         "uid": "sts-uid", "controller": True}]  # fmt: skip
    return p


def test_a_node_kill_on_eks_never_force_deletes_a_pod_that_still_runs(api: FakeApiServer, tmp_path: Path) -> None:
    """A node kill on EKS drains every pod of the node, the operator's too: an AZ node kill (az-primary-loss,
    az-node-loss) meets the Consul server StatefulSet's pods. gracePeriodSeconds=0 is a force deletion: the API
    server drops the pod before the kubelet has stopped it, and the StatefulSet controller then makes its
    replacement of the same identity beside it (what kubectl refuses without --force). The drain's grace is the
    shortest graceful one, as kubectl turns `--grace-period=0` into: the pod is gone once its containers are."""
    c = api.cluster(tmp_path)
    api.seed(c, *NODES, _server_pod("consul-server-0", "edge-worker"))
    assert c.drain("edge-worker") == ["consul/consul-server-0"]
    assert api.sim.force_deleted_running == []
    assert wait_until(lambda: not c.pods("consul"), timeout=10)  # still deleted: Terminating, then gone


def test_the_fake_notes_a_force_deletion_of_a_running_pod(api: FakeApiServer, tmp_path: Path) -> None:
    """Control: the same pod deleted with gracePeriodSeconds=0 is what kubesim notes (so the test above can fail)."""
    c = api.cluster(tmp_path)
    api.seed(c, *NODES, _server_pod("consul-server-0", "edge-worker"))
    assert c.delete_pod("consul", "consul-server-0", 0)
    assert api.sim.force_deleted_running == [("consul", "consul-server-0", "StatefulSet")]


# -- pod chaos ----------------------------------------------------------------


def test_kill_pods_deletes_only_the_zone_and_service_pods(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    api.seed(
        c,
        lax_pod("pa-lax-1", "10.0.3.1", "n3"),
        lax_pod("pa-lax-2", "10.0.3.2", "n3"),
        lax_pod("pub-lax", "10.0.3.3", "n3", app="public-api"),
        pod("pa-2a", "hashicups", "us-west-2a", "product-api", "product-api", "10.0.1.1", "n1"),
    )
    assert sorted(c.kill_pods("us-west-2-lax-1a", "product-api")) == ["pa-lax-1", "pa-lax-2"]
    deletes = [p for m, p, _d in api.writes() if m == "DELETE"]
    assert sorted(deletes) == [
        "/api/v1/namespaces/hashicups-lax-1a/pods/pa-lax-1",
        "/api/v1/namespaces/hashicups-lax-1a/pods/pa-lax-2",
    ]
    # The label selector is sent for real servers (the fake ignores it).
    lists = [q for m, p, q, _b in api.requests() if m == "GET" and p == "/api/v1/pods"]
    assert lists[-1] == {"labelSelector": "edge-harness.io/zone=us-west-2-lax-1a,app=product-api"}
    with pytest.raises(BackendError, match="no pods of product-api in zone us-west-2-lax-1a"):
        c.kill_pods("us-west-2-lax-1a", "product-api")


def test_a_pod_kill_stops_the_pod_before_the_inventory_says_it_is_removed(api: FakeApiServer, tmp_path: Path) -> None:
    """A kill deleted the pod with gracePeriodSeconds=0, a force deletion: the API dropped it (the inventory's
    `removed`) while its containers ran on for their grace (kubelet pod_workers.go calculateEffectiveGracePeriod;
    consul-dataplane drains 30 s), still answering, beside the replacement. With KILL_GRACE_S it is Terminating
    first (`unready`: out of the Endpoints at once) and leaves the API only once its containers have stopped."""
    c = api.cluster(tmp_path)
    labels = {"app": "product-api", "edge-harness.io/zone": "us-west-2a"}
    dep = _deployment("product-api", "hashicups", 1)
    dep["spec"]["selector"]["matchLabels"] = labels
    dep["spec"]["template"]["metadata"]["labels"] = labels
    dep["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 80}]
    api.seed(c, NODES[0], dep)
    inv = Inventory(tmp_path / "inventory.jsonl")
    w = InventoryWatcher(c, inv)
    w.start()
    try:
        assert wait_until(lambda: any(inv.is_ready(p.pod) for p in inv.pods()), 60)
        (old,) = c.pods("hashicups")
        port = api.sim.call(lambda: api.sim.endpoint(old, 80))
        assert port is not None and answers_http(port)
        name = str(old["metadata"]["name"])
        assert c.kill_pods("us-west-2a", "product-api") == [name]
        assert api.sim.force_deleted_running == []
        assert wait_until(lambda: inv.get(name).ended is not None, 30)  # type: ignore[union-attr]
        assert not answers_http(port) and api.sim.force_deleted_alive() == []  # removed = stopped
        assert wait_until(lambda: any(inv.is_ready(p.pod) for p in inv.pods(True) if p.pod != name), 60)  # replaced
    finally:
        w.stop()
    events = [json.loads(x) for x in (tmp_path / "inventory.jsonl").read_text().splitlines()]
    mine = [e["event"] for e in events if e["pod"] == name]
    assert mine == ["added", "ready", "unready", "removed"]  # Terminating (out of service) first, then gone


def test_set_serving_flips_the_service_label_only(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    api.seed(c, lax_pod("pa", "10.0.3.1", "n3"))
    assert c.set_serving("us-west-2-lax-1a", "product-api", False) == ["pa"]
    meth, path, body = api.writes()[-1]
    assert (meth, path, body) == (
        "PATCH",
        "/api/v1/namespaces/hashicups-lax-1a/pods/pa",
        {"metadata": {"labels": {LABEL_SERVING: "false"}}},
    )
    assert api.raw_requests()[-1].headers["Content-Type"] == "application/merge-patch+json"
    labels = c.pods("hashicups-lax-1a")[0]["metadata"]["labels"]
    assert labels[LABEL_SERVING] == "false" and labels["app"] == "product-api"  # RS selector labels untouched
    c.set_serving("us-west-2-lax-1a", "product-api", True)
    assert c.pods("hashicups-lax-1a")[0]["metadata"]["labels"][LABEL_SERVING] == "true"


def test_set_serving_refuses_pods_without_the_label(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    api.seed(c, pod("pa", "ns", "z", "product-api", "product-api-z", "10.0.3.1", "n3", serving=False))
    with pytest.raises(BackendError, match=f"pods pa lack the {LABEL_SERVING} label"):
        c.set_serving("z", "product-api", False)
    with pytest.raises(BackendError, match="no pods of frontend in zone z"):
        c.set_serving("z", "frontend", False)


def test_pod_phases_only_hashicups_pods_by_their_ready_condition(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    other = pod("consul-server-0", "consul", "z", "consul", "", "10.0.0.9", "n1")
    del other["metadata"]["labels"]["edge-harness.io/zone"]
    running = pod("pa", "ns", "z", "product-api", "pa-z", "10.0.3.1", "n3")
    ready = [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-25T20:00:05Z"}]
    api.seed(
        c,
        pod("pending", "ns", "z", "product-api", "pa-z", None, "", phase="Pending"),
        running,
        {
            **running,
            "metadata": {**running["metadata"], "name": "pb"},
            "status": {**running["status"], "conditions": ready},
        },
        other,
    )
    # keyed by pod name (the inventory's key); Ready is the condition, never the phase
    assert c.pod_phases() == {"pending": "Pending", "pa": "NotReady", "pb": "Ready"}
    assert c.pod_phases(["consul"]) == {}


# -- inventory ----------------------------------------------------------------


def test_inventory_from_pods_with_zone_from_node(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    api.seed(
        c,
        *NODES,
        lax_pod("pa-lax", "10.244.3.5"),
        # labelled lax but scheduled on an AZ node: the node is the truth
        lax_pod("pa-odd", "10.244.1.9", "edge-worker"),
        pod("pending", "hashicups", "us-west-2a", "frontend", "frontend", None, ""),
    )
    inv = Inventory(tmp_path / "inventory.jsonl")
    c.refresh_inventory(inv)
    by = {p.pod: p for p in inv.pods()}
    assert set(by) == {"pa-lax", "pa-odd"}
    assert by["pa-lax"].zone == "us-west-2-lax-1a" and by["pa-lax"].node == "edge-worker3"
    assert by["pa-lax"].consul_service == "product-api-lax-1a" and by["pa-lax"].service == "product-api"
    assert by["pa-lax"].started == T0
    assert by["pa-odd"].zone == "us-west-2a"
    c.refresh_inventory(inv)  # nothing changed: nothing written again
    lines = [json.loads(x) for x in (tmp_path / "inventory.jsonl").read_text().splitlines()]
    assert [(x["event"], x["pod"]) for x in lines] == [("added", "pa-lax"), ("added", "pa-odd")]
    c.delete_pod("hashicups-lax-1a", "pa-lax")  # graceful: Terminating until its kubelet stopped it
    assert wait_until(lambda: "pa-lax" not in {p["metadata"]["name"] for p in c.pods("hashicups-lax-1a")}, 10)
    c.refresh_inventory(inv)
    gone = inv.get("pa-lax")
    assert gone is not None and gone.ended is not None  # keeps its entry
    assert inv.by_ip("10.244.3.5", ts=gone.ended - 0.5) == gone
    inv.close()


def test_inventory_watch_records_history(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    api.seed(c, *NODES, pod("a", "hashicups", "us-west-2a", "frontend", "frontend", "10.244.1.2", "edge-worker"))
    inv = Inventory()
    w = c.watch_inventory(inv)
    try:
        assert wait_until(lambda: inv.get("a") is not None)
        api.seed(c, lax_pod("b", "10.244.3.2", app="frontend"))
        assert wait_until(lambda: inv.get("b") is not None)
        c.delete_pod("hashicups", "a")
        assert wait_until(lambda: (inv.get("a") or Any).ended is not None)  # type: ignore[union-attr]
        # A pod that gets its IP later (MODIFIED event) is added then.
        api.seed(c, pod("c", "hashicups", "us-west-2b", "frontend", "frontend", None, "edge-worker2"))
        c.request(
            "PATCH",
            "/api/v1/namespaces/hashicups/pods/c",
            body={"status": {"podIP": "10.244.2.7"}},
            content_type="application/merge-patch+json",
        )
        assert wait_until(lambda: inv.get("c") is not None)
        assert inv.by_ip("10.244.2.7") is not None and inv.by_ip("10.244.2.7").zone == "us-west-2b"  # type: ignore[union-attr]
    finally:
        w.stop()
    assert not w.alive
    assert [p.pod for p in inv.pods(alive_only=True)] == ["b", "c"]


# -- logs ---------------------------------------------------------------------

ACCESS = {
    "start_time": "2026-11-25T20:00:00.000Z",
    "response_code": "200",
    "upstream_cluster": "product-api-lax-1a.default.dc1.internal.x.consul",
    "upstream_host": "10.244.3.5:20000",
}


def _line(ts: str, rec: dict[str, Any] | str) -> str:
    return f"{ts} {rec if isinstance(rec, str) else json.dumps(rec)}"


def test_access_log_filter_keeps_json_access_lines_only() -> None:
    assert access_log_record("2026-11-25T20:00:00.000Z [INFO]  consul-dataplane: started", "p") is None
    assert access_log_record('{"level":"info","msg":"x"}', "p") is None
    assert access_log_record("{not json", "p") is None
    out = access_log_record(json.dumps(ACCESS), "pod-1")
    assert out is not None and json.loads(out) == {**ACCESS, "caller_pod": "pod-1"}


def test_split_timestamp() -> None:
    t1 = int(T0 + 1) * 1_000_000_000
    assert split_timestamp("2026-11-25T20:00:01.5Z hello world") == (t1 + 500_000_000, "hello world")
    assert split_timestamp("2026-11-25T20:00:01.000000007Z x") == (t1 + 7, "x")
    assert split_timestamp("no timestamp here") is None
    assert split_timestamp("2026-13-45T99:00:01Z x") is None


class _FakeStream:
    def __init__(self, lines: list[str]) -> None:
        self._lines = lines
        self.closed = False

    def lines(self) -> Iterator[str]:
        yield from self._lines

    def close(self) -> None:
        self.closed = True


def test_log_source_follows_across_restarts_without_duplicates() -> None:
    a = dict(ACCESS, request_id="a")
    b = dict(ACCESS, request_id="b")
    b2 = dict(ACCESS, request_id="b2")  # same instant as b, different line
    c = dict(ACCESS, request_id="c")
    opens: list[str | None] = []
    script: list[list[str] | Exception] = [
        [
            _line("2026-11-25T20:00:01.1Z", a),
            _line("2026-11-25T20:00:01.2Z", "[INFO] dataplane"),
            _line("2026-11-25T20:00:02.5Z", b),
        ],
        RuntimeError("container is waiting to start"),  # restart in progress: retried
        # re-opened with sinceTime=20:00:02: the server repeats the whole second
        [_line("2026-11-25T20:00:02.5Z", b), _line("2026-11-25T20:00:02.5Z", b2), _line("2026-11-25T20:00:03Z", c)],
    ]
    streams: list[_FakeStream] = []

    def opener(since: str | None) -> _FakeStream:
        opens.append(since)
        if not script:
            raise PodGone("p")
        step = script.pop(0)
        if isinstance(step, Exception):
            raise step
        streams.append(_FakeStream(step))
        return streams[-1]

    src = KubeLogSource("pa-1", "ns", opener=opener, retry_s=0.01)
    got: list[str] = []
    got += list(src.read())
    assert src.wait_finished(5)
    got += list(src.read())
    assert [json.loads(x)["request_id"] for x in got] == ["a", "b", "b2", "c"]
    assert all(json.loads(x)["caller_pod"] == "pa-1" for x in got)
    assert opens == [None, "2026-11-25T20:00:02Z", "2026-11-25T20:00:02Z", "2026-11-25T20:00:03Z"]
    assert src.errors == ["container is waiting to start"]
    assert all(s.closed for s in streams)
    assert src.finished


def test_log_source_reads_through_the_api(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    a = dict(ACCESS, request_id="a")
    b = dict(ACCESS, request_id="b")
    api.log_replies["pa"] = [
        _line("2026-11-25T20:00:01Z", a) + "\n" + _line("2026-11-25T20:00:01.5Z", "plain text") + "\n",
        _line("2026-11-25T20:00:01Z", a) + "\n" + _line("2026-11-25T20:00:04Z", b) + "\n",
    ]
    # canned replies answer the follow streams only: no rotation check reads the file's first line in between
    src = KubeLogSource("pa", "hashicups-lax-1a", cluster=c, retry_s=0.01, rotation_check_s=0)
    src.start()
    assert src.wait_finished(10)
    got = [json.loads(x)["request_id"] for x in src.read()]
    assert got == ["a", "b"]
    assert [x.get("sinceTime") for x in api.log_calls] == [None, "2026-11-25T20:00:01Z", "2026-11-25T20:00:04Z"]
    assert api.log_calls[0] == {"pod": "pa", "container": "consul-dataplane", "follow": "true", "timestamps": "true"}
    src.close()


def test_log_sources_are_stable_per_pod(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    api.seed(c, pod("pa", "ns", "z", "product-api", "pa-z", "10.0.3.1", "n3"))
    not_meshed = pod("pb", "ns", "z", "product-api", "pa-z", "10.0.3.2", "n3")
    not_meshed["spec"]["containers"] = [{"name": "product-api"}]
    api.seed(c, not_meshed)
    api.log_replies["pa"] = [_line("2026-11-25T20:00:01Z", ACCESS) + "\n"]
    sources = KubeLogSources(c)
    first = sources.current()
    assert [s.pod for s in first] == ["pa"]
    assert sources.current()[0] is first[0]
    src = first[0]
    assert isinstance(src, KubeLogSource)
    assert len(list(src.read())) <= 1
    assert src.wait_finished(10)
    list(src.read())
    c.delete_pod("ns", "pa")
    assert sources.current() == []
    sources.close()


def test_line_stream_splits_and_survives_close() -> None:
    class Resp:
        def __init__(self) -> None:
            self.chunks = [b"a\nb", b"c\r\n", b"tail"]
            self.shut = False

        def read1(self, _n: int) -> bytes:
            return self.chunks.pop(0) if self.chunks else b""

        def shutdown(self) -> None:
            self.shut = True

    r = Resp()
    s = LineStream(r)
    assert list(s.lines()) == ["a", "bc", "tail"]
    s.close()
    assert r.shut


def test_save_artifacts_writes_logs_per_container_and_survives_missing_logs(api: FakeApiServer, tmp_path: Path) -> None:
    c = api.cluster(tmp_path)
    ns = "hashicups-lax-1a"
    c.apply_one({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    api.seed(c, lax_pod("pa", "10.244.3.7", app="public-api"))
    api.log_replies["pa"] = ["app started\n"]  # the sidecar's log is missing: must not abort the collection
    out = tmp_path / "artifacts"
    saved = c.save_artifacts(out, [ns])
    assert saved == [f"{ns}/pa"]
    assert (out / ns / "pa.public-api.log").read_text() == "app started\n"
    assert (out / ns / "pa.consul-dataplane.log").read_text().startswith("log unavailable")
    assert (out / ns / "events.json").exists()


def test_entry_monitor_records_a_frontend_replaced_between_two_probes(tmp_path: Path) -> None:
    """The zone's last frontend dies and its replacement is Ready long before the next probe: the record
    still has the zone down from the death to the replacement (a 1 s poll saw neither change and kept it up)."""
    from harness.backends.kube.backend import ENTRY_SERVICE, EntryMonitor
    from harness.contract.inventory import PodInfo

    def frontend(name: str, zone: str, ts: float) -> PodInfo:
        return PodInfo(name, "10.0.0.1", "n1", zone, ENTRY_SERVICE, ENTRY_SERVICE, "default", ts)

    inv = Inventory()
    for name, zone in (("fe-lax", "lax"), ("fe-phx-1", "phx"), ("fe-phx-2", "phx")):
        inv.added(frontend(name, zone, 1.0))
        inv.ready(name, 1.0)
    path = tmp_path / "entrypoints.jsonl"
    mon = EntryMonitor({"lax": "http://lax", "phx": "http://phx"}, inv, path)
    mon.check = lambda zone, url: (True, "") if mon._serving(zone) else (False, "no ready frontend pod")  # type: ignore[method-assign]

    def recs() -> list[tuple[str, bool, float | None]]:
        lines = map(json.loads, path.read_text().splitlines())
        return [(r["zone"], r["up"], r["ts"] if not r["up"] else None) for r in lines]

    mon.start()
    try:
        assert wait_until(lambda: len(recs()) == 2, 60)  # each zone's first probe
        inv.removed("fe-lax", ts=5.0)  # lax's only frontend
        inv.added(frontend("fe-lax-2", "lax", 5.1))
        inv.ready("fe-lax-2", ts=5.4)
        inv.removed("fe-phx-1", ts=6.0)  # phx keeps one: still up
        assert wait_until(lambda: len(recs()) == 4, 60)  # lax's next probe (woken by the ready)
    finally:
        mon.stop()
    assert sorted(recs()[:2]) == [("lax", True, None), ("phx", True, None)]
    # down at the event's own time (a probe would stamp its own, seconds after 5.0), then up again; phx stays up
    assert recs()[2:] == [("lax", False, 5.0), ("lax", True, None)]


def test_entry_monitor_a_hung_zone_does_not_hold_back_the_others(tmp_path: Path) -> None:
    """A probe waits up to a user's 10 s for an answer; while one zone's probe hangs, another zone's entry point
    going down is still recorded (one loop over the zones held every other zone's record back behind it)."""
    from harness.backends.kube.backend import ENTRY_SERVICE, EntryMonitor
    from harness.contract.inventory import PodInfo

    inv = Inventory()
    for zone in ("lax", "phx"):
        inv.added(PodInfo(f"fe-{zone}", "10.0.0.1", "n1", zone, ENTRY_SERVICE, ENTRY_SERVICE, "default", 1.0))
        inv.ready(f"fe-{zone}", 1.0)
    path = tmp_path / "entrypoints.jsonl"
    mon = EntryMonitor({"lax": "http://lax", "phx": "http://phx"}, inv, path)
    started, release, phx_up = threading.Event(), threading.Event(), threading.Event()
    phx_up.set()
    on_callers_thread: list[str] = []
    caller = threading.get_ident()

    def check(zone: str, url: str) -> tuple[bool, str]:
        if threading.get_ident() == caller:
            on_callers_thread.append(zone)  # start() probing on its caller's thread would hang it with lax
        if zone == "lax":
            started.set()
            release.wait(60)  # lax's load balancer hangs, from the first probe on
        return (True, "") if zone == "lax" or phx_up.is_set() else (False, "probe: HTTP 503")

    mon.check = check  # type: ignore[method-assign]
    mon.start()  # the backend calls it holding its lock: it must not wait for lax
    try:
        assert on_callers_thread == []
        assert started.wait(60)  # lax's probe is hanging
        phx_up.clear()  # phx's entry point answers 503 from now on
        assert wait_until(lambda: any(not json.loads(x)["up"] for x in path.read_text().splitlines()), 60)
        assert not release.is_set()  # ... recorded while lax's probe still hangs
        (down,) = [json.loads(x) for x in path.read_text().splitlines() if not json.loads(x)["up"]]
        assert (down["zone"], down["reason"]) == ("phx", "probe: HTTP 503")
    finally:
        release.set()
        mon.stop()


class _NotReady:
    """What `_why_not_ready` reads of a cluster: one Deployment and the pods its selector picks."""

    def __init__(self, pods: list[dict[str, Any]], refuse: bool = False) -> None:
        self._pods, self._refuse = pods, refuse

    def request(self, method: str, path: str, **_kw: Any) -> dict[str, Any]:
        if self._refuse:
            raise KubeApiError(403, method, path, "forbidden")
        return {"items": [{"metadata": {"name": "public-api"}, "spec": {"selector": {"matchLabels": {"app": "x"}}}}]}

    def pods(self, namespace: str | None = None, selector: Any = None) -> list[dict[str, Any]]:
        return self._pods


def _waiting(reason: str, message: str = "") -> dict[str, Any]:
    waiting = {"reason": reason, "message": message}
    return {"status": {"conditions": [{"type": "PodScheduled", "status": "True"}],
                       "containerStatuses": [{"name": "public-api", "state": {"waiting": waiting}}]}}  # fmt: skip


def test_a_deployment_left_waiting_says_its_containers_reason() -> None:
    """Past the scheduler, a pod that does not start says why in its container's waiting state (a Docker Hub
    pull refused, a crash loop): the ready wait's error carries it; ContainerCreating (still starting) and a
    cluster that will not say (403) add nothing."""
    from harness.backends.kube.apply import ApplyMixin

    why = ApplyMixin._why_not_ready
    pull = _waiting(
        "ImagePullBackOff", 'Back-off pulling image "hashicorpdemoapp/public-api:v0.0.7":\n toomanyrequests'
    )
    assert why(_NotReady([pull]), "ns", "public-api") == (  # type: ignore[arg-type]
        ' (public-api: ImagePullBackOff: Back-off pulling image "hashicorpdemoapp/public-api:v0.0.7": toomanyrequests)'
    )
    assert why(_NotReady([_waiting("ContainerCreating")]), "ns", "public-api") == ""  # type: ignore[arg-type]
    assert why(_NotReady([pull], refuse=True), "ns", "public-api") == ""  # type: ignore[arg-type]


def test_a_relay_closes_at_once_and_ends_its_accept_thread(tmp_path: Path) -> None:
    """`ForwardRelay.close` wakes its accept thread: closing the listening socket alone does not on Linux, so
    the thread stayed blocked in accept() and every close (one per Consul check) waited out a 5 s join."""
    from harness.backends.kube.forward import ForwardRelay

    relay = ForwardRelay([str(tmp_path / "no-kubectl")], "consul", "svc/consul-ui", 80)  # no connection: no kubectl
    ident = relay._thread.ident

    def in_accept() -> bool:  # the thread's innermost frame is socket.accept: it is blocked waiting for a client
        frame = sys._current_frames().get(ident) if ident is not None else None
        return frame is not None and frame.f_code.co_name == "accept"

    assert wait_until(in_accept, 10)
    t0 = time.monotonic()
    relay.close()
    took = time.monotonic() - t0
    assert not relay._thread.is_alive(), "the accept thread is still blocked in accept()"
    assert took < 4.0, took  # far below the join's 5 s timeout, which a thread still in accept() would wait out


def test_entry_probes_build_no_tls_context_per_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """`entry_answer` (the entry-point monitor probes each zone every second) reuses one verification context:
    `httpx.get` built a new one per call, parsing the CA bundle each time (CPU the run's other threads lose)."""
    import http.server
    import ssl

    from harness.backends.kube.backend import entry_answer

    built: list[int] = []
    real = ssl.create_default_context

    def counting(*a: Any, **kw: Any) -> ssl.SSLContext:
        built.append(1)
        return real(*a, **kw)

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        assert entry_answer(url) == ""  # warm: the one shared context may be built here
        monkeypatch.setattr(ssl, "create_default_context", counting)
        for _ in range(3):
            assert entry_answer(url) == ""
        assert built == [], f"{len(built)} SSL contexts built for 3 probes"
    finally:
        srv.shutdown()
        srv.server_close()
