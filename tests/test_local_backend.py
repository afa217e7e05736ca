"""The local backend end to end: real namespaces, real Envoy sidecars, real postgres.

One cluster of the default topology is brought up for the module (bring-up is
the expensive part); tests that break things restore them before they end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.backends.local import LocalBackend
from harness.errors import InputError
from harness.render import render, write
from harness.render.manifests import load
from harness.topology import load_topology
from tests.conftest import leftovers, wait_until

pytestmark = [pytest.mark.local, pytest.mark.slow]

CLUSTER = "ehtest"
LAX, LAS, PHX = "us-west-2-lax-1a", "us-west-2-las-1a", "us-west-2-phx-2a"
COFFEES = {"query": "{ coffees { id name price } }"}


@pytest.fixture(scope="module")
def manifests_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("manifests")
    write(render(load_topology()), out)
    return out


@pytest.fixture(scope="module")
def cluster(manifests_dir: Path) -> Iterator[LocalBackend]:
    """Brought up as e2e brings its cluster up: the daemon prestarted (`down` must still know and stop it)."""
    b = LocalBackend(cluster=CLUSTER)
    b.down()
    b.prestart()
    try:
        b.up(load(manifests_dir))
        yield b
    finally:
        b.down()
        assert leftovers(CLUSTER) == []


def _pod(b: LocalBackend, zone: str, service: str) -> str:
    return next(p.pod for p in b.inventory().pods(alive_only=True) if p.zone == zone and p.service == service)


def _ns_of(b: LocalBackend, pod: str) -> str:
    return str(b.raw_status()["netns"][pod])


def test_each_zone_serves_coffees_from_postgres(cluster: LocalBackend) -> None:
    entry = cluster.entrypoints()
    assert set(entry) == {"us-west-2a", "us-west-2b", LAX, LAS, PHX, "us-west-2-wl1-sfo-wlz-1"}
    for zone, url in entry.items():
        shop = httpx.get(url + "/", timeout=5)
        assert shop.status_code == 200 and "HashiCups" in shop.text, zone
        r = httpx.post(url + "/api", json=COFFEES, timeout=5)
        assert r.status_code == 200, (zone, r.text)
        coffees = r.json()["data"]["coffees"]
        assert len(coffees) >= 5 and all(c["name"] for c in coffees), zone


def _psql_in(ns: str, port: int, sql: str) -> subprocess.CompletedProcess[str]:
    """psql from inside a pod's namespace (the embedded binaries the stand-in runs), as product-api connects."""
    from harness.backends.local.apps.postgres import bin_dir

    argv = ["ip", "netns", "exec", ns, str(bin_dir() / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U",
            "postgres", "-d", "products", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql]  # fmt: skip
    env = {"PGPASSWORD": "password", "PGCONNECT_TIMEOUT": "3", "PATH": "/usr/bin:/bin"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False, env=env)


def test_the_pods_files_are_in_memory_while_the_cluster_is_up(cluster: LocalBackend) -> None:
    """A pod's files die with it (a container's writable layer): a tmpfs, which `down` unmounts (`leftovers`)."""
    pods = cluster.state_dir / "pods"
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(pods)], capture_output=True, text=True, check=True).stdout
    assert os.path.ismount(pods) and fs.strip() == "tmpfs"
    assert any(p.name.startswith("postgres-") for p in pods.iterdir())


def test_the_primarys_first_start_moves_a_copy_made_before_the_pods_started(cluster: LocalBackend) -> None:
    """Postgres heads the start-up chain: its seeded cluster is copied while the network is set up and moved into
    place by the start (apps.postgres `make_ready`), not copied while every pod starts. "initdb" only on a
    machine that kept no seeded cluster yet; "template" would be a kept cluster copied at the start after all."""
    log = next((cluster.state_dir / "pods").glob("postgres-2a-*/postgres.log")).read_text()
    [how] = [line.rsplit("how=", 1)[1].strip() for line in log.splitlines() if "initialised database" in line]
    assert how in ("ready", "initdb"), log


