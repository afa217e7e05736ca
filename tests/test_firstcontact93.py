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
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_kind import Tools, kind_backend
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
    said: list[str] = []
    backend = kind_backend(tmp_path / "wd")
    try:
        backend.up(rendered(tmp_path), progress=said.append)
        create = next(c for c in tools.calls() if c[:3] == ["kind", "create", "cluster"])
    finally:
        backend.close()
    assert release in KIND_NODE_IMAGES, f"e2e-kind.yml installs kind {release}: no node image is pinned for it"
    assert create[-2:] == ["--image", KIND_NODE_IMAGES[release]], create
    assert not [line for line in said if line.startswith(f"kind {release}:")], said  # no best-effort note


def test_a_kind_release_without_a_pinned_image_would_be_caught() -> None:
    """Control: the release the workflow used to pin is not in the table (the check above can fail)."""
    assert "v0.31.0" not in KIND_NODE_IMAGES
