"""kind on a laptop, first contact with real kind (k51b): each test names the real behaviour it follows."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import BackendError
from harness.render import render, write
from harness.render.manifests import Manifests, load
from harness.topology.model import load_topology
from tests.conftest import REPO
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_kind import Tools, kind_backend
from tests.test_backend_kind import tools as tools  # the fake tools on PATH, re-exported for pytest

pytestmark = pytest.mark.slow  # a fake API server and fake tools per test: seconds each


def _two_nodes_in_first_az(tmp_path: Path) -> Manifests:
    """The default topology with two nodes in us-west-2a (as topology-wide has): kind names its workers
    `edge-worker` and `edge-worker2` for that AZ, `edge-worker3` for us-west-2b, ..., `edge-worker7`."""
    text = (REPO / "fixtures" / "topology.yaml").read_text()
    head, sep, tail = text.partition("type: availability-zone\n    nodes: 1")
    assert sep, "the default topology's first AZ is not where this test looks for it"
    path = tmp_path / "two-in-2a.yaml"
    path.write_text(head + "type: availability-zone\n    nodes: 2" + tail)
    out = tmp_path / "two-in-2a"
    write(render(load_topology(path)), out)
    return load(out)


def test_a_left_over_cluster_of_another_shape_is_refused_not_reused(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """`kind get clusters` names a cluster whatever made it (kind lists the clusters its node containers' label
    `io.x-k8s.kind.cluster` names: pkg/cluster/internal/providers/docker/provider.go ListClusters): one kept
    (`--keep`) from another topology, or one whose `kind create` was interrupted before the workers joined
    (kind deletes its nodes only when create returns an error, not when it is killed: pkg/cluster/internal/
    create/create.go). `up` reused it "as it is": the zones' node counts were the old topology's, so a run
    judged a topology it did not run (two nodes in us-west-2a declared, az-node-loss there survivable; one
    node in the cluster, the AZ gone with it). The live nodes are now held to the rendered kind config (names
    kind gives them, labels, edge taints) before anything is installed: one line naming what differs."""
    first = kind_backend(tmp_path / "wd")
    first.up(rendered(tmp_path))
    first.close()
    tools.reset()
    again = kind_backend(tmp_path / "wd")
    try:
        with pytest.raises(BackendError) as err:
            again.up(_two_nodes_in_first_az(tmp_path))
    finally:
        again.close()
    msg = str(err.value)
    assert "\n" not in msg and "kind cluster edge" in msg, msg
    assert "edge-worker7: missing" in msg and "edge-worker2 in us-west-2b, not us-west-2a" in msg, msg
    assert "harness down" in msg, msg
    assert not [c for c in tools.calls() if c[:1] == ["helm"]], "refused before the chart is installed"


def test_a_left_over_cluster_of_the_same_shape_is_reused(api: FakeApiServer, tools: Tools, tmp_path: Path) -> None:
    """Control: the cluster a previous `up` of this topology made (`--keep`) is the shape the config says."""
    first = kind_backend(tmp_path / "wd")
    first.up(m := rendered(tmp_path))
    first.close()
    said: list[str] = []
    again = kind_backend(tmp_path / "wd")
    try:
        again.up(m, progress=said.append)
    finally:
        again.close()
    assert any("exists: reusing it" in s for s in said), said
