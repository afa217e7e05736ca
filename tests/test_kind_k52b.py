"""kind on a laptop, second pass (k52b): each test names the real behaviour it follows."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.backends.kind import KIND_NODE_IMAGES, cluster_images
from harness.render.manifests import Manifests
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_kind import Tools, kind_backend, up_refused, up_saying
from tests.test_backend_kind import tools as tools  # the fake tools on PATH, re-exported for pytest

pytestmark = pytest.mark.slow  # a fake API server and fake tools per test: seconds each


def _made_without_entry_mappings(m: Manifests) -> Manifests:
    """`m` as a harness from before the NodePort entry rendered it (its way in was a `kubectl port-forward`): the
    same nodes, labels and taints, no extraPortMappings on the control-plane; or a cluster of this name another
    tool made."""
    config = copy.deepcopy(m.kind_config)
    for node in config["nodes"]:
        node.pop("extraPortMappings", None)
    return dataclasses.replace(m, kind_config=config)


# -- a reused cluster's published ports ---------------------------------------------------------------------------


def test_a_left_over_cluster_without_the_configs_port_mappings_is_refused_up_front(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """kind publishes a node's extraPortMappings when it creates the node container (`docker run --publish`,
    kubernetes-sigs/kind pkg/cluster/internal/providers/docker/provision.go generatePortMappings); a container's
    published ports are fixed at its creation, so a cluster made from another config keeps that config's. A
    left-over cluster with the same nodes (b11a3d3's check passed it) but made without the entry mappings (by a
    harness from before the NodePort entry, or by another tool) was reused: Consul's chart, the workloads and
    the ready wait ran, and up failed only at its end, on `docker port` of an entry NodePort the control-plane
    does not publish. The published ports are now part of the shape check: refused in one line before anything
    is installed."""
    config = tmp_path / "old-kind-config.yaml"
    config.write_text(yaml.safe_dump(_made_without_entry_mappings(rendered(tmp_path)).kind_config))
    subprocess.run(["kind", "create", "cluster", "--name", "edge", "--config", str(config), "--kubeconfig",
                    str(tmp_path / "old-kubeconfig")], check=True, capture_output=True)  # fmt: skip
    tools.reset()
    msg = up_refused(tmp_path)
    assert "\n" not in msg and "kind cluster edge" in msg, msg
    assert "publishes no host port for 30100/tcp" in msg and "harness down" in msg, msg
    assert not [c for c in tools.calls() if c[:1] == ["helm"]], "refused before the chart is installed"


def test_a_left_over_cluster_publishing_the_configs_ports_and_more_is_reused(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """Control: a cluster publishing every port the config maps (and more: here the entry ports, where the config
    maps none, and the API server's 6443) is the shape up needs, and is reused."""
    first = kind_backend(tmp_path / "wd")
    first.up(rendered(tmp_path))
    first.close()
    said: list[str] = []
    again = kind_backend(tmp_path / "wd")
    try:
        again.up(_made_without_entry_mappings(rendered(tmp_path)), progress=said.append)
    finally:
        again.close()
    assert any("exists: reusing it" in s for s in said), said


# -- the node image, pulled before kind create -------------------------------------------------------------------


def test_the_node_image_is_pulled_before_kind_create_with_its_own_line(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """kind pulls a node image the host lacks inside `kind create cluster` (ensureNodeImages: `docker inspect
    --type=image`, else `docker pull`; kubernetes-sigs/kind pkg/cluster/internal/providers/docker/images.go),
    about 1 GB within the 900 s the harness gives the create for kubeadm's work too, and says nothing of it. up
    now pulls it first, saying so, and kind finds it there."""
    api.sim.host_images.update(cluster_images(rendered(tmp_path)))  # only the node image missing: new to this kind
    said = up_saying(tmp_path)
    image = KIND_NODE_IMAGES["v0.33.0"]
    assert api.sim.call(lambda: list(api.sim.kind_create_pulls)) == [], "kind create pulled the node image itself"
    calls = tools.calls()
    create = next(i for i, c in enumerate(calls) if c[:3] == ["kind", "create", "cluster"])
    assert ["docker", "pull", image] in calls[:create], calls[:create]
    assert any(s.startswith(f"pulling the kind node image {image}") for s in said), said


def test_a_node_image_pull_outlasting_its_bound_is_one_line_before_kind_create(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """A slow link: the node image's pull outlasts its own bound. One line naming the image and what to do, and
    no `kind create` (which, pulling it itself, ended in "`kind create cluster` did not finish in 900s")."""
    api.sim.call(lambda: setattr(api.sim, "host_pull_s", 3.0))
    msg = up_refused(tmp_path, prepare=lambda b: setattr(b, "node_image_pull_timeout_s", 1.0))
    image = KIND_NODE_IMAGES["v0.33.0"]
    assert "\n" not in msg and f"the kind node image {image} could not be pulled" in msg, msg
    assert "did not finish in 1s" in msg and f"`docker pull {image}`" in msg, msg
    assert not [c for c in tools.calls() if c[:2] == ["kind", "create"]], "refused before kind create"


def test_a_node_image_on_the_host_is_not_pulled_again(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    """Control: the host has the node image (an earlier cluster's): nothing pulled, kind create runs."""
    api.sim.host_images.update([*cluster_images(rendered(tmp_path)), KIND_NODE_IMAGES["v0.33.0"]])
    up_saying(tmp_path)
    calls = tools.calls()
    assert not [c for c in calls if c[:2] == ["docker", "pull"]], calls
    assert [c for c in calls if c[:3] == ["kind", "create", "cluster"]]


# -- CoreDNS off the nodes chaos stops ----------------------------------------------------------------------------


def _dns_nodes(api: FakeApiServer) -> list[str]:
    pods = api.sim.call(lambda: api.sim.items("v1", "pods", "kube-system"))
    return sorted(
        str((p.get("spec") or {}).get("nodeName") or "")
        for p in pods
        if ((p.get("metadata") or {}).get("labels") or {}).get("k8s-app") == "kube-dns"
        and not (p.get("metadata") or {}).get("deletionTimestamp")
    )


def test_cluster_dns_runs_on_the_control_plane_which_no_chaos_stops(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """kubeadm deploys CoreDNS (2 replicas) tolerating the control-plane taint and pinned to no node
    (cmd/kubeadm/app/phases/addons/dns/manifests.go), so kube-scheduler may place a replica on an AZ worker,
    one that az-node-loss stops. Until the node controller marks it NotReady (40-50 s) the kube-dns Service keeps
    that replica's endpoint, and about half the cluster's lookups go to it and time out. What resolves in the
    mesh: each pod's consul-connect-inject-init and consul-dataplane reach the Consul servers by their Service's
    DNS name (the injector's `-addresses consul-server.consul.svc`), when they start: the sidecars of the pods
    the restored node restarts. Their lookups failing, the zone's pods come back late, and a correct mesh could
    miss the recovery bound by timing. Both replicas now run on the control-plane, which no fault stops."""
    api.sim.host_images.update([*cluster_images(rendered(tmp_path)), KIND_NODE_IMAGES["v0.33.0"]])
    up_saying(tmp_path)
    assert _dns_nodes(api) == ["edge-control-plane", "edge-control-plane"]


def _dns_pods(api: FakeApiServer) -> list[str]:
    pods = api.sim.call(lambda: api.sim.items("v1", "pods", "kube-system"))
    return sorted(
        str(p["metadata"]["name"]) for p in pods if p["metadata"].get("labels", {}).get("k8s-app") == "kube-dns"
    )


def test_a_reused_cluster_keeps_its_pinned_cluster_dns_as_it_is(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """Control: CoreDNS already on the control-plane (a cluster an earlier up made) is not rolled again: the same
    pods serve on, on the control-plane."""
    m = rendered(tmp_path)
    api.sim.host_images.update([*cluster_images(m), KIND_NODE_IMAGES["v0.33.0"]])
    seen: list[list[str]] = []
    for _ in range(2):
        backend = kind_backend(tmp_path / "wd")
        try:
            backend.up(m)
        finally:
            backend.close()
        seen.append(_dns_pods(api))
    assert seen[0] == seen[1] and len(seen[0]) == 2, seen
    assert _dns_nodes(api) == ["edge-control-plane", "edge-control-plane"]
