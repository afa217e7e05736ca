"""k53b: kind and EKS meet the real thing, third pass (first contact of a user's own topology with the real pods).

Each finding: a reproducer that failed on c7a14e6 and a control that the correct case still passes.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.errors import BackendError, InputError
from harness.render import render, write
from harness.render.hashicups import NGINX_PORT
from harness.render.manifests import Manifests, load
from harness.topology import parse_topology
from harness.topology.model import Edition
from tests.conftest import REPO, wait_until
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_existing import eks as eks  # the operator's EKS cluster, fake kubectl on PATH
from tests.test_backend_kind import Tools, kind_backend, up_saying
from tests.test_backend_kind import tools as tools  # the fake tools on PATH, re-exported for pytest


def _base() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "fixtures" / "topology.yaml").read_text())
    return copy.deepcopy(data)


def _with(service: dict[str, Any], caller: str | None = None) -> dict[str, Any]:
    """The default topology plus a service of the user's own, called by `caller` (None: by nobody)."""
    data = _base()
    data["services"].append(service)
    if caller is not None:
        svc = next(s for s in data["services"] if s["name"] == caller)
        svc["upstreams"] = [*svc.get("upstreams", []), service["name"]]
    return data


def _refused(data: dict[str, Any]) -> InputError:
    with pytest.raises(InputError) as info:
        parse_topology(data, "t.yaml")
    return info.value


# -- 1. a service port the injected sidecar (or the pod's own nginx / metrics) already binds in the pod -------------
# consul-k8s v1.9.11's connect-inject webhook (control-plane/connect-inject/webhook/consul_dataplane_sidecar.go) runs
# consul-dataplane in every meshed pod with Envoy's public listener on 20000 (constants.ProxyDefaultInboundPort),
# its admin on 127.0.0.1:19000 and `-graceful-port=20600` (chart connectInject.sidecarProxy.lifecycle.
# defaultGracefulPort), whose listener consul-dataplane "always starts" on 127.0.0.1 (pkg/consuldp/lifecycle.go);
# each upstream of the pod is an Envoy listener on 127.0.0.1:<the upstream's port>. A service of the user's own on
# one of these ports met EADDRINUSE in its pod (the app or the sidecar crash-looping: `up` timed out) or in its
# callers' (Envoy refuses the upstream's listener: every call to it failed), with nothing naming the port.


@pytest.mark.parametrize("port", [19000, 20000, 20600])
def test_a_service_on_a_port_the_injected_sidecar_binds_is_refused_naming_it(port: int) -> None:
    err = _refused(_with({"name": "inventory", "placement": "region", "image": "nginx:1.27-alpine", "port": port}))
    assert err.field == "services[5].port", str(err)
    assert str(port) in str(err) and "consul-dataplane" in str(err), str(err)


def test_an_upstream_on_the_frontend_pods_nginx_port_is_refused() -> None:
    """The frontend pod's nginx listens on 80; its upstream listeners are 127.0.0.1:<the upstream's port>."""
    service = {"name": "catalog", "placement": "region", "image": "nginx:1.27-alpine", "port": NGINX_PORT}
    err = _refused(_with(service, caller="frontend"))
    assert err.field == "services[5].port", str(err)
    assert "nginx" in str(err) and "frontend" in str(err), str(err)


def test_an_upstream_on_product_apis_metrics_port_is_refused() -> None:
    """product-api's conf.json binds its metrics on :9103 (render.hashicups.product_api_conf)."""
    service = {"name": "pricing", "placement": "region", "image": "nginx:1.27-alpine", "port": 9103}
    err = _refused(_with(service, caller="product-api"))
    assert err.field == "services[5].port", str(err)
    assert "9103" in str(err) and "product-api" in str(err), str(err)


def test_control_the_same_ports_where_no_pod_binds_them_twice_are_taken() -> None:
    """Port 80 or 9103 in a pod without nginx or product-api's metrics, and a port beside the sidecar's, load and
    render: the check is the pod's, not a list of forbidden numbers."""
    for service, caller in [
        ({"name": "catalog", "placement": "region", "image": "nginx:1.27-alpine", "port": NGINX_PORT}, "public-api"),
        ({"name": "pricing", "placement": "region", "image": "nginx:1.27-alpine", "port": 9103}, "public-api"),
        ({"name": "inventory", "placement": "region", "image": "nginx:1.27-alpine", "port": 20001}, "product-api"),
    ]:
        t = parse_topology(_with(service, caller=caller), "t.yaml")
        assert render(t, Edition.CE).objects


