"""Locust workers inside each entry zone (harness/traffic/inzone.py, `--workers-in-zone`).

Three levels:
- the rendered objects are valid Kubernetes (kubernetes-validate, strict) and
  pin each worker to its zone (affinity on the zone label, the edge taint
  tolerated, its own zone's entry Service only);
- the flow against the simulated cluster with EKS-like nodes: applied, each
  worker pod scheduled onto a node of its zone and Ready, deleted on stop;
- locust's own distributed mode for real, here: a master started by
  `TrafficRunner(master=...)` and one worker process per zone started with the
  *rendered* container's args and env and the ConfigMap's files laid out as
  the pod mounts them; the records the workers forward reach the master's
  requests.jsonl, zone by zone, probes included.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from harness.backends.kube import KubeCluster
from harness.errors import BackendError, InputError
from harness.topology import load_topology
from harness.traffic.inzone import (
    LOCUST_IMAGE,
    MOUNT,
    NAMESPACE,
    InZoneWorkers,
    cluster_entrypoints,
    worker_objects,
)
from harness.traffic.runner import TrafficError, TrafficRunner, locust_command
from tests.conftest import wait_until
from tests.kubefake import FakeApiServer
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_existing import EKS_NODES, NODE
from tests.test_backend_kind import tools as tools  # the fake kind/docker/kubectl, re-exported for pytest
from tests.test_render_contract import K8S_VERSION

REPO = Path(__file__).resolve().parents[1]
T = load_topology()
LAX = "us-west-2-lax-1a"
PHX = "us-west-2-phx-2a"
ZONE_KEY = "topology.kubernetes.io/zone"


def _deployments(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}


def test_rendered_workers_are_valid_and_pinned_to_their_zone() -> None:
    objs = worker_objects(T, "10.1.2.3", 5557)
    for o in objs:
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)
    assert [o["kind"] for o in objs[:2]] == ["Namespace", "ConfigMap"]
    deps = _deployments(objs)
    assert set(deps) == {f"locust-worker-{T.short(z)}" for z in T.zones}
    lax = deps["locust-worker-lax-1a"]["spec"]["template"]
    term = lax["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert term["nodeSelectorTerms"][0]["matchExpressions"] == [
        {"key": "topology.kubernetes.io/zone", "operator": "In", "values": [LAX]}
    ]
    assert lax["spec"]["tolerations"][0]["value"] == LAX
    assert "tolerations" not in deps["locust-worker-2a"]["spec"]["template"]["spec"]  # AZ nodes carry no taint
    c = lax["spec"]["containers"][0]
    assert c["image"] == LOCUST_IMAGE and c["args"][c["args"].index("--master-host") + 1] == "10.1.2.3"
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    assert {e["name"]: e["valueFrom"] for e in c["env"] if "valueFrom" in e} == {
        "EH_NODE": {"fieldRef": {"fieldPath": "spec.nodeName"}}  # the clock that stamps its records
    }
    assert json.loads(env["EH_ENTRYPOINTS"]) == {LAX: "http://entry-lax-1a.hashicups-lax-1a.svc.cluster.local:80"}
    assert env["EH_FORWARD_RECORDS"] == "1"
    assert lax["metadata"]["annotations"]["consul.hashicorp.com/connect-inject"] == "false"
    # the image's locust is the venv's: the master here and the workers there speak one protocol
    assert LOCUST_IMAGE.endswith(":" + importlib.metadata.version("locust"))  # never import locust (gevent)
    with pytest.raises(InputError, match="--locust-master-host"):
        worker_objects(T, "")
    with pytest.raises(InputError, match="--locust-master-port"):
        worker_objects(T, "10.1.2.3", 0)


def test_the_modules_that_travel_with_the_locustfile_import_only_each_other_and_the_standard_library() -> None:
    """A worker pod has no harness installed: a harness import the list lacks (harness.contract.files, added to
    the budget's module) failed there with ModuleNotFoundError, and the zone's users sent nothing."""
    import ast

    from harness.traffic.inzone import LOCUST_SIDE, REPO_ROOT

    travels = {path.removesuffix(".py").replace("/", ".") for path in LOCUST_SIDE}
    for path in (*LOCUST_SIDE, "harness/loadtests/hashicups.py", "harness/loadtests/shapes.py"):
        tree = ast.parse((REPO_ROOT / path).read_text(encoding="utf-8"))
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | {
            n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and n.level == 0
        }
        for name in imported:
            top = name.split(".")[0]
            assert top != "harness" or name in travels, f"{path} imports {name}, which does not travel with it"
            third_party = {"locust", "gevent", "shapes"}  # the image's, and the locustfile's sibling
            assert top == "harness" or top in sys.stdlib_module_names or top in third_party, (path, name)


def test_master_command_and_probe_rule(tmp_path: Path) -> None:
    cmd = locust_command(Path("f.py"), "http://x", 5, 5, 10, 4, tmp_path / "s", master=("0.0.0.0", 5557, 5))
    assert cmd[-9:] == ["--master", "--master-bind-host", "0.0.0.0", "--master-bind-port", "5557",
                        "--expect-workers", "5", "--expect-workers-max-wait", "120"]  # fmt: skip
    assert "--processes" not in cmd
    entry = cluster_entrypoints(T)
    with pytest.raises(TrafficError, match="every zone is probed"):
        TrafficRunner(entry, tmp_path, 5, 5, 10, probe_zones=[LAX], master=("0.0.0.0", 5557, 5))


# -- against the simulated cluster (EKS-like nodes) --------------------------------------


def test_workers_flow_against_the_fake_api_server(api: FakeApiServer, tmp_path: Path) -> None:
    cluster: KubeCluster = api.cluster(tmp_path, "admin")
    api.seed(cluster, *EKS_NODES)
    workers = InZoneWorkers(cluster, T, master_host="10.0.9.9", ready_timeout_s=20, poll_s=0.1)
    with workers:
        placed = workers.check_placement()
        assert sorted(placed.values()) == sorted(z.name for z in T.zones)  # one worker per zone, in it
        pods = cluster.pods(NAMESPACE)
        on = {p["metadata"]["labels"]["edge-harness.io/zone"]: p["spec"]["nodeName"] for p in pods}
        assert on[LAX] == NODE[LAX]
        assert workers.master() == ("0.0.0.0", 5557, len(T.zones))
    assert wait_until(lambda: not cluster.pods(NAMESPACE), 10)
    assert not cluster.exists("v1", "Namespace", None, NAMESPACE) or wait_until(
        lambda: not cluster.exists("v1", "Namespace", None, NAMESPACE), 10
    )


def test_a_worker_prefers_the_node_of_its_zones_frontend(api: FakeApiServer, tmp_path: Path) -> None:
    """A worker's records carry its node's clock, and on EKS only the nodes whose sidecars logged probes or
    request pairs are measured (harness.contract.clock): PHX's worker on the one of its two nodes with no
    HashiCups pod made the zone unverified. It prefers its zone's frontend's node (preferred podAffinity, as
    kube-scheduler's InterPodAffinity scores it); without that it went to the emptier node."""
    phx_nodes = sorted(n["metadata"]["name"] for n in EKS_NODES if n["metadata"]["labels"][ZONE_KEY] == PHX)
    frontend_on = phx_nodes[1]
    cluster: KubeCluster = api.cluster(tmp_path, "admin")
    frontend = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "frontend-phx-2a-0", "namespace": "hashicups-phx-2a",
                             "labels": {"app": "frontend", "edge-harness.io/zone": PHX}},
                "spec": {"nodeName": frontend_on,
                         "containers": [{"name": "frontend", "image": "frontend:v1"}]}}  # fmt: skip
    api.seed(cluster, *EKS_NODES, frontend)
    workers = InZoneWorkers(cluster, T, master_host="10.0.9.9", ready_timeout_s=20, poll_s=0.1)
    with workers:
        workers.check_placement()
        on = {p["metadata"]["labels"]["edge-harness.io/zone"]: p["spec"]["nodeName"] for p in cluster.pods(NAMESPACE)}
        assert on[PHX] == frontend_on


