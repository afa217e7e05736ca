"""The local backend reads manifests as Kubernetes would: placement, and refusing what it does not know."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from harness.backends.local.sched import Node, Taint, cluster_spec, parse_deployment
from harness.errors import InputError
from harness.render import render, write
from harness.render.manifests import Manifests, load
from harness.topology import load_topology

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Manifests:
    out = tmp_path_factory.mktemp("wide")
    write(render(load_topology(REPO / "fixtures" / "topology-wide.yaml")), out)
    return load(out)


def _spec(m: Manifests, objects: list[dict[str, Any]] | None = None) -> Any:
    return cluster_spec(m.kind_config, objects if objects is not None else m.objects, "m", m.topology.short)


def test_nodes_carry_zone_labels_and_edge_taints(wide: Manifests) -> None:
    spec = _spec(wide)
    assert len(spec.nodes) == sum(z.nodes for z in wide.topology.zones)
    for n in spec.nodes:
        zone = wide.topology.zone(n.zone)
        assert n.name.startswith(wide.topology.short(zone) + "-n")
        assert bool(n.taints) == zone.is_edge


def test_every_deployment_lands_only_in_its_own_zone(wide: Manifests) -> None:
    spec = _spec(wide)
    for dep in spec.deployments:
        zones = {n.zone for n in spec.nodes if dep.fits(n)}
        assert len(zones) == 1, (dep.where, zones)
        assert zones == {dep.labels["edge-harness.io/zone"]}


def test_least_loaded_fitting_node_and_pending_when_none(wide: Manifests) -> None:
    spec = _spec(wide)
    dep = next(d for d in spec.deployments if d.labels["edge-harness.io/zone"] == "us-west-2-den-1a")
    den = [n.name for n in spec.nodes if n.zone == "us-west-2-den-1a"]
    assert len(den) == 2
    first = spec.place(dep)
    assert first is not None and first.name in den
    second = spec.place(dep, load={first.name: 1})
    assert second is not None and second.name != first.name
    assert spec.place(dep, down=set(den)) is None


def test_toleration_matching() -> None:
    node = Node(
        "x-n1", "z", {"topology.kubernetes.io/zone": "z"}, (Taint("edge-harness.io/edge-zone", "z", "NoSchedule"),)
    )
    dep_obj = {
        "metadata": {"name": "d", "namespace": "n"},
        "spec": {
            "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "a"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        },
    }
    assert not parse_deployment(dep_obj, "f").fits(node)
    tolerated = copy.deepcopy(dep_obj)
    tolerated["spec"]["template"]["spec"]["tolerations"] = [
        {"key": "edge-harness.io/edge-zone", "operator": "Equal", "value": "z", "effect": "NoSchedule"}
    ]
    assert parse_deployment(tolerated, "f").fits(node)
    wrong = copy.deepcopy(tolerated)
    wrong["spec"]["template"]["spec"]["tolerations"][0]["value"] = "other"
    assert not parse_deployment(wrong, "f").fits(node)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["spec"]["template"]["spec"].__setitem__("hostNetwork", True), "spec.template.spec.hostNetwork"),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("command", ["sh"]),
            "containers[0].command",
        ),
        (lambda d: d["spec"]["template"]["spec"]["volumes"][0].__setitem__("emptyDir", {}), "volumes[0].emptyDir"),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].__setitem__("exec", {}),
            "readinessProbe.exec",
        ),
    ],
    ids=["hostNetwork", "command", "emptyDir", "exec-probe"],
)
def test_unknown_field_is_an_error_naming_object_and_field(wide: Manifests, mutate: Any, field: str) -> None:
    objects = copy.deepcopy(wide.objects)
    dep = next(o for o in objects if o["kind"] == "Deployment" and o["spec"]["template"]["spec"].get("volumes"))
    mutate(dep)
    with pytest.raises(InputError) as exc:
        _spec(wide, objects)
    assert field in str(exc.value)
    assert dep["metadata"]["name"] in str(exc.value)


def test_unknown_kind_is_an_error(wide: Manifests) -> None:
    objects = [*wide.objects, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "x"}}]
    with pytest.raises(InputError, match="Job x/j: kind not supported"):
        _spec(wide, objects)


def test_deployment_that_fits_no_node_is_an_error(wide: Manifests) -> None:
    objects = copy.deepcopy(wide.objects)
    dep = next(o for o in objects if o["kind"] == "Deployment" and o["spec"]["template"]["spec"].get("tolerations"))
    del dep["spec"]["template"]["spec"]["tolerations"]
    with pytest.raises(InputError, match="fits no node"):
        _spec(wide, objects)
