"""The package works installed, not only from a checkout (`make test-install`).

`pip install .` (not editable) into a fresh virtualenv, then `harness e2e
--backend local` from a directory that is not the checkout: the default
topology, the shipped experiment (by name), the locustfile and the verdict's
schema must all come from the installed package (importlib.resources), never
from a path that escapes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, leftovers

pytestmark = [pytest.mark.local, pytest.mark.slow, pytest.mark.chaos]
CLUSTER = "ehinst"


@dataclass
class InstallBuild:
    """A fresh venv being built in the background: `pip install` of a clean copy of the checkout."""

    root: Path
    proc: subprocess.Popen[bytes]

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def log(self) -> Path:
        return self.root / "pip.log"


INSTALL_BUILD = pytest.StashKey[InstallBuild]()


def start_install(root: Path) -> InstallBuild:
    """Copy the checkout under `root` and pip-install it (not editable) into a fresh venv there, in the background.

    pip spends ~45 s unpacking the dependencies. tests/conftest.py starts this
    when a session that will run this module is collected, at nice 19 and idle
    I/O priority: it then runs while the local lane's clusters wait on their
    processes, off the lane's critical path (the CI budget), and never takes
    CPU a cluster's timing needs. The fixture waits for it.
    """
    # a clean copy of the source: pip builds in the tree, and a stale build/lib there would be packaged too
    src = root / "src"
    skip = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "runs", "out", "__pycache__", ".*_cache",
                                  ".hypothesis")  # fmt: skip
    shutil.copytree(REPO, src, symlinks=True, ignore=skip)
    venv = root / "venv"
    # --no-compile: byte-compiling every dependency's files was 25 of pip's 67 s here, for modules
    # the run below never imports (Python compiles what it imports, on first import)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--no-compile", str(src)]
    script = f"{shlex.join([sys.executable, '-m', 'venv', str(venv)])} && {shlex.join(pip)}"
    low = ["nice", "-n", "19", *(["ionice", "-c", "3"] if shutil.which("ionice") else [])]
    with (root / "pip.log").open("wb") as log:
        proc = subprocess.Popen([*low, "sh", "-c", script], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    return InstallBuild(root, proc)


def stop_install(build: InstallBuild) -> None:
    """End a build still running (its whole group: sh and pip) and remove its directory."""
    if build.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(build.proc.pid, signal.SIGKILL)
    build.proc.wait()
    shutil.rmtree(build.root, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(request: pytest.FixtureRequest) -> Path:
    """A fresh venv with the harness installed from the checkout as a regular (non-editable) package."""
    build = request.config.stash[INSTALL_BUILD]  # started when the session was collected (conftest.py)
    assert build.proc.wait(timeout=900) == 0, build.log.read_text()[-3000:]
    return build.venv


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_installed_package_carries_its_data(installed: Path, tmp_path: Path) -> None:
    code = (
        "import json, harness\n"
        "from harness.topology.model import DEFAULT_TOPOLOGY\n"
        "from harness.traffic.runner import DEFAULT_LOCUSTFILE\n"
        "from harness.verify import SCHEMA_PATH\n"
        "from harness.chaos.experiment import shipped_experiments\n"
        "print(json.dumps({'pkg': harness.__file__, 'files': [str(p) for p in (DEFAULT_TOPOLOGY, DEFAULT_LOCUSTFILE,"
        " SCHEMA_PATH)], 'exists': [p.is_file() for p in (DEFAULT_TOPOLOGY, DEFAULT_LOCUSTFILE, SCHEMA_PATH)],"
        " 'experiments': shipped_experiments()}))\n"
    )
    out = subprocess.run([str(installed / "bin" / "python"), "-c", code], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, check=True)  # fmt: skip
    got = json.loads(out.stdout)
    site = str(installed / "lib")
    assert got["pkg"].startswith(site), got  # the installed copy, not the checkout
    assert all(f.startswith(site) for f in got["files"]) and all(got["exists"]), got
    assert set(got["experiments"]) >= {"edge-outage", "kill-product-api-lax", "node-kill"}


def test_e2e_from_another_directory(installed: Path, tmp_path: Path) -> None:
    cmd = [str(installed / "bin" / "harness"), "e2e", "--backend", "local", "--cluster", CLUSTER,
           "--experiment", "kill-product-api-lax", "--users", "8", "--warmup", "4", "--cooldown", "5"]  # fmt: skip
    try:
        r = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                           timeout=900)  # fmt: skip
    finally:
        subprocess.run([str(installed / "bin" / "harness"), "down", "--backend", "local", "--cluster", CLUSTER],
                       cwd=tmp_path, env=_env(), capture_output=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-4000:])
    (run,) = (tmp_path / "runs").iterdir()
    verdict = json.loads((run / "verdict.json").read_text())
    assert verdict["passed"] is True
    plan = json.loads((run / "plan.json").read_text())
    assert [Path(e["file"]).name for e in plan["experiments"]] == ["kill-product-api-lax.json"]
    assert str(installed) in plan["experiments"][0]["file"]  # the shipped experiment, found by name
    assert leftovers(CLUSTER) == []
