"""The game-day face of the fence (`harness.backends.fence`): the printed plan, the dry run, the abort.

Before `harness chaos` (or `harness e2e`) starts anything against a cluster
that can be planned (the existing backend), every action of the experiment is
resolved against the cluster as it is now (which nodes, which pods, of the
run and of other workloads, for how long) and printed, with the blast radius
and the steady state. Then:

- any action over the blast radius refuses the experiment (exit 2, one line
  naming the file and the action), nothing started;
- an experiment with a destructive action and no `--execute` stops there:
  a dry run (exit 0, nothing injected, no run directory);
- a steady state that does not hold refuses it (exit 1, nothing injected).

The backend enforces the same rules again at each injection (another process,
plain `chaos run`, a cluster that changed in between), so the plan is a
preview, never the only fence.

`abort(run_dir, backend)` is the kill switch from another terminal: it turns
on `RUN_DIR/ABORT` (every chaos process of the run rolls back and stops
within a fraction of a second), rolls back at once whatever the ledger still
holds (also what a crashed chaos process left), and asks the run's chaos
processes to stop (SIGUSR1: chaostoolkit's graceful exit, rollbacks run).
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError, InputError

if TYPE_CHECKING:  # the fence reads clusters through the Kubernetes client: imported where it is used, so a
    # local e2e (which imports this module for its dry-run check) does not import the client (~0.15 s)
    from harness.backends.fence import FaultTargets

ABORT_WAIT_S = 30.0
_VAR = re.compile(r"^\$\{(?P<key>[A-Za-z_][A-Za-z0-9_]*)\}$")
DESTRUCTIVE = frozenset({"kill_node", "zone_outage", "partition_zone"})


@dataclass
class PlannedStep:
    """One method action as it would act now."""

    index: int
    name: str
    func: str
    primitive: str
    zone: str
    duration_s: float | None  # None: until the Deployment has replaced the pods
    pause_after_s: float
    background: bool
    targets: FaultTargets | None = None
    problems: list[str] = field(default_factory=list)  # blast-radius violations

    @property
    def destructive(self) -> bool:
        return self.primitive in DESTRUCTIVE

    def how_long(self) -> str:
        if self.primitive == "kill_pod":
            held = "until the Deployment's replacement is ready"
        elif self.duration_s is None:
            held = "until undone"
        else:
            held = f"for {self.duration_s:g} s"
        pause = f", then a {self.pause_after_s:g} s pause" if self.pause_after_s else ""
        return held + pause + (" (in the background)" if self.background else "")


@dataclass
class GamedayPlan:
    experiment: Path
    title: str
    where: str  # "context eks-nightly"
    allowed: bool
    allow_sources: list[str]
    blast: str
    steady: list[str] | None  # steady-state problems (empty: it holds; None: not up yet, checked at injection)
    steps: list[PlannedStep]
    rollbacks: list[str]

    @property
    def destructive(self) -> bool:
        return any(s.destructive for s in self.steps)

    def lines(self) -> list[str]:
        out = [f"plan: {self.experiment} ({self.title!r}) on {self.where}"]
        allow = f"allowed ({', '.join(self.allow_sources)})" if self.allowed else "not allow-listed"
        out.append(f"  destructive chaos: {allow}; blast radius: {self.blast}")
        if self.steady is None:
            out.append("  steady state: checked before the first injection (the run is not up yet)")
        else:
            state = "holds" if not self.steady else "DOES NOT HOLD: " + "; ".join(self.steady)
            out.append(f"  steady state: {state}")
        for s in self.steps:
            mark = " [destructive]" if s.destructive else ""
            out.append(f"  {s.index + 1}. {s.name}: {s.primitive} in {s.zone} {s.how_long()}{mark}")
            if s.targets is not None:
                out.append(f"     {s.targets.describe()}")
            for p in s.problems:
                out.append(f"     OVER THE BLAST RADIUS: {p}")
        if self.rollbacks:
            out.append(f"  rollbacks (always): {', '.join(self.rollbacks)}")
        return out

    def refuse_over_blast_radius(self) -> None:
        """InputError naming the experiment and the first action over the blast radius."""
        for s in self.steps:
            if s.problems:
                raise InputError(
                    str(self.experiment), f"method[{s.index}]", f"{s.func}: over the blast radius: {s.problems[0]}"
                )


def _resolve(value: Any, configuration: Mapping[str, Any]) -> Any:
    """`${key}` from the experiment's configuration, as chaostoolkit substitutes it."""
    if isinstance(value, str):
        m = _VAR.match(value)
        if m and m.group("key") in configuration:
            return configuration[m.group("key")]
    return value


