"""The pytest plugin's `eh_cluster` outside the local lane, and the one topology a session checks and uses.

`eh_cluster` ran only in the local lane (a real local cluster); here a recording backend stands in for
`harness.backends.connect`, so what the fixture renders, brings up and takes down is checked on every run.
The plugin loaded `--eh-topology` at configure (to refuse a bad one before any test) and again in `eh_cluster`
(`prepare_manifests`) and in every `eh_fake`: two reads of one file, and a file changed in between gave the
session a topology nobody checked, or an InputError traceback in a test after configure had passed it.
"""

from __future__ import annotations

import shutil
from typing import Any

import duckdb  # noqa: F401  (kept in the process across pytester's inline runs: see test_pytest_plugin)
import pytest

import harness.backends
from tests.conftest import REPO

pytest_plugins = ["pytester"]


class _Recorder:
    """A backend that records what `eh_cluster` asks of it."""

    def __init__(self) -> None:
        self.ups: list[Any] = []
        self.downs = 0

    def up(self, manifests: Any) -> None:
        self.ups.append(manifests)

    def down(self) -> None:
        self.downs += 1


INNER = """
from pathlib import Path

def test_the_session_renders_and_models_the_topology_it_checked(request, pytestconfig):
    if {overwrite}:  # the file changed after configure checked it
        Path(pytestconfig.getoption("--eh-topology")).write_text("zones: [")
    fake = request.getfixturevalue("eh_fake")
    backend = request.getfixturevalue("eh_cluster")
    assert fake.topology.name == "edge"
    assert backend.ups[0].topology.name == "edge"
"""


@pytest.fixture(autouse=True)
def _ini(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")


@pytest.mark.parametrize("overwrite", [False, True], ids=["as-checked", "file-changed-after-configure"])
@pytest.mark.parametrize("keep", [False, True], ids=["down", "keep"])
def test_eh_cluster_brings_the_checked_topology_up_once_and_down_unless_kept(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, overwrite: bool, keep: bool
) -> None:
    """`eh_cluster` renders `--eh-topology`, brings the backend up once for the session and takes it down after
    (not with `--eh-keep`); `eh_fake` models the same topology. With the file overwritten after configure
    (`file-changed-after-configure`), both fixtures read it again on HEAD and the test errored with the
    topology's InputError; now they use the one configure loaded and checked."""
    rec = _Recorder()
    monkeypatch.setattr(harness.backends, "connect", lambda options: rec)
    topo = pytester.path / "topology.yaml"
    shutil.copy(REPO / "fixtures" / "topology.yaml", topo)
    pytester.makepyfile(INNER.format(overwrite=overwrite))
    argv = ["--eh-backend", "kind", "--eh-topology", str(topo), *(["--eh-keep"] if keep else [])]
    res = pytester.runpytest(*argv)
    res.assert_outcomes(passed=1)
    assert len(rec.ups) == 1 and rec.downs == (0 if keep else 1)


def test_eh_fake_without_a_topology_models_the_shipped_one(pytester: pytest.Pytester) -> None:
    """Control: no `--eh-topology`: nothing is stashed, and `eh_fake` is the shipped topology, as before."""
    pytester.makepyfile(
        """
        def test_shipped(eh_fake):
            assert eh_fake.topology.name == "edge"
            assert any(z.name == "us-west-2-lax-1a" for z in eh_fake.topology.zones)
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)
