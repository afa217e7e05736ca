"""Fallback latency penalty (harness/verify/penalty.py) on synthetic runs whose truth is known.

The synthetic mesh (harness/verify/synth.py) writes inventory, timeline, hops
and requests; the tests then give the requests of one zone latencies that
depend only on *when* they started (known from the scenario, not from the
code under test), so the expected percentiles are computed here by hand.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import jsonschema
from rich.console import Console

from harness.topology import load_topology
from harness.verify import SCHEMA_PATH, Verdict, load_verdict, print_summary, verify, write_verdict
from harness.verify.penalty import penalty_text
from harness.verify.synth import FaultSpec, Scenario, write_run

T = load_topology()
LAX, LAS, PHX = (z.name for z in T.edge_zones[:3])
START = Scenario(T).start


def _q(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (DuckDB's quantile_cont, numpy's default)."""
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _relatency(run: Path, zone: str, latency) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    """Rewrite `zone`'s successful requests with `latency(rel_ts, k)`; return the (in-zone, fallback) values
    the test expects by its own reading of the scenario (`latency` returns (value, bucket))."""
    path = run / "requests.jsonl"
    out, buckets = [], {"in": [], "fb": [], "none": []}  # type: ignore[var-annotated]
    for k, line in enumerate(path.read_text().splitlines()):
        r = json.loads(line)
        if r["zone"] == zone and r["ok"]:
            value, bucket = latency(r["ts"] - START, k)
            r["latency_ms"] = value
            buckets[bucket].append(value)
        out.append(json.dumps(r))
    path.write_text("\n".join(out) + "\n")
    return buckets["in"], buckets["fb"]


def test_penalty_per_zone_from_readiness_windows(tmp_path: Path) -> None:
    """public-api down in LAX 30..60 s: requests there count as Region-served, the rest as in-zone.

    Without the feature there is no `fallback_penalty`; with windows taken from the
    timeline instead of readiness, or failed requests counted, the numbers differ.
    """
    sc = Scenario(
        T,
        duration_s=90,
        rate_per_zone=4,
        faults=[FaultSpec("f1", "service-down", LAX, ("public-api",), inject=30.0, restore=60.0)],
    )
    run = write_run(tmp_path / "run", sc)

    def lat(rel: float, k: int) -> tuple[float, str]:
        if 30.0 <= rel < 60.0:
            return 40.0 + k % 17, "fb"
        return 10.0 + k % 13, "in"

    want_in, want_fb = _relatency(run, LAX, lat)
    v = verify(run)
    by_zone = {p.zone: p for p in v.fallback_penalty}
    assert set(by_zone) == {z.name for z in T.edge_zones}  # AZs have no Region to fall back to
    p = by_zone[LAX]
    assert p.fallback_windows == 1 and abs(p.fallback_s - 30.0) < 0.01
    assert p.in_zone.requests == len(want_in) and p.fallback.requests == len(want_fb) > 0
    assert abs(p.in_zone.p50_ms - _q(want_in, 0.5)) < 1e-6  # type: ignore[operator]
    assert abs(p.fallback.p95_ms - _q(want_fb, 0.95)) < 1e-6  # type: ignore[operator]
    assert abs(p.penalty_p50_ms - (_q(want_fb, 0.5) - _q(want_in, 0.5))) < 1e-6  # type: ignore[operator]
    assert abs(p.penalty_p95_ms - (_q(want_fb, 0.95) - _q(want_in, 0.95))) < 1e-6  # type: ignore[operator]
    assert p.region_hops > 0  # the window really was served from the Region (hops say so)
    # a zone never served from the Region: its in-zone numbers, no penalty
    q = by_zone[PHX]
    assert q.fallback.requests == 0 and q.fallback_windows == 0 and q.penalty_p50_ms is None
    assert q.in_zone.requests > 0 and q.region_hops == 0
    assert "never served from the Region" in penalty_text(q)
    assert "penalty p50 +" in penalty_text(p)
    # verdict.json carries it (schema-valid) and reads back; the terminal prints it
    out = write_verdict(run, v)
    doc = json.loads(out.read_text())
    jsonschema.validate(doc, json.loads(SCHEMA_PATH.read_text()))
    assert load_verdict(out).fallback_penalty == v.fallback_penalty
    console = Console(record=True, width=200)
    print_summary(v, console)
    text = console.export_text()
    assert "Fallback latency penalty" in text and penalty_text(p) in text


