"""Where the Consul control plane lands on kind, against the nodes the shipped experiments stop.

A Consul server (1 replica) or connect injector (whose endpoints controller
tells Consul which instances are gone) on a node an experiment stops turns
that experiment into a control-plane outage: the catalog freezes with the
node's pods still passing, and the chaos result means something else. On
kind the Region has one node per AZ and az-node-loss / az-primary-loss stop
one each, so "somewhere in the Region's AZs" is not enough: kube-scheduler
breaks equal scores at random (pkg/scheduler/schedule_one.go selectHost), so
each AZ node is where some run puts the server. The sim's tie-break is
steered through every candidate order here, so a placement that depends on
the tie shows.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import pytest

from harness.chaos.experiment import SHIPPED_EXPERIMENTS, plan_experiment, shipped_experiments
from harness.render import (
    entry,  # noqa: F401  (first: render.kind and render.hashicups import each other through it)
    helm,
    kind,
)
from harness.render.helm import render_helm_values
from harness.topology import load_topology
from harness.topology.model import Edition, Topology
from tests.kubesim import ClusterSim, labels_of

# the chaos actions that stop nodes on kind (`docker stop`): a node kill, and a zone outage (every node of it)
STOPS_NODES = ("kill_node", "zone_outage")
CONTROL_PLANE = ("server", "connect-injector")  # what the mesh's verdict depends on during a fault


def _stopped_nodes(t: Topology) -> dict[str, set[str]]:
    """Each shipped experiment -> the kind nodes it may stop (every node of a zone it kills a node of)."""
    nodes_of: dict[str, set[str]] = {}
    for name, zone in zip(kind.kind_worker_names(t), kind.worker_zones(t), strict=True):
        nodes_of.setdefault(zone.name, set()).add(name)
    out: dict[str, set[str]] = {}
    for exp in shipped_experiments():
        plan = plan_experiment(SHIPPED_EXPERIMENTS / f"{exp}.json", t)
        stopped = {n for func, zones in plan.steps if func in STOPS_NODES for z in zones for n in nodes_of[z]}
        if stopped:
            out[exp] = stopped
    return out


def _az_nodes(t: Topology) -> list[str]:
    """The kind workers of the Region's AZs."""
    return [n for n, z in zip(kind.kind_worker_names(t), kind.worker_zones(t), strict=True) if not z.is_edge]


def _place(t: Topology, values: dict[str, Any], tie_order: list[str], alone: bool = False) -> dict[str, str]:
    """component -> node the sim's scheduler binds the chart's pods to, ties broken by `tie_order`; `alone`:
    the server only (no other pod's load to break the tie first)."""
    sim = ClusterSim()
    config = kind.render_kind_config(t)
    for node in config["nodes"]:
        node.pop("extraPortMappings", None)  # no host ports: placement only
    asyncio.run(sim.kind_create(kind.cluster_name(t), config))
    sim.sched_tie_order = tie_order
    sim.install_consul(values, release="consul", namespace="consul")
    if alone:
        for d in sim.items("apps/v1", "deployments", "consul"):
            sim.delete("apps/v1", "deployments", "consul", d["metadata"]["name"])
    for _ in range(6):  # workloads -> pods -> scheduled (-> the server's claim provisioned -> bound)
        now = time.time()
        sim._workloads_tick()
        sim._scheduler_tick(now)
        sim._volumes_tick(now)
    placed = {}
    for pod in sim.items("v1", "pods", "consul"):
        node = (pod.get("spec") or {}).get("nodeName")
        assert node, f"{pod['metadata']['name']} was never scheduled: {pod.get('status')}"
        placed[labels_of(pod)["component"]] = str(node)
    return placed


@pytest.fixture(scope="module")
def topology() -> Topology:
    return load_topology()


def test_the_shipped_experiments_stop_every_az_node_of_the_default_kind_cluster(topology: Topology) -> None:
    """The premise: between them, az-node-loss and az-primary-loss stop each AZ's (only) node."""
    stopped = _stopped_nodes(topology)
    az_nodes = set(_az_nodes(topology))
    assert az_nodes and stopped["az-node-loss"] | stopped["az-primary-loss"] >= az_nodes


@pytest.mark.parametrize("edition", [Edition.CE, Edition.ENTERPRISE])
def test_the_consul_control_plane_is_on_no_node_an_experiment_stops_whichever_way_ties_fall(
    topology: Topology, edition: Edition
) -> None:
    values = render_helm_values(topology, edition)
    stopped = _stopped_nodes(topology)
    workers = kind.kind_worker_names(topology)
    cp = f"{kind.cluster_name(topology)}-control-plane"
    for order in itertools.permutations([cp, *workers[:3]], 2):  # each candidate first in its turn
        placed = _place(topology, values, list(order))
        for component in CONTROL_PLANE:
            hit = sorted(exp for exp, nodes in stopped.items() if placed[component] in nodes)
            assert not hit, f"ties {order}: the {component} is on {placed[component]}, which {hit} stop"


def test_the_tie_break_steers_an_unpinned_pod_so_the_check_above_can_fail(topology: Topology) -> None:
    """Control: with the placement rule the chart had before (the Region's AZs only), the server lands on
    whichever AZ node wins the tie, and one of them is a node az-node-loss or az-primary-loss stops."""
    values = render_helm_values(topology, Edition.CE)
    zone_only = (
        "nodeAffinity:\n  requiredDuringSchedulingIgnoredDuringExecution:\n    nodeSelectorTerms:\n"
        "    - matchExpressions:\n      - key: topology.kubernetes.io/zone\n        operator: In\n"
        f"        values: {[z.name for z in topology.region_zones]}\n"
    )
    values["server"] = {"replicas": 1, "affinity": zone_only}
    stopped = _stopped_nodes(topology)
    az_nodes = _az_nodes(topology)
    seen = {_place(topology, values, [first], alone=True)["server"] for first in az_nodes}
    assert seen == set(az_nodes)  # the tie decides, as selectHost's coin does on kind
    assert any(n in stopped["az-node-loss"] | stopped["az-primary-loss"] for n in seen)


@pytest.mark.parametrize("drop", ["tolerations", "preferredDuringSchedulingIgnoredDuringExecution"])
def test_without_the_toleration_or_the_preference_the_server_is_back_on_a_stopped_node(
    topology: Topology, drop: str
) -> None:
    """Control: each half of the rule is needed. Without the toleration kind's control-plane taint keeps the
    server off it; without the preference it may go there, but a tie sends it to an AZ node as often."""
    values = render_helm_values(topology, Edition.CE)
    if drop == "tolerations":
        del values["server"]["tolerations"]
    else:
        affinity = helm._control_plane_affinity(topology)
        del affinity["nodeAffinity"][drop]
        values["server"]["affinity"] = helm._yaml_string({**affinity, **helm.SERVER_ANTI_AFFINITY})
    stopped = _stopped_nodes(topology)
    workers = kind.kind_worker_names(topology)
    placed = {_place(topology, values, [first], alone=True)["server"] for first in workers[:2]}
    assert placed & (stopped["az-node-loss"] | stopped["az-primary-loss"])
