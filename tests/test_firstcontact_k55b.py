"""First contact with the real thing (audit k55b): consul-k8s' pod webhook with no Consul server, kind's kept
clusters.

Each test names the real source it follows; the fakes (`tests.kubesim`) are made to behave as the real thing
first, then the harness is fixed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.kubefake import FakeApiServer
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kubesim import WebhookFailed
from tests.test_backend_existing import _cluster

pytestmark = pytest.mark.slow  # a fake API server per test: seconds each

# -- 1. the pod webhook reads proxy-defaults from a Consul server for every meshed pod --------------------------
MESH_NS = "mesh-probe"


def _pod(name: str, meshed: bool) -> dict[str, Any]:
    ann = {"consul.hashicorp.com/connect-inject": "true"} if meshed else {}
    spec = {"containers": [{"name": "c", "image": "x"}]}
    return {"metadata": {"name": name, "labels": {"app": "probe"}, "annotations": ann}, "spec": spec}


def _admitted(api: FakeApiServer, name: str, meshed: bool) -> str:
    """'' when the API server admits the pod now (a dry run: admission runs, nothing is stored), else why not."""
    sim = api.sim

    def create() -> str:
        try:
            sim.create("v1", "pods", MESH_NS, _pod(name, meshed), dry_run=True)
        except WebhookFailed as exc:
            return str(exc)
        return ""

    return str(sim.call(create))


def _server_node(api: FakeApiServer) -> str:
    sim = api.sim
    pods = sim.call(lambda: [p for p in sim.items("v1", "pods", "consul")
                             if p["metadata"]["labels"].get("component") == "server"])  # fmt: skip
    assert len(pods) == 1, pods
    return str(pods[0]["spec"]["nodeName"])


def test_the_simulated_webhook_refuses_a_meshed_pod_while_no_consul_server_answers(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """The fake's likeness. Since consul-k8s 1.9.2 the pod webhook reads the global proxy-defaults from Consul for
    every pod it injects (v1.9.11 control-plane/connect-inject/webhook/mesh_webhook.go Handle ->
    mountAdditionalAccessLogVolume -> control-plane/consul/proxydefaults.go FetchProxyDefaultsFromConsul: only a
    404 is taken as no entry; any other error is admission.Errored(500), a denial the failurePolicy does not
    cover). With the server's node stopped a meshed pod is refused, naming the fetch; an unmeshed pod is not
    (the webhook injects nothing into it); with the server back the meshed pod is admitted. On the base's fake
    (58bb9be took the model back) the meshed pod was admitted with no server at all."""
    _cluster(api, tmp_path)
    sim = api.sim
    sim.call(lambda: sim.ensure_namespace(MESH_NS))
    server = _server_node(api)
    sim.call(lambda: sim.node_down(server))
    refusal = _admitted(api, "meshed-without-server", meshed=True)
    assert 'connect-injector.consul.hashicorp.com" denied the request' in refusal
    assert "error fetch proxy-defaults from consul" in refusal
    assert sim.call(sim.proxy_defaults_refusals.copy) == [f"{MESH_NS}/meshed-without-server"]
    assert _admitted(api, "plain-without-server", meshed=False) == ""
    sim.call(lambda: sim.node_up(server))
    assert wait_until(lambda: _admitted(api, "meshed-server-back", meshed=True) == "", timeout=60)


def test_control_a_meshed_pod_is_admitted_while_the_server_answers(api: FakeApiServer, tmp_path: Path) -> None:
    """Control: the server running, meshed and unmeshed pods are admitted and nothing is refused."""
    _cluster(api, tmp_path)
    sim = api.sim
    sim.call(lambda: sim.ensure_namespace(MESH_NS))
    assert _admitted(api, "meshed", meshed=True) == ""
    assert _admitted(api, "plain", meshed=False) == ""
    assert sim.call(sim.proxy_defaults_refusals.copy) == []


def test_a_deployments_pod_refused_while_no_server_answers_is_created_once_it_answers(
    api: FakeApiServer, tmp_path: Path
) -> None:
    """The refusal is a FailedCreate of the ReplicaSet controller, which tries again on its next sync
    (kubernetes pkg/controller/replicaset: a failed create is an error, the ReplicaSet requeued with backoff): a
    meshed Deployment applied while the server is down has no pod, with the webhook's message in its event, and
    gets its pod once the server is back. This is why `up` waits for the chart (helm --wait) first."""
    c = _cluster(api, tmp_path)
    sim = api.sim
    sim.call(lambda: sim.ensure_namespace(MESH_NS))
    server = _server_node(api)
    sim.call(lambda: sim.node_down(server))
    labels = {"app": "probe"}
    template = {"metadata": {"labels": labels, "annotations": {"consul.hashicorp.com/connect-inject": "true"}},
                "spec": {"containers": [{"name": "c", "image": "x"}]}}  # fmt: skip
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "probe", "namespace": MESH_NS},
           "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": template}}  # fmt: skip
    api.seed(c, dep)

    def refused() -> bool:
        events = c.request("GET", f"/api/v1/namespaces/{MESH_NS}/events")["items"]
        return any(e["reason"] == "FailedCreate" and "error fetch proxy-defaults" in e["message"] for e in events)

    assert wait_until(refused, 60)
    assert not c.pods(MESH_NS)
    sim.call(lambda: sim.node_up(server))
    assert wait_until(lambda: len(c.pods(MESH_NS)) == 1, 60)
