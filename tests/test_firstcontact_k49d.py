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
from harness.errors import BackendError
from harness.preflight import Expected, check_crds, run_preflight
from harness.render.manifests import Manifests, load
from tests.conftest import complete_jsonl, wait_until
from tests.kubefake import FakeApiServer, fake_tools
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.kubefake import rendered as kube_rendered
from tests.kubesim import CHART_K8S_IMAGE, SimTimings
from tests.test_backend_existing import _backend, _cluster, _new_eks
from tests.test_backend_kind import Tools, kind_backend, up_refused
from tests.test_backend_kind import tools as tools  # the fake tools on PATH, re-exported for pytest
from tests.test_preflight import rendered as rendered  # the preflight fixtures, re-exported for pytest
from tests.test_preflight import setup as setup
from tests.test_timing_t45f import _clocked

# helm's wait as the simulated cluster caps it: far above what the early stop needs (a few polls of 0.1 s), so
# that HEAD, which waits helm out, fails on its message ("context deadline exceeded") without a 15-minute wait
HELM_CAP_S = 60.0


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


# -- 1. helm's wait for Consul's chart ------------------------------------------------------------------------------


def test_the_simulated_chart_asks_for_the_charts_resources(api: FakeApiServer, tmp_path: Path) -> None:
    """The fake's likeness: the chart's pods request what values.yaml@v1.9.11 gives them (server 100m/200Mi,
    connect-injector 50m/200Mi, webhook-cert-manager 100m/50Mi), or the values' own; before, none, so no Consul pod
    could ever be too large for a node."""
    c = api.cluster(tmp_path)
    values = kube_rendered(tmp_path).helm_values
    api.install_consul(values)
    assert wait_until(lambda: len(c.pods("consul")) >= 3, 30)
    got = {p["metadata"]["labels"]["component"]: p["spec"]["containers"][0]["resources"]["requests"]
           for p in c.pods("consul")}  # fmt: skip
    assert got["server"] == (values["server"].get("resources") or {}).get(
        "requests", {"memory": "200Mi", "cpu": "100m"}
    )
    assert got["connect-injector"] == {"memory": "200Mi", "cpu": "50m"}
    assert got["webhook-cert-manager"] == {"memory": "50Mi", "cpu": "100m"}


def test_a_consul_server_no_kind_node_can_hold_stops_helm_at_once_with_the_schedulers_message(
    capped: FakeApiServer, kind_tools: Tools, tmp_path: Path
) -> None:
    """Reproducer: a server asking 64 CPUs of 4-CPU kind nodes: the scheduler says "Insufficient cpu" on the pod at
    once; `up` said nothing until helm's "context deadline exceeded" (15 min; the fake's cap here). Now one line
    with the pod and the scheduler's message, helm cancelled (SIGTERM), and `down` removes the cluster."""
    m = _with_values(kube_rendered(tmp_path), _server_needs_64_cpus)
    text = up_refused(tmp_path, manifests=m)
    assert "\n" not in text, text
    assert text.startswith("Consul's chart cannot become ready on kind cluster edge: consul/consul-server-0 cannot be "
                           "scheduled: 0/7 nodes are available: "), text  # fmt: skip
    assert "Insufficient cpu" in text and "INSTALLATION FAILED" not in text, text
    assert "`harness down` removes what it installed" in text, text
    assert len(_helm_installs(kind_tools.calls())) == 1
    kind_backend(tmp_path / "wd").down()  # a new backend on the workdir, as `harness down` is
    assert capped.sim.kind_cluster is None


