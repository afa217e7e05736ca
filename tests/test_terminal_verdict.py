"""The verdict in the terminal: every "-" in the fault table says why, as the report does.

Synthetic runs (harness.verify.synth) through the real verifier, so the
reasons are checked against what the verifier actually measures, plus
hand-built verdicts for the branches a synthetic run cannot reach cheaply.
"""

from __future__ import annotations

import re
from io import StringIO
from pathlib import Path

from rich.console import Console

from harness.topology import load_topology
from harness.verify import print_summary
from harness.verify.synth import FaultSpec, Scenario, write_run
from harness.verify.verdict import FAIL, PASS, FaultResult, InvariantResult, PairResult, RunInfo, Verdict, iso, seconds
from harness.verify.why import failover_reason, fault_reasons, recovery_reason
from tests.conftest import REPO
from tests.verdicts import verify

T = load_topology(REPO / "fixtures" / "topology.yaml")
LAX, LAS, PHX = "us-west-2-lax-1a", "us-west-2-las-1a", "us-west-2-phx-2a"


def _terminal(v: Verdict) -> str:
    buf = StringIO()
    print_summary(v, Console(file=buf, width=400, force_terminal=False, color_system=None))
    return buf.getvalue()


def _fault_row(text: str, fault: str) -> str:
    return next(line for line in text.splitlines() if re.match(rf"│ {re.escape(fault)}\s+│", line))


def test_each_dash_in_the_fault_table_says_why(tmp_path: Path) -> None:
    sc = Scenario(
        T,
        duration_s=90,
        rate_per_zone=4,
        faults=[
            FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 15, 30, 1.0, 1.0),
            FaultSpec("zone-las", "zone-down", LAS, (), 40, 55, 0.0, 3.0, entry_down=True),
            FaultSpec("slow-link-phx", "link-degraded", PHX, (), 60, 75, 0.0, 0.0),
        ],
    )
    v = verify(write_run(tmp_path / "run", sc))
    text = _terminal(v)
    reasons = fault_reasons(v)
    # measured: a time with its resolution, no reason
    assert reasons["kill-product-api-lax"] == (None, None)
    assert "- (" not in _fault_row(text, "kill-product-api-lax")
    # the faults with no failover by design say so in their row; recovery is still measured
    assert reasons["zone-las"][0] == "n/a: the zone's callers are down with it"
    assert "- (n/a: the zone's callers are down with it)" in _fault_row(text, "zone-las")
    assert reasons["slow-link-phx"][0] == "n/a: traffic never left the zone (slow link, not down)"
    assert "- (n/a: traffic never left the zone (slow link, not down))" in _fault_row(text, "slow-link-phx")
    for f in v.faults:
        row = _fault_row(text, f.fault)
        assert not re.search(r"│\s*-\s*│", row), row  # never a bare dash


def test_a_fault_never_restored_and_one_without_traffic_say_why(tmp_path: Path) -> None:
    sc = Scenario(
        T,
        duration_s=80,
        rate_per_zone=4,
        faults=[FaultSpec("kill-phx", "service-down", PHX, ("product-api",), 30, None, 1.0, 1.0)],
        silent=[(LAX, 20.0, None)],
    )
    sc.faults.append(FaultSpec("kill-lax", "service-down", LAX, ("product-api",), 30, 45, 1.0, 1.0))
    v = verify(write_run(tmp_path / "run", sc))
    reasons = fault_reasons(v)
    assert reasons["kill-phx"][1] == "never restored"
    assert reasons["kill-lax"] == (
        "unverified: no traffic during the fault",
        "unverified: no traffic after the restore",
    )
    row = _fault_row(_terminal(v), "kill-lax")
    assert "- (unverified: no traffic during the fault)" in row and "FAIL" in row


def _fault(**kw: object) -> FaultResult:
    base: dict[str, object] = dict(fault="f", kind="service-down", zone=LAX, services=["product-api"], entry_down=False,
                                   inject=10.0, restore=20.0, failover_s=None, lost_requests=0, lost_hops=0,
                                   recovery_s=None, passed=False)  # fmt: skip
    base.update(kw)
    return FaultResult(**base)  # type: ignore[arg-type]


def _pair(status: str = FAIL, **counts: float | int | None) -> PairResult:
    return PairResult(LAX, "product-api", status, counts=dict(counts), fault="f")


