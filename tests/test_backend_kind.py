"""The kind backend against the simulated cluster (`tests.kubesim`) and fake kind/docker/helm/kubectl.

The fake tools (`tests.kubesim_tools`) record their argv and answer the way
the real ones do; what a command does to the cluster (nodes created from the
kind config, a node container stopped, the chart's pods scheduled by its
values, a port-forward to one pod) is what the simulation does, so each test
here would have failed against the first-contact defects of issue 8: pod
phases instead of the Ready condition (3), an inventory read at the end (4),
entry points bound to one pod (5), access logs lost in Envoy's buffer (6), no
Envoy config dumps (9), tc netem assumed (10).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness.backends.kind import (
    INSPECT_FORMAT,
    KIND_NODE_IMAGES,
    KUBE_PROXY_SYNCED,
    NETEM_PROBE,
    KindBackend,
    cluster_images,
    kind_available,
)
from harness.errors import BackendError
from harness.render.manifests import Manifests
from tests import kubesim_tools
from tests.conftest import complete_jsonl, wait_until
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest

pytestmark = pytest.mark.slow  # a fake API server and fake tools per test: seconds each

LAX = "us-west-2-lax-1a"
INOTIFY_PATHS = ("/proc/sys/fs/inotify/max_user_watches", "/proc/sys/fs/inotify/max_user_instances")


class Tools:
    """The fake tools on PATH, talking to one simulated cluster; `calls()` is every argv, in order."""

    def __init__(self, root: Path, api: FakeApiServer, names: tuple[str, ...] = kubesim_tools.TOOLS) -> None:
        self.bin = root / "bin"
        kubesim_tools.install(self.bin, names)
        self.log = root / "argv.jsonl"
        self.env = {"PATH": f"{self.bin}:{os.environ['PATH']}", "FAKE_LOG": str(self.log), "FAKE_API": api.url}

    def calls(self) -> list[list[str]]:
        return complete_jsonl(self.log)

    def reset(self) -> None:
        self.log.unlink(missing_ok=True)


@pytest.fixture
def tools(api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tools:
    t = Tools(tmp_path, api)
    for k, v in t.env.items():
        monkeypatch.setenv(k, v)
    return t


def kind_backend(workdir: Path, **kw: Any) -> KindBackend:
    """A KindBackend polling readiness often (the simulated cluster is fast; a real one gets 2 s)."""
    b = KindBackend("edge", workdir, ready_timeout_s=60, **kw)
    b.ready_poll_s = 0.1
    return b


def up_saying(tmp_path: Path, manifests: Manifests | None = None, **kw: Any) -> list[str]:
    """`up` of `manifests` (default: the default topology's) by `kind_backend(tmp_path / "wd", **kw)`, closed after
    (the cluster stays); returns what its progress said. What a test asks of the run it reads from the tools' calls
    or the cluster."""
    said: list[str] = []
    backend = kind_backend(tmp_path / "wd", **kw)
    try:
        backend.up(manifests if manifests is not None else rendered(tmp_path), progress=said.append)
    finally:
        backend.close()
    return said


def up_refused(
    tmp_path: Path,
    prepare: Callable[[KindBackend], None] | None = None,
    manifests: Manifests | None = None,
    **kw: Any,
) -> str:
    """The BackendError `up` of the default topology (or `manifests`) by `kind_backend(tmp_path / "wd", **kw)` raised
    (`prepare` sets the backend up first), closed after: a first-contact check that refuses before anything is
    created."""
    backend = kind_backend(tmp_path / "wd", **kw)
    if prepare is not None:
        prepare(backend)
    try:
        with pytest.raises(BackendError) as err:
            backend.up(rendered(tmp_path) if manifests is None else manifests)
    finally:
        backend.close()
    return str(err.value)


@pytest.fixture
def up(api: FakeApiServer, tools: Tools, tmp_path: Path) -> Iterator[tuple[KindBackend, Manifests]]:
    """A kind cluster `edge` brought up from the default topology; closed (not deleted) afterwards."""
    m = rendered(tmp_path)
    # a host that ran kind before: the node image and the cluster's images there (their first pulls: their own tests)
    api.sim.host_images.update([*cluster_images(m), KIND_NODE_IMAGES["v0.33.0"]])
    backend = kind_backend(tmp_path / "wd")
    backend.up(m)
    yield backend, m
    backend.close()


def _get(url: str, path: str = "/") -> int:
    try:
        return httpx.get(url + path, timeout=3).status_code
    except httpx.HTTPError:
        return 0


def _lines(path: Path) -> list[dict[str, Any]]:
    return complete_jsonl(path)


def _transaction(script: str, tool: str = "iptables") -> list[str]:
    """The lines of the one `<tool>-restore --noflush` transaction in a node's rules script (asserted to be one)."""
    lines = script.splitlines()
    head = f"{tool}-restore -w 5 --noflush <<EOF"
    assert lines.count(head) == 1, script
    tx = lines[lines.index(head) + 1 :]
    return tx[: tx.index("EOF")]


def _rules(script: str, tool: str = "iptables") -> list[str]:
    """EH-CHAOS's rules that script puts in force (`-A EH-CHAOS ...` of its transaction)."""
    return [x for x in _transaction(script, tool) if x.startswith("-A EH-CHAOS ")]


# -- commands -----------------------------------------------------------------------


def test_up_issues_exactly_the_documented_commands(
    up: tuple[KindBackend, Manifests], tools: Tools, tmp_path: Path, api: FakeApiServer
) -> None:
    backend, m = up
    wd = tmp_path / "wd"
    kc = str(wd / "kubeconfig")
    # the images: the host has them all (the fixture's), so none is pulled; all loaded into every node at once
    images = cluster_images(m)
    calls = tools.calls()
    assert calls[1] == ["kind", "version"]  # which node image: the one pinned for this kind release
    del calls[1]
    # the Docker host's CPUs and memory (against the pods' requests) and whether it is this machine (its inotify
    # limits read from /proc before `kind create`: not here), from one `docker info`, on every platform
    assert calls[1] == ["docker", "info", "--format", "{{json .}}"]
    del calls[1]
    # the node image on the host already (kind's own test), so no pull of it before `kind create` (k52b)
    assert calls[1] == ["docker", "inspect", "--type=image", KIND_NODE_IMAGES["v0.33.0"]]
    del calls[1]
    # the port-forwards' kubectl's version, against the new cluster's (Kubernetes' skew policy: one minor), with
    # the chart range's check before anything is installed
    assert calls[2] == ["kubectl", "version", "--client", "-o", "json"]
    del calls[2]
    # the Docker host's inotify limits, read in a node (kind's known issues), before anything runs in the cluster
    assert calls[2] == ["docker", "exec", "edge-control-plane", "cat", *INOTIFY_PATHS]
    del calls[2]
    assert calls[2:4] == [
        ["docker", "image", "ls", "--format", "{{.Repository}}:{{.Tag}}"],
        ["kind", "load", "docker-image", "--name", "edge", *images],
    ]
    del calls[2:4]
    assert calls[:4] == [
        ["kind", "get", "clusters"],
        [
            "kind", "create", "cluster", "--name", "edge", "--config", str(wd / "kind-config.yaml"), "--kubeconfig", kc,
            "--image", KIND_NODE_IMAGES["v0.33.0"],
        ],
        ["helm", "repo", "add", "hashicorp", "https://helm.releases.hashicorp.com", "--force-update"],
        [
            "helm", "upgrade", "--install", "consul", "hashicorp/consul", "--version", "1.9.11", "-n", "consul",
            "--create-namespace", "-f", str(wd / "consul-values.yaml"), "--kubeconfig", kc,
            "--wait", "--timeout", "15m",
        ],
    ]  # fmt: skip
    edge_nodes = ["edge-worker3", "edge-worker4", "edge-worker5", "edge-worker6"]  # kind: workers in config order
    assert calls[4] == ["docker", "exec", "edge-worker3", "sh", "-c", NETEM_PROBE]
    # the rules name every node at the address Docker gave its container (a Node object may lag behind)
    nodes_ = ["edge-control-plane", "edge-worker", "edge-worker2", *edge_nodes]
    assert calls[5] == ["docker", "inspect", "--format", INSPECT_FORMAT, *nodes_]
    assert [c[:5] for c in calls[6:10]] == [["docker", "exec", n, "sh", "-c"] for n in edge_nodes]
    assert calls[10:] == [["docker", "port", "edge-control-plane", f"{p}/tcp"] for p in range(30100, 30106)]
    written = yaml.safe_load((wd / "kind-config.yaml").read_text())
    assert written == {**m.kind_config, "name": "edge"}
    assert yaml.safe_load((wd / "consul-values.yaml").read_text()) == m.helm_values
    # kind made the nodes the config describes: zone labels, edge taints, the control-plane's port mappings
    nodes = {n.name: n for n in backend.cluster.node_infos()}
    assert nodes["edge-worker3"].zone == LAX and nodes["edge-worker3"].zone_type == "local-zone"
    assert nodes["edge-control-plane"].zone == ""
    raw = backend.cluster.request("GET", "/api/v1/nodes/edge-worker3")
    assert {"key": "edge-harness.io/edge-zone", "value": LAX, "effect": "NoSchedule"} in raw["spec"]["taints"]
    # lax-1a's script: other LZs dropped both ways, Region peers delayed by the service link (12 ms)
    lax = calls[6][5]
    for cidr in ("172.18.0.6/32", "10.244.4.0/24", "172.18.0.7/32", "10.244.5.0/24"):
        assert f"-A EH-CHAOS -d {cidr} -j DROP" in _rules(lax)
        assert f"-A EH-CHAOS -s {cidr} -j DROP" in _rules(lax)
    assert "10.244.1.0/24 -j DROP" not in lax and "172.18.0.2/32 -j DROP" not in lax
    # ...and the same nodes at their IPv6 addresses on kind's network, in ip6tables (pods have none: IPv4 cluster)
    v6 = [f"-A EH-CHAOS {d} fc00:f853:ccd:e793::{n}/128 -j DROP" for n in (6, 7, 8) for d in ("-d", "-s")]
    assert _rules(lax, "ip6tables") == v6
    assert "tc qdisc add dev eth0 parent 1:4 handle 40: netem delay 12ms\n" in lax
    for cidr in ("172.18.0.3/32", "10.244.1.0/24", "10.244.2.0/24", "10.244.0.0/24"):
        assert f"u32 match ip dst {cidr} flowid 1:4" in lax
    # ...but not the control-plane's own address: kube-proxy source-NATs the users' NodePort traffic to it,
    # so the answers to users go there (in-zone answers must not pay the service link)
    assert nodes["edge-control-plane"].internal_ip == "172.18.0.2"
    assert "ip dst 172.18.0.2/32 flowid" not in lax
    # every rendered object and every entry Service reached the API
    posts = [d for meth, _p, d in api.writes() if meth == "POST" and isinstance(d, dict)]
    kinds = [d.get("kind") for d in posts]
    assert kinds.count("Deployment") == len(m.of_kind("Deployment"))
    entries = sorted(n for d in posts if (n := d.get("metadata", {}).get("name", "")).startswith("entry-"))
    assert entries == ["entry-2a", "entry-2b", "entry-las-1a", "entry-lax-1a", "entry-phx-2a", "entry-wl1-sfo-wlz-1"]


def test_images_are_pulled_once_by_the_host_and_loaded_into_the_nodes(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """A kind node's kubelet pulls every image it lacks from Docker Hub, anonymously, all from the host's one
    address: ~40 pulls per cluster (each node its own copy of the dataplane, control-plane and app images),
    where Docker Hub allows 100 per 6 hours. The second `make e2e BACKEND=kind` of a morning, or a shared CI
    runner, met `toomanyrequests`. Now the host pulls each image once (kept in its Docker across clusters)
    and `kind load docker-image` puts them into the nodes: no node pulls, and a new cluster pulls nothing."""
    m = rendered(tmp_path)
    g = m.helm_values["global"]
    first = kind_backend(tmp_path / "wd")
    first.up(m)
    wanted = {KIND_NODE_IMAGES["v0.33.0"], g["image"], g["imageK8S"], g["imageConsulDataplane"]} | {
        str(c["image"]) for o in m.of_kind("Deployment") for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert api.sim.call(lambda: list(api.sim.registry_pulls)) == []
    assert sorted(api.sim.call(lambda: list(api.sim.host_pulls))) == sorted(wanted)
    first.down()
    first.close()
    again = kind_backend(tmp_path / "wd2")
    again.up(m)
    assert api.sim.call(lambda: (list(api.sim.registry_pulls), len(api.sim.host_pulls))) == ([], len(wanted))
    again.close()


def test_a_failed_image_load_is_said_and_left_to_the_nodes(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    """`kind load` cannot always save an image (Docker Desktop's containerd store and multi-platform images):
    the run goes on, says so in one line, and the nodes pull for themselves, as they did before."""
    api.sim.kind_load_error = "ERROR: failed to load image: command \"docker save -o /tmp/x.tar\" failed: " \
        "content digest sha256:abc: not found"  # fmt: skip
    said: list[str] = []
    b = kind_backend(tmp_path / "wd")
    b.up(rendered(tmp_path), progress=said.append)
    assert [m for m in said if m.startswith("`kind load docker-image` failed (ERROR: failed to load image")]
    assert api.sim.call(lambda: len(api.sim.registry_pulls)) > 0
    b.close()


def test_up_reuses_an_existing_cluster(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    m = rendered(tmp_path)
    first = kind_backend(tmp_path / "wd")
    first.up(m)
    first.close()
    again = kind_backend(tmp_path / "wd2")
    tools.reset()
    again.up(m)
    assert [c for c in tools.calls() if c[0] == "kind"] == [
        ["kind", "get", "clusters"],
        ["kind", "export", "kubeconfig", "--name", "edge", "--kubeconfig", str(tmp_path / "wd2" / "kubeconfig")],
        ["kind", "load", "docker-image", "--name", "edge", *cluster_images(m)],  # skips what the nodes have
    ]
    assert not [c for c in tools.calls() if c[:2] == ["docker", "pull"]]  # the host has them from the first up
    again.close()


# -- the node image: a Kubernetes the pinned chart supports ---------------------------------------------

KIND_V033_K8S_134 = "kindest/node:v1.34.11@sha256:44e222ee2132dab25ff87301682f89eb82c7880ea3a1bf543bfe9708fd08d67d"


def test_the_cluster_runs_a_kubernetes_the_pinned_chart_supports(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """consul-k8s 1.9.11 (the pinned chart) supports Kubernetes 1.30-1.34. A developer's kind v0.33.0 defaults to
    kindest/node v1.37.0, so a cluster created without an image ran a Kubernetes the chart was never tested on;
    the image kind's v0.33.0 release notes list for 1.34 (by digest, as they say to) is the one to run."""
    assert api.sim.kind_release == "v0.33.0"
    backend = kind_backend(tmp_path / "wd")
    backend.up(rendered(tmp_path))
    assert backend.cluster.request("GET", "/version")["gitVersion"] == "v1.34.11"
    assert api.sim.kind_node_image == KIND_V033_K8S_134
    assert backend.cluster_warnings() == []  # nothing for preflight.json to carry
    backend.close()


def test_every_pinned_node_image_is_in_the_charts_range_and_pinned_by_digest(tmp_path: Path) -> None:
    """The table is checked against the range the manifests carry (render.helm.KUBERNETES_SUPPORTED), the one
    place it lives: an entry outside it, or one by tag only (kind builds node images per release), fails here."""
    from harness.backends.kube.version import image_minor, supported_range

    rng = supported_range(rendered(tmp_path).meta)
    assert rng is not None and str(rng) == "1.30-1.34"
    for release, image in KIND_NODE_IMAGES.items():
        assert image_minor(image) in rng, release
        assert image.startswith("kindest/node:v") and re.search(r"@sha256:[0-9a-f]{64}$", image), release


KIND_V030_K8S_134 = "kindest/node:v1.34.0@sha256:7416a61b42b1662ca6ca89f02028ac133a309a2a30ba309614e8ec94d976dc5a"


@pytest.mark.parametrize(
    ("release", "image", "k8s"),
    [
        ("v0.31.0", KIND_V030_K8S_134, "v1.34.0"),
        ("v0.34.2", KIND_V033_K8S_134, "v1.34.11"),
        ("v0.29.0", None, "v1.33.1"),
    ],
    ids=["between-pinned", "newer-than-pinned", "older-than-pinned"],
)
def test_a_kind_release_without_a_pinned_image_gets_the_nearest_older_one_or_its_own_default(
    api: FakeApiServer, tools: Tools, tmp_path: Path, release: str, image: str | None, k8s: str
) -> None:
    """kind v0.31.0 defaults to Kubernetes 1.35.0 and v0.32.0 to 1.36.1, and their notes' 1.34 images are not
    pinned here: such a release gets the image pinned for the newest listed release before it (kind runs other
    releases' node images on a best-effort basis), said in one line; a release older than every listed one
    defaults to a Kubernetes of 1.33 or older and keeps its own image. Either way the cluster is in range."""
    api.sim.kind_release = release
    said: list[str] = []
    backend = kind_backend(tmp_path / "wd")
    backend.up(rendered(tmp_path), progress=said.append)
    create = next(c for c in tools.calls() if c[:3] == ["kind", "create", "cluster"])
    assert (create[-2:] == ["--image", image]) if image else "--image" not in create, create
    assert backend.cluster.request("GET", "/version")["gitVersion"] == k8s
    told = [line for line in said if line.startswith(f"kind {release}:")]
    assert len(told) == 1 and (image is None or image in told[0]), said
    assert backend.cluster_warnings() == []
    backend.close()


def test_a_pinned_image_outside_the_manifests_range_or_manifests_without_one_are_refused(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two refusals before anything is created: a chart re-pinned to a range the table's image leaves (the table
    must move with it), and manifests rendered before the range was recorded (re-render)."""
    import harness.backends.kind as kind_mod

    monkeypatch.setitem(kind_mod.KIND_NODE_IMAGES, "v0.33.0", "kindest/node:v1.37.0@sha256:" + "a" * 64)
    with pytest.raises(BackendError, match=r"pinned for kind v0\.33\.0 .*outside Kubernetes 1\.30-1\.34"):
        kind_backend(tmp_path / "wd").up(rendered(tmp_path))
    m = rendered(tmp_path / "old")
    m.meta["chart"].pop("kubernetes")
    with pytest.raises(BackendError, match=r"chart\.kubernetes missing \(re-render\)"):
        kind_backend(tmp_path / "wd2").up(m)
    assert api.sim.kind_cluster is None
    assert not any(c[:3] == ["kind", "create", "cluster"] for c in tools.calls())


def test_a_kind_version_naming_no_release_is_refused_in_one_line_before_anything_is_created(
    api: FakeApiServer,
    tools: Tools,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A kind built from source says no release: no image can be chosen for it, so `up` says so in one line,
    with the range and the way out, and creates nothing (exit 3, as for a missing tool)."""
    from harness.cli import main

    api.sim.kind_release = "devel"
    monkeypatch.delenv("EH_KIND_IMAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    rc = main(["up", "--backend", "kind", "--cluster", "edge"])
    err = capsys.readouterr().err.strip()
    assert rc == 3
    assert err == (
        "error: `kind version` names no release ('kind devel go1.25.1 linux/amd64'): pass --kind-image (or "
        "EH_KIND_IMAGE) with a kindest/node image of Kubernetes 1.30-1.34"
    )
    assert [c for c in tools.calls() if c[0] == "kind"] == [["kind", "get", "clusters"], ["kind", "version"]]
    assert api.sim.kind_cluster is None and not (tmp_path / "runs" / ".backend" / "kind-edge").exists()


def test_an_explicit_node_image_is_used_as_given(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's image (--kind-image / EH_KIND_IMAGE) is the override: any kind release, no `kind version` asked.
    One outside the chart's range runs too, with a WARNING line that preflight.json and the report carry."""
    from harness.backends import BackendOptions

    api.sim.kind_release = "v0.31.0"  # not pinned here
    monkeypatch.setenv("EH_KIND_IMAGE", "registry.example.test/kindest/node:v1.33.7")
    opts = BackendOptions.from_env(name="kind", cluster="edge", workdir=tmp_path / "wd")
    assert opts.kind_image == "registry.example.test/kindest/node:v1.33.7"
    b = KindBackend.from_options(opts)
    b.ready_poll_s = 0.1
    said: list[str] = []
    b.up(rendered(tmp_path), progress=said.append)
    create = next(c for c in tools.calls() if c[:3] == ["kind", "create", "cluster"])
    assert create[-2:] == ["--image", "registry.example.test/kindest/node:v1.33.7"]
    assert ["kind", "version"] not in tools.calls()
    assert b.cluster.request("GET", "/version")["gitVersion"] == "v1.33.7"
    assert not [line for line in said if line.startswith("WARNING")]
    b.down()
    b.close()
    newer = "kindest/node:v1.35.0@sha256:452d707d4862f52530247495d180205e029056831160e22870e37e3f6c1ac31f"
    b = kind_backend(tmp_path / "wd2", node_image=newer)
    said.clear()
    b.up(rendered(tmp_path), progress=said.append)
    warning = (
        "kind cluster edge runs Kubernetes 1.35 (v1.35.0), outside 1.30-1.34, the range consul-k8s chart 1.9.11 "
        "supports: results may reflect an untested combination"
    )
    assert [line for line in said if line.startswith("WARNING")] == [f"WARNING: {warning}"]
    assert b.cluster_warnings() == [warning]
    b.close()


def test_chaos_commands(up: tuple[KindBackend, Manifests], tools: Tools, api: FakeApiServer) -> None:
    backend, _m = up
    api.sim.t.entrypoint_s = 0.0  # each node's entrypoint is done by the first look (its wait: test_kube_likeness)
    api.sim.t.node_boot_s = 0.5
    tools.reset()
    backend.kill_node("edge-worker3")
    # the kubelet, and kube-proxy with it, come back after the restore's rules: held until the harness first asks
    # for kube-proxy's sync (a boot timer of 3 s raced the harness's own calls, and lost on a busy machine)
    node = api.sim.nodes["edge-worker3"]
    api.sim.call(lambda: setattr(node, "kubelet_held", True) or setattr(node, "kubelet_held_until_asked", True))
    backend.restore_node("edge-worker3")
    backend.zone_outage("us-west-2a")
    backend.restore_zone("us-west-2a")
    calls = tools.calls()
    # after each start, PID 1 is asked until kind's entrypoint has handed over to systemd (once here: it has)
    booted = [c for c in calls if c[3:] == ["cat", "/proc/1/comm"]]
    assert booted == [["docker", "exec", "edge-worker3", "cat", "/proc/1/comm"],
                      ["docker", "exec", "edge-worker", "cat", "/proc/1/comm"]]  # fmt: skip
    assert [calls[calls.index(b) - 1] for b in booted] == [["docker", "start", "edge-worker3"],
                                                            ["docker", "start", "edge-worker"]]  # fmt: skip
    calls = [c for c in calls if c not in booted]
    edge_nodes = ["edge-worker3", "edge-worker4", "edge-worker5", "edge-worker6"]
    assert calls[0] == ["docker", "stop", "edge-worker3"]
    assert calls[1] == ["docker", "start", "edge-worker3"]
    # the restarted container's address may be new (Docker gave it a new endpoint): every edge node's rules,
    # its own on the fresh netns and the others' naming it, are set again at the addresses Docker says now
    assert calls[2][:4] == ["docker", "inspect", "--format", INSPECT_FORMAT]
    assert [c[:4] for c in calls[3:7]] == [["docker", "exec", n, "sh"] for n in edge_nodes]
    # then the restarted edge node is asked until its kube-proxy has made its first sync, whose jumps went on top
    # of those rules, and its rules are set once more, first again; not for a Region node (no rules to move)
    assert calls[7] == ["docker", "inspect", "--format", INSPECT_FORMAT, "edge-worker3"]
    asked = [i for i, c in enumerate(calls) if c[3:] == ["sh", "-c", KUBE_PROXY_SYNCED]]
    assert asked and asked == list(range(8, 8 + len(asked)))
    assert all(calls[i][:3] == ["docker", "exec", "edge-worker3"] for i in asked)
    again = calls[asked[-1] + 1 : asked[-1] + 3]
    assert again[0][:2] == ["docker", "inspect"] and again[1][:3] == ["docker", "exec", "edge-worker3"]
    assert "-I FORWARD 1 -j EH-CHAOS" in _transaction(again[1][5])
    del calls[7 : asked[-1] + 3]
    assert calls[7:9] == [["docker", "stop", "edge-worker"], ["docker", "start", "edge-worker"]]
    # an AZ node too: every service link (and a partition) names the Region's nodes
    assert calls[9][:2] == ["docker", "inspect"] and [c[:3] for c in calls[10:]] == [
        ["docker", "exec", n] for n in edge_nodes
    ]

    az = api.sim.call(lambda: api.sim.nodes["edge-worker"].ip)  # us-west-2a's node, restarted above
    assert az != "172.18.0.3"  # ...under a new address
    tools.reset()
    backend.partition_zone(LAX)
    backend.set_link(LAX, 150, 5)
    script = tools.calls()[-1][5]
    for cidr in (f"{az}/32", "10.244.1.0/24", "172.18.0.2/32"):
        assert f"-A EH-CHAOS -d {cidr} -j DROP" in _rules(script)  # partitioned from the Region
    # ...but users still enter the cut-off zone: their NodePort traffic, source-NATed to the control-plane,
    # reaches the entry Services' target (nginx, 80) and its answers go back, ahead of the drops
    entry = ["-A EH-CHAOS -s 172.18.0.2/32 -p tcp --dport 80 -j ACCEPT",
             "-A EH-CHAOS -d 172.18.0.2/32 -p tcp --sport 80 -j ACCEPT"]  # fmt: skip
    rules = _rules(script)
    assert all(r in rules for r in entry)
    assert max(map(rules.index, entry)) < rules.index("-A EH-CHAOS -d 172.18.0.2/32 -j DROP")
    assert "netem delay 150ms loss 5%" in script
    backend.heal_zone(LAX)
    backend.clear_link(LAX)
    script = tools.calls()[-1][5]
    assert f"{az}/32 -j DROP" not in script and "netem delay 12ms\n" in script
    assert "ACCEPT" not in script  # healed: nothing is dropped, nothing needs letting through
    assert all(c[2] == "edge-worker3" for c in tools.calls() if c[1] == "exec")

    with pytest.raises(BackendError, match="us-west-2a is not an edge zone"):
        backend.partition_zone("us-west-2a")
    with pytest.raises(BackendError, match="no nodes in zone us-west-2-nowhere-1a"):
        backend.zone_outage("us-west-2-nowhere-1a")
    assert backend.nodes()["edge-worker4"] == "us-west-2-las-1a"


def test_a_partition_after_a_restore_puts_its_jump_above_kube_proxys(
    up: tuple[KindBackend, Manifests], api: FakeApiServer
) -> None:
    """restore_node sets a restarted node's rules as soon as its container runs; its kube-proxy then syncs and
    prepends its own jumps (EnsureRule(Prepend)), KUBE-FORWARD above EH-CHAOS in FORWARD. The rules used to add
    the jump only when absent (`iptables -C || iptables -I 1`), so a later partition of the zone left it below
    KUBE-FORWARD, which accepts RELATED,ESTABLISHED: the zone's open connections were not cut."""
    backend, _m = up
    sim = api.sim
    sim.t.entrypoint_s = 0.0  # each node's entrypoint is done by the first look
    sim.t.node_boot_s = 2.0  # the kubelet and its pods (kube-proxy) are back well after restore_node's rules
    node, jump = "edge-worker3", "-j EH-CHAOS"  # us-west-2-lax-1a's

    def table() -> dict[str, list[str]]:
        return sim.call(lambda: {c: list(r) for c, r in sim.nodes[node].iptables.items()})

    assert all(table()[c][0] == jump for c in ("INPUT", "OUTPUT", "FORWARD"))  # up: after kube-proxy's sync
    backend.kill_node(node)
    backend.restore_node(node)  # returns after kube-proxy's first sync, the jump first again (test_kube_likeness)
    assert any(r.endswith("-j KUBE-FORWARD") for r in table()["FORWARD"])
    # the jump below kube-proxy's, as restore_node used to leave it (moved by hand): a partition puts it first
    sim.call(lambda: sim.nodes[node].iptables["FORWARD"].remove(jump))
    sim.call(lambda: sim.nodes[node].iptables["FORWARD"].append(jump))

    backend.partition_zone(LAX)
    after = table()
    for c in ("INPUT", "OUTPUT", "FORWARD"):
        assert after[c][0] == jump and after[c].count(jump) == 1, (c, after[c])
    assert any(r.endswith("-j KUBE-FORWARD") for r in after["FORWARD"])  # kube-proxy's own rules are kept
    assert any(r.endswith("-j DROP") for r in after["EH-CHAOS"])
    backend.set_link(LAX, 150)  # imposed again: the same order, one jump per chain
    assert {c: r for c, r in table().items() if c != "EH-CHAOS"} == {c: r for c, r in after.items() if c != "EH-CHAOS"}


def test_rules_set_again_never_let_a_cut_packet_through_between_their_steps(
    up: tuple[KindBackend, Manifests], api: FakeApiServer
) -> None:
    """Every fault sets an edge node's rules again from scratch. They used to empty EH-CHAOS (`iptables -F`), move
    its jumps (`-D` each, `-I 1`) and add the drops back one `iptables -A` at a time: each a separate commit, so
    for a moment the node dropped nothing, and LZ-to-LZ traffic (never allowed) or a partitioned zone's traffic
    passed. One `iptables-restore --noflush` transaction replaces them: every state the node's table passes
    through drops what both the old and the new rules drop."""
    backend, _m = up
    sim = api.sim
    node = "edge-worker3"  # us-west-2-lax-1a's

    def pod(n: str) -> str:  # an address in the node's pod CIDR
        return str(sim.call(lambda: sim.get("v1", "nodes", None, n)["spec"]["podCIDR"])).rsplit(".", 1)[0] + ".7"

    lax, las, az = pod(node), pod("edge-worker4"), pod("edge-worker")
    lax_ip, las_ip = sim.call(lambda: (sim.nodes[node].ip, sim.nodes["edge-worker4"].ip))

    def during(action: Any) -> dict[str, list[str]]:
        """The verdicts of each packet at every state the node's table was in while `action` ran."""
        sim.call(lambda: sim.nodes[node].committed.clear())
        action()
        seen = {
            "las->lax": sim.call(lambda: sim.verdicts_committed(node, "FORWARD", las, lax)),
            "lax->las": sim.call(lambda: sim.verdicts_committed(node, "FORWARD", lax, las)),
            "node->las node": sim.call(lambda: sim.verdicts_committed(node, "OUTPUT", lax_ip, las_ip)),
            "az->lax": sim.call(lambda: sim.verdicts_committed(node, "FORWARD", az, lax)),
            "az->lax open": sim.call(lambda: sim.verdicts_committed(node, "FORWARD", az, lax, state="ESTABLISHED")),
        }
        assert all(seen.values()), seen  # the action did set the node's rules
        return seen

    backend.partition_zone(LAX)
    seen = during(lambda: backend.set_link(LAX, 150))  # the partition's rules set again, the same drops
    assert {k: set(v) for k, v in seen.items()} == {k: {"DROP"} for k in seen}, seen
    seen = during(lambda: backend.heal_zone(LAX))  # control: the heal opens the Region, LZ-to-LZ stays cut
    assert seen["az->lax"][-1] == seen["az->lax open"][-1] == "ACCEPT", seen
    lz = ("las->lax", "lax->las", "node->las node")
    assert {k: set(seen[k]) for k in lz} == {k: {"DROP"} for k in lz}, seen


@pytest.mark.parametrize("ipv6", [True, False], ids=["dual-stack network", "ipv4-only network"])
def test_a_partition_cuts_the_control_plane_and_other_zones_in_both_families(
    api: FakeApiServer, tools: Tools, tmp_path: Path, ipv6: bool
) -> None:
    """kind's Docker network has IPv6 wherever Docker can give it one, whatever the cluster's ipFamily
    (ensureNetwork, pkg/cluster/internal/providers/docker/network.go), so each node also has an IPv6 address,
    and the name the kubelet and kube-proxy dial for the API server (`edge-control-plane:6443`) has it too:
    Go's dialer falls back to IPv6 300 ms after an IPv4 connect that hangs (dialParallel), and the API server
    listens on both. With IPv4-only rules a partitioned zone's nodes kept the control plane over IPv6, and
    nothing stopped an LZ node's process reaching another LZ's node there. The drops are mirrored in ip6tables,
    set in one transaction too; on an IPv4-only network (a host without IPv6) there is nothing to mirror."""
    sim = api.sim
    sim.kind_ipv6 = ipv6
    backend = kind_backend(tmp_path / "wd")
    backend.up(rendered(tmp_path))
    try:
        node, las, az, cp = "edge-worker3", "edge-worker4", "edge-worker", "edge-control-plane"
        addr = sim.call(lambda: {n: (sim.nodes[n].ip, sim.nodes[n].ip6) for n in (node, las, az, cp)})
        assert bool(addr[node][1]) == ipv6  # docker inspect tells the harness each node's IPv6 address
        v6 = 1 if ipv6 else 0

        def verdicts(fam: int, to: str, **pkt: Any) -> list[str]:
            return sim.call(lambda: sim.verdicts_committed(node, "OUTPUT", addr[node][fam], addr[to][fam], **pkt))

        assert sim.call(lambda: sim.reaches_api_server(node))  # control: not cut yet
        tools.reset()
        sim.call(lambda: sim.nodes[node].committed.clear())
        backend.partition_zone(LAX)
        assert not sim.call(lambda: sim.reaches_api_server(node))  # neither family reaches the control plane
        api_pkt = {"sport": 43210, "dport": 6443}
        assert verdicts(v6, cp, **api_pkt)[-1] == verdicts(v6, az)[-1] == verdicts(v6, las)[-1] == "DROP"
        assert ("ip6tables-restore" in tools.calls()[-1][5]) == ipv6  # nothing to mirror without IPv6
        sim.call(lambda: sim.nodes[node].committed.clear())
        backend.set_link(LAX, 150)  # set again: every state in between drops them too
        for to in (cp, az, las):
            assert set(verdicts(v6, to, **api_pkt)) == {"DROP"}, to

        backend.heal_zone(LAX)  # control: the Region is open again, by either family; the other LZ is not
        assert sim.call(lambda: sim.reaches_api_server(node))
        assert sim.call(lambda: sim.verdict(node, "OUTPUT", addr[node][v6], addr[az][v6])) == "ACCEPT"
        assert sim.call(lambda: sim.verdict(node, "OUTPUT", addr[node][v6], addr[las][v6])) == "DROP"
    finally:
        backend.close()


def test_the_rendered_kind_cluster_is_ipv4_as_the_rules_ipv4_only_parts_assume(tmp_path: Path) -> None:
    """Only the edge rules' drops are mirrored in ip6tables. The entry exemption (the NodePort kind publishes to
    the control-plane's IPv4 address) and the service link's netem filter (`protocol ip`) are IPv4's, which holds
    while pods, Services and node InternalIPs are: the rendered kind config leaves `networking.ipFamily` at kind's
    default, ipv4 (SetDefaultsCluster, pkg/apis/config/v1alpha4/default.go). A dual-stack cluster would need both
    mirrored."""
    m = rendered(tmp_path)
    assert (m.kind_config.get("networking") or {}).get("ipFamily", "ipv4") == "ipv4", m.kind_config


def test_failed_tool_is_a_clear_error(up: tuple[KindBackend, Manifests], tools: Tools, api: FakeApiServer) -> None:
    backend, _m = up
    api.sim.call(lambda: api.sim.node_down("edge-worker3"))
    with pytest.raises(
        BackendError, match=r"^`docker exec edge-worker3 sh -c <script>` failed \(exit 1\): .*is not running"
    ):
        backend.partition_zone(LAX)


# -- finding 10: tc netem -------------------------------------------------------------


def test_without_sch_netem_up_works_and_service_link_faults_are_refused(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    api.sim.netem_available = False  # the host kernel has no sch_netem (WSL2, this machine)
    progress: list[str] = []
    backend = kind_backend(tmp_path / "wd", progress=progress.append)
    backend.up(rendered(tmp_path))
    assert any("service-link latency NOT emulated" in p and "Specified qdisc kind is unknown" in p for p in progress)
    execs = [c for c in tools.calls() if c[:2] == ["docker", "exec"] and c[3:5] == ["sh", "-c"]]
    scripts = [c[5] for c in execs if c[5] != NETEM_PROBE]
    assert len(scripts) == 4 and not any("netem" in s for s in scripts)
    assert all(_rules(s) for s in scripts)  # hub-and-spoke still imposed
    assert "set_link" not in backend.capabilities() and "kill_node" in backend.capabilities()
    with pytest.raises(BackendError, match=r"cannot set_link: service-link latency needs tc netem .*sch_netem"):
        backend.set_link(LAX, 100)
    backend.clear_link(LAX)  # a rollback of a refused fault is harmless

    # the chaos action refuses before recording anything (no fault that "never recovers")
    from harness.chaos import actions

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    monkeypatch.setenv("EH_RUN_DIR", str(run_dir))
    monkeypatch.setattr(actions, "_backend", lambda _cfg: backend)
    with pytest.raises(BackendError, match="cannot set_link"):
        actions.degrade_link(LAX, 100, duration_s=0)
    assert not (run_dir / "chaos.jsonl").exists() or (run_dir / "chaos.jsonl").read_text() == ""
    backend.close()


# -- finding 3: Ready is the condition, not the phase ------------------------------------


def test_pod_phases_report_the_ready_condition(up: tuple[KindBackend, Manifests], api: FakeApiServer) -> None:
    backend, _m = up
    states = backend.status().pods
    assert states and set(states.values()) == {"Ready"}
    assert backend.status().up
    pod = next(n for n in states if n.startswith("product-api-lax-1a-"))
    # readiness fails while the container keeps running: phase Running, not Ready
    api.sim.call(lambda: api.sim.block_readiness("hashicups-lax-1a", pod))
    assert wait_until(lambda: backend.status().pods.get(pod) == "NotReady")
    raw = backend.cluster.request("GET", f"/api/v1/namespaces/hashicups-lax-1a/pods/{pod}")
    assert raw["status"]["phase"] == "Running"
    assert not backend.status().up

    from harness.chaos import actions

    assert "product-api" not in actions.ready_services(backend, LAX)
    api.sim.call(lambda: api.sim.block_readiness("hashicups-lax-1a", pod, False))
    assert actions.wait_ready(backend, LAX, ["product-api"], timeout_s=10) < 10
    backend.set_pod_unready(LAX, "product-api")
    assert backend.status().pods[pod] == "Unready"


# -- finding 4: the inventory is a history from up on --------------------------------------


def test_inventory_is_watched_from_up_with_ready_ip_and_removed_events(
    up: tuple[KindBackend, Manifests], api: FakeApiServer
) -> None:
    backend, _m = up
    path = backend.inventory_path
    assert path.exists(), "up starts the recording: the history begins before the first request"
    first = _lines(path)
    pods = {r["pod"] for r in first if r["event"] == "added"}
    assert len(pods) == 20 and {r["pod"] for r in first if r["event"] == "ready"} == pods
    for r in first:  # every ready comes after its added
        if r["event"] == "ready":
            added = next(a for a in first if a["pod"] == r["pod"] and a["event"] == "added")
            assert r["ts"] >= added["ts"]

    old = next(p for p in pods if p.startswith("product-api-lax-1a-"))
    old_ip = next(r["ip"] for r in first if r["pod"] == old)
    backend.kill_pod(LAX, "product-api")
    assert wait_until(lambda: any(r["event"] == "ready" and r["pod"] not in pods for r in _lines(path)), 60)
    recs = _lines(path)
    assert any(r["event"] == "removed" and r["pod"] == old for r in recs)
    new = next(r for r in recs if r["event"] == "added" and r["pod"] not in pods)
    assert new["pod"].startswith("product-api-lax-1a-") and new["ip"] != old_ip and new["zone"] == LAX
    assert new["ip"].startswith("10.244.3.")  # from edge-worker3's podCIDR

    # a node lost for longer than the node controller's grace period: its pods turn unready in the API;
    # when it comes back they restart under new IPs (the same pod names)
    backend.kill_node("edge-worker4")
    las = {r["pod"]: r["ip"] for r in recs if r["event"] == "added" and r["zone"] == "us-west-2-las-1a"}
    assert wait_until(lambda: {r["pod"] for r in _lines(path) if r["event"] == "unready"} >= set(las), 60)
    backend.restore_node("edge-worker4")
    assert wait_until(lambda: {r["pod"] for r in _lines(path) if r["event"] == "ip"} >= set(las), 60)
    assert wait_until(lambda: sum(1 for r in _lines(path) if r["event"] == "ready" and r["pod"] in las) == 6, 60)
    moved = {r["pod"]: r["ip"] for r in _lines(path) if r["event"] == "ip"}
    assert all(moved[p] != ip for p, ip in las.items())


def test_close_stops_every_background_thread(up: tuple[KindBackend, Manifests]) -> None:
    backend, _m = up
    before = set(threading.enumerate())
    backend.close()  # the recording started by up
    backend.inventory()  # an in-memory watch, as a chaos process has
    backend.close()
    backend.start_recording()
    backend.entrypoints()
    backend.log_sources()
    backend.envoy_admin(next(iter(backend.status().pods)), "/ready")
    mine = [t for t in threading.enumerate() if t not in before and t.name.startswith("eh-")]
    assert "eh-inventory-watch" in {t.name for t in mine}
    assert any(t.name.startswith("eh-entry-monitor-") for t in mine)
    backend.close()
    assert wait_until(lambda: not [t for t in mine if t.is_alive()], 60), [t.name for t in mine if t.is_alive()]


# -- finding 5: entry points survive pod and node loss ------------------------------------


def test_entry_points_are_published_node_ports_that_survive_pod_and_node_loss(
    up: tuple[KindBackend, Manifests], api: FakeApiServer, tools: Tools
) -> None:
    backend, _m = up
    tools.reset()
    urls = backend.entrypoints()
    assert tools.calls() == []  # no port-forward process: the ports were published when the cluster was created
    assert set(urls) == {
        "us-west-2a",
        "us-west-2b",
        LAX,
        "us-west-2-las-1a",
        "us-west-2-phx-2a",
        "us-west-2-wl1-sfo-wlz-1",
    }
    lax = urls[LAX]
    assert all(_get(u) == 200 for u in urls.values())
    # the frontend pod dies: the URL is down until the replacement is ready, then up again at the same URL.
    # The replacement's start is held (a slow image pull) while the test looks: a sim replacing it in 0.4 s
    # could otherwise be up before a starved test thread looked at all (the down window is not the test's)
    start_s = api.sim.t.start_s
    api.sim.t.start_s = 3600.0
    try:
        backend.kill_pod(LAX, "frontend")
        assert wait_until(lambda: _get(lax) == 0, 60)
    finally:
        api.sim.t.start_s = start_s
    assert wait_until(lambda: _get(lax) == 200, 60)
    # its node dies: down while the zone has no frontend, back when the node is
    backend.kill_node("edge-worker3")
    assert _get(lax) == 0
    backend.restore_node("edge-worker3")
    assert wait_until(lambda: _get(lax) == 200, 60)
    # the record says when
    recs = _lines(backend.entrypoints_path)
    lax_recs = [(r["up"], r["reason"]) for r in recs if r["zone"] == LAX]
    assert lax_recs[0] == (True, None)
    assert (False, "no ready frontend pod") in lax_recs or any(not up and "probe" in str(why) for up, why in lax_recs)
    assert lax_recs[-1] == (True, None) or wait_until(
        lambda: [r["up"] for r in _lines(backend.entrypoints_path) if r["zone"] == LAX][-1], 5
    )
    assert {r["zone"] for r in recs} == set(urls)


# -- finding 6: access logs are complete before the cluster goes -------------------------------


def test_access_logs_are_flushed_every_second_and_read_to_the_end(
    up: tuple[KindBackend, Manifests], api: FakeApiServer
) -> None:
    backend, m = up
    assert m.helm_values["connectInject"]["envoyExtraArgs"] == "--file-flush-interval-msec 1000"
    pod = next(p for p in api.sim.pods_of("frontend", LAX))
    dp = next(c for c in pod["spec"]["containers"] if c["name"] == "consul-dataplane")
    assert dp["args"][-3:] == ["--", "--file-flush-interval-msec", "1000"]  # what the injector made of the value
    sources = backend.log_sources()
    url = backend.entrypoints()[LAX]
    sent = 0
    for _ in range(20):
        assert httpx.post(url + "/api", json={"query": "{ coffees { id } }"}, timeout=5).status_code == 200
        sent += 1
    assert backend.flush_access_logs(timeout_s=10) == []
    read = [json.loads(x) for s in sources for x in s.read()]
    # each request is two hops: frontend -> public-api, public-api -> product-api, each logged by its caller's
    # sidecar (outbound) and by the serving sidecar's public listener (inbound, to its local app), as
    # consul-dataplane logs them
    inbound = [x for x in read if x.get("upstream_cluster") == "local_app"]
    lines = [x for x in read if x.get("upstream_cluster") != "local_app"]
    assert len([x for x in lines if x["caller_pod"] == pod["metadata"]["name"]]) == sent
    assert len(lines) == 2 * sent and len(inbound) == 2 * sent
    assert {x["upstream_host"].split(":")[0] for x in lines} <= {
        p["status"]["podIP"] for p in api.sim.pods_of(zone=LAX)
    }  # in-zone, attributable


def test_a_sidecar_that_never_flushes_is_reported(up: tuple[KindBackend, Manifests], api: FakeApiServer) -> None:
    """Without the flush setting Envoy holds lines 10 s: the flush wait says so instead of losing them quietly."""
    backend, _m = up
    backend.log_sources()
    pod = next(p for p in api.sim.pods_of("frontend", LAX))
    run = api.sim.pods[pod["metadata"]["uid"]]
    assert run.current is not None
    run.current.flush_ms = 3_600_000
    run.current.next_flush = 1e12
    httpx.post(backend.entrypoints()[LAX] + "/api", json={"query": "{ coffees { id } }"}, timeout=5)
    problems = backend.flush_access_logs(timeout_s=1)
    assert len(problems) == 1 and problems[0].startswith(pod["metadata"]["name"] + ": ")
    assert "still buffered after 1 s" in problems[0]


# -- finding 9: Envoy admin through a port-forward -------------------------------------------


def test_envoy_admin_and_artifacts_through_port_forward(
    up: tuple[KindBackend, Manifests], tools: Tools, tmp_path: Path
) -> None:
    backend, _m = up
    pod = next(n for n in backend.status().pods if n.startswith("public-api-lax-1a-"))
    tools.reset()
    clusters = json.loads(backend.envoy_admin(pod, "/clusters?format=json"))
    names = [c["name"] for c in clusters["cluster_statuses"]]
    # named after the primary, hash-prefixed as Consul names the rendered chains (2 s against the Region's 5 s)
    assert any(re.match(r"failover-target~0~[0-9a-f]{8}~product-api-lax-1a\.", n) for n in names), names
    assert any(re.match(r"failover-target~1~[0-9a-f]{8}~product-api-lax-1a\.", n) for n in names), names
    assert tools.calls() == [
        ["kubectl", "--kubeconfig", str(backend.kubeconfig), "port-forward", "--address", "127.0.0.1",
         "-n", "hashicups-lax-1a", f"pod/{pod}", ":19000"],
    ]  # fmt: skip
    backend.envoy_admin(pod, "/ready")
    assert len(tools.calls()) == 1  # the forward is reused while the pod lives
    out = tmp_path / "artifacts"
    backend.save_artifacts(out)
    dumps = sorted(out.glob("*/*.envoy-config_dump.json"))
    assert len(dumps) == 20 and len(list(out.glob("*/*.envoy-clusters.json"))) == 20
    assert all("configs" in json.loads(d.read_text()) for d in dumps)
    # a pod that is gone: a clear error, not a hang
    backend.kill_pod(LAX, "public-api")  # Terminating (its Envoy still up) until its kubelet stopped it
    assert wait_until(lambda: pod not in backend.status().pods, 30)
    with pytest.raises(BackendError, match=f"no pod {pod}|port-forward .*{pod}"):
        backend.envoy_admin(pod, "/ready")


# -- Consul's API and CRD status ------------------------------------------------------


def test_consul_api_survives_the_server_pod_and_crd_status(
    up: tuple[KindBackend, Manifests], api: FakeApiServer
) -> None:
    backend, _m = up
    with backend.consul_api() as url:
        leader = httpx.get(url + "/v1/status/leader", timeout=5).json()
        assert leader.endswith(":8300")
        backend.cluster.delete_pod("consul", "consul-server-0")  # the StatefulSet re-creates it under a new IP
        assert wait_until(lambda: _consul_leader(url) not in ("", leader), 60)
    statuses = backend.config_entry_status()
    assert statuses and all(s.synced for s in statuses)
    assert {s.kind for s in statuses} == {
        "ProxyDefaults", "ServiceDefaults", "ServiceResolver", "ServiceRouter", "ServiceIntentions",
    }  # fmt: skip


def _consul_leader(url: str) -> str:
    try:
        return str(httpx.get(url + "/v1/status/leader", timeout=3).json())
    except (httpx.HTTPError, ValueError):
        return ""


def test_config_entry_status_reports_what_consul_refused(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    api.sim.consul_reject[("ServiceResolver", "product-api-lax-1a")] = "Unexpected response code: 500 (no)"
    backend = kind_backend(tmp_path / "wd")
    backend.up(rendered(tmp_path))
    st = {(s.kind, s.name): s for s in backend.config_entry_status()}
    bad = st[("ServiceResolver", "product-api-lax-1a")]
    assert (bad.synced, bad.reason, bad.message) == (
        False,
        "ConsulAgentError",
        "writing config entry to consul: Unexpected response code: 500 (no)",
    )
    assert sum(1 for s in st.values() if not s.synced) == 1
    backend.close()


# -- tools, status, options ------------------------------------------------------------


def test_missing_tools_are_one_clear_line(api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    t = Tools(tmp_path, api, ("kind", "docker"))
    monkeypatch.setenv("PATH", str(t.bin))
    monkeypatch.setenv("FAKE_API", api.url)
    backend = KindBackend("edge", tmp_path / "wd")
    with pytest.raises(BackendError, match=r"^kind backend needs `helm` on PATH \(https://helm.sh"):
        backend.up(rendered(tmp_path))
    assert kind_available() == (False, "helm not found on PATH")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BackendError, match=r"^kind backend needs `docker` on PATH"):
        backend.check_tools()
    with pytest.raises(BackendError, match="no kubeconfig at"):
        backend.kill_pod("z", "s")


def test_kind_available_reports_the_docker_daemon(tools: Tools, monkeypatch: pytest.MonkeyPatch) -> None:
    assert kind_available() == (True, "Docker 27.3.1 answers and kind, helm, kubectl are installed")
    monkeypatch.setenv("FAKE_DOCKER_DOWN", "1")
    ok, why = kind_available()
    assert (
        not ok
        and why == "Docker daemon not usable: Cannot connect to the Docker daemon at unix:///var/run/docker.sock."
    )


def test_enterprise_needs_a_licence_secret_before_helm(
    api: FakeApiServer, tools: Tools, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.render import render, write
    from harness.render.manifests import load
    from harness.topology.model import load_topology

    write(render(load_topology(), "enterprise"), tmp_path / "ent")
    m = load(tmp_path / "ent")
    backend = KindBackend("edge", tmp_path / "wd")
    monkeypatch.delenv("CONSUL_LICENSE", raising=False)
    monkeypatch.delenv("CONSUL_LICENSE_PATH", raising=False)
    with pytest.raises(BackendError, match=r"^edition enterprise needs a licence: set CONSUL_LICENSE"):
        backend.up(m)
    assert not any(c[0] == "helm" for c in tools.calls())
    monkeypatch.setenv("CONSUL_LICENSE_PATH", str(tmp_path / "nope.hclic"))
    with pytest.raises(BackendError, match=r"^CONSUL_LICENSE_PATH .*nope\.hclic: No such file"):
        backend.up(m)
    (tmp_path / "lic.hclic").write_text("02MV4UU43BK5HGYYTOJZ\n")
    monkeypatch.setenv("CONSUL_LICENSE_PATH", str(tmp_path / "lic.hclic"))
    (tools.bin / "helm").unlink()  # stop right after the licence with a failing helm
    (tools.bin / "helm").write_text("#!/bin/sh\necho 'Error: INSTALLATION FAILED: timed out' >&2\nexit 1\n")
    (tools.bin / "helm").chmod(0o755)
    with pytest.raises(
        BackendError, match=r"^`helm repo add hashicorp .*` failed \(exit 1\): Error: INSTALLATION FAILED"
    ):
        backend.up(m)
    secret = next(d for meth, _p, d in api.writes() if meth == "POST" and d.get("kind") == "Secret")
    assert secret["metadata"] == {"name": "consul-ent-license", "namespace": "consul"}
    assert secret["stringData"] == {"key": "02MV4UU43BK5HGYYTOJZ"}


def test_status_down_and_kubeconfig_export(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    backend = KindBackend("edge", tmp_path / "wd")
    st = backend.status()
    assert (st.up, st.detail) == (False, "kind cluster edge does not exist")
    with pytest.raises(BackendError, match="no manifests recorded"):
        backend.entrypoints()
    backend.ready_poll_s = 0.1
    backend.up(rendered(tmp_path))
    st = backend.status()
    assert st.up and st.detail == "kind cluster edge: 20/20 pods ready"
    tools.reset()
    backend.down()
    assert tools.calls() == [["kind", "delete", "cluster", "--name", "edge", "--kubeconfig", str(backend.kubeconfig)]]
    assert not (tmp_path / "wd" / "state.json").exists()
    assert backend.status().detail == "kind cluster edge does not exist"
    backend.down()  # idempotent, as kind's delete is


def test_from_options(tmp_path: Path) -> None:
    from harness.backends import BackendOptions

    b = KindBackend.from_options(BackendOptions(name="kind", cluster="ci", workdir=tmp_path))
    assert (b.cluster_name, b.workdir, b.kubeconfig) == (
        "ci",
        tmp_path / "kind-ci",
        tmp_path / "kind-ci" / "kubeconfig",
    )
    # the poll interval: the backend's 2 s unless given (a simulated cluster's tests give less)
    assert b.ready_poll_s == 2.0
    fast = BackendOptions(name="kind", cluster="ci", workdir=tmp_path, ready_poll_s=0.1)
    assert KindBackend.from_options(fast).ready_poll_s == 0.1


def test_a_node_whose_entrypoint_never_hands_over_is_one_line_naming_docker_logs(
    up: tuple[KindBackend, Manifests], api: FakeApiServer
) -> None:
    """A restarted node whose kind entrypoint is still PID 1 when the wait runs out: an error naming the node, what
    PID 1 still is and where to look, not rules written into a table the entrypoint is about to rewrite."""
    backend, _m = up
    api.sim.t.entrypoint_s = api.sim.t.node_boot_s = 60.0  # a boot that takes a minute
    backend.kill_node("edge-worker3")
    backend._run("docker", "start", "edge-worker3")
    with pytest.raises(BackendError) as err:
        backend._wait_entrypoint(["edge-worker3"], timeout_s=0.5)
    assert str(err.value) == (
        "edge-worker3: kind's entrypoint did not hand over to systemd 0s after `docker start` "
        "(PID 1 is still 'entrypoint'); see `docker logs edge-worker3`"
    )


def test_node_addresses_docker_cannot_give_are_one_line(up: tuple[KindBackend, Manifests]) -> None:
    """`docker inspect` that finds none of the nodes (the cluster's containers removed behind the harness's back)
    is an error naming the cluster and Docker's own words; one it finds some of answers for those."""
    backend, _m = up
    with pytest.raises(BackendError, match=r"^`docker inspect` of kind cluster edge's nodes failed: Error: No such"):
        backend._containers(["edge-gone"])
    assert set(backend._containers(["edge-gone", "edge-worker3"])) == {"edge-worker3"}
