"""The package works installed, not only from a checkout (`make test-install`).

`pip install .` (not editable) into a fresh virtualenv, then `harness e2e
--backend local` from a directory that is not the checkout: the default
topology, the shipped experiment (by name), the locustfile and the verdict's
schema must all come from the installed package (importlib.resources), never
from a path that escapes it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, leftovers

pytestmark = [pytest.mark.local, pytest.mark.slow, pytest.mark.chaos]
CLUSTER = "ehinst"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the harness installed from the checkout as a regular (non-editable) package."""
    root = tmp_path_factory.mktemp("install")
    # a clean copy of the source: pip builds in the tree, and a stale build/lib there would be packaged too
    src = root / "src"
    skip = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "runs", "out", "__pycache__", ".*_cache",
                                  ".hypothesis")  # fmt: skip
    shutil.copytree(REPO, src, symlinks=True, ignore=skip)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # --no-compile: byte-compiling every dependency's files was 25 of pip's 67 s here, for modules
    # the run below never imports (Python compiles what it imports, on first import)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-compile", str(src)], capture_output=True,
                         text=True, stdin=subprocess.DEVNULL, timeout=900)  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-3000:]
    return venv


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
