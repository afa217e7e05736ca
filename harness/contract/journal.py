"""One judgement of a chaostoolkit journal, shared by the chaos runner and the verifier.

The chaos runner (`harness.chaos.judge_journal`: `harness chaos`'s exit code,
`harness e2e`'s "the experiment did not run as planned") and the verifier's
`experiment-ran` invariant ask the same question of the same file. Two copies
of the rules drifted before (the verifier passed a failed rollback that the
runner failed), so both read this one list of problems.

Why the status alone proves nothing: chaostoolkit 1.19 / chaostoolkit-lib
1.44 write `status: completed, deviated: false` with an empty `run` when the
steady state failed *before* the method (the method was skipped), and
`completed` when an action raised (the action's own entry says `failed`).
So every planned action is looked up in `run[]`, and every other activity and
every rollback must have succeeded.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

HARNESS_MODULE = "harness.chaos"
# The harness actions that make a fault: each records it in chaos.jsonl and names it in its output (`fault`, or a
# burst's `faults`). The others (make_ready, restore_node, restore_zone, clear_link, heal_zone) undo one.
FAULT_ACTIONS = frozenset(
    {"kill_pod", "kill_pod_burst", "make_unready", "kill_node", "zone_outage", "degrade_link", "partition_zone"}
)


def unjudged(entry: dict[str, Any]) -> str:
    """Why a succeeded method action made a fault the verdict cannot judge ("" when it can).

    - `dry`: chaostoolkit skipped its provider and still wrote `succeeded`;
    - another module (chaosk8s, a process): whatever it did is in no record the verifier reads;
    - a harness fault action whose output names no fault: nothing says what, where or when it broke.
    """
    act = entry.get("activity") or {}
    if act.get("dry"):
        return f"was dry ({act.get('dry')!r}): chaostoolkit skipped it"
    prov = act.get("provider") or {}
    module = str(prov.get("module") or prov.get("type") or "?")
    if not module.startswith(HARNESS_MODULE):
        return f"comes from {module}, not {HARNESS_MODULE}: what it did is in no record the verdict reads"
    if prov.get("func") in FAULT_ACTIONS and not fault_ids(entry.get("output")):
        return "reported no fault (its output names none)"
    return ""


def fault_ids(output: Any) -> list[str]:
    """The fault ids an action's output says it recorded (`fault`, or each of a burst's `faults`)."""
    if not isinstance(output, dict):
        return []
    items = [output, *(f for f in output.get("faults") or [] if isinstance(f, dict))]
    return [str(i["fault"]) for i in items if i.get("fault")]


def last_line(exc: Any) -> str:
    """The message of an exception as chaostoolkit's journal stores it (a list of traceback lines)."""
    if isinstance(exc, list) and exc:
        return str(exc[-1]).strip()
    return str(exc).strip() if exc else ""


def failed_probes(state: dict[str, Any]) -> str:
    """The probes of a steady-state block that failed or missed their tolerance, one phrase each."""
    names = []
    for p in state.get("probes") or []:
        if not isinstance(p, dict):
            continue
        name = (p.get("activity") or {}).get("name", "?")
        if p.get("status") != "succeeded":
            names.append(f"probe '{name}' failed: {last_line(p.get('exception')) or p.get('status')}")
        elif p.get("tolerance_met") is False:
            names.append(f"probe '{name}' answered {json.dumps(p.get('output'))[:80]}, outside its tolerance")
    return ", ".join(names)


def _name(entry: Any) -> str:
    return str((entry.get("activity") or {}).get("name", "?")) if isinstance(entry, dict) else "?"


def _why(entry: Any) -> str:
    if not isinstance(entry, dict):
        return "not an activity record"
    return last_line(entry.get("exception")) or str(entry.get("status"))


def runs_of(journal: dict[str, Any], action: str) -> list[dict[str, Any]]:
    """The method entries of one planned action (an action may run more than once)."""
    return [r for r in journal.get("run") or [] if isinstance(r, dict) and _name(r) == action]


AFTER_ONLY = "after-method-only"
"""chaostoolkit's `--hypothesis-strategy` for an experiment whose steady state before the method the previous
experiment's steady state after it has just shown (`before_shown_by`)."""


def _hypothesis(experiment: Any) -> str | None:
    """An experiment's steady-state hypothesis as comparable text, or None when it has no probes or reads the
    configuration (``${...}``: two experiments' same text may then ask different things)."""
    ssh = experiment.get("steady-state-hypothesis") if isinstance(experiment, dict) else None
    if not isinstance(ssh, dict) or not ssh.get("probes"):
        return None
    text = json.dumps(ssh, sort_keys=True)
    return None if "${" in text else text


