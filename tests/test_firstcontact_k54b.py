"""First contact with the real thing (audit k54b): consul-k8s' pod webhook and controller, kind, the EKS nightly.

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
from tests.test_backend_existing import eks as eks  # the operator's EKS cluster, fake kubectl on PATH
from tests.test_firstcontact_k53b import UNUSABLE, USABLE, up_keeps_theirs, up_refused_untouched

pytestmark = pytest.mark.slow  # a fake API server per test: seconds each

# -- 2. proxy-defaults written by another datacenter's consul-k8s ---------------------------------------------------
# consul-k8s v1.9.11 controllers/configentries/configentry_controller.go: an entry in Consul whose
# consul.hashicorp.com/source-datacenter meta names another datacenter is not this controller's: a CRD that differs
# is refused (`!matchesConsul && !managedByThisDC && !hasMigrationKey` -> ExternallyManagedConfigError
# sourceDatacenterMismatchErr: 'config entry managed in different datacenter: "<dc>"'), and it is never deleted (the
# delete path removes only entries whose meta names its own datacenter). Meta naming its own datacenter: written over.

OTHER_DC = "us-east-1"


def _theirs_elsewhere(api: FakeApiServer, spec: dict[str, Any], dc: str = OTHER_DC) -> None:
    api.sim.call(lambda: api.sim.write_outside_kubernetes("ProxyDefaults", "global", spec, source_datacenter=dc))


def test_the_fake_controller_refuses_a_crd_over_another_datacenters_entry(api: FakeApiServer, eks: Any) -> None:
    """The fake's likeness: Consul's API shows the other datacenter's meta; a differing CRD is refused naming that
    datacenter; deleting the CRD leaves the entry (on 97f0bc4's fake there was no such entry to write)."""
    _theirs_elsewhere(api, {"config": {"protocol": "tcp"}})
    sim = api.sim
    shown = sim.call(lambda: sim.consul.entries[("ProxyDefaults", "global")])  # type: ignore[union-attr]
    assert shown == {"config": {"protocol": "tcp"}}
    spec = {"config": {"protocol": "http"}}
    crd = {"apiVersion": "consul.hashicorp.com/v1alpha1", "kind": "ProxyDefaults",
           "metadata": {"name": "global", "namespace": "default"}, "spec": spec}  # fmt: skip
    api.seed(eks, crd)
    path = "/apis/consul.hashicorp.com/v1alpha1/namespaces/default/proxydefaults/global"

    def cond() -> dict[str, Any]:
        live = eks.request("GET", path)
        return next((c for c in (live.get("status") or {}).get("conditions") or [] if c.get("status") != "Unknown"),
                    {})  # fmt: skip

    assert wait_until(lambda: bool(cond()), 30)
    assert cond()["status"] == "False", cond()
    assert cond()["message"] == f'config entry managed in different datacenter: "{OTHER_DC}"', cond()
    eks.request("DELETE", path)
    assert wait_until(lambda: not (eks.request("GET", "/apis/consul.hashicorp.com/v1alpha1/proxydefaults") or {})
                      .get("items"), 30)  # fmt: skip
    left = sim.call(lambda: sim.consul.entries[("ProxyDefaults", "global")])  # type: ignore[union-attr]
    assert left == {"config": {"protocol": "tcp"}}


@pytest.mark.parametrize("own", [False, True], ids=["plain", "own-mesh-defaults"])
def test_proxy_defaults_of_another_datacenter_without_usable_logs_is_refused_before_anything_is_applied(
    api: FakeApiServer, eks: Any, tmp_path: Path, own: bool
) -> None:
    """Before this fix up took the meta for this cluster's own, created the run's CRD over it, and consul-k8s refused
    it (Synced=False): preflight's gate stopped the night after up had applied everything (DID NOT RAISE)."""
    _theirs_elsewhere(api, UNUSABLE)
    msg = up_refused_untouched(api, tmp_path, UNUSABLE, own)
    assert repr(OTHER_DC) in msg and "no accessLogs" in msg, msg
    assert f'config entry managed in different datacenter: "{OTHER_DC}"' in msg, msg


def test_proxy_defaults_of_another_datacenter_with_usable_logs_is_kept_and_passes_preflight(
    api: FakeApiServer, eks: Any, tmp_path: Path
) -> None:
    _theirs_elsewhere(api, USABLE)
    said = up_keeps_theirs(api, eks, tmp_path, USABLE)
    assert any(f"datacenter {OTHER_DC}'s consul-k8s" in s and "kept as it is" in s for s in said), said


def test_control_proxy_defaults_whose_meta_names_this_datacenter_is_written_over_by_the_runs_crd(
    api: FakeApiServer, eks: Any, tmp_path: Path
) -> None:
    """Control: an entry this datacenter's controller wrote (its CRD gone) is the controller's to write over: up
    creates the run's CRD, which syncs, as before."""
    from tests.kubefake import rendered
    from tests.test_backend_existing import _backend, _proxy_defaults

    sim = api.sim
    theirs = {"config": {"protocol": "tcp"}}
    sim.call(lambda: sim.consul.entries.__setitem__(("ProxyDefaults", "global"), theirs))  # type: ignore[union-attr]
    # as the controller left it (its meta this datacenter's)
    b = _backend(api, tmp_path)
    try:
        b.up(rendered(tmp_path))
        assert len(_proxy_defaults(eks)) == 1, "the run's CRD"
        assert wait_until(lambda: [s.synced for s in b.config_entry_status() if s.kind == "ProxyDefaults"] == [True],
                          30)  # fmt: skip
    finally:
        b.down()
        b.close()
