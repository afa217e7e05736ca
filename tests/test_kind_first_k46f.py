"""kind on a laptop, first contact: what broke before the first verdict (k46f).

Each test names the real behaviour it follows; the fake tools (tests.kubesim_tools) answer as the real ones do.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from harness.errors import BackendError
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_kind import INOTIFY_PATHS, Tools, kind_backend
from tests.test_backend_kind import tools as tools  # the fake tools on PATH, re-exported for pytest

pytestmark = [
    pytest.mark.slow,  # a fake API server and fake tools per test: seconds each
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Docker host that is this machine: Linux"),
]

INOTIFY_FIX = "sudo sysctl -w fs.inotify.max_user_watches=524288 fs.inotify.max_user_instances=512"


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
    backend = kind_backend(tmp_path / "wd")
    backend.host_proc = _proc(tmp_path / "proc", 8192, 128, api)
    try:
        with pytest.raises(BackendError) as err:
            backend.up(rendered(tmp_path))
    finally:
        backend.close()
    text = str(err.value)
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
    said: list[str] = []
    backend = kind_backend(tmp_path / "wd")
    backend.host_proc = _proc(tmp_path / "proc", 524288, 512, api)
    try:
        backend.up(rendered(tmp_path), progress=said.append)
    finally:
        backend.close()
    assert not [line for line in said if "inotify" in line], said
    assert [c for c in tools.calls() if c[:3] == ["kind", "create", "cluster"]]
    assert ["docker", "exec", "edge-control-plane", "cat", *INOTIFY_PATHS] not in tools.calls()


def test_a_local_host_short_only_of_watches_is_said_once_and_goes_on(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: watches alone below kind's (kernels since 5.11 scale them with memory) are one line, and up goes on."""
    _here(monkeypatch)
    said: list[str] = []
    backend = kind_backend(tmp_path / "wd")
    backend.host_proc = _proc(tmp_path / "proc", 192546, 512, api)
    try:
        backend.up(rendered(tmp_path), progress=said.append)
    finally:
        backend.close()
    told = [line for line in said if "inotify" in line]
    assert len(told) == 1 and "fs.inotify.max_user_watches is 192546 (kind asks 524288)" in told[0], said


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
    backend = kind_backend(tmp_path / "wd")
    backend.host_proc = _proc(tmp_path / "proc", 8192, 128)
    try:
        backend.up(rendered(tmp_path))
    finally:
        backend.close()
    assert ["docker", "exec", "edge-control-plane", "cat", *INOTIFY_PATHS] in tools.calls()
