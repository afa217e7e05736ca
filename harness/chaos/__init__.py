"""Chaos: the harness's chaostoolkit extension and the runner for experiments.

Experiments live in `experiments/` in chaostoolkit's own format and run with
plain `chaos run`; the runner here runs them the way the harness needs:

- every experiment is checked before anything starts (`experiment.plan_experiment`:
  functions, argument names, roles, zones, services, the backend's capabilities);
- the run's plan goes to ``plan.json`` before the first experiment starts, and
  each experiment gets ``chaos/<NN>-<stem>/`` with ``experiment.json`` (as run:
  roles resolved), ``journal.json`` and ``chaos.log``;
- chaostoolkit runs in its own process (stdout not inherited, or a pipeline
  on `chaos run` hangs), rollbacks always (chaostoolkit skips them on a
  deviated hypothesis by default), the timeline in the run directory;
- the journal is *judged*: chaostoolkit 1.44 says ``completed`` with
  ``deviated: false`` when the steady state failed *before* the method and
  the method never ran, so the status alone proves nothing (`judge_journal`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.backends import BackendOptions
from harness.chaos.experiment import PlannedExperiment, Require, check_experiment, load_experiment, plan_experiment
from harness.chaos.launch import Launcher, Prestarted
from harness.chaos.timeline import FaultKind, record
from harness.contract.journal import AFTER_ONLY, before_shown_by, journal_problems
from harness.contract.rundir import CHAOS_DIR, EXPERIMENT_FILE, JOURNAL_FILE, PLAN_FILE
from harness.errors import BackendError, InputError
from harness.interrupt import with_default_stop_signals
from harness.topology import Topology


@dataclass
class ChaosResult:
    id: str
    status: str  # chaostoolkit journal status: completed | failed | aborted | interrupted | missing
    deviated: bool
    journal: Path
    returncode: int
    reason: str | None  # why the experiment did not do what it was meant to; None when it did
    journal_data: dict[str, Any] | None = None  # the journal as read (None: none, or unreadable)

    @property
    def ok(self) -> bool:
        return self.reason is None


# harness.chaos.actions function -> the backend primitive it injects (base.CHAOS_PRIMITIVES)
ACTION_PRIMITIVES = {
    "kill_pod": "kill_pod",
    "make_unready": "set_pod_unready",
    "kill_node": "kill_node",
    "zone_outage": "zone_outage",
    "degrade_link": "set_link",
    "partition_zone": "partition_zone",
}


def required_primitives(data: dict[str, Any]) -> list[tuple[int, str, str]]:
    """(method index, action func, primitive) of every harness action in an experiment's method."""
    out = []
    for i, act in enumerate(data.get("method") or []):
        prov = (act or {}).get("provider") or {}
        func = str(prov.get("func", ""))
        if prov.get("module") == "harness.chaos.actions" and func in ACTION_PRIMITIVES:
            out.append((i, func, ACTION_PRIMITIVES[func]))
    return out


def check_capabilities(path: Path, backend: Any) -> None:
    """InputError (exit 2) when the experiment needs a fault this backend cannot perform on this cluster.

    Run before the experiment starts, so a fault the cluster cannot do (the
    service link on EKS, netem on a kernel without sch_netem) is refused with
    nothing injected. Asked for no zone in particular: what depends on the
    zone (a partition on EKS, whose nodes enforce NetworkPolicy or not) needs
    the zones resolved, which `plan_run` with a topology and
    `require=backend.require_capability` does within the full check.
    """
    data = check_experiment(path)
    for i, func, primitive in required_primitives(data):
        try:
            backend.require_capability(primitive)
        except BackendError as exc:
            raise InputError(str(path), f"method[{i}].provider.func", f"{func}: {exc}") from None


def chaos_bin() -> str:
    cand = Path(sys.executable).with_name("chaos")
    return str(cand) if cand.exists() else (shutil.which("chaos") or "chaos")


def judge_journal(
    journal: dict[str, Any] | None, planned_actions: list[str], previous: dict[str, Any] | None = None
) -> str | None:
    """Why this run of an experiment does not count (one line), or None when it ran as planned.

    The rules are `harness.contract.journal`'s, the same the verifier's
    `experiment-ran` applies: a skipped method, a steady state before it
    neither checked nor shown by `previous` (the journal of the experiment
    run just before), a status other than ``completed``, a planned action
    missing or failed, any other activity or rollback that did not succeed,
    a deviated steady state after the method.
    """
    if journal is None:
        return "no journal: chaostoolkit did not run the experiment"
    return "; ".join(journal_problems(journal, planned_actions, previous)) or None


