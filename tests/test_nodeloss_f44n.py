"""A node-loss fault never takes the mesh's control plane by chance, on any backend.

kube-scheduler picks at random among equally scored nodes (pkg/scheduler/schedule_one.go selectHost), so the
single Consul server (`server.replicas: 1`) and the connect injector land on any node their affinity allows.
On kind they prefer the control-plane node, which chaos never stops (tests/test_placement98.py). EKS shows no
control-plane node: with "any Region AZ", the server was on the node az-node-loss stops on some nights and on
the one az-primary-loss stops on others, and `kill_node` stopped "the zone's first node" whatever ran on it:
the catalog froze, failover rested on Envoy's passive checks, recovery waited for the server. Same config,
another fault, another verdict. kubesim steers the scheduler's ties (`ClusterSim.sched_tie_order`) through
every order here, so a placement or a choice that depends on the tie shows.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from harness.backends.base import BackendError, node_to_stop
from harness.backends.existing import ExistingBackend
from harness.backends.fence import BlastRadius, ClusterView, NodeView, PodView
from harness.backends.kube.chaos import control_plane_of
from harness.backends.local.backend import LocalBackend
from harness.chaos import actions
from harness.chaos.roles import resolve_zone
from harness.contract.inventory import Inventory, PodInfo
from harness.render import (
    entry,  # noqa: F401  (first: render.kind and render.hashicups import each other through it)
    helm,
)
from harness.render.helm import render_helm_values
from harness.testing.fake import FakeBackend
from harness.topology import load_topology
from harness.topology.model import DEFAULT_TOPOLOGY, Edition, Topology
from tests.kubesim import ClusterSim

REGION = "us-west-2"


def _topology(az_nodes: int = 1) -> Topology:
    """The default topology; `az_nodes` nodes in each AZ (the default has one)."""
    t = load_topology()
    if az_nodes == 1:
        return t
    text = DEFAULT_TOPOLOGY.read_text(encoding="utf-8")
    az = "type: availability-zone\n    nodes: "
    changed = text.replace(f"{az}1\n", f"{az}{az_nodes}\n")
    assert changed.count(f"nodes: {az_nodes}\n") == len(t.region_zones), "the default topology's AZs moved"
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "topology.yaml").write_text(changed, encoding="utf-8")
        return load_topology(Path(d) / "topology.yaml")


def _eks_node_names(t: Topology) -> dict[str, str]:
    """node -> zone of an EKS cluster for `t`: `nodes` instances per zone, named as EKS names them."""
    out = {}
    for i, z in enumerate(t.zones):
        for k in range(max(1, z.nodes)):
            out[f"ip-10-0-{i}-{10 + k}.us-west-2.compute.internal"] = z.name
    return out


def _eks_sim(t: Topology, values: dict[str, Any], tie_order: list[str]) -> ClusterSim:
    """An EKS-like cluster (zone-labelled nodes, no control-plane node, EBS storage) with the chart's pods placed
    by the sim's scheduler, equal scores broken by `tie_order`."""
    sim = ClusterSim()
    for j, (name, zone) in enumerate(_eks_node_names(t).items()):
        labels = {"topology.kubernetes.io/region": REGION, "topology.kubernetes.io/zone": zone}
        sim.add_node(name, labels, ip=f"10.0.{j}.10", cidr=f"10.1.{j}.0/24")
    sim.eks_storage(31, ebs_csi_addon=True, addon_default_class=True)
    sim.sched_tie_order = tie_order
    sim.install_consul(values, release="consul", namespace="consul")
    for _ in range(6):  # workloads -> pods -> scheduled (-> the server's claim provisioned -> bound)
        now = time.time()
        sim._workloads_tick()
        sim._scheduler_tick(now)
        sim._volumes_tick(now)
    for pod in sim.items("v1", "pods", "consul"):
        assert (pod.get("spec") or {}).get("nodeName"), f"{pod['metadata']['name']} never scheduled"
    return sim


