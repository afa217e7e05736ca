"""Start-up order and failure answers of the real images, on the local backend.

- product-api (v0.0.22) opens its port only once postgres answers: with the
  manifests this project used to render (liveness from t=0, no startupProbe)
  a slow postgres gets product-api killed and re-created during bring-up (the
  CrashLoopBackOff a real cluster shows); with the rendered startupProbe it is
  left alone, because the local backend holds liveness and readiness back
  until the startup probe succeeds, as kubelet does.
- public-api answers an upstream failure with HTTP 200 and GraphQL errors, so
  when a zone's product-api dies the zone's frontend keeps calling its own
  public-api pods (2 replicas): no 5xx, no outlier ejection, no detour to the
  Region (issue 7 item 8, "cascading ejection").

A small topology (one AZ, one Local Zone) keeps bring-up cheap.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness.backends.local import LocalBackend
from harness.contract.inventory import PodInfo
from harness.render import render, write
from harness.render.manifests import load
from harness.topology import load_topology
from tests.conftest import leftovers

pytestmark = [pytest.mark.local, pytest.mark.slow]

LAX = "us-west-2-lax-1a"
PG_DELAY_S = 12  # postgres' first start takes this long: longer than liveness' 2 x 5 s budget from t=0


def small_topology(path: Path, replicas: int) -> Path:
    doc = {
        "apiVersion": "edge-harness/v1",
        "name": "small",
        "region": "us-west-2",
        "zones": [
            {"name": "us-west-2a", "type": "availability-zone", "nodes": 1},
            {"name": LAX, "type": "local-zone", "nodes": 1, "serviceLink": {"latencyMs": 4}},
        ],
        "services": [
            {"name": "frontend", "placement": "edge", "replicas": replicas, "upstreams": ["public-api"]},
            {"name": "public-api", "placement": "edge", "replicas": replicas, "upstreams": ["product-api"]},
            {"name": "product-api", "placement": "edge", "replicas": replicas, "upstreams": ["postgres"]},
            {"name": "postgres", "placement": "region", "replicas": 1, "protocol": "tcp"},
        ],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def edit_containers(root: Path, app: str, fn: Callable[[dict[str, Any]], None]) -> None:
    """Apply `fn` to the main container of every Deployment of `app` in the rendered k8s files."""
    for f in sorted((root / "k8s").glob("*.yaml")):
        docs = list(yaml.safe_load_all(f.read_text()))
        for d in docs:
            if d and d["kind"] == "Deployment" and d["spec"]["template"]["metadata"]["labels"]["app"] == app:
                fn(d["spec"]["template"]["spec"]["containers"][0])
        f.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def slow_postgres(c: dict[str, Any]) -> None:
    c.setdefault("env", []).append({"name": "EH_START_DELAY_S", "value": str(PG_DELAY_S)})


def old_product_api_probes(c: dict[str, Any]) -> None:
    """What this project rendered before: liveness on /health/livez from t=0, no startupProbe."""
    c.pop("startupProbe")


def rendered(tmp: Path, replicas: int) -> Path:
    out = tmp / "manifests"
    write(render(load_topology(small_topology(tmp / "topology.yaml", replicas))), out)
    edit_containers(out, "postgres", slow_postgres)
    return out


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Callable[[Path, str], LocalBackend]]:
    started: list[LocalBackend] = []

    def bring_up(manifests: Path, name: str) -> LocalBackend:
        b = LocalBackend(cluster=name)
        b.down()
        started.append(b)
        b.up(load(manifests))
        return b

    yield bring_up
    for b in started:
        b.down()
        assert leftovers(b.cluster) == []


def product_api_pods(b: LocalBackend) -> list[PodInfo]:
    return [p for p in b.inventory().pods() if p.service == "product-api"]


def test_old_manifests_restart_product_api_while_postgres_starts(tmp_path: Path, up: Any) -> None:
    """Before the fix: no startupProbe, so liveness kills product-api while it waits for postgres."""
    mdir = rendered(tmp_path, replicas=1)
    edit_containers(mdir, "product-api", old_product_api_probes)
    b = up(mdir, "ehst1")
    died = [p for p in product_api_pods(b) if p.ended is not None]
    assert died, "product-api was never restarted although postgres took longer than its liveness budget"
    log = (b.state_dir / "daemon.log").read_text()
    assert "liveness probe failed" in log


def _hops(b: LocalBackend, ip_zone: dict[str, str], caller: str, since: float) -> list[tuple[float, str, int]]:
    """(start, serving zone, status) of every outbound hop of `caller` (a Consul name) since `since`."""
    out = []
    for f in (b.state_dir / "accesslogs").glob("*.jsonl"):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("direction") != "outbound" or rec.get("caller_service") != caller:
                continue
            ts = dt.datetime.fromisoformat(str(rec["start_time"]).replace("Z", "+00:00")).timestamp()
            if ts < since - 1:
                continue
            host = (rec.get("upstream_host") or "").rsplit(":", 1)[0]
            out.append((ts, ip_zone.get(host, "?"), int(rec.get("response_code") or 0)))
    return out


def test_startup_probe_and_no_cascading_ejection(tmp_path: Path, up: Any) -> None:
    """Rendered manifests, 2 replicas per zone, slow postgres: no restart; product-api dies: frontend stays."""
    b = up(rendered(tmp_path, replicas=2), "ehst2")
    deadline = time.time() + 60  # `up` stops waiting after 30 s; a loaded machine may need longer
    while not all(phase == "Ready" for phase in b.status().pods.values()):
        assert time.time() < deadline, b.status().pods
        time.sleep(0.5)
    assert all(p.ended is None for p in product_api_pods(b)), "startupProbe did not hold liveness back"

    url = b.entrypoints()[LAX] + "/api"
    results: list[tuple[float, int, bool]] = []
    stop = threading.Event()

    def shop() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                t = time.time()
                try:
                    r = client.post(url, json={"query": "{ coffees { id name } }"})
                    results.append((t, r.status_code, not r.json().get("errors")))
                except httpx.HTTPError:
                    results.append((t, 0, False))
                time.sleep(0.03)

    workers = [threading.Thread(target=shop, daemon=True) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        time.sleep(2)
        t_kill = time.time()
        killed = b.kill_pod(LAX, "product-api")
        assert len(killed) == 2
        deadline = time.time() + 30
        while time.time() < deadline:  # replacements up (they find postgres at once now)
            alive = [p for p in product_api_pods(b) if p.zone == LAX and p.ended is None and p.pod not in killed]
            if len(alive) == 2 and all(b.status().pods.get(p.pod) == "Ready" for p in alive):
                break
            time.sleep(0.2)
        else:
            pytest.fail("product-api replacements never became Ready")
        time.sleep(3)
    finally:
        stop.set()
        for w in workers:
            w.join(15)
    time.sleep(0.5)  # Envoy flushes access logs every 200 ms here
    ip_zone = {p.ip: p.zone for p in b.inventory().pods()}
    front = _hops(b, ip_zone, "frontend-lax-1a", t_kill)
    assert len(front) > 50, len(front)
    assert {zone for _, zone, _ in front} == {LAX}, sorted({z for _, z, _ in front})
    assert all(status == 200 for _, _, status in front), sorted({s for _, _, s in front})
    # the failover the test is about did happen: public-api went to the Region's product-api meanwhile
    back = _hops(b, ip_zone, "public-api-lax-1a", t_kill)
    assert "us-west-2a" in {zone for _, zone, _ in back}
    after = [ok for t, status, ok in results if t >= t_kill]
    assert len(after) > 50 and all(status == 200 for t, status, _ in results if t >= t_kill)


def _processes_of(pod: str) -> list[int]:
    """Live processes started for `pod` (the local backend gives each container EH_POD=<pod>)."""
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and f"\0EH_POD={pod}\0".encode() in b"\0" + (p / "environ").read_bytes():
                found.append(int(p.name))
        except OSError:
            continue
    return found


def test_a_pod_whose_start_fails_half_way_leaves_nothing_running(tmp_path: Path, monkeypatch: Any) -> None:
    """A pod start that fails once its app runs (here: the sidecar's bootstrap) ends that app and removes
    the pod's namespace itself. Left behind, they belonged to no pod: they ran on until the cluster's
    teardown, which then had to wait out their SIGTERM (an interrupted `up` stopped 2.3 s after Ctrl-C)."""
    from harness.backends.local.cluster import LocalCluster
    from harness.backends.local.sidecar import Sidecar
    from harness.backends.local.state import cleanup

    manifests = tmp_path / "manifests"
    write(render(load_topology(small_topology(tmp_path / "topology.yaml", 1))), manifests)
    cluster = LocalCluster(load(manifests), tmp_path / "state", "ehhlf")
    failed: list[tuple[str, str]] = []
    bootstrap = Sidecar.write_bootstrap

    def broken(sc: Sidecar) -> None:
        if sc.pod.startswith("public-api") and not failed:
            assert cluster.network is not None
            failed.append((sc.pod, cluster.network.pod(sc.pod).ns))
            raise RuntimeError("bootstrap: no space left on device")
        bootstrap(sc)

    monkeypatch.setattr(Sidecar, "write_bootstrap", broken)
    try:
        with pytest.raises(RuntimeError, match="no space left"):
            cluster.start()
        [(pod, ns)] = failed
        assert _processes_of(pod) == []
        assert not Path(f"/run/netns/{ns}").exists()
    finally:
        cluster.stop()
        cleanup(tmp_path / "state" / "state.json")
    assert leftovers("ehhlf") == []
