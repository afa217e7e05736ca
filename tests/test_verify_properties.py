"""Property tests of the verifier over generated topologies and runs.

Hypothesis draws the topology (1-2 AZs, 1-3 Local Zones), traffic rate and a
service-down fault (zone, service, times, failover delay); the synthetic mesh
model writes the records. Properties: clean runs pass; one planted LZ->LZ hop
anywhere fails hub-and-spoke; a slight reordering of records does not change
the verdict; the measured failover equals the constructed one within the
traffic's inter-arrival time.

Example counts come from the loaded Hypothesis profile (tests/conftest.py):
`ci` (bounded, derandomized) in `make test`, Hypothesis's own defaults in `make test-properties`
(`--hypothesis-profile=thorough`). Examples of the random profiles are random: a failure
prints the example and Hypothesis's database replays it next time.
"""

from __future__ import annotations

import functools
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.topology import Topology, parse_topology
from harness.verify import HUB_AND_SPOKE
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.verdicts import verify  # every verdict is validated against the schema

LZ_NAMES = ["us-west-2-lax-1a", "us-west-2-las-1a", "us-west-2-phx-2a"]
AZ_NAMES = ["us-west-2a", "us-west-2b"]
# one example writes and verifies a whole synthetic run (~0.3 s): no deadline; the count is the profile's
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
pytestmark = [pytest.mark.property, pytest.mark.slow]


def topology(n_az: int, n_lz: int) -> Topology:
    zones: list[dict[str, Any]] = [{"name": z, "type": "availability-zone"} for z in AZ_NAMES[:n_az]]
    zones += [{"name": z, "type": "local-zone", "serviceLink": {"latencyMs": 10}} for z in LZ_NAMES[:n_lz]]
    services = [
        {"name": "frontend", "placement": "edge", "upstreams": ["public-api"]},
        {"name": "public-api", "placement": "edge", "upstreams": ["product-api"]},
        {"name": "product-api", "placement": "edge", "upstreams": ["postgres"]},
        {"name": "postgres", "placement": "region", "protocol": "tcp"},
    ]
    return parse_topology({"zones": zones, "services": services, "slo": {"errorBudget": 0.05}})


@st.composite
def scenarios(draw: st.DrawFn, min_lz: int = 1, accesslogs: str | None = None) -> Scenario:
    n_az = draw(st.integers(1, 2))
    n_lz = draw(st.integers(min_lz, 3))
    t = topology(n_az, n_lz)
    rate = draw(st.sampled_from([4.0, 5.0, 8.0]))
    faults = []
    if draw(st.booleans()) or min_lz > 1:
        zone = draw(st.sampled_from(LZ_NAMES[:n_lz]))
        svc = draw(st.sampled_from(["public-api", "product-api"]))
        inject = draw(st.floats(12, 20))
        faults.append(
            FaultSpec(
                "f1",
                "service-down",
                zone,
                (svc,),
                inject,
                inject + draw(st.floats(8, 12)),
                failover_delay_s=draw(st.floats(0.0, 0.2)),
                recovery_delay_s=draw(st.floats(0.0, 2.0)),
            )
        )
    return Scenario(
        t,
        duration_s=60,
        rate_per_zone=rate,
        faults=faults,
        seed=draw(st.integers(0, 1000)),
        drop_serving_zone=draw(st.sampled_from([0.0, 0.3])),
        # rebuilt from local-style or kind-style access logs, or read from hops.jsonl
        accesslogs=accesslogs or draw(st.sampled_from(["local", "kind", "none"])),
        readiness=draw(st.booleans()),
    )


def _write(sc: Scenario) -> Path:
    return write_run(Path(tempfile.mkdtemp(prefix="verify-prop-")) / "run", sc)


@SETTINGS
@given(scenarios())
def test_clean_runs_pass(sc: Scenario) -> None:
    d = _write(sc)
    try:
        v = verify(d)
        assert v.passed, v.failure_messages
    finally:
        shutil.rmtree(d.parent)


@SETTINGS
@given(scenarios(min_lz=2, accesslogs="none"), st.floats(0, 1), st.integers(0, 1))
def test_one_lz_to_lz_hop_fails_hub_and_spoke(sc: Scenario, where: float, direct: int) -> None:
    d = _write(sc)
    try:
        lines = (d / "hops.jsonl").read_text().splitlines()
        lz = [z.name for z in sc.topology.edge_zones]
        candidates = [i for i, x in enumerate(lines) if f'"caller_zone": "{lz[0]}"' in x]
        i = candidates[int(where * (len(candidates) - 1))]
        h = json.loads(lines[i])
        h.update(upstream_host="10.213.250.7:9090", status=503, flags="UF")
        if direct:  # observe attributed it
            h.update(serving_zone=lz[1], serving_pod="product-api-x")
        else:  # only the inventory knows the IP
            h.update(serving_zone=None, serving_pod=None)
            with (d / "inventory.jsonl").open("a") as fh:
                fh.write(
                    json.dumps(
                        {
                            "ts": sc.start - 5,
                            "event": "added",
                            "pod": "product-api-x",
                            "ip": "10.213.250.7",
                            "node": "n",
                            "zone": lz[1],
                            "service": "product-api",
                        }
                    )
                    + "\n"
                )
        lines.insert(i + 1, json.dumps(h))
        (d / "hops.jsonl").write_text("\n".join(lines) + "\n")
        v = verify(d)
        hub = v.invariant(HUB_AND_SPOKE)
        assert not hub.passed and not v.passed
        assert hub.message.startswith(f"hub-and-spoke: {lz[0]} -> {lz[1]}: 1 hops")
    finally:
        shutil.rmtree(d.parent)


