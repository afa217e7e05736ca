"""kind on a laptop, first contact: what broke before the first verdict (k46f).

Each test names the real behaviour it follows; the fake tools (tests.kubesim_tools) answer as the real ones do.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.errors import InputError
from harness.render import render, write
from harness.render.manifests import load
from harness.topology.model import load_topology
from tests.conftest import REPO
from tests.kubefake import FakeApiServer
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_kind import INOTIFY_PATHS, Tools, kind_backend, up_refused, up_saying
from tests.test_backend_kind import tools as tools  # the fake tools on PATH, re-exported for pytest
from tests.test_firstcontact93 import INOTIFY_FIX, inotify_said, watches_alone_said_once

pytestmark = [
    pytest.mark.slow,  # a fake API server and fake tools per test: seconds each
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Docker host that is this machine: Linux"),
]


def _proc(root: Path, watches: int, instances: int, api: FakeApiServer | None = None) -> Path:
    """A /proc whose fs.inotify sysctls say `watches` and `instances`, as this machine's would; with `api`, the
    Docker host is this machine, and its nodes read the same values."""
    if api is not None:
        api.sim.host_sysctl.update({"fs/inotify/max_user_watches": watches, "fs/inotify/max_user_instances": instances})
    d = root / "sys" / "fs" / "inotify"
    d.mkdir(parents=True)
    (d / "max_user_watches").write_text(f"{watches}\n")
    (d / "max_user_instances").write_text(f"{instances}\n")
    return root


def _here(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake Docker daemon runs on this machine (`docker info` Name is this host name), as a Linux laptop's."""
    monkeypatch.setenv("FAKE_DOCKER_NAME", socket.gethostname())


def test_a_local_docker_host_with_too_few_inotify_instances_is_refused_before_kind_creates_anything(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ubuntu's defaults (8192 watches, 128 instances) are "not enough to create a cluster with many nodes" (kind
    site/content/docs/user/known-issues.md): every node's systemd, containerd (an instance per container's cgroup
    events) and kubelet draw on the host's one per-user count, so `kind create` of seven nodes can itself run out
    (kubeadm join fails: the line kind leaves names kubeadm, not inotify) or succeed with kube-proxies that exit
    at start. The limits were read only inside a node after `kind create`: the refusal came with a seven-node
    cluster already made (half-started, left for `down`). On a Linux laptop, where the Docker host is this
    machine, they are now read from /proc before `kind create`: one line naming the sysctl, nothing created."""
    _here(monkeypatch)
    text = up_refused(tmp_path, prepare=lambda b: setattr(b, "host_proc", _proc(tmp_path / "proc", 8192, 128, api)))
    assert "\n" not in text and "fs.inotify.max_user_instances is 128 (kind asks 512)" in text, text
    assert INOTIFY_FIX in text, text
    assert not [c for c in tools.calls() if c[:3] == ["kind", "create", "cluster"]], tools.calls()
    assert api.sim.kind_cluster is None and not api.sim.nodes


def test_a_local_docker_host_as_kind_asks_creates_and_is_not_read_again_in_a_node(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: kind's values on a local host pass in silence, the cluster is created, and the in-node read is
    not repeated (the same kernel's values, read once)."""
    _here(monkeypatch)
    said = up_saying(tmp_path, host_proc=_proc(tmp_path / "proc", 524288, 512, api))
    assert not inotify_said(said), said
    assert [c for c in tools.calls() if c[:3] == ["kind", "create", "cluster"]]
    assert ["docker", "exec", "edge-control-plane", "cat", *INOTIFY_PATHS] not in tools.calls()


