"""The existing (EKS) backend's check of the operator's Consul: paths no test ran (an Enterprise edition check, an
image pinned by digest).

`KubeCluster.find_consul` reads Consul's version off the server image's tag. A reference is
`[host[:port]/]path[:tag][@digest]` (distribution/reference reference.go); read as "after the last ':'", an
image pinned by tag and digest gave the digest's hex as the version, and a current Consul was refused as "too
old" before anything else was checked.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends.existing import ExistingBackend
from harness.errors import BackendError
from harness.render import render, write
from harness.render.manifests import load
from harness.topology import load_topology
from tests.kubefake import FakeApiServer
from tests.test_backend_existing import _backend, _cluster, _mutations, rendered

DIGEST = "sha256:" + "5f" * 32


@pytest.mark.parametrize(
    ("image", "tag"),
    [
        ("hashicorp/consul:1.22.7", "1.22.7"),
        (f"hashicorp/consul:1.22.7@{DIGEST}", "1.22.7"),
        (f"hashicorp/consul-enterprise:1.22.7-ent@{DIGEST}", "1.22.7-ent"),
        ("registry.internal:5000/hashicorp/consul:1.22.7", "1.22.7"),
        ("registry.internal:5000/hashicorp/consul", ""),
        (f"hashicorp/consul@{DIGEST}", ""),
    ],
)
def test_an_images_tag_is_read_as_a_reference_says(image: str, tag: str) -> None:
    from harness.backends.kube.apply import image_tag

    assert image_tag(image) == tag


def _check(tmp_path: Path, image: str, edition: str = "ce") -> str:
    """`check_consul` of manifests of `edition` against the operator's Consul running `image`: "" when accepted,
    else the refusal; nothing in the cluster changes either way. (Its last step, the HTTP API check through a
    kubectl port-forward, has its own tests: test_consul_tls_acl; here it is taken as answering.)"""
    values = rendered(tmp_path / "r").helm_values
    (tmp_path / "c").mkdir()
    with FakeApiServer() as server:
        _cluster(server, tmp_path / "c", consul={**values, "global": {**values["global"], "image": image}})
        before = _mutations(server)
        m = rendered(tmp_path / "m")
        if edition != "ce":
            write(render(load_topology(), edition), tmp_path / "ent")
            m = load(tmp_path / "ent")
        try:
            _backend(server, tmp_path / "c").check_consul(m)
            said = ""
        except BackendError as exc:
            said = str(exc)
        assert _mutations(server) == before
    return said


@pytest.mark.slow
@pytest.mark.parametrize(
    ("image", "edition", "refused"),
    [
        pytest.param(f"hashicorp/consul:1.22.7@{DIGEST}", "ce", "", id="tag-and-digest"),
        pytest.param(f"hashicorp/consul-enterprise:1.22.7-ent@{DIGEST}", "enterprise", "", id="ent-tag-and-digest"),
        pytest.param(
            "hashicorp/consul:1.22.7",
            "enterprise",
            "the manifests are Enterprise, the cluster's Consul 1.22.7 is not",
            id="enterprise-manifests-on-ce",
        ),
        pytest.param(f"hashicorp/consul@{DIGEST}", "ce", "has no tag to read its version from", id="digest-only"),
    ],
)
def test_the_operators_consul_is_judged_by_its_images_tag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image: str, edition: str, refused: str
) -> None:
    """A Consul pinned by tag and digest is accepted (HEAD: "Consul '<hex>' ... too old"); Enterprise manifests
    on a CE Consul are refused naming both (the Enterprise-only check no test ran); an image pinned by digest
    alone is refused saying why, not called too old."""
    monkeypatch.setattr(ExistingBackend, "check_consul_api", lambda self: None)
    said = _check(tmp_path, image, edition)
    assert (refused in said) if refused else said == "", said