class SimChaos:
    """What the chaos actions read of the cluster, answered from the sim (nodes, the Consul pods' nodes), with
    the HashiCups pods given: where a node fault would land is all that is asked here."""

    name = "sim"

    def __init__(self, sim: ClusterSim, t: Topology, pods: list[tuple[str, str, str]]) -> None:
        self.sim, self.t = sim, t
        self.inv = Inventory()
        for pod, service, node in pods:
            zone = self.nodes()[node]
            self.inv.added(PodInfo(pod, "10.9.9.9", node, zone, service, service, "ns", time.time()))

    def manifests(self) -> Any:
        return SimpleNamespace(topology=self.t)

    def nodes(self) -> dict[str, str]:
        return {n["metadata"]["name"]: n["metadata"]["labels"]["topology.kubernetes.io/zone"]
                for n in self.sim.items("v1", "nodes")}  # fmt: skip

    def control_plane_nodes(self) -> dict[str, list[str]]:
        return control_plane_of(self.sim.items("v1", "pods"))

    def inventory(self) -> Inventory:
        return self.inv

    def require_capability(self, primitive: str, zone: str | None = None) -> None:
        """Every fault is possible here."""


@pytest.fixture
def stops(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, dict[str, Any]]]:
    """The primitives the actions reach (with their arguments), in place of injecting them; the timeline is real."""
    seen: list[tuple[str, dict[str, Any]]] = []

    def held(b: Any, primitive: str, args: dict[str, Any], *a: Any, **kw: Any) -> None:
        seen.append((primitive, dict(args)))

    monkeypatch.setattr(actions, "_held_fault", held)
    monkeypatch.setattr(actions, "wait_ready", lambda *a, **kw: None)
    monkeypatch.setattr(actions, "_snapshot", lambda *a, **kw: None)
    monkeypatch.setattr(actions, "_stale", lambda *a, **kw: {})
    monkeypatch.setenv("EH_RUN_DIR", str(tmp_path))
    return seen


def _use(monkeypatch: pytest.MonkeyPatch, b: Any) -> None:
    monkeypatch.setattr(actions, "_backend", lambda configuration=None: b)


def _postgres_node(b: SimChaos, zone: str) -> str:
    return sorted(n for n, z in b.nodes().items() if z == zone)[0]


def _outcome(fn: Any) -> str:
    """What a node fault did: the node it stopped, or that it was refused for the control plane."""
    try:
        out = fn()
    except BackendError as exc:
        assert "control plane" in str(exc), exc
        return "refused: control plane"
    return str(out["node"])


def _az_experiments(t: Topology) -> dict[str, tuple[str, str | None]]:
    """The shipped AZ node-loss experiments' zone and service (az-node-loss, az-primary-loss)."""
    return {
        "az-node-loss": (str(resolve_zone("an AZ without postgres", t, {})), None),
        "az-primary-loss": (str(resolve_zone("the AZ of postgres", t, {})), "postgres"),
    }


@pytest.mark.parametrize("edition", [Edition.CE, Edition.ENTERPRISE])
def test_on_eks_the_server_lands_in_the_database_primarys_az_whichever_way_ties_fall(edition: Edition) -> None:
    """The rendered values put the control plane in one AZ, the same every night: the primary's, whose node loss
    is already the declared single point of failure (az-primary-loss). HEAD: the tie decided between the AZs."""
    t = _topology()
    values = render_helm_values(t, edition)
    azs = [n for n, z in _eks_node_names(t).items() if z in helm.region_azs(t)]
    placed = set()
    for order in itertools.permutations(azs):
        sim = _eks_sim(t, values, list(order))
        placed |= {n for n in control_plane_of(sim.items("v1", "pods"))}
    assert {_eks_node_names(t)[n] for n in placed} == set(helm.primary_azs(t)) == {"us-west-2a"}


