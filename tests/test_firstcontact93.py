"""First contact with kind and EKS: what the fakes' leniency hid (audit 93).

Each test names the real source it follows. The fakes (tests.kubesim and the
fake tools of tests.kubesim_tools) answer as the real tools do; where they
were more lenient than those, they are made stricter first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.backends.kind import KIND_NODE_IMAGES
from tests.conftest import REPO
from tests.kubefake import FakeApiServer
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_kind import INOTIFY_PATHS, Tools, up_refused, up_saying
from tests.test_backend_kind import tools as tools  # the fake tools on PATH, re-exported for pytest

pytestmark = pytest.mark.slow  # a fake API server and fake tools per test: seconds each

WORKFLOWS = REPO / ".github" / "workflows"


def _kind_action(workflow: str) -> dict[str, Any]:
    """The `with:` of the workflow's helm/kind-action step (which installs kind, and kubectl)."""
    steps = yaml.safe_load((WORKFLOWS / workflow).read_text())["jobs"]["e2e"]["steps"]
    step = next(s for s in steps if str(s.get("uses", "")).startswith("helm/kind-action@"))
    return dict(step.get("with") or {})


def test_the_pr_workflow_installs_a_kind_release_whose_node_image_is_pinned(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """PR CI runs the kind a node image is pinned for, not the best-effort path of one it is not.

    kind builds node images for one release and supports them only with it ("best effort with other releases":
    kind site/content/docs/design/node-image.md); the harness pins, per kind release, an image its release notes
    list (`KIND_NODE_IMAGES`, the README's "tested" table). e2e-kind.yml installed kind v0.31.0, a release the
    table does not list, so every PR ran kind v0.31.0 with the v1.34.0 image built for v0.30.0: a combination
    neither kind nor this project tested, while the README names v0.30.0 / v0.33.0 as tested. The fake kind
    answers `kind version` with the workflow's release here, as the runner's would.
    """
    release = str(_kind_action("e2e-kind.yml")["version"])
    api.sim.kind_release = release
    said = up_saying(tmp_path)
    create = next(c for c in tools.calls() if c[:3] == ["kind", "create", "cluster"])
    assert release in KIND_NODE_IMAGES, f"e2e-kind.yml installs kind {release}: no node image is pinned for it"
    assert create[-2:] == ["--image", KIND_NODE_IMAGES[release]], create
    assert not [line for line in said if line.startswith(f"kind {release}:")], said  # no best-effort note


def test_a_kind_release_without_a_pinned_image_would_be_caught() -> None:
    """Control: the release the workflow used to pin is not in the table (the check above can fail)."""
    assert "v0.31.0" not in KIND_NODE_IMAGES


# the README's command, and kind's known-issues values
INOTIFY_FIX = "sudo sysctl -w fs.inotify.max_user_watches=524288 fs.inotify.max_user_instances=512"
UBUNTU_DEFAULTS = {"fs/inotify/max_user_watches": 8192, "fs/inotify/max_user_instances": 128}


def inotify_said(said: list[str]) -> list[str]:
    """The lines of a run's progress about the Docker host's inotify limits."""
    return [line for line in said if "inotify" in line]


def watches_alone_said_once(said: list[str], watches: int) -> None:
    """Watches alone below kind's (recent kernels scale them with memory, often enough for a small cluster): one
    line naming that sysctl and kind's value, none about the instances (which suffice), and `up` went on."""
    told = inotify_said(said)
    assert len(told) == 1 and f"fs.inotify.max_user_watches is {watches} (kind asks 524288)" in told[0], said
    assert "max_user_instances is" not in told[0], told


def test_a_docker_host_with_too_few_inotify_instances_is_refused_before_the_chart(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """Ubuntu's defaults (8192 watches, 128 instances) are "not enough to create a cluster with many nodes" (kind
    site/content/docs/user/known-issues.md, "Pod errors due to too many open files"): kube-proxy exits at start
    ("failed complete: too many open files", kubernetes/kubernetes#104303), and the other pods follow. The README
    lists the limits as a prerequisite "checked before anything starts"; nothing checked them, and the PR
    workflow sets them on its runner, so CI never met a laptop's defaults. `up` went on to install the chart and
    the workloads on such a cluster. Now it stops after reading the Docker host's limits in a node, one line
    naming the sysctl and the fix, before helm."""
    api.sim.host_sysctl.update(UBUNTU_DEFAULTS)
    text = up_refused(tmp_path)
    # the fake shows what the real cluster does on such a host: kube-proxy never ran on any node
    assert all(run.proxy_crashes and not run.proxy_synced for run in api.sim.nodes.values())
    assert "\n" not in text and "fs.inotify.max_user_instances is 128 (kind asks 512)" in text, text
    assert "fs.inotify.max_user_watches is 8192 (kind asks 524288)" in text and INOTIFY_FIX in text, text
    assert not [c for c in tools.calls() if c[:1] == ["helm"]]


def test_a_docker_host_as_kind_asks_or_short_only_of_watches_goes_on(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """Controls: kind's values pass in silence; watches alone below kind's (recent kernels scale them with
    memory, often enough for a small cluster) are said in one line and `up` goes on; the read is one `cat` in the
    control-plane node (the Docker host's kernel, Docker Desktop's VM's where it runs there)."""
    said = up_saying(tmp_path)
    assert not inotify_said(said), said
    read = ["docker", "exec", "edge-control-plane", "cat", *INOTIFY_PATHS]
    assert tools.calls().count(read) == 1
    api.sim.host_sysctl["fs/inotify/max_user_watches"] = 192546
    said = up_saying(tmp_path)  # the cluster exists: reused, and its host read again
    watches_alone_said_once(said, 192546)