def test_reasons_follow_the_fallback_pairs_of_the_fault() -> None:
    # no caller left up in the zone (public-api and product-api both killed): nothing to fail over
    assert failover_reason(_fault(), []) == "n/a: no mesh caller of it stays up in the zone"
    assert failover_reason(_fault(), [_pair(hops_during=40, failover_s=None)]) == "never failed over to the Region"
    assert failover_reason(_fault(failover_s=0.4), [_pair(hops_during=40)]) is None
    assert failover_reason(_fault(kind="partition"), []) == "n/a: the zone is cut off from the Region"
    assert recovery_reason(_fault(), []) == "n/a: no mesh call in the zone to come back"
    assert recovery_reason(_fault(), [_pair(hops_after_restore=30)]) == "never recovered"
    # an AZ caller without traffic after the restore is not a failure (the verifier only fails edge zones)
    assert recovery_reason(_fault(), [_pair(PASS, hops_after_restore=0)]) == "n/a: no traffic after the restore"
    assert recovery_reason(_fault(restore=None), []) == "never restored"


def test_reasons_read_the_fallback_invariant_of_that_fault_only() -> None:
    run = RunInfo("r", "t", "us-west-2", "ce", 0.0, 1.0, 0, 0, 0, 0, 0, 0, {}, {})
    other = PairResult(LAX, "product-api", FAIL, counts={"hops_during": 0}, fault="other")
    mine = PairResult(LAX, "product-api", FAIL, counts={"hops_during": 12}, fault="f")
    v = Verdict(run, [InvariantResult("fallback", False, "", pairs=[other, mine])], [_fault()])
    assert fault_reasons(v)["f"][0] == "never failed over to the Region"


def test_a_narrow_terminal_gets_one_block_per_fault_with_every_reason_on_its_line(tmp_path: Path) -> None:
    sc = Scenario(
        T,
        duration_s=90,
        rate_per_zone=4,
        faults=[
            FaultSpec("kill-product-api-lax", "service-down", LAX, ("product-api",), 15, 30, 1.0, 1.0),
            FaultSpec("zone-las", "zone-down", LAS, (), 40, 55, 0.0, 3.0, entry_down=True),
        ],
    )
    v = verify(write_run(tmp_path / "run", sc))
    buf = StringIO()
    print_summary(v, Console(file=buf, width=80, force_terminal=False, color_system=None))
    lines = buf.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines)
    kill = next(f for f in v.faults if f.fault == "kill-product-api-lax")
    start = lines.index(f" 1 kill-product-api-lax  {'PASS' if kill.passed else 'FAIL'}")
    assert lines[start + 1 : start + 5] == [
        f"   service-down in {LAX}, injected {iso(kill.inject)}",
        f"   failover {seconds(kill.failover_s, kill.failover_resolution_s)}",
        f"   recovery {seconds(kill.recovery_s, kill.recovery_resolution_s)}",
        f"   lost {kill.lost_requests} requests, {kill.lost_hops} hops",
    ]
    assert "   failover - (n/a: the zone's callers are down with it)" in lines
    assert not any(line.startswith("┃ fault") for line in lines)  # no folded nine-column table


def test_a_failure_in_both_an_invariant_and_its_fault_is_printed_once() -> None:
    """A fallback pair's failure is the invariant's and its fault's: the FAIL lines after the tables say it once
    (under the invariant), and a fault message the invariant's summary left out ("and N more") still under the
    fault."""
    run = RunInfo("r", "t", "us-west-2", "ce", 0.0, 1.0, 0, 0, 0, 0, 0, 0, {}, {})
    both, own = "fallback: lax -> product-api: not back in-zone (fault f)", "postgres: no failover to measure"
    left_out = "fallback: phx -> product-api: not back in-zone (fault f)"
    fault = _fault(messages=[own, both, left_out])
    v = Verdict(run, [InvariantResult("fallback", False, f"{both} (and 1 more)")], [fault])
    assert v.failure_messages == [f"{both} (and 1 more)", f"fault f: {own}", f"fault f: {left_out}"]
    assert [line for line in _terminal(v).splitlines() if line.startswith("FAIL ")] == [
        f"FAIL {m}" for m in v.failure_messages
    ]
