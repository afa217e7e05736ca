"""First contact with kind (audit a44k): what a real cluster does after a chaos restore that the fakes did not.

Each test names the real source it follows. The simulated cluster (`tests.kubesim`) is made to behave as
Kubernetes and the chart do first, then the harness is fixed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.backends.kind import KindBackend, cluster_images
from harness.errors import BackendError
from harness.render.helm import region_azs
from harness.render.manifests import Manifests
from harness.topology import load_topology
from tests.conftest import REPO, wait_until
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kubesim import WebhookFailed
from tests.test_backend_kind import Tools, kind_backend
from tests.test_backend_kind import tools as tools  # the fake tools on PATH, re-exported for pytest

pytestmark = pytest.mark.slow  # a fake API server and fake tools per test: seconds each

LAX_NS = "us-west-2-lax-1a"


@pytest.fixture
def up(api: FakeApiServer, tools: Tools, tmp_path: Path) -> Iterator[tuple[KindBackend, Manifests]]:
    m = rendered(tmp_path)
    api.sim.host_images.update(cluster_images(m))
    backend = kind_backend(tmp_path / "wd")
    backend.up(m)
    yield backend, m
    backend.close()


def _manager_node(api: FakeApiServer, ns: str = "consul") -> str:
    """The node of Consul's one webhook-cert-manager (Consul installed in `ns`)."""
    sim = api.sim
    pods = sim.call(lambda: [p for p in sim.items("v1", "pods", ns)
                             if p["metadata"]["labels"].get("component") == "webhook-cert-manager"])  # fmt: skip
    assert len(pods) == 1, pods
    return str(pods[0]["spec"]["nodeName"])


def _pod(name: str) -> dict[str, Any]:
    spec = {"containers": [{"name": "c", "image": "x"}]}
    return {"metadata": {"name": name, "labels": {"app": "probe"}}, "spec": spec}


def _admitted(api: FakeApiServer, ns: str, name: str) -> str:
    """'' when the API server admits a new pod now, else its refusal."""
    sim = api.sim

    def create() -> str:
        try:
            sim.create("v1", "pods", ns, _pod(name), dry_run=True)
        except WebhookFailed as exc:
            return str(exc)
        return ""

    return str(sim.call(create))


def _ns_of(m: Manifests) -> str:
    return next(str(o["metadata"]["namespace"]) for o in m.objects
                if o["kind"] == "Deployment" and o["metadata"]["namespace"] != "consul")  # fmt: skip


def _restore_meeting_the_window(api: FakeApiServer, fault_and_restore: Any, ns: str) -> tuple[int, list[str], str]:
    """Run `fault_and_restore` with the injector's kubelet syncing its Secret volume only once a pod was refused
    (the restore met the window): never before, so a restore that does not wait returns into it. The manager's
    CA generation, the refusals seen, and whether a pod created right after the restore is admitted ('')."""
    sim = api.sim
    sim.t.secret_volume_sync_s = None
    stop = threading.Event()

    def kubelet_sync() -> None:
        met = wait_until(lambda: stop.is_set() or bool(sim.call(lambda: list(sim.webhook_refusals))), timeout=120)
        if met and not stop.is_set():
            sim.call(sim.sync_webhook_cert)

    syncer = threading.Thread(target=kubelet_sync, daemon=True)
    syncer.start()
    try:
        fault_and_restore()
        restarted = int(sim.call(lambda: sim.consul.webhook_ca))
        refused = list(sim.call(sim.webhook_refusals.copy))
        now = _admitted(api, ns, "after-restore")
    finally:
        stop.set()
        syncer.join(timeout=130)
    return restarted, refused, now


def test_a_node_restore_returns_only_once_the_api_admits_pods_again(
    up: tuple[KindBackend, Manifests], api: FakeApiServer
) -> None:
    """The chart's webhook-cert-manager is pinned (its only placement knob is a nodeSelector) to the first AZ's
    node, which az-primary-loss stops: the postgres primary is there too. Its CA lives in memory only
    (consul-k8s v1.9.11 subcommand/webhook-cert-manager/command.go: cert.GenSource at every start), so the
    restart writes a new CA into the pod webhook's caBundle at once, while the injector serves the certificate
    of its mounted Secret until the kubelet syncs that volume (up to about a minute). The pod webhook has
    failurePolicy Fail (templates/connect-inject-mutatingwebhookconfiguration.yaml): every pod created meanwhile
    is refused, "x509: certificate signed by unknown authority". restore_node returned after kube-proxy's sync,
    before that window (often before the manager even restarted), so the next fault's replacement pods, and the
    harness's own probe pods, were refused for a time nothing sets. Here the kubelet's sync is held until the
    restore is seen waiting on a refused dry-run create; on the old code it never waits, and returns into the
    window."""
    backend, m = up
    topo = load_topology(REPO / "fixtures" / "topology.yaml")
    node = _manager_node(api)
    assert backend.nodes()[node] == region_azs(topo)[0]
    restarted, refused_at_return, now = _restore_meeting_the_window(
        api, lambda: (backend.kill_node(node), backend.restore_node(node)), _ns_of(m)
    )
    assert restarted == 2, "restore_node returned before the webhook-cert-manager started again (a new CA to come)"
    assert refused_at_return, "the restore never met the window it must wait out"
    assert now == "", f"a pod created right after restore_node is refused: {now}"


