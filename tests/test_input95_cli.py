"""Bad input and missing tools at the command line: refused before anything starts, in one line, nothing left.

Each command runs as a user runs it (`python -m harness`, a subprocess) in an empty directory, with a PATH
that holds only the tools the case gives it, so no real cluster can be reached even by mistake. "Nothing
left" is checked on the directory's tree: no run directory, no `runs/.up`, no backend state.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
    "users": [
        {"name": "token", "user": {"token": "x"}},
        {
            "name": "eks",
            "user": {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1beta1",
                    "command": "aws",
                    "args": ["eks", "get-token", "--cluster-name", "edge"],
                }
            },
        },
    ],
    "contexts": [
        {"name": "lab", "context": {"cluster": "c", "user": "token"}},
        {"name": "eks-lab", "context": {"cluster": "c", "user": "eks"}},
    ],
    "current-context": "lab",
}


def _tool(bin_dir: Path, name: str) -> None:
    """A stand-in that must never run: the cases here are all refused before any tool is called."""
    path = bin_dir / name
    path.write_text('#!/bin/sh\necho "$0 was run" >&2\nexit 99\n')
    path.chmod(0o755)


def _cli(
    tmp_path: Path, *argv: str, tools: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`harness ARGV` with only `tools` on PATH, in an empty directory; (the process, that directory)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for t in tools:
        _tool(bin_dir, t)
    full = {k: v for k, v in os.environ.items() if not k.startswith("EH_") and k != "KUBECONFIG"}
    full |= {"PATH": str(bin_dir), "PYTHONPATH": str(REPO), "HOME": str(tmp_path / "home"), **(env or {})}
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "harness", *argv], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    return proc, cwd


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _one_line(proc: subprocess.CompletedProcess[str], rc: int, start: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == rc, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(start), lines[0]
    return lines[0]


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(KUBECONFIG))
    return path


# -- missing tools: refused before the run directory exists ---------------------------------------------------------
@pytest.mark.parametrize("cmd", ["e2e", "up"])
@pytest.mark.parametrize(
    ("tools", "missing"),
    [((), "docker"), (("docker", "kind", "kubectl"), "helm")],
    ids=["none", "no-helm"],
)
def test_kind_without_its_tools_starts_nothing(tmp_path: Path, cmd: str, tools: tuple[str, ...], missing: str) -> None:
    """HOLE: `e2e --backend kind` made its run directory (marked failed, exit 3) and `up` its `runs/.up`
    manifests before `up` looked for the tools."""
    proc, cwd = _cli(tmp_path, cmd, "--backend", "kind", tools=tools)
    _one_line(proc, 3, f"error: kind backend needs `{missing}` on PATH")
    assert "run directory" not in proc.stdout
    assert _tree(cwd) == []


def test_existing_install_consul_without_helm_starts_nothing(tmp_path: Path, kubeconfig: Path) -> None:
    proc, cwd = _cli(tmp_path, "up", "--backend", "existing", "--context", "lab", "--kubeconfig", str(kubeconfig),
                     "--install-consul", tools=("kubectl",))  # fmt: skip
    _one_line(proc, 3, "error: install_consul needs `helm` on PATH")
    assert _tree(cwd) == []


def test_existing_context_whose_credential_plugin_is_missing_starts_nothing(tmp_path: Path, kubeconfig: Path) -> None:
    """An EKS kubeconfig gets its token from `aws eks get-token` (users[].user.exec). The Kubernetes client
    (kubernetes/config/kube_config.py, `KubeConfigLoader._load_from_exec_plugin`) logs a plugin that fails to
    start and goes on without credentials, so the first refusal was a 401 deep in `up`."""
    proc, cwd = _cli(tmp_path, "up", "--backend", "existing", "--context", "eks-lab", "--kubeconfig",
                     str(kubeconfig), tools=("kubectl",))  # fmt: skip
    line = _one_line(proc, 3, "error: context eks-lab: its user's credential plugin `aws`")
    assert "not found on PATH" in line
    assert _tree(cwd) == []


# -- the kubeconfig and its context: bad input, exit 2 ---------------------------------------------------------------
@pytest.mark.parametrize("cmd", ["down", "status", "up", "e2e", "traffic"])
def test_a_context_not_in_the_kubeconfig_is_bad_input(tmp_path: Path, kubeconfig: Path, cmd: str) -> None:
    """HOLE: `down --context <typo>` said "existing: down" (exit 0): nothing was recorded under that name, so
    there was nothing to do; `status` called it a cluster that is down (exit 3)."""
    proc, cwd = _cli(tmp_path, cmd, "--backend", "existing", "--context", "lba", "--kubeconfig", str(kubeconfig),
                     tools=("kubectl",))  # fmt: skip
    line = _one_line(proc, 2, f"{kubeconfig}: --context: no context 'lba'")
    assert "eks-lab, lab" in line
    assert _tree(cwd) == []


def test_the_context_from_the_environment_is_named_as_such(tmp_path: Path, kubeconfig: Path) -> None:
    proc, _cwd = _cli(
        tmp_path, "down", "--backend", "existing", env={"EH_CONTEXT": "lba", "EH_KUBECONFIG": str(kubeconfig)}
    )
    _one_line(proc, 2, f"{kubeconfig}: EH_CONTEXT: no context 'lba'")


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "a directory, not a kubeconfig file"),
        (lambda p: p.write_text("a: [\n"), "not YAML"),
        (lambda p: p.write_text(""), "no contexts"),
        (lambda p: p.write_text("- 1\n"), "not a kubeconfig"),
        (lambda p: p.write_text("contexts: 5\n"), "not a kubeconfig"),
    ],
    ids=["missing", "directory", "bad-yaml", "empty", "list", "contexts-not-a-list"],
)  # fmt: skip
def test_a_kubeconfig_that_cannot_be_read_is_bad_input(tmp_path: Path, make: object, why: str) -> None:
    path = tmp_path / "kc"
    make(path)  # type: ignore[operator]
    proc, cwd = _cli(tmp_path, "down", "--backend", "existing", "--context", "lab", "--kubeconfig", str(path))
    line = _one_line(proc, 2, f"{path}: ")
    assert why in line
    assert _tree(cwd) == []


def test_the_default_kubeconfig_is_the_kubeconfig_variable_merged_as_kubectl_does(
    tmp_path: Path, kubeconfig: Path
) -> None:
    """Control: no --kubeconfig; KUBECONFIG lists two files, the context is in the second. Accepted (down of a
    cluster nothing was brought up on: nothing to do, exit 0), and a typo is still refused naming both files."""
    other = tmp_path / "other"
    other.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "contexts": []}))
    env = {"KUBECONFIG": f"{other}{os.pathsep}{kubeconfig}"}
    proc, _cwd = _cli(tmp_path, "down", "--backend", "existing", "--context", "lab", env=env)
    assert proc.returncode == 0 and "existing: down" in proc.stdout, proc.stderr
    proc, _cwd = _cli(tmp_path, "down", "--backend", "existing", "--context", "lba", env=env)
    _one_line(proc, 2, f"{other}{os.pathsep}{kubeconfig}: --context: no context 'lba'")


# -- a cluster that does not answer, and commands that made a directory before they could fail ----------------------
@pytest.mark.parametrize(
    ("argv", "start"),
    [
        (["status"], "existing: down — context lab: GET /api/v1/pods: the API server at https://127.0.0.1:1 did not "
                     "answer"),
        # its status (unreachable: not up) is read first, then what it would act on: never brought up here
        (["chaos", "node-kill", "--dry-run"], "error: context lab: no manifests recorded"),
    ],
    ids=["status", "chaos-dry-run"],
)  # fmt: skip
def test_an_api_server_that_does_not_answer_is_one_line(
    tmp_path: Path, kubeconfig: Path, argv: list[str], start: str
) -> None:
    """HOLE: urllib3's MaxRetryError (connection refused) came out of `KubeApi.request` as a traceback, exit 1."""
    proc, cwd = _cli(tmp_path, *argv, "--backend", "existing", "--context", "lab", "--kubeconfig", str(kubeconfig),
                     tools=("kubectl",))  # fmt: skip
    stream = proc.stdout if argv == ["status"] else proc.stderr
    assert proc.returncode == 3, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stdout + proc.stderr
    assert any(line.startswith(start) for line in stream.splitlines()), stream
    assert _tree(cwd) == []


