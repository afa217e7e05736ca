"""Chaos: the harness's chaostoolkit extension and the runner for experiments.

Experiments live in `experiments/` in chaostoolkit's own format and run with
plain `chaos run`; `run_experiment` runs them the way the harness needs:
chaostoolkit in its own process (stdout not inherited, or a pipeline on
`chaos run` hangs), rollbacks always (chaostoolkit skips them on a deviated
hypothesis by default), the journal and the timeline in the run directory.
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
from harness.chaos.timeline import FaultKind, record
from harness.errors import BackendError, InputError


@dataclass
class ChaosResult:
    status: str  # chaostoolkit journal status: completed | failed | aborted | interrupted
    deviated: bool
    journal: Path
    returncode: int

    @property
    def ok(self) -> bool:
        return self.status == "completed" and not self.deviated


def check_experiment(path: Path) -> dict[str, Any]:
    """Parse an experiment file; InputError naming the file and field on bad input."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(str(path), "", "no such experiment file") from None
    except json.JSONDecodeError as exc:
        raise InputError(str(path), f"line {exc.lineno}", f"JSON syntax error: {exc.msg}") from None
    if not isinstance(data, dict):
        raise InputError(str(path), "", "an experiment is a JSON object")
    for key in ("title", "method"):
        if key not in data:
            raise InputError(str(path), key, "required")
    for i, act in enumerate(data.get("method") or []):
        prov = (act or {}).get("provider") or {}
        if prov.get("type") == "python" and not str(prov.get("module", "")).startswith(
            ("harness.chaos", "chaosk8s", "chaoslib")
        ):
            raise InputError(str(path), f"method[{i}].provider.module", f"unknown module {prov.get('module')!r}")
    return data


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
    service link on EKS, a partition without an enforcing CNI, netem on a
    kernel without sch_netem) is refused with nothing injected.
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


def run_experiment(experiment: Path, run_dir: Path, opts: BackendOptions, timeout_s: float = 900) -> ChaosResult:
    """Run one experiment with `chaos run`, rollbacks always; the journal goes to the run dir."""
    check_experiment(experiment)
    run_dir.mkdir(parents=True, exist_ok=True)
    journal = run_dir / "chaos-journal.json"
    env = {**os.environ, **opts.env(), "EH_RUN_DIR": str(run_dir.resolve())}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH")) if p
    )
    argv = [chaos_bin(), "--log-file", str(run_dir / "chaos.log"), "run", "--rollback-strategy", "always",
            "--journal-path", str(journal), "--no-verify-tls", str(experiment)]  # fmt: skip
    proc = subprocess.Popen(
        argv,
        env=env,
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
    try:
        j = json.loads(journal.read_text(encoding="utf-8"))
        return ChaosResult(str(j.get("status")), bool(j.get("deviated")), journal, rc)
    except (FileNotFoundError, json.JSONDecodeError):
        return ChaosResult("failed", True, journal, rc)


__all__ = [
    "ACTION_PRIMITIVES",
    "ChaosResult",
    "FaultKind",
    "check_capabilities",
    "check_experiment",
    "record",
    "required_primitives",
    "run_experiment",
]
