"""EKS with `--install-consul`: a node fault that took the chart's webhook-cert-manager down waits out the new CA.

The chart pins webhook-cert-manager by a nodeSelector to the first AZ (harness/render/helm.py); it keeps its CA in
memory only (consul-k8s v1.9.11 subcommand/webhook-cert-manager/command.go: cert.GenSource at every start), so a
restart puts a new CA into the pod webhook's caBundle at once while the injector serves its mounted Secret's old
certificate until the kubelet syncs that volume (up to about a minute); the webhook's failurePolicy is Fail, so
every pod CREATE outside kube-system/Consul's own is refused meanwhile. On EKS a node kill is cordon + delete: the
manager's replacement starts on a sibling node of its AZ at once, or (the AZ's only node cordoned) once the node
is uncordoned. Either way the restore must not return into the window: the next fault's replacements and the
harness's own probe pods would be refused for a time no config sets (the kind side: test_firstcontact_a44k.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.backends.existing import ExistingBackend
from harness.backends.kube import KubeCluster
from harness.render.manifests import Manifests
from tests.conftest import wait_until
from tests.kubefake import OPERATOR_ENV, FakeApiServer, fake_tools, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_existing import _backend, _cluster, eks_node
from tests.test_firstcontact_a44k import (
    _admitted,
    _ns_of,
    _restore_meeting_the_window,
    restore_elsewhere_asks_nothing,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def up(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ExistingBackend, Manifests]]:
    """An EKS-like cluster without Consul; the run installs it (`--install-consul`) and brings the shop up."""
    fake_tools(api, tmp_path, monkeypatch, OPERATOR_ENV)
    c = _cluster(api, tmp_path, consul={})
    b = _backend(api, tmp_path, ("eks-nightly",), install_consul=True, execute=True)
    m = rendered(tmp_path)
    b.up(m)
    assert c.pods("consul", {"component": "webhook-cert-manager"})
    yield b, m
    b.close()


MANAGER = {"component": "webhook-cert-manager"}


def managers(admin: KubeCluster, ns: str = "consul") -> list[dict[str, Any]]:
    """The chart's webhook-cert-manager pods, Consul installed in `ns` (by the run: `consul`)."""
    return admin.pods(ns, MANAGER)


def running_on(admin: KubeCluster, ns: str = "consul") -> list[str]:
    """The nodes a webhook-cert-manager of `ns` runs on (Running, not being deleted)."""
    return [str(p["spec"].get("nodeName")) for p in managers(admin, ns) if (p.get("status") or {}).get("phase")
            == "Running" and not p["metadata"].get("deletionTimestamp")]  # fmt: skip


def manager_alone(api: FakeApiServer, tmp_path: Path, ns: str = "consul") -> str:
    """The manager on a node of its own: a second node in its AZ, the manager moved there (its first node
    cordoned meanwhile, then uncordoned), the injector synced to its CA. Returns the manager's node.
    On the node with Consul's server and injector a node fault is refused (the blast radius's control-plane
    rule); on a multi-node AZ the manager often runs elsewhere, and that node may be killed."""
    sim, admin = api.sim, api.cluster(tmp_path, "admin")
    assert wait_until(lambda: len(running_on(admin, ns)) == 1, 30), running_on(admin, ns)
    (first,) = running_on(admin, ns)
    zone = admin.nodes()[first]
    api.seed(admin, eks_node("10.0.1.11", zone, "region-a"))
    second = next(n for n, z in admin.nodes().items() if z == zone and n != first)
    admin.cordon(first)
    for p in managers(admin, ns):
        admin.delete("v1", "Pod", ns, p["metadata"]["name"])
    assert wait_until(lambda: running_on(admin, ns) == [second], 30), running_on(admin, ns)
    assert wait_until(lambda: not sim.call(sim.webhook_refuses_pods), 30)
    admin.uncordon(first)
    return second


def drained_manager_restore_waits_out_its_ca(
    api: FakeApiServer, tmp_path: Path, up: tuple[ExistingBackend, Manifests], ns: str = "consul"
) -> None:
    """Kill and restore the node of a manager alone there (Consul in `ns`): its replacement starts with a new CA
    and the restore returns only once that CA is served, every admission probe granted by the context's role."""
    backend, m = up
    alone = manager_alone(api, tmp_path, ns)
    restarted, refused, now = _restore_meeting_the_window(
        api, lambda: (backend.kill_node(alone), backend.restore_node(alone)), _ns_of(m)
    )
    assert restarted == 3, "a new CA: the setup's move made the second"
    assert refused, "the restore never met the window it must wait out"
    assert now == "", f"a pod created right after restore_node is refused: {now}"
    assert api.sim.rbac_denials == [], "the admission probe is one the context's shipped role grants"


def test_eks_node_kill_that_drains_the_manager_returns_only_once_its_new_ca_is_served(
    up: tuple[ExistingBackend, Manifests], api: FakeApiServer, tmp_path: Path
) -> None:
    """The drained manager's replacement starts with a new CA (on the AZ's other node, or on the restored one
    once uncordoned, whichever the scheduler picks): the restore waits until that CA is served, including
    while the replacement does not exist yet (the old pod terminating), and no longer returns into the window."""
    drained_manager_restore_waits_out_its_ca(api, tmp_path, up)


def test_eks_node_kill_elsewhere_asks_nothing_more(up: tuple[ExistingBackend, Manifests], api: FakeApiServer) -> None:
    """Control: a Local Zone's node; the manager keeps running, the CA stays, no refusal, no probe needed."""
    backend, m = up
    restore_elsewhere_asks_nothing(api, m, backend, backend.cluster.nodes(), "us-west-2-lax-1a")


def test_eks_rollback_by_down_or_the_kill_switch_uncordons_without_waiting_for_the_window(
    up: tuple[ExistingBackend, Manifests], api: FakeApiServer, tmp_path: Path
) -> None:
    """The kill switch and `down` roll back at once: the node uncordoned and the ledger emptied even while the
    injector still serves the old CA (what follows is the teardown, not another fault)."""
    backend, m = up
    alone = manager_alone(api, tmp_path)
    sim = api.sim
    sim.t.secret_volume_sync_s = None  # the window stays open until a sync nobody makes here
    backend.kill_node(alone)
    assert wait_until(lambda: sim.call(sim.webhook_refuses_pods), 30), "the drained manager's replacement started"
    done = backend.rollback_active()
    assert len(done) == 1 and done[0].startswith("kill_node "), done
    assert not any(n.unschedulable for n in api.cluster(tmp_path, "admin").node_infos())
    assert backend.ledger.entries() == []
    assert "x509" in _admitted(api, _ns_of(m), "still-refused")  # it did not wait the window out