def test_control_the_shipped_topologies_load(tmp_path: Path) -> None:
    for name in ("topology.yaml", "topology-wide.yaml", "topology-eu.yaml"):
        parse_topology(yaml.safe_load((REPO / "fixtures" / name).read_text()), name)


# -- 2. kind: a kept cluster re-upped with another topology of the same nodes kept the first one's workloads --------
# The shape check (b11a3d3, 29f20ea) holds a reused cluster's nodes and published ports to the kind config, nothing
# else: `harness up` of a topology whose nodes are the same but whose services differ applied the new objects over
# the old ones and left every Deployment the new render does not have running, meshed and selected by the Services
# they always were (Kubernetes only does what it is asked: nothing deletes what is no longer applied).


def _kind_manifests(tmp_path: Path, name: str, data: dict[str, Any]) -> Manifests:
    out = tmp_path / name
    write(render(parse_topology(data, f"{name}.yaml"), Edition.CE), out)
    return load(out)


def _two_primaries() -> dict[str, Any]:
    """The default topology's nodes with postgres as two Region pods (one per AZ) and no read replica."""
    data = _base()
    data["services"] = [s for s in data["services"] if s["name"] != "postgres-replica"]
    next(s for s in data["services"] if s["name"] == "postgres")["replicas"] = 2
    return data


