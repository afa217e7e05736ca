"""The nodes' clocks against the runner's on the existing (EKS) backend, on the simulated cluster.

EC2 nodes and the CI runner the harness runs on keep their own clocks. `tests.kubesim` stamps each sidecar's
START_TIME with its node's clock (`node_clock_offset`), as a real Envoy does. What a run records is taken
through the real code path: `harness.e2e.recording` (access logs followed through the log API and flushed,
the inventory watched), `before_traffic` / `after_traffic` (where the clock probes go), observe's hops.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
import httpx
import pytest

from harness.backends.base import Observation
from harness.backends.kind import KindBackend
from harness.contract.clock import CLOCK_TOLERANCE_S, read_clock
from harness.contract.rundir import CLOCK_FILE, HOPS_PARQUET_FILE
from harness.e2e import after_traffic, before_traffic, recording
from harness.observe import build_hops
from harness.run import copy_manifests
from harness.verify import COVERAGE
from tests.kubefake import FakeApiServer, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_existing import EKS_NODES, _backend, _cluster
from tests.test_flows import tools as tools  # the fake kubectl on PATH (upstream-counter snapshots)
from tests.verdicts import rows, verify

pytestmark = [pytest.mark.slow]

LAX = "us-west-2-lax-1a"
BEHIND = -0.3  # every node's clock 300 ms behind the runner's


def _record(api: FakeApiServer, tmp_path: Path, offsets: dict[str, float],
            between: Callable[[], None] | None = None) -> tuple[Path, float, float]:  # fmt: skip
    """Up on the simulated EKS cluster with the nodes' clocks at `offsets`; record a short run of user requests
    (each zone's entry point, timed by this process) between the start and end clock probes; build its hops.
    Returns the run directory and the first send / last answer of the requests this process made (runner clock)."""
    _cluster(api, tmp_path)
    api.sim.call(lambda: api.sim.node_clock_offset.update(offsets))
    from harness.render import naming
    from harness.topology.model import load_topology

    t = load_topology()
    urls = {}
    for z in t.zones:
        port = api.sim.call(lambda z=z: api.sim.expose(naming.namespace(t, z), f"entry-{t.short(z)}"))
        urls[z.name] = f"http://127.0.0.1:{port}"
    b = _backend(api, tmp_path, entrypoints=[f"{z}={u}" for z, u in urls.items()])
    b.up(rendered(tmp_path))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    copy_manifests(b.manifests().root, run_dir)
    try:
        with recording(b, run_dir):
            before_traffic(b, run_dir, print)
            with httpx.Client(timeout=5) as client:
                for _ in range(3):
                    for url in urls.values():
                        client.post(f"{url}/api", json={"query": "{ coffees { id name } }"})
            if between is not None:
                between()
            after_traffic(b, run_dir, print)
    finally:
        b.down()
    build_hops(run_dir, jsonl=False)
    # the first request of the run is the first start probe, the last the last end probe: this process's times
    sent = [r for r in rows(run_dir / CLOCK_FILE) if r["event"] == "sent"]
    # a probe left unanswered (PROBE_TIMEOUT_S) has no `received`: it bounds nothing, and must not crash the max
    return run_dir, min(r["sent"] for r in sent), max(r["received"] for r in sent if r["received"] is not None)


def _hop_span(run_dir: Path) -> tuple[float, float, int]:
    con = duckdb.connect()
    try:
        row = con.execute(
            f"SELECT min(ts), max(ts), count(*) FROM read_parquet('{run_dir / HOPS_PARQUET_FILE}')"
        ).fetchone()
    finally:
        con.close()
    assert row is not None and row[2] > 0
    return float(row[0]), float(row[1]), int(row[2])


@pytest.mark.parametrize("offset", [BEHIND, 0.0], ids=["nodes-300ms-behind", "control-one-clock"])
def test_hops_are_on_the_runners_clock(api: FakeApiServer, tools: Path, tmp_path: Path, offset: float) -> None:
    """HOLE (nodes behind). The hops carried their nodes' START_TIME as they were: with the nodes 300 ms behind,
    every hop of the run was recorded 300 ms before the first request this process sent, and a fault the
    runner injected between two requests would have had the next one's hops on its wrong side. Now the clock
    probes measure each zone's offset (clock.jsonl) and observe puts the hops on the runner's clock: every
    hop lies between the first send and the last answer, to within the measured bound. Control: one clock,
    nothing moves, and every zone is measured at 0."""
    nodes = [n["metadata"]["name"] for n in EKS_NODES]
    run_dir, first, last = _record(api, tmp_path, dict.fromkeys(nodes, offset))
    clock = read_clock(run_dir)
    assert clock is not None and clock.separate and clock.probes_answered == clock.probes_sent > 0
    zones = clock.zones or {}
    assert LAX in zones and len(zones) >= 5, zones
    for zc in zones.values():
        assert zc.bounded and zc.offset is not None and zc.uncertainty is not None, zc.text()
        assert abs(zc.offset - offset) <= zc.uncertainty + 0.001, zc.text()
    u = max(zc.uncertainty for zc in zones.values() if zc.uncertainty is not None)
    lo, hi, n = _hop_span(run_dir)
    assert lo >= first - u - 0.001 and hi <= last + u + 0.001, (lo - first, hi - last, n, u)


def test_a_clock_that_steps_during_the_run_is_unverified(api: FakeApiServer, tools: Path, tmp_path: Path) -> None:
    """LAX's node steps its clock 500 ms back between the start and end probes (chrony stepping a node that
    had drifted; the runner's NTP correcting itself looks the same). Each batch alone is tight, but the run's
    LAX hops lie anywhere in a 500 ms spread against the faults: far beyond the tolerance, so the verdict
    fails LAX's clock as unverified (coverage), and names it; the other zones are measured and pass."""
    lax_node = next(n["metadata"]["name"] for n in EKS_NODES if n["metadata"]["labels"].get(
        "topology.kubernetes.io/zone") == LAX)  # fmt: skip

    def step() -> None:
        api.sim.call(lambda: api.sim.node_clock_offset.update({lax_node: BEHIND - 0.5}))

    nodes = {n["metadata"]["name"]: BEHIND for n in EKS_NODES}
    run_dir, _first, _last = _record(api, tmp_path, nodes, between=step)
    lax = read_clock(run_dir).zone(LAX)  # type: ignore[union-attr]
    assert not lax.bounded and lax.uncertainty is not None and lax.uncertainty > CLOCK_TOLERANCE_S, lax.text()
    assert lax.drift is not None and abs(lax.drift + 0.5) < 0.05, lax.text()
    v = verify(run_dir)
    cov = next(i for i in v.invariants if i.name == COVERAGE)
    clocks = {c.subject: c.status for c in cov.checks if c.subject.startswith("clock ")}
    assert clocks[f"clock {LAX}"] == "unverified" and not cov.passed, clocks
    # every other zone is measured and passes, PHX's two nodes included (the public-api's sidecar on the second
    # logs the probes' /api on its inbound listener, and pairs with the frontend's by X-Request-Id)
    assert all(s == "pass" for z, s in clocks.items() if z != f"clock {LAX}"), clocks
    lax_check = next(c for c in cov.checks if c.subject == f"clock {LAX}")
    assert lax_check.message.startswith(f"coverage: clock: {LAX}: ") and "unverified" in lax_check.message
    assert f"clock: {LAX}" in cov.message, cov.message


def test_only_the_existing_backend_measures() -> None:
    """kind's nodes are containers of this machine (and the local backend's processes): one kernel clock, no
    probes, no clock.jsonl, nothing changes. EKS's nodes are not."""
    from harness.backends.existing import ExistingBackend

    assert Observation.shares_runner_clock is KindBackend.shares_runner_clock
    assert ExistingBackend.shares_runner_clock(object.__new__(ExistingBackend)) is False


def test_the_rendered_nginx_passes_the_probes_marker_to_the_sidecar() -> None:
    """The probes are found by their query string in the frontend sidecar's access log: nginx passes a request's
    URI on unchanged only when `proxy_pass` names no URI of its own (nginx docs, ngx_http_proxy_module). A
    `proxy_pass http://127.0.0.1:8080/api;` or a rewrite would drop or change it, and every zone's clock
    would go unmeasured (unverified)."""
    from harness.render.hashicups import nginx_conf
    from harness.topology.model import load_topology

    t = load_topology()
    conf = nginx_conf(t, t.service("frontend"))
    api_block = conf.split("location /api {", 1)[1].split("}", 1)[0]
    assert "proxy_pass http://127.0.0.1:8080;" in api_block and "rewrite" not in api_block, api_block
