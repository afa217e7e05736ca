"""Correct meshes failed or left unverified by timing, third pass (task t53a): each finding a synthetic run written
as a real mesh records it, next to its control (the broken twin still fails)."""

from __future__ import annotations

from pathlib import Path

from harness.contract.users import users_quiet_bound
from harness.verify import COVERAGE
from harness.verify.synth import Scenario, write_run
from tests.test_verify_audit import why
from tests.test_verify_soundness import KILL, LAX, T, failed
from tests.verdicts import rows, verify, write_rows


# -- 1. coverage's "after" window follows the users' think time, not maxRecoveryS alone ----------------------------
def _quiet_shoppers(tmp_path: Path, name: str, wait: tuple[float, float] | None, quiet: tuple[float, float]) -> Path:
    """The reference run (LAX's product-api killed 30-50 s, maxRecoveryS 60 s) whose LAX shoppers were all between
    two requests for `quiet` (users thinking up to `wait`, users.json; None: not recorded), while the zone's probes
    went on (their requests are the harness's own: endpoint `probe`, the hops they make carry the recovery)."""
    sc = Scenario(T, duration_s=150, rate_per_zone=4, faults=[KILL], users_wait=wait)
    d = write_run(tmp_path / name, sc)
    reqs = rows(d / "requests.jsonl")
    t0 = min(r["ts"] for r in reqs)
    for r in reqs:
        if r["zone"] == LAX and quiet[0] <= r["ts"] - t0 < quiet[1]:
            r["endpoint"], r["name"] = "probe", "GET /api probe"
    write_rows(d / "requests.jsonl", reqs)
    return d


SLOW = (55.0, 55.0)  # EH_WAIT=55: users_quiet_bound 68 s, past maxRecoveryS (60 s)


def test_users_thinking_past_max_recovery_are_seen_after_the_restore(tmp_path: Path) -> None:
    """FINDING. Users configured to think 55 s between requests (EH_WAIT=55, users.json); LAX's shoppers were all
    between two requests from 47 s to 113 s (66 s: within their quiet bound, 68 s), their next one 63 s after the
    restore at 50 s; the zone's probes went on and show the recovery. Coverage's "after" window ran maxRecoveryS
    (60 s) past the restore and no further: "no user requests entering ... after the fault: recovery unverified",
    though e2e's cool-down waits for that request (to the same quiet bound) and it is on record. Now the window
    runs to the users' quiet bound where that is longer than maxRecoveryS: passes."""
    assert users_quiet_bound(SLOW[1]) > 60.0 + 113.0 - 110.0
    v = verify(_quiet_shoppers(tmp_path, "slow", SLOW, (47.0, 113.0)))
    assert v.passed, why(v)


def test_control_fast_or_unrecorded_users_quiet_after_the_restore_are_unverified(tmp_path: Path) -> None:
    """Control: the same quiet spell with users thinking 0.1-0.5 s (recorded) or no record of their think time is
    users gone: the "after" window is maxRecoveryS, as before, and holds no shopper's request."""
    for name, wait in (("fast", (0.1, 0.5)), ("unrecorded", None)):
        v = verify(_quiet_shoppers(tmp_path, name, wait, (47.0, 113.0)))
        assert failed(v) == {COVERAGE}, (name, why(v))
        assert f"no user requests entering {LAX} after the fault" in v.invariant(COVERAGE).message, why(v)


def test_control_slow_users_gone_past_their_quiet_bound_are_unverified(tmp_path: Path) -> None:
    """Control: the slow users' shoppers quiet from 47 s to the end of the run (users gone), or to 121 s (74 s,
    past their 68 s bound: the request after it comes too late to be their next one): unverified."""
    for name, quiet in (("gone", (47.0, 1000.0)), ("late", (47.0, 121.0))):
        v = verify(_quiet_shoppers(tmp_path, name, SLOW, quiet))
        assert failed(v) == {COVERAGE}, (name, why(v))
        text = v.invariant(COVERAGE).message
        assert f"no user requests entering {LAX} after the fault" in text or "no user request entering it" in text, text
