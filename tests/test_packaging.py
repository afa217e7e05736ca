"""What the package finds without a checkout, and the import seams import-linter cannot see at run time.

(`tests/test_install.py` does the real `pip install .`; these are the fast
checks of the same promises.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import harness
from harness.chaos.experiment import SHIPPED_EXPERIMENTS, resolve_experiment, shipped_experiments
from harness.cli import main
from harness.topology.model import DEFAULT_TOPOLOGY
from harness.traffic.runner import DEFAULT_LOCUSTFILE
from harness.verify import SCHEMA_PATH
from tests.conftest import EXPERIMENTS, REPO

PACKAGE = Path(harness.__file__).parent


def test_runtime_files_are_package_data() -> None:
    for path in (DEFAULT_TOPOLOGY, DEFAULT_LOCUSTFILE, SCHEMA_PATH, SHIPPED_EXPERIMENTS):
        assert path.exists() and path.resolve().is_relative_to(PACKAGE), path
    # the checkout's top-level paths are links into the package, not second copies
    for top in ("fixtures", "experiments", "loadtests"):
        assert (REPO / top).resolve() == PACKAGE / top
    assert (REPO / "docs" / "verdict-schema.json").resolve() == SCHEMA_PATH.resolve()
    text = (REPO / "pyproject.toml").read_text()
    for glob in ('"fixtures/*.yaml"', '"experiments/*.json"', '"loadtests/*.py"', '"verdict-schema.json"'):
        assert glob in text  # declared as package data, or a wheel would not carry it


def test_no_path_escapes_the_package() -> None:
    offenders = [
        f"{p.relative_to(REPO)}:{i}"
        for p in PACKAGE.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "parents[2]" in line and ("fixtures" in line or "loadtests" in line or "docs" in line)
    ]
    assert offenders == []


def test_shipped_experiments_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not the checkout: `experiments/` is not at hand
    assert set(shipped_experiments()) == {p.stem for p in EXPERIMENTS.glob("*.json")}
    assert resolve_experiment("edge-outage") == SHIPPED_EXPERIMENTS / "edge-outage.json"
    assert resolve_experiment("node-kill.json") == SHIPPED_EXPERIMENTS / "node-kill.json"
    own = tmp_path / "edge-outage.json"  # a file of the user's own, by the same name: theirs wins
    own.write_text("{}")
    assert resolve_experiment("edge-outage.json") == Path("edge-outage.json")
    assert resolve_experiment("nope") == Path("nope")  # stays as typed, for the error message
    assert resolve_experiment("sub/edge-outage") == Path("sub/edge-outage")  # a path is a path


def test_cli_names_an_unknown_experiment_as_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(["chaos", "--backend", "local", "no-such-experiment"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("no-such-experiment: ")


def test_the_loader_does_not_import_the_renderer() -> None:
    """Backends import `harness.render.manifests`; the renderer must not come with it."""
    code = (
        "import sys, harness.render.manifests\n"
        "bad = [m for m in sys.modules if m in ('harness.render.renderer', 'harness.render.consul', "
        "'harness.render.hashicups', 'harness.render.helm', 'harness.render.entry')]\n"
        "assert not bad, bad\n"
        "from harness.render import render, write, Rendered\n"  # the facade still offers them
        "assert 'harness.render.renderer' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_down_all_goes_through_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    from harness.backends.local import backend as lb
    from harness.backends.local.cluster.pods import PG_TEMPLATES

    root = tmp_path / "state"
    (root / "ehb").mkdir(parents=True)
    (root / "eha").mkdir()
    (root / "stray.json").write_text("{}")  # not a cluster's directory
    # nor the machine's seeded postgres clusters beside them, which every local `up` leaves there (`--all` refused
    # its name as a cluster's and tore none down)
    (root / PG_TEMPLATES / "0123abcd").mkdir(parents=True)
    downed: list[str] = []
    monkeypatch.setattr(lb, "DEFAULT_STATE_ROOT", root)
    monkeypatch.setattr(lb.LocalBackend, "down", lambda self: downed.append(self.state_dir.name))
    assert main(["down", "--all"]) == 0
    assert downed == ["eha", "ehb"]
    assert capsys.readouterr().out.split() == ["local", "eha:", "down", "local", "ehb:", "down"]


def test_the_chaos_extension_exports_what_experiments_name() -> None:
    """`__all__` of the extension's modules is its surface: every shipped experiment names only those."""
    import importlib
    import json

    mods = {m: importlib.import_module(m) for m in ("harness.chaos.actions", "harness.chaos.probes")}
    for mod in [*mods.values(), importlib.import_module("harness.chaos.control")]:
        assert mod.__all__ and all(hasattr(mod, n) for n in mod.__all__)
    named: set[tuple[str, str]] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            prov = node.get("provider")
            if isinstance(prov, dict) and prov.get("module") in mods:
                named.add((prov["module"], prov["func"]))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for exp in EXPERIMENTS.glob("*.json"):
        walk(json.loads(exp.read_text()))
    assert named and all(func in mods[m].__all__ for m, func in named), named