def _defaults(func: str) -> dict[str, Any]:
    from harness.chaos import actions

    fn = getattr(actions, func, None)
    if fn is None:
        return {}
    return {
        n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not inspect.Parameter.empty
    }


def plan_experiment(path: Path, data: Mapping[str, Any], backend: Any) -> GamedayPlan | None:
    """The plan of `data` (the experiment as it will run) on `backend`; None when the backend cannot plan."""
    if not hasattr(backend, "plan_fault"):
        return None
    from harness.backends.fence import ClusterView
    from harness.chaos import ACTION_PRIMITIVES
    from harness.chaos.experiment import seconds

    cfg = data.get("configuration") or {}
    cfg = cfg if isinstance(cfg, dict) else {}
    view = ClusterView.read(backend.cluster)
    steps: list[PlannedStep] = []
    for i, act in enumerate(data.get("method") or []):
        if not isinstance(act, dict):
            continue
        prov = act.get("provider") or {}
        func = str(prov.get("func", ""))
        if prov.get("module") != "harness.chaos.actions" or func not in ACTION_PRIMITIVES:
            continue
        args = {**_defaults(func), **{k: _resolve(v, cfg) for k, v in (prov.get("arguments") or {}).items()}}
        zone = str(args.get("zone", ""))
        duration = args.get("duration_s")
        pauses = act.get("pauses") or {}
        step = PlannedStep(
            index=i,
            name=str(act.get("name", func)),
            func=func,
            primitive=ACTION_PRIMITIVES[func],
            zone=zone,
            duration_s=seconds(duration, cfg),
            pause_after_s=(seconds(pauses.get("after"), cfg) or 0.0) if isinstance(pauses, dict) else 0.0,
            background=bool(act.get("background")),
        )
        if step.primitive in ("set_link",):
            steps.append(step)  # refused by the capability check on this backend; nothing to resolve
            continue
        step.targets, step.problems = backend.plan_fault(
            step.primitive, zone, service=args.get("service"), node=args.get("node"), view=view
        )
        steps.append(step)
    rollbacks = [
        f"{r.get('name', '?')} ({(r.get('provider') or {}).get('func', '?')})"
        for r in data.get("rollbacks") or []
        if isinstance(r, dict)
    ]
    try:
        steady: list[str] | None = backend.steady_state_problems()
    except HarnessError as exc:  # e.g. no manifests recorded: the cluster was never brought up by the harness
        steady = [str(exc)]
    return GamedayPlan(
        experiment=path,
        title=str(data.get("title", "")),
        where=getattr(backend, "_where", backend.name),
        allowed=bool(getattr(backend, "destructive_allowed", False)),
        allow_sources=list(backend.allow.sources(backend.context)) if hasattr(backend, "allow") else [],
        blast=backend.blast.describe() if hasattr(backend, "blast") else "",
        steady=steady,
        steps=steps,
        rollbacks=rollbacks,
    )


def check_dry_run(dry_run: bool, execute: bool, backend: str) -> bool:
    """`--dry-run`, checked before anything is touched: it contradicts `--execute`, and plans someone else's cluster."""
    if not dry_run:
        return False
    if execute:
        raise InputError("--dry-run", "", "not with --execute (or EH_EXECUTE=1): a dry run injects nothing")
    if backend != "existing":
        raise InputError("--dry-run", "", "--backend existing only (a plan is of a cluster that is not ours)")
    return True


