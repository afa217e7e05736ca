"""Invariants judged from the run's documents rather than its record streams.

- `config`: Consul's own view before traffic (preflight.json): every
  config-entry CRD synced, every discovery chain in-zone first and then the
  Region only, every expected instance passing.
- `experiment-ran`: the run completed (run.json), and plan.json against each experiment's chaostoolkit journal,
  by the rules the chaos runner applies too (`harness.contract.journal`: the
  journal's status alone proves nothing), every fault an action reports
  against the timeline, and every fault of a kind the verdict knows how to judge.
- The intentions half of `call-graph` (Consul's evaluation of the intentions
  for every undeclared source -> destination, and a refused probe call).

Missing evidence is never a pass: a run without preflight.json has an
unverified config, a run with chaos records but no plan an unverified
experiment list.
"""

from __future__ import annotations

import json
from typing import Any

from harness.contract.journal import fault_ids, journal_problems, runs_of, unjudged
from harness.contract.rundir import CHAOS_DIR, CHAOS_FILE, JOURNAL_FILE, PLAN_FILE, PREFLIGHT_FILE, RUN_FILE
from harness.verify.rundata import FAULT_KINDS, RunData, unread_failures
from harness.verify.verdict import EXPERIMENT_RAN, FAIL, PASS, UNVERIFIED, CheckResult

CONFIG_CHECKS = ("crd-synced", "discovery-chain", "instances-passing")
INTENTION_CHECKS = ("intentions", "refused-probe")


def _checks(run: RunData) -> list[dict[str, Any]]:
    raw = (run.preflight or {}).get("checks")
    return [c for c in raw if isinstance(c, dict)] if isinstance(raw, list) else []


def _missing_preflight(run: RunData) -> str:
    bad = run.unreadable.get(PREFLIGHT_FILE)
    if bad is not None:
        return f"{PREFLIGHT_FILE} is unreadable ({bad.text()})"
    if run.preflight is None:
        return f"no {PREFLIGHT_FILE} (the preflight never ran or the run stopped before it)"
    return ""


def chain_text(detail: Any) -> str:
    """A discovery chain's targets in order, as a person reads it: `a -> b -> c`."""
    targets = detail.get("targets") if isinstance(detail, dict) else None
    if not isinstance(targets, list) or not targets:
        return ""
    names = []
    for t in targets:
        if isinstance(t, dict):
            names.append(str(t.get("service") or t.get("id") or t.get("name") or json.dumps(t, sort_keys=True)))
        else:
            names.append(str(t))
    return " -> ".join(names)


def check_result(c: dict[str, Any]) -> CheckResult:
    kind = str(c.get("check") or "?")
    subject = str(c.get("subject") or "?")
    ok = c.get("ok") is True
    msg = str(c.get("message") or "")
    detail = c.get("detail") if isinstance(c.get("detail"), dict) else {}
    text = f"{kind} {subject}: {msg}" if msg else f"{kind} {subject}"
    if kind == "discovery-chain" and not ok:
        chain = chain_text(detail)
        if chain and chain not in text:
            text += f" (chain: {chain})"
    return CheckResult(subject=f"{kind} {subject}", status=PASS if ok else FAIL, message=text, detail=detail or {})


def config(run: RunData) -> tuple[list[str], list[CheckResult], str]:
    """Failures, checks and the pass text of the `config` invariant."""
    missing = _missing_preflight(run)
    if missing:
        return [f"config: {missing}: Consul's configuration is unverified"], [], ""
    checks = [c for c in _checks(run) if c.get("check") in CONFIG_CHECKS]
    results = [check_result(c) for c in checks]
    failures = [f"config: {r.message}" for r in results if r.status == FAIL]
    for kind in CONFIG_CHECKS:
        if not any(c.get("check") == kind for c in checks):
            failures.append(f"config: {PREFLIGHT_FILE} has no {kind} checks (unverified)")
            results.append(CheckResult(subject=kind, status=UNVERIFIED, message=f"no {kind} checks"))
    if run.preflight is not None and run.preflight.get("ok") is False and not failures:
        failures.append(f"config: {PREFLIGHT_FILE} says ok=false but names no failed check")
    counts = ", ".join(f"{sum(1 for c in checks if c.get('check') == k)} {k}" for k in CONFIG_CHECKS)
    return failures, results, f"every preflight check passed ({counts})"