def test_the_tie_decides_an_eks_placement_without_the_primary_preference() -> None:
    """Control: without the primary-AZ preference (HEAD's rule) the sim shows both outcomes, as selectHost's
    coin does on EKS, so the test above can fail."""
    t = _topology()
    values = render_helm_values(t, Edition.CE)
    affinity = helm._control_plane_affinity(t)
    affinity["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] = affinity["nodeAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ][:1]
    for section in ("server", "connectInject"):
        extra = helm.SERVER_ANTI_AFFINITY if section == "server" else {}
        values[section]["affinity"] = helm._yaml_string({**affinity, **extra})
    azs = [n for n, z in _eks_node_names(t).items() if z in helm.region_azs(t)]
    zones = {
        _eks_node_names(t)[n]
        for order in itertools.permutations(azs)
        for n in control_plane_of(_eks_sim(t, values, list(order)).items("v1", "pods"))
    }
    assert zones == {"us-west-2a", "us-west-2b"}


@pytest.mark.parametrize("az_nodes", [1, 2])
def test_the_az_node_loss_experiments_do_the_same_thing_whichever_way_ties_fall(
    az_nodes: int, monkeypatch: pytest.MonkeyPatch, stops: list[tuple[str, dict[str, Any]]]
) -> None:
    """Same config, same fault: for every tie order, az-node-loss's kill_node stops the same node, which runs no
    control-plane pod, and az-primary-loss's never stops the control plane (with one node per AZ it is refused
    every time). HEAD: with one node per AZ, az-node-loss stopped the server's node under one tie order and not
    under the other; with two, 'the zone's first' was the server's under some orders."""
    t = _topology(az_nodes)
    values = render_helm_values(t, Edition.CE)
    azs = [n for n, z in _eks_node_names(t).items() if z in helm.region_azs(t)]
    outcomes: dict[str, set[str]] = {}
    for order in itertools.permutations(azs):
        sim = _eks_sim(t, values, list(order))
        probe = SimChaos(sim, t, [])
        zone_db = _az_experiments(t)["az-primary-loss"][0]
        b = SimChaos(sim, t, [("postgres-0", "postgres", _postgres_node(probe, zone_db))])
        _use(monkeypatch, b)
        control = b.control_plane_nodes()
        for exp, (zone, service) in _az_experiments(t).items():
            stops.clear()
            got = _outcome(lambda: actions.kill_node(zone, duration_s=0, service=service))  # noqa: B023
            assert got not in control, f"ties {order}: {exp} stopped {got}, which runs {control[got]}"
            assert [a["node"] for _p, a in stops] == ([] if got.startswith("refused") else [got])
            outcomes.setdefault(exp, set()).add(got)
    assert len(outcomes["az-node-loss"]) == 1, outcomes  # the Region-carries-on experiment: one node, every night
    assert not next(iter(outcomes["az-node-loss"])).startswith("refused")
    if az_nodes == 1:  # the primary's only node runs the control plane too: refused, every night alike
        assert outcomes["az-primary-loss"] == {"refused: control plane"}
    # else: postgres is placed by hand here (the AZ's first node); where the rendered rule puts it in a two-node
    # AZ, away from the control plane, is tests/test_placement_p46a.py's: stopped or refused, never the control
    # plane (docs/CONTRACTS.md)


def test_kill_node_passes_over_the_control_planes_node_and_says_so(
    monkeypatch: pytest.MonkeyPatch, stops: list[tuple[str, dict[str, Any]]], tmp_path: Path
) -> None:
    """A two-node AZ whose first node (by name) runs the server: the other one is stopped, and the action's output
    (the journal) names the node passed over and why."""
    t = _topology(2)
    values = render_helm_values(t, Edition.CE)
    a_nodes = sorted(n for n, z in _eks_node_names(t).items() if z == "us-west-2a")
    sim = _eks_sim(t, values, a_nodes)  # ties to the first: the server and injector on it
    b = SimChaos(sim, t, [])
    _use(monkeypatch, b)
    assert set(b.control_plane_nodes()) == {a_nodes[0]}
    out = actions.kill_node("us-west-2a", duration_s=0)
    assert out["node"] == a_nodes[1] and stops == [("kill_node", {"node": a_nodes[1]})]
    assert sorted(p.rsplit(" ", 1)[1] for p in out["passed_over"][a_nodes[0]]) == ["(connect-injector)", "(server)"]
    assert "consul/consul-server-0 (server)" in json.loads(json.dumps(out))["passed_over"][a_nodes[0]]  # journal


