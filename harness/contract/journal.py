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


def journal_problems(journal: dict[str, Any], planned_actions: list[str]) -> list[str]:
    """Every reason this journal does not show the experiment run as planned (empty: it did).

    A problem each: the steady state before the method not met (the method was
    skipped); a status other than `completed`; a planned action missing from
    `run` or not succeeded; any other method activity or any rollback that did
    not succeed (a fault not undone); the steady state after the method
    deviated.
    """
    problems: list[str] = []
    states = journal.get("steady_states") or {}
    before = states.get("before") if isinstance(states, dict) else None
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
    if journal.get("deviated") is True:
        after = states.get("after") if isinstance(states, dict) else None
        probes = failed_probes(after) if isinstance(after, dict) else ""
        problems.append("the steady state after the method did not hold (deviated)" + (f": {probes}" if probes else ""))
    return problems
