"""kind / EKS first contact: what a real cluster does that the fakes hid (k49d).

1. `helm upgrade --install --wait` of Consul's chart said nothing for up to 15 minutes while one of its pods could
   not become Ready: the scheduler (Unschedulable), the kubelet (ImagePullBackOff, CrashLoopBackOff) had said why
   on the pod within seconds. The simulated chart now carries the chart's resource requests (values.yaml@v1.9.11),
   the simulated kubelet can fail a pull or a container as the real one reports it, and the fake helm is
   cancelled by SIGTERM as helm is (cmd/helm/install.go).
2. A config-entry CR whose Synced condition is Unknown (consul-k8s has not written it yet, or an update of it
   failed: configentry_controller.go syncUnknown / syncUnknownWithError) was reported as Synced=False.
3. The kill switch's lines went to a progress function nobody passed (a library caller): they were lost.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.backends.base import ConfigEntryStatus
from harness.preflight import Expected, check_crds, run_preflight
from harness.render.manifests import Manifests, load
from harness.testing import ManualClock
from tests.conftest import wait_until
from tests.kubefake import FakeApiServer
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kubefake import rendered as kube_rendered
from tests.kubesim import SimTimings
from tests.test_backend_kind import Tools, kind_backend
from tests.test_backend_kind import tools as tools  # the fake tools on PATH, re-exported for pytest
from tests.test_preflight import rendered as rendered  # the preflight fixtures, re-exported for pytest
from tests.test_preflight import setup as setup

# helm's wait as the simulated cluster caps it: far above what the early stop needs (a few polls of 0.1 s), so
# that HEAD, which waits helm out, fails on its message ("context deadline exceeded") without a 15-minute wait
HELM_CAP_S = 60.0


def _clocked(then: Any = None) -> tuple[ManualClock, list[float], Any]:
    """A clock at 0 that only the returned `sleep` moves (`then(now)` after each sleep: the cluster meanwhile)."""
    clock = ManualClock(0.0)
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        clock.advance(s)
        if then is not None:
            then(clock.now)

    return clock, slept, sleep


def _with_values(m: Manifests, edit: Any) -> Manifests:
    """The rendered directory with its Helm values file edited by `edit(values)` (as an operator edits it)."""
    path = Path(m.root) / "consul-values.yaml"
    values = yaml.safe_load(path.read_text())
    edit(values)
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return load(Path(m.root))


def _server_needs_64_cpus(values: dict[str, Any]) -> None:
    values["server"]["resources"] = {"requests": {"cpu": "64", "memory": "200Mi"}, "limits": {"cpu": "64"}}


def _helm_installs(calls: list[list[str]]) -> list[list[str]]:
    return [c for c in calls if c[:3] == ["helm", "upgrade", "--install"]]


@pytest.fixture
def capped() -> Iterator[FakeApiServer]:
    with FakeApiServer(SimTimings(helm_wait_cap_s=HELM_CAP_S)) as server:
        yield server


@pytest.fixture
def kind_tools(capped: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tools:
    t = Tools(tmp_path, capped)
    for k, v in t.env.items():
        monkeypatch.setenv(k, v)
    return t


# -- 2. Synced=Unknown is "not yet", said as Unknown -----------------------------------------------------------------


def test_a_refused_update_is_synced_unknown_with_consul_k8s_reason_not_false(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """Reproducer: an entry already in Consul whose update Consul refuses: consul-k8s writes Synced=Unknown,
    ConsulAgentError, "updating config entry in consul: ..." (syncUnknownWithError). The harness said
    Synced=False (and the fake wrote False); now Unknown with the controller's reason and message."""
    backend = kind_backend(tmp_path / "wd")
    m = kube_rendered(tmp_path)
    try:
        backend.up(m)
        obj = next(o for o in m.objects if o["kind"] == "ServiceResolver")
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        api.sim.consul_reject[("ServiceResolver", name)] = "Unexpected response code: 500 (no)"
        spec = copy.deepcopy(obj["spec"])
        spec["connectTimeout"] = "7s"
        backend.cluster.request(
            "PATCH", f"/apis/consul.hashicorp.com/v1alpha1/namespaces/{ns}/serviceresolvers/{name}",
            body={"spec": spec}, content_type="application/merge-patch+json",
        )  # fmt: skip

        def status() -> ConfigEntryStatus:
            return next(s for s in backend.config_entry_status() if (s.kind, s.name) == ("ServiceResolver", name))

        assert wait_until(lambda: status().reason == "ConsulAgentError", 30), status()
        st = status()
        assert (st.synced, st.message) == (None, "updating config entry in consul: Unexpected response code: 500 (no)")
        (check,) = [c for c in check_crds(backend, [obj], None, Expected.of(m.topology, m.edition))]
        assert not check.ok
        assert check.message == (
            "Synced=Unknown: ConsulAgentError updating config entry in consul: Unexpected response code: 500 (no)"
        )
    finally:
        backend.close()


def test_control_a_refused_create_is_still_synced_false(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    """Control: an entry Consul refused at its creation is False (syncFailed), said as False, as before."""
    name = "product-api-lax-1a"
    api.sim.consul_reject[("ServiceResolver", name)] = "Unexpected response code: 500 (no)"
    backend = kind_backend(tmp_path / "wd")
    m = kube_rendered(tmp_path)
    try:
        backend.up(m)
        st = next(s for s in backend.config_entry_status() if (s.kind, s.name) == ("ServiceResolver", name))
        obj = next(o for o in m.objects if (o["kind"], o["metadata"]["name"]) == ("ServiceResolver", name))
        (check,) = check_crds(backend, [obj], None, Expected.of(m.topology, m.edition))
    finally:
        backend.close()
    assert (st.synced, st.reason) == (False, "ConsulAgentError")
    assert check.message == (
        "Synced=False: ConsulAgentError writing config entry to consul: Unexpected response code: 500 (no)"
    )


def test_unknown_without_a_reason_says_the_controller_has_not_reconciled_it() -> None:
    """Reproducer (its words): a new entry (finalizer added, not yet written: syncUnknown) or none reached."""
    st = ConfigEntryStatus("ServiceResolver", "ns", "r", None)
    assert st.text() == (
        "Synced=Unknown (consul-k8s has not written it to Consul yet: its controller has not reconciled it, or is down)"
    )


def test_preflight_waits_on_unknown_until_its_bound_then_says_unknown(setup: Any) -> None:
    """Unknown is "not yet": an entry going Unknown -> True within the bound passes; one Unknown at the bound fails
    saying Unknown (not False), after the one bound."""
    b = setup()
    b.synced["product-api-lax-1a"] = None

    def settling(now: float) -> None:
        if now >= 10.0:
            b.synced["product-api-lax-1a"] = True

    clock, _slept, sleep = _clocked(settling)
    res = run_preflight(b, settle_s=30.0, sleep=sleep, clock=clock)
    assert res.ok, [(c.check, c.subject, c.message) for c in res.failures]
    stuck = setup()
    stuck.synced["product-api-lax-1a"] = None
    clock, _slept, sleep = _clocked()
    res = run_preflight(stuck, settle_s=30.0, sleep=sleep, clock=clock)
    failed = [c for c in res.failures if c.check == "crd-synced"]
    assert clock.now == 30.0 and failed, clock.now
    assert all(c.message.startswith("Synced=Unknown (consul-k8s has not written it") for c in failed), failed
