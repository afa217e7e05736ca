"""EKS first contact (e46n): the operator's own Consul (no --install-consul) and a node fault that drains its
webhook-cert-manager.

The chart's webhook-cert-manager keeps its CA in memory only (consul-k8s v1.9.11 subcommand/webhook-cert-manager/
command.go: cert.GenSource at every start) and the pod webhook's failurePolicy is Fail (templates/connect-inject-
mutatingwebhookconfiguration.yaml), whoever ran `helm install`: a manager drained with its node starts again with a
new CA, and every pod CREATE is refused until the kubelet syncs the injector's Secret volume (up to about a minute).
The restore waited that window out only with --install-consul, and looked for the manager in the rendered release's
namespace only: with the operator's Consul (the least-privilege nightly, deploy/eks-nightly-rbac.yaml alone) the
restore returned into the window, and the next fault's replacements and the harness's own probe pods were refused
for a time no config sets. The dry-run pod create the wait makes is granted by the nightly role in every mode
(`permissions.NEEDS`: pods create in the run's namespaces), so the same wait runs here; a role without it is refused
by `up` before anything changes, in one line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.backends.existing import ExistingBackend
from harness.backends.kube import KubeCluster
from harness.errors import BackendError
from harness.render.manifests import Manifests
from tests import kubesim_tools
from tests.conftest import wait_until
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kuberbac import nightly_rules, without
from tests.test_backend_existing import CONTEXT, _backend, _cluster, eks_node
from tests.test_firstcontact_a44k import _admitted, _ns_of, _restore_meeting_the_window

pytestmark = pytest.mark.slow

OPERATOR_NS = "consul-system"
"""Not the rendered release's namespace (`consul`): the operator installed Consul where they chose."""


def _managers(admin: KubeCluster) -> list[dict[str, Any]]:
    return admin.pods(OPERATOR_NS, {"component": "webhook-cert-manager"})


def _running_on(admin: KubeCluster) -> list[str]:
    return [str(p["spec"].get("nodeName")) for p in _managers(admin) if (p.get("status") or {}).get("phase")
            == "Running" and not p["metadata"].get("deletionTimestamp")]  # fmt: skip


def _env(api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    kubesim_tools.install(bindir)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_API", api.url)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "argv.jsonl"))
    for k in ("EH_ENTRYPOINTS", "EH_ALLOW_CONTEXTS", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_CACERT"):
        monkeypatch.delenv(k, raising=False)


def _operator_cluster(api: FakeApiServer, tmp_path: Path) -> KubeCluster:
    """The EKS-like cluster with the operator's Consul (the rendered values) in a namespace of their own."""
    admin = _cluster(api, tmp_path, consul={})
    api.install_consul(rendered(tmp_path / "operator").helm_values, namespace=OPERATOR_NS)
    assert wait_until(lambda: (c := admin.find_consul()) is not None and c.servers_ready == 1, 60)
    assert wait_until(lambda: len(_running_on(admin)) == 1, 30)
    return admin


@pytest.fixture
def up(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ExistingBackend, Manifests]]:
    """The least-privilege nightly: the operator's Consul, the shop brought up by the harness, node faults allowed."""
    _env(api, tmp_path, monkeypatch)
    _operator_cluster(api, tmp_path)
    b = _backend(api, tmp_path, (CONTEXT,), execute=True)
    m = rendered(tmp_path)
    b.up(m)
    yield b, m
    b.close()


def _manager_alone(api: FakeApiServer, tmp_path: Path) -> str:
    """A second node in the manager's AZ, the manager moved there and the injector synced to its CA: the node a
    fault may stop (the first one runs Consul's server and injector, which the blast radius keeps)."""
    sim, admin = api.sim, api.cluster(tmp_path, "admin")
    (first,) = _running_on(admin)
    zone = admin.nodes()[first]
    api.seed(admin, eks_node("10.0.1.11", zone, "region-a"))
    second = next(n for n, z in admin.nodes().items() if z == zone and n != first)
    admin.cordon(first)
    for p in _managers(admin):
        admin.delete("v1", "Pod", OPERATOR_NS, p["metadata"]["name"])
    assert wait_until(lambda: _running_on(admin) == [second], 30), _running_on(admin)
    assert wait_until(lambda: not sim.call(sim.webhook_refuses_pods), 30)
    admin.uncordon(first)
    return second


def test_operator_consul_node_kill_that_drains_its_manager_returns_only_once_its_new_ca_is_served(
    up: tuple[ExistingBackend, Manifests], api: FakeApiServer, tmp_path: Path
) -> None:
    """Reproducer: without --install-consul the restore did not look for the manager (and looked in the rendered
    `consul` namespace when it did), so it returned while the API server still refused every new pod."""
    backend, m = up
    alone = _manager_alone(api, tmp_path)
    restarted, refused, now = _restore_meeting_the_window(
        api, lambda: (backend.kill_node(alone), backend.restore_node(alone)), _ns_of(m)
    )
    assert restarted == 3, "a new CA: the setup's move made the second"
    assert refused, "the restore never met the window it must wait out"
    assert now == "", f"a pod created right after restore_node is refused: {now}"
    assert api.sim.rbac_denials == [], "the admission probe is one deploy/eks-nightly-rbac.yaml grants"


def _dry_runs(api: FakeApiServer) -> int:
    return sum(1 for m, _p, q, _d in api.requests() if m == "POST" and q.get("dryRun") == "All")


def test_operator_consul_node_kill_elsewhere_asks_nothing_more(
    up: tuple[ExistingBackend, Manifests], api: FakeApiServer, tmp_path: Path
) -> None:
    """Control: a Local Zone's node; the manager keeps running, the CA stays, nothing refused, no probe made."""
    backend, m = up
    sim = api.sim
    sim.t.secret_volume_sync_s = None
    lax = next(n for n, z in backend.cluster.nodes().items() if z == "us-west-2-lax-1a")
    assert lax not in _running_on(api.cluster(tmp_path, "admin"))
    probes_before = _dry_runs(api)
    backend.kill_node(lax)
    backend.restore_node(lax)
    assert sim.call(lambda: sim.consul.webhook_ca) == 1
    assert sim.call(sim.webhook_refusals.copy) == []
    assert _dry_runs(api) == probes_before
    assert _admitted(api, _ns_of(m), "control") == ""


def test_a_role_without_the_probes_pod_create_is_refused_by_up_in_one_line(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other side of the decision: the admission probe needs `create pods` in the run's namespaces, which `up`
    asks the API server for before it changes anything; a role without it is refused there, in one line naming it,
    never halfway through a restore."""
    _env(api, tmp_path, monkeypatch)
    _operator_cluster(api, tmp_path)
    b = _backend(api, tmp_path, (CONTEXT,), execute=True)
    api.grant(CONTEXT, [*without(nightly_rules(), "", "pods", "create")])
    before = api.writes()
    with pytest.raises(BackendError) as err:
        b.up(rendered(tmp_path))
    b.close()
    text = str(err.value)
    assert "create pods (hashicups" in text and "\n" not in text and "deploy/eks-nightly-rbac.yaml" in text
    assert api.writes() == before
