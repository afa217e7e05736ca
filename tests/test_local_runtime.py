"""The local backend's runtime records on a real cluster: spreading, readiness events, admin API, entry points.

A small topology with two-node zones (so spreading is visible) is brought up
once for the module. (tests/test_e2e_users.py runs the whole loop.)
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from harness.backends.base import each_admin
from harness.backends.local import LocalBackend
from harness.chaos.upstream_stats import parse_clusters, snapshot
from harness.render import render, write
from harness.render.manifests import load
from harness.topology import load_topology
from tests.conftest import complete_jsonl, leftovers, wait_until

pytestmark = [pytest.mark.local, pytest.mark.slow]

CLUSTER = "ehrt"
LAX, LAS = "us-west-2-lax-1a", "us-west-2-las-1a"
GRACE_S = 3.0  # local.nodeGracePeriodS: a killed node's pods stay Ready this long
TOPOLOGY = (
    """
apiVersion: edge-harness/v1
name: spread
region: us-west-2
zones:
  - {name: us-west-2a, type: availability-zone, nodes: 2}
  - {name: us-west-2-lax-1a, type: local-zone, nodes: 2, serviceLink: {latencyMs: 5}}
  - {name: us-west-2-las-1a, type: local-zone, nodes: 1, serviceLink: {latencyMs: 5}}
services:
  - {name: frontend, placement: edge, replicas: 2, upstreams: [public-api]}
  - {name: public-api, placement: edge, replicas: 2, upstreams: [product-api]}
  - {name: product-api, placement: edge, replicas: 2, upstreams: [postgres]}
  - {name: postgres, placement: region, replicas: 1, protocol: tcp}
