"""The workflows' invariants (first contact with the EKS nightly, e46n), read from the YAML GitHub runs.

Beside tests/test_workflows.py (actionlint, the make targets, the token's steps): how the harness is called
(the venv path README names), that the run directory is uploaded whatever happened, and that the upload is
reached: GitHub cancels a job at its `timeout-minutes`, while a step's own `timeout-minutes` fails that step
only and the job goes on to its `if: always()` steps. A run step or a clean-up without a bound of its own that
hangs spends the job's time, and the upload after it runs, if at all, only within what the cancellation leaves.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

WORKFLOWS = REPO / ".github" / "workflows"
NAMES = ("e2e-kind.yml", "gameday.yml", "nightly-eks.yml")

HARNESS_RUN = re.compile(r"\bmake (e2e|nightly|down)\b|\.venv/bin/(harness|chaos) ")
"""A step that runs the harness (through make, or the venv's entry points): one that can take long or hang."""

BARE = re.compile(r"(?:^|[;&|(]\s*|\bthen\s+|\bdo\s+)(harness|chaos|locust)\s", re.MULTILINE)
"""An entry point called by its bare name: not on a fresh runner's PATH (README: `.venv/bin/harness ...`)."""

MARGIN_MIN = 5
"""Minutes a job keeps after its bounded steps for the job summary and the upload."""


def _load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return dict(data)


def _steps(name: str) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    return [(job_name, job, job["steps"]) for job_name, job in _load(name)["jobs"].items()]


def _is_upload(step: dict[str, Any]) -> bool:
    return str(step.get("uses", "")).startswith("actions/upload-artifact@")


def _exclusive(a: str, b: str) -> bool:
    """Two steps' conditions that never hold in one run (gameday's dry run against its real run)."""
    return a.strip() == "inputs.dry_run" and "!inputs.dry_run" in b


def unbounded_before_upload(job: dict[str, Any]) -> list[str]:
    """What can keep a job from its upload: a harness step before it without its own timeout, or bounded steps
    whose timeouts, with `MARGIN_MIN`, outlast the job's (names; empty when the upload is always reached)."""
    steps = job["steps"]
    ups = [i for i, s in enumerate(steps) if _is_upload(s)]
    if not ups:
        return []
    upload = steps[ups[0]]
    before = [s for s in steps[: ups[0]] if HARNESS_RUN.search(str(s.get("run", "")))
              and not _exclusive(str(s.get("if", "")), str(upload.get("if", "")))]  # fmt: skip
    problems = [f"{s.get('name', s['run'])}: no timeout-minutes" for s in before if "timeout-minutes" not in s]
    total = sum(int(s.get("timeout-minutes", 0)) for s in before)
    if not problems and total + MARGIN_MIN > int(job["timeout-minutes"]):
        problems.append(f"steps bounded to {total} min of the job's {job['timeout-minutes']}")
    return problems


@pytest.mark.parametrize("name", NAMES)
def test_the_upload_is_reached_even_when_the_run_or_its_clean_up_hangs(name: str) -> None:
    """Reproducer: nightly-eks.yml's and gameday.yml's clean-up (`make down` after a cancel or a timeout) and
    e2e-kind.yml's `make e2e` had no timeout of their own, so one that hung ran into the job's limit, and the
    `if: always()` upload after it was left to the cancellation: the run's records, report and artifacts at
    risk exactly when they were needed."""
    for job_name, job, _job_steps in _steps(name):
        assert "timeout-minutes" in job, (name, job_name)
        assert unbounded_before_upload(job) == [], (name, job_name)


def test_a_clean_up_without_a_bound_or_bounds_that_overrun_the_job_are_caught() -> None:
    """Control for the rule itself: the shapes it must refuse, and one it must accept."""
    upload = {"name": "up", "if": "always()", "uses": "actions/upload-artifact@v4"}
    run = {"name": "run", "run": "make nightly CONTEXT=x", "timeout-minutes": 70}
    clean = {"name": "clean", "if": "always()", "run": "make down BACKEND=existing"}
    assert unbounded_before_upload({"timeout-minutes": 90, "steps": [run, clean, upload]}) == [
        "clean: no timeout-minutes"
    ]
    bounded = {**clean, "timeout-minutes": 20}
    assert unbounded_before_upload({"timeout-minutes": 90, "steps": [run, bounded, upload]}) == [
        "steps bounded to 90 min of the job's 90"
    ]
    ok = {**clean, "timeout-minutes": 15}
    assert unbounded_before_upload({"timeout-minutes": 90, "steps": [run, ok, upload]}) == []
    after = {"timeout-minutes": 90, "steps": [{**run, "timeout-minutes": 80}, upload, clean]}
    assert unbounded_before_upload(after) == []  # a clean-up after the upload cannot keep it from running


@pytest.mark.parametrize("name", NAMES)
def test_the_harness_is_called_through_the_venv_make_builds(name: str) -> None:
    """README: `make deps` builds .venv and `.venv/bin/harness ...` is how to call it; a fresh runner has no
    `harness` or `chaos` on its PATH (the venv is never activated in a workflow), so a bare call fails there."""
    for _job_name, _job, steps in _steps(name):
        for s in steps:
            assert not BARE.search(str(s.get("run", ""))), (name, s.get("name"))
    assert BARE.search("set -e\nharness e2e --backend existing\n")  # the rule does catch a bare call
    assert BARE.search("x || chaos run e.json")
    assert not BARE.search(".venv/bin/harness e2e && .venv/bin/chaos --no-log-file validate e.json")


@pytest.mark.parametrize("name", NAMES)
def test_the_run_directory_is_uploaded_whatever_happened_and_without_the_backend_state(name: str) -> None:
    """`runs/` is where `harness e2e` writes a run (README), uploaded after a pass, a failure, a cancel or a
    timeout (always()); runs/.backend/ is this runner's ledger of the cluster (what `down` undoes), not a
    record."""
    for job_name, _job, steps in _steps(name):
        ups = [s for s in steps if _is_upload(s)]
        assert len(ups) == 1, (name, job_name)
        up = ups[0]
        assert "always()" in str(up.get("if", "")), (name, up.get("if"))
        paths = str(up["with"]["path"]).split()
        assert paths == ["runs/", "!runs/.backend/"], paths
        summary = [s for s in steps if ".github/scripts/verdict_summary.py runs" in str(s.get("run", ""))]
        assert summary and all("always()" in str(s.get("if", "")) for s in summary), name


@pytest.mark.parametrize("name", ["gameday.yml", "nightly-eks.yml"])
def test_aws_credentials_come_from_oidc_with_the_role_the_readme_names(name: str) -> None:
    """aws-actions/configure-aws-credentials with `role-to-assume` and no keys gets its credentials through
    GitHub's OIDC provider, which needs `id-token: write` (the action's README); contents stays read-only."""
    w = _load(name)
    for _job_name, job, steps in _steps(name):
        perms = {**(w.get("permissions") or {}), **(job.get("permissions") or {})}
        assert perms == {"id-token": "write", "contents": "read"}, perms
        creds = [s for s in steps if str(s.get("uses", "")).startswith("aws-actions/configure-aws-credentials@")]
        assert len(creds) == 1
        given = creds[0]["with"]
        assert given["role-to-assume"] == "${{ vars.EH_AWS_ROLE_ARN }}"
        assert not {"aws-access-key-id", "aws-secret-access-key"} & set(given)


def test_every_variable_and_secret_a_workflow_reads_is_documented() -> None:
    """An operator sets what README and nightly-eks.yml's header name; a workflow reading another name would
    run with it empty (GitHub gives an unset `vars.X` as '')."""
    readme = (REPO / "README.md").read_text()
    header = (WORKFLOWS / "nightly-eks.yml").read_text().split("\nname:", 1)[0]
    read = {m.group(2) for n in NAMES for m in re.finditer(r"\b(vars|secrets)\.([A-Za-z0-9_]+)",
                                                            (WORKFLOWS / n).read_text())}  # fmt: skip
    assert read, "the EKS workflows read repository settings"
    assert sorted(v for v in read if v not in readme) == []
    assert sorted(v for v in read if v not in header) == []


def test_the_workflows_are_the_three_named_here() -> None:
    assert sorted(p.name for p in Path(WORKFLOWS).glob("*.y*ml")) == sorted(NAMES)