def test_a_refused_node_fault_records_nothing_and_names_the_control_plane(
    monkeypatch: pytest.MonkeyPatch, stops: list[tuple[str, dict[str, Any]]], tmp_path: Path
) -> None:
    """Every candidate runs the control plane (a named node, a one-node zone): refused before the timeline or the
    cluster is touched, one line naming the node and the pods; zone_outage alike."""
    t = _topology()
    sim = _eks_sim(t, render_helm_values(t, Edition.CE), [])
    b = SimChaos(sim, t, [])
    _use(monkeypatch, b)
    node = next(n for n, pods in b.control_plane_nodes().items() if "consul/consul-server-0 (server)" in pods)
    zone = b.nodes()[node]  # an AZ of one node: every candidate of a kill_node there runs the server
    for call in (
        lambda: actions.kill_node(zone, duration_s=0),
        lambda: actions.kill_node(zone, node=node, duration_s=0),
        lambda: actions.zone_outage(zone, duration_s=0),
    ):
        with pytest.raises(BackendError) as exc:
            call()
        text = str(exc.value)
        assert node in text and "consul-server-0 (server)" in text and "\n" not in text
    assert stops == [] and not (tmp_path / "chaos.jsonl").exists()


def test_a_node_or_zone_without_the_control_plane_is_stopped_as_before(
    monkeypatch: pytest.MonkeyPatch, stops: list[tuple[str, dict[str, Any]]]
) -> None:
    """Control: a Local Zone's node, a Local Zone's outage: nothing of the control plane there, the zone's first
    node as before, nothing passed over."""
    t = _topology()
    sim = _eks_sim(t, render_helm_values(t, Edition.CE), [])
    b = SimChaos(sim, t, [])
    _use(monkeypatch, b)
    lax = "us-west-2-lax-1a"
    out = actions.kill_node(lax, duration_s=0)
    assert out["node"] == sorted(n for n, z in b.nodes().items() if z == lax)[0] and "passed_over" not in out
    actions.zone_outage(lax, duration_s=0)
    assert [p for p, _a in stops] == ["kill_node", "zone_outage"]


def test_a_backend_that_cannot_tell_where_the_control_plane_runs_refuses_node_faults(
    monkeypatch: pytest.MonkeyPatch, stops: list[tuple[str, dict[str, Any]]]
) -> None:
    """Unverified is a failure: the Backend default says it cannot tell, and the node fault is refused. The local
    backend's control loop runs on no node ({}), and so does the in-memory fake's."""
    fake = FakeBackend(_topology())

    class Blind(FakeBackend):
        control_plane_nodes = FakeBackend.__mro__[1].control_plane_nodes  # Backend's default

    blind = Blind(_topology())
    _use(monkeypatch, blind)
    with pytest.raises(BackendError, match="cannot tell which nodes run the mesh's control plane"):
        actions.kill_node("us-west-2-lax-1a", duration_s=0)
    assert stops == []
    assert fake.control_plane_nodes() == {}
    assert LocalBackend.control_plane_nodes(object.__new__(LocalBackend)) == {}


def test_node_to_stop_is_one_rule() -> None:
    assert node_to_stop(["a", "b", "c"], {"a": ["s"], "c": ["i"]}) == ("b", {"a": ["s"], "c": ["i"]})
    assert node_to_stop(["a"], {"a": ["s"]}) == (None, {"a": ["s"]})
    assert node_to_stop(["a", "b"], {}) == ("a", {})


