"""Wrong verdicts a ninth audit of the verifier found (the verdict must be true; unverified is a failure).

Each broken case is a synthetic run (harness.verify.synth) with the broken behaviour planted the way Envoy and the
harness's collectors would record it, or with records damaged the way a lost file damages them; each asserts the
verdict FAILS (each docstring's "HOLE." says how it passed before). Next to each, a control: the same run
without the plant fails or passes as it should, so each test shows what its plant changes.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.columnar import compact_all
from harness.verify import AVAILABILITY, EXPERIMENT_RAN, FALLBACK, HUB_AND_SPOKE, LOCALITY
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_soundness import LAS, LAX, T0, T, failed
from tests.verdicts import added_pod, envoy_start, rebuilt, rows, verify, write_rows

AZ = T.region_zones[0].name
KILL = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 0.2, 1.0)


def _run(tmp_path: Path, duration_s: float = 90, faults: list[FaultSpec] | None = None) -> Path:
    return write_run(tmp_path / "run", Scenario(T, duration_s=duration_s, rate_per_zone=4, faults=faults or []))


def _lax_product_api_from_az(d: Path, since: float = 0.0) -> Path:
    """LAX's public-api sends its product-api calls from `since` (seconds into the run) to the AZ's product-api:
    a mesh without locality for that pair."""
    caller = added_pod(d, LAX, "public-api")["pod"]
    az = added_pod(d, AZ, "product-api")["ip"]
    log = d / "accesslogs" / f"{caller}.jsonl"
    recs = rows(log)
    for r in recs:
        if r.get("direction") == "outbound" and envoy_start(r) >= T0 + since:
            r["upstream_host"] = f"{az}:9090"
    write_rows(log, recs)
    return rebuilt(d)


# -- 1. a hop that names no host and no flag ---------------------------------------------------------------------
def test_a_hop_that_names_no_host_and_no_flag_is_unverified(tmp_path: Path) -> None:
    """HOLE. Locality counted a hop without `upstream_host` as failed, neither in-zone nor elsewhere, so a pair
    of only such hops (status 200) passed with no share at all; hub-and-spoke had no host to judge. Envoy logs
    the host of every request it sent and a flag (UH, NR, ...) on every one it could not: a line with neither
    says nothing of where the call was served."""
    d = _lax_product_api_from_az(_run(tmp_path))
    assert LOCALITY in failed(verify(d))  # control: with the hosts in the log, the broken pair fails
    log = d / "accesslogs" / f"{added_pod(d, LAX, 'public-api')['pod']}.jsonl"
    recs = rows(log)
    for r in recs:
        if r.get("direction") == "outbound":
            r.pop("upstream_host")
    write_rows(log, recs)
    v = verify(rebuilt(d))
    assert {LOCALITY, HUB_AND_SPOKE} <= failed(v), why(v)
    pair = next(p for p in v.invariant(LOCALITY).pairs if (p.caller_zone, p.upstream) == (LAX, "product-api"))
    assert pair.counts["hostless"] == pair.counts["hops"] > 0
    for name in (LOCALITY, HUB_AND_SPOKE):
        assert f"{LAX} -> product-api: {pair.counts['hops']} hops name no upstream host and no Envoy response flag" in (
            v.invariant(name).message
        )


def test_a_hop_envoy_could_not_route_is_a_failed_hop_not_an_unverified_one(tmp_path: Path) -> None:
    """Control: the hops a kill leaves without a host carry Envoy's flag (UH): failed hops the fault's window
    judges, not unverified ones; the run passes."""
    d = _run(tmp_path, faults=[KILL])
    v = verify(d)
    assert v.passed, why(v)
    assert any(r.get("response_flags") == "UH" for f in (d / "accesslogs").glob("*.jsonl") for r in rows(f))
    assert all(p.counts.get("hostless", 0) == 0 for p in v.invariant(LOCALITY).pairs)


# -- 2. the counters of a sidecar the inventory does not place ----------------------------------------------------
def test_counters_of_a_sidecar_no_inventory_record_places_are_unverified(tmp_path: Path) -> None:
    """HOLE. The attempt check joined each counter line's sidecar to its zone through the inventory and dropped
    lines without one (a note): with the LAX frontend's inventory lines torn, its counters' connect failures to
    LAS's public-api (an attempt a retry hid from the access log) were never judged, and the run passed."""
    d = _run(tmp_path)
    fe, las = added_pod(d, LAX, "frontend"), added_pod(d, LAS, "public-api")
    st = rows(d / "upstream-stats.jsonl")
    end = max(r["ts"] for r in st if r["label"] == "end")
    cluster = next(r["cluster"] for r in st if r["pod"] == fe["pod"] and "public-api" in r["cluster"])
    st.append({"ts": end, "label": "end", "pod": fe["pod"], "cluster": cluster, "host": f"{las['ip']}:8080",
               "cx_total": 12, "cx_connect_fail": 12, "rq_total": 0, "rq_error": 0, "rq_timeout": 0,
               "health_flags": "healthy"})  # fmt: skip
    write_rows(d / "upstream-stats.jsonl", st)
    control = verify(d)
    assert "attempted" in control.invariant(HUB_AND_SPOKE).message, why(control)
    lines = (d / "inventory.jsonl").read_text().splitlines()
    torn = [x[: len(x) // 2] if json.loads(x)["pod"] == fe["pod"] else x for x in lines]
    (d / "inventory.jsonl").write_text("\n".join(torn) + "\n")
    v = verify(rebuilt(d))
    assert HUB_AND_SPOKE in failed(v), why(v)
    assert f"{fe['pod']}: upstream counters of a sidecar no inventory record places" in (
        v.invariant(HUB_AND_SPOKE).message
    )


# -- 3. records lost with their compacted segment -----------------------------------------------------------------
def test_a_lost_parquet_segment_leaves_its_hops_and_requests_unverified(tmp_path: Path) -> None:
    """HOLE. A segment columnar/<kind>/state.json lists but that is gone was named as a skipped line of the
    state file, which no invariant counted: the hops it held (LAX's product-api calls served by the AZ in the
    run's last 8 s here) and its user requests were never judged, and the run passed with a note."""
    d = _lax_product_api_from_az(_run(tmp_path), since=82.0)
    cut = T0 + 82.0
    tails: dict[Path, list[dict[str, object]]] = {}
    for f in [*sorted((d / "accesslogs").glob("*.jsonl")), d / "requests.jsonl"]:
        recs = rows(f)
        start = (lambda r: r["ts"]) if f.name == "requests.jsonl" else envoy_start
        tails[f] = [r for r in recs if start(r) >= cut]
        write_rows(f, [r for r in recs if start(r) < cut])
    compact_all(d)  # the collector's pass during the run
    for f, tail in tails.items():
        with f.open("a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in tail))
    compact_all(d)  # and its last one
    assert LOCALITY in failed(verify(d))  # control: every segment there, the broken tail is judged
    for kind in ("accesslogs", "requests"):
        last = sorted((d / "columnar" / kind).glob("*.parquet"))[-1]
        last.rename(tmp_path / f"lost-{kind}-{last.name}")
    v = verify(d)
    assert {LOCALITY, HUB_AND_SPOKE, AVAILABILITY} <= failed(v), why(v)
    lost = "1 line(s) could not be read (line 1) - a listed Parquet segment is missing"
    assert f"columnar/accesslogs/state.json: {lost}: the hops they held are unverified" in (
        v.invariant(LOCALITY).message
    )
    assert f"columnar/requests/state.json: {lost}: the user requests they held are unverified" in (
        v.invariant(AVAILABILITY).message
    )


# -- 4. readiness blips that hide a pair never back in-zone ---------------------------------------------------------
def _blips(d: Path, zone: str, at: tuple[float, ...], length: float = 0.2) -> Path:
    """The zone's product-api pod unready for `length` seconds at each of `at` (seconds into the run): a
    readiness probe flapping under load, outside any fault."""
    inv = rows(d / "inventory.jsonl")
    pod = next(e for e in inv if e["zone"] == zone and e["service"] == "product-api" and e["event"] == "added")
    for s in at:
        inv += [dict(pod, ts=T0 + s, event="unready"), dict(pod, ts=T0 + s + length, event="ready")]
    write_rows(d / "inventory.jsonl", sorted(inv, key=lambda e: float(e["ts"])))
    return rebuilt(d)


def test_blips_that_come_back_before_the_recovery_is_due_do_not_hide_a_pair_never_back(tmp_path: Path) -> None:
    """HOLE. After an outage nobody injected, the pair's return in-zone was measured, and when it never came
    the locality exclusion only ran on maxRecoveryS (60 s here). A blip every 50 s re-opened it before it ran
    out: from the first one on, every LAX product-api call went to the AZ, locality never judged the pair
    again, and the run passed with three notes."""
    d = _lax_product_api_from_az(_run(tmp_path, duration_s=150), since=20.0)
    assert LOCALITY in failed(verify(d))  # control: without the blips locality judges (and fails) them
    v = verify(_blips(d, LAX, (20.0, 70.0, 120.0)))
    assert FALLBACK in failed(v), why(v)
    assert f"fallback: {LAX} -> product-api: not back in-zone within maxRecoveryS (60s)" in (
        v.invariant(FALLBACK).message
    )


def test_blips_a_correct_mesh_comes_back_from_pass(tmp_path: Path) -> None:
    """Control: the same blips on a mesh that serves the zone's calls in-zone again at once pass (notes)."""
    v = verify(_blips(_run(tmp_path, duration_s=150), LAX, (20.0, 70.0, 120.0)))
    assert v.passed, why(v)
    assert sum("outside any recorded fault" in n for n in v.run.notes) == 3


# -- 5. a journal the plan does not list ----------------------------------------------------------------------------
def test_a_journal_the_plan_does_not_list_fails_experiment_ran(tmp_path: Path) -> None:
    """HOLE. Only planned experiments were judged; another journal in chaos/ was a note, so an experiment that
    chaostoolkit aborted, with its action failed and its steady state deviated, passed once its plan entry was
    gone. Every harness flow writes the plan before it runs an experiment."""
    k2 = FaultSpec("kill-product-api-las", "service-down", LAS, ("product-api",), 60, 75, 0.2, 1.0)
    d = _run(tmp_path, duration_s=110, faults=[KILL, k2])
    plan = json.loads((d / "plan.json").read_text())
    assert verify(d).passed  # control: both planned, both ran
    plan["experiments"] = plan["experiments"][:1]
    (d / "plan.json").write_text(json.dumps(plan))
    v = verify(d)
    assert failed(v) == {EXPERIMENT_RAN}, why(v)
    second = json.loads((d / "plan.json").read_text())["experiments"][0]["id"]
    extra = next(p.name for p in (d / "chaos").iterdir() if p.is_dir() and p.name != second)
    assert f"chaos/{extra}/journal.json is the journal of an experiment plan.json does not plan" in (
        v.invariant(EXPERIMENT_RAN).message
    )


# -- 6. the Region without traffic --------------------------------------------------------------------------------
def test_a_region_without_user_traffic_is_unverified(tmp_path: Path) -> None:
    """HOLE. A Region caller pair without traffic was "no-traffic" and passed: with no user entering an AZ,
    "none from the Region to an edge zone" and the Region's own routing went unexercised, and the run passed."""
    d = _run(tmp_path)
    assert verify(d).passed  # control: users in every zone
    azs = {z.name for z in T.region_zones}
    write_rows(d / "requests.jsonl", [r for r in rows(d / "requests.jsonl") if r["zone"] not in azs])
    callers = {e["pod"] for e in rows(d / "inventory.jsonl") if e["zone"] in azs and e["service"] != "postgres"}
    for pod in callers:
        (d / "accesslogs" / f"{pod}.jsonl").unlink(missing_ok=True)
    write_rows(
        d / "upstream-stats.jsonl",
        [r for r in rows(d / "upstream-stats.jsonl") if not (r["pod"] in callers and r["rq_total"])],
    )
    v = verify(rebuilt(d))
    assert LOCALITY in failed(v), why(v)
    assert f"locality: {AZ} -> product-api: no traffic (locality unverified)" in v.invariant(LOCALITY).message


# -- 7. a recovery read off a few lucky hops ---------------------------------------------------------------------
def _half_back(d: Path, end_in_zone: int) -> Path:
    """After KILL's restore (50 s) LAX's public-api sends every other product-api call to the AZ to the end of the
    run: a mesh that took the zone's instance back for half its calls only. Its last `end_in_zone` calls
    happen to be in-zone (e2e's cool-down stopped the users after three), the one before them served by the AZ."""
    caller = added_pod(d, LAX, "public-api")["pod"]
    az = f"{added_pod(d, AZ, 'product-api')['ip']}:9090"
    log = d / "accesslogs" / f"{caller}.jsonl"
    recs = rows(log)
    after = [r for r in recs if r.get("direction") == "outbound" and envoy_start(r) >= T0 + 50.0]
    local = next(r["upstream_host"] for r in reversed(after))
    for i, r in enumerate(after):
        r["upstream_host"] = az if i % 2 == 0 else local
    for r in after[-end_in_zone:]:
        r["upstream_host"] = local
    after[-end_in_zone - 1]["upstream_host"] = az
    write_rows(log, recs)
    return rebuilt(d)


def test_a_recovery_after_a_restore_that_came_back_in_part_is_not_shown_by_three_lucky_hops(tmp_path: Path) -> None:
    """HOLE. The recovery is the first good hop after the last misplaced one; its evidence rule (would a mesh
    still sending its share elsewhere have served the hops after it all in the zone?) was asked only of a fault
    that spilled part of the pair's calls. After a whole failover, a restore that took the zone's instance back
    for every other call "recovered" on the run's last three in-zone hops (where e2e's cool-down stops)."""
    d = _run(tmp_path, duration_s=56, faults=[KILL])
    assert verify(d).passed  # control: a correct mesh back at once, the run as short
    v = verify(_half_back(d, 3))
    assert FALLBACK in failed(v), why(v)
    assert "as after the restore, would serve that many where they belong with chance" in (
        v.invariant(FALLBACK).message
    )
    # the same mesh with enough in-zone hops after its last misplaced one shows a recovery that did happen
    v = verify(_half_back(d, 12))
    assert FALLBACK not in failed(v), why(v)