def test_a_worker_outside_its_zone_is_refused(api: FakeApiServer, tmp_path: Path) -> None:
    cluster: KubeCluster = api.cluster(tmp_path, "admin")
    api.seed(cluster, *EKS_NODES)
    workers = InZoneWorkers(cluster, T, master_host="10.0.9.9", ready_timeout_s=20, poll_s=0.1)
    # a worker whose nodeAffinity was edited to another zone (e.g. by a mutating webhook)
    dep = next(o for o in workers.objects if o["metadata"]["name"] == "locust-worker-lax-1a")
    expr = dep["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    expr["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] = ["us-west-2a"]
    try:
        with pytest.raises(BackendError, match=r"locust-worker-lax-1a.* runs in us-west-2a"):
            workers.start()
    finally:
        workers.stop()


# -- locust's distributed mode for real: master here, workers as the pods run them ------------


class _ShopServer(ThreadingHTTPServer):
    """A zone's entry point that counts the answers it wrote, each `delay` seconds after its request."""

    daemon_threads = True
    request_queue_size = 512  # nginx's listen backlog, not socketserver's 5

    def __init__(self, delay: float) -> None:
        super().__init__(("127.0.0.1", 0), _Shop)
        self.delay = delay
        self.answered = 0
        self.lock = threading.Lock()


