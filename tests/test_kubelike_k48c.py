"""The kind/EKS API paths against behaviours of a real API server the fake used to leave out (k48c).

Each reproducer makes the simulated cluster (`tests.kubesim`) answer as kube-apiserver does, with the source
named there, and failed on the harness before its fix; each control shows the case the fix must leave alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.backends.existing import ExistingBackend
from harness.backends.kube import LABEL_SERVING, KubeCluster
from harness.backends.kube.api import KubeApiError
from harness.errors import BackendError
from tests.conftest import wait_until
from tests.kubefake import NODES, FakeApiServer, fake_tools, lax_pod, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_existing import _backend, _new_eks

LAX = "us-west-2-lax-1a"
CLIENT_GO_MAX_RETRIES = 10  # client-go rest/request.go NewRequest `maxRetries: 10`, what kubectl and helm use


def _seeded(api: FakeApiServer, tmp_path: Path) -> KubeCluster:
    c = api.cluster(tmp_path)
    api.seed(c, *NODES, lax_pod("pa-lax-1", "10.244.3.11"), lax_pod("pa-lax-2", "10.244.3.12"))
    return c


# -- a throttled request (API Priority and Fairness: 429 Retry-After) -------------------------------------------


def test_a_pod_unready_rides_out_a_throttled_patch(api: FakeApiServer, tmp_path: Path) -> None:
    """A busy API server (APF, max-in-flight) answers 429 `Retry-After: 1` before doing anything of the request;
    kubectl (client-go) waits and sends it again, whatever the verb. The harness sent a throttled PATCH (the
    unready fault's label, a cordon, an apply's server-side apply) or POST never again (urllib3 retries only
    GET/PUT/DELETE by status): the chaos action failed, and the verdict with it, for a throttled request."""
    c = _seeded(api, tmp_path)
    api.sim.call(lambda: api.sim.throttle(1, methods=["PATCH"]))
    assert sorted(c.set_serving(LAX, "product-api", False)) == ["pa-lax-1", "pa-lax-2"]
    assert api.sim.throttled == ["PATCH /api/v1/namespaces/hashicups-lax-1a/pods/pa-lax-1"]
    assert {p["metadata"]["name"]: p["metadata"]["labels"][LABEL_SERVING] for p in c.pods("hashicups-lax-1a")} == {
        "pa-lax-1": "false",
        "pa-lax-2": "false",
    }


def test_a_pod_kill_rides_out_a_list_throttled_more_than_three_times(api: FakeApiServer, tmp_path: Path) -> None:
    """A GET was sent again by urllib3 alone, 3 times: the fourth 429 in a row failed the pod kill, where
    client-go goes on to 10."""
    c = _seeded(api, tmp_path)
    api.sim.call(lambda: api.sim.throttle(5, retry_after="0"))
    assert sorted(c.kill_pods(LAX, "product-api")) == ["pa-lax-1", "pa-lax-2"]
    assert api.sim.throttled == ["GET /api/v1/pods"] * 5  # the list, answered on its sixth sending
    deletes = sorted(p for m, p, _d in api.writes() if m == "DELETE")
    assert deletes == [f"/api/v1/namespaces/hashicups-lax-1a/pods/pa-lax-{i}" for i in (1, 2)]


def test_control_a_watch_rides_out_a_throttled_start(api: FakeApiServer, tmp_path: Path) -> None:
    """Control: the streaming calls (the inventory's watch, a log follow) meet the same filters: a throttled watch is
    opened again after Retry-After, and its events come."""
    c = _seeded(api, tmp_path)
    api.sim.call(lambda: api.sim.throttle(1))
    stream = c.stream_lines("/api/v1/pods", [("watch", "true"), ("timeoutSeconds", "1")], read_timeout=10)
    try:
        c.delete_pod("hashicups-lax-1a", "pa-lax-1")
        kinds = [json.loads(line)["type"] for line in stream.lines() if line.strip()]
    finally:
        stream.close()
    assert api.sim.throttled == ["GET /api/v1/pods"]
    assert "MODIFIED" in kinds or "DELETED" in kinds, kinds


def test_control_the_retries_end_where_client_gos_do(api: FakeApiServer, tmp_path: Path) -> None:
    """Control: a server that throttles on and on is not waited on forever: the call is sent 1 + 10
    times (client-go's 10 retries) and then fails with the 429, as kubectl's does."""
    c = _seeded(api, tmp_path)
    api.sim.call(lambda: api.sim.throttle(CLIENT_GO_MAX_RETRIES + 5, retry_after="0"))
    with pytest.raises(KubeApiError) as err:
        c.pods("hashicups-lax-1a")
    assert err.value.status == 429
    assert "Too many requests" in str(err.value)
    assert len(api.sim.throttled) == CLIENT_GO_MAX_RETRIES + 1
    assert api.sim.call(lambda: api.sim.throttle_left) == 4


def test_control_an_error_without_retry_after_is_the_answer(api: FakeApiServer, tmp_path: Path) -> None:
    """Control: a 429 or 5xx that does not ask to come back (no usable Retry-After: a webhook's 500, an
    eviction's own refusal) is not sent again; one request, and the error as the server gave it."""
    c = _seeded(api, tmp_path)
    api.sim.call(lambda: api.sim.throttle(3, retry_after=""))
    with pytest.raises(KubeApiError) as err:
        c.pods("hashicups-lax-1a")
    assert err.value.status == 429
    assert api.sim.throttled == ["GET /api/v1/namespaces/hashicups-lax-1a/pods"]


# -- down with --install-consul: consul-k8s' finalizers on the run's config-entry CRs ---------------------------


def _installed_run(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[ExistingBackend, KubeCluster, list[tuple[str, str, str]]]:
    """An EKS nightly `up --install-consul` whose config-entry CRs consul-k8s has synced (its finalizer on each)."""
    monkeypatch.delenv("EH_ENTRYPOINTS", raising=False)
    fake_tools(api, tmp_path, monkeypatch)
    c = _new_eks(api, tmp_path, ebs_csi_addon=True, addon_default_class=True)
    b = _backend(api, tmp_path, install_consul=True)
    b.up(rendered(tmp_path))
    entries = [(str(o["kind"]), str(o["metadata"].get("namespace") or "default"), str(o["metadata"]["name"]))
               for o in b.manifests().consul_objects]  # fmt: skip
    assert entries

    def all_finalized() -> bool:
        return all("finalizers.consul.hashicorp.com" in (_live(c, *e) or {}).get("metadata", {}).get("finalizers", [])
                   for e in entries)  # fmt: skip

    assert wait_until(all_finalized, 30)
    return b, c, entries


def _live(c: KubeCluster, kind: str, ns: str, name: str) -> dict[str, Any] | None:
    try:
        ref = c.resource("consul.hashicorp.com/v1alpha1", kind)
    except BackendError:
        return None  # the CRD is gone: so is every CR of it
    try:
        return dict(c.request("GET", ref.item(ns, name)))
    except KubeApiError:
        return None


def test_down_leaves_no_config_entry_awaiting_an_uninstalled_controller(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """consul-k8s' controller had not yet finished the run's deleted CRs (busy, or backing off) when `down`
    uninstalled Consul, and with it the controller: their finalizer stayed for good, the run's namespaces and
    the chart's CRDs stayed Terminating, and the next night's `up` could create nothing there. `down` now
    deletes the CRs and waits for the controller to finish them before it uninstalls Consul."""
    b, c, entries = _installed_run(api, tmp_path, monkeypatch)
    run_namespaces = sorted({ns for _k, ns, _n in entries} - {"consul", "default"})
    api.sim.consul_deletions_held = True
    api.sim.consul_deletions_release_on_ask = True  # it finishes once someone waits for it
    b.down()
    assert wait_until(lambda: all(_live(c, *e) is None for e in entries), 10), [
        e for e in entries if _live(c, *e) is not None
    ]
    assert wait_until(lambda: not any(c.exists("v1", "Namespace", None, ns) for ns in run_namespaces), 10)
    assert api.sim.call(lambda: sorted(api.sim.crds_terminating)) == []


def test_control_down_keeps_consul_while_its_controller_has_entries_to_finish(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: a controller that never finishes makes `down` fail after the ready timeout, naming the entries,
    with Consul still installed (helm uninstall not run), so that a later `down` can complete."""
    b, c, entries = _installed_run(api, tmp_path, monkeypatch)
    api.sim.consul_deletions_held = True
    b.ready_timeout_s = 1.0
    with pytest.raises(BackendError, match="still await consul-k8s' finalizer"):
        b.down()
    assert api.sim.call(lambda: api.sim.consul is not None)  # helm uninstall not run
    api.sim.consul_deletions_held = False
    b.down()
    assert wait_until(lambda: all(_live(c, *e) is None for e in entries), 10)
    assert api.sim.call(lambda: api.sim.consul is None)  # uninstalled


def test_control_down_with_a_prompt_controller_removes_everything(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: with the controller prompt, `down` removes every CR, the run's namespaces, and Consul."""
    b, c, entries = _installed_run(api, tmp_path, monkeypatch)
    run_namespaces = sorted({ns for _k, ns, _n in entries} - {"consul", "default"})
    b.down()
    assert wait_until(lambda: all(_live(c, *e) is None for e in entries), 10)
    assert wait_until(lambda: not any(c.exists("v1", "Namespace", None, ns) for ns in run_namespaces), 10)
    assert api.sim.call(lambda: api.sim.consul is None)  # uninstalled
