"""write() and manifests.load(): deterministic bytes, faithful round trip, edited
directories load as edited, and every load error names the file and field."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import yaml

from harness.errors import InputError
from harness.render import Rendered, render, write
from harness.render.manifests import load
from harness.topology.model import Edition, load_topology
from tests.conftest import REPO

FIXTURES = {"default": REPO / "fixtures" / "topology.yaml", "wide": REPO / "fixtures" / "topology-wide.yaml"}
CASES = [(t, e) for t in FIXTURES for e in ("ce", "enterprise")]


@cache
def _render(topo: str = "default", edition: str = "ce") -> Rendered:
    """Rendered once per case (render is pure; determinism has its own test)."""
    return render(load_topology(FIXTURES[topo]), Edition(edition))


@pytest.fixture
def out(tmp_path: Path) -> Path:
    write(_render(), tmp_path / "out")
    return tmp_path / "out"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("topo", "edition"), CASES)
def test_deterministic_bytes(tmp_path: Path, topo: str, edition: str) -> None:
    topology = load_topology(FIXTURES[topo])
    a, b = render(topology, Edition(edition)), render(topology, Edition(edition))
    assert a.files() == b.files()
    write(a, tmp_path / "a")
    write(b, tmp_path / "b")
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    assert set(_tree(tmp_path / "a")) == set(a.files())


def test_layout_matches_contract(out: Path) -> None:
    files = set(_tree(out))
    assert {"topology.yaml", "kind-config.yaml", "consul-values.yaml", "manifest.json"} <= files
    assert "k8s/00-namespaces.yaml" in files
    assert {"k8s/10-hashicups.yaml", "k8s/10-hashicups-lax-1a.yaml"} <= files
    assert all(f.startswith(("k8s/", "consul/", "entry/")) or "/" not in f for f in files)
    assert {"entry/kind.yaml", "entry/cluster.yaml"} <= files
    meta = json.loads((out / "manifest.json").read_text())
    assert meta["edition"] == "ce"
    assert meta["chart"] == {
        "repo": "https://helm.releases.hashicorp.com",
        "name": "consul",
        "version": "1.9.11",
        "kubernetes": {"min": "1.30", "max": "1.34"},  # consul-k8s 1.9.x's supported Kubernetes
    }
    assert meta["consulImage"] == "hashicorp/consul:1.22.7"
    assert meta["dataplaneImage"] == "hashicorp/consul-dataplane:1.9.11"
    assert sorted(meta["files"]) == sorted(files - {"manifest.json"})


@pytest.mark.parametrize(("topo", "edition"), CASES)
def test_round_trip(tmp_path: Path, topo: str, edition: str) -> None:
    r = _render(topo, edition)
    write(r, tmp_path)
    m = load(tmp_path)
    assert m.root == tmp_path
    assert m.topology == r.topology
    assert m.edition is Edition(edition)
    assert m.kind_config == r.kind_config
    assert m.helm_values == r.helm_values
    assert m.objects == r.objects
    assert m.meta == json.loads(r.files()["manifest.json"])
    assert len(m.origins) == len(m.objects)
    assert m.k8s_objects + m.consul_objects == m.objects
    assert m.origin(m.objects[0]) == "k8s/00-namespaces.yaml#0"


def test_edition_override_is_recorded(tmp_path: Path) -> None:
    write(_render("default", "enterprise"), tmp_path)
    m = load(tmp_path)
    assert m.topology.edition is Edition.ENTERPRISE  # the fixture says ce; the render says enterprise
    assert "edition: enterprise" in (tmp_path / "topology.yaml").read_text()


def test_files_are_readable_yaml(out: Path) -> None:
    for path in sorted(out.rglob("*.yaml")):
        text = path.read_text()
        head = text.splitlines()[:2]
        assert all(line.startswith("# ") for line in head), path
        assert "topology 'edge'" in text.split("\n---", 1)[0] or path.name == "topology.yaml"
        assert "edition ce" in text.splitlines()[1] or "edition: ce" in text, path
        assert "&id" not in text and "*id" not in text, f"{path}: YAML aliases"
        assert "\\n" not in text, f"{path}: multi-line strings should be literal blocks"
    conf = (out / "k8s" / "10-hashicups-lax-1a.yaml").read_text()
    assert "nginx.conf: |\n" in conf
    assert "  - name:" in conf  # block-style lists, indented under their key


def test_rewrite_replaces_previous_render(tmp_path: Path) -> None:
    write(_render("wide", "ce"), tmp_path)
    assert (tmp_path / "k8s" / "10-hashicups-den-1a.yaml").exists()
    (tmp_path / "notes.txt").write_text("mine")
    write(_render("default", "ce"), tmp_path)
    assert not (tmp_path / "k8s" / "10-hashicups-den-1a.yaml").exists()
    assert set(_tree(tmp_path)) == set(_render("default", "ce").files()) | {"notes.txt"}
    assert load(tmp_path).topology.name == "edge"


def test_write_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "k8s").mkdir()
    (tmp_path / "k8s" / "deploy.yaml").write_text("kind: ConfigMap\n")
    with pytest.raises(InputError, match="not a rendered directory"):
        write(_render(), tmp_path)
    assert (tmp_path / "k8s" / "deploy.yaml").exists()


def _docs(path: Path) -> list[dict[str, object]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_edited_directory_loads_as_edited(out: Path) -> None:
    path = out / "k8s" / "10-hashicups-lax-1a.yaml"
    docs = _docs(path)
    dep = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "product-api-lax-1a")  # type: ignore[index]
    dep["spec"]["replicas"] = 3  # type: ignore[index]
    path.write_text("---\n".join(yaml.safe_dump(d) for d in docs) + "---\n")  # trailing empty document
    (out / "consul" / "30-service-routers.yaml").unlink()
    (out / "k8s" / "20-extra.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra, namespace: hashicups}\ndata: {a: b}\n"
    )
    values = yaml.safe_load((out / "consul-values.yaml").read_text())
    values["server"]["replicas"] = 3
    (out / "consul-values.yaml").write_text(yaml.safe_dump(values))

    m = load(out)
    edited = next(o for o in m.objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "product-api-lax-1a")
    assert edited["spec"]["replicas"] == 3
    assert not m.of_kind("ServiceRouter")
    assert m.helm_values["server"]["replicas"] == 3
    names = [o["metadata"]["name"] for o in m.k8s_objects]
    k8s_files = [src.split("#")[0] for src in m.origins if src.startswith("k8s/")]
    assert k8s_files == sorted(k8s_files)  # apply order is file-name order
    assert names[-1] == "extra"  # 20-extra.yaml sorts after every 10-*.yaml
    assert m.origins[m.objects.index(m.consul_objects[0])].startswith("consul/00-")


def _load_error(root: Path) -> InputError:
    with pytest.raises(InputError) as info:
        load(root)
    return info.value


def test_error_missing_directory(tmp_path: Path) -> None:
    err = _load_error(tmp_path / "nope")
    assert err.source == str(tmp_path / "nope")


@pytest.mark.parametrize("name", ["topology.yaml", "manifest.json", "kind-config.yaml", "consul-values.yaml"])
def test_error_missing_file(out: Path, name: str) -> None:
    (out / name).unlink()
    err = _load_error(out)
    assert err.source == str(out / name)
    assert "no such file" in err.message


def test_error_missing_subdirectory(out: Path) -> None:
    for p in (out / "consul").iterdir():
        p.unlink()
    (out / "consul").rmdir()
    assert _load_error(out).source == str(out / "consul")


def test_error_yaml_syntax_names_document(out: Path) -> None:
    path = out / "k8s" / "10-hashicups.yaml"
    text = path.read_text()
    parts = text.split("\n---\n")
    parts[3] = parts[3].replace("metadata:", "metadata: [", 1)
    path.write_text("\n---\n".join(parts))
    err = _load_error(out)
    assert err.source == str(path)
    assert err.field.startswith("documents[2] (line ")  # header + 3 documents before: index 2 is the 3rd object
    assert "YAML syntax error" in err.message


@pytest.mark.parametrize(
    ("key", "field"),
    [("kind", "documents[1].kind"), ("apiVersion", "documents[1].apiVersion"), ("name", "documents[1].metadata.name")],
)
def test_error_object_without_required_field(out: Path, key: str, field: str) -> None:
    path = out / "consul" / "10-service-defaults.yaml"
    docs = _docs(path)
    target = docs[1]["metadata"] if key == "name" else docs[1]
    del target[key]  # type: ignore[attr-defined]
    path.write_text("".join("---\n" + yaml.safe_dump(d) for d in docs))
    err = _load_error(out)
    assert (err.source, err.field) == (str(path), field)
    assert str(err) == f"{path}: {field}: required (a non-empty string)"


def test_error_document_not_a_mapping(out: Path) -> None:
    path = out / "k8s" / "00-namespaces.yaml"
    path.write_text(path.read_text() + "---\n- just\n- a list\n")
    err = _load_error(out)
    n = len(_docs(out / "k8s" / "00-namespaces.yaml")) - 1
    assert (err.source, err.field) == (str(path), f"documents[{n}]")


def test_error_manifest_json(out: Path) -> None:
    (out / "manifest.json").write_text('{"edition": "ce",\n oops}')
    err = _load_error(out)
    assert err.source == str(out / "manifest.json")
    assert err.field == "line 2, column 2"


def test_error_edition_mismatch(out: Path) -> None:
    meta = json.loads((out / "manifest.json").read_text())
    meta["edition"] = "enterprise"
    (out / "manifest.json").write_text(json.dumps(meta))
    err = _load_error(out)
    assert (err.source, err.field) == (str(out / "manifest.json"), "edition")


def test_error_invalid_topology(out: Path) -> None:
    path = out / "topology.yaml"
    path.write_text(path.read_text().replace("type: local-zone", "type: lz", 1))
    err = _load_error(out)
    assert err.source == str(path)
    assert err.field == "zones[2].type"


def test_error_values_not_mapping(out: Path) -> None:
    (out / "kind-config.yaml").write_text("- a\n")
    err = _load_error(out)
    assert err.source == str(out / "kind-config.yaml")
    assert "mapping" in err.message
