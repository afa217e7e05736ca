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
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.backends.base import ConfigEntryStatus
from harness.backends.existing import ExistingBackend
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


# -- 3. the kill switch's lines reach a library caller --------------------------------------------------------------


@pytest.fixture
def sigint_ignored() -> Iterator[None]:
    """A library caller started as a background job of a shell: SIGINT ignored, no SIGUSR1 handler."""
    previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL), signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous[0])
        signal.signal(signal.SIGINT, previous[1] if previous[1] is not None else signal.SIG_DFL)


def _pull_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, b: ExistingBackend, done: Any) -> None:
    monkeypatch.setenv("EH_RUN_DIR", str(tmp_path))
    monkeypatch.delenv("EH_KILL_SWITCH", raising=False)
    try:
        b._arm_kill_switch()
        (tmp_path / "ABORT").write_text("stop\n")
        assert wait_until(done, 10)
    finally:
        b.close()  # joins the switch's thread
        assert not [t for t in threading.enumerate() if t.name == "eh-kill-switch"]


def test_a_library_caller_without_progress_hears_the_kill_switch_as_warnings(
    sigint_ignored: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Reproducer: `connect()` / the pytest plugin pass no progress: the switch's "rolling back" and its WARNING
    that the experiment was not stopped went to no_progress. Now WARNING records of the backend's logger (shown
    on stderr by Python's last-resort handler when nothing is configured)."""
    caplog.set_level(logging.WARNING, logger="harness.backends.existing")
    b = ExistingBackend("ctx", workdir=tmp_path / "wd")

    def heard() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "harness.backends.existing"]

    _pull_switch(tmp_path, monkeypatch, b, lambda: len(heard()) >= 2)
    lines = heard()
    assert lines[0] == f"kill switch {tmp_path / 'ABORT'}: rolling back every fault in effect", lines
    assert lines[1].startswith("WARNING: kill switch: ") and "not stopped" in lines[1], lines
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "harness.backends.existing")


def test_control_a_caller_with_progress_hears_it_once_there_and_nothing_is_logged(
    sigint_ignored: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Control: the CLI passes its progress: the lines go there, once, and not also to the log."""
    caplog.set_level(logging.WARNING, logger="harness.backends.existing")
    said: list[str] = []
    b = ExistingBackend("ctx", workdir=tmp_path / "wd", progress=said.append)
    _pull_switch(tmp_path, monkeypatch, b, lambda: len(said) >= 2)
    assert len(said) == 2 and said[1].startswith("WARNING: kill switch: "), said
    assert not [r for r in caplog.records if r.name == "harness.backends.existing"]
