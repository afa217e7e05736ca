"""First contact with the real thing (audit k55b): consul-k8s' pod webhook with no Consul server, kind's kept
clusters, kind's node runtime.

Each test names the real source it follows; the fakes (`tests.kubesim`) are made to behave as the real thing
first, then the harness is fixed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.kubefake import FakeApiServer
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kubesim import WebhookFailed
from tests.test_backend_existing import _cluster
from tests.test_backend_kind import Tools, kind_backend, up_refused, up_saying
from tests.test_backend_kind import tools as tools  # the fake tools on PATH, re-exported for pytest

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


# -- 2. kind: a kept cluster one of whose node containers is stopped --------------------------------------------
def _edge_node(api: FakeApiServer) -> str:
    sim = api.sim
    names = sim.call(lambda: sorted(n for n in sim.nodes if n.startswith("edge-worker")))
    assert names, names
    return str(names[-1])


@pytest.mark.parametrize("stopped_for", ["just-now", "long-ago"])
def test_up_reusing_a_kept_cluster_with_a_stopped_node_container_is_refused_naming_it(
    api: FakeApiServer, tools: Tools, tmp_path: Path, stopped_for: str
) -> None:
    """A kept kind cluster one of whose node containers is stopped (a `docker stop`, a run cut short between a
    node kill and its restore, Docker Desktop bringing back only some containers): the node is still a Node
    of the API (NotReady once the node controller sees no heartbeat, node-monitor-grace-period), its pods stay
    as objects (Ready until then; after the eviction timeout of the unreachable taint, 300 s, deleted but
    Terminating for ever: only the node's kubelet confirms a graceful delete, kubernetes pkg/registry/core/pod
    and the node lifecycle controller's docs, "Pods on an unreachable node stay Terminating until the node comes
    back or they are force-deleted"). Reused as it was, `up` installed into a cluster missing a node of the
    topology: refused now in one line naming it and the ways out, before the chart is installed."""
    up_saying(tmp_path)
    node = _edge_node(api)
    sim = api.sim
    sim.call(lambda: sim.node_down(node))
    if stopped_for == "long-ago":

        def age() -> None:
            sim.nodes[node].down_since = time.time() - 3600

        sim.call(age)
        assert wait_until(lambda: any(p["metadata"].get("deletionTimestamp") for p in sim.call(
            lambda: sim._pods_on(node))), 60)  # fmt: skip
    tools.reset()
    msg = up_refused(tmp_path)
    assert "\n" not in msg and node in msg and "docker start" in msg and "harness down" in msg, msg
    assert not [c for c in tools.calls() if c[:1] == ["helm"]], "refused before the chart is installed again"


def test_control_down_removes_a_kept_cluster_with_a_stopped_node_and_its_terminating_pods(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """Control: `down` (`kind delete cluster`, which removes every node container, running or not) needs no kubelet
    to confirm anything; the cluster is gone, and an up after it creates a new one."""
    up_saying(tmp_path)
    node = _edge_node(api)
    sim = api.sim
    sim.call(lambda: sim.node_down(node))
    backend = kind_backend(tmp_path / "wd")
    try:
        backend.down()
        assert not backend.cluster_exists()
    finally:
        backend.close()


def test_control_a_kept_cluster_whose_stopped_node_was_started_again_is_reused(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """Control: the way out the refusal names. The node `docker start`ed again, `up` reuses the cluster."""
    up_saying(tmp_path)
    node = _edge_node(api)
    sim = api.sim
    sim.call(lambda: sim.node_down(node))
    sim.call(lambda: sim.node_up(node))
    said = up_saying(tmp_path)
    assert any("exists: reusing it" in s for s in said), said


# -- 3. kind: KIND_EXPERIMENTAL_PROVIDER names another runtime than the `docker` the backend drives -----------------
# kind pkg/internal/runtime/runtime.go GetDefault: KIND_EXPERIMENTAL_PROVIDER=podman (nerdctl, finch) makes kind use
# that runtime, without looking for Docker; pkg/cluster/provider.go DetectNodeProvider looks for Docker (`docker -v`
# saying "Docker version") only when it is unset. The backend stops, starts, enters and reads the nodes with `docker`.


def test_the_fake_kind_makes_the_nodes_with_the_runtime_kind_experimental_provider_names(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fake's likeness: with KIND_EXPERIMENTAL_PROVIDER=podman kind's nodes are podman's, so Docker has no
    such container, and `kind get clusters` lists the cluster only with the variable set (kind asks the runtime)."""
    import subprocess

    monkeypatch.setenv("KIND_EXPERIMENTAL_PROVIDER", "podman")
    cfg = tmp_path / "kind.yaml"
    cfg.write_text("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: control-plane\n- role: worker\n")
    made = subprocess.run(["kind", "create", "cluster", "--name", "edge", "--config", str(cfg), "--kubeconfig",
                           str(tmp_path / "kc")], capture_output=True, text=True)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "using podman due to KIND_EXPERIMENTAL_PROVIDER" in made.stderr
    stop = subprocess.run(["docker", "stop", "edge-worker"], capture_output=True, text=True)
    assert stop.returncode == 1 and "No such container: edge-worker" in stop.stderr, stop
    listed = subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True)
    assert listed.stdout.split() == ["edge"]
    monkeypatch.delenv("KIND_EXPERIMENTAL_PROVIDER")
    assert subprocess.run(["kind", "get", "clusters"], capture_output=True, text=True).stdout.split() == []


def test_up_with_kind_experimental_provider_naming_another_runtime_than_docker_is_refused_before_create(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A laptop set up for rootless podman (KIND_EXPERIMENTAL_PROVIDER=podman exported) with Docker installed too:
    kind made podman's nodes, and `up` failed reading them with Docker (`docker inspect`: "No such object"; a node
    kill, `docker stop`, would have met "No such container"). Refused now in one line naming the variable and
    the ways out, before `kind create`."""
    monkeypatch.setenv("KIND_EXPERIMENTAL_PROVIDER", "podman")
    msg = up_refused(tmp_path)
    assert "\n" not in msg and "KIND_EXPERIMENTAL_PROVIDER=podman" in msg and "Docker version" in msg, msg
    assert not [c for c in tools.calls() if c[:2] == ["kind", "create"]], "refused before the cluster is created"


@pytest.mark.parametrize("value", ["docker", "unset"])
def test_control_kind_experimental_provider_docker_or_unset_comes_up(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """Control: Docker named, or nothing named (kind finds Docker), `up` creates the cluster as before."""
    if value == "unset":
        monkeypatch.delenv("KIND_EXPERIMENTAL_PROVIDER", raising=False)
    else:
        monkeypatch.setenv("KIND_EXPERIMENTAL_PROVIDER", value)
    up_saying(tmp_path)
    assert [c for c in tools.calls() if c[:2] == ["kind", "create"]]
