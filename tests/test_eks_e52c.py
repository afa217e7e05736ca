"""The EKS nightly, second pass (e52c): what a night meets after another run on the same cluster, held to how
Kubernetes, consul-k8s and GitHub Actions behave."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

WORKFLOWS = REPO / ".github" / "workflows"
EKS_WORKFLOWS = [("nightly-eks.yml", "nightly"), ("gameday.yml", "gameday")]


def _steps(workflow: str, job: str) -> list[dict]:
    return list(yaml.safe_load((WORKFLOWS / workflow).read_text())["jobs"][job]["steps"])


def _clean_up(workflow: str, job: str) -> tuple[dict, dict]:
    """(the kubeconfig step, the clean-up step) of an EKS workflow."""
    steps = _steps(workflow, job)
    kubeconfig = next(s for s in steps if "aws eks update-kubeconfig" in str(s.get("run", "")))
    clean = next(s for s in steps if "make down" in str(s.get("run", "")))
    return kubeconfig, clean


def _run_clean_up(step: dict, outcome: str, kubeconfig_id: str | None, tmp_path: Path) -> tuple[int, str, bool]:
    """The clean-up step's script as the runner runs it (bash -e, its env with the steps context filled in),
    `make` a stand-in that fails as `harness down` does without the context (exit 2). (rc, stdout, make ran)."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    ran = tmp_path / "make-ran"
    ran.unlink(missing_ok=True)
    make = bindir / "make"
    make.write_text(f"#!/bin/sh\ntouch {ran}\necho \"--context: no context '$CONTEXT'\" >&2\nexit 2\n")
    make.chmod(0o755)
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "CONTEXT": "eks-nightly"}
    for k, v in (step.get("env") or {}).items():
        v = str(v)
        if kubeconfig_id is not None:
            v = v.replace(f"${{{{ steps.{kubeconfig_id}.outcome }}}}", outcome)
        env[k] = re.sub(r"\$\{\{[^}]*\}\}", "", v)
    proc = subprocess.run(["bash", "-e", "-c", str(step["run"])], env=env, capture_output=True, text=True,
                          check=False, timeout=30)  # fmt: skip
    return proc.returncode, proc.stdout, ran.exists()


@pytest.mark.parametrize(("workflow", "job"), EKS_WORKFLOWS)
def test_clean_up_after_a_failed_kubeconfig_step_is_skipped_with_one_line(
    workflow: str, job: str, tmp_path: Path
) -> None:
    """Reproducer: the kubeconfig step failed (no such cluster, the role refused), so no step reached the cluster,
    yet the clean-up (if: always()) ran `make down`, which exits 2 on the missing context: a second red step whose
    line hides the first's cause. Now it says it skips, once, and succeeds. The steps context gives a step's
    outcome (success, failure, cancelled, skipped; docs.github.com/en/actions/reference/contexts-reference#steps-
    context) to a step that names the kubeconfig step's id."""
    kubeconfig, clean = _clean_up(workflow, job)
    for outcome in ("failure", "cancelled", "skipped"):
        rc, out, ran = _run_clean_up(clean, outcome, kubeconfig.get("id"), tmp_path)
        assert (rc, ran) == (0, False), (outcome, rc, out)
        assert len(out.strip().splitlines()) == 1 and "skipped" in out and outcome in out, out


@pytest.mark.parametrize(("workflow", "job"), EKS_WORKFLOWS)
def test_control_clean_up_after_a_kubeconfig_runs_down(workflow: str, job: str, tmp_path: Path) -> None:
    """Control: with the kubeconfig written, the clean-up runs `make down` and its failure is the step's."""
    kubeconfig, clean = _clean_up(workflow, job)
    rc, _out, ran = _run_clean_up(clean, "success", kubeconfig.get("id"), tmp_path)
    assert (rc, ran) == (2, True)