def test_region_replica_streams_the_primary_through_the_mesh(cluster: LocalBackend) -> None:
    """A write on the primary (us-west-2a) is read on the replica (us-west-2b), streamed via the sidecars."""
    primary = _pod(cluster, "us-west-2a", "postgres")
    replica = _pod(cluster, "us-west-2b", "postgres-replica")
    # the primary's own pod writes; the replica's WAL receiver is connected from the primary's sidecar (127.0.0.1)
    wrote = _psql_in(_ns_of(cluster, primary), 5432, "CREATE TABLE IF NOT EXISTS eh_repl (v text); "
                     "INSERT INTO eh_repl VALUES ('via-mesh')")  # fmt: skip
    assert wrote.returncode == 0, wrote.stderr
    senders = _psql_in(_ns_of(cluster, primary), 5432, "SELECT state, client_addr FROM pg_stat_replication")
    assert senders.stdout.strip() == "streaming|127.0.0.1", senders  # through the primary's sidecar
    deadline = time.time() + 20
    seen = ""
    while time.time() < deadline and seen != "via-mesh":
        seen = _psql_in(_ns_of(cluster, replica), 5433, "SELECT v FROM eh_repl").stdout.strip()
        time.sleep(0.2)
    assert seen == "via-mesh"
    assert _psql_in(_ns_of(cluster, replica), 5433, "SELECT pg_is_in_recovery()").stdout.strip() == "t"


def _connect_ms(ns: str, ip: str, port: int) -> float | None:
    """Connect time from inside a pod's namespace (None when the connection fails)."""
    code = (
        "import socket,time,sys\n"
        f"t=time.perf_counter()\n"
        f"s=socket.create_connection(('{ip}',{port}),timeout=2)\n"
        "print((time.perf_counter()-t)*1000)\n"
    )
    r = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True, timeout=10
    )
    return float(r.stdout) if r.returncode == 0 else None


def _http_rtt_ms(ns: str, ip: str, port: int) -> float | None:
    # GET of an unrouted path: public-api answers Go's 404 at once (its /health calls product-api and payments)
    code = (
        "import socket,time\n"
        f"s=socket.create_connection(('{ip}',{port}),timeout=3)\n"
        "best=1e9\n"
        "for _ in range(10):\n"
        "  t=time.perf_counter(); s.sendall(b'GET /rtt HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'); s.recv(65536)\n"
        "  best=min(best,(time.perf_counter()-t)*1000)\n"
        "print(best)\n"
    )
    r = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True, timeout=15
    )
    return float(r.stdout) if r.returncode == 0 else None


def test_hub_and_spoke_and_service_link_latency(cluster: LocalBackend) -> None:
    inv = {p.pod: p for p in cluster.inventory().pods(alive_only=True)}
    lax_pub = _pod(cluster, LAX, "public-api")
    las_prod = inv[_pod(cluster, LAS, "product-api")]
    region_a = inv[_pod(cluster, "us-west-2a", "public-api")]
    region_b = inv[_pod(cluster, "us-west-2b", "public-api")]
    lax_ns = _ns_of(cluster, lax_pub)
    # LZ -> another LZ: fails (dropped at the hub)
    assert _connect_ms(lax_ns, las_prod.ip, 9090) is None
    # LZ -> Region works, and a round trip pays the service link (12 ms in the default topology);
    # the same request Region -> Region is the baseline (same kind of server, no service link)
    rtt_lz = _http_rtt_ms(lax_ns, region_a.ip, 8080)
    rtt_region = _http_rtt_ms(_ns_of(cluster, region_b.pod), region_a.ip, 8080)
    assert rtt_lz is not None and rtt_region is not None
    assert rtt_lz >= 12.0, rtt_lz
    assert rtt_lz - rtt_region >= 6.0, (rtt_lz, rtt_region)  # 12 ms configured; min-of-10 samples each


def _hops_to(b: LocalBackend, caller_pod: str, since: float) -> list[dict[str, object]]:
    path = b.state_dir / "accesslogs" / f"{caller_pod}.jsonl"
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("direction") != "outbound":
            continue
        ts = _ts(str(rec["start_time"]))
        if ts >= since:
            rec["ts"] = ts
            out.append(rec)
    return out


