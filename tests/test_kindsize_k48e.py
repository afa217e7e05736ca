"""kind on a laptop: a Docker host too small for the topology is said before `kind create`, and a pod the
scheduler cannot place is said while `up` waits, not only at its timeout (k48e).

Against the simulated cluster (`tests.kubesim`) and the fake tools (`tests.kubesim_tools`): `docker info` reports
the Docker host's NCPU and MemTotal (moby api/types/system.Info) as a test sizes them; kube-scheduler's failures
are on the pod as Kubernetes puts them (phase Pending, PodScheduled False, reason Unschedulable, "0/N nodes are
available: ...").
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from harness.backends.kindsize import MI, Need, cluster_need, pod_need, shortfall
from harness.render.manifests import Manifests
from tests.conftest import REPO
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_kind import Tools, kind_backend, up_refused, up_saying
from tests.test_backend_kind import tools as tools  # the fake tools on PATH, re-exported for pytest

GIB = 1024**3
# The default topology's requests, by hand from the rendered pods (hashicups._resources), the chart's values
# (consul-k8s v1.9.11) and kind's own pods (kubeadm's static pods and CoreDNS, kindnet on each of 7 nodes).
# Workloads: 6 frontends (50m+25m, 128Mi+32Mi), 6 public-api and 6 product-api (25m, 32Mi; the injected init
# container's 50m is the larger: 50m each), postgres and its replica (50m, 128Mi).
WORKLOADS = Need(6 * 75 + 12 * 50 + 2 * 50, (6 * 160 + 12 * 32 + 2 * 128) * MI)
CHART = Need(100 + 50 + 100, (200 + 200 + 50) * MI)  # server, connect-injector, webhook-cert-manager
KIND = Need(250 + 200 + 100 + 100 + 2 * 100 + 7 * 100, (100 + 2 * 70 + 7 * 50) * MI)


def _said(said: list[str], what: str) -> list[str]:
    return [x for x in said if what in x]


# -- what the cluster asks of the host --------------------------------------------------------------------------


def test_the_default_topology_asks_what_its_pods_chart_and_nodes_request(tmp_path: Path) -> None:
    """Each part summed as kube-scheduler counts a pod (its containers against its largest init container),
    with what consul-k8s injects into meshed pods."""
    need = cluster_need(rendered(tmp_path))
    assert need == {"workloads": WORKLOADS, "Consul chart": CHART, "kind": KIND}


def test_helm_values_that_set_the_charts_requests_or_replicas_are_counted(tmp_path: Path) -> None:
    """Control: the chart's defaults only where the values leave them; a user's values are what Helm installs."""
    m = rendered(tmp_path)
    values: dict[str, Any] = copy.deepcopy(m.helm_values)
    values["server"]["replicas"] = 3
    values["connectInject"]["resources"] = {"requests": {"cpu": "0.5", "memory": "1Gi"}}
    values["connectInject"]["initContainer"] = {"resources": {"requests": {"cpu": "10m"}}}
    m2 = Manifests(m.root, m.topology, m.kind_config, values, m.objects, m.meta, m.origins, m.entry)
    chart = cluster_need(m2)["Consul chart"]
    assert chart == Need(3 * 100 + 500 + 100, (3 * 200 + 1024 + 50) * MI)
    # the init container now below every pod's containers: each meshed pod counts its containers alone
    assert cluster_need(m2)["workloads"] == Need(6 * 75 + 12 * 25 + 2 * 50, WORKLOADS.mem)


def test_a_pods_own_sidecar_requests_are_counted() -> None:
    spec = {"containers": [{"resources": {"requests": {"cpu": "25m", "memory": "32Mi"}}}]}
    ann = {
        "consul.hashicorp.com/connect-inject": "true",
        "consul.hashicorp.com/sidecar-proxy-cpu-request": "100m",
        "consul.hashicorp.com/sidecar-proxy-memory-request": "64Mi",
    }
    assert pod_need(spec, ann, {}) == Need(125, 96 * MI)
    assert pod_need(spec, {}, {}) == Need(25, 32 * MI)  # not meshed: nothing injected


def test_shortfall_names_what_is_short_and_by_how_much() -> None:
    need = {"workloads": WORKLOADS, "Consul chart": CHART, "kind": KIND}
    mem, cpu = shortfall(need, 2, 2 * GIB)
    assert mem == (
        "memory: the pods request 2.6 GiB (workloads 1.6 GiB, Consul chart 0.4 GiB, kind 0.6 GiB), "
        "the Docker host has 2.0 GiB: 0.6 GiB short"
    )
    assert cpu.startswith("CPU: the pods request 2.95 CPUs (") and cpu.endswith("has 2 CPUs: 0.95 CPUs short")
    assert shortfall(need, 4, 16 * GIB) == ("", "")  # control: a 4-CPU, 16 GiB host holds it


# -- before `kind create` ------------------------------------------------------------------------------------------


def test_a_docker_host_with_too_little_memory_is_refused_before_kind_creates_anything(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """Docker Desktop's VM at 2 GiB: every kind node's kubelet reports the VM's 2 GiB as its own, so the
    scheduler places 2.6 GiB of requests and the VM's OOM killer (or "Insufficient memory" on one node) left
    `up` waiting until its timeout. Now one line naming memory and the shortfall; no cluster made."""
    api.sim.docker_host.update(NCPU=4, MemTotal=2 * GIB)
    text = up_refused(tmp_path)
    assert "\n" not in text, text
    assert "the Docker host has 2.0 GiB: 0.6 GiB short" in text and "kind cluster edge" in text, text
    assert not [c for c in tools.calls() if c[:3] == ["kind", "create", "cluster"]], tools.calls()
    assert api.sim.kind_cluster is None and not api.sim.nodes
    assert not (tmp_path / "wd").exists()


def test_a_docker_host_short_of_cpu_only_is_said_once_and_up_goes_on(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """Two CPUs (a private repository's GitHub runner, colima's default): kind's scheduler takes the pods (each
    node counts both CPUs as its own) and CPU is shared, not exhausted: said in one line, and run."""
    api.sim.docker_host.update(NCPU=2)
    said = up_saying(tmp_path)
    cpu = _said(said, "CPUs short")
    assert len(cpu) == 1 and "the Docker host has 2 CPUs: 0.95 CPUs short" in cpu[0], said
    assert [c for c in tools.calls() if c[:3] == ["kind", "create", "cluster"]]


def test_a_docker_host_large_enough_passes_in_silence(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    """Control: the fake's 4 CPUs and 16 GiB hold the default topology; nothing is said of them."""
    said = up_saying(tmp_path)
    assert not _said(said, "short") and not _said(said, "Docker host's CPUs"), said
    assert [c for c in tools.calls() if c[:3] == ["kind", "create", "cluster"]]