def _comparable(v: Any) -> dict[str, Any]:
    d = v.to_dict()
    d["run"].pop("run_dir")
    return d


@SETTINGS
@given(scenarios(), st.integers(0, 10_000))
def test_slight_reordering_keeps_verdict(sc: Scenario, seed: int) -> None:
    d = _write(sc)
    try:
        before = _comparable(verify(d))
        rng = random.Random(seed)
        files = [d / n for n in ("hops.jsonl", "requests.jsonl", "chaos.jsonl", "inventory.jsonl",
                                 "entrypoints.jsonl", "upstream-stats.jsonl")]  # fmt: skip
        for path in [*files, *sorted((d / "accesslogs").glob("*.jsonl"))]:
            lines = path.read_text().splitlines()
            # swap neighbours within a window of 20 lines: records written by several processes
            for i in range(0, len(lines) - 1):
                j = min(len(lines) - 1, i + rng.randrange(20))
                if rng.random() < 0.3:
                    lines[i], lines[j] = lines[j], lines[i]
            path.write_text("\n".join(lines) + "\n")
        assert _comparable(verify(d)) == before
    finally:
        shutil.rmtree(d.parent)


@SETTINGS
@given(scenarios(), st.floats(0.0, 4.0))
def test_measured_failover_matches_constructed(sc: Scenario, delay: float) -> None:
    zone = sc.topology.edge_zones[-1].name
    sc.faults = [
        FaultSpec("f", "service-down", zone, ("product-api",), 20.0, 40.0, failover_delay_s=delay, recovery_delay_s=1.0)
    ]
    d = _write(sc)
    try:
        f = verify(d).fault("f")
        step = 1.0 / sc.rate_per_zone  # the first Region-served hop comes with the next request
        assert f.failover_s is not None and delay <= f.failover_s <= delay + step + 0.01
        assert f.recovery_s is not None and 1.0 <= f.recovery_s <= 1.0 + step + 0.01
        assert f.lost_hops == f.lost_requests  # one lost hop per lost LZ request
    finally:
        shutil.rmtree(d.parent)


@SETTINGS
@given(st.integers(1, 3), st.floats(10, 40))
def test_window_without_traffic_is_not_a_pass(n_lz: int, gap_start: float) -> None:
    """Remove all traffic during the fault: the verdict must fail with "no traffic", never pass."""
    t = topology(1, n_lz)
    zone = t.edge_zones[0].name
    sc = Scenario(
        t,
        duration_s=60,
        rate_per_zone=4,
        faults=[FaultSpec("f", "service-down", zone, ("product-api",), gap_start, gap_start + 5, 0.1, 0.5)],
        accesslogs="none",
    )
    d = _write(sc)
    try:
        lo, hi = sc.start + gap_start - 1, sc.start + gap_start + 6
        for name in ("hops.jsonl", "requests.jsonl"):
            keep = [x for x in (d / name).read_text().splitlines() if not lo <= json.loads(x)["ts"] <= hi]
            (d / name).write_text("\n".join(keep) + "\n")
        v = verify(d)
        assert not v.passed
        assert "no traffic during fault f" in " ".join(v.fault("f").messages)
    finally:
        shutil.rmtree(d.parent)


@functools.cache
def _restore_measured(accesslogs: str, recorded: float | None) -> tuple[float | None, bool]:
    """The failover and the verdict of one run whose restore is recorded at `recorded` (None: with the fault's
    end). A pure function of its arguments (the synthetic run is seeded), so the reference run without a recorded
    restore, the same for every example with the same access logs, is written and verified once per kind of
    access logs instead of once per example (it was half of the test's time)."""
    t = topology(1, 2)
    zone = t.edge_zones[0].name
    f = FaultSpec("f", "service-down", zone, ("product-api",), 20.0, 30.0, 0.1, 0.0, recorded_restore=recorded)
    d = _write(Scenario(t, duration_s=45, rate_per_zone=5, faults=[f], replace_pods=False, accesslogs=accesslogs))
    try:
        v = verify(d)
        return v.fault("f").failover_s, v.passed
    finally:
        shutil.rmtree(d.parent)


@SETTINGS
@given(st.floats(0.0, 0.6), st.sampled_from(["local", "kind", "none"]))
def test_when_the_restore_is_recorded_does_not_change_the_failover(lag: float, accesslogs: str) -> None:
    """Same config, same verdict: readiness, not the order of two writers, ends the failover window."""
    assert _restore_measured(accesslogs, None) == _restore_measured(accesslogs, 30.0 + lag)
