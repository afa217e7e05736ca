"""The postgres primary and the Consul control plane: on one node or not is decided by a rule, not a tie.

A node fault aimed at a Region-only pod (az-primary-loss: `kill_node(service="postgres")`) is refused when the
pod's node also runs the Consul server or injector (docs/CONTRACTS.md, "Node faults and the control plane").
On EKS the control plane prefers the primary's AZ, so with two nodes there whether postgres shared a node with it
was kube-scheduler's tie (selectHost), and the resource scores sent the injector to the node the server did not
take: postgres had no node free of the control plane. Now the Region-only Deployments prefer (podAntiAffinity,
InterPodAffinity) a node without the chart's server and injector pods, and the injector prefers the server's
node (podAffinity). The local scheduler and kubesim score preferred pod (anti-)affinity as kube-scheduler does.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from harness.backends.kube.chaos import control_plane_of
from harness.backends.local.sched import ClusterSpec, Node, Placed, PodTerm, cluster_spec, parse_deployment
from harness.chaos import actions
from harness.contract import names
from harness.errors import InputError
from harness.render import (
    entry,  # noqa: F401  (first: render.kind and render.hashicups import each other through it)
    helm,
    render,
    write,
)
from harness.render.hashicups import away_from_control_plane
from harness.render.helm import render_helm_values
from harness.render.manifests import load
from harness.topology import load_topology
from harness.topology.model import Edition, Placement, Topology
from tests.conftest import REPO
from tests.kubesim import ClusterSim
from tests.test_nodeloss_f44n import (
    SimChaos,
    _az_experiments,
    _eks_node_names,
    _outcome,
    _topology,
    _use,
)
from tests.test_nodeloss_f44n import stops as stops
from tests.test_render_contract import K8S_VERSION

REFERENCE_VALUES = REPO.parent / "shared" / "reference" / "consul-k8s-v1.9.11" / "values.yaml"
HOST = names.LABEL_HOSTNAME
# the chart's pods as templates/server-statefulset.yaml, connect-inject-deployment.yaml and
# webhook-cert-manager-deployment.yaml label them (release "consul")
SERVER = {"app": "consul", "chart": "consul-helm", "heritage": "Helm", "release": "consul", "component": "server"}
INJECTOR = {**SERVER, "component": "connect-injector"}
CERT_MANAGER = {**SERVER, "component": "webhook-cert-manager"}


# -- the rendered rule ----------------------------------------------------------------------------------------
def _deployments(t: Topology, edition: Edition) -> list[dict[str, Any]]:
    return [o for o in render(t, edition).objects if o["kind"] == "Deployment"]


@pytest.mark.parametrize("edition", [Edition.CE, Edition.ENTERPRISE])
@pytest.mark.parametrize("fixture", ["topology.yaml", "topology-wide.yaml"])
def test_region_only_deployments_prefer_a_node_without_the_consul_control_plane(fixture: str, edition: Edition) -> None:
    """Every Region-only Deployment (postgres, its replica) carries the preferred anti-affinity, and it selects the
    chart's server and injector pods in any namespace; edge-placed ones do not (HEAD: none had one)."""
    t = load_topology(REPO / "fixtures" / fixture)
    region_only = {s.name for s in t.services if s.placement is Placement.REGION}
    assert {"postgres", "postgres-replica"} <= region_only
    seen = set()
    for dep in _deployments(t, edition):
        app = dep["spec"]["template"]["metadata"]["labels"][names.LABEL_APP]
        anti = dep["spec"]["template"]["spec"]["affinity"].get("podAntiAffinity")
        if app not in region_only:
            assert anti is None, dep["metadata"]["name"]
            continue
        seen.add(app)
        assert anti == away_from_control_plane()
        (term,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
        assert term["weight"] == 100 and term["podAffinityTerm"]["topologyKey"] == HOST
        parsed = PodTerm(
            100,
            HOST,
            tuple(term["podAffinityTerm"]["labelSelector"]["matchLabels"].items()),
            tuple(_requirements(term["podAffinityTerm"]["labelSelector"])),
            all_namespaces=term["podAffinityTerm"]["namespaceSelector"] == {},
        )
        own = dep["metadata"]["namespace"]
        assert parsed.selects(own, "consul", SERVER) and parsed.selects(own, "operators-consul", INJECTOR)
        assert not parsed.selects(own, "consul", CERT_MANAGER)  # on no request's path: not the control plane
        assert not parsed.selects(own, own, dep["spec"]["template"]["metadata"]["labels"])
    assert seen == region_only


def _requirements(selector: dict[str, Any]) -> list[Any]:
    from harness.contract.scheduling import Requirement

    return [Requirement.from_dict(e) for e in selector.get("matchExpressions") or []]


@pytest.mark.skipif(not REFERENCE_VALUES.is_file(), reason="consul-k8s reference data absent")
def test_the_selectors_use_the_labels_the_chart_gives_its_server() -> None:
    """The chart's own default server affinity (values.yaml v1.9.11) names the server pods by app/release/component:
    the labels the rendered anti-affinity and the injector's podAffinity select."""
    values = yaml.safe_load(REFERENCE_VALUES.read_text(encoding="utf-8"))
    default = yaml.safe_load(
        values["server"]["affinity"]
        .replace('{{ template "consul.name" . }}', "consul")
        .replace('"{{ .Release.Name }}"', "consul")
    )
    chart = default["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["labelSelector"]
    assert chart["matchLabels"].items() <= SERVER.items()
    term = helm.INJECTOR_WITH_SERVER["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert (
        term["podAffinityTerm"]["labelSelector"]
        == helm.SERVER_ANTI_AFFINITY["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0][
            "labelSelector"
        ]
    )


@pytest.mark.slow  # kubernetes-validate loads the API schemas
def test_the_injectors_affinity_is_a_valid_pod_affinity() -> None:
    """The chart `tpl`s connectInject.affinity into the pod spec: what it renders must validate (strict)."""
    text = render_helm_values(load_topology(), Edition.CE)["connectInject"]["affinity"]
    affinity = yaml.safe_load(
        text.replace('{{ template "consul.name" . }}', "consul").replace('"{{ .Release.Name }}"', "consul")
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i"}], "affinity": affinity},
    }
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    broken = copy.deepcopy(pod)
    broken["spec"]["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["weight"] = "x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


# -- the local scheduler --------------------------------------------------------------------------------------
def _dep(
    name: str = "postgres", ns: str = "hashicups", labels: dict[str, str] | None = None, anti: Any = None
) -> dict[str, Any]:
    labels = labels or {"app": name}
    spec: dict[str, Any] = {"containers": [{"name": "c", "image": "i"}]}
    if anti is not None:
        spec["affinity"] = {"podAntiAffinity": anti}
    return {
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


def _cluster(*node_names: str) -> ClusterSpec:
    nodes = [Node(n, "z", {HOST: n, names.LABEL_ZONE: "z"}) for n in node_names]
    return ClusterSpec(nodes=nodes, deployments=[], services=[], config_maps={}, namespaces=[])


def _server(node: str, component: str = "server") -> Placed:
    return Placed(node, "consul", {**SERVER, "component": component})


@pytest.mark.parametrize("server_on", ["z-n1", "z-n2"])
def test_local_postgres_takes_the_node_without_the_server_whichever_the_tie_would_pick(server_on: str) -> None:
    """Two nodes: the rendered term keeps postgres off the server's node, whether the name (the local tie-break)
    or the load would have picked it (HEAD: the local scheduler refused the field)."""
    spec = _cluster("z-n1", "z-n2")
    dep = parse_deployment(_dep(anti=away_from_control_plane()), "f")
    other = "z-n2" if server_on == "z-n1" else "z-n1"
    busy = [Placed(other, "hashicups", {"app": f"x{i}"}) for i in range(3)]  # the free node is the busier one
    node = spec.place(dep, placed=[_server(server_on), _server(server_on, "connect-injector"), *busy])
    assert node is not None and node.name == other
    # control: without the term the tie-breakers decide, and put it on the server's node
    plain = parse_deployment(_dep(), "f")
    assert spec.place(plain, placed=[_server(server_on), *busy]).name == server_on  # type: ignore[union-attr]


def test_local_anti_affinity_is_ignored_when_no_node_escapes_it() -> None:
    """One node, or every node with a server: the preference cannot be met and changes nothing (kube normalises
    equal scores to 0); the pod still runs."""
    dep = parse_deployment(_dep(anti=away_from_control_plane()), "f")
    assert _cluster("z-n1").place(dep, placed=[_server("z-n1")]).name == "z-n1"  # type: ignore[union-attr]
    both = [_server("z-n1"), _server("z-n2", "connect-injector")]
    assert _cluster("z-n2", "z-n1").place(dep, placed=both).name == "z-n1"  # type: ignore[union-attr]  # by name


def _weighted(*terms: tuple[int, str]) -> dict[str, Any]:
    return {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": w, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": HOST}}
            for w, app in terms
        ]
    }


def test_local_weights_sum_per_node_and_the_lightest_penalty_wins() -> None:
    """Each node holds pods matching different terms: the node whose matches weigh least is preferred; a term
    matching pods on two nodes counts on both."""
    spec = _cluster("z-n1", "z-n2", "z-n3")
    dep = parse_deployment(_dep("d", ns="n", anti=_weighted((80, "a"), (30, "b"), (60, "c"))), "f")
    placed = [Placed("z-n1", "n", {"app": "a"}), Placed("z-n2", "n", {"app": "b"}), Placed("z-n2", "n", {"app": "c"})]
    placed.append(Placed("z-n3", "n", {"app": "c"}))
    # n1: -80, n2: -90, n3: -60
    assert spec.place(dep, placed=placed).name == "z-n3"  # type: ignore[union-attr]
    placed.append(Placed("z-n3", "n", {"app": "b"}))  # n3: -90
    assert spec.place(dep, placed=placed).name == "z-n1"  # type: ignore[union-attr]


def test_local_a_term_looks_in_its_own_namespace_unless_told_otherwise() -> None:
    """Without namespaces or namespaceSelector a term selects pods of the pod's own namespace only: the chart's
    pods (namespace consul) are then invisible, which is why the rendered term says `namespaceSelector: {}`."""
    spec = _cluster("z-n1", "z-n2")
    term = copy.deepcopy(away_from_control_plane())
    del term["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["namespaceSelector"]
    own_ns = parse_deployment(_dep(anti=term), "f")
    placed = [_server("z-n1"), Placed("z-n2", "hashicups", {"app": "web"})]  # one pod each: the load ties
    assert spec.place(own_ns, placed=placed).name == "z-n1"  # type: ignore[union-attr]  # the name: the server's
    listed = copy.deepcopy(term)
    listed["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["namespaces"] = ["consul"]
    assert spec.place(parse_deployment(_dep(anti=listed), "f"), placed=placed).name == "z-n2"  # type: ignore[union-attr]
    rendered = parse_deployment(_dep(anti=away_from_control_plane()), "f")
    assert spec.place(rendered, placed=placed).name == "z-n2"  # type: ignore[union-attr]


def test_local_an_existing_pods_terms_count_against_the_incoming_pod() -> None:
    """InterPodAffinity is symmetric for preferred terms: a pod placed later (a server rescheduled) avoids the
    node of an existing pod whose term selects it."""
    spec = _cluster("z-n1", "z-n2")
    pg = parse_deployment(_dep(anti=away_from_control_plane()), "f")
    server = parse_deployment(_dep("consul-server", ns="consul", labels=SERVER), "f")
    assert spec.place(server, placed=[pg.placed_on("z-n1")]).name == "z-n2"  # type: ignore[union-attr]
    assert spec.place(server, placed=[pg.placed_on("z-n2")]).name == "z-n1"  # type: ignore[union-attr]
    # control: a pod the term does not select is not steered (the tie: the name)
    other = parse_deployment(_dep("web", ns="consul", labels={"app": "web"}), "f")
    assert spec.place(other, placed=[pg.placed_on("z-n1")]).name == "z-n2"  # type: ignore[union-attr]  # load
    assert spec.place(other, placed=[]).name == "z-n1"  # type: ignore[union-attr]


def test_local_spreading_and_anti_affinity_add_up_as_kube_scheduler_adds_them() -> None:
    """Both plugins normalised to 0-100 and weighted 2: a second replica is pulled to the empty server node by
    spreading (200) and away by the anti-affinity (200): a tie the load breaks (both nodes hold one pod) and
    then the name."""
    spec = _cluster("z-n1", "z-n2")
    raw = _dep(anti=away_from_control_plane())
    raw["spec"]["template"]["spec"]["topologySpreadConstraints"] = [
        {"maxSkew": 1, "topologyKey": HOST, "whenUnsatisfiable": "ScheduleAnyway",
         "labelSelector": {"matchLabels": {"app": "postgres"}}}
    ]  # fmt: skip
    dep = parse_deployment(raw, "f")
    first = spec.place(dep, placed=[_server("z-n2")])
    assert first is not None and first.name == "z-n1"
    placed = [_server("z-n2"), dep.placed_on("z-n1")]
    assert spec.place(dep, placed=placed).name == "z-n1"  # type: ignore[union-attr]  # tie 200/200, load 1/1, name
    assert spec.place(dep, placed=[*placed, _server("z-n2", "connect-injector")]).name == "z-n1"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"requiredDuringSchedulingIgnoredDuringExecution": []}, "podAntiAffinity.requiredDuringScheduling"),
        ({"p": {"weight": 0}}, "[0].weight"),
        ({"p": {"weight": 101}}, "[0].weight"),
        ({"t": {"namespaceSelector": {"matchLabels": {"a": "b"}}}}, "[0].podAffinityTerm.namespaceSelector"),
        ({"t": {"topologyKey": ""}}, "[0].podAffinityTerm.topologyKey"),
        ({"t": {"labelSelector": {}}}, "[0].podAffinityTerm.labelSelector"),
        ({"t": {"matchLabelKeys": ["pod-template-hash"]}}, "[0].podAffinityTerm.matchLabelKeys"),
        ({"e": {"operator": "Gt", "values": ["1"]}}, "matchExpressions[0].operator"),
    ],
    ids=["required", "weight-0", "weight-101", "namespace-labels", "no-key", "no-selector", "matchLabelKeys", "Gt"],
)
def test_local_pod_affinity_fields_it_does_not_implement_are_refused(change: dict[str, Any], field: str) -> None:
    """Only what the renderer writes: anything else is one InputError naming the field, never ignored."""
    anti = copy.deepcopy(away_from_control_plane())
    item = anti["preferredDuringSchedulingIgnoredDuringExecution"][0]
    for key, value in change.items():
        if key == "p":
            item.update(value)
        elif key == "t":
            item["podAffinityTerm"].update(value)
        elif key == "e":
            item["podAffinityTerm"]["labelSelector"]["matchExpressions"][0].update(value)
        else:
            anti[key] = value
    with pytest.raises(InputError, match=field.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        parse_deployment(_dep(anti=anti), "f")
    with pytest.raises(InputError, match=r"affinity\.podAffinity"):
        raw = _dep()
        raw["spec"]["template"]["spec"]["affinity"] = {"podAffinity": _weighted((10, "a"))}
        parse_deployment(raw, "f")


@pytest.mark.parametrize("fixture", ["topology.yaml", "topology-wide.yaml"])
def test_the_local_backend_reads_the_rendered_term(fixture: str, tmp_path: Path) -> None:
    """The rendered manifests pass the local backend's reading, and its postgres carries the term (the local
    cluster runs no Consul pod, so there it changes no placement)."""
    write(render(load_topology(REPO / "fixtures" / fixture)), tmp_path)
    m = load(tmp_path)
    spec = cluster_spec(m.kind_config, m.objects, "m", m.topology.short)
    region = {d.app: d for d in spec.deployments if d.app in ("postgres", "postgres-replica")}
    assert set(region) == {"postgres", "postgres-replica"}
    for d in region.values():
        (term,) = d.anti_affinity
        assert term.weight == 100 and term.all_namespaces and term.selects(d.namespace, "consul", SERVER)
    edge = [d for d in spec.deployments if d.app not in region]
    assert edge and not any(d.anti_affinity for d in edge)


# -- kubesim: the EKS flow ------------------------------------------------------------------------------------
def _eks_flow(
    t: Topology,
    values: dict[str, Any],
    tie_order: list[str],
    objects: list[dict[str, Any]],
    cert_manager: bool = True,
) -> ClusterSim:
    """An EKS-like cluster: the chart installed, scheduled and Ready first (as `up` does), then the rendered
    Deployments, every pod placed by the sim's scheduler with equal scores broken by `tie_order`.

    `cert_manager=False` leaves the webhook-cert-manager out: its pod (pinned to the first AZ) is one more pod
    for the sim's stand-in for the resource scores (the fewest pods), which then evens the two nodes out by
    chance; without it the count shows what LeastAllocated does with the server's requests (the next control-
    plane pod goes to the emptier node)."""
    sim = ClusterSim()
    for j, (name, zone) in enumerate(_eks_node_names(t).items()):
        labels = {names.LABEL_REGION: t.region, names.LABEL_ZONE: zone, HOST: name}
        sim.add_node(name, labels, ip=f"10.0.{j}.10", cidr=f"10.1.{j}.0/24")
    sim.eks_storage(31, ebs_csi_addon=True, addon_default_class=True)
    sim.sched_tie_order = tie_order

    def settle() -> None:
        for _ in range(6):  # workloads -> pods -> scheduled (-> the server's claim provisioned -> bound)
            now = time.time()
            sim._workloads_tick()
            sim._scheduler_tick(now)
            sim._volumes_tick(now)

    def chart_ready() -> None:
        """`helm install --wait`: the chart's pods running and Ready before `up` applies the workloads (the
        injector's webhook reads proxy-defaults from a Consul server for every meshed pod it admits)."""
        now = time.time()
        for k in range(20):
            asyncio.run(sim._kubelet_tick(now + k))
            if all(sim._pod_ready(p) for p in sim.items("v1", "pods", "consul")):
                return
        raise AssertionError(
            f"the chart never became ready: {[p['metadata']['name'] for p in sim.items('v1', 'pods', 'consul')]}"
        )

    sim.install_consul(values, release="consul", namespace="consul")
    if not cert_manager:
        for d in sim.items("apps/v1", "deployments", "consul"):
            if d["metadata"]["labels"].get("component") == "webhook-cert-manager":
                sim.delete("apps/v1", "deployments", "consul", d["metadata"]["name"])
    settle()
    chart_ready()
    for o in objects:
        sim.ensure_namespace(o["metadata"]["namespace"])
        sim.create("apps/v1", "deployments", o["metadata"]["namespace"], copy.deepcopy(o))
    settle()
    for pod in sim.items("v1", "pods"):
        assert (pod.get("spec") or {}).get("nodeName"), f"{pod['metadata']['name']} never scheduled"
    return sim


def _node_of(sim: ClusterSim, app: str) -> str:
    (node,) = {str(p["spec"]["nodeName"]) for p in sim.items("v1", "pods") if p["metadata"]["labels"].get("app") == app}
    return node


def _primary_az_outcomes(
    t: Topology,
    values: dict[str, Any],
    objects: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    cert_manager: bool = True,
) -> dict[str, set[str]]:
    """For every tie order of the AZ nodes: what az-node-loss and az-primary-loss's kill_node do."""
    azs = [n for n, z in _eks_node_names(t).items() if z in helm.region_azs(t)]
    outcomes: dict[str, set[str]] = {}
    for order in itertools.permutations(azs):
        sim = _eks_flow(t, values, list(order), objects, cert_manager)
        b = SimChaos(sim, t, [("postgres-0", "postgres", _node_of(sim, "postgres"))])
        _use(monkeypatch, b)
        for exp, (zone, service) in _az_experiments(t).items():
            got = _outcome(lambda: actions.kill_node(zone, duration_s=0, service=service))  # noqa: B023
            outcomes.setdefault(exp, set()).add(got)
    return outcomes


@pytest.mark.parametrize("cert_manager", [True, False], ids=["chart", "no-cert-manager"])
def test_on_a_two_node_primary_az_postgres_and_the_control_plane_never_share_a_node(
    cert_manager: bool, monkeypatch: pytest.MonkeyPatch, stops: list[tuple[str, dict[str, Any]]]
) -> None:
    """EKS, two nodes in each AZ: for every tie order the server and injector share one node of the primary's
    AZ, postgres takes the other, and az-primary-loss stops postgres's node (never refused). HEAD: the injector
    took the node the server left and postgres met one of them: refused, every order."""
    t = _topology(2)
    values = render_helm_values(t, Edition.CE)
    objects = _deployments(t, Edition.CE)
    azs = [n for n, z in _eks_node_names(t).items() if z in helm.region_azs(t)]
    for order in itertools.permutations(azs):
        sim = _eks_flow(t, values, list(order), objects, cert_manager)
        control = control_plane_of(sim.items("v1", "pods"))
        assert len(control) == 1, f"ties {order}: the control plane is on {control}"
        assert _node_of(sim, "postgres") not in control, f"ties {order}: postgres shares {control}"
        assert _eks_node_names(t)[_node_of(sim, "postgres")] in helm.primary_azs(t)
    outcomes = _primary_az_outcomes(t, values, objects, monkeypatch, cert_manager)
    assert not any(o.startswith("refused") for os_ in outcomes.values() for o in os_), outcomes
    assert len(outcomes["az-node-loss"]) == 1


def test_on_a_one_node_primary_az_az_primary_loss_is_refused_every_time(
    monkeypatch: pytest.MonkeyPatch, stops: list[tuple[str, dict[str, Any]]]
) -> None:
    """Control, and the decision: with one node in the primary's AZ postgres must run beside the control plane
    (the preference cannot be met), so az-primary-loss is refused on EKS, the same every night; az-node-loss runs."""
    t = _topology(1)
    outcomes = _primary_az_outcomes(t, render_helm_values(t, Edition.CE), _deployments(t, Edition.CE), monkeypatch)
    assert outcomes["az-primary-loss"] == {"refused: control plane"}
    assert len(outcomes["az-node-loss"]) == 1 and not next(iter(outcomes["az-node-loss"])).startswith("refused")


@pytest.mark.parametrize("drop", ["postgres-anti-affinity", "injector-affinity"])
def test_without_either_half_of_the_rule_some_tie_order_refuses_az_primary_loss(
    drop: str, monkeypatch: pytest.MonkeyPatch, stops: list[tuple[str, dict[str, Any]]]
) -> None:
    """Control: each half is needed, so the two-node test above can fail. Without postgres's anti-affinity the
    tie may put it beside the control plane; without the injector's affinity the injector takes the node the
    server left, and postgres has no free node."""
    t = _topology(2)
    values = render_helm_values(t, Edition.CE)
    objects = copy.deepcopy(_deployments(t, Edition.CE))
    if drop == "postgres-anti-affinity":
        for o in objects:
            o["spec"]["template"]["spec"]["affinity"].pop("podAntiAffinity", None)
    else:
        values["connectInject"]["affinity"] = helm._yaml_string(helm._control_plane_affinity(t))
    outcomes = _primary_az_outcomes(t, values, objects, monkeypatch, cert_manager=drop == "postgres-anti-affinity")
    assert "refused: control plane" in outcomes["az-primary-loss"], outcomes