def test_a_zone_restore_waits_out_the_window_too(up: tuple[KindBackend, Manifests], api: FakeApiServer) -> None:
    """restore_zone (zone-outage) brings a whole zone back: with the manager's node among them, the same wait."""
    backend, m = up
    zone = backend.nodes()[_manager_node(api)]
    restarted, refused_at_return, now = _restore_meeting_the_window(
        api, lambda: (backend.zone_outage(zone), backend.restore_zone(zone)), _ns_of(m)
    )
    assert restarted == 2, "restore_zone returned before the webhook-cert-manager started again (a new CA to come)"
    assert refused_at_return, "the restore never met the window it must wait out"
    assert now == "", f"a pod created right after restore_zone is refused: {now}"


def test_a_restore_of_a_node_without_the_manager_asks_nothing_more(
    up: tuple[KindBackend, Manifests], api: FakeApiServer
) -> None:
    """Control: az-node-loss stops the other AZ's node; the manager keeps running, the CA stays, nothing is
    refused, and the restore makes no admission probe."""
    backend, m = up
    restore_elsewhere_asks_nothing(api, m, backend, backend.nodes(), "us-west-2b")


def restore_elsewhere_asks_nothing(
    api: FakeApiServer, m: Manifests, backend: Any, nodes: dict[str, str], zone: str, ns: str = "consul"
) -> None:
    """Stop and restore a node of `zone` (`nodes`: node -> zone) that does not run the webhook-cert-manager
    (Consul's, in `ns`): the CA stays, nothing is refused, and a pod is admitted at once (kind's and EKS's
    restores alike, with the chart installed by the run or by the operator)."""
    sim = api.sim
    sim.t.secret_volume_sync_s = None
    manager = _manager_node(api, ns)
    other = next(n for n, z in nodes.items() if z == zone)
    assert other != manager
    backend.kill_node(other)
    backend.restore_node(other)
    assert sim.call(lambda: sim.consul.webhook_ca) == 1
    assert sim.call(sim.webhook_refusals.copy) == []
    assert _admitted(api, _ns_of(m), "control") == ""


def test_the_simulated_webhook_refuses_pods_while_the_injector_serves_the_old_ca(
    up: tuple[KindBackend, Manifests], api: FakeApiServer
) -> None:
    """The fake's likeness: after the manager restarts and before the injector's kubelet syncs, a pod outside the
    excluded namespaces is refused (500, the API server's message), Consul's own pods (objectSelector app NotIn
    consul) and kube-system's (namespaceSelector) are not; after the sync every one is admitted."""
    _backend, m = up
    sim = api.sim
    sim.t.secret_volume_sync_s = None
    manager = _manager_node(api)
    sim.call(lambda: sim.node_down(manager))
    sim.call(lambda: sim.node_up(manager))
    assert wait_until(lambda: sim.call(lambda: sim.consul.webhook_ca) == 2, timeout=30)
    refusal = _admitted(api, _ns_of(m), "window")
    assert "x509: certificate signed by unknown authority" in refusal
    assert 'failed calling webhook "consul-connect-injector.consul.hashicorp.com"' in refusal
    assert _admitted(api, "kube-system", "system") == ""
    consul_pod = _pod("consul-own")
    consul_pod["metadata"]["labels"] = {"app": "consul"}
    assert sim.call(lambda: sim.create("v1", "pods", "consul", consul_pod, dry_run=True))["metadata"]["name"]
    sim.call(sim.sync_webhook_cert)
    assert _admitted(api, _ns_of(m), "after-sync") == ""


def test_a_window_that_never_closes_fails_the_restore_naming_it(
    up: tuple[KindBackend, Manifests], api: FakeApiServer
) -> None:
    """An injector that never gets the new certificate (its kubelet never syncs the Secret volume) leaves the
    cluster refusing every new pod: the restore says so in one line after its bound, instead of returning."""
    backend, _m = up
    sim = api.sim
    sim.t.secret_volume_sync_s = None  # never released here
    backend.ready_timeout_s = 3.0
    node = _manager_node(api)
    backend.kill_node(node)
    with pytest.raises(BackendError) as err:
        backend.restore_node(node)
    msg = str(err.value)
    assert "still refuses new pods" in msg and node in msg and "x509" in msg and "\n" not in msg, msg
