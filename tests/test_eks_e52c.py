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
from tests.kubefake import nothing_refused as nothing_refused  # re-exported for pytest
from tests.test_backend_existing import _backend
from tests.test_backend_existing import eks as eks  # the operator's EKS cluster, fake kubectl on PATH

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


# -- up right after another run's down: its namespaces still Terminating ------------------------------------------


def _night_then_down(api: FakeApiServer, tmp_path: Path, hold: dict[str, Any] | None = None) -> list[str]:
    """A night's up and down, its pods taking seconds to stop (real: their grace, 30 s by default), so that its
    namespaces are still Terminating when down returns; `hold` an object with a finalizer left in one of them.
    Returns the run's namespaces."""
    night = tmp_path / "night"
    night.mkdir()
    b = _backend(api, night)
    b.up(rendered(night))
    names = sorted(a["name"] for a in b._state()["applied"] if a["kind"] == "Namespace" and a["created"])
    assert "hashicups-lax-1a" in names and "consul" not in names  # the operator's Consul namespace is not the run's
    admin = api.cluster(tmp_path, "admin")
    if hold is not None:
        admin.apply_one(hold)
    api.sim.t.terminate_s = 6.0
    b.down()
    b.close()
    going = admin.request("GET", f"/api/v1/namespaces/{names[0]}")
    assert going["status"]["phase"] == "Terminating" and going["spec"]["finalizers"] == ["kubernetes"]
    return names


def test_up_right_after_a_down_waits_for_its_namespaces_to_be_gone(
    eks: KubeCluster, api: FakeApiServer, tmp_path: Path, nothing_refused: None
) -> None:
    """Reproducer: a game day queued behind the nightly (one concurrency group) starts as the nightly's down
    returns, its namespaces Terminating while their pods stop. `up` found each namespace there (409, so taken as
    not its own) and its first object in one refused, 403 "unable to create new content in namespace ... because
    it is being terminated" (the NamespaceLifecycle admission plugin; cause NamespaceTerminating): the game day
    failed. Now `up` says it waits for them, then creates them anew as its own (so its down deletes them)."""
    names = _night_then_down(api, tmp_path)
    gameday = tmp_path / "gameday"
    gameday.mkdir()
    said: list[str] = []
    b = _backend(api, gameday, progress=said.append)
    try:
        b.up(rendered(gameday))
        created = {a["name"] for a in b._state()["applied"] if a["kind"] == "Namespace" and a["created"]}
        assert created == set(names), (created, names)
        waits = [x for x in said if "is being deleted" in x]
        assert waits and all("waiting up to 900 s" in x for x in waits), said
    finally:
        b.down()
        b.close()


def test_control_a_namespace_held_by_a_finalizer_fails_up_in_one_line_having_created_nothing_in_it(
    eks: KubeCluster, api: FakeApiServer, tmp_path: Path
) -> None:
    """Control: a namespace whose deletion waits on a finalizer nobody removes is waited for within the bound, then
    named in one line with where to look; nothing was created in it (dry runs only)."""
    meta = {"name": "held", "namespace": "hashicups-lax-1a", "finalizers": ["example.com/hold"]}
    hold = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta}
    _night_then_down(api, tmp_path, hold)
    gameday = tmp_path / "gameday"
    gameday.mkdir()
    b = _backend(api, gameday)
    b.ready_timeout_s = 8.0
    seen = len(api.requests())
    with pytest.raises(BackendError) as err:
        b.up(rendered(gameday))
    b.close()
    text = str(err.value)
    assert "\n" not in text and "namespace hashicups-lax-1a still being deleted 8 s on" in text, text
    assert "get namespace hashicups-lax-1a -o yaml" in text, text
    into = [(m, p, q) for m, p, q, _d in api.requests()[seen:] if m == "POST" and "/namespaces/hashicups-lax-1a/" in p]
    assert into and all(q.get("dryRun") == "All" for _m, _p, q in into), into


# -- a mesh entry taken over by a run whose down never ran --------------------------------------------------------


def _night(api: FakeApiServer, tmp_path: Path, name: str, **kw: Any) -> existing.ExistingBackend:
    """A night on a fresh runner (its own runs/.backend/), up."""
    d = tmp_path / name
    d.mkdir()
    b = _backend(api, d, **kw)
    b.up(rendered(d))
    return b


def test_a_taken_over_proxy_defaults_whose_down_never_ran_is_put_back_by_a_later_down(
    eks: KubeCluster, api: FakeApiServer, tmp_path: Path
) -> None:
    """Reproducer: a night took the operator's ProxyDefaults "global" over (--own-mesh-defaults) and its runner was
    lost before the clean-up: the original was only in that runner's runs/.backend/. The next night found the
    harness's entry there, its access logs usable, kept it as the operator's, and its down left it: the original
    was lost for good. Now the original rides on the taken-over entry (annotation edge-harness.io/original): a
    later night with --own-mesh-defaults takes it over again with that original and its down puts it back; one
    without the flag (whose role may not update it) keeps it and says so. Control:
    tests/test_backend_existing.py::test_someone_elses_proxy_defaults_is_never_changed_unless_told (a down that
    runs restores it)."""
    from tests.test_backend_existing import THEIR_PROXY_DEFAULTS, _proxy_defaults

    api.seed(eks, THEIR_PROXY_DEFAULTS)
    _night(api, tmp_path, "lost", own_mesh_defaults=True).close()  # its runner lost: no down, its record gone
    said: list[str] = []
    plain = _night(api, tmp_path, "plain", progress=said.append)  # the nightly passes no --own-mesh-defaults
    plain.down()
    plain.close()
    (pd,) = _proxy_defaults(eks)
    assert pd["spec"] != THEIR_PROXY_DEFAULTS["spec"]
    assert any(x.startswith("WARNING: ProxyDefaults platform/global is an earlier run's") for x in said), said
    owner = _night(api, tmp_path, "owner", own_mesh_defaults=True)
    owner.down()
    owner.close()
    (pd,) = _proxy_defaults(eks)
    assert pd["spec"] == THEIR_PROXY_DEFAULTS["spec"]
    assert existing.ANNOTATION_ORIGINAL not in (pd["metadata"].get("annotations") or {})