"""
    + f"local: {{nodeGracePeriodS: {GRACE_S:g}}}\n"
)
COFFEES = json.dumps({"query": "{ coffees { id name } }"})


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    d = tmp_path_factory.mktemp("spread")
    (d / "topology.yaml").write_text(TOPOLOGY)
    write(render(load_topology(d / "topology.yaml")), d / "m")
    b = LocalBackend(cluster=CLUSTER)
    b.down()
    try:
        b.up(load(d / "m"))
        yield b
    finally:
        b.down()
        assert leftovers(CLUSTER) == []


def _events(b: LocalBackend) -> list[dict[str, object]]:
    return complete_jsonl(b.inventory_path)


def test_replicas_spread_over_the_zones_nodes(cluster: LocalBackend) -> None:
    """kube-scheduler with the rendered hostname constraint puts one replica on each node of a two-node zone."""
    by: dict[tuple[str, str], list[str]] = {}
    for p in cluster.inventory().pods(alive_only=True):
        by.setdefault((p.zone, p.service), []).append(p.node)
    for zone in ("us-west-2a", LAX):
        nodes = sorted(n for n, z in cluster.nodes().items() if z == zone)
        assert len(nodes) == 2
        for svc in ("frontend", "public-api", "product-api"):
            assert sorted(by[(zone, svc)]) == nodes, (zone, svc, by[(zone, svc)])


def test_added_is_not_ready_and_every_pod_became_ready_after(cluster: LocalBackend) -> None:
    added: dict[str, float] = {}
    ready: dict[str, float] = {}
    for e in _events(cluster):
        if e["event"] == "added":
            added[str(e["pod"])] = float(e["ts"])  # type: ignore[arg-type]
        elif e["event"] == "ready":
            ready.setdefault(str(e["pod"]), float(e["ts"]))  # type: ignore[arg-type]
    assert set(ready) == set(added)
    assert all(ready[p] >= added[p] for p in added)
    assert sum(1 for p in added if ready[p] - added[p] > 0.2) > len(added) / 2  # probes take their time


CLOCK_REALTIME_COARSE = 5  # Linux; `time` does not export it
FILE_STAMP_RES_S = time.clock_getres(CLOCK_REALTIME_COARSE)
"""A file's mtime comes from the kernel's coarse clock (one tick: 1-10 ms), which lags `time.time()` by
up to one tick: a file written 0.1 ms after an event stamped by `time.time()` can carry an mtime ~2 ms
*before* that stamp (CI saw exactly that)."""


def test_unready_chaos_writes_events_before_the_sidecars_are_told(cluster: LocalBackend) -> None:
    """Order, seen two ways that never disagree with a correct cluster: (1) whenever a reader finds the
    sidecar's endpoints UNHEALTHY, the unready events are already in the inventory (polled while the
    action runs); (2) the endpoints file's mtime is no earlier than the last event's stamp, to within the
    one tick by which a file stamp may lag the clock the events are stamped with."""
    caller = next(p for p in cluster.inventory().pods(alive_only=True) if p.zone == LAS and p.service == "frontend")
    eds_dir = cluster.state_dir / "pods" / caller.pod / "envoy" / "eds"

    # the in-zone target; a customized chain has Consul's <8 hex>~ between failover-target~0~ and the name
    local_eds = next(eds_dir.glob("failover-target~0~*public-api-las-1a.*")) / "cla.json"
    targets = {p.pod for p in cluster.inventory().pods(alive_only=True) if p.zone == LAS and p.service == "public-api"}

    def unready_events() -> list[dict[str, object]]:
        return [e for e in _events(cluster) if e["event"] == "unready" and e["pod"] in targets]

    assert wait_until(lambda: "UNHEALTHY" not in local_eds.read_text(), 30)  # all in-zone endpoints serve
    before = len(unready_events())
    seen_unhealthy_without_events: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                unhealthy = "UNHEALTHY" in local_eds.read_text()
            except OSError:
                continue  # between a writer's unlink and rename
            if unhealthy:
                n = len(unready_events())
                if n - before < len(targets):
                    seen_unhealthy_without_events.append(n - before)
                return
            time.sleep(0.001)  # leave the cores to the cluster

    watcher = threading.Thread(target=watch)
    watcher.start()
    pods: list[str] = []
    try:
        pods = cluster.set_pod_unready(LAS, "public-api")
        assert set(pods) == targets
        assert wait_until(lambda: all(not cluster.inventory().is_ready(p) for p in pods), 30)
        assert wait_until(lambda: "UNHEALTHY" in local_eds.read_text(), 30)
        stop.set()
        watcher.join()
        assert not seen_unhealthy_without_events, "the sidecar was told before the inventory had the events"
        unready_ts = [float(str(e["ts"])) for e in unready_events()[before:]]
        assert len(unready_ts) == len(pods)
        assert local_eds.stat().st_mtime >= max(unready_ts) - FILE_STAMP_RES_S
    finally:
        stop.set()
        watcher.join()
        cluster.set_pod_ready(LAS, "public-api")
    assert wait_until(lambda: all(cluster.inventory().is_ready(p) for p in pods), 30)
    st = cluster.status().pods
    assert all(st[p] == "Ready" for p in pods)


def test_envoy_admin_answers_from_inside_the_pod(cluster: LocalBackend) -> None:
    pod = next(p.pod for p in cluster.inventory().pods(alive_only=True) if p.zone == LAX and p.service == "public-api")
    rows = parse_clusters(json.loads(cluster.envoy_admin(pod, "/clusters?format=json")))
    assert rows and all(r["cluster"] != "local_app" for r in rows)
    assert any("product-api-lax-1a" in r["cluster"] for r in rows)
    from harness.errors import BackendError

    with pytest.raises(BackendError, match="no live meshed pod"):
        cluster.envoy_admin("no-such-pod", "/clusters")


def test_snapshot_of_every_sidecar_in_one_request(cluster: LocalBackend, tmp_path: Path) -> None:
    """The daemon asks every sidecar itself (`envoy_admin_many`); an unknown pod's answer says why.

    And a burst of concurrent single calls (more than the daemon socket's old backlog of 5: kind/EKS
    snapshots and any other reader ask one pod per call) all get answers too.
    """
    alive = sorted(p.pod for p in cluster.inventory().pods(alive_only=True))
    answers = cluster.envoy_admin_many([*alive, "no-such-pod"], "/clusters?format=json")
    assert "no live meshed pod 'no-such-pod'" in str(answers.pop("no-such-pod"))
    assert all(isinstance(a, bytes) for a in answers.values()) and sorted(answers) == alive
    one = next(p for p in alive if "public-api" in p)
    assert (
        parse_clusters(json.loads(answers[one]))
        and json.loads(answers[one]).keys() == json.loads(cluster.envoy_admin(one, "/clusters?format=json")).keys()
    )  # the same document as one call gives
    snap = snapshot(cluster, tmp_path, "start")
    assert snap.failed == {} and snap.pods == alive
    assert snap.rows == len((tmp_path / "upstream-stats.jsonl").read_text().splitlines()) > len(alive)
    burst = each_admin(cluster.envoy_admin, alive, "/ready", 5.0, workers=32)
    assert all(isinstance(a, bytes) for a in burst.values()), burst


def test_a_dead_nodes_pods_stay_ready_until_the_grace_period_then_the_entry_stops_using_them(
    cluster: LocalBackend,
) -> None:
    """A killed node is dead at once, but the API learns it only after node-monitor-grace-period (here 3 s).

    Until then its pods are registered and Ready (kind: the kubelet that would say otherwise is stopped), so
    the entry point (kube-proxy's endpoints, an ALB's target) still sends users to them and a user's
    kept-alive connection gets no answer; then they are not Ready, the entry point says down, and after the
    restore new pods serve it again.
    """
    url = urlsplit(cluster.entrypoints()[LAS])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("POST", "/api", body=COFFEES, headers={"Content-Type": "application/json"})
    assert conn.getresponse().read() and conn.sock is not None  # kept alive
    node = next(n for n, z in cluster.nodes().items() if z == LAS)
    before = {p.pod for p in cluster.inventory().ready_pods() if p.zone == LAS}
    t0 = time.time()
    cluster.kill_node(node)
    try:
        assert {p.pod for p in cluster.inventory().ready_pods() if p.zone == LAS} == before
        conn.sock.settimeout(1.0)
        with pytest.raises(TimeoutError):  # a silent peer: no reset, no answer (the kill sent nothing either)
            conn.request("POST", "/api", body=COFFEES, headers={"Content-Type": "application/json"})
            conn.getresponse().read()
        assert wait_until(lambda: not any(p.zone == LAS for p in cluster.inventory().ready_pods()), 30)
        unready = [float(str(e["ts"])) for e in _events(cluster)
                   if e.get("pod") in before and e.get("event") == "unready" and float(str(e["ts"])) >= t0]  # fmt: skip
        assert len(unready) == len(before) and min(unready) >= t0 + GRACE_S  # each, and none before the grace
    finally:
        conn.close()
        cluster.restore_node(node)

    def las() -> list[tuple[object, object, float]]:
        lines = complete_jsonl(cluster.entrypoints_path)
        return [(e["up"], e["reason"], float(e["ts"])) for e in lines if e["zone"] == LAS and float(e["ts"]) >= t0]

    assert wait_until(lambda: len(las()) >= 2, 60)
    (down, why_down, down_ts), (up, why_up, _) = las()[:2]
    assert (down, why_down, up, why_up) == (False, "no ready frontend pod", True, "a ready frontend pod serves it")
    assert down_ts >= t0 + GRACE_S
    assert wait_until(lambda: sum(1 for p in cluster.inventory().ready_pods() if p.zone == LAS) == 6, 60)
    assert before.isdisjoint({p.pod for p in cluster.inventory().ready_pods() if p.zone == LAS})


def test_killing_a_pod_of_a_dead_node_deletes_it_at_once(cluster: LocalBackend) -> None:
    """kill_pod deletes the pod with no grace period (kind/EKS: a forced delete), which the API does at once even
    when the pod's node is dead: its endpoint goes and the ReplicaSet replaces it. Here its processes were
    already gone and the control loop, which never looks at a dead node's pods, left it registered and Ready
    until the grace period: a kill that did nothing until then."""
    node = sorted(n for n, z in cluster.nodes().items() if z == LAX)[0]
    dark = {p.pod for p in cluster.inventory().pods(alive_only=True) if p.node == node and p.service == "public-api"}
    assert dark, "the spread topology puts a public-api pod on each LAX node"
    cluster.kill_node(node)
    try:
        t0 = time.time()
        killed = set(cluster.kill_pod(LAX, "public-api"))
        assert dark <= killed
        removed = {str(e["pod"]): float(str(e["ts"])) for e in _events(cluster)
                   if e.get("event") == "removed" and e.get("pod") in dark}  # fmt: skip
        assert set(removed) == dark and max(removed.values()) < t0 + GRACE_S  # at once, not at the grace period
        # the replacements run on the zone's live node
        assert wait_until(lambda: sum(1 for p in cluster.inventory().ready_pods()
                                      if p.zone == LAX and p.service == "public-api") == 2, 60)  # fmt: skip
        assert all(p.node != node for p in cluster.inventory().ready_pods() if p.service == "public-api"
                   and p.zone == LAX)  # fmt: skip
    finally:
        cluster.restore_node(node)
    assert wait_until(lambda: sum(1 for p in cluster.inventory().ready_pods() if p.zone == LAX) == 6, 60)
