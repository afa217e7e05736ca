"""A second mutation pass (s55b) over the verdict's rules changed since the first (tests/test_mutations_s50d.py).

Each rule below was mutated by hand (a clause dropped, a key widened, an edge moved) and the verify tests run: the
mutant survived, and it would pass a broken mesh or fail a correct one. Each test here is the synthetic run that
tells the rule from its mutant, with its twin beside it where the twin is not already on record. Section 4 is a
defect the pass found in a rule itself (the link look-ahead's answer outlasting its baseline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.topology import Topology, load_topology
from harness.topology.model import DEFAULT_TOPOLOGY
from harness.verify import COVERAGE, EXPERIMENT_RAN
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_soundness_s54a import (
    COUNTERS,
    CUT_2,
    LAX,
    T,
    _held_through_the_cut,
    recreated_under_its_name,
)
from tests.verdicts import Pristine, envoy_start, failed_messages, rows, verify, write_rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Pristine:
    return Pristine(tmp_path_factory.mktemp("s55b"))


# -- 1. a partition shown by the counters alone: another Envoy is another inventory interval ------------------------


def _back_under_its_name(d: Path, pod: str, stats: list[dict[str, Any]], new: dict[str, int]) -> None:
    """The pod re-created under its name 10 s into the second partition (the inventory's removed, then added and
    ready again): its restore and end reads are the new Envoy's, `new` its postgres counters, every one of them."""
    for s in stats:
        if s["pod"] == pod and s["host"].endswith(":5432") and s["label"] in (f"restore {CUT_2.fault}", "end"):
            s.update(new)
    write_rows(d / "upstream-stats.jsonl", stats)
    recreated_under_its_name(d, pod)


def _at_inject(pod: str, stats: list[dict[str, Any]]) -> dict[str, int]:
    return next(
        {c: int(s[c]) for c in COUNTERS}
        for s in stats
        if s["pod"] == pod and s["host"].endswith(":5432") and s["label"] == f"inject {CUT_2.fault}"
    )


def test_a_new_envoy_reading_no_less_than_the_old_one_counts_from_zero(runs: Pristine, tmp_path: Path) -> None:
    """The pod back under its name during the cut, its new Envoy reading at the restore exactly what the old one
    read at the inject, every counter (none went down): all of it is the new Envoy's, its connect failures the
    cut's. Keyed by pod name alone (the inventory interval dropped from the rule), the old Envoy's reads were
    subtracted, the growth was 0 and the correct mesh "not shown to have cut anything". s54a's test of the same
    case read a restore with rq_total and rq_error from zero, so a counter went down and the rule's other clause
    decided it: the interval's clause was not needed by any test."""
    d, pod, stats = _held_through_the_cut(runs, tmp_path)
    old = _at_inject(pod, stats)
    assert old["cx_connect_fail"] > 0 and old["rq_total"] > 0
    _back_under_its_name(d, pod, stats, old)
    v = verify(d)
    assert v.passed, failed_messages(v)


def test_control_a_new_envoy_with_no_failure_of_its_own_is_not_shown(runs: Pristine, tmp_path: Path) -> None:
    """Control (the broken twin): the new Envoy counted traffic but no failure towards another zone: not shown."""
    d, pod, stats = _held_through_the_cut(runs, tmp_path)
    old = _at_inject(pod, stats)
    _back_under_its_name(d, pod, stats, {**old, "cx_connect_fail": 0, "rq_error": 0, "rq_timeout": 0})
    failed = failed_messages(verify(d))
    assert COVERAGE in failed and f"partition of {LAX} is not shown to have cut anything" in failed[COVERAGE], failed


@pytest.mark.parametrize("gone_down", ["cx_connect_fail", "cx_total"])
def test_a_crash_in_place_is_shown_by_any_counter_gone_down(runs: Pristine, tmp_path: Path, gone_down: str) -> None:
    """Envoy crashed in place during the cut (same pod and address, no inventory record): its new process's reads
    are its own from zero, and one counter gone down is enough to tell it. cx_connect_fail: it opened more
    connections than the old one had (cx_total up), 10 connect failures against the old one's 60; cx_total: 60
    connections, every one a connect failure, against the old one's 61 and 60. The rest of its counters read what
    the old one's did. A reset read off one counter alone subtracted the old Envoy's failures from the new one's
    and the correct mesh was "not shown to have cut anything"."""
    d, pod, stats = _held_through_the_cut(runs, tmp_path)
    old = _at_inject(pod, stats)
    assert old["cx_total"] == 61 and old["cx_connect_fail"] == 60, old
    if gone_down == "cx_connect_fail":
        new = {**old, "cx_total": old["cx_total"] + 50, "cx_connect_fail": 10}
    else:
        new = {**old, "cx_total": 60, "cx_connect_fail": 60}
    for s in stats:
        if s["pod"] == pod and s["host"].endswith(":5432") and s["label"] in (f"restore {CUT_2.fault}", "end"):
            s.update(new)
    write_rows(d / "upstream-stats.jsonl", stats)
    v = verify(d)
    assert v.passed, failed_messages(v)


