"""Users in their own city, end to end on the local backend (issue 12 item 3).

A cluster of the default topology with Los Angeles users 80 ms from their
Local Zone (`zones[].userLatencyMs`), everything else as shipped: what users
measure through the entry points (the shop page, and locust's shoppers and
zone probes writing requests.jsonl) must carry each zone's own latency. Without
the user namespaces every zone would answer in a few milliseconds.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from harness.backends.local import LocalBackend
from harness.contract.requestid import REQUEST_ID_PREFIX
from harness.render import render, write
from harness.render.manifests import load
from harness.topology import parse_topology
from harness.topology.model import DEFAULT_TOPOLOGY
from harness.traffic.runner import run_traffic
from tests.conftest import leftovers

pytestmark = [pytest.mark.local, pytest.mark.slow]

CLUSTER = "ehcity"
LAX, LAS = "us-west-2-lax-1a", "us-west-2-las-1a"
LAX_USER_MS = 80.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    doc = yaml.safe_load(DEFAULT_TOPOLOGY.read_text())
    link = next(z["serviceLink"] for z in doc["zones"] if z["name"] == LAX)
    for z in doc["zones"]:
        if z["name"] == LAX:
            z["userLatencyMs"] = LAX_USER_MS
        if z["name"] == LAS:  # LAX's service link: the users' latency is then all that tells the two zones apart
            z["serviceLink"] = dict(link)
    out = tmp_path_factory.mktemp("manifests")
    write(render(parse_topology(doc)), out)
    b = LocalBackend(cluster=CLUSTER)
    b.down()
    try:
        b.up(load(out))
        yield b
    finally:
        b.down()
        assert leftovers(CLUSTER) == []


def _shop_rtt_ms(url: str, n: int = 8) -> float:
    """Best of `n` `GET /` round trips on one kept-alive connection to a zone's entry point."""
    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        best = 1e9
        for _ in range(n):
            t0 = time.perf_counter()
            s.sendall(b"GET / HTTP/1.1\r\nHost: shop\r\n\r\n")
            buf = b""
            while b"</html>" not in buf.lower():
                chunk = s.recv(65536)
                assert chunk, "connection closed"
                buf += chunk
            best = min(best, (time.perf_counter() - t0) * 1000)
    return best


def test_each_zone_entry_carries_its_users_latency(cluster: LocalBackend) -> None:
    entry = cluster.entrypoints()
    lax, las = _shop_rtt_ms(entry[LAX]), _shop_rtt_ms(entry[LAS])
    # at least the users' round trip (a relay adds latency, never removes it); under twice it, the mark that tells a
    # round trip's latency paid once from one paid each way (160 ms): not a margin over this machine's speed, which
    # +40 ms was (a best of 8 on a loaded CI machine can come close to that without any defect)
    assert LAX_USER_MS - 1 <= lax < 2 * LAX_USER_MS - 1, lax
    assert las < LAX_USER_MS / 2, las  # 4 ms users (the shipped value), not LAX's 80
    status = cluster.raw_status()
    users = status.get("user_netns", {})
    assert sorted(users.values()) == sorted(f"{CLUSTER}-u{i}" for i in range(len(entry))), users


def _mesh_ms(cluster: LocalBackend) -> dict[int, float]:
    """Per user request id: the longest access-log duration any sidecar logged for it (ms).

    The entry sidecar's outbound line (frontend's nginx to public-api) encloses every other line of the
    request, so this is the time the request spent inside the mesh: public-api, product-api, postgres and
    the zone's service link. What a user measured beyond it was spent outside: the entry relay, the zone's
    access link and nginx.
    """
    out: dict[int, float] = {}
    for src in cluster.log_sources():
        for line in src.read():
            rec = json.loads(line)
            rid = rec.get("request_id") or ""
            if rid.startswith(REQUEST_ID_PREFIX) and isinstance(rec.get("duration"), int | float):
                n = int(rid[len(REQUEST_ID_PREFIX) :], 16)
                out[n] = max(out.get(n, 0.0), float(rec["duration"]))
    return out


def test_locust_users_and_zone_probes_pay_it(cluster: LocalBackend, tmp_path: Path) -> None:
    """Locust's shoppers and zone probes into LAX pay its users' 80 ms; into LAS (the same service link) they do not.

    Judged by the time each request spent outside the mesh (what locust measured less the entry sidecar's own
    duration for the request's id), not by whole latencies: every /api request pays its zone's service link
    once per round trip of product-api's 1 + N queries to postgres, and with the zone probes' unbudgeted rate
    on 2 cores the whole latencies read 0.4-0.8 s, where the fastest LAS probe (424 ms) and the fastest LAX
    probe (462 ms) sat closer than the users' 80 ms in one clean-clone CI run. The time outside the mesh is
    the access link plus two relays and nginx: the machine's load adds to it no more than to any other
    hand-over, so LAX's requests all carry the 80 ms in it and LAS's fastest carry a few ms.
    """
    run_traffic(cluster.entrypoints(), tmp_path, users=4, spawn_rate=4, duration_s=4, probe_zones=[LAX, LAS])
    mesh = _mesh_ms(cluster)
    outside: dict[str, list[float]] = {}
    every: dict[str, list[float]] = {}
    probes: dict[str, int] = {}
    for line in (tmp_path / "requests.jsonl").read_text().splitlines():
        r = json.loads(line)
        if not r["ok"]:
            continue
        every.setdefault(r["zone"], []).append(r["latency_ms"])
        probes[r["zone"]] = probes.get(r["zone"], 0) + (r["endpoint"] == "probe")
        if r.get("request_id") in mesh:
            outside.setdefault(r["zone"], []).append(r["latency_ms"] - mesh[r["request_id"]])
    assert probes.get(LAX, 0) > 10 and probes.get(LAS, 0) > 10, probes
    assert min(every[LAX]) >= LAX_USER_MS - 1
    # every request through /api has an entry line (the shop page alone has none)
    assert len(outside.get(LAX, [])) > 10 and len(outside.get(LAS, [])) > 10, {z: len(v) for z, v in outside.items()}
    # the relays hold the 80 ms whole; 1 ms for the two timers' rounding (the sidecar logs whole ms, rounded down)
    assert min(outside[LAX]) >= LAX_USER_MS - 1, sorted(outside[LAX])[:5]
    assert min(outside[LAS]) < LAX_USER_MS / 2, sorted(outside[LAS])[:5]


def test_fallback_penalty_from_a_real_run(cluster: LocalBackend, tmp_path: Path) -> None:
    """public-api killed in LAX while its users shop: the verdict finds the window it was served from the
    Region (readiness), counts the requests in it and the Region-served hops, and an in-zone baseline
    that carries LAX's 80 ms users."""
    from harness.e2e import record_traffic
    from harness.verify import verify

    run = tmp_path / "run"

    def kill() -> None:
        time.sleep(4.0)
        cluster.kill_pod(LAX, "public-api")

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        record_traffic(cluster, run, users=4, duration_s=10, probe_zones=[LAX], preflight="record")
    finally:
        killer.join()
    p = {x.zone: x for x in verify(run).fallback_penalty}[LAX]
    assert p.fallback_windows >= 1 and p.fallback.requests > 0 and p.region_hops > 0, p
    assert p.in_zone.requests > 0 and p.in_zone.p50_ms is not None and p.in_zone.p50_ms >= LAX_USER_MS - 1, p
    assert p.penalty_p50_ms is not None