class _Shop(BaseHTTPRequestHandler):
    """HashiCups' answers to the locustfile's requests."""

    protocol_version = "HTTP/1.1"
    server: _ShopServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, body: bytes, ctype: str) -> None:
        time.sleep(self.server.delay)
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        with self.server.lock:
            self.server.answered += 1  # only answers that went out count

    def do_GET(self) -> None:
        self._send(b"<html>HashiCups</html>", "text/html")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._send(b'{"data": {"coffees": [{"id": "1", "name": "Latte", "price": 2}]}}', "application/json")

    def log_message(self, *_a: Any) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _mount(objs: list[dict[str, Any]], root: Path) -> Path:
    """Lay the ConfigMap's items out as the kubelet mounts them at MOUNT."""
    cm = next(o for o in objs if o["kind"] == "ConfigMap")
    dep = next(iter(_deployments(objs).values()))
    for item in dep["spec"]["template"]["spec"]["volumes"][0]["configMap"]["items"]:
        p = root / item["path"]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(cm["data"][item["key"]])
    return root


@pytest.mark.slow  # a real locust master and workers for ~5 s
# every request answered within locust's timeouts: at nice 19 beside a cluster (the other lane) one was not
@pytest.mark.timing
@pytest.mark.parametrize("ending", ["run-time", "stopped"])
def test_distributed_mode_forwards_every_workers_records_to_the_master(tmp_path: Path, ending: str) -> None:
    """Every answer the zones' shops wrote is one record in the master's requests.jsonl, however the run ends.

    The answers take 0.8 s: the requests in flight when the run ends are
    answered after locust's master has quit (it waits 0.5 s for its workers'
    last reports). `run-time`: locust's own -t ends the run; `stopped`: the
    harness stops it early (SIGTERM), as `harness e2e` does after its cooldown.
    """
    zones = [LAX, "us-west-2a"]
    servers = {z: _ShopServer(delay=0.8) for z in zones}
    for s in servers.values():
        threading.Thread(target=s.serve_forever, daemon=True).start()
    local_url = {z: f"http://127.0.0.1:{s.server_address[1]}" for z, s in servers.items()}
    port = _free_port()
    objs = worker_objects(T, "127.0.0.1", port)
    mount = _mount(objs, tmp_path / "mnt")
    deps = _deployments(objs)
    run = tmp_path / "run"
    # the master knows the zones by their in-cluster URLs (what the records name); it sends no request itself
    entry = {z: cluster_entrypoints(T)[z] for z in zones}
    procs: list[subprocess.Popen[bytes]] = []
    runner = TrafficRunner(entry, run, users=4, spawn_rate=4, duration_s=3, master=("127.0.0.1", port, len(zones)))
    try:
        runner.start()
        for z in zones:
            c = deps[f"locust-worker-{T.short(z)}"]["spec"]["template"]["spec"]["containers"][0]
            env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
            env["EH_ENTRYPOINTS"] = json.dumps({z: local_url[z]})  # cluster DNS does not exist here
            env["EH_NODE"] = f"node-{z}"  # what the kubelet sets from spec.nodeName (downward API)
            args = [a.replace(MOUNT, str(mount)) for a in c["args"]]
            penv = {k: v for k, v in os.environ.items() if not k.startswith("EH_")} | env
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "locust", *args],
                    cwd=tmp_path,
                    env=penv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=(tmp_path / f"worker-{z}.log").open("wb"),
                    start_new_session=True,
                )
            )
        if ending == "stopped":
            assert wait_until(lambda: all(s.answered > 10 for s in servers.values()), timeout=300)
        else:
            runner.wait(timeout=60)
        result = runner.stop()
        for p in procs:  # the master told them to quit
            p.wait(timeout=30)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(timeout=10)
        for s in servers.values():
            s.shutdown()
    recs = [json.loads(line) for line in (run / "requests.jsonl").read_text().splitlines()]
    by_zone = {z: [r for r in recs if r["zone"] == z] for z in zones}
    for z in zones:
        log = (tmp_path / f"worker-{z}.log").read_text()[-2000:]
        assert len(by_zone[z]) == servers[z].answered > 10, (z, len(by_zone[z]), servers[z].answered, log)
        assert any(r["endpoint"] == "probe" for r in by_zone[z])  # one zone probe per worker, in its zone
        assert all(r["ok"] for r in by_zone[z]), [r for r in by_zone[z] if not r["ok"]][:5]
        assert {r.get("node") for r in by_zone[z]} == {f"node-{z}"}  # each record names its worker's node
    assert result.requests == len(recs) and set(result.per_zone) == set(zones)
    # the master's own account (recorder.MasterSink): every worker answered its stop with a full count
    assert "last records are missing" not in (run / "locust.log").read_text()