def test_a_docker_info_without_cpus_or_memory_is_said_and_run(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    """Control: a daemon whose `docker info` names neither (an older or compatible engine): said, not guessed."""
    api.sim.docker_host.clear()
    said = up_saying(tmp_path)
    assert len(_said(said, "the Docker host's CPUs and memory not read")) == 1, said


def test_a_reused_cluster_is_not_judged_again(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    """Control: a second `up` reuses the cluster kind made; the host's size is judged before a create only."""
    up_saying(tmp_path)
    api.sim.docker_host.update(MemTotal=2 * GIB)
    said = up_saying(tmp_path)
    assert _said(said, "exists: reusing it") and not _said(said, "short"), said


# -- while `up` waits for Ready ------------------------------------------------------------------------------------


class _Said(Exception):
    """Raised by the progress callback at the line a test waits for: the wait is stopped there."""


def _stop_at(what: str, said: list[str]) -> Any:
    def progress(line: str) -> None:
        said.append(line)
        if what in line:
            raise _Said(line)

    return progress


def _no_zone(dep: dict[str, Any], sim: Any) -> None:
    """Its pods select a zone no node is in."""
    dep["spec"]["template"]["spec"]["nodeSelector"] = {"topology.kubernetes.io/zone": "us-west-2-nowhere-1a"}


def _two_cpus(dep: dict[str, Any], sim: Any) -> None:
    """A 2-CPU Docker host (each kind node reports 2 CPUs) and a pod asking for both: kindnet's 100m is there."""
    sim.docker_host.update(NCPU=2)
    dep["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"] = "2"


@pytest.mark.parametrize(
    ("cause", "why"),
    [
        (_no_zone, "7 node(s) didn't match Pod's node affinity/selector"),
        (_two_cpus, "1 Insufficient cpu, 6 node(s)"),
    ],
    ids=["no-node-in-zone", "insufficient-cpu"],
)
def test_a_pod_the_scheduler_cannot_place_is_said_at_once_with_its_message(
    api: FakeApiServer, tools: Tools, tmp_path: Path, cause: Any, why: str
) -> None:
    """One Deployment whose pods no node can take: kube-scheduler says why on the pod (PodScheduled False,
    Unschedulable, "0/7 nodes are available: ..."), but `up` said only "deployments ready 19/20" until the ready
    timeout. Now the scheduler's message in one line while the wait goes on."""
    m = rendered(tmp_path)
    dep = next(o for o in m.objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "frontend-lax-1a")
    cause(dep, api.sim)
    said: list[str] = []
    backend = kind_backend(tmp_path / "wd")
    backend.ready_timeout_s = 30
    try:
        with pytest.raises(_Said) as line:
            backend.up(m, progress=_stop_at("cannot be scheduled", said))
    finally:
        backend.close()
    text = str(line.value)
    assert "\n" not in text and text.startswith(f"{dep['metadata']['namespace']}/frontend-lax-1a-"), text
    assert "cannot be scheduled: 0/7 nodes are available: " in text and why in text, text
    assert not _said(said[:-1], "cannot be scheduled"), said  # the first such line, once


def test_an_up_whose_pods_all_schedule_says_nothing_of_scheduling(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """Control: every pod placed, no such line (a pod Pending only until the scheduler's next pass is not one)."""
    said = up_saying(tmp_path)
    assert not _said(said, "cannot be scheduled"), said
    assert "deployments ready 20/20" in said


def test_the_readme_states_what_the_default_topology_requests(tmp_path: Path) -> None:
    """The prerequisites table's figures are the ones `up` judges with (a re-priced chart or topology moves both)."""
    need = cluster_need(rendered(tmp_path))
    total = Need()
    for n in need.values():
        total = total + n
    text = (REPO / "README.md").read_text()
    want = f"the default topology requests {total.mem / GIB:.1f} GiB and {total.cpu_m / 1000:g} CPUs"
    assert want in text, want
