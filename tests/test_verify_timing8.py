"""Correct meshes judged FAIL or unverified by legal timing (audit 8), each next to the broken mesh that must fail.

Product rule: same config, same verdict. Each case is a synthetic run timed as a real Envoy/Consul mesh and the
harness may time it (faults back to back, a run ending shortly after a restore, nodes on their own clocks), and
failed before its fix.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.verify import COVERAGE, FALLBACK
from harness.verify.synth import FaultSpec, Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_soundness import LAX, T, failed, run
from tests.verdicts import verify

# -- 1. a recovery whose callers the zone's next fault cut off, shown after that fault's restore -------------------
CUTS = {  # the zone's next fault, cutting product-api's callers off: killing them, or the entry point before them
    "caller": ("kill-public-api-lax", ("public-api",), False),
    "entry": ("kill-frontend-lax", ("frontend",), True),
}


def _callers_cut(
    tmp_path: Path, gap: float, rate: float, recovery_s: float = 1.0, duration_s: float = 100, cut: str = "caller"
) -> Path:
    """LAX's product-api killed at 30 and back at 50 (the Region keeps serving `recovery_s` after it: Consul's
    endpoint change reaches Envoy in about a second); `gap` s after the restore the zone's next fault kills LAX's
    public-api (its only caller) or frontend (the entry point, the only way to public-api), back at 70."""
    name, services, entry_down = CUTS[cut]
    f = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 0.2, recovery_s)
    g = FaultSpec(name, "service-down", LAX, services, 50 + gap, 70, 0.2, 1.0, entry_down=entry_down)
    return run(tmp_path, faults=[f, g], duration_s=duration_s, rate_per_zone=rate)


@pytest.mark.parametrize("rate", [2, 20])
@pytest.mark.parametrize("gap", [0.05, 0.3, 0.9])
@pytest.mark.parametrize("cut", sorted(CUTS))
def test_a_recovery_whose_callers_the_next_fault_cut_off_is_shown_after_its_restore(
    tmp_path: Path, cut: str, gap: float, rate: float
) -> None:
    """The next experiment cut the pair's callers off (killed them, or the zone's entry point before them) before
    Envoy used the restored product-api: no hop could show the pair back before that inject, and the verdict
    failed the mesh (as unverified when the callers were killed, as "never recovers" when the entry was), while a
    machine one second slower to start the next experiment passed it. The pair's next hops, after the second
    restore, show it back in-zone (or not): that is its recovery, measured there."""
    v = verify(_callers_cut(tmp_path, gap, rate, cut=cut))
    assert v.passed, why(v)
    f = next(r for r in v.faults if r.fault == "kill-product-api-lax")
    assert any(CUTS[cut][0] in m and "back" in m for m in f.messages), f.messages


@pytest.mark.parametrize("rate", [2, 20])
@pytest.mark.parametrize("cut", sorted(CUTS))
def test_a_pair_that_never_recovers_fails_after_the_next_faults_restore_too(
    tmp_path: Path, cut: str, rate: float
) -> None:
    """The broken mesh: LAX's public-api keeps calling the Region's product-api after both restores (the run goes
    on for maxRecoveryS after the second)."""
    v = verify(_callers_cut(tmp_path, 0.3, rate, recovery_s=1000, duration_s=135, cut=cut))
    assert FALLBACK in failed(v), why(v)
    said = " ".join(why(v))
    assert "never recovers" in said and f"after the restore of fault {CUTS[cut][0]}" in said, said


def test_a_zone_without_users_after_the_entry_came_back_is_still_unverified(tmp_path: Path) -> None:
    """The coverage counterpart: the entry point killed 50 ms after the restore, and no user entering LAX after
    that (at 2 requests a second none came in those 50 ms): the recovery met no user, and stays unverified."""
    f = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 0.2, 1.0)
    g = FaultSpec("kill-frontend-lax", "service-down", LAX, ("frontend",), 50.05, 70, 0.2, 1.0, entry_down=True)
    v = verify(run(tmp_path, faults=[f, g], duration_s=100, rate_per_zone=2, silent=[(LAX, 50.0, None)]))
    assert COVERAGE in failed(v), why(v)
    assert any("no user requests entering" in m and "kill-product-api-lax:" in m for m in why(v)), why(v)


# -- 2. a run that ends shortly after a restore ------------------------------------------------------------------
def _kill_at_the_end(tmp_path: Path, tail: float, rate: float, recovery_s: float = 1.0) -> Path:
    """LAX's product-api killed at 30 and back at 50 (the Region keeps serving `recovery_s` after it); the users
    stop `tail` s after the restore (e2e's cool-down counts 20 requests per zone after the last restore: 1 s at
    20 requests a second, as long as Consul takes to hand Envoy the restored endpoint)."""
    f = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 30, 50, 0.2, recovery_s)
    return run(tmp_path, faults=[f], duration_s=50 + tail, rate_per_zone=rate)


def _spill_at_the_end(tmp_path: Path, tail: float, rate: float, spill_until: float = 50) -> Path:
    """LAX's link degraded 30-50 while one of its two product-api replicas was unready until `spill_until` (Envoy
    spills ~29 % of the zone's calls to the Region by design); the users stop `tail` s after the restore."""
    services = tuple(s.model_copy(update={"replicas": 2}) if s.name == "product-api" else s for s in T.services)
    topo = T.model_copy(update={"services": services})
    faults = [FaultSpec("degrade-link-lax", "link-degraded", LAX, (), 30, 50, 0.0, 0.0)]
    return write_run(
        tmp_path / "run",
        Scenario(topo, duration_s=50 + tail, rate_per_zone=rate, faults=faults,
                 degraded=[(LAX, "product-api", 30, spill_until)]),
    )  # fmt: skip