def _instant(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def before_shown_by(previous: dict[str, Any] | None, experiment: dict[str, Any]) -> bool:
    """Whether `previous`, the journal of the experiment run just before, ended by showing `experiment`'s own
    steady state: the same hypothesis (its probes and arguments, no configuration in them), held after a method
    that ran as planned, every rollback succeeded.

    Why: `harness e2e` runs its experiments back to back, and each one's steady state before its method asked
    the same probes the previous one's after had answered a moment earlier, with nothing done in between: in the
    four shipped experiments 1.5 s of the run repeated a question already answered (each look at every zone's
    shop waits for a coffees query, 1 + N database round trips over the slowest edge link). Such an experiment
    runs with `AFTER_ONLY`; its journal has no steady state before, and `journal_problems` accepts that only
    when this holds of the journal before it, which ended before it started.
    """
    if not isinstance(previous, dict):
        return False
    after = (previous.get("steady_states") or {}).get("after")
    text = _hypothesis(experiment)
    return (
        text is not None
        and text == _hypothesis(previous.get("experiment"))
        and isinstance(after, dict)
        and after.get("steady_state_met") is True
        and previous.get("status") == "completed"
        and previous.get("deviated") is False
        and all(isinstance(r, dict) and r.get("status") == "succeeded" for r in previous.get("rollbacks") or [])
    )


def _before_unshown(journal: dict[str, Any], previous: dict[str, Any] | None) -> str:
    """Why the steady state before this journal's method is unverified ("" when it was checked or shown)."""
    states = journal.get("steady_states") or {}
    experiment = journal.get("experiment")
    if (isinstance(states, dict) and states.get("before") is not None) or not isinstance(experiment, dict):
        return ""
    ssh = experiment.get("steady-state-hypothesis")
    if not isinstance(ssh, dict) or not ssh.get("probes"):
        return ""  # no hypothesis: nothing to check before the method
    if before_shown_by(previous, experiment):
        ended, began = _instant((previous or {}).get("end")), _instant(journal.get("start"))
        if ended is not None and began is not None and ended <= began:
            return ""
    return (
        "the steady state before the method was never checked, nor shown by the previous experiment's steady "
        "state after it (the same hypothesis, held, just before): the state the faults began from is unverified"
    )


def journal_problems(
    journal: dict[str, Any], planned_actions: list[str], previous: dict[str, Any] | None = None
) -> list[str]:
    """Every reason this journal does not show the experiment run as planned (empty: it did).

    A problem each: the steady state before the method not met (the method was
    skipped), or not checked unless `previous` (the journal of the experiment
    run just before) showed it (`before_shown_by`); a status other than
    `completed`; a planned action missing from `run` or not succeeded; any
    other method activity or any rollback that did not succeed (a fault not
    undone); the steady state after the method deviated.
    """
    problems: list[str] = []
    states = journal.get("steady_states") or {}
    before = states.get("before") if isinstance(states, dict) else None
    if unshown := _before_unshown(journal, previous):
        problems.append(unshown)
    if isinstance(before, dict) and before.get("steady_state_met") is False:
        probes = failed_probes(before)
        problems.append(
            "the steady state before the method did not hold"
            + (f" ({probes})" if probes else "")
            + ", so chaostoolkit skipped the method"
        )
    status = journal.get("status")
    if status != "completed":
        problems.append(f"journal status {status!r}")
    for action in planned_actions:
        entries = runs_of(journal, action)
        bad = [r for r in entries if r.get("status") != "succeeded"]
        if not entries:
            problems.append(f"action '{action}' never ran")
        elif bad:
            problems.append(f"action '{action}' failed: {_why(bad[0])}")
    for kind, entries in (("activity", journal.get("run") or []), ("rollback", journal.get("rollbacks") or [])):
        for r in entries:
            if (kind == "activity" and _name(r) in planned_actions) or (
                isinstance(r, dict) and r.get("status") == "succeeded"
            ):
                continue
            status_of = r.get("status") if isinstance(r, dict) else None
            problems.append(f"{kind} '{_name(r)}' {status_of}: {_why(r)}")
    after = states.get("after") if isinstance(states, dict) else None
    if journal.get("deviated") is True or (isinstance(after, dict) and after.get("steady_state_met") is False):
        probes = failed_probes(after) if isinstance(after, dict) else ""
        problems.append("the steady state after the method did not hold (deviated)" + (f": {probes}" if probes else ""))
    elif status == "completed" and (unchecked := _after_unchecked(journal, after)):
        problems.append(unchecked)
    return problems


def _after_unchecked(journal: dict[str, Any], after: Any) -> str:
    """Why the steady state after this journal's method is unverified ("" when it was checked).

    chaostoolkit leaves `steady_states.after` null when it never checked it (`--hypothesis-strategy
    before-method-only`, a runner that skipped it) and still says `completed`, not deviated: an experiment whose
    hypothesis has probes then shows nothing of the state its faults left, and passed as if it held."""
    experiment = journal.get("experiment")
    ssh = experiment.get("steady-state-hypothesis") if isinstance(experiment, dict) else None
    if not isinstance(ssh, dict) or not ssh.get("probes"):
        return ""  # no hypothesis: nothing to check after the method
    if isinstance(after, dict) and after.get("steady_state_met") is True and after.get("probes"):
        return ""
    return (
        "the steady state after the method was never checked (no probe of its hypothesis ran after it): the state "
        "the faults left is unverified"
    )