def test_e2e_on_an_existing_cluster_without_entry_points_makes_no_run_directory(
    tmp_path: Path, kubeconfig: Path
) -> None:
    """HOLE: the entry points were first checked inside `up`, so the refusal (exit 2) left a run directory
    marked failed at stage up."""
    for cmd in ("e2e", "up"):  # up: no `runs/.up` copy of the manifests left either
        proc, cwd = _cli(tmp_path, cmd, "--backend", "existing", "--context", "lab", "--kubeconfig", str(kubeconfig),
                         tools=("kubectl",))  # fmt: skip
        _one_line(proc, 2, "--entrypoint: no entry URL for zone(s) ")
        assert _tree(cwd) == []


def test_traffic_on_a_cluster_never_brought_up_makes_no_run_directory(tmp_path: Path, kubeconfig: Path) -> None:
    """HOLE: `traffic` made its run directory, then failed on "no manifests recorded": a run.json left
    `running` forever, with nothing in it."""
    proc, cwd = _cli(tmp_path, "traffic", "--backend", "existing", "--context", "lab", "--kubeconfig",
                     str(kubeconfig), "--entrypoint", "us-west-2a=http://127.0.0.1:1", tools=("kubectl",))  # fmt: skip
    _one_line(proc, 3, "error: context lab: no manifests recorded")
    assert _tree(cwd) == []