def test_an_unpullable_consul_image_on_eks_stops_helm_naming_the_image_and_the_pull_error(
    capped: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reproducer, existing backend with --install-consul: a Consul image tag that does not exist. The kubelet says
    ImagePullBackOff at once (the runtime's error in its Warning event); `up` waited helm's 15 minutes. Now one line
    with the container, the image and the kubelet's error; `down` uninstalls the (failed) release as it expects."""
    monkeypatch.delenv("EH_ENTRYPOINTS", raising=False)
    log = fake_tools(capped, tmp_path, monkeypatch)
    bad = "hashicorp/consul:1.22.99"
    pull_error = f'rpc error: code = NotFound desc = failed to pull and unpack image "docker.io/{bad}": not found'
    capped.sim.unpullable[bad] = pull_error
    _new_eks(capped, tmp_path, ebs_csi_addon=True, addon_default_class=True)
    m = _with_values(kube_rendered(tmp_path), lambda v: v["global"].update(image=bad))
    b = _backend(capped, tmp_path, install_consul=True)
    with pytest.raises(BackendError) as err:
        b.up(m)
    text = str(err.value)
    assert "\n" not in text, text
    assert "consul/consul-server-0 container server: ImagePullBackOff (its image cannot be pulled): Back-off pulling " \
           f'image "{bad}"; the kubelet: Failed to pull image "{bad}": {pull_error}' in text, text  # fmt: skip
    assert "INSTALLATION FAILED" not in text, text
    b.down()
    calls = complete_jsonl(log)
    assert [c[:4] for c in calls if c[:2] == ["helm", "uninstall"]] == [["helm", "uninstall", "consul", "-n"]]


def test_a_crash_looping_connect_injector_stops_helm_with_its_exit_code_and_where_its_log_is(
    capped: FakeApiServer, kind_tools: Tools, tmp_path: Path
) -> None:
    """Reproducer: consul-k8s' control plane exits at once (a bad flag, a wrong image): CrashLoopBackOff on the pod;
    the line says which container, its last exit code and the command that shows its log."""
    capped.sim.crashing[CHART_K8S_IMAGE] = 1
    text = up_refused(tmp_path, manifests=kube_rendered(tmp_path))
    assert "\n" not in text and "INSTALLATION FAILED" not in text, text
    assert "container connect-injector: CrashLoopBackOff (it keeps exiting): back-off 10s restarting failed " \
           "container=connect-injector pod=consul-connect-injector-" in text, text  # fmt: skip
    assert "last exit code 1 (Error), restarts 1; its log: kubectl logs -n consul consul-connect-injector-" in text


def test_control_a_crash_looping_pod_of_another_release_in_consuls_namespace_is_not_the_installs_concern(
    capped: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: an operator's own pod in the namespace the chart goes into keeps exiting; it is not the release's
    (helm's wait does not wait for it either), so the install goes on and `up` succeeds."""
    monkeypatch.delenv("EH_ENTRYPOINTS", raising=False)
    log = fake_tools(capped, tmp_path, monkeypatch)
    capped.sim.crashing["example.test/operator-tool:1"] = 2
    c = _new_eks(capped, tmp_path, ebs_csi_addon=True, addon_default_class=True)
    capped.seed(c, {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": "operator-tool", "namespace": "consul", "labels": {"app": "operator-tool"}},
                    "spec": {"containers": [{"name": "tool", "image": "example.test/operator-tool:1"}]}})  # fmt: skip

    def crashing() -> bool:
        pod = c.request("GET", "/api/v1/namespaces/consul/pods/operator-tool")
        return "CrashLoopBackOff" in str(pod.get("status"))

    assert wait_until(crashing, 30)
    b = _backend(capped, tmp_path, install_consul=True)
    try:
        b.up(kube_rendered(tmp_path))
    finally:
        b.close()
    assert len(_helm_installs(complete_jsonl(log))) == 1 and crashing()


def test_control_where_an_autoscaler_may_add_a_node_an_unschedulable_pod_is_said_once_and_waited_on(
    capped: FakeApiServer, kind_tools: Tools, tmp_path: Path
) -> None:
    """Control: the same Unschedulable server judged as on EKS (cluster-autoscaler and Karpenter add nodes for
    exactly such pods): said once per message through progress, not a reason to stop helm."""
    from harness.backends.kube.helmwait import stuck_pod  # here: the other reproducers run (and fail) on HEAD

    backend = kind_backend(tmp_path / "wd")
    try:
        with pytest.raises(BackendError):
            backend.up(_with_values(kube_rendered(tmp_path), _server_needs_64_cpus))
        said: list[str] = []
        seen: set[tuple[str, str]] = set()
        for _ in range(2):
            assert (
                stuck_pod(
                    backend.cluster,
                    "consul",
                    release="consul",
                    unschedulable_final=False,
                    said=seen,
                    progress=said.append,
                )
                is None
            )
        assert len(said) == 1 and said[0].startswith("consul/consul-server-0 cannot be scheduled: 0/7 nodes"), said
        assert said[0].endswith("(waiting: the scheduler retries as nodes change)"), said
    finally:
        backend.close()


def test_control_a_chart_whose_pods_all_start_installs_as_before(
    capped: FakeApiServer, kind_tools: Tools, tmp_path: Path
) -> None:
    """Control: nothing stuck: helm runs to its own end (one install, its --wait and 15m timeout as before)."""
    said: list[str] = []
    backend = kind_backend(tmp_path / "wd")
    try:
        backend.up(kube_rendered(tmp_path), progress=said.append)
    finally:
        backend.close()
    (install,) = _helm_installs(kind_tools.calls())
    assert install[-3:] == ["--wait", "--timeout", "15m"], install
    assert not [x for x in said if "cannot be scheduled" in x or "cannot become ready" in x], said


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


# -- the class: field selectors as the API server takes them ---------------------------------------------------------


def test_the_fake_refuses_a_field_label_kubernetes_does_not_register(api: FakeApiServer, tmp_path: Path) -> None:
    """The fake's likeness: a fieldSelector on a label the resource does not register is the API server's 400
    "field label not supported: X" (pkg/apis/core/v1/conversion.go), for a list and a watch alike; the fake
    filtered on any path, so a selector that fails on every real cluster passed every test."""
    from harness.backends.kube import KubeApiError

    c = api.cluster(tmp_path)
    for path, bad in (("/api/v1/pods", "spec.containers.image=x"), ("/api/v1/namespaces/default/events", "note=x")):
        for watch in ([], [("watch", "true"), ("timeoutSeconds", "1")]):
            with pytest.raises(KubeApiError) as err:
                c.request("GET", path, query=[("fieldSelector", bad), *watch])
            assert err.value.status == 400 and f"field label not supported: {bad.split('=')[0]}" in str(err.value)


def test_control_the_field_labels_the_harness_selects_on_are_served(api: FakeApiServer, tmp_path: Path) -> None:
    """Control: pods by spec.nodeName and metadata.name, events by involvedObject kind and name (what the kube
    backends send) filter as in Kubernetes."""
    c = _cluster(api, tmp_path)  # EKS-like nodes, the operator's Consul on them
    pod = next(p for p in c.pods("consul") if p["spec"].get("nodeName"))
    name, node = pod["metadata"]["name"], pod["spec"]["nodeName"]
    on_node = c.request("GET", "/api/v1/pods", query=[("fieldSelector", f"spec.nodeName={node}")])["items"]
    assert name in {p["metadata"]["name"] for p in on_node}
    assert all(p["spec"]["nodeName"] == node for p in on_node)
    (one,) = c.request("GET", "/api/v1/pods", query=[("fieldSelector", f"metadata.name={name}")])["items"]
    assert one["metadata"]["name"] == name
    events = c.request("GET", "/api/v1/namespaces/consul/events",
                       query=[("fieldSelector", f"involvedObject.kind=Pod,involvedObject.name={name}")])  # fmt: skip
    assert all(e["involvedObject"]["name"] == name for e in events["items"])