def test_control_plane_of_reads_the_charts_labels_only() -> None:
    """The chart's server and injector by `app=consul, component=...`; a HashiCups pod, the cert manager, a pod
    being deleted and a Pending one are not the control plane on a node."""

    def pod(name: str, labels: dict[str, str], node: str | None, deleting: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": "consul", "labels": labels}
        if deleting:
            meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        return {"metadata": meta, "spec": {"nodeName": node} if node else {}}

    pods = [
        pod("consul-server-0", {"app": "consul", "component": "server"}, "n1"),
        pod("consul-connect-injector-x", {"app": "consul", "component": "connect-injector"}, "n2"),
        pod("consul-webhook-cert-manager-y", {"app": "consul", "component": "webhook-cert-manager"}, "n3"),
        pod("product-api-z", {"app": "product-api", "component": "server"}, "n3"),
        pod("consul-server-1", {"app": "consul", "component": "server"}, "n4", deleting=True),
        pod("consul-server-2", {"app": "consul", "component": "server"}, None),
    ]
    assert control_plane_of(pods) == {
        "n1": ["consul/consul-server-0 (server)"],
        "n2": ["consul/consul-connect-injector-x (connect-injector)"],
    }


def _view(nodes: dict[str, str], control: dict[str, list[str]], pods: list[PodView]) -> ClusterView:
    return ClusterView([NodeView(n, z, False) for n, z in nodes.items()], pods, control)


def test_a_game_days_plan_names_the_node_the_action_stops() -> None:
    """The existing backend's plan (game day, the fence) resolves a node kill by the action's rule: the node
    without the control plane, the database's node for `service`; a refusal is a problem of the plan."""
    stub = SimpleNamespace(blast=BlastRadius(), _region_only=lambda: {}, _zone_namespace=lambda z: "ns")
    nodes = {"a1": "us-west-2a", "a2": "us-west-2a", "b1": "us-west-2b"}
    pg = PodView("ns", "postgres-0", "a1", "postgres", "us-west-2a", True, False)
    view = _view(nodes, {"a1": ["consul/consul-server-0 (server)"]}, [pg])
    targets, problems = ExistingBackend.plan_fault(stub, "kill_node", "us-west-2a", view=view)  # type: ignore[arg-type]
    assert targets.nodes == ["a2"] and problems == []
    targets, problems = ExistingBackend.plan_fault(stub, "kill_node", "us-west-2a", service="postgres", view=view)  # type: ignore[arg-type]
    assert targets.nodes == ["a1"] and "runs the mesh's control plane" in problems[0]
    _t, problems = ExistingBackend.plan_fault(stub, "zone_outage", "us-west-2a", view=view)  # type: ignore[arg-type]
    assert "zone us-west-2a runs the mesh's control plane" in problems[0]
    targets, problems = ExistingBackend.plan_fault(stub, "kill_node", "us-west-2b", view=view)  # type: ignore[arg-type]
    assert targets.nodes == ["b1"] and problems == []  # control: nothing of the control plane there


def test_the_verdict_says_a_refused_node_fault_was_refused_for_the_control_plane(
    monkeypatch: pytest.MonkeyPatch, stops: list[tuple[str, dict[str, Any]]]
) -> None:
    """The refusal reaches the verdict: chaostoolkit keeps the exception's lines in the journal, and experiment-ran
    names the failed action with the last one, which is the refusal's one line (nodes, pods, why)."""
    from harness.contract.journal import journal_problems

    t = _topology()
    sim = _eks_sim(t, render_helm_values(t, Edition.CE), [])
    b = SimChaos(sim, t, [])
    _use(monkeypatch, b)
    node = next(n for n, pods in b.control_plane_nodes().items() if "consul/consul-server-0 (server)" in pods)
    with pytest.raises(BackendError) as exc:
        actions.kill_node(b.nodes()[node], duration_s=0)  # an AZ of one node: its node runs the server
    action = "lose the node of the postgres primary"
    journal = {
        "status": "failed",
        "run": [{"activity": {"name": action}, "status": "failed",
                 "exception": ["Traceback (most recent call last):\n", f"harness.errors.BackendError: {exc.value}\n"]}],
    }  # fmt: skip
    problems = journal_problems(journal, [action])
    failed = next(p for p in problems if p.startswith(f"action '{action}' failed"))
    assert node in failed and "consul-server-0 (server)" in failed and "refused before anything is recorded" in failed