def test_penalty_baseline_excludes_other_faults_and_failed_requests(tmp_path: Path) -> None:
    """A degraded service link on LAS is neither in-zone baseline nor fallback; failed requests never count."""
    sc = Scenario(
        T,
        duration_s=90,
        rate_per_zone=4,
        faults=[FaultSpec("f1", "link-degraded", LAS, inject=20.0, restore=50.0)],
    )
    run = write_run(tmp_path / "run", sc)

    def lat(rel: float, k: int) -> tuple[float, str]:
        if 20.0 <= rel < 50.0:
            return 500.0, "none"  # slow link: must not inflate the in-zone baseline
        return 5.0 + k % 7, "in"

    want_in, _ = _relatency(run, LAS, lat)
    # plus a failed request with a huge latency in LAS, outside the fault: must be ignored
    with (run / "requests.jsonl").open("a") as fh:
        fh.write(json.dumps({"ts": START + 70.0, "zone": LAS, "endpoint": "coffees", "name": "POST /api coffees",
                             "status": 0, "latency_ms": 10000.0, "ok": False, "error": "reset"}) + "\n")  # fmt: skip
    p = {p.zone: p for p in verify(run).fallback_penalty}[LAS]
    assert p.in_zone.requests == len(want_in)
    assert p.in_zone.p95_ms == _q(want_in, 0.95) < 500
    assert p.fallback.requests == 0 and p.penalty_p95_ms is None


def test_penalty_baseline_leaves_out_a_zone_that_spills_to_the_region(tmp_path: Path) -> None:
    """One of LAX's two product-api pods unready 30..60 s: Envoy sends ~30 % of the zone's calls to the Region
    (`RunData.spill`). That is neither the in-zone baseline nor a fallback window; counted as in-zone (as it
    was), its Region-served requests inflated the baseline the penalty is measured against."""
    from tests.test_verify_soundness import _with_replicas

    sc = Scenario(_with_replicas("product-api", 2), duration_s=90, rate_per_zone=4,
                  degraded=[(LAX, "product-api", 30.0, 60.0)])  # fmt: skip
    run = write_run(tmp_path / "run", sc)

    def lat(rel: float, k: int) -> tuple[float, str]:
        if 30.0 <= rel < 60.0:
            return 500.0, "none"  # partly served from the Region
        return 5.0 + k % 7, "in"

    want_in, _ = _relatency(run, LAX, lat)
    p = {p.zone: p for p in verify(run).fallback_penalty}[LAX]
    assert p.in_zone.requests == len(want_in) and p.in_zone.p95_ms == _q(want_in, 0.95) < 500
    assert p.fallback.requests == 0 and p.fallback_windows == 0


def test_old_verdict_without_penalty_still_loads(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", Scenario(T, duration_s=20, rate_per_zone=2))
    doc = verify(run).to_dict()
    doc.pop("fallback_penalty")
    jsonschema.validate(doc, json.loads(SCHEMA_PATH.read_text()))
    assert Verdict.from_dict(doc).fallback_penalty == []


def test_quantile_helper_matches_statistics() -> None:
    data = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    assert _q(data, 0.5) == statistics.median(data)


def test_report_has_a_penalty_table_per_edge_zone(tmp_path: Path) -> None:
    from harness.report import write_report

    sc = Scenario(
        T,
        duration_s=60,
        rate_per_zone=4,
        faults=[FaultSpec("f1", "service-down", LAX, ("product-api",), inject=20.0, restore=40.0)],
    )
    run = write_run(tmp_path / "run", sc)
    _relatency(run, LAX, lambda rel, k: (30.0 if 20.0 <= rel < 40.0 else 10.0, "in"))
    v = verify(run)
    html = write_report(run, v).read_text()
    for z in (LAX, LAS, PHX):
        assert f"id='penalty-{z}'" in html
    for z in (zz.name for zz in T.region_zones):
        assert f"id='penalty-{z}'" not in html  # the Region has no Region to fall back to
    lax = html[html.index(f"id='penalty-{LAX}'") :]
    lax = lax[: lax.index("</table>")]
    assert "+20.0&nbsp;ms" in lax  # 30 ms from the Region vs 10 ms in-zone, p50 and p95
    phx = html[html.index(f"id='penalty-{PHX}'") :]
    assert "never served from the Region" in phx[: phx.index("</table>")]