def test_a_local_host_short_only_of_watches_is_said_once_and_goes_on(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: watches alone below kind's (kernels since 5.11 scale them with memory) are one line, and up goes on."""
    _here(monkeypatch)
    watches_alone_said_once(up_saying(tmp_path, host_proc=_proc(tmp_path / "proc", 192546, 512, api)), 192546)


@pytest.mark.parametrize(
    "env",
    [
        {"FAKE_DOCKER_NAME": "another-machine"},  # DOCKER_HOST / a context naming another machine
        {"FAKE_DOCKER_OS": "Docker Desktop"},  # Docker Desktop's VM, on Linux too
    ],
)
def test_a_docker_host_that_is_not_this_machine_is_judged_in_a_node_not_by_this_machines_proc(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    """Control: where the nodes' kernel is not this machine's, this machine's /proc (here too few instances) says
    nothing about it: the cluster is created and the limits read in a node (the host's there are kind's)."""
    monkeypatch.setenv("FAKE_DOCKER_NAME", socket.gethostname())
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    up_saying(tmp_path, host_proc=_proc(tmp_path / "proc", 8192, 128))
    assert ["docker", "exec", "edge-control-plane", "cat", *INOTIFY_PATHS] in tools.calls()


# -- names Kubernetes refuses -------------------------------------------------------------------------------------

LONG_ZONE = "us-west-2-lax-1a-" + "x" * 47  # 64 characters: one more than a label value takes


def _topology_with(tmp_path: Path, **zone: str) -> Path:
    """The shipped topology with its first Local Zone's fields replaced by `zone` (camelCase keys)."""
    data = yaml.safe_load((REPO / "fixtures" / "topology.yaml").read_text())
    lz = next(z for z in data["zones"] if z["type"] == "local-zone")
    lz.update(zone)
    path = tmp_path / "topology.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_fakes_refuse_a_label_value_kubernetes_refuses(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    """The fakes as the real ones: the API server refuses a label value over 63 characters (apimachinery
    IsValidLabelValue, in ValidateObjectMeta), and `kind create` of a node labelled so fails (its kubelet's Node
    is refused; kubeadm join fails, and kind's line names the join), leaving no nodes (kind deletes them)."""
    api.sim.ensure_namespace("default")
    with pytest.raises(Exception, match="must be no more than 63 characters"):
        api.sim.create("v1", "configmaps", "default", {"metadata": {"name": "x", "labels": {"zone": LONG_ZONE}}})
    api.sim.create("v1", "configmaps", "default", {"metadata": {"name": "x", "labels": {"zone": LONG_ZONE[:63]}}})
    config = tmp_path / "kind.yaml"
    nodes = [{"role": "control-plane"}, {"role": "worker", "labels": {"topology.kubernetes.io/zone": LONG_ZONE}}]
    config.write_text(yaml.safe_dump({"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "nodes": nodes}))
    proc = subprocess.run(["kind", "create", "cluster", "--name", "edge", "--config", str(config)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 1 and "failed to join node with kubeadm" in proc.stderr, proc.stderr
    assert not api.sim.nodes and api.sim.kind_cluster is None


def test_a_zone_name_longer_than_a_label_value_is_one_line_naming_the_field(tmp_path: Path) -> None:
    """A zone's name is its nodes' topology.kubernetes.io/zone label and its pods' zone label: a 64-character one
    rendered without a word, and `kind create` then failed naming `kubeadm join` (or the API server refused the
    first labelled object mid-apply on EKS/local). Now the topology is refused: file, field, the limit."""
    path = _topology_with(tmp_path, name=LONG_ZONE, shortName="lax-1a")
    proc = subprocess.run([sys.executable, "-m", "harness", "render", "--topology", str(path), "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, check=False, cwd=REPO)  # fmt: skip
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "zones[2].name" in lines[0] and "63" in lines[0], lines
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_a_short_name_that_makes_a_service_name_too_long_is_one_line_naming_the_field(tmp_path: Path) -> None:
    """A zone's short name ends its copies' names (`<service>-<short>`: a Service's name, a label value, a Consul
    service name); one that makes the longest over 63 characters is refused at the topology."""
    with pytest.raises(InputError) as err:
        load_topology(_topology_with(tmp_path, shortName="lax-" + "y" * 50))
    assert "zones[2].shortName" in str(err.value) and "63" in str(err.value), str(err.value)


def test_names_at_the_limit_render_and_kind_creates_their_nodes(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """Control: a 63-character zone name with a short name that keeps the services' names within 63 loads,
    renders, and kind creates a node labelled with it."""
    t = load_topology(_topology_with(tmp_path, name=LONG_ZONE[:63], shortName="lax-1a"))
    out = tmp_path / "out"
    write(render(t), out)
    backend = kind_backend(tmp_path / "wd")
    try:
        backend.up(load(out))
        zones = {n.zone for n in backend.cluster.node_infos()}
    finally:
        backend.close()
    assert LONG_ZONE[:63] in zones