@pytest.mark.slow  # a fake API server and fake tools: seconds
def test_a_kept_cluster_running_another_topologys_workloads_is_refused_not_reused(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """A cluster up'd from a topology with postgres in both AZs (postgres-2a, postgres-2b), then up'd from the default
    one (postgres-2a, and its read replica in 2b): postgres-2b stayed, labelled app=postgres, selected by the
    `postgres` Service, so consul-k8s' endpoints controller kept it in Consul's catalog as a second `postgres` (an
    independent primary the callers' Envoys balanced over, the replica's WAL stream among them). az-primary-loss,
    declared a single point of failure, then stopped a node while the other primary served: the run judged a
    topology it did not run. Refused now in one line naming them, before anything is installed."""
    first = kind_backend(tmp_path / "wd")
    try:
        first.up(_kind_manifests(tmp_path, "two-primaries", _two_primaries()))
    finally:
        first.close()
    tools.reset()
    again = kind_backend(tmp_path / "wd")
    try:
        with pytest.raises(BackendError) as err:
            again.up(_kind_manifests(tmp_path, "default", _base()))
    finally:
        again.close()
    msg = str(err.value)
    assert "\n" not in msg and "kind cluster edge" in msg, msg
    assert "hashicups/postgres-2b" in msg and "harness down" in msg, msg
    assert not [c for c in tools.calls() if c[:1] == ["helm"]], "refused before the chart is installed again"


@pytest.mark.slow
def test_control_a_kept_cluster_of_the_same_topology_and_one_being_emptied_are_reused(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """The same render again is reused (its Deployments are the render's); so is one whose extra Deployment is
    already being deleted (a deletionTimestamp: on its way out, nothing to refuse)."""
    m = _kind_manifests(tmp_path, "default", _base())
    for _ in range(2):
        said = up_saying(tmp_path, m)
    assert any("exists: reusing it" in s for s in said), said
    extra = {"metadata": {"name": "left-2b", "namespace": "hashicups", "labels": {"app.kubernetes.io/managed-by":
             "edge-harness"}, "finalizers": ["example.com/hold"]}}  # fmt: skip
    api.sim.create("apps/v1", "deployments", "hashicups", {**extra, "spec": {"replicas": 0, "selector": {"matchLabels":
                   {"app": "left"}}, "template": {"metadata": {"labels": {"app": "left"}}, "spec": {"containers": [
                   {"name": "c", "image": "nginx:1.27-alpine"}]}}}})  # fmt: skip
    api.sim.delete("apps/v1", "deployments", "hashicups", "left-2b")
    b = kind_backend(tmp_path / "wd")
    try:
        b.up(m)
    finally:
        b.close()


# -- 3. EKS: the operator's ProxyDefaults, kept or taken over, was looked for where the run's would have been -------
# Consul has one `global` ProxyDefaults per datacenter, whichever Kubernetes namespace its CRD lives in, and up keeps
# the operator's (its access logs usable) or, with --own-mesh-defaults, writes the run's into the operator's object
# (plan_mesh_defaults). The sync status preflight's `crd-synced` gates on was read at the manifests' own place
# (consul/global): none there, "NotFound", and the gate stopped every such night before its traffic.


def _their_usable_proxy_defaults(m: Manifests) -> dict[str, Any]:
    ours = next(o for o in m.consul_objects if o["kind"] == "ProxyDefaults")
    return {**ours, "metadata": {"name": "global", "namespace": "platform"}}


@pytest.mark.slow
@pytest.mark.parametrize("own", [False, True], ids=["kept", "taken-over"])
def test_the_operators_proxy_defaults_kept_or_taken_over_passes_preflights_sync_check(
    api: FakeApiServer, eks: Any, tmp_path: Path, own: bool
) -> None:
    from harness.preflight import run_preflight
    from tests.test_backend_existing import THEIR_PROXY_DEFAULTS, _backend

    m = rendered(tmp_path)
    api.seed(eks, THEIR_PROXY_DEFAULTS if own else _their_usable_proxy_defaults(m))
    b = _backend(api, tmp_path, own_mesh_defaults=own)
    try:
        b.up(m)
        (st,) = [s for s in b.config_entry_status() if s.kind == "ProxyDefaults"]
        assert st.synced is True, st
        result = run_preflight(b, settle_s=30)
        bad = [c for c in result.failures if c.check == "crd-synced"]
        assert bad == [], bad
    finally:
        b.down()
        b.close()


@pytest.mark.slow
def test_control_the_runs_own_proxy_defaults_is_read_where_it_was_applied(
    api: FakeApiServer, eks: Any, tmp_path: Path
) -> None:
    """With no ProxyDefaults on the cluster the run creates its own at the manifests' place and reads it there; once
    it is gone (deleted behind the run's back) the status says NotFound, as for any other entry."""
    from tests.test_backend_existing import _backend

    b = _backend(api, tmp_path)
    try:
        b.up(rendered(tmp_path))
        (st,) = [s for s in b.config_entry_status() if s.kind == "ProxyDefaults"]
        assert (st.namespace, st.synced) == ("consul", True), st
        eks.request("DELETE", "/apis/consul.hashicorp.com/v1alpha1/namespaces/consul/proxydefaults/global")
        gone = [s for s in b.config_entry_status() if s.kind == "ProxyDefaults"]
        assert wait_until(lambda: [s.reason for s in b.config_entry_status() if s.kind == "ProxyDefaults"] ==
                          ["NotFound"], 30), gone  # fmt: skip
    finally:
        b.close()


# -- 4. EKS: the operator's ProxyDefaults written in Consul itself, not as a CRD -----------------------------------
# Many platform teams write Consul's mesh-wide defaults with `consul config write` or Terraform's
# consul_config_entry. Such an entry has no `consul.hashicorp.com/source-datacenter` meta, and consul-k8s v1.9.11's
# controller never overwrites it: a CRD of that name that differs is Synced=False, ExternallyManagedConfigError,
# "config entry already exists in Consul" (controllers/configentries/configentry_controller.go, `!matchesConsul &&
# !managedByThisDC && !hasMigrationKey`, sourceDatacenterMismatchErr("")). up looked for a CRD only: it created the
# run's, which never synced (the fake overwrote Consul's entry, and deleted it on down); preflight's gate then
# stopped the night, for a reason --own-mesh-defaults could not help with.


def _theirs_in_consul(api: FakeApiServer, spec: dict[str, Any]) -> None:
    api.sim.call(lambda: api.sim.write_outside_kubernetes("ProxyDefaults", "global", spec))


UNUSABLE = {"config": {"protocol": "http"}, "meshGateway": {"mode": "local"}}  # an operator's entry without accessLogs
USABLE = {"accessLogs": {"enabled": True}, "config": {"protocol": "http"}}


def up_refused_untouched(api: FakeApiServer, tmp_path: Path, theirs: dict[str, Any], own: bool) -> str:
    """`up` of an EKS backend (`own_mesh_defaults=own`) over an operator's Consul-side proxy-defaults `theirs`, which
    it must refuse before writing anything, the entry left as it was; returns the refusal's one line."""
    from tests.test_backend_existing import _backend

    before = [(m, p) for m, p, _d in api.writes()]
    b = _backend(api, tmp_path, own_mesh_defaults=own)
    try:
        with pytest.raises(BackendError) as err:
            b.up(rendered(tmp_path))
    finally:
        b.close()
    msg = str(err.value)
    assert "\n" not in msg and "proxy-defaults global" in msg, msg
    assert [(m, p) for m, p, _d in api.writes()] == before, "refused before anything was applied"
    assert api.sim.consul is not None and api.sim.consul.entries[("ProxyDefaults", "global")] == theirs
    return msg


def up_keeps_theirs(api: FakeApiServer, eks: Any, tmp_path: Path, theirs: dict[str, Any]) -> list[str]:
    """`up` of an EKS backend over an operator's Consul-side proxy-defaults `theirs` with usable access logs: no CRD
    of the run's over it, preflight's sync check passes, and `down` leaves it as it was; returns what up said."""
    from harness.preflight import run_preflight
    from tests.test_backend_existing import _backend, _proxy_defaults

    said: list[str] = []
    b = _backend(api, tmp_path, progress=said.append)
    try:
        b.up(rendered(tmp_path))
        assert _proxy_defaults(eks) == [], "no CRD of the run's over the operator's entry"
        assert any("kept as it is" in s for s in said), said
        result = run_preflight(b, settle_s=30)
        assert [c for c in result.failures if c.check == "crd-synced"] == []
    finally:
        b.down()
        b.close()
    assert api.sim.consul is not None and api.sim.consul.entries[("ProxyDefaults", "global")] == theirs
    return said


@pytest.mark.slow
@pytest.mark.parametrize("own", [False, True], ids=["plain", "own-mesh-defaults"])
def test_proxy_defaults_written_in_consul_without_usable_logs_is_refused_before_anything_is_applied(
    api: FakeApiServer, eks: Any, tmp_path: Path, own: bool
) -> None:
    _theirs_in_consul(api, UNUSABLE)
    msg = up_refused_untouched(api, tmp_path, UNUSABLE, own)
    assert "written in Consul" in msg and "it has no accessLogs" in msg, msg
    assert "config entry already exists in Consul" in msg, msg


@pytest.mark.slow
def test_proxy_defaults_written_in_consul_with_usable_logs_is_kept_and_passes_preflight(
    api: FakeApiServer, eks: Any, tmp_path: Path
) -> None:
    _theirs_in_consul(api, USABLE)
    said = up_keeps_theirs(api, eks, tmp_path, USABLE)
    assert any("proxy-defaults global in Consul" in s and "kept as it is" in s for s in said), said


@pytest.mark.slow
def test_control_the_fake_controller_syncs_a_crd_matching_the_entry_written_in_consul(
    api: FakeApiServer, eks: Any, tmp_path: Path
) -> None:
    """The fake's likeness: a CRD equal to what Consul holds is Synced and the entry left as it is (the controller's
    `case configEntry.SyncedConditionStatus() != True: syncSuccessful`); one that differs is refused."""
    for spec, synced in [({"config": {"protocol": "tcp"}}, True), ({"config": {"protocol": "http"}}, False)]:
        _theirs_in_consul(api, {"config": {"protocol": "tcp"}})
        crd = {"apiVersion": "consul.hashicorp.com/v1alpha1", "kind": "ProxyDefaults",
               "metadata": {"name": "global", "namespace": "default"}, "spec": spec}  # fmt: skip
        api.seed(eks, crd)
        path = "/apis/consul.hashicorp.com/v1alpha1/namespaces/default/proxydefaults/global"

        def cond(path: str = path) -> dict[str, Any]:
            live = eks.request("GET", path)
            return next((c for c in (live.get("status") or {}).get("conditions") or [] if c.get("status") != "Unknown"),
                        {})  # fmt: skip

        assert wait_until(lambda: bool(cond()), 30)
        assert (cond()["status"] == "True") is synced, cond()
        if not synced:
            assert cond()["message"] == "config entry already exists in Consul", cond()
        eks.request("DELETE", path)
        assert wait_until(lambda: not (eks.request("GET", "/apis/consul.hashicorp.com/v1alpha1/proxydefaults") or {})
                          .get("items"), 30)  # fmt: skip
        assert api.sim.consul is not None and api.sim.consul.entries[("ProxyDefaults", "global")] == {
            "config": {"protocol": "tcp"}}  # fmt: skip


# -- 5. a service named like the chart's own pods ---------------------------------------------------------------------
# The chart's pod webhook (consul-k8s v1.9.11 templates/connect-inject-mutatingwebhookconfiguration.yaml) is called
# only for pods whose label `app` is not `consul` (objectSelector `app NotIn [consul]`: the chart's own pods), and
# the renderer labels every pod `app: <service name>`: a service named `consul` ran without a sidecar, and up
# failed after its ready wait, blaming an injector that "does not honour an annotation".


def test_a_service_named_like_the_charts_own_pods_is_refused() -> None:
    err = _refused(_with({"name": "consul", "placement": "region", "image": "nginx:1.27-alpine", "port": 8500}))
    assert err.field == "services[5].name", str(err)
    assert "app=consul" in str(err) and "sidecar" in str(err), str(err)


def test_control_a_service_whose_name_only_contains_consul_is_taken() -> None:
    parse_topology(_with({"name": "consul-ui", "placement": "region", "image": "nginx:1.27-alpine", "port": 8500}))