# -- 2. calls unplaceable in Consul's default access-log format around a death --------------------------------------


def _one_local_zone(tmp: Path) -> Topology:
    """The default topology with LAX its only edge zone (the Region's two AZs beside it)."""
    doc = yaml.safe_load(DEFAULT_TOPOLOGY.read_text(encoding="utf-8"))
    doc["zones"] = [z for z in doc["zones"] if z["type"] == "availability-zone" or z["name"] == LAX]
    p = tmp / "topology-one-lz.yaml"
    p.write_text(yaml.safe_dump(doc), encoding="utf-8")
    t = load_topology(p)
    assert [z.name for z in t.zones if z.type.value != "availability-zone"] == [LAX], t.zones
    return t


def _behind_an_alb_in_the_default_format(d: Path) -> Path:
    from tests.test_soundness_s53a import _inbound_via_alb
    from tests.test_soundness_s54a import _default_format

    _inbound_via_alb(d)
    _default_format(d)
    return d


def test_a_dead_frontend_with_no_other_edge_zone_leaves_nothing_unplaced(runs: Pristine, tmp_path: Path) -> None:
    """One Local Zone, its frontend killed, users through an ALB, Consul's default format: the unplaced lines
    around the death are at LAX's own public-api (the dying frontend's calls, in-zone) and at the Region's (its
    own frontends', and LAX's failing over: allowed). None can be a call into another Local Zone, there is none,
    and the correct mesh passes. Asked of any zone, or of the zone's own pods, the rule made it unverified."""
    from tests.test_soundness_s53a import KILL_FRONTEND_LAX

    sc = Scenario(_one_local_zone(tmp_path), duration_s=60, rate_per_zone=4, faults=[KILL_FRONTEND_LAX],
                  accesslogs="kind")  # fmt: skip
    d = _behind_an_alb_in_the_default_format(runs.run(tmp_path / "run", sc))
    v = verify(d)
    assert v.passed, failed_messages(v)


def test_a_dead_public_api_is_not_held_to_its_callers_unplaced_lines(runs: Pristine, tmp_path: Path) -> None:
    """LAX's public-api killed, users through an ALB, Consul's default format: the lines that name no caller are
    the users' (at the frontends) and the frontends' (at the public-apis), none of a call a public-api makes (to
    product-api: no X-Forwarded-For, the caller's address on the line). Its own calls are all placed and the
    correct mesh passes; asked of the unplaced lines at any service's pods, the rule made it unverified."""
    kill = FaultSpec("kill-public-api-lax", "service-down", LAX, ("public-api",), 30, 50, 0.2, 1.0)
    sc = Scenario(T, duration_s=60, rate_per_zone=4, faults=[kill], accesslogs="kind")
    d = _behind_an_alb_in_the_default_format(runs.run(tmp_path / "run", sc))
    v = verify(d)
    assert v.passed, failed_messages(v)


# -- 3. a completed journal and its steady state after the method ---------------------------------------------------


def _journal(runs: Pristine, tmp_path: Path, probes: bool) -> tuple[Path, Path, dict[str, Any]]:
    from tests.test_soundness_s54a import _journal_with_hypothesis

    sc = Scenario(T, duration_s=100, rate_per_zone=4, faults=[CUT_2], accesslogs="kind")
    d = runs.run(tmp_path / "run", sc)
    jp, j = _journal_with_hypothesis(d)
    if not probes:
        j["experiment"]["steady-state-hypothesis"]["probes"] = []
    return d, jp, j


def test_a_hypothesis_without_probes_owes_no_check_after_the_method(runs: Pristine, tmp_path: Path) -> None:
    """An experiment whose steady-state hypothesis lists no probe has nothing to check after its method: a journal
    with no steady state after it (chaostoolkit ran none) passes. Asked of any hypothesis, probes or not, the
    correct run failed experiment-ran ("never checked")."""
    d, jp, j = _journal(runs, tmp_path, probes=False)
    j["steady_states"]["after"] = None
    jp.write_text(json.dumps(j))
    v = verify(d)
    assert v.passed, failed_messages(v)


def test_a_steady_state_after_not_met_is_said_to_have_not_held(runs: Pristine, tmp_path: Path) -> None:
    """A hypothesis checked after the method and not met, written without the journal's deviated flag: the
    failure says it did not hold (a probe's tolerance not met), not that it was never checked. Read off the
    deviated flag alone, it fell to the "never checked" branch: the verdict failed, for a reason the journal
    contradicts."""
    d, jp, j = _journal(runs, tmp_path, probes=True)
    after = j["steady_states"]["after"]
    after["steady_state_met"] = False
    after["probes"][0].update(tolerance_met=False, output=False)
    jp.write_text(json.dumps(j))
    failed = failed_messages(verify(d))
    assert EXPERIMENT_RAN in failed, failed
    assert "steady state after the method did not hold" in failed[EXPERIMENT_RAN], failed
    assert "never checked" not in failed[EXPERIMENT_RAN], failed