def dry_run_banner(plan: GamedayPlan, asked: bool = False) -> str:
    """The plan's last line: why the run stops here (`asked`: `--dry-run`, else destructive without --execute)."""
    why = "--dry-run was given" if asked else "has destructive actions and --execute was not given"
    return (
        f"DRY RUN: {plan.experiment} {why}: nothing was injected, nothing was created (rerun with --execute to run it)"
    )


# -- the kill switch from another terminal -------------------------------------------------------
def chaos_processes(run_dir: Path) -> list[int]:
    """PIDs of this user's processes running chaos for `run_dir` (their environment names it)."""
    from harness.backends.fence import RUN_DIR_ENV

    want = f"{RUN_DIR_ENV}={run_dir.resolve()}".encode()
    me = os.getpid()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if want in env and b"chaos" in cmd:
            pids.append(int(proc.name))
    return sorted(pids)


@dataclass
class AbortResult:
    switch: Path
    rolled_back: list[str]
    signalled: list[int]
    still_running: list[int]


def abort(run_dir: Path, backend: Any | None, say: Callable[[str], None] = print) -> AbortResult:
    """Kill switch for a run: the ABORT file, an immediate rollback of the ledger, chaos processes told to stop."""
    if not run_dir.is_dir():
        raise InputError(str(run_dir), "", "not a run directory")
    from harness.backends.fence import ABORT_FILE, engage

    switch = run_dir / ABORT_FILE
    engage(switch, "harness chaos --abort")
    say(f"kill switch on: {switch} (no chaos is injected into this run while it exists)")
    rolled: list[str] = []
    if backend is not None and hasattr(backend, "rollback_active"):
        rolled = backend.rollback_active()
        for line in rolled:
            say(f"rolled back: {line}")
        if not rolled:
            say("no fault of the harness is in effect on the cluster")
    pids = chaos_processes(run_dir)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)  # chaostoolkit: exit gracefully, rollbacks run
    deadline = time.monotonic() + ABORT_WAIT_S
    left = pids
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in left if Path(f"/proc/{p}").exists() and _not_zombie(p)]
    if pids:
        say(f"chaos processes stopped: {len(pids) - len(left)} of {len(pids)}")
    return AbortResult(switch, rolled, pids, left)


def _not_zombie(pid: int) -> bool:
    try:
        return " Z " not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:4]
    except (OSError, IndexError):
        return False


def dry_run_e2e(planned: list[Any], opts: Any, bopts: Any, load: Callable[[Path], Any]) -> list[str] | None:
    """The plan of every experiment of an `e2e` against an existing cluster, if it must stop as a dry run.

    Returns the lines to print (the run stops there: nothing is brought up,
    no run directory is made), or None when the run may go on (nothing
    destructive, or --execute). `opts.dry_run` (`--dry-run`) always stops
    here, destructive or not: a game day's first look at what would be hit
    must not run a pod kill because a pod kill is not destructive to the
    cluster's owner. The run's own pods do not exist yet, so the
    plan shows the nodes and the pods of other workloads a fault would hit.
    `planned` are `harness.chaos.PlannedExperiment`s: their data has the roles
    resolved against the topology, so the plan names real zones.
    """
    import tempfile

    from harness.backends.existing import ExistingBackend
    from harness.chaos import required_primitives
    from harness.e2e import prepare_manifests

    asked = bool(opts.dry_run)
    if not asked and (bopts.execute or not planned):
        return None
    datas = [(Path(p.file), p.data) for p in planned]
    if not datas:
        return ["DRY RUN: no experiment planned: nothing was injected, nothing was created"]
    if not asked and not any(prim in DESTRUCTIVE for _p, d in datas for _i, _f, prim in required_primitives(d)):
        return None
    with tempfile.TemporaryDirectory(prefix="eh-dry-run-") as tmp:
        m = load(prepare_manifests(opts, Path(tmp)))
        b = ExistingBackend.from_options(bopts, m)
        try:
            lines: list[str] = []
            for p, d in datas:
                plan = plan_experiment(p, d, b)
                if plan is not None:
                    plan.steady = None  # before `up` the run has no steady state yet
                    lines += [*plan.lines(), dry_run_banner(plan, asked)]
            return lines
        finally:
            b.close()