def _ts(start_time: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(start_time.replace("Z", "+00:00")).timestamp()


def test_product_api_killed_in_lz_fails_over_within_a_second_and_comes_back(cluster: LocalBackend) -> None:
    url = cluster.entrypoints()[LAX]
    stop = threading.Event()
    statuses: list[tuple[float, int]] = []

    def drive() -> None:
        with httpx.Client(timeout=5) as c:
            while not stop.is_set():
                try:
                    statuses.append((time.time(), c.post(url + "/api", json=COFFEES).status_code))
                except httpx.HTTPError:
                    statuses.append((time.time(), 0))
                time.sleep(0.02)

    t = threading.Thread(target=drive)
    t.start()
    try:
        time.sleep(1.5)
        inv = {p.ip: p for p in cluster.inventory().pods()}
        caller = _pod(cluster, LAX, "public-api")
        t_kill = time.time()
        killed = cluster.kill_pod(LAX, "product-api")
        assert killed
        # the Deployment re-creates the pod after the restart delay; wait for it to be Ready
        deadline = time.time() + 30
        while time.time() < deadline:
            phases = cluster.status().pods
            fresh = [
                p for p in cluster.inventory().pods(alive_only=True) if p.zone == LAX and p.service == "product-api"
            ]
            if fresh and fresh[0].pod not in killed and phases.get(fresh[0].pod) == "Ready":
                break
            time.sleep(0.1)
        else:
            pytest.fail("product-api was not re-created in lax-1a")
        t_back = time.time()
        time.sleep(2.0)
    finally:
        stop.set()
        t.join()
    inv = {p.ip: p for p in cluster.inventory().pods()}
    hops = _hops_to(cluster, caller, t_kill - 1)

    def zone_of(h: dict[str, object]) -> str | None:
        host = str(h.get("upstream_host") or "")
        p = inv.get(host.rsplit(":", 1)[0])
        return p.zone if p else None

    region = [
        h
        for h in hops
        if h["ts"] > t_kill and zone_of(h) in ("us-west-2a", "us-west-2b") and int(h["response_code"] or 0) == 200
    ]
    assert region, "no hop went to the Region after the kill"
    assert float(region[0]["ts"]) - t_kill < 1.0, float(region[0]["ts"]) - t_kill
    assert not any(zone_of(h) in (LAS, PHX) for h in hops), "a hop crossed to another Local Zone"
    late = [h for h in hops if float(h["ts"]) > t_back + 1.0]
    assert late and all(zone_of(h) == LAX for h in late), "traffic did not come back in-zone"
    assert sum(1 for _, s in statuses if s != 200) <= 5, "too many user-visible errors"


def test_unsupported_manifest_field_is_refused_before_anything_starts(manifests_dir: Path, tmp_path: Path) -> None:
    import shutil

    import yaml

    edited = tmp_path / "m"
    shutil.copytree(manifests_dir, edited)
    f = edited / "k8s" / "10-hashicups-lax-1a.yaml"
    docs = list(yaml.safe_load_all(f.read_text()))
    for d in docs:
        if d and d.get("kind") == "Deployment":
            d["spec"]["template"]["spec"]["hostNetwork"] = True
            break
    f.write_text(yaml.safe_dump_all(docs))
    b = LocalBackend(cluster="ehbad")
    with pytest.raises(InputError) as exc:
        b.up(load(edited))
    assert "spec.template.spec.hostNetwork" in str(exc.value) and "frontend-lax-1a" in str(exc.value)
    assert leftovers("ehbad") == []
    assert not (b.state_dir / "daemon.json").exists()


def _zone_phases(b: LocalBackend, zone: str) -> dict[str, str]:
    phases = b.status().pods
    return {p.service: phases.get(p.pod, "") for p in b.inventory().pods(alive_only=True) if p.zone == zone}


def test_unready_takes_pods_out_of_service_and_back(cluster: LocalBackend) -> None:
    pods = cluster.set_pod_unready(PHX, "public-api")
    assert pods and _zone_phases(cluster, PHX)["public-api"] == "Unready"
    # the zone's shop still answers: frontend's sidecar fails over to the Region's public-api
    r = httpx.post(cluster.entrypoints()[PHX] + "/api", json=COFFEES, timeout=5)
    assert r.status_code == 200
    assert cluster.set_pod_ready(PHX, "public-api") == pods
    assert wait_until(lambda: _zone_phases(cluster, PHX)["public-api"] == "Ready", 10)


def test_node_kill_and_zone_outage_take_pods_down_until_restored(cluster: LocalBackend) -> None:
    nodes = cluster.nodes()
    lax_node = next(n for n, z in nodes.items() if z == LAX)
    before = {p.pod for p in cluster.inventory().pods(alive_only=True) if p.zone == LAX}
    cluster.kill_node(lax_node)
    # nothing told the API: the dead node's pods stay registered and Ready (until node-monitor-grace-period,
    # 40 s here), as after kind's `docker stop`, while their addresses are dark and users get no answer
    time.sleep(3)  # longer than the restart delay: no replacement while the old pods are still registered
    assert {p.pod for p in cluster.inventory().ready_pods() if p.zone == LAX} == before
    assert _zone_phases(cluster, LAX) == dict.fromkeys(("frontend", "public-api", "product-api"), "Ready")
    with pytest.raises(httpx.HTTPError):
        httpx.get(cluster.entrypoints()[LAX] + "/", timeout=3).raise_for_status()
    cluster.restore_node(lax_node)
    assert wait_until(
        lambda: _zone_phases(cluster, LAX) == dict.fromkeys(("frontend", "public-api", "product-api"), "Ready"), 30
    )
    after = {p.pod for p in cluster.inventory().pods(alive_only=True) if p.zone == LAX}
    assert before.isdisjoint(after)  # new pods, new names (and new IPs)
    # the dead pods keep their history in the inventory
    assert all(cluster.inventory().get(p) is not None and cluster.inventory().get(p).ended for p in before)  # type: ignore[union-attr]

    las_before = {p.pod for p in cluster.inventory().pods(alive_only=True) if p.zone == LAS}
    cluster.zone_outage(LAS)
    assert {p.pod for p in cluster.inventory().ready_pods() if p.zone == LAS} == las_before
    with pytest.raises(httpx.HTTPError):
        httpx.get(cluster.entrypoints()[LAS] + "/", timeout=3).raise_for_status()
    cluster.restore_zone(LAS)
    assert wait_until(lambda: list(_zone_phases(cluster, LAS).values()) == ["Ready"] * 3, 30)


def test_link_latency_and_partition_primitives(cluster: LocalBackend) -> None:
    inv = {p.pod: p for p in cluster.inventory().pods(alive_only=True)}
    phx_pub = _pod(cluster, PHX, "public-api")
    region = inv[_pod(cluster, "us-west-2a", "public-api")]
    ns = _ns_of(cluster, phx_pub)
    base = _http_rtt_ms(ns, region.ip, 8080)
    cluster.set_link(PHX, 80.0)
    slow = _http_rtt_ms(ns, region.ip, 8080)
    cluster.clear_link(PHX)
    again = _http_rtt_ms(ns, region.ip, 8080)
    assert base is not None and slow is not None and again is not None
    # 18 ms in the default topology, then 80 ms: a round trip grows by ~62 ms (min of 10 samples)
    assert slow >= 80.0 and slow - base >= 45.0 and again < slow - 40.0, (base, slow, again)
    cluster.partition_zone(PHX)
    try:
        assert _http_rtt_ms(ns, region.ip, 8080) is None
    finally:
        cluster.heal_zone(PHX)
    assert _http_rtt_ms(ns, region.ip, 8080) is not None


def test_unknown_targets_are_clear_errors(cluster: LocalBackend) -> None:
    from harness.errors import BackendError

    with pytest.raises(BackendError, match="no live nosuch pod"):
        cluster.kill_pod(LAX, "nosuch")
    with pytest.raises(BackendError, match="no node"):
        cluster.kill_node("nowhere-n1")


def test_enterprise_edition_runs_with_namespaces_and_fails_over(tmp_path: Path) -> None:
    """The Enterprise rendering (a namespace per zone, failover to the Region namespace) on the same backend."""
    from harness.topology import Edition

    write(render(load_topology(), Edition.ENTERPRISE), tmp_path / "m")
    b = LocalBackend(cluster="ehent")
    try:
        b.up(load(tmp_path / "m"))
        for zone, url in b.entrypoints().items():
            assert httpx.post(url + "/api", json=COFFEES, timeout=5).status_code == 200, zone
        region_ips = {p.ip for p in b.inventory().pods(alive_only=True) if p.zone in ("us-west-2a", "us-west-2b")}
        caller = _pod(b, LAX, "public-api")
        t_kill = time.time()
        b.kill_pod(LAX, "product-api")
        url = b.entrypoints()[LAX]
        codes = [httpx.post(url + "/api", json=COFFEES, timeout=5).status_code for _ in range(20)]
        assert codes.count(200) >= 19, codes
        # access logs are flushed every 200 ms; on a loaded machine give them a little longer
        assert wait_until(
            lambda: any(str(h["upstream_host"]).rsplit(":", 1)[0] in region_ips for h in _hops_to(b, caller, t_kill)),
            10,
        ), "no failover to the Region"
    finally:
        b.down()
    assert leftovers("ehent") == []


def test_second_up_is_refused_and_bad_cluster_names_are_rejected(cluster: LocalBackend, manifests_dir: Path) -> None:
    from harness.errors import BackendError

    with pytest.raises(BackendError, match="already up"):
        LocalBackend(cluster=CLUSTER).up(load(manifests_dir))
    assert cluster.status().up  # the running cluster was not touched
    for bad in ("has-dash", "waytoolongname", ""):
        with pytest.raises(BackendError, match="at most 8 letters/digits"):
            LocalBackend(cluster=bad)