@pytest.mark.parametrize(
    "argv",
    [["render", "--out", "{f}"], ["render", "--out", "{f}/sub"], ["verify", "--help"],
     ["traffic", "--backend", "kind", "--run-dir", "{f}"], ["preflight", "--backend", "kind", "--run-dir", "{f}"],
     ["chaos", "node-kill", "--backend", "kind", "--run-dir", "{f}"]],
    ids=["render", "render-below-a-file", "control", "traffic", "preflight", "chaos"],
)  # fmt: skip
def test_an_output_directory_that_is_a_file_is_refused(tmp_path: Path, argv: list[str]) -> None:
    """HOLE: `render --out FILE` was a FileExistsError traceback (exit 1)."""
    f = tmp_path / "cwd" / "afile"
    f.parent.mkdir()
    f.write_text("x")
    proc, cwd = _cli(tmp_path, *[a.format(f=f) for a in argv])
    if argv[1] == "--help":
        assert proc.returncode == 0
        return
    line = _one_line(proc, 2, f"harness {argv[0]}: argument ")
    assert "is not a directory" in line
    assert _tree(cwd) == ["afile"] and f.read_text() == "x"


# -- the pytest plugin ------------------------------------------------------------------------------------------------
def test_the_pytest_plugin_refuses_a_context_the_kubeconfig_lacks_once(tmp_path: Path, kubeconfig: Path) -> None:
    """HOLE: `--eh-backend existing --eh-context <typo>` passed the tests that need no cluster and errored each one
    using `eh_cluster` (a traceback from the session fixture); now one usage error before any test. Control: the
    right context runs the tests (none of these needs the cluster)."""
    (tmp_path / "test_x.py").write_text("def test_plain():\n    pass\n\ndef test_cluster(eh_cluster):\n    pass\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EH_")}
    env |= {"EH_KUBECONFIG": str(kubeconfig), "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--eh-backend", "existing", "-k", "plain"]
    proc = subprocess.run([*argv, "--eh-context", "lba"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 4, (proc.stdout, proc.stderr)
    errors = [x for x in proc.stderr.splitlines() if x.strip()]
    assert errors == [f"ERROR: {kubeconfig}: --eh-context: no context 'lba' (it has: eks-lab, lab)"], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    ok = subprocess.run([*argv, "--eh-context", "lab"], cwd=tmp_path, env=env, capture_output=True, text=True,
                        timeout=120)  # fmt: skip
    assert ok.returncode == 0, (ok.stdout, ok.stderr)


def test_a_credential_plugin_named_by_path_is_found_beside_its_kubeconfig(tmp_path: Path) -> None:
    """Control for the plugin check: client-go resolves an exec command with a `/` against the kubeconfig's own
    directory (clientcmd/loader.go `GetAuthInfoFileReferences`, `ResolveLocalPaths`), not the working directory:
    such a plugin is there, so `up` goes past the tools to its next check (no entry points: exit 2)."""
    cfg = yaml.safe_load(yaml.safe_dump(KUBECONFIG))
    cfg["users"][1]["user"]["exec"]["command"] = "./bin/aws-shim"
    kc_dir = tmp_path / "kc"
    (kc_dir / "bin").mkdir(parents=True)
    _tool(kc_dir / "bin", "aws-shim")
    (kc_dir / "config").write_text(yaml.safe_dump(cfg))
    proc, _cwd = _cli(tmp_path, "up", "--backend", "existing", "--context", "eks-lab", "--kubeconfig",
                      str(kc_dir / "config"), tools=("kubectl",))  # fmt: skip
    assert _one_line(proc, 2, "--entrypoint: no entry URL for zone(s) ") and _tree(_cwd) == []
    (kc_dir / "bin" / "aws-shim").unlink()
    proc, _cwd = _cli(tmp_path, "up", "--backend", "existing", "--context", "eks-lab", "--kubeconfig",
                      str(kc_dir / "config"), tools=("kubectl",))  # fmt: skip
    line = _one_line(proc, 3, f"error: context eks-lab: its user's credential plugin `{kc_dir}/bin/aws-shim`")
    assert line.endswith("is not found"), line


# -- EH_* variables as a chaos process reads them (`BackendOptions.from_env`) -----------------------------------------
@pytest.mark.parametrize(
    ("var", "value", "line"),
    [
        ("EH_BACKEND", "nope", "EH_BACKEND: unknown backend 'nope' (choose from auto, local, kind, existing)"),
        ("EH_CLUSTER", "Bad", "EH_CLUSTER: expected a lowercase letter then up to 7 letters/digits, got 'Bad'"),
    ],
)
def test_bad_eh_variables_are_named_as_variables(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, line: str
) -> None:
    """HOLE: EH_BACKEND was refused as the flag `--backend` (which a chaos process is never given), and EH_CLUSTER
    was taken as it came: the name the interfaces, namespaces and kind nodes derive from went unchecked."""
    from harness.backends import BackendOptions
    from harness.errors import InputError

    for k in [k for k in os.environ if k.startswith("EH_")]:
        monkeypatch.delenv(k)
    assert BackendOptions.from_env().cluster == "eh"  # control: nothing set, the defaults
    monkeypatch.setenv(var, value)
    with pytest.raises(InputError) as exc:
        BackendOptions.from_env()
    assert exc.value.line == line
