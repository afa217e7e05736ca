"""Wrong verdicts a third independent audit of the verifier found (issue 7: the verdict must be true).

Each case is reproduced on a synthetic run (harness.verify.synth), planted the
way a real cluster produces it. They are NOT mended yet: each test is marked
`xfail(strict=True)` and states the verdict the product's rules ask for, so
it passes (as an expected failure) until the verifier is fixed, and then
tells whoever fixes it to drop the mark.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from harness.cli import EXIT_INPUT, main
from harness.columnar import compact_all
from harness.errors import InputError
from harness.observe.hops import build_hops, current_build
from harness.verify import COVERAGE, EXPERIMENT_RAN, HUB_AND_SPOKE, LOCALITY
from harness.verify.invariants.sql import binomial_cdf
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import _with_replicas, why
from tests.test_verify_soundness import KILL, LAX, T0, failed, inventory, pod_of, run
from tests.verdicts import envoy_start as _envoy_ts
from tests.verdicts import rows as _rows
from tests.verdicts import verify
from tests.verdicts import write_rows as _write

AZ_A = "us-west-2a"
REGION_PRODUCT_API_CLUSTER = "failover-target~1~product-api.default.dc1.internal.0f0f0f0f-synth.consul"


# -- 1. experiment-ran: a planned action that "succeeded" without making any fault ------------------------------
@pytest.mark.parametrize("how", ["dry-action", "chaosk8s-action"])
def test_a_planned_action_that_recorded_no_fault_is_unverified(tmp_path: Path, how: str) -> None:
    """The mesh never comes back in-zone after the kill (recovery_delay 1000 s): with its timeline the run fails
    fallback ("never recovers"). Two ways a real run ends up with the same journal but no timeline record:

    - `dry-action`: the experiment marks the action `"dry": "actions"` (a game-day copy of a rehearsal);
      chaostoolkit-lib 1.44 `execute_activity` then skips the provider and writes `status: succeeded,
      output: null` (checked in its source). plan_experiment does not refuse the key.
    - `chaosk8s-action`: ALLOWED_MODULES accepts chaosk8s; `chaosk8s.pod.actions.terminate_pods` kills the pods
      but writes nothing to chaos.jsonl (EH_RUN_DIR is the harness's), and returns null.

    `evidence.experiment` finds the action in run[] with status succeeded; `fault_ids(None)` was [], so the
    audit-1 rule ("an action that says it made fault F absent from the timeline is unverified") never applies.
    No fault: fallback "0 faults", coverage "no faults to cover", locality excuses the readiness outage until
    maxRecoveryS after it: PASS. DESIGN: a skipped experiment / an unverified fault must fail the verdict."""
    f = FaultSpec(KILL.fault, "service-down", LAX, ("product-api",), 30, 50, 0.2, 1000.0)
    d = run(tmp_path, faults=[f])
    assert not verify(d).passed  # with its timeline: never recovers
    (d / "chaos.jsonl").write_text("")
    jp = next((d / "chaos").glob("*/journal.json"))
    journal = json.loads(jp.read_text())
    entry = journal["run"][0]
    entry["output"] = None
    if how == "dry-action":
        entry["activity"]["dry"] = "actions"
        journal["experiment"]["method"] = [entry["activity"]]
    else:
        entry["activity"]["provider"] = {
            "type": "python", "module": "chaosk8s.pod.actions", "func": "terminate_pods",
            "arguments": {"label_selector": "app=product-api", "ns": "hashicups", "all": True},
        }  # fmt: skip
    jp.write_text(json.dumps(journal))
    v = verify(d)
    assert not v.passed, "the planned fault was never judged, yet the verdict passes"
    assert EXPERIMENT_RAN in failed(v), why(v)


# -- 2. hub-and-spoke: a sidecar that died without counters after its hops -----------------------------------------
def test_a_sidecar_killed_without_counters_after_its_hops_leaves_its_attempts_unverified(tmp_path: Path) -> None:
    """kill product-api in LAX (30-50 s: LAX's public-api fails over to the Region), then kill public-api in LAX
    (60-70 s). The first public-api pod made every LAX -> product-api hop of the failover; its Envoy admin did
    not answer the snapshots after `start` (kill_pod's `_snapshot` logs non-answering pods to chaos.log only),
    and it died at 60 s, so the snapshot it would have been read in, `before <fault>`, has no line of it.

    The access log names only the last attempt's host (DESIGN): a failover with targets [another LZ, Region]
    whose first attempt a retry hid is visible only in those counters. Audit 1's fix asks every pod that made
    hops *and was still up at the end* for an `end` snapshot; a pod that died is exempt ("its last snapshot is
    the one taken just before the fault that killed it") but nothing checks that such a snapshot of it exists
    after its last hop. PASS, where the same pod alive at the end fails hub-and-spoke as unverified."""
    kill_pa = FaultSpec("kill-public-api-lax", "service-down", LAX, ("public-api",), 60, 70, 0.2, 1.0)
    d = run(tmp_path, faults=[KILL, kill_pa])
    assert verify(d).passed
    caller = pod_of(d, LAX, "public-api")["pod"]
    path = d / "upstream-stats.jsonl"
    _write(path, [r for r in _rows(path) if not (r["pod"] == caller and r["label"] != "start")])
    v = verify(d)
    assert HUB_AND_SPOKE in failed(v), why(v)


def test_a_sidecar_killed_as_a_snapshot_missed_it_is_not_blamed(tmp_path: Path) -> None:
    """The race the rule must not fail a correct mesh on: LAX's public-api is killed at 60 s and the snapshot
    right after the kill (`inject kill-public-api-lax`) asks it, dead, because the inventory watch has not yet
    delivered its removal (recorded a second late here, as a kind or EKS watch may). Nothing after that
    snapshot proves the pod was up while it was read, so its last snapshot (the first kill's restore, 50 s)
    stands, as for any dead pod. A rule on the removal's clock failed this correct mesh."""
    kill_pa = FaultSpec("kill-public-api-lax", "service-down", LAX, ("public-api",), 60, 70, 0.2, 1.0)
    d = run(tmp_path, faults=[KILL, kill_pa])
    caller = pod_of(d, LAX, "public-api")["pod"]
    path = d / "upstream-stats.jsonl"
    _write(path, [r for r in _rows(path) if not (r["pod"] == caller and r["label"].startswith("inject kill-public"))])
    inv = d / "inventory.jsonl"
    _write(inv, [{**e, "ts": e["ts"] + 1.0} if e["pod"] == caller and e["event"] == "removed" else e
                 for e in _rows(inv)])  # fmt: skip
    v = verify(d)
    assert HUB_AND_SPOKE not in failed(v), why(v)


# -- 3. locality: a spill interval excuses any share of out-of-zone hops -------------------------------------------
def test_locality_during_a_spill_is_bounded_by_envoys_spill_share(tmp_path: Path) -> None:
    """LAX runs two product-api replicas; one is unready for 40 s (a readiness flap, a replacement Pending on a
    small Local Zone node). With one of two ready Envoy keeps min(1, 0.5 x 1.4) = 70 % in the zone
    (rundata.spills, notes/consul-dataplane-semantics §1). Here the mesh sends *every* LAX product-api hop to the
    Region for the whole 40 s although LAX still has a Ready product-api (planted: LAX public-api's hops go to
    the Region's product-api pod, and that pod's postgres hops carry the work LAX's product-api did).

    DESIGN invariant 1: while the caller's zone has healthy instances, hops stay in that zone. The verifier
    excludes the spill interval (plus its recovery) from locality altogether, so 160 Region-served hops vanish
    from the share: `in_zone_share` 1.0, PASS. The same hops outside a spill fail locality (0 % in-zone)."""
    sc = Scenario(_with_replicas("product-api", 2), duration_s=120, rate_per_zone=4,
                  degraded=[(LAX, "product-api", 40.0, 80.0)])  # fmt: skip
    d = write_run(tmp_path / "run", sc)
    assert verify(d).passed  # the correct mesh: ~30 % spilled, excused
    region = next(
        e for e in inventory(d) if e["zone"] == AZ_A and e["service"] == "product-api" and e["event"] == "added"
    )
    lo, hi = T0 + 40, T0 + 80
    moved: list[dict[str, Any]] = []
    for p in (d / "accesslogs").glob("product-api-lax*.jsonl"):  # LAX's product-api served none of them
        rows = _rows(p)
        moved += [{**r, "caller_pod": region["pod"], "caller_service": "product-api"}
                  for r in rows if lo <= _envoy_ts(r) < hi]  # fmt: skip
        _write(p, [r for r in rows if not lo <= _envoy_ts(r) < hi])
    region_log = d / "accesslogs" / f"{region['pod']}.jsonl"
    _write(region_log, _rows(region_log) + moved)
    n = 0
    for p in (d / "accesslogs").glob("public-api-lax*.jsonl"):
        rows = _rows(p)
        for r in rows:
            if lo <= _envoy_ts(r) < hi and "product-api" in r["upstream_cluster"]:
                r.update(upstream_host=f"{region['ip']}:9090", upstream_cluster=REGION_PRODUCT_API_CLUSTER)
                n += 1
        _write(p, rows)
    assert n > 100
    v = verify(d)
    (pair,) = [p for p in v.invariant(LOCALITY).pairs if p.caller_zone == LAX and p.upstream == "product-api"]
    assert LOCALITY in failed(v), why(v)
    assert "while 1 of its 2 pods there were ready" in pair.message and "Envoy keeps 70%" in pair.message, pair


# -- 4. verify on partially collected or damaged records: a clear failure or exit 2, never a traceback ------------
def _judged_or_refused(d: Path) -> None:
    """What the product asks of `harness verify` on records it cannot use: a failing verdict, or InputError."""
    try:
        v = verify(d)
    except InputError:
        return
    assert not v.passed, "a run with missing records passed"


@pytest.mark.parametrize("damage", ["no-inventory", "empty-inventory"])
def test_a_run_without_its_inventory_gets_a_verdict_not_a_crash(tmp_path: Path, damage: str) -> None:
    """The inventory follower failed (e2e `recording` writes the error to recording.jsonl and carries on) or the
    run was copied without inventory.jsonl. Every hop's caller and serving pod are then unattributed; the
    verdict must say so (unverified = fail) or refuse the run (exit 2). It crashes in shared-services."""
    d = run(tmp_path, faults=[KILL])
    if damage == "no-inventory":
        (d / "inventory.jsonl").unlink()
    else:
        (d / "inventory.jsonl").write_text("")
    _judged_or_refused(d)


@pytest.mark.parametrize("damage", ["hops.parquet", "columnar-segment"])
def test_a_truncated_parquet_file_is_bad_input_naming_the_file(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    d = run(tmp_path, faults=[KILL])
    if damage == "hops.parquet":  # observe's columnar record, copied without the access logs it was built from
        for p in (d / "accesslogs").iterdir():
            p.unlink()
        (d / "accesslogs").rmdir()
        (d / "hops.parquet").write_bytes(b"PAR1 truncated")
        bad = d / "hops.parquet"
    else:  # the collector's compacted requests, cut short by the copy
        compact_all(d)
        (bad,) = sorted((d / "columnar" / "requests").glob("*.parquet"))
        bad.write_bytes(bad.read_bytes()[:100])
    assert main(["verify", str(d)]) == EXIT_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{bad.relative_to(d)}: not a readable Parquet file") and len(err.splitlines()) == 1, err


def test_a_current_hops_parquet_damaged_in_place_is_bad_input_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """observe's build record says hops.parquet is current (same size and mtime as it wrote), yet its bytes were
    damaged in place: verify takes it as built, and must still say which file is bad rather than raise."""
    d = run(tmp_path, faults=[KILL])
    build_hops(d, jsonl=False)
    hops = d / "hops.parquet"
    st = hops.stat()
    hops.write_bytes(b"\0" * st.st_size)  # the same size: only the bytes changed
    os.utime(hops, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert current_build(d) is not None  # the build record still vouches for it
    assert main(["verify", str(d)]) == EXIT_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith("hops.parquet: not a readable Parquet file") and len(err.splitlines()) == 1, err


# -- 5. partially collected access logs: a live sidecar whose lines are missing is not noticed -------------------
@pytest.mark.parametrize("evidence", ["counters-only", "recording-only", "both"])
def test_a_live_sidecar_whose_access_log_is_missing_leaves_its_hops_unverified(tmp_path: Path, evidence: str) -> None:
    """LAX runs two public-api replicas. The second one's sidecar sends all its product-api calls to the Region
    (stale endpoints in that one Envoy: its counters at `end` show 170 requests to the Region's product-api
    host, none to LAX's), while LAX's product-api is healthy all run. Its access log was never collected:
    `flush_access_logs` reported "cannot read Envoy's access-log buffer" (recording.jsonl) and the file is
    absent (the follow stream and the catch-up read both failed).

    The verdict judges the other replica's hops only: locality 100 % in-zone, PASS, with a note
    "recording: access-log flush: ...". The run's own evidence (rq_total per host, the recording problem)
    says that pod's hops exist and were not judged: unverified, which DESIGN says fails."""
    d = write_run(tmp_path / "run", Scenario(_with_replicas("public-api", 2), duration_s=90, rate_per_zone=4))
    assert verify(d).passed
    lax = [e for e in inventory(d) if e["zone"] == LAX and e["service"] == "public-api" and e["event"] == "added"]
    stale = lax[1]["pod"]
    region = next(
        e for e in inventory(d) if e["zone"] == AZ_A and e["service"] == "product-api" and e["event"] == "added"
    )
    stats = d / "upstream-stats.jsonl"
    rows = _rows(stats)
    for r in rows:
        if r["pod"] == stale and "product-api" in r["cluster"]:
            r.update(host=f"{region['ip']}:9090", cluster=REGION_PRODUCT_API_CLUSTER)
    _write(stats, rows)
    assert any(r["pod"] == stale and r["label"] == "end" and r["rq_total"] > 100 for r in rows)
    if evidence != "recording-only":  # the log never collected: only the counters say the calls happened
        (d / "accesslogs" / f"{stale}.jsonl").unlink()
    if evidence != "counters-only":  # the flush failed (its lines may be missing, whatever the file holds)
        (d / "recording.jsonl").write_text(json.dumps({"ts": T0 + 91, "what": "access-log flush",
            "message": f"{stale}: cannot read Envoy's access-log buffer: timed out"}) + "\n")  # fmt: skip
    v = verify(d)
    assert not v.passed, "170 hops of a live LAX sidecar were never judged, yet the verdict passes"
    assert COVERAGE in failed(v), why(v)
    msg = v.invariant(COVERAGE).message
    if evidence != "recording-only":
        assert f"{stale} (" in msg and "no access-log line" in msg, msg
    if evidence != "counters-only":
        assert "coverage: recording: access-log flush" in msg, msg


def test_a_harness_fault_action_whose_output_names_no_fault_is_unverified(tmp_path: Path) -> None:
    """The harness's own kill_pod, journaled as succeeded, but its output names no fault (a build of the action
    that lost its return value, or a journal edited by hand): nothing says what it broke, so the fault is
    unverified, as for a dry or foreign action above."""
    d = run(tmp_path, faults=[KILL])
    jp = next((d / "chaos").glob("*/journal.json"))
    journal = json.loads(jp.read_text())
    entry = journal["run"][0]
    assert entry["activity"]["provider"]["func"] == "kill_pod" and entry["output"]
    entry["output"] = {"zone": LAX}
    jp.write_text(json.dumps(journal))
    v = verify(d)
    assert EXPERIMENT_RAN in failed(v), why(v)
    assert "reported no fault" in v.invariant(EXPERIMENT_RAN).message


def test_binomial_cdf_is_the_binomial_lower_tail() -> None:
    """The chance `_spill_share` judges by: exact small cases, the edges of p, and a large n without overflow."""
    assert binomial_cdf(0, 12, 0.7) == pytest.approx(0.3**12)
    assert binomial_cdf(5, 10, 0.5) == pytest.approx(638 / 1024)
    assert binomial_cdf(3, 3, 0.4) == pytest.approx(1.0)
    assert binomial_cdf(2, 3, 1.0) == 0.0 and binomial_cdf(3, 3, 1.0) == 1.0 and binomial_cdf(0, 5, 0.0) == 1.0
    assert binomial_cdf(600, 1000, 0.7) < 1e-6 < binomial_cdf(660, 1000, 0.7)


def test_a_flush_problem_of_a_pod_that_died_is_a_note_not_a_failure(tmp_path: Path) -> None:
    """The kind/EKS backends report every pod that died during the run ("<pod>: pod gone; lines its sidecar had
    not flushed are lost", KubeBackend.flush_access_logs): its last unflushed lines died with it, as its
    counters did. Failing coverage on that would fail every kind run with a kill; a live pod's flush problem
    (above) still fails."""
    d = run(tmp_path, faults=[KILL])
    gone = next(e["pod"] for e in inventory(d) if e["event"] == "removed")
    (d / "recording.jsonl").write_text(json.dumps({"ts": T0 + 91, "what": "access-log flush",
        "message": f"{gone}: pod gone; lines its sidecar had not flushed are lost"}) + "\n")  # fmt: skip
    v = verify(d)
    assert v.passed, why(v)
    assert any("pod gone" in n for n in v.run.notes)
