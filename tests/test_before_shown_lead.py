"""An experiment's steady state before its method: checked, or shown by the experiment run just before it.

`harness e2e` runs its experiments back to back; the steady state after one
and the steady state before the next asked the same probes a moment apart,
nothing done in between (1.5 s of the four shipped experiments' run). The
next one now runs with chaostoolkit's `after-method-only` strategy when the
previous journal shows its hypothesis held (`before_shown_by`), and the
verdict accepts a journal without a steady state before only then: before,
a journal without one passed whatever had happened (nothing asked for it).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from harness.backends import BackendOptions
from harness.chaos import judge_journal, plan_run, run_planned, write_plan
from harness.contract.journal import before_shown_by, journal_problems
from harness.verify.evidence import experiment as judge_experiment
from tests.test_chaos import _proc_exp

HYPOTHESIS = {"title": "ok", "probes": [{"type": "probe", "name": "every-shop-answers", "tolerance": True,
              "provider": {"type": "python", "module": "harness.chaos.probes", "func": "every_shop_answers",
                           "arguments": {}}}]}  # fmt: skip
MET = {"steady_state_met": True, "probes": [{"activity": {"name": "every-shop-answers"}, "status": "succeeded"}]}


def _journal(start: str, end: str, before: Any = MET, after: Any = MET, **kw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "experiment": {"title": "x", "steady-state-hypothesis": copy.deepcopy(HYPOTHESIS)},
        "start": start, "end": end, "status": "completed", "deviated": False,
        "steady_states": {"before": before, "after": after, "during": []},
        "run": [{"activity": {"name": "kill it"}, "status": "succeeded"}], "rollbacks": [],
    }  # fmt: skip
    doc.update(kw)
    return doc


FIRST = _journal("2026-12-06T09:00:00+00:00", "2026-12-06T09:00:20+00:00")
SECOND = _journal("2026-12-06T09:00:20.1+00:00", "2026-12-06T09:00:40+00:00", before=None)
UNSHOWN = "the steady state before the method was never checked"


def test_a_journal_without_its_steady_state_before_fails_alone() -> None:
    """Reproducer: HEAD passed it (nothing said the state the faults began from was ever looked at)."""
    problems = journal_problems(SECOND, ["kill it"])
    assert any(p.startswith(UNSHOWN) for p in problems), problems
    assert judge_journal(SECOND, ["kill it"], None) is not None


def test_the_previous_experiments_held_steady_state_after_shows_it() -> None:
    assert before_shown_by(FIRST, SECOND["experiment"])
    assert journal_problems(SECOND, ["kill it"], FIRST) == []
    assert judge_journal(SECOND, ["kill it"], FIRST) is None


@pytest.mark.parametrize(
    "previous",
    [
        _journal("2026-12-06T09:00:00+00:00", "2026-12-06T09:00:20+00:00",
                 after={"steady_state_met": False, "probes": []}, deviated=True),
        _journal("2026-12-06T09:00:00+00:00", "2026-12-06T09:00:20+00:00", after=None),
        _journal("2026-12-06T09:00:00+00:00", "2026-12-06T09:00:20+00:00", status="failed"),
        _journal("2026-12-06T09:00:00+00:00", "2026-12-06T09:00:20+00:00",
                 rollbacks=[{"activity": {"name": "heal"}, "status": "failed"}]),
        _journal("2026-12-06T09:00:00+00:00", "2026-12-06T09:00:25+00:00"),  # still running when SECOND began
        _journal("2026-12-06T09:00:00+00:00", "2026-12-06T09:00:20+00:00",
                 experiment={"title": "x", "steady-state-hypothesis": {**HYPOTHESIS, "probes": [
                     {**HYPOTHESIS["probes"][0], "provider": {**HYPOTHESIS["probes"][0]["provider"],
                                                              "arguments": {"zones": "us-west-2-lax-1a"}}}]}}),
        None,
    ],
    ids=["deviated", "no-after", "failed", "rollback-failed", "overlapping", "other-hypothesis", "first"],
)  # fmt: skip
def test_anything_less_leaves_it_unverified(previous: dict[str, Any] | None) -> None:
    assert any(p.startswith(UNSHOWN) for p in journal_problems(SECOND, ["kill it"], previous))


def test_a_hypothesis_that_reads_the_configuration_is_never_taken_as_shown() -> None:
    """`${zone}` in two experiments may stand for two zones: the same text is not the same question."""
    probe = {**HYPOTHESIS["probes"][0], "provider": {**HYPOTHESIS["probes"][0]["provider"],
                                                     "arguments": {"zones": "${zone}"}}}  # fmt: skip
    exp = {"title": "x", "steady-state-hypothesis": {**HYPOTHESIS, "probes": [probe]}}
    assert not before_shown_by({**FIRST, "experiment": exp}, exp)


def test_an_experiment_without_a_hypothesis_has_nothing_to_check_before() -> None:
    bare = {**SECOND, "experiment": {"title": "x"}}
    assert journal_problems(bare, ["kill it"]) == []


def test_the_verdict_reads_the_journal_planned_just_before() -> None:
    exp = {"id": "02-x", "actions": ["kill it"]}
    assert judge_experiment(exp, SECOND, "", set(), None).status == "fail"
    result = judge_experiment(exp, SECOND, "", set(), FIRST)
    assert UNSHOWN not in result.message


# -- real chaostoolkit: the second of two experiments with one hypothesis asks it only after its method ------
def _counting_probe(tmp_path: Path, name: str, count: Path) -> str:
    """An executable that succeeds and appends a line to `count` each time it is asked."""
    script = tmp_path / name
    script.write_text(f"#!/bin/sh\necho {name} >> {count}\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.slow
@pytest.mark.parametrize("same", [True, False], ids=["same-hypothesis", "another-hypothesis"])
def test_back_to_back_experiments_ask_a_shown_steady_state_once(tmp_path: Path, same: bool) -> None:
    run, count = tmp_path / "run", tmp_path / "asked"
    opts = BackendOptions(name="local", cluster="nothere")
    probe = _counting_probe(tmp_path, "gate", count)
    planned = plan_run([_proc_exp(tmp_path, "alpha", probe),
                        _proc_exp(tmp_path, "beta", probe if same else _counting_probe(tmp_path, "other", count))],
                       None, None)  # fmt: skip
    write_plan(run, planned)
    first = run_planned(planned[0], run, opts)
    second = run_planned(planned[1], run, opts, previous=first)
    assert first.ok and second.ok, (first.reason, second.reason)
    journal = json.loads(second.journal.read_text())
    asked = count.read_text().split()
    if same:
        assert journal["steady_states"]["before"] is None and journal["steady_states"]["after"]["steady_state_met"]
        assert len(asked) == 3  # alpha's before and after, beta's after
    else:
        assert journal["steady_states"]["before"]["steady_state_met"] is True
        assert len(asked) == 4
