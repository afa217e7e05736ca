"""The EKS nightly, second pass (e52c): what a night meets after another run on the same cluster, held to how
Kubernetes, consul-k8s and GitHub Actions behave."""

from __future__ import annotations

import os
import re
import subprocess
import types
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.backends import existing
from harness.backends.kube import AppliedObject, KubeCluster
from harness.errors import BackendError
from tests.conftest import REPO
from tests.kubefake import FakeApiServer, fake_tools, rendered
from tests.kubefake import api as api  # the shared fixture, re-exported for pytest
from tests.test_backend_existing import _backend

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


# -- down's worst case within the clean-up step ----------------------------------------------------------------

DOWN_REST_S = 120.0
"""What `down` does besides its two waits (faults rolled back, mesh entries restored, the run's objects and
namespaces deleted: API calls), with `make down`'s start (deps already installed by the run's step): 2 min at most."""


def _finalizer_wait_s(b: existing.ExistingBackend, monkeypatch: pytest.MonkeyPatch) -> float:
    """How long `down` waits for consul-k8s' controller to finish a CR that it never finishes (a fake clock)."""
    now = [1000.0]
    monkeypatch.setattr(existing, "time", types.SimpleNamespace(monotonic=lambda: now[0], time=lambda: now[0]))
    monkeypatch.setattr(existing, "nap", lambda s: now.__setitem__(0, now[0] + s))
    monkeypatch.setattr(KubeCluster, "exists", lambda *_a, **_k: True)
    entry = AppliedObject("consul.hashicorp.com/v1alpha1", "ServiceDefaults", "hashicups-lax-1a", "public-api", True)
    with pytest.raises(BackendError, match="still await consul-k8s' finalizer"):
        b._wait_entries_finalized([entry])
    monkeypatch.undo()
    return now[0] - 1000.0


def _helm_uninstall_bound_s(b: existing.ExistingBackend, tmp_path: Path) -> tuple[float, list[str]]:
    """The bound `down` puts on `helm uninstall` of the Consul its `up` installed, and helm's arguments."""
    seen: list[tuple[list[str], float]] = []

    def run(argv: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        seen.append((list(argv), float(kw["timeout"])))
        return subprocess.CompletedProcess(argv, 0, "", "")

    b._run_fn = run
    b._save_state(manifests=str(rendered(tmp_path).root),
                  installed_consul={"name": "consul", "namespace": "consul", "namespace_created": False})  # fmt: skip
    b.down()
    (argv, bound), *_ = [x for x in seen if x[0][1:2] == ["uninstall"]]
    return bound, argv[2:]


def test_down_with_install_consul_fits_the_clean_up_step(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reproducer: with --install-consul, `down` waits for consul-k8s' finalizers on the run's config entries up to
    the ready timeout (900 s on EKS), then runs `helm uninstall` bounded at 1200 s: 35 min, where the workflows'
    clean-up step is cut at 15 (timeout-minutes), cancelled mid-`down`, and the night's records are then not
    uploaded either. Both waits now have bounds that fit the step with the rest of `down`, read from the workflows
    here so that neither can drift; helm gets its own --timeout within the harness's bound (5m0s, helm's default
    for hooks' Jobs), so helm stops first and says why."""
    fake_tools(api, tmp_path, monkeypatch)
    b = _backend(api, tmp_path, install_consul=True)
    assert b.ready_timeout_s == 900.0  # the EKS default the nightly runs with
    wait_s = _finalizer_wait_s(b, monkeypatch)
    fake_tools(api, tmp_path, monkeypatch)
    helm_s, helm_args = _helm_uninstall_bound_s(b, tmp_path)
    step_s = min(60.0 * float(_clean_up(w, j)[1]["timeout-minutes"]) for w, j in EKS_WORKFLOWS)
    assert wait_s + helm_s + DOWN_REST_S <= step_s, (wait_s, helm_s, step_s)
    timeout = next((a.split("=", 1)[1] for a in helm_args if a.startswith("--timeout=")), None)
    assert timeout is not None and timeout.endswith("s") and float(timeout[:-1]) < helm_s, helm_args


def test_control_a_short_ready_timeout_bounds_the_finalizer_wait(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: a ready timeout shorter than the bound is the wait (kind's, or a test's), as before."""
    b = _backend(api, tmp_path)
    b.ready_timeout_s = 30.0
    assert _finalizer_wait_s(b, monkeypatch) == pytest.approx(30.0, abs=0.5)