@pytest.mark.parametrize("rate", [2, 20])
@pytest.mark.parametrize(("case", "tail"), [("kill", 0.3), ("kill", 1.1), ("kill", 1.3), ("kill", 3.0),
                                            ("spill", 3.0), ("spill", 8.0)])  # fmt: skip
def test_a_recovery_the_run_ended_before_is_shown_or_unverified_never_missing(
    tmp_path: Path, case: str, tail: float, rate: float
) -> None:
    """A correct mesh back in-zone ~1 s after the restore, and the run ending `tail` s after it, before the
    maxRecoveryS (60 s) the SLO gives the recovery had passed. Whether a hop lands in the tail after Envoy took
    the restored endpoint back (or, after a spill, enough good hops to rule out a mesh still spilling) depends
    on the request rate and its phase: at 20 requests a second 1.1 s showed it and passed, at 2 or 5 it read
    "fault ... never recovers", a claim the records do not make (the same mesh shows it on a longer run). The
    records show the recovery, or show nothing either way: unverified (still a failure), saying the run ended."""
    d = (_kill_at_the_end if case == "kill" else _spill_at_the_end)(tmp_path, tail, rate)
    v = verify(d)
    said = " ".join(why(v))
    if not v.passed:
        assert "never recovers" not in said and "the run ended" in said and "unverified" in said, said
        assert set(failed(v)) <= {FALLBACK, COVERAGE}, said


@pytest.mark.parametrize("rate", [2, 20])
def test_a_pair_that_never_recovers_by_the_slo_is_still_shown_missing(tmp_path: Path, rate: float) -> None:
    """The broken meshes, the run going on past maxRecoveryS after the restore: the kill's pair served from the
    Region to the end, the spill never ending. Both fail as recoveries shown missing; cut short by the run's end
    they fail as unverified."""
    v = verify(_kill_at_the_end(tmp_path / "kill", 65, rate, recovery_s=1000))
    assert FALLBACK in failed(v) and "never recovers" in " ".join(why(v)), why(v)
    v = verify(_spill_at_the_end(tmp_path / "spill", 65, rate, spill_until=115))
    said = " ".join(why(v))
    assert FALLBACK in failed(v) and "degrade-link-lax" in said and "> maxRecoveryS" in said, said
    assert "the run ended" not in said, said
    for d in (
        _kill_at_the_end(tmp_path / "kill-cut", 10, rate, 1000),
        _spill_at_the_end(tmp_path / "s-cut", 10, rate, 60),
    ):
        v = verify(d)
        assert FALLBACK in failed(v) and "the run ended" in " ".join(why(v)), why(v)


# -- 3. a degraded link still being cleared after its restore is recorded ------------------------------------------
def _link_then(tmp_path: Path, rate: float, gap: float, undo_s: float, lingers: bool = False) -> Path:
    """LAX's link degraded (+200 ms) 30-50, its rules cleared `undo_s` after the restore was recorded (the timeline
    writes the restore before calling the primitive; kind runs `docker exec` of the rules on each of the zone's
    nodes); the zone's next fault, another degraded link, `gap` s after the restore."""
    faults = [
        FaultSpec("degrade-link-lax-1", "link-degraded", LAX, (), 30, 50, 0.0, 0.0, undo_s=undo_s,
                  link_lingers=lingers),
        FaultSpec("degrade-link-lax-2", "link-degraded", LAX, (), 50 + gap, 70, 0.0, 0.0),
    ]  # fmt: skip
    return run(tmp_path, faults=faults, duration_s=100, rate_per_zone=rate)