def intentions(run: RunData) -> tuple[list[str], list[CheckResult], str]:
    """The intentions evidence of `call-graph`: Consul denies every undeclared call."""
    missing = _missing_preflight(run)
    if missing:
        return [f"call-graph: {missing}: whether intentions deny undeclared calls is unverified"], [], ""
    checks = [c for c in _checks(run) if c.get("check") in INTENTION_CHECKS]
    results = [check_result(c) for c in checks]
    failures = [f"call-graph: {r.message}" for r in results if r.status == FAIL]
    n_int = sum(1 for c in checks if c.get("check") == "intentions")
    n_probe = sum(1 for c in checks if c.get("check") == "refused-probe")
    if n_int == 0:
        failures.append(f"call-graph: {PREFLIGHT_FILE} has no intentions checks: undeclared calls unverified")
        results.append(CheckResult(subject="intentions", status=UNVERIFIED, message="no intentions checks"))
    probe = (
        f", {n_probe} refused probe calls" if n_probe else ", no refused probe call (the backend could not make one)"
    )
    return failures, results, f"intentions deny {n_int} undeclared calls{probe}"


def experiment(
    exp: dict[str, Any],
    journal: dict[str, Any] | None,
    unreadable: str,
    recorded: set[str],
    previous: dict[str, Any] | None = None,
) -> CheckResult:
    """One planned experiment against its journal, and the faults its actions report against the timeline.

    `previous`: the journal of the experiment planned just before it, which may have shown its steady state
    before the method (`harness.contract.journal.before_shown_by`).

    `recorded`: the fault ids chaos.jsonl holds. An action that says it made
    fault F while the timeline has no F acted where nobody measured (run
    without the run directory, records lost): with no fault to judge,
    fallback and coverage had nothing to fail on and the run passed.
    """
    exp_id = str(exp.get("id") or "?")
    label = f"experiment {exp_id}" + (f" ({exp['file']})" if exp.get("file") else "")
    planned = [str(a) for a in exp.get("actions") or []]
    detail: dict[str, Any] = {"planned_actions": planned}
    if journal is None:
        why = unreadable or f"no journal ({CHAOS_DIR}/{exp_id}/{JOURNAL_FILE}): it never ran or stopped before the end"
        return CheckResult(exp_id, FAIL, f"experiment-ran: {label}: {why}", detail)
    detail.update(status=journal.get("status"), deviated=journal.get("deviated"))
    problems = journal_problems(journal, planned, previous)
    ran: list[str] = []
    for action in planned:
        entries = runs_of(journal, action)
        if not entries or any(r.get("status") != "succeeded" for r in entries):
            continue  # journal_problems names it
        unrecorded = [f for r in entries for f in fault_ids(r.get("output")) if f not in recorded]
        if why := next((w for r in entries if (w := unjudged(r))), ""):
            problems.append(f"action '{action}' {why}: the fault it was to make is unverified")
        elif unrecorded:
            problems.append(
                f"action '{action}' made fault {', '.join(unrecorded)} but {CHAOS_FILE} has no record of it: "
                "its effect is unverified"
            )
        else:
            ran.append(action)
    detail["actions_succeeded"] = ran
    if problems:
        return CheckResult(exp_id, FAIL, f"experiment-ran: {label}: " + "; ".join(problems), detail)
    return CheckResult(exp_id, PASS, f"{label}: {len(ran)} actions succeeded", detail)