def _existing_plan(run_dir: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads((run_dir / PLAN_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    exps = data.get("experiments") if isinstance(data, dict) else None
    return [e for e in exps or [] if isinstance(e, dict)]


def plan_run(
    paths: list[Path],
    topology: Topology | None,
    capabilities: frozenset[str] | None,
    run_dir: Path | None = None,
    require: Require | None = None,
) -> list[PlannedExperiment]:
    """Check every experiment (InputError on the first problem, nothing written) and number them.

    Numbers continue those already in `run_dir`'s plan, so a game day's
    `harness chaos` runs into one directory never overwrite each other.
    """
    first = len(_existing_plan(run_dir)) + 1 if run_dir is not None else 1
    planned = [plan_experiment(p, topology, capabilities, require=require) for p in paths]
    for i, p in enumerate(planned):
        p.id = f"{first + i:02d}-{Path(p.file).stem}"
    return planned


def write_plan(run_dir: Path, planned: list[PlannedExperiment]) -> Path:
    """``plan.json``: the experiments the run is meant to run (added to an existing plan), atomically."""
    run_dir.mkdir(parents=True, exist_ok=True)
    known = _existing_plan(run_dir)
    ids = {e.get("id") for e in known}
    doc = {"experiments": known + [p.plan_entry() for p in planned if p.id not in ids]}
    path = run_dir / PLAN_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def chaos_env(run_dir: Path, opts: BackendOptions) -> dict[str, str]:
    """The environment of a run's `chaos run`: the backend's options, the run directory, this harness importable."""
    env = {**os.environ, **opts.env(), "EH_RUN_DIR": str(run_dir.resolve())}
    env["PYTHONPATH"] = os.pathsep.join(
        x for x in (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")) if x
    )
    return env


def run_planned(
    p: PlannedExperiment,
    run_dir: Path,
    opts: BackendOptions,
    timeout_s: float = 900,
    started: Prestarted | None = None,
    previous: ChaosResult | None = None,
) -> ChaosResult:
    """Run one planned experiment into ``run_dir/chaos/<id>/`` with `chaos run`, rollbacks always, and judge it.

    `started`: a `chaos` process started ahead with `chaos_env(run_dir, opts)` (`harness.chaos.launch`), which
    runs it instead of a new one. `previous`: the experiment run just before it, with nothing in between; when
    its journal ended by showing this one's steady state (`before_shown_by`), chaostoolkit checks that state
    only after the method (`AFTER_ONLY`): asked again, it repeated the answer of a moment ago.
    """
    exp_dir = run_dir / CHAOS_DIR / p.id
    exp_dir.mkdir(parents=True, exist_ok=True)
    exp_file = exp_dir / EXPERIMENT_FILE
    exp_file.write_text(json.dumps(p.data, indent=2) + "\n", encoding="utf-8")
    journal_path = exp_dir / JOURNAL_FILE
    # --no-version-check: no call to chaostoolkit.org per experiment (CI runners and
    # game-day hosts may have no internet; the lookup waits for its timeout there)
    before = previous.journal_data if previous is not None else None
    shown = ["--hypothesis-strategy", AFTER_ONLY] if before_shown_by(before, p.data) else []
    argv = ["--no-version-check", "--log-file", str(exp_dir / "chaos.log"),
            "run", "--rollback-strategy", "always", *shown,
            "--journal-path", str(journal_path), "--no-verify-tls", str(exp_file)]  # fmt: skip
    if started is not None:
        proc = started.go(argv)
    else:
        proc = subprocess.Popen(
            with_default_stop_signals([chaos_bin(), *argv]),  # its rollbacks run on our SIGINT even if we ignore it
            env=chaos_env(run_dir, opts),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        rc = proc.wait(timeout=timeout_s)
    except BaseException:
        # Ctrl-C or timeout: let chaostoolkit run its rollbacks (SIGINT), then make sure it is gone
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        raise
    journal: dict[str, Any] | None
    try:
        loaded = json.loads(journal_path.read_text(encoding="utf-8"))
        journal = loaded if isinstance(loaded, dict) else None
    except (FileNotFoundError, json.JSONDecodeError):
        journal = None
    reason = judge_journal(journal, p.actions, before)
    if journal is None:
        reason = f"no journal: chaostoolkit exited {rc} (see {exp_dir / 'chaos.log'})"
    status = str(journal.get("status")) if journal is not None else "missing"
    deviated = bool(journal.get("deviated")) if journal is not None else False
    return ChaosResult(p.id, status, deviated, journal_path, rc, reason, journal)


def run_experiment(
    experiment: Path,
    run_dir: Path,
    opts: BackendOptions,
    topology: Topology | None = None,
    capabilities: frozenset[str] | None = None,
    timeout_s: float = 900,
    require: Require | None = None,
) -> ChaosResult:
    """Check, plan (added to ``plan.json``) and run one experiment into `run_dir`."""
    (p,) = plan_run([experiment], topology, capabilities, run_dir, require)
    write_plan(run_dir, [p])
    return run_planned(p, run_dir, opts, timeout_s)


__all__ = [
    "ACTION_PRIMITIVES",
    "CHAOS_DIR",
    "PLAN_FILE",
    "ChaosResult",
    "FaultKind",
    "Launcher",
    "PlannedExperiment",
    "Prestarted",
    "chaos_env",
    "check_capabilities",
    "check_experiment",
    "judge_journal",
    "load_experiment",
    "plan_experiment",
    "plan_run",
    "record",
    "required_primitives",
    "run_experiment",
    "run_planned",
    "write_plan",
]