@pytest.mark.parametrize("rate", [2, 10, 20])
@pytest.mark.parametrize("gap", [0.8, 1.2])
def test_a_link_being_cleared_after_its_restore_record_is_not_a_rollback_that_left_it_on(
    tmp_path: Path, rate: float, gap: float
) -> None:
    """The rules came off 0.5 s after the restore was recorded, and the next experiment degraded the link again
    0.8 s after it: most of the zone's hops in between began while the rules were still on, and with five of
    them (10 requests a second and more) their median said "did not end at its restore" (coverage unverified),
    while at 2 a second the window held too few to judge and passed. The restore's counter snapshot is taken
    once the primitive acted: the link is judged back from there."""
    v = verify(_link_then(tmp_path, rate, gap, 0.5))
    assert v.passed, why(v)


@pytest.mark.parametrize("rate", [10, 20])
def test_a_rollback_that_left_the_link_slow_is_still_unverified(tmp_path: Path, rate: float) -> None:
    """The broken counterpart: the latency stays on after the restore (and its snapshot)."""
    v = verify(_link_then(tmp_path, rate, 1.2, 0.5, lingers=True))
    assert COVERAGE in failed(v), why(v)
    assert any("did not end at its restore" in m and "degrade-link-lax-1" in m for m in why(v)), why(v)


# -- 4. the zone's next fault a moment after a declared single point of failure's cascade -------------------------
def _spof_then(tmp_path: Path, rate: float, hold: float, recovery_s: float = 1.0) -> Path:
    """The Region's postgres primary down 30-40, declared a single point of failure (every zone's coffee queries
    fail meanwhile, 4 in 5); LAX's product-api killed 0.5 s after it was back, for `hold` s (the Region keeps
    serving LAX `recovery_s` after that restore)."""
    from harness.chaos import expected as declared_errors
    from tests.test_verify_expected import DB, DECLARATION, INJECT, RESTORE, START, _rewrite

    k = FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), RESTORE + 0.5,
                  RESTORE + 0.5 + hold, 0.2, recovery_s)  # fmt: skip
    d = write_run(tmp_path / "run", Scenario(T, duration_s=RESTORE + hold + 62, rate_per_zone=rate, faults=[DB, k],
                                             replace_pods=False))  # fmt: skip
    seen = [0]

    def fail(r: dict[str, object]) -> dict[str, object]:
        if START + INJECT <= float(r["ts"]) <= START + RESTORE:  # type: ignore[arg-type]
            seen[0] += 1
            ok = seen[0] % 5 == 0  # the shop page needs no database, the coffee queries do
            r.update(ok=ok, status=200, error=None if ok else "graphql: dial tcp 127.0.0.1:5432: connection refused")
        return r

    _rewrite(d / "requests.jsonl", fail)
    fields = declared_errors.timeline_fields(DECLARATION)
    _rewrite(d / "chaos.jsonl", lambda c: {**c, **fields} if c["phase"] == "inject" and c["fault"] == DB.fault else c)
    return d


@pytest.mark.parametrize("rate", [4, 20])
def test_a_next_fault_right_after_a_declared_cascade_is_left_its_own_recovery(tmp_path: Path, rate: float) -> None:
    """LAX's product-api killed half a second after the database's cascade ended, and held 65 s: the pair's
    recovery after the cascade was measured over maxRecoveryS and found the kill's failover to the Region
    there ("not back in-zone within maxRecoveryS after the cascade"), which a kill started a second later, or
    held 55 s, did not meet. The kill's own recovery shows the pair back."""
    v = verify(_spof_then(tmp_path, rate, 65))
    assert v.passed, why(v)


@pytest.mark.parametrize("rate", [4, 20])
def test_a_pair_that_never_comes_back_after_the_next_fault_still_fails(tmp_path: Path, rate: float) -> None:
    v = verify(_spof_then(tmp_path, rate, 65, recovery_s=1000))
    assert FALLBACK in failed(v), why(v)
    assert any("fault kill-product-api-lax never recovers" in m for m in why(v)), why(v)