def run_completed(run: RunData) -> tuple[list[str], list[CheckResult]]:
    """A run that did not complete (run.json status other than complete, no `ended`, or no run.json) fails.

    Its records stop where the harness stopped: the faults it never injected, the recovery of the one under way,
    the sidecars' 'end' counter snapshot, the hops it never collected. A verdict on what was recorded used to
    pass such a run with a note ("partial run"): what it never recorded was unverified, and unverified is a
    failure. The verdict is still written, and still says where the run stopped.
    """
    meta = run.meta
    if not meta.present:
        text = f"experiment-ran: no {RUN_FILE}: whether the run completed is not recorded (unverified)"
    elif meta.partial:
        ended = "" if meta.ended is not None else ", never ended"
        text = (
            f"experiment-ran: the run did not complete ({RUN_FILE}: status {meta.status or '?'} at stage "
            f"{meta.stage or '?'}{ended}): what it did not record is unverified"
        )
    else:
        return [], []
    detail = {"status": meta.status, "stage": meta.stage, "ended": meta.ended, "present": meta.present}
    return [text], [CheckResult(RUN_FILE, UNVERIFIED, text, detail)]


def experiment_ran(run: RunData, chaos_records: int) -> tuple[list[str], list[CheckResult], str]:
    """Failures, checks and pass text of `experiment-ran`; a run that did not complete fails it
    (`run_completed`)."""
    done_failures, done_checks = run_completed(run)
    failures, checks, text = _experiments(run, chaos_records)
    # a fault of a kind this harness does not judge ran, but what it should have left standing is unknown
    odd = [
        f"experiment-ran: fault {f.fault} is of a kind this harness does not know ({f.unknown_kind!r}, action "
        f"{f.action!r}; known: {', '.join(FAULT_KINDS)}): which invariants it had to keep is unverified"
        for f in run.faults
        if f.unknown_kind is not None
    ]
    # a timeline line the loader skipped held an inject or a restore no fault check saw: the fault is unjudged. A
    # torn last line too: `timeline.record` appends each line in one write, so a torn one is a short write (a
    # full disk) or a copy cut short, never a writer's normal end, and what it recorded is lost all the same
    unread = unread_failures(EXPERIMENT_RAN, (sk for sk in run.skipped if sk.file == CHAOS_FILE), "faults")
    return done_failures + failures + odd + unread, done_checks + checks, text


def _experiments(run: RunData, chaos_records: int) -> tuple[list[str], list[CheckResult], str]:
    bad_plan = run.unreadable.get(PLAN_FILE)
    if bad_plan is not None:
        return (
            [f"experiment-ran: {PLAN_FILE} is unreadable ({bad_plan.text()}): what was planned is unverified"],
            [],
            "",
        )
    if run.plan is None:
        if chaos_records or run.journals:
            what = f"{chaos_records} chaos records" if chaos_records else f"{len(run.journals)} journals"
            return (
                [f"experiment-ran: {what} but no {PLAN_FILE}: which experiments were meant to run is unverified"],
                [],
                "",
            )
        return [], [], "no experiments planned"
    exps = [e for e in run.plan.get("experiments") or [] if isinstance(e, dict)]
    if not exps and chaos_records:
        return [f"experiment-ran: {PLAN_FILE} plans no experiment but chaos.jsonl has {chaos_records} records"], [], ""
    results = []
    previous: dict[str, Any] | None = None
    for e in exps:
        exp_id = str(e.get("id") or "?")
        rel = f"{CHAOS_DIR}/{exp_id}/{JOURNAL_FILE}"
        bad = run.unreadable.get(rel)
        why = f"journal unreadable ({bad.text()})" if bad else ""
        journal = run.journals.get(exp_id)
        results.append(experiment(e, journal, why, {f.fault for f in run.faults}, previous))
        previous = journal
    failures = [r.message for r in results if r.status == FAIL]
    planned_ids = {str(e.get("id")) for e in exps}
    # every harness flow writes the plan before it runs an experiment: a journal the plan lacks ran outside it
    # (its faults are measured all the same), so what it was meant to do, and whether it did, is unverified. As
    # a note, an aborted experiment with a failed action passed once its plan entry was gone.
    for j in sorted(j for j in run.journals if j not in planned_ids):
        failures.append(
            f"experiment-ran: {CHAOS_DIR}/{j}/{JOURNAL_FILE} is the journal of an experiment {PLAN_FILE} does not "
            "plan: what it was meant to run is unverified"
        )
    n_actions = sum(len(r.detail.get("actions_succeeded", [])) for r in results)
    return failures, results, f"{len(results)} planned experiments ran every action ({n_actions} actions)"