# -- 4. the link look-ahead's answer: until when it lasts --------------------------------------------------------------


def test_the_lookaheads_answer_lapses_with_its_baseline_before_due(tmp_path: Path) -> None:
    """`link_baseline_lasts` answers until when "nothing owed" stands with no inject after the check: while each
    kind's `LINK_EFFECT_MIN_HOPS`-th newest baseline hop is in a later gate's stretch (`LINK_BASELINE_S`), and from
    `due` (maxRecoveryS past the newest restore) on, when nothing is owed at all. Between the two, when the stretch
    slides past the hops before `due`, the baseline is gone and a degradation begun then is "not shown" (the newest
    fault's window open: one call failed over before the gate moves its recovery instant past every hop after it,
    t54a's finding). The answer read max(due, hop + LINK_BASELINE_S) and stood through that gap: here a kill
    restored at 34 s under a maxRecoveryS of 700 s, its baseline LAX's hops before 30 s, settled at 20 s: the
    answer lasted to 734 s, the baseline to at most 630 s. A fault held longer than LINK_BASELINE_S less
    maxRecoveryS meets the same gap under the shipped SLO."""
    from harness.verify import link_baseline_lasts
    from harness.verify.invariants.users import LINK_BASELINE_S
    from tests.test_timing_t53a import _as_of
    from tests.test_timing_t54a import CHECK, KILLED
    from tests.test_verify_soundness import T0

    doc = yaml.safe_load(DEFAULT_TOPOLOGY.read_text(encoding="utf-8"))
    doc["slo"]["maxRecoveryS"] = 700
    (tmp_path / "topology-slow-slo.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    t = load_topology(tmp_path / "topology-slow-slo.yaml")
    sc = Scenario(t, duration_s=120, rate_per_zone=4, faults=[KILLED], budget_end_s=20.0)
    src = write_run(tmp_path / "src", sc)
    until = link_baseline_lasts(_as_of(src, tmp_path / "live", CHECK), t, LAX, T0 + CHECK)
    assert T0 + 20.0 + LINK_BASELINE_S < until <= T0 + 30.0 + LINK_BASELINE_S, until - T0


# -- 5. a sidecar missed by a snapshot before its death: its hops up to the slack before the next Envoy -----------


def test_a_new_envoys_first_hops_before_its_address_record_are_not_the_old_ones(runs: Pristine, tmp_path: Path) -> None:
    """LAX's public-api back under its name after its kill (kind: the node restarted, a new sandbox and address,
    the inventory's `ip` event), the event (and its readiness) on record 0.8 s after the new Envoy's first hop
    (within the inventory's slack), and a counter snapshot taken at 40 s (LAS's product-api killed again) while
    the old Envoy was dead and the new one not started. The new Envoy's hops before its record are no proof the
    old one ran past 40 s: the correct run passes. Read up to the next interval's start (the slack dropped), they
    made the dead Envoy "missed by a counter snapshot taken while it was up" (unverified)."""
    from tests.test_soundness_s53a import KILL_PRODUCT_API_LAS, KILL_PUBLIC_API_LAX_AT_35, _same_name

    again = FaultSpec("kill-product-api-las-2", "service-down", "us-west-2-las-1a", ("product-api",), 40.0, 45.0,
                      0.2, 1.0)  # fmt: skip
    sc = Scenario(T, duration_s=70, rate_per_zone=4, accesslogs="kind",
                  faults=[KILL_PRODUCT_API_LAS, KILL_PUBLIC_API_LAX_AT_35, again])  # fmt: skip
    d = runs.run(tmp_path / "run", sc)
    pod = _same_name(d, "ip")
    first = min(envoy_start(r) for r in rows(d / "accesslogs" / f"{pod}.jsonl") if envoy_start(r) > sc.start + 50)
    inv = rows(d / "inventory.jsonl")
    for e in inv:
        if e["pod"] == pod and e["ts"] >= sc.start + 50:
            e["ts"] = first + 0.8
    write_rows(d / "inventory.jsonl", sorted(inv, key=lambda e: e["ts"]))
    # no snapshot read it between its kill and the end (the old Envoy dead, the new one starting at 50 s)
    stats = rows(d / "upstream-stats.jsonl")
    write_rows(d / "upstream-stats.jsonl", [s for s in stats if not (s["pod"] == pod and 35 < s["ts"] - sc.start < 60)])
    v = verify(d)
    assert v.passed, failed_messages(v)
