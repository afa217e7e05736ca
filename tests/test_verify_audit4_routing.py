"""Wrong verdicts a fourth audit of the verifier found, on the routing side (issue 7: the verdict must be true).

Each broken case is a synthetic run (harness.verify.synth) with the broken behaviour planted the way a real
Consul/Envoy mesh and the harness's collectors would record it; each asserts the verdict FAILS, so each fails on
the verifier as the audit found it (each docstring's "HOLE." says how it passed then, and the fix). Next to
each, a control: the correct variant of the same run passes (the fixture is well formed), and where useful the
same broken behaviour with complete evidence fails (the plant is detectable).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.verify import HUB_AND_SPOKE, LOCALITY, Verdict
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import _with_replicas, why
from tests.test_verify_soundness import LAS, LAX, T0, inventory, run
from tests.verdicts import envoy_start as _envoy_ts
from tests.verdicts import rows as _rows
from tests.verdicts import verify
from tests.verdicts import write_rows as _write

AZ_A, AZ_B = "us-west-2a", "us-west-2b"
TD = "0f0f0f0f-synth.consul"
REGION_PRODUCT_API_CLUSTER = f"failover-target~1~product-api.default.dc1.internal.{TD}"
LAS_PRODUCT_API_CLUSTER = f"failover-target~1~product-api-las-1a.default.dc1.internal.{TD}"


def _added(d: Path, zone: str, service: str) -> list[dict[str, Any]]:
    return [e for e in inventory(d) if e["zone"] == zone and e["service"] == service and e["event"] == "added"]


def _failed_names(v: Verdict) -> set[str]:
    return {i.name for i in v.invariants if not i.passed}


def _to_region(d: Path, caller_pods: list[str], lo: float, hi: float) -> tuple[int, list[dict[str, Any]]]:
    """Plant: the LAX public-api sidecars in `caller_pods` send every product-api call in [lo, hi) to the
    Region's product-api (stale endpoints in those Envoys), and the Region's product-api makes the postgres
    calls LAX's product-api made for those requests (its log gets them, LAX product-api's loses them).

    Returns (hops moved, the callers' full rewritten lines of the last pod)."""
    region = _added(d, AZ_A, "product-api")[0]
    moved_ms: set[int] = set()
    lines: list[dict[str, Any]] = []
    for pod in caller_pods:
        path = d / "accesslogs" / f"{pod}.jsonl"
        lines = _rows(path)
        for r in lines:
            if lo <= _envoy_ts(r) < hi and "product-api" in r["upstream_cluster"]:
                r.update(upstream_host=f"{region['ip']}:9090", upstream_cluster=REGION_PRODUCT_API_CLUSTER)
                moved_ms.add(round(_envoy_ts(r) * 1000) + 1)  # the synth stamps the sub-call 1 ms later
        _write(path, lines)
    moved: list[dict[str, Any]] = []
    for p in (d / "accesslogs").glob("product-api-lax*.jsonl"):
        rows = _rows(p)
        moved += [{**r, "caller_pod": region["pod"], "caller_service": "product-api"}
                  for r in rows if round(_envoy_ts(r) * 1000) in moved_ms]  # fmt: skip
        _write(p, [r for r in rows if round(_envoy_ts(r) * 1000) not in moved_ms])
    rl = d / "accesslogs" / f"{region['pod']}.jsonl"
    _write(rl, sorted(_rows(rl) + moved, key=_envoy_ts))
    return len(moved_ms), lines


def _counters_from_lines(d: Path, pod: str, lines: list[dict[str, Any]]) -> None:
    """Rewrite `pod`'s upstream counters from what its Envoy really sent (`lines`), at every snapshot:
    cx_total 1 once a host was used, rq_total one per request (no retries here)."""
    path = d / "upstream-stats.jsonl"
    rows = _rows(path)
    mine = [r for r in rows if r["pod"] == pod]
    template = next(r for r in mine if "product-api" in r["cluster"])
    snaps = sorted({(r["label"], r["ts"]) for r in rows}, key=lambda x: x[1])
    new = []
    for label, ts in snaps:
        per: dict[tuple[str, str], int] = {}
        for r in lines:
            if _envoy_ts(r) < ts and r.get("upstream_host"):
                k = (r["upstream_cluster"], r["upstream_host"])
                per[k] = per.get(k, 0) + 1
        for cluster, host in sorted({(r["cluster"], r["host"]) for r in mine} | set(per)):
            n = per.get((cluster, host), 0)
            new.append({**template, "ts": ts, "label": label, "cluster": cluster, "host": host,
                        "cx_total": 1 if n else 0, "cx_connect_fail": 0, "rq_total": n, "rq_error": 0})  # fmt: skip
    _write(path, sorted([r for r in rows if r["pod"] != pod] + new, key=lambda r: r["ts"]))


# -- 1. evidence: a run that did not complete passes -----------------------------------------------------------
@pytest.mark.parametrize(
    "state",
    [
        {"ended": None, "stage": "chaos", "status": "running"},  # harness killed -9: run.json never finalised
        {"ended": 1.0, "stage": "chaos", "status": "interrupted"},  # Ctrl-C in the chaos stage
        {"ended": 1.0, "stage": "traffic", "status": "failed"},  # a stage raised
        None,  # no run.json at all
    ],
    ids=["running", "interrupted", "failed", "no-run-json"],
)
def test_a_run_that_did_not_complete_is_unverified(tmp_path: Path, state: dict[str, Any] | None) -> None:
    """HOLE. run.json says the run did not complete (or there is no run.json): the verdict only notes
    "partial run" (`checker.Checker.verdict` -> `RunMeta.partial` feeds `RunInfo.partial` and a note) and no
    invariant looks at it, so `Verdict.passed` is True. What the interrupted stages would have recorded (the
    remaining faults, their recovery, the 'end' counter snapshot of sidecars...) is unverified."""
    d = run(tmp_path, faults=[], run_status=None)
    if state is not None:
        (d / "run.json").write_text(json.dumps({"started": T0 - 20.0, **state}))
    v = verify(d)
    assert not v.passed, "a run that did not complete (or says nothing of it) passed"


def test_control_a_complete_run_passes(tmp_path: Path) -> None:
    v = verify(run(tmp_path, faults=[]))
    assert v.passed and not v.run.partial, why(v)


# -- 2. evidence: a live sidecar with neither access log nor counters is invisible -----------------------------
@pytest.mark.parametrize("accesslogs", ["local", "kind"], ids=["local-style", "kind-style"])  # id "local" is the marker
def test_a_live_sidecar_with_no_access_log_and_no_counters_is_unverified(tmp_path: Path, accesslogs: str) -> None:
    """HOLE. LAX runs two public-api replicas. The collector never got the second one's records: no
    accesslogs/<pod>.jsonl and no line of it in upstream-stats.jsonl (e.g. `kubectl logs` and the admin
    port-forward both go through the LZ node's kubelet; neither reported, recording.jsonl is empty). The pod
    was Ready from start to end (inventory), and LAX frontend's own hops show it served ~half of LAX's
    public-api calls, so it made ~180 product-api calls nobody judged (they may all have gone to LAS).

    Every completeness check keys on the pod's *own* records: `RoutingChecks._unread_at_end` asks an 'end'
    snapshot only of pods that made hops; `UserChecks._records_incomplete` flags only pods whose counters grew
    without access-log lines; the pair LAX -> product-api has the other replica's traffic. PASS.
    Fix: every pod the inventory has alive at the end (and every pod that served hops) whose service declares
    upstreams must have access-log lines and an 'end' snapshot (or be named unverified)."""
    d = write_run(tmp_path / "run", Scenario(_with_replicas("public-api", 2), duration_s=90, rate_per_zone=4,
                                             accesslogs=accesslogs))  # fmt: skip
    assert verify(d).passed
    ghost = _added(d, LAX, "public-api")[1]["pod"]
    (d / "accesslogs" / f"{ghost}.jsonl").unlink()
    stats = d / "upstream-stats.jsonl"
    _write(stats, [r for r in _rows(stats) if r["pod"] != ghost])
    v = verify(d)
    served = [h for h in v.invariant(LOCALITY).pairs if h.caller_zone == LAX and h.upstream == "public-api"]
    assert served and served[0].counts["hops"] > 300  # LAX frontend's hops: half of them served by the ghost
    assert not v.passed, "a Ready LAX sidecar with no record at all was never judged, yet the verdict passes"


# -- 3. evidence: an access log truncated mid-run, the counters say more was sent ------------------------------
def test_an_access_log_cut_short_while_its_pod_kept_serving_is_unverified(tmp_path: Path) -> None:
    """HOLE. LAX runs two public-api replicas; LAX's product-api is healthy all run. From 40 s on, the second
    replica's Envoy sends every product-api call to the Region (stale endpoints), 93 calls. Its access log
    stops at 40 s: the container log rotated and the follow stream ended without an error (kubectl logs -f
    does not follow a rotation), so nothing is in recording.jsonl. Its counters at 'end' show rq_total 93 on
    the Region's product-api host, and no access-log line names that host.

    `UserChecks._records_incomplete` only flags a sidecar with counters and *no line at all*; nothing compares
    a sidecar's rq_total growth per host with its access-log lines, and locality reads hops only
    (`RoutingChecks.locality`): 100% in-zone, PASS. With the full log the same mesh fails locality (74%).
    Fix: per sidecar and host, rq_total growth between snapshots must not exceed the access-log lines naming
    that host in the interval (plus the retries rq_total also counts: rq_total - lines <= retries is only
    possible with a failed line); else unverified. A Region host with rq growth from an edge sidecar while the
    zone was healthy is also locality evidence."""
    d = write_run(tmp_path / "run", Scenario(_with_replicas("public-api", 2), duration_s=90, rate_per_zone=4))
    assert verify(d).passed  # control: the correct mesh
    stale = _added(d, LAX, "public-api")[1]["pod"]
    cut = T0 + 40
    n, lines = _to_region(d, [stale], cut, T0 + 1000)
    assert n > 80
    _counters_from_lines(d, stale, lines)
    full = verify(d)
    assert LOCALITY in _failed_names(full), why(full)  # control: with its whole log the broken mesh fails
    _write(d / "accesslogs" / f"{stale}.jsonl", [r for r in lines if _envoy_ts(r) < cut])
    end = [r for r in _rows(d / "upstream-stats.jsonl") if r["pod"] == stale and r["label"] == "end"]
    assert any(r["cluster"] == REGION_PRODUCT_API_CLUSTER and r["rq_total"] == n for r in end)
    v = verify(d)
    assert not v.passed, "counters show 93 Region calls the truncated access log lost, yet the verdict passes"


# -- 4. evidence: an access-log line that cannot be parsed ------------------------------------------------------
def test_an_unparseable_access_log_line_is_unverified(tmp_path: Path) -> None:
    """HOLE. One line in the middle of LAX public-api's access log is cut (a partial write: the collector's
    catch-up read and its follow stream overlapped, or the node's disk filled); what is left of it shows an
    LZ -> LZ call (`failover-target~1~product-api-las-1a`, a LAS pod's address). The loader skips it and the
    verdict lists it (`run.skipped_records`, a note "1 corrupt or truncated line(s) skipped"), nothing fails:
    PASS. The same line whole fails hub-and-spoke. "Unverified is a failure": a skipped access-log line of a
    complete run is a hop that was never judged. Fix: skipped lines in accesslogs/ (and upstream-stats) of a
    run that completed fail the invariants they feed (hub-and-spoke, locality) as unverified."""
    d = run(tmp_path, faults=[])
    assert verify(d).passed
    caller = _added(d, LAX, "public-api")[0]["pod"]
    las = _added(d, LAS, "product-api")[0]
    path = d / "accesslogs" / f"{caller}.jsonl"
    lines = path.read_text().splitlines()
    rec = json.loads(lines[100])
    rec.update(upstream_host=f"{las['ip']}:9090", upstream_cluster=LAS_PRODUCT_API_CLUSTER)
    whole = json.dumps(rec)
    lines[100] = whole
    path.write_text("\n".join(lines) + "\n")
    assert HUB_AND_SPOKE in _failed_names(verify(d))  # control: the LZ -> LZ hop, whole, fails
    cut = whole[: whole.index(LAS_PRODUCT_API_CLUSTER) + len(LAS_PRODUCT_API_CLUSTER)]
    lines[100] = cut
    path.write_text("\n".join(lines) + "\n")
    v = verify(d)
    assert v.run.skipped_records_total == 1
    assert not v.passed, "an access-log line naming another Local Zone was skipped, yet the verdict passes"
    assert {HUB_AND_SPOKE, LOCALITY} <= _failed_names(v)
    assert f"accesslogs/{caller}.jsonl: 1 line(s) could not be read (line 101)" in v.invariant(HUB_AND_SPOKE).message


def test_control_a_torn_last_line_of_a_killed_pods_access_log_passes(tmp_path: Path) -> None:
    """A log stream of a pod killed mid-write can end in a torn line: what the pod did not finish writing died
    with it (the local collector never copies one: it holds a torn tail back). The last line of a dead pod's
    log is named as skipped, and fails nothing; the same torn line in a live pod's log fails."""
    d = run(tmp_path, faults=[FaultSpec("kill-lax", "service-down", LAX, ("public-api",), 30, 50, 0.2, 1.0)])
    assert verify(d).passed
    killed = _added(d, LAX, "public-api")[0]["pod"]
    assert any(e["pod"] == killed and e["event"] == "removed" for e in inventory(d))
    path = d / "accesslogs" / f"{killed}.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:40])
    v = verify(d)
    assert v.passed and v.run.skipped_records_total == 1, why(v)


# -- 5. locality: a fault on a Region-only service nobody calls turns the spill guard off everywhere -----------
AZ_NODE_LOSS = FaultSpec(
    "kill-node-us-west-2b", "service-down", AZ_B, ("frontend", "postgres-replica", "product-api", "public-api"),
    35, 41, 0.2, 1.0, entry_down=True,
)  # fmt: skip
KILL_REPLICA = FaultSpec("kill-postgres-replica", "service-down", AZ_A, ("postgres-replica",), 35, 45, 0.2, 1.0)


def _spill_run(tmp_path: Path, fault: FaultSpec | None) -> Path:
    sc = Scenario(_with_replicas("product-api", 2), duration_s=120, rate_per_zone=4,
                  degraded=[(LAX, "product-api", 40.0, 80.0)], faults=[fault] if fault else [])  # fmt: skip
    d = write_run(tmp_path / "run", sc)
    if fault is AZ_NODE_LOSS:  # the read replica runs in the other AZ (topology: "in another AZ")
        path = d / "inventory.jsonl"
        _write(path, [{**e, "zone": AZ_B, "node": "2b-n1", "ip": "10.213.1.250"}
                      if e["service"] == "postgres-replica" else e for e in _rows(path)])  # fmt: skip
    return d


def _send_lax_to_region_during_spill(d: Path) -> None:
    pods = [e["pod"] for e in _added(d, LAX, "public-api")]
    n, _ = _to_region(d, pods, T0 + 40, T0 + 80)
    assert n > 100


@pytest.mark.parametrize("fault", [AZ_NODE_LOSS, KILL_REPLICA], ids=["az-node-loss", "kill-postgres-replica"])
def test_a_fault_on_an_uncalled_region_service_does_not_excuse_a_spill_elsewhere(
    tmp_path: Path, fault: FaultSpec
) -> None:
    """HOLE. LAX runs two product-api replicas; one is unready 40-80 s, so Envoy must keep ~70% of LAX's
    product-api calls in LAX. The mesh sends *all* 160 of them to the Region (audit 3's case 3). Meanwhile, in
    the Region, the shipped experiment az-node-loss stops the node of the AZ without the primary (35-41 s):
    kill_node records `services` = the services it lost there, which include postgres-replica (the topology
    puts the read replica in the other AZ); or a kill of the replica pod itself.

    `RoutingChecks._spill_share` skips every fault window with `f.zone == z or self._cascade(f)`: the cascade
    of a fault on postgres-replica is {postgres-replica} (nobody calls it), non-empty, so truthy, and the spill
    guard is off in EVERY zone for [inject, restore + maxRecoveryS] = 35-101 s. Locality excludes spill
    intervals by design, so 0% in-zone while LAX still had a Ready product-api: PASS. Without the fault the
    same hops fail locality (control). Fix: skip the window only for pairs whose upstream is in the cascade
    (`u in self._cascade(f)`), as a postgres kill's dependants are."""
    d = _spill_run(tmp_path, fault)
    assert verify(d).passed  # control: the correct mesh spills ~30% and passes
    _send_lax_to_region_during_spill(d)
    v = verify(d)
    assert LOCALITY in _failed_names(v), why(v)


def test_control_the_same_spill_misrouting_without_that_fault_fails_locality(tmp_path: Path) -> None:
    d = _spill_run(tmp_path, None)
    assert verify(d).passed
    _send_lax_to_region_during_spill(d)
    v = verify(d)
    assert LOCALITY in _failed_names(v), why(v)
    assert "Envoy keeps 70%" in v.invariant(LOCALITY).message
