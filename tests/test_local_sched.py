"""The local backend reads manifests as Kubernetes would: placement, and refusing what it does not know."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from harness.backends.local.sched import (
    ClusterSpec,
    Node,
    Placed,
    SpreadConstraint,
    Taint,
    cluster_spec,
    parse_deployment,
)
from harness.errors import InputError
from harness.render import render, write
from harness.render.manifests import Manifests, load
from harness.topology import load_topology
from tests.conftest import REPO


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
    other = Placed(first.name, "elsewhere", {"app": "unrelated"})
    second = spec.place(dep, placed=[other])
    assert second is not None and second.name != first.name
    assert spec.place(dep, down=set(den)) is None


def test_rendered_deployments_spread_over_the_zones_nodes(wide: Manifests) -> None:
    """What kube-scheduler does with the rendered hostname constraint: a 2-node zone gets one replica per node."""
    spec = _spec(wide)
    for dep in spec.deployments:
        assert dep.spread == (
            SpreadConstraint(1, "kubernetes.io/hostname", "ScheduleAnyway",
                             tuple(sorted(dep.labels.items() - {("edge-harness.io/serving", "true")}))),
        ), dep.where  # fmt: skip
    for zone in ("us-west-2-den-1a", "us-west-2a"):
        for dep in [d for d in spec.deployments if d.labels["edge-harness.io/zone"] == zone]:
            placed: list[Placed] = []
            for _ in range(dep.replicas):
                node = spec.place(dep, placed=placed)
                assert node is not None
                placed.append(Placed(node.name, dep.namespace, dep.labels))
            assert len({p.node for p in placed}) == min(2, dep.replicas), (dep.where, placed)


def _dep_with_spread(constraint: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": "d", "namespace": "n"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "a"}},
            "template": {
                "metadata": {"labels": {"app": "a"}},
                "spec": {"containers": [{"name": "c", "image": "i"}], "topologySpreadConstraints": [constraint]},
            },
        },
    }


HOST = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "a"}}}


def test_spread_constraints_soft_and_hard() -> None:
    nodes = [Node(f"z-n{i}", "z", {"kubernetes.io/hostname": f"z-n{i}"}) for i in (1, 2)]
    spec = ClusterSpec(nodes=nodes, deployments=[], services=[], config_maps={}, namespaces=[])
    soft = parse_deployment(_dep_with_spread({**HOST, "whenUnsatisfiable": "ScheduleAnyway"}), "f")
    hard = parse_deployment(_dep_with_spread({**HOST, "whenUnsatisfiable": "DoNotSchedule"}), "f")
    mine = [Placed("z-n1", "n", {"app": "a"})]
    theirs = [Placed("z-n2", "n", {"app": "b"}), Placed("z-n2", "other-ns", {"app": "a"})] * 3
    # only matching pods of the same namespace count: n2 is busier but holds none of ours
    assert spec.place(soft, placed=mine + theirs).name == "z-n2"  # type: ignore[union-attr]
    # n2 down: soft still schedules (skew allowed), hard would make skew 2 > 1 -> Pending
    assert spec.place(soft, down={"z-n2"}, placed=mine).name == "z-n1"  # type: ignore[union-attr]
    assert spec.place(hard, down={"z-n2"}, placed=[*mine, Placed("z-n1", "n", {"app": "a"})]) is None
    assert spec.place(hard, placed=mine).name == "z-n2"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"minDomains": 2}, "topologySpreadConstraints[0].minDomains"),
        ({"matchLabelKeys": ["pod-template-hash"]}, "topologySpreadConstraints[0].matchLabelKeys"),
        ({"nodeTaintsPolicy": "Honor"}, "topologySpreadConstraints[0].nodeTaintsPolicy"),
        ({"labelSelector": {"matchExpressions": []}}, "topologySpreadConstraints[0].labelSelector.matchExpressions"),
        ({"labelSelector": {}}, "topologySpreadConstraints[0].labelSelector.matchLabels"),
        ({"whenUnsatisfiable": "Sometimes"}, "topologySpreadConstraints[0].whenUnsatisfiable"),
        ({"maxSkew": 0}, "topologySpreadConstraints[0].maxSkew"),
    ],
    ids=["minDomains", "matchLabelKeys", "nodeTaintsPolicy", "matchExpressions", "no-selector", "when", "skew"],
)
def test_spread_fields_the_scheduler_does_not_implement_are_refused(change: dict[str, Any], field: str) -> None:
    with pytest.raises(InputError, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_deployment(_dep_with_spread({**HOST, "whenUnsatisfiable": "ScheduleAnyway", **change}), "f")


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


@pytest.mark.parametrize(
    ("key", "other"),
    [("consul.hashicorp.com/transparent-proxy", "true"),
     ("consul.hashicorp.com/envoy-extra-args", "--file-flush-interval-msec 10000"),
     ("consul.hashicorp.com/enable-consul-dataplane-as-sidecar", "true")],
    ids=["transparent-proxy", "envoy-extra-args", "dataplane-as-sidecar"],
)  # fmt: skip
def test_the_pinned_mesh_annotations_are_read_and_other_values_refused(wide: Manifests, key: str, other: str) -> None:
    """Every meshed pod pins what the sidecars here do (names.PINNED_MESH_ANNOTATIONS): explicit upstreams
    (transparent proxy "true" needs a transparent proxy the local backend does not have), access logs flushed at
    the verdict's interval, Envoy as a regular container. Another value is refused, naming the object and the
    annotation."""
    from harness.contract import names

    pinned = names.PINNED_MESH_ANNOTATIONS[key]
    meshed = [d for d in _spec(wide).deployments if d.meshed]
    assert meshed and {d.annotations.get(key) for d in meshed} == {pinned}
    objects = copy.deepcopy(wide.objects)
    dep = next(
        o for o in objects if o["kind"] == "Deployment" and key in o["spec"]["template"]["metadata"]["annotations"]
    )
    dep["spec"]["template"]["metadata"]["annotations"][key] = other
    with pytest.raises(InputError) as exc:
        _spec(wide, objects)
    msg = str(exc.value)
    assert f"annotations.{key}" in msg and dep["metadata"]["name"] in msg
    assert f"{other!r} not supported by the local backend (only {pinned!r})" in msg
