"""What the verifier makes on the side goes away with it, also when reading a run fails half-way."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from harness.verify import rundata
from harness.verify.synth import Scenario, write_run
from tests.test_verify_soundness import T


def test_a_run_read_that_fails_half_way_leaves_no_scratch_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB's spill directory was removed only with the finished RunData: a record that raised (or a Ctrl-C)
    while the run was read left an empty eh-verify-* directory in /tmp per verify."""
    run = write_run(tmp_path / "run", Scenario(T, duration_s=5, rate_per_zone=1))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(rundata, "read_records", interrupted)  # the first record file read
    with pytest.raises(KeyboardInterrupt):
        rundata.load_run(run)
    assert list(scratch.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    rd = rundata.load_run(run)  # the control: a whole read keeps its directory while the run is in use
    assert [p.name[:10] for p in scratch.iterdir()] == ["eh-verify-"]
    rd.con.close()
