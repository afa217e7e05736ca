"""Broken meshes a fourteenth audit found the verdict passing (false PASS): missing evidence read as good.

Each broken case is a synthetic run (harness.verify.synth) with the broken behaviour planted the way Envoy and the
harness's collectors would record it; each asserts the verdict FAILS (each docstring's "HOLE." says how it passed
before). Next to each, a control: the same run with the mesh behaving passes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.topology import Topology
from harness.verify import FALLBACK, pending_recoveries
from tests.test_verify_audit import why
from tests.test_verify_audit4_faults import CASCADE_END, EU, REGION_PRODUCT_API, T, postgres_cascade
from tests.verdicts import envoy_start, rows, verify, write_rows

LAX = "us-west-2-lax-1a"


def _rebuilt(d: Path) -> Path:
    """The run with its hops to be rebuilt from the access logs (as after an edit of them)."""
    for name in ("hops.jsonl", "hops.parquet", "hops-build.json"):
        (d / name).unlink(missing_ok=True)
    return d


def _added(d: Path, zone: str, service: str) -> dict[str, object]:
    inv = rows(d / "inventory.jsonl")
    return next(e for e in inv if e["event"] == "added" and e["zone"] == zone and e["service"] == service)


def _to_region_every(d: Path, t: Topology, zone: str, since: float, until: float, every: int) -> Path:
    """From `since` to `until` (seconds into the run), every `every`-th call of `zone`'s public-api to product-api
    goes to the Region's product-api (in the first AZ), which then makes that call's postgres query itself: the
    zone's sidecars keep part of their calls on the Region (a stale endpoint view, an ejection never undone)."""
    t0 = min(r["ts"] for r in rows(d / "requests.jsonl")) - 0.01
    region = _added(d, t.region_zones[0].name, "product-api")
    region_log = d / "accesslogs" / f"{region['pod']}.jsonl"
    region_rows = rows(region_log)
    moved_at: set[int] = set()
    for p in sorted((d / "accesslogs").glob(f"public-api-{t.short(zone)}-*.jsonl")):
        recs = rows(p)
        k = 0
        for r in recs:
            if t0 + since <= envoy_start(r) < t0 + until and "product-api" in r["upstream_cluster"]:
                k += 1
                if k % every == 0:
                    r.update(upstream_host=f"{region['ip']}:9090", upstream_cluster=REGION_PRODUCT_API)
                    moved_at.add(round(envoy_start(r) * 1000) + 1)  # its product-api's own call: 1 ms later
        write_rows(p, recs)
    moved = []
    for p in sorted((d / "accesslogs").glob(f"product-api-{t.short(zone)}-*.jsonl")):
        recs = rows(p)
        mine = [r for r in recs if round(envoy_start(r) * 1000) in moved_at]
        moved += [{**r, "caller_pod": region["pod"], "caller_service": region_rows[0]["caller_service"]} for r in mine]
        write_rows(p, [r for r in recs if round(envoy_start(r) * 1000) not in moved_at])
    write_rows(region_log, sorted(region_rows + moved, key=envoy_start))
    return _rebuilt(d)


# -- a. a declared single point of failure's cascade: a zone half in the Region after it ----------------------------
PG_CASES = [pytest.param(T, LAX, id="edge-lax"), pytest.param(EU, "eu-central-1-waw-1a", id="eu-2nd-lz")]
AFTER = CASCADE_END + 0.5  # the zone back in-zone half a second after the cascade (postgres_cascade's region_until)


@pytest.mark.parametrize("every", [2, 5])
@pytest.mark.parametrize(("t", "zone"), PG_CASES)
def test_a_zone_that_keeps_part_of_its_calls_on_the_region_after_a_cascade_fails(
    tmp_path: Path, t: Topology, zone: str, every: int
) -> None:
    """experiments/postgres-primary-kill.json: the database back at 35 s, every zone's product-api Ready at 36 s;
    `zone`'s public-api returns in-zone at 36.5 s, but for 1 call in `every` only until the run ends 44 s later
    (its Envoy keeps the Region's product-api for part of its calls; the last Region one a second before the end,
    so that a few in-zone hops follow it, as they do by chance). HOLE: the cascade's recovery
    (`_declared_recovery`) was the first in-zone hop after the last Region one, with no evidence rule: one
    in-zone hop after the last Region one "recovered" the zone a moment before the run ended, locality left the
    cascade out up to that instant (and judged the few hops after it), and the verdict passed. A fault's own
    recovery asks the hops after the instant to rule out a mesh still sending that share elsewhere
    ((1 - p)^n < 1e-3): the cascade's recovery now asks the same, in the same place (`FaultMeasurer._unshown`);
    with the run ended before maxRecoveryS after the cascade, unverified."""
    d = _to_region_every(postgres_cascade(tmp_path, t, zone, AFTER, duration=80.0), t, zone, AFTER, 79.0, every)
    v = verify(d)
    said = " ".join(why(v))
    assert not v.passed and not v.invariant(FALLBACK).passed, why(v)
    assert f"{zone} -> product-api: back in-zone after the cascade of fault kill-pod-postgres" in said, said
    assert "not shown" in said and "unverified" in said, said
    # e2e's cool-down waits for it as the verdict asks it: still pending at the end of these records
    left = pending_recoveries(d, t, min(r["ts"] for r in rows(d / "requests.jsonl")) + 80.0)
    assert (zone, "product-api") in [(p.zone, p.upstream) for p in left], left


@pytest.mark.parametrize(("t", "zone"), PG_CASES)
def test_a_zone_that_keeps_part_of_its_calls_on_the_region_after_a_cascade_control(
    tmp_path: Path, t: Topology, zone: str
) -> None:
    """The control: the same run, the zone wholly back in-zone at 36.5 s, passes (and is not waited for)."""
    d = postgres_cascade(tmp_path, t, zone, AFTER, duration=80.0)
    v = verify(d)
    assert v.passed, why(v)
    assert pending_recoveries(d, t, min(r["ts"] for r in rows(d / "requests.jsonl")) + 80.0) == []
