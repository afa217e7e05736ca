"""chaostoolkit's journal and log go into the run directory, never into the directory the user stands in.

chaostoolkit writes `./chaostoolkit.log` and `./journal.json` by default, so a
run from the repository root leaves them there (and a second run overwrites
the first). Every way the harness starts `chaos` must name both paths: the
runner behind `harness chaos`, game days (`--run-dir`) and `harness e2e` (all
three go through `harness.chaos.run_planned`), and the `chaos` calls in the
Makefile and the workflows. Real chaostoolkit runs here, with `process`
activities that need no cluster; a fake backend answers `status()`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

import harness.backends
from harness.backends import BackendOptions
from harness.backends.base import Status
from harness.chaos import run_experiment
from harness.cli import main
from harness.topology import load_topology
from tests.conftest import REPO

STRAYS = ("chaostoolkit.log", "journal.json")


class UpBackend:
    """A cluster that is up with the default topology (what `harness chaos` asks before it runs anything)."""

    name = "local"

    class _M:
        topology = load_topology(REPO / "fixtures" / "topology.yaml")

    def status(self) -> Status:
        return Status("local", True, "16 pods")

    def manifests(self) -> Any:
        return self._M()

    def require_capability(self, primitive: str, zone: str | None = None) -> None:
        """Every primitive is available (the experiments here use process activities only)."""

    def close(self) -> None:
        pass


def _experiment(where: Path) -> Path:
    doc = {
        "title": "no cluster needed",
        "description": "process activities only",
        "steady-state-hypothesis": {"title": "ok", "probes": [
            {"type": "probe", "name": "gate", "tolerance": 0, "provider": {"type": "process", "path": "true"}}]},
        "method": [{"type": "action", "name": "act", "provider": {"type": "process", "path": "true"}}],
    }  # fmt: skip
    f = where / "proc.json"
    f.write_text(json.dumps(doc))
    return f


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def _assert_in_run_dir(run: Path, cwd: Path) -> None:
    exp_dir = run / "chaos" / "01-proc"
    assert (exp_dir / "journal.json").is_file() and (exp_dir / "chaos.log").stat().st_size > 0
    assert json.loads((exp_dir / "journal.json").read_text())["status"] == "completed"
    strays = [p.relative_to(cwd) for name in STRAYS for p in cwd.rglob(name) if exp_dir not in p.parents]
    assert strays == [], f"chaostoolkit wrote outside the run directory: {strays}"


@pytest.mark.slow
def test_harness_chaos_writes_journal_and_log_into_a_new_run_directory(
    cwd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness.backends, "connect", lambda opts: UpBackend())
    assert main(["chaos", "--backend", "local", str(_experiment(tmp_path))]) == 0
    (run,) = (cwd / "runs").iterdir()
    _assert_in_run_dir(run, cwd)
    assert sorted(p.name for p in cwd.iterdir()) == ["runs"]


@pytest.mark.slow
def test_game_day_chaos_into_a_relative_run_dir_leaves_the_cwd_clean(
    cwd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(harness.backends, "connect", lambda opts: UpBackend())
    assert main(["chaos", "--backend", "local", str(_experiment(tmp_path)), "--run-dir", "runs/gameday"]) == 0
    _assert_in_run_dir(cwd / "runs" / "gameday", cwd)
    assert sorted(p.name for p in cwd.iterdir()) == ["runs"]


@pytest.mark.slow
def test_the_runner_e2e_uses_writes_nothing_into_the_cwd(cwd: Path, tmp_path: Path) -> None:
    # run_e2e calls run_planned for each experiment, exactly as run_experiment does after planning
    res = run_experiment(_experiment(tmp_path), Path("rel-run"), BackendOptions(name="local", cluster="nothere"))
    assert res.ok, res.reason
    _assert_in_run_dir(cwd / "rel-run", cwd)
    assert sorted(p.name for p in cwd.iterdir()) == ["rel-run"]


CHAOS_CALL = re.compile(
    r"(?:^|[\s;&|(])(?P<prefix>\S*?)(?:\S*/)?chaos\s+(?:--[\w-]+(?:[ =](?!run\b|validate\b)\S+)?\s+)*"
    r"(?P<sub>run|validate|discover|info|init|settings)\b"
)


def _chaos_calls(text: str) -> list[str]:
    """Every line that starts chaostoolkit's `chaos` (`harness chaos` and `make chaos` are the harness's own)."""
    calls = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        for m in CHAOS_CALL.finditer(line):
            before = line[: m.start("prefix") + len(m.group("prefix"))].split()
            if before and before[-1].rsplit("/", 1)[-1] in ("harness", "make"):
                continue
            calls.append(line)
    return calls


def test_the_chaos_call_finder_finds_chaos_and_skips_the_harness() -> None:
    assert _chaos_calls("  .venv/bin/chaos validate x.json\n\t$(BIN)/chaos --log-file a run b\nchaos run e.json") == [
        "  .venv/bin/chaos validate x.json",
        "\t$(BIN)/chaos --log-file a run b",
        "chaos run e.json",
    ]
    assert _chaos_calls("\t$(BIN)/harness chaos $(BFLAGS) x\n.venv/bin/harness chaos --backend local run.json\n"
                        "# chaos run in a comment\nmake chaos EXPERIMENT=x") == []  # fmt: skip


@pytest.mark.parametrize(
    "path",
    [REPO / "Makefile", *sorted((REPO / ".github" / "workflows").glob("*.yml"))],
    ids=lambda p: p.name,
)
def test_every_chaos_call_in_make_and_ci_names_its_log(path: Path) -> None:
    for line in _chaos_calls(path.read_text()):
        assert "--log-file" in line or "--no-log-file" in line, f"{path.name}: {line.strip()} writes ./chaostoolkit.log"
        if " run " in f" {line} ":
            assert "--journal-path" in line, f"{path.name}: {line.strip()} writes ./journal.json"