# -- the e2e wiring: refused before anything starts, kind finds its host address ---------------


def test_workers_in_zone_refused_on_local_one_line_exit_2(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "harness", "e2e", "--backend", "local", "--cluster", "ehnowk", "--workers-in-zone"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("--workers-in-zone: kind and existing only"), r.stderr
    assert not (tmp_path / "runs").exists()  # no run directory, nothing started


def test_existing_needs_a_master_host(api: FakeApiServer, tmp_path: Path) -> None:
    from harness.backends.existing import ExistingBackend
    from harness.e2e import E2EOptions, check_workers_in_zone

    kc = api.write_kubeconfig(tmp_path / "kubeconfig", "eks-nightly")
    b = ExistingBackend("eks-nightly", kc, (), workdir=tmp_path / "wd")
    try:
        with pytest.raises(InputError, match=r"^--locust-master-host: required with --workers-in-zone"):
            check_workers_in_zone(E2EOptions(workers_in_zone=True), b)
        check_workers_in_zone(E2EOptions(workers_in_zone=True, locust_master_host="10.0.0.9"), b)
        check_workers_in_zone(E2EOptions(), b)
    finally:
        b.close()
    assert not [w for w in api.writes()]  # nothing changed on the cluster


@pytest.mark.slow  # a real locust master waiting for its worker
def test_kind_workers_reach_the_host_through_kinds_network(api: FakeApiServer, tools: Any, tmp_path: Path) -> None:
    from harness.e2e import E2EOptions, check_workers_in_zone, in_zone_workers
    from tests.kubefake import rendered
    from tests.test_backend_kind import kind_backend

    m = rendered(tmp_path)
    backend = kind_backend(tmp_path / "wd")
    try:
        backend.up(m)
        opts = E2EOptions(workers_in_zone=True)
        check_workers_in_zone(opts, backend)  # kind needs no --locust-master-host
        workers = in_zone_workers(opts, backend, m.topology)
        workers.poll_s = 0.1
        args = _deployments(workers.objects)["locust-worker-lax-1a"]["spec"]["template"]["spec"]["containers"][0][
            "args"
        ]
        assert args[args.index("--master-host") + 1] == "172.18.0.1"  # the IPv4 gateway of kind's network
        with workers:
            assert sorted(workers.check_placement().values()) == sorted(z.name for z in T.zones)
        assert wait_until(lambda: not backend.cluster.pods(NAMESPACE), 10)
    finally:
        backend.close()
