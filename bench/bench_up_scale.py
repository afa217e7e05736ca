"""Benchmark: local `up` against topology size -- seconds per pod at 3, 6 and 12 edge zones, 1-3 replicas.

Goal (issue 12): <= 0.25 s per pod at every size, and the 12-zone topology up
in <= 30 s on 2 cores. The topologies are generated here (two AZs plus N
Local Zones, HashiCups with `replicas` per zone). Besides the total, each
run prints where the time went, from the cluster's own records: network
(before the first pod exists), pod creation (first to last `added`: namespace,
veth, nftables, process spawn, Envoy bootstrap), and readiness (last `added`
to the last `ready`: Envoy and app start, xDS, probes).

Needs root and the local lock:

    flock -o /run/edge-harness-tests.lock .venv/bin/python bench/bench_up_scale.py [--sizes 3x1 6x2 12x1] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_up import relay_overhead

from harness.backends.local import LocalBackend, requirements
from harness.render import render, write
from harness.render.manifests import load
from harness.topology import load_topology

GOAL_S_PER_POD = 0.25
GOAL_12_ZONES_S = 30.0
CITIES = ["lax", "las", "phx", "den", "sea", "slc", "bos", "mia", "chi", "dfw", "atl", "nyc", "hou", "msp", "pdx"]


def topology_yaml(edge_zones: int, replicas: int) -> str:
    zones = ["  - {name: us-west-2a, type: availability-zone, nodes: 1}",
             "  - {name: us-west-2b, type: availability-zone, nodes: 1}"]  # fmt: skip
    zones += [f"  - {{name: us-west-2-{c}-1a, type: local-zone, serviceLink: {{latencyMs: {10 + i}}}}}"
              for i, c in enumerate(CITIES[:edge_zones])]  # fmt: skip
    return "\n".join([
        "apiVersion: edge-harness/v1", f"name: scale{edge_zones}x{replicas}", "region: us-west-2", "edition: ce",
        "zones:", *zones, "services:",
        f"  - {{name: frontend, placement: edge, replicas: {replicas}, upstreams: [public-api]}}",
        f"  - {{name: public-api, placement: edge, replicas: {replicas}, upstreams: [product-api]}}",
        f"  - {{name: product-api, placement: edge, replicas: {replicas}, upstreams: [postgres]}}",
        "  - {name: postgres, placement: region, replicas: 1, protocol: tcp}",
        "",
    ])  # fmt: skip


def phases(b: LocalBackend, t0: float) -> dict[str, float]:
    """Where the time went, from the inventory's `added` / `ready` times."""
    events = [json.loads(x) for x in b.inventory_path.read_text().splitlines() if x.strip()]
    added = sorted(e["ts"] for e in events if e["event"] == "added")
    ready = sorted(e["ts"] for e in events if e["event"] == "ready")
    if not added or not ready:
        return {}
    return {"network": added[0] - t0, "create": added[-1] - added[0], "ready": ready[-1] - added[-1]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--sizes", nargs="+", default=["3x1", "6x2", "12x1"], help="EDGEZONESxREPLICAS")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--relay", action="store_true", help="also measure the service-link relay on the 3-zone cluster")
    args = ap.parse_args()
    ok, why = requirements()
    if not ok:
        print(f"bench_up_scale: skipped ({why})")
        return 0
    good = True
    for size in args.sizes:
        zones, replicas = (int(x) for x in size.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            topo = Path(tmp) / "topology.yaml"
            topo.write_text(topology_yaml(zones, replicas))
            out = Path(tmp) / "m"
            write(render(load_topology(topo)), out)
            m = load(out)
            pods = sum(int(o["spec"].get("replicas", 1)) for o in m.objects if o.get("kind") == "Deployment")
            ups, downs, prof = [], [], []
            for _ in range(args.runs):
                b = LocalBackend(cluster="ehscale")
                wall0, t0 = time.perf_counter(), time.time()
                try:
                    b.up(m)
                    ups.append(time.perf_counter() - wall0)
                    prof.append(phases(b, t0))
                    if args.relay and zones == 3 and len(ups) == 1:
                        relay_overhead(b)  # service-link relay vs direct (bench_up.py), goal >= 0.8x
                finally:
                    t1 = time.perf_counter()
                    b.down()
                    downs.append(time.perf_counter() - t1)
        up = statistics.median(ups)
        per_pod = up / pods
        ok_pod = per_pod <= GOAL_S_PER_POD
        ok_12 = zones != 12 or up <= GOAL_12_ZONES_S
        good &= ok_pod and ok_12
        p = prof[len(prof) // 2]
        print(
            f"{zones:2d} edge zones x {replicas} replicas: {pods:3d} pods up in {up:6.2f}s = {per_pod:5.3f} s/pod "
            f"(goal {GOAL_S_PER_POD} s/pod: {per_pod / GOAL_S_PER_POD:4.2f}x{'' if ok_pod else ' MISSED'})"
            + (f", goal 12 zones <= {GOAL_12_ZONES_S:.0f}s: {up / GOAL_12_ZONES_S:4.2f}x" if zones == 12 else "")
            + f"; down {statistics.median(downs):5.2f}s",
            flush=True,
        )
        if p:
            print(f"    network {p['network']:5.2f}s | pods created {p['create']:5.2f}s "
                  f"({p['create'] / pods:5.3f} s/pod) | last added -> all ready {p['ready']:5.2f}s",
                  flush=True)  # fmt: skip
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
